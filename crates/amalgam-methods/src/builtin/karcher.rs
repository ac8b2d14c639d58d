//! `karcher`: the Karcher (Riemannian) mean of the inputs' directions on the unit sphere, scaled
//! by their mean norm.

use amalgam_io::DType;
use rayon::prelude::*;

use super::blocks::{div_round, map1, map2, map3, mul_round, part, with_rounder, BLOCK};
use crate::numerics::{round, scalar};
use crate::reduce::{norm2_fast, sums_blocks_par_mut};
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamKind, ParamScope, ParamSpec, Tensor, Value,
};

/// The karcher method.
pub struct Karcher {
    info: MethodInfo,
}

impl Karcher {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        Karcher {
            info: MethodInfo {
                name: "karcher",
                pretty_name: "Karcher Mean",
                reference_url: Some("https://arxiv.org/abs/2603.04972"),
                summary: "Equal weights 1/N over all inputs (a base is an ordinary input). Norms in \
                          f32, unit directions in the input dtype; inputs with norm ≤ tol are \
                          dropped; the mean direction is refined by up to max_iter Riemannian \
                          gradient steps until the tangent norm is below tol; out = (Σ nᵢ/N) · μ.",
                params: vec![
                    ParamSpec {
                        name: "max_iter",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Int,
                        default: Some(Value::Int(10)),
                        doc: "maximum number of refinement iterations",
                    },
                    ParamSpec {
                        name: "tol",
                        scope: ParamScope::Shared,
                        kind: ParamKind::Float,
                        default: Some(Value::Float(1e-5)),
                        doc: "convergence and zero-norm threshold",
                    },
                ],
                contract: Contract::any(BaseRule::Ignored),
                random: false,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "`torch.dot` is MKL `sdot` in PyTorch; amalgam sums in PyTorch's \
                             `sum` order instead (MKL's order is not replayed yet), and f32 \
                             acos/sin/cos are MKL VML in PyTorch, the platform libm here. Tolerance: \
                             every element within 4 ulp of the tensor's largest magnitude \
                             (measured: at most 2 ulp on tests/golden-threads, 1/2/4 threads). \
                             karcher does not exist in mergekit 0.0.4.2.",
            },
        }
    }
}

impl Default for Karcher {
    fn default() -> Self {
        Self::new()
    }
}

/// `torch.linalg.vector_norm(t.to(float32))` as an f32.
fn norm_f32(x: &[f32]) -> f32 {
    norm2_fast(x, DType::F32)
}

/// `u = round(x / nrm)`, the unit direction of an input (zero when its norm is zero), as the
/// rounder `r` gives it: one element of the fused passes below.
#[inline(always)]
fn unit(r: impl Fn(f32) -> f32, v: f32, nrm: f32) -> f32 {
    if nrm != 0.0 {
        r(v / nrm)
    } else {
        0.0
    }
}

