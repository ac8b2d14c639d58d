//! `median`: the elementwise median of the models, or of their task vectors around a base.
//!
//! A median ignores a minority of outlying models where an average is pulled by them, which
//! makes it a cheap, robust alternative to `linear` / `task_arithmetic` for three or more models.
//! Defined in PyTorch terms, in the working dtype with one rounding per operation:
//!
//! * with a base model: `base + lambda * median(x_i - base)`;
//! * without: `median(x_i)`;
//!
//! where `median` is `torch.median(dim=0)`: the *lower* of the two middle values when the count
//! is even, and NaN as soon as one value is NaN. Everything a method needs is public in
//! `amalgam_methods`; this file is the whole method.

use amalgam_methods::numerics::{round, scalar};
use amalgam_methods::{
    BaseRule, Contract, InputCount, MergeArgs, MergeMethod, MethodError, MethodInfo, ParamKind,
    ParamScope, ParamSpec, ParamValues, Tensor, Value,
};

/// The `median` merge method.
pub struct Median {
    info: MethodInfo,
}

impl Default for Median {
    fn default() -> Self {
        Self::new()
    }
}

impl Median {
    /// The method with its declarations: everything the engine, `amalgam validate`,
    /// `amalgam methods` and the generated docs know about it comes from here.
    pub fn new() -> Self {
        Median {
            info: MethodInfo {
                name: "median",
                pretty_name: "Median",
                reference_url: None,
                summary: "Elementwise median over the models (torch.median(dim=0): the lower \
                          middle value for an even count, NaN if any value is NaN). With a base \
                          model: out = base + lambda·median(xᵢ − base), each operation rounded \
                          to the working dtype.",
                params: vec![ParamSpec {
                    name: "lambda",
                    scope: ParamScope::Shared,
                    kind: ParamKind::Float,
                    default: Some(Value::Float(1.0)),
                    doc: "scale of the median task vector (only used with a base model)",
                }],
                contract: Contract {
                    base: BaseRule::Optional,
                    count: InputCount::AtLeastNonBase(1),
                },
                random: false,
                deviations: "not a mergekit method (an example of a third-party method); which \
                             NaN is returned when several inputs are NaN at one position may \
                             differ from PyTorch (the value is NaN either way)",
            },
        }
    }
}

impl MergeMethod for Median {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    /// Each output element depends only on the inputs at the same position, so the engine may
    /// hand us 1-D chunks of large tensors and merge them in parallel.
    fn is_elementwise(&self, _: &ParamValues, _: &[&ParamValues]) -> bool {
        true
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        let dtype = args.dtype();
        let first = args
            .inputs
            .first()
            .ok_or_else(|| MethodError::Contract("median: no inputs".into()))?;
        let shape = first.tensor.shape.clone();
        let n = first.tensor.numel();
        if args.inputs.iter().any(|i| i.tensor.numel() != n) {
            let shapes: Vec<String> = args
                .inputs
                .iter()
                .map(|i| format!("{}: {:?}", i.label, i.tensor.shape))
                .collect();
            return Err(MethodError::Shape {
                tensor: args.tensor_name.to_string(),
                shapes: shapes.join(", "),
            });
        }
        let base = args
            .base
            .and_then(|b| args.inputs.get(b))
            .map(|i| i.tensor.data.as_slice());
        let models: Vec<&[f32]> = args
            .inputs
            .iter()
            .enumerate()
            .filter(|(j, _)| Some(*j) != args.base)
            .map(|(_, i)| i.tensor.data.as_slice())
            .collect();
        if models.is_empty() {
            return Err(MethodError::Contract(format!(
                "median: {} has no model besides the base",
                args.tensor_name
            )));
        }
        // A Python float meets a tensor as an f32 scalar.
        let lambda = scalar(args.shared_f64("lambda").unwrap_or(1.0));
        let mut column = vec![0f32; models.len()];
        let mut out = Vec::with_capacity(n);
        for e in 0..n {
            let b = base.and_then(|b| b.get(e).copied());
            for (c, m) in column.iter_mut().zip(&models) {
                let x = m.get(e).copied().unwrap_or(f32::NAN);
                // `x - base` is one PyTorch op: computed in f32, rounded to the dtype.
                *c = match b {
                    Some(b) => round(dtype, x - b),
                    None => x,
                };
            }
            let med = median(&mut column);
            out.push(match b {
                // `lambda * m`, then `base + _`: two ops, two roundings.
                Some(b) => round(dtype, b + round(dtype, lambda * med)),
                None => med,
            });
        }
        Ok(Tensor::new(dtype, shape, out))
    }
}

/// `torch.median` of one column: NaN if any value is NaN, else the value of rank
/// `(len - 1) / 2` in ascending order (the lower middle one for an even count). A selected value
/// is returned as is, so no rounding is involved.
fn median(values: &mut [f32]) -> f32 {
    if let Some(nan) = values.iter().copied().find(|v| v.is_nan()) {
        return nan;
    }
    if values.is_empty() {
        return f32::NAN;
    }
    let k = (values.len() - 1) / 2;
    let (_, m, _) = values.select_nth_unstable_by(k, f32::total_cmp);
    *m
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn lower_middle_for_even_counts() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(&mut [5.0, -1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [7.0]), 7.0);
    }

    #[test]
    fn nan_wins() {
        assert!(median(&mut [1.0, f32::NAN, 2.0]).is_nan());
    }
}
