//! `nearswap`: take the other model's value where it is close to the base, keep the base where
//! they are far apart.

use crate::numerics::{round, scalar};
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, ParamValues, Tensor,
};

/// The nearswap method.
pub struct NearSwap {
    info: MethodInfo,
}

impl NearSwap {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        NearSwap {
            info: MethodInfo {
                name: "nearswap",
                pretty_name: "NearSwap",
                reference_url: Some("https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"),
                summary: "Per element, in the input dtype: d = |b − x|; ω = clamp(f32(t) · \
                          reciprocal(max(d, 1e-6)), 0, 1); out = ω·x + (1−ω)·b, every operation \
                          rounded to the dtype.",
                params: vec![ParamSpec {
                    name: "t",
                    scope: ParamScope::Shared,
                    kind: ParamKind::Float,
                    default: None,
                    doc: "distance scale: elements closer than t take the other model's value",
                }],
                contract: Contract::exactly(BaseRule::Required, 2),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "none",
            },
        }
    }
}

impl Default for NearSwap {
    fn default() -> Self {
        Self::new()
    }
}

impl MergeMethod for NearSwap {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn is_elementwise(&self, _: &ParamValues, _: &[&ParamValues]) -> bool {
        true
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let t = scalar(args.shared_f64("t")?);
        let (b, x) = args.base_and_other()?;
        let dt = b.dtype;
        // clamp's bound is converted to the tensor dtype.
        let floor = round(dt, 1e-6);
        let data = b
            .data
            .iter()
            .zip(&x.data)
            .map(|(&a, &y)| {
                let d = round(dt, a - y).abs();
                let d = if d < floor { floor } else { d };
                // `t / tensor` is evaluated as reciprocal(tensor) * t.
                let w = round(dt, round(dt, 1.0 / d) * t);
                let w = w.clamp(0.0, 1.0);
                let p = round(dt, w * y);
                let q = round(dt, round(dt, 1.0 - w) * a);
                round(dt, p + q)
            })
            .collect();
        Ok(Tensor::new(dt, b.shape.clone(), data))
    }
}
