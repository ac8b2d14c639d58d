//! `nuslerp`: slerp between two models with weights instead of `t`, optionally relative to a
//! base and optionally per row or per column instead of over the whole tensor.

use amalgam_io::DType;

use rayon::prelude::*;

use super::blocks::{map2, map3, part, task_block, with_rounder, BLOCK};
use super::common::task_vector;
use crate::numerics::{round, scalar};
use crate::reduce::{norm2_blocks, norm2_strided, outer_sum, sum_split_blocks, threads_for};
use amalgam_schema::{ContractViolation, Counted};

use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Value,
};

/// The nuslerp method.
pub struct NuSlerp {
    info: MethodInfo,
}

impl NuSlerp {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        NuSlerp {
            info: MethodInfo {
                name: "nuslerp",
                pretty_name: "NuSLERP",
                reference_url: None,
                summary: "t = w₁/(w₀+w₁) (0.5 if the weights sum to ~0); with a base, out = b + \
                          slerp(t, x₀−b, x₁−b), else slerp(t, x₀, x₁). Vectors are the flattened \
                          tensor (nuslerp_flatten), its columns (nuslerp_row_wise) or its rows; \
                          every operation in the input dtype; colinear vectors (1−cos² ≤ 1e-16) \
                          are interpolated linearly.",
                params: vec![
                    ParamSpec {
                        name: "weight",
                        scope: ParamScope::NonBase,
                        kind: ParamKind::Float,
                        default: None,
                        doc: "relative weight of each of the two non-base models",
                    },
                    ParamSpec {
                        name: "nuslerp_row_wise",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Bool,
                        default: Some(Value::Bool(false)),
                        doc: "interpolate column vectors (along axis 0) instead of rows",
                    },
                    ParamSpec {
                        name: "nuslerp_flatten",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Bool,
                        default: Some(Value::Bool(true)),
                        doc: "treat the whole tensor as one vector",
                    },
                ],
                contract: Contract::exactly_non_base(BaseRule::Optional, 2),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "f32 acos/sin are MKL VML in PyTorch, the platform libm here: tolerance \
                             4 ulp of each tensor's largest magnitude (measured: at most 1 ulp on \
                             tests/golden-threads at 1/2/4 torch threads; bf16/f16 exact there). \
                             nuslerp does not exist in mergekit 0.0.4.2.",
            },
        }
    }
}

impl Default for NuSlerp {
    fn default() -> Self {
        Self::new()
    }
}

/// One vector of the tensor: first element, stride, length.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    stride: usize,
    len: usize,
}

/// The interpolation coefficients of one vector pair, from their dot product `s` (f32, before
/// rounding): `out = round(round(c0·a) + round(c1·b))`, then `/ sin θ` unless colinear.
#[derive(Clone, Copy)]
struct Coefs {
    colinear: bool,
    sin_theta: f32,
    c0: f32,
    c1: f32,
}

impl Coefs {
    /// mergekit 0.1.5's angle steps in `dt`: cos clamped to [−1, 1], colinear when
    /// 1 − cos² ≤ 1e-16 (then the weights are 1 − t and t), else sin((1−t)θ) and sin(tθ).
    fn new(dt: DType, s: f32, t: f64) -> Self {
        let eps2 = round(dt, 1e-16);
        let (one_minus_t, tt) = (scalar(1.0 - t), scalar(t));
        let cos = round(dt, s);
        let cos = if cos.is_nan() {
            cos
        } else {
            cos.clamp(-1.0, 1.0)
        };
        let colinear = round(dt, 1.0 - round(dt, cos * cos)) <= eps2;
        let theta = round(dt, (if colinear { 0.0 } else { cos }).acos());
        let sin_theta = round(dt, theta.sin());
        let (c0, c1) = if colinear {
            (one_minus_t, tt)
        } else {
            (
                round(dt, round(dt, one_minus_t * theta).sin()),
                round(dt, round(dt, tt * theta).sin()),
            )
        };
        Coefs {
            colinear,
            sin_theta,
            c0,
            c1,
        }
    }

    /// One output element from the elements `a`, `b` of the two vectors, rounded by `r`.
    #[inline(always)]
    fn apply(self, r: impl Fn(f32) -> f32, a: f32, b: f32) -> f32 {
        let v = r(r(self.c0 * a) + r(self.c1 * b));
        if self.colinear {
            v
        } else {
            r(v / self.sin_theta)
        }
    }
}

/// mergekit 0.1.5's `nuslerp(t, v0, v1)` over the strided vectors `spans` (the columns of a
/// row-wise merge), in `dt`: the norms take the generic (strided) reduction and the dots the
/// outer-axis sum order of column `col` of `spans.len()`.
fn nuslerp_columns(t: f64, v0: &[f32], v1: &[f32], dt: DType, spans: &[Span]) -> Vec<f32> {
    let n = v0.len().min(v1.len());
    let mut out = vec![0f32; n];
    let floor = round(dt, 1e-7);
    let cols = spans.len();
    for (col, sp) in spans.iter().enumerate() {
        let idx = |i: usize| sp.start + i * sp.stride;
        let g0 = |i: usize| v0.get(idx(i)).copied().unwrap_or(0.0);
        let g1 = |i: usize| v1.get(idx(i)).copied().unwrap_or(0.0);
        let n0 = norm2_strided(g0, sp.len, dt);
        let n1 = norm2_strided(g1, sp.len, dt);
        let n0 = if n0 < floor { floor } else { n0 };
        let n1 = if n1 < floor { floor } else { n1 };
        let prod = |i: usize| round(dt, round(dt, g0(i) / n0) * round(dt, g1(i) / n1));
        let s = outer_sum(prod, sp.len, col, cols, dt);
        let k = Coefs::new(dt, s, t);
        for i in 0..sp.len {
            if let Some(o) = out.get_mut(idx(i)) {
                *o = k.apply(|x| round(dt, x), g0(i), g1(i));
            }
        }
    }
    out
}

