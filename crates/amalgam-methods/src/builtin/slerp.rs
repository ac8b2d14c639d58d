//! `slerp`: spherical linear interpolation between the base and one other model.

use amalgam_io::DType;

use super::common::{check_same_shape, compat_unsupported, shared_required};
use super::torchops::{cascade_sum_with, sum_sq_lastdim};
use crate::numerics::round;
use crate::{
    BaseRule, Compat, Contract, InputCount, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor,
};

/// mergekit 0.1.5 bounds its f32 scratch by working on 1,048,576-element chunks; the norms and
/// the dot product are sums of per-chunk results, so the chunking changes the rounding and must be
/// reproduced.
const CHUNK: usize = 1024 * 1024;
/// Norms at or below this are replaced by 1 (no normalisation of near-zero tensors).
const EPS: f32 = 1e-8;
/// Above this |cos θ| the inputs are treated as colinear and interpolated linearly.
const DOT_THRESHOLD: f32 = 0.9995;

/// The slerp method.
pub struct Slerp {
    info: MethodInfo,
}

impl Slerp {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        Slerp {
            info: MethodInfo {
                name: "slerp",
                pretty_name: "SLERP",
                reference_url: Some("https://en.wikipedia.org/wiki/Slerp"),
                summary: "Spherical interpolation from the base (t=0) to the other model (t=1) over \
                          the whole flattened tensor, computed in f32: norms per 1,048,576-element \
                          chunk then the 2-norm of the chunk norms, dot of the normalised vectors \
                          clamped to [-1,1], linear interpolation when |dot| > 0.9995, result \
                          rounded once to the input dtype.",
                params: vec![ParamSpec {
                    name: "t",
                    scope: ParamScope::Shared,
                    kind: ParamKind::Float,
                    default: None,
                    doc: "interpolation factor: 0 = base model, 1 = the other model",
                }],
                contract: Contract {
                    base: BaseRule::Required,
                    count: InputCount::Exactly(2),
                },
                random: false,
                deviations: "Full-tensor f32 norms longer than ~32k elements are split across \
                             threads by PyTorch in a machine-dependent way; rare 1-ulp differences \
                             are possible there (mergekit itself is not reproducible across \
                             machines). --mergekit-version 0.0.4.2 (NumPy slerp) is not supported yet.",
            },
        }
    }
}

impl Default for Slerp {
    fn default() -> Self {
        Self::new()
    }
}

/// 2-norm of `n` f32 values given by `get`, as `torch.linalg.vector_norm` of a contiguous f32
/// row.
fn row_norm(get: impl Fn(usize) -> f32, n: usize) -> f32 {
    sum_sq_lastdim(get, n, false).sqrt()
}

/// 2-norm over a short list of partial norms (PyTorch's generic norm reduction: sequential,
/// `acc + x*x` contracted to a fused multiply-add).
fn norm_of_parts(parts: &[f32]) -> f32 {
    parts.iter().fold(0f32, |acc, &p| p.mul_add(p, acc)).sqrt()
}

/// mergekit 0.1.5's slerp of two same-length flat tensors, computed in f32 and rounded to `dtype`.
pub(crate) fn slerp_015(t: f64, a: &[f32], b: &[f32], dtype: DType) -> Vec<f32> {
    let n = a.len().min(b.len());
    let tt = t as f32;
    let one_minus_t = 1.0 - tt;
    if n == 0 {
        return Vec::new();
    }
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(CHUNK)
        .map(|s| (s, (s + CHUNK).min(n)))
        .collect();
    let at = |i: usize| a.get(i).copied().unwrap_or(0.0);
    let bt = |i: usize| b.get(i).copied().unwrap_or(0.0);
    let na_parts: Vec<f32> = chunks
        .iter()
        .map(|&(s, e)| row_norm(|i| at(s + i), e - s))
        .collect();
    let nb_parts: Vec<f32> = chunks
        .iter()
        .map(|&(s, e)| row_norm(|i| bt(s + i), e - s))
        .collect();
    let mut na = norm_of_parts(&na_parts);
    let mut nb = norm_of_parts(&nb_parts);
    if na.is_nan() || na <= EPS {
        // torch.where(norm > eps, norm, 1): NaN compares false and becomes 1 too.
        na = 1.0;
    }
    if nb.is_nan() || nb <= EPS {
        nb = 1.0;
    }
    let dot_parts = chunks
        .iter()
        .map(|&(s, e)| cascade_sum_with(|i| (at(s + i) / na) * (bt(s + i) / nb), e - s, false));
    let dot_sum = dot_parts.fold(0f32, |acc, p| acc + p);
    let dot = if dot_sum.is_nan() {
        dot_sum
    } else {
        dot_sum.clamp(-1.0, 1.0)
    };
    let linear = dot.abs() > DOT_THRESHOLD;
    let theta = (if linear { 0.0 } else { dot }).acos();
    let sin_theta = theta.sin();
    let (ca, cb) = if linear {
        (one_minus_t, tt)
    } else {
        (
            (one_minus_t * theta).sin() / sin_theta,
            (tt * theta).sin() / sin_theta,
        )
    };
    (0..n)
        .map(|i| round(dtype, ca * at(i) + cb * bt(i)))
        .collect()
}

impl MergeMethod for Slerp {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        if args.compat == Compat::V0_0_4_2 {
            return Err(compat_unsupported("slerp"));
        }
        let t = shared_required(&args, "t")?;
        let base = args.base.ok_or_else(|| {
            MethodError::Contract("SLERP requires a base and one other input".into())
        })?;
        if args.inputs.len() != 2 || base > 1 {
            return Err(MethodError::Contract(
                "SLERP requires a base and one other input".into(),
            ));
        }
        check_same_shape(&args)?;
        let (b, x) = match (args.inputs.get(base), args.inputs.get(1 - base)) {
            (Some(b), Some(x)) => (b.tensor, x.tensor),
            _ => {
                return Err(MethodError::Contract(
                    "SLERP requires a base and one other input".into(),
                ))
            }
        };
        let dtype = b.dtype;
        let out = slerp_015(t, &b.data, &x.data, dtype);
        Ok(Tensor::new(dtype, b.shape.clone(), out))
    }
}
