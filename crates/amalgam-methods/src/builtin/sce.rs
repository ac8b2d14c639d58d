//! `sce` (Select, Calculate, Erase): keeps the elements where the models disagree most, weights
//! each model by the energy of its task vector and erases minority-sign contributions.

use amalgam_io::DType;

use rayon::prelude::*;

use super::blocks::{part, task_block, BLOCK};
use super::common::{check_same_shape, require_base};
use crate::numerics::{round, round_slice, scalar};
use crate::reduce::{sum_split_blocks, threads_for, torch_float_lanes, torch_sum, Dim0Sum};
use crate::stdsort::{topk_largest_select, Keyed};
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Value,
};

/// The sce method.
pub struct Sce {
    info: MethodInfo,
}

impl Sce {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        Sce {
            info: MethodInfo {
                name: "sce",
                pretty_name: "SCE",
                reference_url: Some("https://arxiv.org/abs/2408.07990"),
                summary: "τᵢ = xᵢ − b; with select_topk < 1 only the top fraction of elements by \
                          variance across models is kept; each model is weighted by mean(τᵢ²) / Σ; \
                          minority signs (TIES sum consensus) are erased; out = b + Σ wᵢMᵢτᵢ / \
                          max(Σ wᵢMᵢ, 1e-6), in the input dtype.",
                params: vec![
                    ParamSpec {
                        name: "select_topk",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Float,
                        default: Some(Value::Float(1.0)),
                        doc: "fraction of elements (by variance across models) to keep",
                    },
                    ParamSpec {
                        name: "int8_mask",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Bool,
                        default: Some(Value::Bool(false)),
                        doc: "store masks as int8 (memory only; no numeric effect)",
                    },
                ],
                contract: Contract::any(BaseRule::Required),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "None known on CPU: ties in variance at the selection boundary are \
                             resolved by replaying torch.topk's libstdc++ selection. mergekit on \
                             CUDA breaks those ties differently. sce does not exist in mergekit \
                             0.0.4.2.",
            },
        }
    }
}

impl Default for Sce {
    fn default() -> Self {
        Self::new()
    }
}

