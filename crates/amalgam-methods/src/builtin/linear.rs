//! `linear`: weighted average of the inputs (Wortsman et al., model soups).

use crate::numerics::{
    as_dtype, div_slice, div_slice_f64, fma_accumulate, fma_accumulate_f64, round, round_slice,
};
use crate::{
    BaseRule, Compat, Contract, Legacy, MergeArgs, MergeArgs64, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, ParamValues, Tensor, Value,
};

/// The linear method.
pub struct Linear {
    info: MethodInfo,
}

impl Linear {
    pub fn new() -> Self {
        Linear {
            info: MethodInfo {
                name: "linear",
                pretty_name: "Linear",
                reference_url: Some("https://arxiv.org/abs/2203.05482"),
                summary: "out = Σ wᵢ·xᵢ / Σ wᵢ (or Σ wᵢ·xᵢ without normalize). 0.1.5: f32 fused \
                          multiply-add accumulation in input order, one rounding. 0.0.4.2: weights \
                          and each product rounded to the working dtype, f32 sum, rounding, division.",
                params: vec![
                    ParamSpec {
                        name: "weight",
                        scope: ParamScope::Input,
                        kind: ParamKind::Float,
                        default: None,
                        doc: "weight of each input (the base model too, if one is given)",
                    },
                    ParamSpec {
                        name: "normalize",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Bool,
                        default: Some(Value::Bool(true)),
                        doc: "divide by the sum of the weights",
                    },
                ],
                contract: Contract::any(BaseRule::Ignored),
                random: false,
                legacy: Legacy::Implemented,
                card_names_base: true,
                uniform_fallback: Some("weight"),
                deviations: "none",
            },
        }
    }
}

impl MergeMethod for Linear {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn is_elementwise(&self, _: &ParamValues, _: &[&ParamValues]) -> bool {
        true
    }

    fn supports_f64(&self, compat: Compat, _inputs: usize) -> bool {
        compat == Compat::V0_1_5
    }

    /// mergekit 0.1.5 with a float64 working dtype: the weights become an f64 tensor (python
    /// floats, never through f32), each input is accumulated into an f64 zero tensor by
    /// `addcmul_` (a fused multiply-add, as in f32), then divided by the sum of the weights
    /// (an f64 sum in input order). No rounding step: the result is already f64.
    fn merge_f64(&self, args: MergeArgs64<'_>) -> Result<Vec<f64>, MethodError> {
        if args.compat != Compat::V0_1_5 {
            return Err(MethodError::Float64Unsupported {
                method: format!("{} (mergekit {})", self.info.name, args.compat),
            });
        }
        let normalize = args.param("normalize")?.as_bool();
        let n = args.inputs.first().map_or(0, |i| i.data.len());
        if let Some(bad) = args.inputs.iter().find(|i| i.data.len() != n) {
            return Err(MethodError::Shape {
                tensor: args.tensor_name.to_string(),
                shapes: format!("{} has {} values, the first input {n}", bad.label, bad.data.len()),
            });
        }
        let weights: Vec<f64> = args
            .inputs
            .iter()
            .map(|i| i.f64("weight"))
            .collect::<Result<_, _>>()?;
        let mut out = vec![0f64; n];
        for (inp, &w) in args.inputs.iter().zip(&weights) {
            fma_accumulate_f64(&mut out, inp.data, w);
        }
        if normalize {
            let den = weights.iter().fold(0f64, |a, &b| a + b);
            div_slice_f64(&mut out, den);
        }
        Ok(out)
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let dtype = args.dtype();
        let normalize = args.shared_bool("normalize")?;
        let first = args.first()?;
        let n = first.tensor.numel();
        let shape = first.tensor.shape.clone();
        let weights: Vec<f64> = args
            .inputs
            .iter()
            .map(|i| i.f64("weight"))
            .collect::<Result<_, _>>()?;
        let mut out = vec![0f32; n];
        match args.compat {
            Compat::V0_1_5 => {
                // f32 coefficients, fused multiply-add accumulation in input order (PyTorch's CPU
                // addcmul_ is contracted to FMA), then one division and one rounding.
                let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
                for (inp, &wi) in args.inputs.iter().zip(&w) {
                    fma_accumulate(&mut out, &inp.tensor.data, wi);
                }
                if normalize {
                    let den = w.iter().fold(0f32, |a, &b| a + b);
                    div_slice(&mut out, den);
                }
                round_slice(dtype, &mut out);
            }
            Compat::V0_0_4_2 => {
                // Weights become a tensor of the working dtype; each product is rounded; the sum
                // over the model axis accumulates in f32 and rounds once; then the division.
                let w: Vec<f32> = weights.iter().map(|&w| as_dtype(dtype, w)).collect();
                let mut product = vec![0f32; n.min(4096)];
                for (inp, &wi) in args.inputs.iter().zip(&w) {
                    for (o, x) in out.chunks_mut(4096).zip(inp.tensor.data.chunks(4096)) {
                        let p = &mut product[..o.len()];
                        for (p, &x) in p.iter_mut().zip(x) {
                            *p = x * wi;
                        }
                        round_slice(dtype, p);
                        for (o, &p) in o.iter_mut().zip(p.iter()) {
                            *o += p;
                        }
                    }
                }
                let den = round(dtype, w.iter().fold(0f32, |a, &b| a + b));
                round_slice(dtype, &mut out);
                if normalize {
                    div_slice(&mut out, den);
                    round_slice(dtype, &mut out);
                }
            }
        }
        Ok(Tensor::new(dtype, shape, out))
    }
}
