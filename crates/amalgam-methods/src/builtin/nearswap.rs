//! `nearswap`: take the other model's value where it is close to the base, keep the base where
//! they are far apart.

use crate::numerics::{round, round_slice, scalar};
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
        // Block by block, each step over the block then one bulk rounding: the same operations
        // and roundings as element by element, in a form that vectorises.
        let mut data = vec![0f32; b.data.len()];
        let mut w = [0f32; BLOCK];
        let mut q = [0f32; BLOCK];
        for ((o, a), y) in data
            .chunks_mut(BLOCK)
            .zip(b.data.chunks(BLOCK))
            .zip(x.data.chunks(BLOCK))
        {
            let (w, q) = (&mut w[..o.len()], &mut q[..o.len()]);
            for ((wv, &av), &yv) in w.iter_mut().zip(a).zip(y) {
                *wv = av - yv;
            }
            round_slice(dt, w);
            for wv in w.iter_mut() {
                let d = wv.abs();
                let d = if d < floor { floor } else { d };
                // `t / tensor` is evaluated as reciprocal(tensor) * t.
                *wv = 1.0 / d;
            }
            round_slice(dt, w);
            for wv in w.iter_mut() {
                *wv *= t;
            }
            round_slice(dt, w);
            for ((wv, qv), (ov, &yv)) in w.iter_mut().zip(q.iter_mut()).zip(o.iter_mut().zip(y)) {
                *wv = wv.clamp(0.0, 1.0);
                *ov = *wv * yv;
                *qv = 1.0 - *wv;
            }
            round_slice(dt, o);
            round_slice(dt, q);
            for (qv, &av) in q.iter_mut().zip(a) {
                *qv *= av;
            }
            round_slice(dt, q);
            for (ov, &qv) in o.iter_mut().zip(q.iter()) {
                *ov += qv;
            }
            round_slice(dt, o);
        }
        Ok(Tensor::new(dt, b.shape.clone(), data))
    }
}

/// Elements per block: a few blocks stay in the CPU cache.
const BLOCK: usize = 4096;