/// nuslerp for contiguous vectors (the flattened tensor, or its rows of `row_len`),
/// computed block by block from the inputs: the task vectors (`x − base`) and the normalised
/// vectors are never stored, and the base is added as each output block is written.
#[allow(clippy::too_many_arguments)]
fn nuslerp_rows(
    t: f64,
    x0: &[f32],
    x1: &[f32],
    base: Option<&[f32]>,
    dt: DType,
    row_len: usize,
    threads: usize,
) -> Vec<f32> {
    let n = x0.len().min(x1.len());
    let mut out = vec![0f32; n];
    let floor = round(dt, 1e-7);
    let row_len = row_len.max(1);
    let rows = n / row_len;
    let v_block = |x: &[f32], s: usize, b: &mut [f32]| {
        let len = b.len();
        task_block(dt, part(x, s, len), base.map(|y| part(y, s, len)), b);
    };
    // The rows are independent (each is its own reduction): they run in parallel, and the
    // blocks of a single row's output too.
    out.par_chunks_mut(row_len).enumerate().for_each(|(r, o)| {
        let r0 = r * row_len;
        let n0 = norm2_blocks(row_len, dt, |s, b| v_block(x0, r0 + s, b));
        let n1 = norm2_blocks(row_len, dt, |s, b| v_block(x1, r0 + s, b));
        let n0 = if n0 < floor { floor } else { n0 };
        let n1 = if n1 < floor { floor } else { n1 };
        let mut q = [0f32; BLOCK];
        // One row (a 1-D tensor, or a flattened one) is a reduction to one value: it splits.
        let s = sum_split_blocks(row_len, dt, dt, threads_for(rows, threads), |s, b| {
            let q = &mut q[..b.len()];
            v_block(x0, r0 + s, b);
            v_block(x1, r0 + s, q);
            // b = round(round(b / n0) · round(q / n1)), in one pass.
            with_rounder!(dt, r, map2(b, q, #[inline(always)] |u, v| r(r(u / n0) * r(v / n1))));
        });
        let k = Coefs::new(dt, s, t);
        o.par_chunks_mut(BLOCK).enumerate().for_each(|(j, ob)| {
            let s = r0 + j * BLOCK;
            let len = ob.len();
            let mut q = [0f32; BLOCK];
            let q = &mut q[..len];
            v_block(x0, s, ob);
            v_block(x1, s, q);
            with_rounder!(dt, r, match base {
                Some(y) => map3(ob, q, part(y, s, len), #[inline(always)] |d0, d1, w| r(k.apply(r, d0, d1) + w)),
                None => map2(ob, q, #[inline(always)] |d0, d1| k.apply(r, d0, d1)),
            });
        });
    });
    out
}

impl MergeMethod for NuSlerp {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let row_wise = args.shared_bool("nuslerp_row_wise")?;
        let flatten = args.shared_bool("nuslerp_flatten")?;
        let (base, xs) = args.split_base();
        let non_base: Vec<_> = args
            .inputs
            .iter()
            .enumerate()
            .filter(|(k, _)| Some(*k) != args.base)
            .map(|(_, i)| i)
            .collect();
        let (x0, x1, i0, i1) = match (xs.as_slice(), non_base.as_slice()) {
            ([a, b], [ia, ib]) => (*a, *b, *ia, *ib),
            _ => {
                return Err(args.contract_error(ContractViolation::Count {
                    what: Counted::NonBase,
                    min: 2,
                    max: Some(2),
                    got: xs.len(),
                }))
            }
        };
        let w0 = i0.f64("weight")?;
        let w1 = i1.f64("weight")?;
        let total = w0 + w1;
        let t = if total.abs() < 1e-6 { 0.5 } else { w1 / total };
        let dt = x0.dtype;
        let shape = x0.shape.clone();
        let n = x0.data.len();
        if flatten || shape.len() <= 1 || !row_wise {
            let row_len = if flatten || shape.len() <= 1 {
                n
            } else {
                shape.last().copied().unwrap_or(1).max(1)
            };
            let data = nuslerp_rows(
                t,
                &x0.data,
                &x1.data,
                base.map(|b| b.data.as_slice()),
                dt,
                row_len,
                args.torch_threads,
            );
            return Ok(Tensor::new(dt, shape, data));
        }
        // Row-wise: the vectors are the columns (strided over dim 0).
        let d0 = shape.first().copied().unwrap_or(1).max(1);
        let rest = n / d0;
        let spans: Vec<Span> = (0..rest)
            .map(|c| Span {
                start: c,
                stride: rest,
                len: d0,
            })
            .collect();
        let data = match base {
            Some(b) => {
                let d0 = task_vector(x0, b, dt);
                let d1 = task_vector(x1, b, dt);
                let r = nuslerp_columns(t, &d0, &d1, dt, &spans);
                b.data
                    .iter()
                    .zip(&r)
                    .map(|(&y, &v)| round(dt, y + v))
                    .collect()
            }
            None => nuslerp_columns(t, &x0.data, &x1.data, dt, &spans),
        };
        Ok(Tensor::new(dt, shape, data))
    }
}
