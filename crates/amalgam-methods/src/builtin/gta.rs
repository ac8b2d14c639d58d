//! The generalized task-arithmetic family: `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`,
//! `breadcrumbs`, `breadcrumbs_ties`, `della`, `della_linear`.
//!
//! All eight are one algorithm with two switches (mergekit's `GeneralizedTaskArithmeticMerge`):
//! an optional sparsifier applied to each task vector `δᵢ = xᵢ − base`, and an optional sign
//! consensus (TIES "sum" election) before the weighted deltas are summed, normalised, scaled by
//! `lambda` and added back to the base. Every step is done in the working dtype with PyTorch's
//! rounding, and the sums over models follow PyTorch's association order ([`Dim0Sum`]), which is
//! what makes the output bit-identical to mergekit's.

use amalgam_io::DType;

use super::common::{check_well_formed, shape_str};
use crate::numerics::{as_dtype, round, round_slice, scalar};
use crate::reduce::{torch_float_lanes, Dim0Sum};
use crate::sparsify::{self, Sparse, TaskVector};
use crate::{
    BaseRule, Compat, Contract, Legacy, MergeArgs, MergeArgs64, MergeInput, MergeMethod, MethodError,
    MethodInfo, ParamKind, ParamScope, ParamSpec, ParamValues, Tensor, Value,
};

/// Which sparsifier a family member applies to each task vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sparsifier {
    /// Keep the largest magnitudes (TIES).
    Magnitude,
    /// Random Bernoulli keep (DARE).
    Random,
    /// Drop the largest `gamma` and the smallest magnitudes (breadcrumbs).
    MagnitudeOutliers,
    /// Rank-dependent Bernoulli keep (DELLA).
    DellaMagprune,
}

/// One member of the family.
pub struct GeneralizedTaskArithmetic {
    info: MethodInfo,
    consensus: bool,
    sparsifier: Option<Sparsifier>,
}

fn p(
    name: &'static str,
    scope: ParamScope,
    kind: ParamKind,
    default: Option<Value>,
    doc: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        scope,
        kind,
        default,
        doc,
    }
}

