//! `sce` (Select, Calculate, Erase): keeps the elements where the models disagree most, weights
//! each model by the energy of its task vector and erases minority-sign contributions.

use amalgam_io::DType;

use rayon::prelude::*;

use super::common::{check_same_shape, require_base};
use crate::numerics::{round, round_slice, scalar};
use crate::reduce::{full_mean_sum_with, threads_for, torch_float_lanes, torch_sum, Dim0Sum};
use crate::stdsort::topk_largest_set;
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
        // Task vectors built in parallel (one per model, each rounded in bulk: the same bits as
        // element by element).
        let mut tv: Vec<Vec<f32>> = xs
            .par_iter()
            .map(|x| {
                let mut t: Vec<f32> = x.data.iter().zip(&b.data).map(|(&v, &w)| v - w).collect();
                round_slice(dt, &mut t);
                t
            })
            .collect();
        if topk < 1.0 {
            let mut keep = vec![false; n];
            if topk > 0.0 {
                // `|var|` over models per element, in parallel blocks (each element on its own).
                let mut keys = vec![0f32; n];
                keys.par_chunks_mut(BLOCK)
                    .enumerate()
                    .for_each(|(blk, ks)| variance_block(&tv, blk * BLOCK, ks, dt));
                let nonzero = keys.iter().filter(|&&v| v != 0.0).count();
                // `int(count_nonzero(var) * select_topk)`: an int64 0-d tensor times a Python
                // float is promoted to a float32 tensor, so the product is rounded in f32 before
                // truncation (e.g. 90 × 0.7 gives 63 here, 62 in f64).
                let k = (nonzero as f32 * scalar(topk)) as usize;
                // Which of several equal variances make the cut is decided by torch.topk's CPU
                // algorithm (libstdc++ nth_element/partial_sort), so it is replayed, not
                // approximated by a stable order; only the kept set matters here, so the sort of
                // the selected part that follows the selection is skipped.
                for i in topk_largest_set(keys, k) {
                    if let Some(kp) = keep.get_mut(i as usize) {
                        *kp = true;
                    }
                }
            }
            tv.par_iter_mut().for_each(|t| {
                for (v, &kp) in t.iter_mut().zip(&keep) {
                    *v *= if kp { 1.0 } else { 0.0 };
                }
            });
        }
        // Model weights: mean(τ²) per model, normalised by their (Python float) sum.
        let energy: Vec<f32> = tv
            .par_iter()
            .map(|t| {
                // `.mean(dim=1)`: on the CPU PyTorch casts bf16/f16 to f32 before reducing, so
                // the squares (rounded to `dt`) are summed with f32 loads; one model is a
                // reduction to one value, which splits per thread.
                let mut sq: Vec<f32> = t.iter().map(|&v| v * v).collect();
                round_slice(dt, &mut sq);
                let s = full_mean_sum_with(
                    |i| sq.get(i).copied().unwrap_or(0.0),
                    sq.len(),
                    threads_for(nm, args.torch_threads),
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
                let cols: Vec<&[f32]> = tv.iter().map(|t| &t[at..at + len]).collect();
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

/// Elements per parallel block: every model's block of scratch stays in the CPU cache.
const BLOCK: usize = 4096;

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

/// `|var|` over models of the elements at `at..at + out.len()`: the population variance by
/// Welford in f64 over f32 values, as PyTorch's CPU `var` does (16-bit inputs are upcast to f32),
/// rounded f64 → f32 → dtype. In bulk, models in the outer loop: the same operations per element.
fn variance_block(tv: &[Vec<f32>], at: usize, out: &mut [f32], dt: DType) {
    let len = out.len();
    let mut mean = vec![0f64; len];
    let mut m2 = vec![0f64; len];
    for (m, t) in tv.iter().enumerate() {
        let cnt = (m + 1) as f64;
        for ((mu, s), &x) in mean.iter_mut().zip(m2.iter_mut()).zip(&t[at..at + len]) {
            let x = x as f64;
            let d = x - *mu;
            *mu += d / cnt;
            *s += d * (x - *mu);
        }
    }
    let nm = tv.len() as f64;
    for (o, &s) in out.iter_mut().zip(&m2) {
        *o = if nm > 0.0 { (s / nm) as f32 } else { f32::NAN };
    }
    round_slice(dt, out);
    for o in out.iter_mut() {
        *o = o.abs();
    }
}

/// Per-thread buffers of one block.
struct Scratch {
    sum: Vec<f32>,
    den: Vec<f32>,
    ew: Vec<Vec<f32>>,
    prod: Vec<Vec<f32>>,
}

impl Scratch {
    fn new(models: usize) -> Self {
        Scratch {
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