impl MergeMethod for Sce {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let topk = args.shared_f64("select_topk")?;
        let (base, xs) = args.split_base();
        let b = require_base(base, args.tensor_name)?;
        if xs.is_empty() {
            return Ok(b.clone());
        }
        // PyTorch refuses `x - base` of different shapes; every index below is then in range.
        check_same_shape(&args)?;
        let dt = b.dtype;
        let n = b.data.len();
        let nm = xs.len();
        // The task vectors τᵢ = round(xᵢ − b) are never stored: every pass recomputes its block
        // of them from the inputs (cheaper than a tensor-sized buffer per model, and the same
        // bits), masked by `keep` once the top-k set is known.
        let xd: Vec<&[f32]> = xs.iter().map(|x| x.data.as_slice()).collect();
        let keep = if topk < 1.0 {
            let mut keep = vec![false; n];
            if topk > 0.0 {
                if u32::try_from(n).is_err() {
                    return Err(MethodError::Other(
                        "sce: tensor too large to select from (> 2^32 elements)".into(),
                    ));
                }
                // `|var|` over models per element, in parallel blocks (each element on its own),
                // written straight into the `(key, index)` pairs the selection works on.
                let mut keyed = vec![Keyed { key: 0.0, index: 0 }; n];
                keyed.par_chunks_mut(BLOCK).enumerate().for_each_init(
                    || Scratch::new(nm),
                    |sc, (blk, ks)| {
                        let at = blk * BLOCK;
                        let var = &mut sc.sum[..ks.len()];
                        variance_block(&xd, &b.data, at, &mut sc.tv, var, dt);
                        for (j, (k, &v)) in ks.iter_mut().zip(var.iter()).enumerate() {
                            *k = Keyed {
                                key: v,
                                index: (at + j) as u32,
                            };
                        }
                    },
                );
                let nonzero = keyed.iter().filter(|k| k.key != 0.0).count();
                // `int(count_nonzero(var) * select_topk)`: an int64 0-d tensor times a Python
                // float is promoted to a float32 tensor, so the product is rounded in f32 before
                // truncation (e.g. 90 × 0.7 gives 63 here, 62 in f64).
                let k = (nonzero as f32 * scalar(topk)) as usize;
                // Which of several equal variances make the cut is decided by torch.topk's CPU
                // algorithm (libstdc++ nth_element/partial_sort), so it is replayed, not
                // approximated by a stable order; only the kept set matters here, so the sort of
                // the selected part that follows the selection is skipped.
                for kd in topk_largest_select(&mut keyed, k) {
                    if let Some(kp) = keep.get_mut(kd.index as usize) {
                        *kp = true;
                    }
                }
            }
            Some(keep)
        } else {
            None
        };
        let keep = keep.as_deref();
        // Model weights: mean(τ²) per model, normalised by their (Python float) sum.
        let energy: Vec<f32> = xd
            .par_iter()
            .map(|x| {
                // `.mean(dim=1)`: on the CPU PyTorch casts bf16/f16 to f32 before reducing, so
                // the squares (rounded to `dt`) are summed with f32 loads; one model is a
                // reduction to one value, which splits per thread.
                let s = sum_split_blocks(
                    n,
                    DType::F32,
                    DType::F32,
                    threads_for(nm, args.torch_threads),
                    |at, sq| {
                        masked_task(dt, x, &b.data, keep, at, sq);
                        for v in sq.iter_mut() {
                            *v *= *v;
                        }
                        round_slice(dt, sq);
                    },
                );
                round(dt, s / n.max(1) as f32)
            })
            .collect();
        let total = round(dt, torch_sum(&energy, dt, torch_float_lanes())) as f64;
        let weights: Vec<f32> = if total.abs() < 1e-6 {
            energy.iter().map(|_| round(dt, 1.0 / nm as f32)).collect()
        } else {
            energy
                .iter()
                .map(|&e| round(dt, e / total as f32))
                .collect()
        };
        // Every output element depends only on its own column of the task vectors: blocks in
        // parallel, each step rounded in bulk (the same bits as one element at a time).
        let plan = Dim0Sum::new(n, dt, torch_float_lanes());
        // Up to four models (and more than one column) every column adds in plain sequence
        // from zero (see `Dim0Sum::sum_with`): then whole blocks are summed model by model.
        let seq = nm <= SEQ_MAX && n > 1;
        let floor = round(dt, 1e-6);
        let mut data = vec![0f32; n];
        data.par_chunks_mut(BLOCK).enumerate().for_each_init(
            || Scratch::new(nm),
            |sc, (blk, out)| {
                let at = blk * BLOCK;
                let len = out.len();
                for (t, x) in sc.tv.iter_mut().zip(&xd) {
                    masked_task(dt, x, &b.data, keep, at, &mut t[..len]);
                }
                let cols: Vec<&[f32]> = sc.tv.iter().map(|t| &t[..len]).collect();
                // Sign consensus (TIES "sum"): majority = sign of the model-axis sum, ties
                // positive.
                let sum = &mut sc.sum[..len];
                col_sum(sum, &cols, at, &plan, seq);
                round_slice(dt, sum);
                // `w·(sign(τ) == majority)`, then `τ·that`, each rounded.
                for (m, c) in cols.iter().enumerate() {
                    let (ew, prod) = (&mut sc.ew[m][..len], &mut sc.prod[m][..len]);
                    let w = weights[m];
                    for ((e, &v), &sv) in ew.iter_mut().zip(c.iter()).zip(sum.iter()) {
                        let majority = if sv >= 0.0 { 1.0 } else { -1.0 };
                        *e = w * if sign(v) == majority { 1.0 } else { 0.0 };
                    }
                    round_slice(dt, ew);
                    for ((p, &v), &e) in prod.iter_mut().zip(c.iter()).zip(ew.iter()) {
                        *p = v * e;
                    }
                    round_slice(dt, prod);
                }
                let ews: Vec<&[f32]> = sc.ew.iter().map(|e| &e[..len]).collect();
                let prods: Vec<&[f32]> = sc.prod.iter().map(|p| &p[..len]).collect();
                let den = &mut sc.den[..len];
                col_sum(out, &prods, at, &plan, seq);
                col_sum(den, &ews, at, &plan, seq);
                round_slice(dt, out);
                round_slice(dt, den);
                for (o, d) in out.iter_mut().zip(den.iter()) {
                    let d = if *d < floor { floor } else { *d };
                    *o /= d;
                }
                round_slice(dt, out);
                for (o, &bv) in out.iter_mut().zip(&b.data[at..at + len]) {
                    // `base + fin`, in that operand order (which NaN propagates).
                    #[allow(clippy::assign_op_pattern)]
                    {
                        *o = bv + *o;
                    }
                }
                round_slice(dt, out);
            },
        );
        Ok(Tensor::new(dt, b.shape.clone(), data))
    }
}