impl GeneralizedTaskArithmetic {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &'static str,
        pretty_name: &'static str,
        url: &'static str,
        summary: &'static str,
        consensus: bool,
        sparsifier: Option<Sparsifier>,
        normalize: bool,
        rescale: bool,
        in_0_0_4_2: bool,
    ) -> Self {
        let mut params = vec![
            p(
                "int8_mask",
                ParamScope::Shared,
                ParamKind::Bool,
                Some(Value::Bool(false)),
                "store the sign mask as int8 (memory only; no numeric effect)",
            ),
            p(
                "normalize",
                ParamScope::Shared,
                ParamKind::Bool,
                Some(Value::Bool(normalize)),
                "divide the summed deltas by the sum of the (elected) weights",
            ),
            p(
                "rescale",
                ParamScope::Shared,
                ParamKind::Bool,
                Some(Value::Bool(rescale)),
                "rescale each sparsified delta to its original L1 norm",
            ),
            p(
                "lambda",
                ParamScope::Shared,
                ParamKind::Float,
                Some(Value::Float(1.0)),
                "scale applied to the merged delta before adding it to the base",
            ),
            p(
                "weight",
                ParamScope::NonBase,
                ParamKind::Float,
                None,
                "weight of each model's task vector (the base has none)",
            ),
            p(
                "density",
                ParamScope::NonBase,
                ParamKind::Float,
                Some(Value::Float(1.0)),
                "fraction of each task vector to keep",
            ),
        ];
        if sparsifier == Some(Sparsifier::MagnitudeOutliers) {
            params.push(p(
                "gamma",
                ParamScope::NonBase,
                ParamKind::Float,
                Some(Value::Float(0.01)),
                "fraction of the largest-magnitude entries removed as outliers",
            ));
        }
        if sparsifier == Some(Sparsifier::DellaMagprune) {
            params.push(p(
                "epsilon",
                ParamScope::NonBase,
                ParamKind::Float,
                Some(Value::Float(0.15)),
                "half-width of the keep-probability range around density",
            ));
        }
        GeneralizedTaskArithmetic {
            info: MethodInfo {
                name,
                pretty_name,
                reference_url: Some(url),
                summary,
                params,
                contract: Contract::any(BaseRule::Required),
                random: matches!(
                    sparsifier,
                    Some(Sparsifier::Random) | Some(Sparsifier::DellaMagprune)
                ),
                legacy: if in_0_0_4_2 { Legacy::Implemented } else { Legacy::Absent },
                card_names_base: true,
                uniform_fallback: None,
                deviations: "Sums are replayed in PyTorch's single-threaded CPU order; mergekit \
                             run with several threads can differ by 1 ulp in L1 rescale factors \
                             of tensors above 32,768 elements and in model sums of five or more \
                             models.",
            },
            consensus,
            sparsifier,
        }
    }

    /// `task_arithmetic`.
    pub fn task_arithmetic() -> Self {
        Self::new(
            "task_arithmetic",
            "Task Arithmetic",
            "https://arxiv.org/abs/2212.04089",
            "out = base + λ·Σ wᵢ·(xᵢ − base) (divided by Σ wᵢ with normalize), in the working dtype.",
            false,
            None,
            false,
            false,
            true,
        )
    }

    /// `ties`.
    pub fn ties() -> Self {
        Self::new(
            "ties",
            "TIES",
            "https://arxiv.org/abs/2306.01708",
            "Task vectors keep their top-density magnitudes, then a per-element sign election \
             (sign of Σ wᵢδᵢ, ties positive) keeps only agreeing entries; normalised by the \
             elected weights.",
            true,
            Some(Sparsifier::Magnitude),
            true,
            false,
            true,
        )
    }

    /// `dare_ties`.
    pub fn dare_ties() -> Self {
        Self::new(
            "dare_ties",
            "DARE TIES",
            "https://arxiv.org/abs/2311.03099",
            "Task vectors are randomly pruned (keep probability density, L1 rescale), then TIES \
             sign election.",
            true,
            Some(Sparsifier::Random),
            false,
            true,
            true,
        )
    }

    /// `dare_linear`.
    pub fn dare_linear() -> Self {
        Self::new(
            "dare_linear",
            "Linear DARE",
            "https://arxiv.org/abs/2311.03099",
            "Task vectors are randomly pruned (keep probability density, L1 rescale), then \
             summed with their weights.",
            false,
            Some(Sparsifier::Random),
            false,
            true,
            true,
        )
    }

    /// `breadcrumbs`.
    pub fn breadcrumbs() -> Self {
        Self::new(
            "breadcrumbs",
            "Model Breadcrumbs",
            "https://arxiv.org/abs/2312.06795",
            "Task vectors lose their largest gamma fraction (outliers) and their smallest \
             magnitudes down to density, then are summed with their weights.",
            false,
            Some(Sparsifier::MagnitudeOutliers),
            false,
            false,
            false,
        )
    }

    /// `breadcrumbs_ties`.
    pub fn breadcrumbs_ties() -> Self {
        Self::new(
            "breadcrumbs_ties",
            "Model Breadcrumbs with TIES",
            "https://arxiv.org/abs/2312.06795",
            "Breadcrumbs sparsification followed by TIES sign election.",
            true,
            Some(Sparsifier::MagnitudeOutliers),
            false,
            false,
            false,
        )
    }

    /// `della`.
    pub fn della() -> Self {
        Self::new(
            "della",
            "DELLA",
            "https://arxiv.org/abs/2406.11617",
            "Per row, keep probabilities grow linearly with magnitude rank over \
             [density − ε, density + ε]; Bernoulli pruning, L1 rescale, TIES sign election.",
            true,
            Some(Sparsifier::DellaMagprune),
            true,
            true,
            false,
        )
    }

    /// `della_linear`.
    pub fn della_linear() -> Self {
        Self::new(
            "della_linear",
            "Linear DELLA",
            "https://arxiv.org/abs/2406.11617",
            "DELLA pruning (rank-dependent Bernoulli, L1 rescale), then a weighted sum.",
            false,
            Some(Sparsifier::DellaMagprune),
            false,
            true,
            false,
        )
    }

    fn name(&self) -> &'static str {
        self.info.name
    }
}

