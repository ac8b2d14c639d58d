//! `passthrough`: copies its single input, optionally scaled (frankenmerges, layer stacking).

use crate::numerics::{round_slice, scalar};
use crate::{
    BaseRule, Compat, Contract, Legacy, MergeArgs, MergeArgs64, MergeMethod, MethodError, MethodInfo, ParamKind,
    ParamScope, ParamSpec, ParamValues, Tensor, Value,
};

/// The passthrough method.
pub struct Passthrough {
    info: MethodInfo,
}

impl Passthrough {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        Passthrough {
            info: MethodInfo {
                name: "passthrough",
                pretty_name: "Passthrough",
                reference_url: None,
                summary:
                    "Copies the one input tensor; with `scale`, out = x · f32(scale) rounded to \
                          the input dtype (same arithmetic in 0.1.5 and 0.0.4.2).",
                params: vec![ParamSpec {
                    name: "scale",
                    scope: ParamScope::Input,
                    kind: ParamKind::Float,
                    // mergekit's default is "no scaling" (null); multiplying by 1.0 and rounding
                    // back is the identity on every value, so 1.0 is the same default.
                    default: Some(Value::Float(1.0)),
                    doc: "multiply the tensor by this factor (e.g. 0 to zero a projection)",
                }],
                contract: Contract::exactly(BaseRule::Ignored, 1),
                random: false,
                legacy: Legacy::Implemented,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "none",
            },
        }
    }
}

impl Default for Passthrough {
    fn default() -> Self {
        Self::new()
    }
}

impl MergeMethod for Passthrough {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn is_elementwise(&self, _: &ParamValues, _: &[&ParamValues]) -> bool {
        true
    }

    fn supports_f64(&self, _compat: Compat, _inputs: usize) -> bool {
        // `tensor * scale` in both versions; the contract (one input) is checked below.
        true
    }

    /// In f64: the input as read, or `x * scale` with the python float applied in f64.
    fn merge_f64(&self, args: MergeArgs64<'_>) -> Result<Vec<f64>, MethodError> {
        let [input] = args.inputs.as_slice() else {
            return Err(MethodError::Contract {
                tensor: args.tensor_name.to_string(),
                violation: amalgam_schema::ContractViolation::Count {
                    what: amalgam_schema::Counted::Inputs,
                    min: 1,
                    max: Some(1),
                    got: args.inputs.len(),
                },
            });
        };
        let scale = input.f64("scale")?;
        Ok(if scale == 1.0 {
            input.data.to_vec()
        } else {
            input.data.iter().map(|&v| v * scale).collect()
        })
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        // Identical arithmetic in 0.0.4.2 (`tensor * scale`), so both versions are served.
        args.check(&self.info)?;
        let input = args.first()?;
        let x = input.tensor;
        // 1.0 is the declared default (mergekit's "no scale"): multiplying by it is the identity.
        match Some(input.f64("scale")?).filter(|&s| s != 1.0) {
            None => Ok(x.clone()),
            Some(s) => {
                let s = scalar(s);
                let mut data: Vec<f32> = x.data.iter().map(|&v| v * s).collect();
                round_slice(x.dtype, &mut data);
                Ok(Tensor::new(x.dtype, x.shape.clone(), data))
            }
        }
    }
}