impl MergeMethod for Karcher {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        args.check(&self.info)?;
        let max_iter = args.param("max_iter")?.as_f64() as i64;
        let tol = args.shared_f64("tol")?;
        let tensors: Vec<&Tensor> = args.inputs.iter().map(|i| i.tensor).collect();
        let first = args.first()?.tensor;
        if tensors.len() == 1 {
            return Ok(first.clone());
        }
        let dt = first.dtype;
        let n_in = tensors.len();
        let alphas = vec![1.0 / n_in as f64; n_in];
        let norms: Vec<f32> = tensors.par_iter().map(|t| norm_f32(&t.data)).collect();
        // The unit directions are recomputed block by block from the inputs (see `blocks`):
        // only the mean direction and the tangent are tensor-sized.
        let unit_block = |i: usize, s: usize, out: &mut [f32]| {
            let nrm = norms.get(i).copied().unwrap_or(0.0);
            match tensors.get(i) {
                Some(t) if nrm != 0.0 => {
                    out.copy_from_slice(part(&t.data, s, out.len()));
                    div_round(dt, out, nrm);
                }
                _ => out.fill(0.0),
            }
        };
        let norm = |i: usize| norms.get(i).copied().unwrap_or(0.0);
        let data = |i: usize| tensors.get(i).map_or(&[][..], |t| t.data.as_slice());
        let valid: Vec<usize> = (0..n_in)
            .filter(|&i| norms.get(i).is_some_and(|&v| v as f64 > tol))
            .collect();
        if valid.is_empty() {
            // sum(t * 0): zeros with the signs of 0·x, summed from an integer 0.
            let zeros = first.data.iter().map(|_| 0.0).collect();
            return Ok(Tensor::new(dt, first.shape.clone(), zeros));
        }
        let alpha_sum: f64 = valid
            .iter()
            .map(|&i| alphas.get(i).copied().unwrap_or(0.0))
            .sum();
        let nalphas: Vec<f64> = valid
            .iter()
            .map(|&i| alphas.get(i).copied().unwrap_or(0.0) / alpha_sum)
            .collect();
        let len = first.data.len();
        let mut mean = vec![0f32; len];
        mean.par_chunks_mut(BLOCK).enumerate().for_each(|(k, m)| {
            let s = k * BLOCK;
            for (&a, &i) in nalphas.iter().zip(&valid) {
                // m += round(u · a), every step rounded.
                let (a, nrm) = (scalar(a), norm(i));
                with_rounder!(
                    dt,
                    r,
                    map2(m, part(data(i), s, m.len()), #[inline(always)] |mv, v| r(mv + r(unit(r, v, nrm) * a)))
                );
            }
        });
        let mn = norm_f32(&mean);
        if (mn as f64) < tol {
            if let Some(&i) = valid.first() {
                for (k, m) in mean.chunks_mut(BLOCK).enumerate() {
                    unit_block(i, k * BLOCK, m);
                }
            }
        }
        // The divisor of the mean's latest normalisation (`mean = round(mean / pend)`), applied
        // by the next pass that reads the mean instead of a pass of its own.
        let mut pend = ((mn as f64) >= tol).then_some(mn);
        let mut tangent = vec![0f32; len];
        for _ in 0..max_iter.max(0) {
            // `torch.dot(mean, u)` of every input at once, f32 products summed in PyTorch's
            // `sum` order (see the deviations), rounded to `dt`; the pass that reads the mean
            // for them also normalises it.
            let divisor = pend.take();
            let sums = sums_blocks_par_mut(&mut mean, valid.len(), DType::F32, |s, m, outs| {
                if let Some(p) = divisor {
                    div_round(dt, m, p);
                }
                for (&i, out) in valid.iter().zip(outs.iter_mut()) {
                    let (x, nrm) = (part(data(i), s, m.len()), norm(i));
                    let out = out.get_mut(..m.len()).unwrap_or(&mut []);
                    with_rounder!(
                        dt,
                        r,
                        map3(out, x, m, #[inline(always)] |_, v, mv| unit(r, v, nrm) * mv)
                    );
                }
            });
            let dots: Vec<f32> = sums.into_iter().map(|d| round(dt, d)).collect();
            // Each input's coefficient, or None where its angle is below tol.
            let coefs: Vec<Option<(usize, f32, f32)>> = nalphas
                .iter()
                .zip(&valid)
                .zip(&dots)
                .map(|((&a, &i), &d)| {
                    let d = if d.is_nan() { d } else { d.clamp(-1.0, 1.0) };
                    let theta = round(dt, d.acos());
                    if (theta as f64) < tol {
                        return None;
                    }
                    let ratio = round(dt, theta / round(dt, theta.sin()));
                    Some((i, d, round(dt, scalar(a) * ratio)))
                })
                .collect();
            // The blocks of the tangent are independent: they run in parallel, and within a
            // block the inputs are added in order, so every element sees PyTorch's sequence.
            tangent
                .par_chunks_mut(BLOCK)
                .zip(mean.par_chunks(BLOCK))
                .enumerate()
                .for_each(|(k, (t, m))| {
                    let s = k * BLOCK;
                    for (j, &(i, d, coef)) in coefs.iter().flatten().enumerate() {
                        // t += coef · (u − d·mean), every step rounded, in one pass; the first
                        // term is added to zero (so the tangent needs no clearing).
                        let nrm = norm(i);
                        let keep = j > 0;
                        with_rounder!(
                            dt,
                            r,
                            map3(t, part(data(i), s, t.len()), m, #[inline(always)] |tv, v, mv| {
                                let tv = if keep { tv } else { 0.0 };
                                r(tv + r(coef * r(unit(r, v, nrm) - r(d * mv))))
                            })
                        );
                    }
                    if coefs.iter().flatten().next().is_none() {
                        t.fill(0.0);
                    }
                });
            let tn = norm_f32(&tangent);
            if (tn as f64) < tol {
                break;
            }
            // A 0-d f32 tensor times a 16-bit tensor is rounded to the 16-bit dtype first
            // (division, in contrast, uses the f32 value as is).
            let (c, s) = (round(dt, tn.cos()), round(dt, tn.sin()));
            mean.par_chunks_mut(BLOCK)
                .zip(tangent.par_chunks_mut(BLOCK))
                .for_each(|(m, t)| {
                    // mean = c·mean + s·(t / tn), every step rounded.
                    with_rounder!(dt, r, map2(m, t, #[inline(always)] |mv, tv| r(r(mv * c) + r(r(tv / tn) * s))));
                });
            let un = norm_f32(&mean);
            pend = ((un as f64) > tol).then_some(un);
        }
        // sum(alpha * norm): f32 products, Python sum from 0.
        let scale = alphas
            .iter()
            .zip(&norms)
            .fold(0f32, |acc, (&a, &nrm)| acc + scalar(a) * nrm);
        let scale = round(dt, scale);
        match pend {
            // mean = round(round(mean / p) · scale), the pending normalisation in the same pass.
            Some(p) => mean.par_chunks_mut(BLOCK).for_each(|m| {
                with_rounder!(dt, r, map1(m, #[inline(always)] |v| r(r(v / p) * scale)))
            }),
            None => mul_round(dt, &mut mean, scale),
        }
        Ok(Tensor::new(dt, first.shape.clone(), mean))
    }
}

