//! `ramplus_tl` (RAM+, tensor-local): RAM whose unique contributions are boosted per model by how
//! much of that model's change overlaps with the others.

use amalgam_io::DType;

use super::common::require_base;
use super::ram::{prepare, sum_models};
use crate::numerics::round;
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Value,
};

/// The ramplus_tl method.
pub struct RamPlusTl {
    info: MethodInfo,
}

impl RamPlusTl {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        RamPlusTl {
            info: MethodInfo {
                name: "ramplus_tl",
                pretty_name: "Reinforced Agent Merging Plus (Tensor-Local)",
                reference_url: Some("https://arxiv.org/abs/2601.13572"),
                summary:
                    "As ram, but model i's unique changes are scaled by λᵢ = 1 + r·clamp(ρᵢ, 0, \
                          alpha), ρᵢ = (#shared changes)/max(#unique changes, epsilon) over the \
                          tensor. λ is a float32 tensor, so (as in mergekit) the result is float32 \
                          even for 16-bit inputs.",
                params: vec![
                    ParamSpec {
                        name: "r",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Float,
                        default: Some(Value::Float(0.1)),
                        doc: "strength of the overlap boost",
                    },
                    ParamSpec {
                        name: "alpha",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Float,
                        default: Some(Value::Float(0.2)),
                        doc: "cap on the overlap ratio",
                    },
                    ParamSpec {
                        name: "epsilon",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Float,
                        default: Some(Value::Float(1e-5)),
                        doc: "changes at or below this magnitude count as unchanged",
                    },
                ],
                contract: Contract::any(BaseRule::Required),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "Output is float32 for bf16/f16 inputs, exactly as mergekit 0.1.5 \
                             (the float32 λ promotes the result); cast with out_dtype if needed. \
                             ramplus_tl does not exist in mergekit 0.0.4.2.",
            },
        }
    }
}

impl Default for RamPlusTl {
    fn default() -> Self {
        Self::new()
    }
}

impl MergeMethod for RamPlusTl {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn output_dtype(&self, _work: DType) -> DType {
        DType::F32
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let r = args.shared_f64("r")? as f32;
        let alpha = args.shared_f64("alpha")? as f32;
        let eps = args.shared_f64("epsilon")?;
        let (base, xs) = args.split_base();
        let b = require_base(base, args.tensor_name)?;
        if xs.is_empty() {
            // mergekit returns the base tensor itself (its dtype).
            return Ok(b.clone());
        }
        let dt = b.dtype;
        let p = prepare(&xs, b, eps);
        // Per model: counts of shared / unique changes; ρ and λ in float32.
        let lambdas: Vec<f32> = p
            .nonzero
            .iter()
            .map(|nz| {
                let (mut shared, mut unique) = (0u64, 0u64);
                for (&z, &c) in nz.iter().zip(&p.counts) {
                    if z && c > 1 {
                        shared += 1;
                    }
                    if z && c == 1 {
                        unique += 1;
                    }
                }
                let den = (unique as f32).max(eps as f32);
                let rho = shared as f32 / den;
                let rho = if rho.is_nan() {
                    rho
                } else {
                    rho.clamp(0.0, alpha)
                };
                1.0 + r * rho
            })
            .collect();
        let data = sum_models(b, xs.len(), DType::F32, DType::F32, |m, i| {
            let (Some(tv), Some(nz)) = (p.tv.get(m), p.nonzero.get(m)) else {
                return 0.0;
            };
            let lam = lambdas.get(m).copied().unwrap_or(1.0);
            let c = p.counts.get(i).copied().unwrap_or(0);
            let t = tv.get(i).copied().unwrap_or(0.0);
            let z = if nz.get(i).copied().unwrap_or(false) {
                t
            } else {
                0.0 * t
            };
            // (τ·nz·unique) in the dtype, then · λ in f32.
            let unique = (if c == 1 { z } else { 0.0 * z }) * lam;
            let overlap = if c > 1 { z } else { 0.0 * z };
            let shared = round(dt, overlap / (c.max(1) as f32));
            unique + shared
        });
        Ok(Tensor::new(DType::F32, b.shape.clone(), data))
    }
}
