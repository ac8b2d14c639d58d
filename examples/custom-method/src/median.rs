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
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo, ParamKind,
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
    /// The method's schema: everything the engine, `amalgam validate`, `amalgam methods` and
    /// the generated docs know about it comes from here. Defaults are declared once, here; the
    /// planner fills them in, so `merge` reads every parameter as given.
    pub fn new() -> Self {
        let mut info = MethodInfo::new(
            "median",
            "Median",
            Contract::at_least_non_base(BaseRule::Optional, 1),
        );
        info.summary = "Elementwise median over the models (torch.median(dim=0): the lower middle \
                        value for an even count, NaN if any value is NaN). With a base model: \
                        out = base + lambda·median(xᵢ − base), each operation rounded to the \
                        working dtype.";
        info.params = vec![ParamSpec::optional(
            "lambda",
            ParamScope::Shared,
            ParamKind::Float,
            Value::Float(1.0),
            "scale of the median task vector (only used with a base model)",
        )];
        // Not a mergekit method, so no mergekit release has it: `--mergekit-version 0.0.4.2`
        // refuses it at planning, before any model is read.
        info.legacy = Legacy::Absent;
        info.deviations = "not a mergekit method (an example of a third-party method); which NaN \
                           is returned when several inputs are NaN at one position may differ \
                           from PyTorch (the value is NaN either way)";
        Median { info }
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
        // The contract, the parameters and the shapes, checked against the schema in one call.
        args.check(&self.info)?;
        let dtype = args.dtype();
        let first = args.first()?.tensor;
        // A Python float meets a tensor as an f32 scalar.
        let lambda = scalar(args.shared_f64("lambda")?);
        let (base, models) = args.split_base();
        let mut column = vec![0f32; models.len()];
        let mut out = Vec::with_capacity(first.numel());
        for e in 0..first.numel() {
            let b = base.map(|b| b.data[e]);
            for (c, m) in column.iter_mut().zip(&models) {
                // `x - base` is one PyTorch op: computed in f32, rounded to the dtype.
                *c = match b {
                    Some(b) => round(dtype, m.data[e] - b),
                    None => m.data[e],
                };
            }
            let med = median(&mut column);
            out.push(match b {
                // `lambda * m`, then `base + _`: two ops, two roundings.
                Some(b) => round(dtype, b + round(dtype, lambda * med)),
                None => med,
            });
        }
        Tensor::try_new(dtype, first.shape.clone(), out)
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
