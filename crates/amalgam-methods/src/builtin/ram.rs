//! `ram` (Reinforced Agent Merging): parameters changed by one model take that model's change
//! whole; parameters changed by several take their average.

use amalgam_io::DType;

use super::common::{require_base, task_vector};
use crate::numerics::round;
use crate::reduce::outer_sum;
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Tensor as T, Value,
};

/// The task vectors and masks both RAM variants start from.
pub(crate) struct RamPrep {
    /// τᵢ = xᵢ − b, rounded to the dtype, one per non-base model.
    pub tv: Vec<Vec<f32>>,
    /// |τᵢ| > ε.
    pub nonzero: Vec<Vec<bool>>,
    /// Number of models with a nonzero change, per element.
    pub counts: Vec<u32>,
}

/// Builds [`RamPrep`]; `eps` is compared in the tensor dtype, as PyTorch converts the scalar.
pub(crate) fn prepare(xs: &[&T], b: &T, eps: f64) -> RamPrep {
    let dt = b.dtype;
    let e = round(dt, eps as f32);
    let tv: Vec<Vec<f32>> = xs.iter().map(|x| task_vector(x, b, dt)).collect();
    let nonzero: Vec<Vec<bool>> = tv
        .iter()
        .map(|t| t.iter().map(|&v| v.abs() > e).collect())
        .collect();
    let n = b.data.len();
    let mut counts = vec![0u32; n];
    for nz in &nonzero {
        for (c, &z) in counts.iter_mut().zip(nz) {
            *c += z as u32;
        }
    }
    RamPrep {
        tv,
        nonzero,
        counts,
    }
}

/// The method-independent part: `b + Σ_models contrib(model, element)` with mergekit's model-axis
/// sum order; `contrib` returns the already-rounded per-model term.
pub(crate) fn sum_models(
    b: &T,
    models: usize,
    sum_dtype: DType,
    out_dtype: DType,
    contrib: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let n = b.data.len();
    b.data
        .iter()
        .enumerate()
        .map(|(i, &bv)| {
            let s = round(
                sum_dtype,
                outer_sum(|m| contrib(m, i), models, i, n, sum_dtype),
            );
            round(out_dtype, bv + s)
        })
        .collect()
}

/// The ram method.
pub struct Ram {
    info: MethodInfo,
}

impl Ram {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        Ram {
            info: MethodInfo {
                name: "ram",
                pretty_name: "Reinforced Agent Merging",
                reference_url: Some("https://arxiv.org/abs/2601.13572"),
                summary:
                    "τᵢ = xᵢ − b; an element changed (|τᵢ| > epsilon) by exactly one model takes \
                          that change, one changed by several takes the mean of their changes; \
                          out = b + Σ, all in the input dtype.",
                params: vec![ParamSpec {
                    name: "epsilon",
                    scope: ParamScope::Shared,
                    kind: ParamKind::Float,
                    default: Some(Value::Float(1e-5)),
                    doc: "changes at or below this magnitude count as unchanged",
                }],
                contract: Contract::any(BaseRule::Required),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "none known (ram does not exist in mergekit 0.0.4.2)",
            },
        }
    }
}

impl Default for Ram {
    fn default() -> Self {
        Self::new()
    }
}

// Not elementwise for the engine's chunking: with five or more models PyTorch's model-axis sum
// order depends on an element's column within the whole tensor.
impl MergeMethod for Ram {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let eps = args.shared_f64("epsilon")?;
        let (base, xs) = args.split_base();
        let b = require_base(base, args.tensor_name)?;
        if xs.is_empty() {
            return Ok(b.clone());
        }
        let dt = b.dtype;
        let p = prepare(&xs, b, eps);
        let data = sum_models(b, xs.len(), dt, dt, |m, i| {
            let (Some(tv), Some(nz)) = (p.tv.get(m), p.nonzero.get(m)) else {
                return 0.0;
            };
            let c = p.counts.get(i).copied().unwrap_or(0);
            let z = if nz.get(i).copied().unwrap_or(false) {
                tv.get(i).copied().unwrap_or(0.0)
            } else {
                0.0 * tv.get(i).copied().unwrap_or(0.0)
            };
            let unique = if c == 1 { z } else { 0.0 * z };
            let overlap = if c > 1 { z } else { 0.0 * z };
            let shared = round(dt, overlap / (c.max(1) as f32));
            round(dt, unique + shared)
        });
        Ok(Tensor::new(dt, b.shape.clone(), data))
    }
}