/// PyTorch's `sign(v) == majority` for the election mask: zero and NaN never match.
#[inline]
fn agrees(v: f32, majority_positive: bool) -> bool {
    if majority_positive {
        v > 0.0
    } else {
        v < 0.0
    }
}

impl MergeMethod for GeneralizedTaskArithmetic {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn is_elementwise(&self, _shared: &ParamValues, per_input: &[&ParamValues]) -> bool {
        // Without a sparsifier every output element depends only on its own position, as long as
        // the model-axis sum has at most four entries: from five on, PyTorch's summation order
        // depends on the column's position in the whole tensor.
        self.sparsifier.is_none() && !self.consensus && per_input.len() <= 5
    }

    fn supports_f64(&self, compat: Compat, inputs: usize) -> bool {
        // task_arithmetic only (no sparsifier, no consensus), and with at most four task
        // vectors, whose model-axis sums PyTorch adds in plain sequence whatever the dtype.
        compat == Compat::V0_1_5
            && self.sparsifier.is_none()
            && !self.consensus
            && inputs <= SEQ_MAX + 1
    }

    /// mergekit 0.1.5's task arithmetic in f64: `x - base` per model, times its weight (an f64
    /// tensor of the python floats), summed over the models from zero in input order, divided
    /// by the sum of the weights (1 where its magnitude is below 1e-8) when normalizing, times
    /// λ (a python float) unless it is 1, added to the base. Every step is an f64 operation.
    fn merge_f64(&self, args: MergeArgs64<'_>) -> Result<Vec<f64>, MethodError> {
        if !self.supports_f64(args.compat, args.inputs.len()) {
            return Err(MethodError::Float64Unsupported {
                method: format!(
                    "{} (mergekit {}, {} inputs)",
                    self.name(),
                    args.compat,
                    args.inputs.len()
                ),
            });
        }
        let base = args
            .base
            .and_then(|b| args.inputs.get(b))
            .ok_or_else(|| MethodError::Contract {
                tensor: args.tensor_name.to_string(),
                violation: amalgam_schema::ContractViolation::BaseRequired,
            })?
            .data;
        let n = base.len();
        let normalize = args.param("normalize")?.as_bool();
        let lambda = args.param("lambda")?.as_f64();
        let mut mixed = vec![0f64; n];
        let mut den = 0f64;
        let mut any = false;
        for (i, input) in args.inputs.iter().enumerate() {
            if Some(i) == args.base {
                continue;
            }
            if input.data.len() != n {
                return Err(MethodError::Shape {
                    tensor: args.tensor_name.to_string(),
                    shapes: format!(
                        "{} has {} values, the base {n}",
                        input.label,
                        input.data.len()
                    ),
                });
            }
            let w = input.f64("weight")?;
            for ((m, &x), &b) in mixed.iter_mut().zip(input.data).zip(base) {
                *m += (x - b) * w;
            }
            den += w;
            any = true;
        }
        if !any {
            return Ok(base.to_vec());
        }
        let den = if den.abs() < 1e-8 { 1.0 } else { den };
        for (m, &b) in mixed.iter_mut().zip(base) {
            let mut v = *m;
            if normalize {
                v /= den;
            }
            if lambda != 1.0 {
                v *= lambda;
            }
            *m = b + v;
        }
        Ok(mixed)
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let dtype = args.dtype();
        let base_input = args
            .base
            .and_then(|b| args.inputs.get(b))
            .ok_or_else(|| MethodError::Contract {
                tensor: args.tensor_name.to_string(),
                violation: amalgam_schema::ContractViolation::BaseRequired,
            })?;
        let base = base_input.tensor;
        check_well_formed(base, args.tensor_name)?;
        let normalize = args.shared_bool("normalize")?;
        let rescale_on = args.shared_bool("rescale")?;
        let rescale = sparsify::Rescale::new(rescale_on, args.torch_threads);
        let lambda = args.shared_f64("lambda")?;

        // Task vectors in input order: the inputs aligned first, in order (0.0.4.2 warns about
        // skipped ones), then each sparsified. A task vector is never stored: the sparsifiers
        // and the combine below recompute it block by block from the input and the base.
        let mut kept = Vec::new();
        for (i, input) in args.inputs.iter().enumerate() {
            if Some(i) == args.base {
                continue;
            }
            if let Some(x) = aligned(input, base, args.tensor_name, &args.inputs, args.compat)? {
                kept.push((input, x));
            }
        }
        let tvs: Vec<TaskVector<'_>> = kept
            .iter()
            .map(|(_, x)| TaskVector::new(x, &base.data, dtype))
            .collect();
        let task = |input: &MergeInput<'_>,
                    tv: &TaskVector<'_>,
                    rng: Option<&mut crate::rng::Mt19937>|
         -> Result<(Sparse, f64), MethodError> {
            let weight = input.f64("weight")?;
            let density = input.f64("density")?;
            let shape = &base.shape;
            let sparse = match self.sparsifier {
                None => Sparse::Dense,
                Some(Sparsifier::Magnitude) => match args.compat {
                    Compat::V0_1_5 => sparsify::magnitude(tv, density, rescale)?,
                    Compat::V0_0_4_2 => Sparse::Values(
                        sparsify::magnitude_0_0_4_2(&tv.to_tensor(shape), density, rescale)?.data,
                    ),
                },
                Some(Sparsifier::MagnitudeOutliers) => {
                    let gamma = input.f64("gamma")?;
                    sparsify::magnitude_outliers(tv, density, gamma, rescale)?
                }
                Some(Sparsifier::Random) => {
                    let rng = rng.ok_or_else(|| self.no_rng())?;
                    match args.compat {
                        Compat::V0_1_5 => sparsify::bernoulli(tv, density, rescale, rng)?,
                        Compat::V0_0_4_2 => bernoulli_0_0_4_2(tv, density, rescale_on, rng)?,
                    }
                }
                Some(Sparsifier::DellaMagprune) => {
                    let epsilon = input.f64("epsilon")?;
                    let rng = rng.ok_or_else(|| self.no_rng())?;
                    let delta = tv.to_tensor(shape);
                    Sparse::Values(
                        sparsify::della_magprune(&delta, density, epsilon, rescale, rng)?.data,
                    )
                }
            };
            Ok((sparse, weight))
        };
        use rayon::prelude::*;
        let n = base.numel();
        let par = n >= PAR_MIN || (self.info.random && n >= PAR_MIN_RANDOM);
        let done: Vec<(Sparse, f64)> = if self.info.random || self.sparsifier.is_none() || !par {
            // One random stream, consumed model after model (or nothing to sparsify).
            let mut rng = args.rng;
            kept.iter()
                .zip(&tvs)
                .map(|((input, _), tv)| task(input, tv, rng.as_deref_mut()))
                .collect::<Result<_, _>>()?
        } else {
            // Independent per model (each a whole-tensor selection for ties and breadcrumbs):
            // both cores work inside one large tensor; the results come back in input order.
            let each: Vec<_> = kept
                .par_iter()
                .zip(&tvs)
                .map(|((input, _), tv)| task(input, tv, None))
                .collect();
            // The first error in input order, as the sequential loop would report it.
            each.into_iter().collect::<Result<_, _>>()?
        };
        let (sparse, weights): (Vec<Sparse>, Vec<f64>) = done.into_iter().unzip();
        if sparse.is_empty() {
            return Ok(base.clone());
        }

        // `torch.tensor(weights, dtype=deltas.dtype)`, then `deltas.mul_(weights)`.
        let w: Vec<f32> = weights.iter().map(|&v| as_dtype(dtype, v)).collect();
        let m = sparse.len();
        let lanes = torch_float_lanes();
        let plan = Dim0Sum::new(n, dtype, lanes);
        // Without consensus the divisor is `weights.sum(dim=0)`: one column of m entries.
        let global_div = {
            let d = round(dtype, Dim0Sum::new(1, dtype, lanes).sum(0, &w));
            // `divisor[divisor.abs() < 1e-8] = 1`: the Python float is rounded to the dtype
            // (so for f16 the threshold is 0 and a zero divisor stays zero).
            if d.abs() < round(dtype, scalar(1e-8)) {
                1.0
            } else {
                d
            }
        };
        let apply_lambda = lambda != 1.0 && args.compat == Compat::V0_1_5;
        let lam = scalar(lambda);
        let steps = Steps {
            dtype,
            normalize,
            lam: apply_lambda.then_some(lam),
        };
        // Up to four models every column's sum over the model axis adds in plain sequence from
        // zero (see `Dim0Sum::sum_with`), so the block is computed with bulk roundings; from
        // five on the order depends on the column, element by element. Either way every block
        // depends only on its own columns.
        let bulk = m <= SEQ_MAX && n > 1;
        let merge_block = |scr: &mut Scratch, blk: usize, o: &mut [f32], b: &[f32]| {
            let at = blk * BLOCK;
            let len = o.len();
            let Scratch {
                d,
                s,
                wd,
                vals,
                masked,
                wmask,
            } = scr;
            // The weighted sparsified deltas of this block.
            for ((dj, (sp, tv)), &wi) in d.chunks_mut(BLOCK).zip(sparse.iter().zip(&tvs)).zip(&w)
            {
                let dj = &mut dj[..len];
                sp.fill(tv, at, dj);
                super::blocks::mul_round(dtype, dj, wi);
            }
            let cols = || d.chunks(BLOCK).map(|c| &c[..len]);
            if bulk && self.consensus {
                let (s, wd) = (&mut s[..len], &mut wd[..len]);
                s.fill(0.0);
                for c in cols() {
                    for (a, &v) in s.iter_mut().zip(c) {
                        *a += v;
                    }
                }
                round_slice(dtype, s);
                // `(S >= 0) * 2 - 1`: zero goes positive, NaN negative; multiplying by the 0/1
                // mask (not selecting) keeps PyTorch's signed zeros.
                o.fill(0.0);
                wd.fill(0.0);
                for (c, &wi) in cols().zip(&w) {
                    for ((a, wa), (&v, &sv)) in o.iter_mut().zip(wd.iter_mut()).zip(c.iter().zip(s.iter())) {
                        let keep = if agrees(v, sv >= 0.0) { 1.0 } else { 0.0 };
                        *a += v * keep;
                        *wa += wi * keep;
                    }
                }
                round_slice(dtype, o);
                round_slice(dtype, wd);
                for d in wd.iter_mut() {
                    if *d == 0.0 {
                        *d = 1.0;
                    }
                }
                steps.finish(o, b, |k| wd.get(k).copied().unwrap_or(1.0));
            } else if bulk {
                o.fill(0.0);
                for c in cols() {
                    for (a, &v) in o.iter_mut().zip(c) {
                        *a += v;
                    }
                }
                round_slice(dtype, o);
                steps.finish(o, b, |_| global_div);
            } else {
                for (k, (slot, &bv)) in o.iter_mut().zip(b).enumerate() {
                    let e = at + k;
                    for (v, c) in vals.iter_mut().zip(cols()) {
                        *v = c[k];
                    }
                    let (mut mixed, div) = if self.consensus {
                        let s = round(dtype, plan.sum(e, vals));
                        // `(S >= 0) * 2 - 1`: zero goes positive, NaN negative.
                        let positive = s >= 0.0;
                        for ((mv, wv), (&v, &wi)) in
                            masked.iter_mut().zip(wmask.iter_mut()).zip(vals.iter().zip(&w))
                        {
                            // Multiplying by the 0/1 mask (not selecting) keeps PyTorch's
                            // signed zeros.
                            let keep = if agrees(v, positive) { 1.0 } else { 0.0 };
                            *mv = v * keep;
                            *wv = wi * keep;
                        }
                        let mixed = round(dtype, plan.sum(e, masked));
                        let div = round(dtype, plan.sum(e, wmask));
                        (mixed, if div == 0.0 { 1.0 } else { div })
                    } else {
                        (round(dtype, plan.sum(e, vals)), global_div)
                    };
                    if normalize {
                        mixed = round(dtype, mixed / div);
                    }
                    if apply_lambda {
                        mixed = round(dtype, mixed * lam);
                    }
                    *slot = round(dtype, bv + mixed);
                }
            }
        };
        let mut out = vec![0f32; n];
        let init = || Scratch::new(m);
        if par {
            out.par_chunks_mut(BLOCK)
                .zip(base.data.par_chunks(BLOCK))
                .enumerate()
                .for_each_init(init, |scr, (blk, (o, b))| merge_block(scr, blk, o, b));
        } else {
            // A chunk of an elementwise tensor (or a small tensor): not worth a parallel split.
            let mut scr = init();
            for (blk, (o, b)) in out.chunks_mut(BLOCK).zip(base.data.chunks(BLOCK)).enumerate() {
                merge_block(&mut scr, blk, o, b);
            }
        }
        Ok(Tensor::new(dtype, base.shape.clone(), out))
    }
}

