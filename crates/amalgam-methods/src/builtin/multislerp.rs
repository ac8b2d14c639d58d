//! `multislerp`: barycentric interpolation of any number of models on the hypersphere (tangent
//! space at the weighted mean direction), optionally relative to a base.

use amalgam_io::DType;
use rayon::prelude::*;

use super::blocks::{
    add_round, div_round, map1, map2, map3, mul_round, part, part_mut, task_block, with_rounder,
    BLOCK,
};
use crate::numerics::{round, scalar};
use crate::reduce::{
    norm2_blocks, norm2_fast, sum_split_blocks_par, torch_float_lanes, torch_sum, Dim0Sum,
};
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
        // Every intermediate (Xᵢ, Uᵢ, the tangents) is recomputed block by block from the inputs
        // (see `blocks`); only the mean direction and the tangent sum are tensor-sized.
        let bdata = base.map(|b| b.data.as_slice());
        let x_block = |m: usize, s: usize, out: &mut [f32]| {
            if let Some(t) = xs.get(m) {
                let len = out.len();
                task_block(dt, part(&t.data, s, len), bdata.map(|b| part(b, s, len)), out);
            }
        };
        // Independent per model: both cores work inside one large tensor.
        let norms: Vec<f32> = (0..nm)
            .into_par_iter()
            .map(|m| norm2_blocks(d, dt, |s, b| x_block(m, s, b)))
            .collect();
        let dens: Vec<f32> = norms.iter().map(|&nrm| round(dt, nrm + eps)).collect();
        // Uᵢ = round(Xᵢ / (‖Xᵢ‖ + eps)), fused with the task vector's subtraction.
        let unit_block = |m: usize, s: usize, out: &mut [f32]| {
            let (Some(t), Some(&den)) = (xs.get(m), dens.get(m)) else {
                return;
            };
            let len = out.len();
            let x = part(&t.data, s, len);
            with_rounder!(dt, r, match bdata {
                Some(b) => map3(out, x, part(b, s, len), #[inline(always)] |_, v, w| r(r(v - w) / den)),
                None => map2(out, x, #[inline(always)] |_, v| r(v / den)),
            });
        };
        let plan = Dim0Sum::new(d, dt, torch_float_lanes());
        let mut mean = vec![0f32; d];
        weighted_sum(dt, &plan, nm, &mut mean, &|m, s, b| {
            unit_block(m, s, b);
            mul_round(dt, b, w.get(m).copied().unwrap_or(0.0));
        });
        let mean_norm = norm2_fast(&mean, dt);
        if mean_norm < round(dt, eps) {
            if let [w0, w1] = w.as_slice() {
                let mut b1 = [0f32; BLOCK];
                for s in (0..d).step_by(BLOCK) {
                    let len = BLOCK.min(d - s);
                    let r = part_mut(&mut mean, s, len);
                    let b1 = &mut b1[..len];
                    x_block(0, s, r);
                    mul_round(dt, r, *w0);
                    x_block(1, s, b1);
                    mul_round(dt, b1, *w1);
                    add_round(dt, r, b1);
                    if let Some(b) = bdata {
                        add_round(dt, r, part(b, s, len));
                    }
                }
                return Ok(Tensor::new(dt, first.shape.clone(), mean));
            }
            return Err(MethodError::Other(ZERO_MEAN.into()));
        }
        mean.par_chunks_mut(BLOCK).for_each(|m| div_round(dt, m, mean_norm));
        let dots: Vec<f32> = (0..nm)
            .into_par_iter()
            .map(|m| {
                let s = sum_split_blocks_par(d, dt, dt, 1, |s, b| {
                    unit_block(m, s, b);
                    let len = b.len();
                    with_rounder!(dt, r, map2(b, part(&mean, s, len), #[inline(always)] |u, q| r(u * q)));
                });
                round(dt, s)
            })
            .collect();
        // Weighted tangent i = round(wᵢ · (Uᵢ − (Uᵢ·m)m)), every step rounded.
        let mut tr = vec![0f32; d];
        weighted_sum(dt, &plan, nm, &mut tr, &|m, s, out| {
            let (dot, wm) = (dots.get(m).copied().unwrap_or(0.0), w.get(m).copied().unwrap_or(0.0));
            unit_block(m, s, out);
            let len = out.len();
            with_rounder!(dt, r, map2(out, part(&mean, s, len), #[inline(always)] |u, q| r(r(u - r(q * dot)) * wm)));
        });
        let tn = round(dt, norm2_fast(&tr, dt) + eps);
        let c = round(dt, tn.cos());
        let s = round(dt, round(dt, tn.sin()) / tn);
        let nw: Vec<f32> = norms
            .iter()
            .zip(&w)
            .map(|(&a, &b)| round(dt, a * b))
            .collect();
        let avg_norm = round(dt, torch_sum(&nw, dt, torch_float_lanes()));
        // out = (m·c + t·s) · avg_norm (+ base), every step rounded; written over the mean.
        mean.par_chunks_mut(BLOCK)
            .zip(tr.par_chunks(BLOCK))
            .enumerate()
            .for_each(|(k, (m, t))| {
                let k3 = (c, s, avg_norm);
                with_rounder!(dt, r, match bdata {
                    Some(b) => map3(m, t, part(b, k * BLOCK, m.len()), #[inline(always)] |mv, tv, bv| {
                        r(combine(r, k3, mv, tv) + bv)
                    }),
                    None => map2(m, t, #[inline(always)] |mv, tv| combine(r, k3, mv, tv)),
                });
            });
        Ok(Tensor::new(dt, first.shape.clone(), mean))
    }
}

/// `round(round(round(m·c) + round(t·s)) · avg_norm)` with `(c, s, avg_norm)` = `k`: one output
/// element before the base is added.
#[inline(always)]
fn combine(r: impl Fn(f32) -> f32, k: (f32, f32, f32), m: f32, t: f32) -> f32 {
    let (c, s, avg_norm) = k;
    r(r(r(m * c) + r(t * s)) * avg_norm)
}

/// `dest = round(Σₘ rowₘ)` over the model axis (PyTorch's `sum(dim=0)` order), with
/// `row(m, start, buf)` producing block `start` of model m's (weighted, rounded) row. The blocks
/// are independent (each column's sum only reads that column): they run in parallel.
fn weighted_sum(
    dt: DType,
    plan: &Dim0Sum,
    nm: usize,
    dest: &mut [f32],
    row: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    dest.par_chunks_mut(BLOCK).enumerate().for_each_init(
        || vec![vec![0f32; BLOCK]; nm],
        |bufs, (k, out)| {
            let (s, len) = (k * BLOCK, out.len());
            for (m, buf) in bufs.iter_mut().enumerate() {
                row(m, s, part_mut(buf, 0, len));
            }
            let rows: Vec<&[f32]> = bufs.iter().map(|b| part(b, 0, len)).collect();
            plan.sum_rows(s, &rows, out);
            with_rounder!(dt, r, map1(out, r));
        },
    );
}
