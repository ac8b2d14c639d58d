//! `sce` (Select, Calculate, Erase): keeps the elements where the models disagree most, weights
//! each model by the energy of its task vector and erases minority-sign contributions.

use amalgam_io::DType;

use super::common::{require_base, task_vector};
use crate::numerics::{round, scalar};
use crate::reduce::{full_mean_sum_with, outer_sum, threads_for, torch_float_lanes, torch_sum};
use crate::stdsort::topk_largest;
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

/// Population variance over models per element: Welford in f64 over f32 values, as PyTorch's
/// CPU `var` does (16-bit inputs are upcast to f32), then rounded f64 → f32 → dtype.
fn variance(tv: &[Vec<f32>], i: usize, dt: DType) -> f32 {
    let (mut mean, mut m2, mut n) = (0f64, 0f64, 0f64);
    for t in tv {
        let x = t.get(i).copied().unwrap_or(0.0) as f64;
        n += 1.0;
        let d = x - mean;
        mean += d / n;
        m2 += d * (x - mean);
    }
    let v = if n > 0.0 { m2 / n } else { f64::NAN };
    round(dt, v as f32)
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
        let dt = b.dtype;
        let n = b.data.len();
        let nm = xs.len();
        let mut tv: Vec<Vec<f32>> = xs.iter().map(|x| task_vector(x, b, dt)).collect();
        if topk < 1.0 {
            let mut keep = vec![false; n];
            if topk > 0.0 {
                let var: Vec<f32> = (0..n).map(|i| variance(&tv, i, dt)).collect();
                let nonzero = var.iter().filter(|&&v| v != 0.0).count();
                // `int(count_nonzero(var) * select_topk)`: an int64 0-d tensor times a Python
                // float is promoted to a float32 tensor, so the product is rounded in f32 before
                // truncation (e.g. 90 × 0.7 gives 63 here, 62 in f64).
                let k = (nonzero as f32 * scalar(topk)) as usize;
                // Which of several equal variances make the cut is decided by torch.topk's CPU
                // algorithm (libstdc++ nth_element/partial_sort), so it is replayed, not
                // approximated by a stable order.
                let keys: Vec<f32> = var.iter().map(|v| v.abs()).collect();
                for i in topk_largest(&keys, k) {
                    if let Some(kp) = keep.get_mut(i as usize) {
                        *kp = true;
                    }
                }
            }
            for t in tv.iter_mut() {
                for (v, &kp) in t.iter_mut().zip(&keep) {
                    *v *= if kp { 1.0 } else { 0.0 };
                }
            }
        }
        // Sign consensus (TIES "sum"): majority = sign of the model-axis sum, ties positive.
        let majority: Vec<f32> = (0..n)
            .map(|i| {
                let s = round(
                    dt,
                    outer_sum(
                        |m| tv.get(m).and_then(|t| t.get(i)).copied().unwrap_or(0.0),
                        nm,
                        i,
                        n,
                        dt,
                    ),
                );
                if s >= 0.0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let sign = |v: f32| -> f32 {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        // Model weights: mean(τ²) per model, normalised by their (Python float) sum.
        let energy: Vec<f32> = tv
            .iter()
            .map(|t| {
                // `.mean(dim=1)`: on the CPU PyTorch casts bf16/f16 to f32 before reducing, so
                // the squares (rounded to `dt`) are summed with f32 loads; one model is a
                // reduction to one value, which splits per thread.
                let s = full_mean_sum_with(
                    |i| t.get(i).map_or(0.0, |&v| round(dt, v * v)),
                    t.len(),
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
        let ew = |m: usize, i: usize| -> f32 {
            let v = tv.get(m).and_then(|t| t.get(i)).copied().unwrap_or(0.0);
            let keep = sign(v) == majority.get(i).copied().unwrap_or(1.0);
            let w = weights.get(m).copied().unwrap_or(0.0);
            round(dt, w * if keep { 1.0 } else { 0.0 })
        };
        let floor = round(dt, 1e-6);
        let data = (0..n)
            .map(|i| {
                let merged = round(
                    dt,
                    outer_sum(
                        |m| {
                            round(
                                dt,
                                tv.get(m).and_then(|t| t.get(i)).copied().unwrap_or(0.0) * ew(m, i),
                            )
                        },
                        nm,
                        i,
                        n,
                        dt,
                    ),
                );
                let den = round(dt, outer_sum(|m| ew(m, i), nm, i, n, dt));
                let den = if den < floor { floor } else { den };
                let fin = round(dt, merged / den);
                round(dt, b.data.get(i).copied().unwrap_or(0.0) + fin)
            })
            .collect();
        Ok(Tensor::new(dt, b.shape.clone(), data))
    }
}