/// Per-thread buffers of the combine: `d` holds each model's weighted block (`BLOCK` apart), `s`
/// and `wd` the sign sums and elected weights of the bulk path, the rest one element's entries of
/// the element-by-element path.
struct Scratch {
    d: Vec<f32>,
    s: Vec<f32>,
    wd: Vec<f32>,
    vals: Vec<f32>,
    masked: Vec<f32>,
    wmask: Vec<f32>,
}

impl Scratch {
    fn new(m: usize) -> Self {
        Scratch {
            d: vec![0f32; m * BLOCK],
            s: vec![0f32; BLOCK],
            wd: vec![0f32; BLOCK],
            vals: vec![0f32; m],
            masked: vec![0f32; m],
            wmask: vec![0f32; m],
        }
    }
}

/// Elements from which a tensor's models and combine blocks run in parallel. The engine runs the
/// largest tensors alone (`exec::BIG_ITEM_BYTES`: 64 MiB of f32 inputs, 4 Mi elements of four
/// inputs) and smaller ones side by side, one per thread; a parallel split inside those would
/// only let a thread that waits for its other half start yet another tensor (rayon's work
/// stealing), whose inputs and selection buffers then add to the peak memory.
const PAR_MIN: usize = 1 << 22;
/// The same for a random method, whose tensors the engine runs one after another: every tensor
/// but the smallest (and an elementwise merge's chunks) is worth splitting.
const PAR_MIN_RANDOM: usize = 1 << 16;
/// Most models whose model-axis sum adds in plain sequence (PyTorch's four accumulators).
const SEQ_MAX: usize = 4;
/// Elements per block of the bulk path: every model's block stays in the CPU cache.
const BLOCK: usize = 4096;

