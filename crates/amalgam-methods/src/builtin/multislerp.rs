//! `multislerp`: barycentric interpolation of any number of models on the hypersphere (tangent
//! space at the weighted mean direction), optionally relative to a base.

use super::common::task_vector;
use crate::numerics::{round, scalar};
use crate::reduce::{norm2, outer_sum, torch_float_lanes, torch_sum, torch_sum_with};
use amalgam_schema::{ContractViolation, Counted};

use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Value,
};

/// mergekit's refusal when the weighted mean direction vanishes.
const ZERO_MEAN: &str = "The weighted sum of the input tensors is zero. This occurs when \
antipodal vectors or sets of vectors have weights that exactly balance out (e.g., vectors a,-a \
with equal weights). Try using different weights if you have antipodal vectors.";

/// The multislerp method.
pub struct MultiSlerp {
    info: MethodInfo,
}

impl MultiSlerp {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        MultiSlerp {
            info: MethodInfo {
                name: "multislerp",
                pretty_name: "Multi-SLERP",
                reference_url: Some("https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"),
                summary: "In the input dtype: Xᵢ = xᵢ (− base); Uᵢ = Xᵢ/(‖Xᵢ‖+eps); m = normalised \
                          Σ wᵢUᵢ; tangent τ = Σ wᵢ(Uᵢ − (Uᵢ·m)m); out = (m cos‖τ‖ + τ sin‖τ‖/‖τ‖) · \
                          Σ wᵢ‖Xᵢ‖ (+ base). One non-base model is returned unchanged.",
                params: vec![
                    ParamSpec {
                        name: "weight",
                        scope: ParamScope::NonBase,
                        kind: ParamKind::Float,
                        default: None,
                        doc: "weight of each non-base model",
                    },
                    ParamSpec {
                        name: "normalize_weights",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Bool,
                        default: Some(Value::Bool(true)),
                        doc: "divide the weights by their sum",
                    },
                    ParamSpec {
                        name: "eps",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Float,
                        default: Some(Value::Float(1e-8)),
                        doc: "numerical-stability constant",
                    },
                ],
                contract: Contract::at_least_non_base(BaseRule::Optional, 1),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "f32 inputs: cos/sin of the tangent norm use the platform libm where \
                             PyTorch uses SLEEF/MKL (rare last-bit differences); tolerance 4 ulp of \
                             each tensor's largest magnitude (bit-exact on tests/golden-threads at \
                             1/2/4 torch threads). multislerp does not exist in mergekit 0.0.4.2.",
            },
        }
    }
}

impl Default for MultiSlerp {
    fn default() -> Self {
        Self::new()
    }
}

impl MergeMethod for MultiSlerp {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let normalize = args.shared_bool("normalize_weights")?;
        let eps = scalar(args.shared_f64("eps")?);
        let (base, xs) = args.split_base();
        let first = xs.first().ok_or_else(|| {
            args.contract_error(ContractViolation::Count {
                what: Counted::NonBase,
                min: 1,
                max: None,
                got: 0,
            })
        })?;
        if xs.len() == 1 {
            return Ok((*first).clone());
        }
        let dt = first.dtype;
        let d = first.data.len();
        let nm = xs.len();
        let raw_w: Vec<f64> = args
            .inputs
            .iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != args.base)
            .map(|(_, i)| i.f64("weight"))
            .collect::<Result<_, _>>()?;
        let mut w: Vec<f32> = raw_w.iter().map(|&v| round(dt, v as f32)).collect();
        if normalize {
            let s = round(dt, torch_sum(&w, dt, torch_float_lanes()));
            w = w.iter().map(|&v| round(dt, v / s)).collect();
        }
        let x: Vec<Vec<f32>> = xs
            .iter()
            .map(|t| match base {
                Some(b) => task_vector(t, b, dt),
                None => t.data.clone(),
            })
            .collect();
        let norms: Vec<f32> = x.iter().map(|r| norm2(r, dt)).collect();
        let units: Vec<Vec<f32>> = x
            .iter()
            .zip(&norms)
            .map(|(r, &nrm)| {
                let den = round(dt, nrm + eps);
                r.iter().map(|&v| round(dt, v / den)).collect()
            })
            .collect();
        let wsum_rows = |rows: &[Vec<f32>]| -> Vec<f32> {
            (0..d)
                .map(|i| {
                    round(
                        dt,
                        outer_sum(
                            |m| {
                                let v = rows.get(m).and_then(|r| r.get(i)).copied().unwrap_or(0.0);
                                round(dt, v * w.get(m).copied().unwrap_or(0.0))
                            },
                            nm,
                            i,
                            d,
                            dt,
                        ),
                    )
                })
                .collect()
        };
        let mean = wsum_rows(&units);
        let mean_norm = norm2(&mean, dt);
        let add_base = |r: Vec<f32>| -> Vec<f32> {
            match base {
                Some(b) => r
                    .iter()
                    .zip(&b.data)
                    .map(|(&v, &c)| round(dt, v + c))
                    .collect(),
                None => r,
            }
        };
        if mean_norm < round(dt, eps) {
            if let ([x0, x1], [w0, w1]) = (x.as_slice(), w.as_slice()) {
                let r = x0
                    .iter()
                    .zip(x1)
                    .map(|(&a, &b)| round(dt, round(dt, a * w0) + round(dt, b * w1)))
                    .collect();
                return Ok(Tensor::new(dt, first.shape.clone(), add_base(r)));
            }
            return Err(MethodError::Other(ZERO_MEAN.into()));
        }
        let mean: Vec<f32> = mean.iter().map(|&v| round(dt, v / mean_norm)).collect();
        let tangents: Vec<Vec<f32>> = units
            .iter()
            .map(|u| {
                let dot = round(
                    dt,
                    torch_sum_with(
                        |i| match (u.get(i), mean.get(i)) {
                            (Some(&a), Some(&b)) => round(dt, a * b),
                            _ => 0.0,
                        },
                        d,
                        dt,
                    ),
                );
                u.iter()
                    .zip(&mean)
                    .map(|(&a, &m)| round(dt, a - round(dt, dot * m)))
                    .collect()
            })
            .collect();
        let tr = wsum_rows(&tangents);
        let tn = round(dt, norm2(&tr, dt) + eps);
        let c = round(dt, tn.cos());
        let s = round(dt, round(dt, tn.sin()) / tn);
        let nw: Vec<f32> = norms
            .iter()
            .zip(&w)
            .map(|(&a, &b)| round(dt, a * b))
            .collect();
        let avg_norm = round(dt, torch_sum(&nw, dt, torch_float_lanes()));
        let r: Vec<f32> = mean
            .iter()
            .zip(&tr)
            .map(|(&m, &t)| {
                let v = round(dt, round(dt, m * c) + round(dt, t * s));
                round(dt, v * avg_norm)
            })
            .collect();
        Ok(Tensor::new(dt, first.shape.clone(), add_base(r)))
    }
}