/// Most models whose model-axis sum adds in plain sequence (PyTorch's four accumulators).
const SEQ_MAX: usize = 4;

/// `out[j] = Σ_m cols[m][j]` for the columns at `at..`, in PyTorch's order for the model axis.
fn col_sum(out: &mut [f32], cols: &[&[f32]], at: usize, plan: &Dim0Sum, seq: bool) {
    if seq {
        out.fill(0.0);
        for c in cols {
            for (o, &v) in out.iter_mut().zip(c.iter()) {
                *o += v;
            }
        }
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            *o = plan.sum_with(at + j, |m| cols.get(m).map_or(0.0, |c| c[j]), cols.len());
        }
    }
}

/// `out = τ` of the elements at `at..at + out.len()` for one model `x`: `round(x − b)`, times the
/// top-k mask when there is one (by 1 or 0, as PyTorch multiplies, keeping signed zeros and NaN).
fn masked_task(dt: DType, x: &[f32], b: &[f32], keep: Option<&[bool]>, at: usize, out: &mut [f32]) {
    let len = out.len();
    task_block(dt, part(x, at, len), Some(part(b, at, len)), out);
    if let Some(keep) = keep {
        for (v, &kp) in out.iter_mut().zip(part_bool(keep, at, len)) {
            *v *= if kp { 1.0 } else { 0.0 };
        }
    }
}

/// The block `at..at + len` of a mask, empty past its end.
fn part_bool(xs: &[bool], at: usize, len: usize) -> &[bool] {
    xs.get(at..at + len).unwrap_or(&[])
}

/// `|var|` over models of the elements at `at..at + out.len()`: the population variance by
/// Welford in f64 over f32 values, as PyTorch's CPU `var` does (16-bit inputs are upcast to f32),
/// rounded f64 → f32 → dtype. In bulk, models in the outer loop: the same operations per element.
/// `tv` is scratch for each model's task-vector block.
fn variance_block(
    xs: &[&[f32]],
    b: &[f32],
    at: usize,
    tv: &mut [Vec<f32>],
    out: &mut [f32],
    dt: DType,
) {
    let len = out.len();
    let mut mean = [0f64; BLOCK];
    let mut m2 = [0f64; BLOCK];
    let (mean, m2) = (&mut mean[..len], &mut m2[..len]);
    for (m, (x, t)) in xs.iter().zip(tv.iter_mut()).enumerate() {
        let t = &mut t[..len];
        masked_task(dt, x, b, None, at, t);
        let cnt = (m + 1) as f64;
        for ((mu, s), &x) in mean.iter_mut().zip(m2.iter_mut()).zip(t.iter()) {
            let x = x as f64;
            let d = x - *mu;
            *mu += d / cnt;
            *s += d * (x - *mu);
        }
    }
    let nm = xs.len() as f64;
    for (o, &s) in out.iter_mut().zip(m2.iter()) {
        *o = if nm > 0.0 { (s / nm) as f32 } else { f32::NAN };
    }
    round_slice(dt, out);
    for o in out.iter_mut() {
        *o = o.abs();
    }
}

/// Per-thread buffers of one block.
struct Scratch {
    tv: Vec<Vec<f32>>,
    sum: Vec<f32>,
    den: Vec<f32>,
    ew: Vec<Vec<f32>>,
    prod: Vec<Vec<f32>>,
}

impl Scratch {
    fn new(models: usize) -> Self {
        Scratch {
            tv: vec![vec![0.0; BLOCK]; models],
            sum: vec![0.0; BLOCK],
            den: vec![0.0; BLOCK],
            ew: vec![vec![0.0; BLOCK]; models],
            prod: vec![vec![0.0; BLOCK]; models],
        }
    }
}

/// `torch.sign`: zero (and NaN's comparisons) give 0.
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}