/// The steps after the model-axis sum, in bulk: `mixed / div` (normalize), `· λ`, `base + mixed`,
/// each rounded to the dtype.
struct Steps {
    dtype: DType,
    normalize: bool,
    lam: Option<f32>,
}

impl Steps {
    /// `mixed` (already summed and rounded) becomes the output block over `base`.
    fn finish(&self, mixed: &mut [f32], base: &[f32], div: impl Fn(usize) -> f32) {
        if self.normalize {
            for (k, v) in mixed.iter_mut().enumerate() {
                *v /= div(k);
            }
            round_slice(self.dtype, mixed);
        }
        if let Some(lam) = self.lam {
            for v in mixed.iter_mut() {
                *v *= lam;
            }
            round_slice(self.dtype, mixed);
        }
        for (v, &b) in mixed.iter_mut().zip(base) {
            // `base + mixed`, in that operand order, as the element-by-element path.
            #[allow(clippy::assign_op_pattern)]
            {
                *v = b + *v;
            }
        }
        round_slice(self.dtype, mixed);
    }
}

impl GeneralizedTaskArithmetic {
    fn no_rng(&self) -> MethodError {
        MethodError::Other(format!(
            "{} draws random numbers but was given no random stream",
            self.name()
        ))
    }
}

/// The input's values aligned with the base, or `None` to skip it.
///
/// 0.1.5 refuses mismatched shapes. 0.0.4.2 cropped `lm_head`/`embed_tokens` tensors to the
/// base's size (`x[:rows, :cols]`) and skipped any other mismatched input with a warning.
fn aligned<'t>(
    input: &'t MergeInput<'_>,
    base: &Tensor,
    tensor_name: &str,
    inputs: &[MergeInput<'_>],
    compat: Compat,
) -> Result<Option<std::borrow::Cow<'t, [f32]>>, MethodError> {
    let x = input.tensor;
    if x.shape == base.shape && x.numel() == base.numel() {
        return Ok(Some(std::borrow::Cow::Borrowed(&x.data)));
    }
    let mismatch = || MethodError::Shape {
        tensor: tensor_name.into(),
        shapes: format!(
            "[{}]",
            inputs
                .iter()
                .map(|i| shape_str(&i.tensor.shape))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if compat == Compat::V0_1_5 {
        return Err(mismatch());
    }
    if tensor_name.contains("lm_head") || tensor_name.contains("embed_tokens") {
        if let ([xr, xc, xrest @ ..], [br, bc, brest @ ..]) =
            (x.shape.as_slice(), base.shape.as_slice())
        {
            if xr >= br && xc >= bc && xrest == brest {
                let inner: usize = brest.iter().product();
                let mut data = Vec::with_capacity(base.numel());
                for r in 0..*br {
                    let start = r * xc * inner;
                    let row = x.data.get(start..start + bc * inner).ok_or_else(mismatch)?;
                    data.extend_from_slice(row);
                }
                tracing::warn!("Using submatrix of {}:{}", input.label, tensor_name);
                return Ok(Some(std::borrow::Cow::Owned(data)));
            }
        }
        return Err(mismatch());
    }
    tracing::warn!(
        "skipping {}:{} due to size mismatch",
        input.label,
        tensor_name
    );
    Ok(None)
}

/// mergekit 0.0.4.2's DARE sparsifier: Bernoulli keep as in 0.1.5, but `rescale` divides by the
/// density (`res /= density`, the Python float applied as f32) instead of matching the L1 norm.
fn bernoulli_0_0_4_2(
    tv: &TaskVector<'_>,
    density: f64,
    rescale: bool,
    rng: &mut crate::rng::Mt19937,
) -> Result<Sparse, MethodError> {
    if density >= 1.0 {
        return Ok(Sparse::Dense);
    }
    // Drawing with rescale off gives `x·mask` in the work dtype, already rounded back.
    let masked = sparsify::bernoulli(tv, density, sparsify::Rescale::No, rng)?;
    if !rescale {
        return Ok(masked);
    }
    // The division happens in the work dtype (bf16, else f32) before the cast back.
    let dtype = tv.dtype();
    let work = if dtype == DType::BF16 {
        DType::BF16
    } else {
        DType::F32
    };
    let d = scalar(density);
    let mut data = masked.to_vec(tv);
    for v in data.iter_mut() {
        *v = round(dtype, round(work, *v / d));
    }
    Ok(Sparse::Values(data))
}
