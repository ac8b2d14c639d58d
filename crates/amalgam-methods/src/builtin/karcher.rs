//! `karcher`: the Karcher (Riemannian) mean of the inputs' directions on the unit sphere, scaled
//! by their mean norm.

use amalgam_io::DType;
use rayon::prelude::*;

use super::blocks::{add_round, div_round, mul_round, part, BLOCK};
use crate::numerics::{round, round_slice, scalar};
use crate::reduce::{norm2_fast, sum_split_blocks};
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

/// `torch.dot(mean, u)` of f32 products (summed in PyTorch's `sum` order, see the deviations),
/// rounded to `dt`; `unit(start, buf)` produces block `start` of `u`.
fn dot_unit(mean: &[f32], mut unit: impl FnMut(usize, &mut [f32]), dt: DType) -> f32 {
    let s = sum_split_blocks(mean.len(), DType::F32, DType::F32, 1, |s, b| {
        unit(s, b);
        let len = b.len();
        for (v, &m) in b.iter_mut().zip(part(mean, s, len)) {
            *v *= m;
        }
    });
    round(dt, s)
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
        let mut tmp = [0f32; BLOCK];
        for (k, m) in mean.chunks_mut(BLOCK).enumerate() {
            let tmp = &mut tmp[..m.len()];
            for (&a, &i) in nalphas.iter().zip(&valid) {
                unit_block(i, k * BLOCK, tmp);
                mul_round(dt, tmp, scalar(a));
                add_round(dt, m, tmp);
            }
        }
        let mn = norm_f32(&mean);
        if (mn as f64) < tol {
            if let Some(&i) = valid.first() {
                for (k, m) in mean.chunks_mut(BLOCK).enumerate() {
                    unit_block(i, k * BLOCK, m);
                }
            }
        } else {
            div_round(dt, &mut mean, mn);
        }
        let mut tangent = vec![0f32; len];
        for _ in 0..max_iter.max(0) {
            tangent.fill(0.0);
            // The dots only read the mean: computed first, in parallel over the inputs.
            let dots: Vec<f32> = valid
                .par_iter()
                .map(|&i| dot_unit(&mean, |s, b| unit_block(i, s, b), dt))
                .collect();
            for ((&a, &i), &d) in nalphas.iter().zip(&valid).zip(&dots) {
                let d = if d.is_nan() { d } else { d.clamp(-1.0, 1.0) };
                let theta = round(dt, d.acos());
                if (theta as f64) < tol {
                    continue;
                }
                let ratio = round(dt, theta / round(dt, theta.sin()));
                let coef = round(dt, scalar(a) * ratio);
                let mut u = [0f32; BLOCK];
                for (k, (t, m)) in tangent
                    .chunks_mut(BLOCK)
                    .zip(mean.chunks(BLOCK))
                    .enumerate()
                {
                    // diff = u − d·mean; t += coef·diff, every step rounded.
                    let u = &mut u[..t.len()];
                    unit_block(i, k * BLOCK, u);
                    let tmp = &mut tmp[..t.len()];
                    tmp.copy_from_slice(m);
                    mul_round(dt, tmp, d);
                    for (x, &uv) in tmp.iter_mut().zip(u.iter()) {
                        *x = uv - *x;
                    }
                    round_slice(dt, tmp);
                    mul_round(dt, tmp, coef);
                    add_round(dt, t, tmp);
                }
            }
            let tn = norm_f32(&tangent);
            if (tn as f64) < tol {
                break;
            }
            // A 0-d f32 tensor times a 16-bit tensor is rounded to the 16-bit dtype first
            // (division, in contrast, uses the f32 value as is).
            let (c, s) = (round(dt, tn.cos()), round(dt, tn.sin()));
            for (m, t) in mean.chunks_mut(BLOCK).zip(tangent.chunks_mut(BLOCK)) {
                // mean = c·mean + s·(t / tn), every step rounded.
                mul_round(dt, m, c);
                div_round(dt, t, tn);
                mul_round(dt, t, s);
                add_round(dt, m, t);
            }
            let un = norm_f32(&mean);
            if (un as f64) > tol {
                div_round(dt, &mut mean, un);
            }
        }
        // sum(alpha * norm): f32 products, Python sum from 0.
        let scale = alphas
            .iter()
            .zip(&norms)
            .fold(0f32, |acc, (&a, &nrm)| acc + scalar(a) * nrm);
        let scale = round(dt, scale);
        mul_round(dt, &mut mean, scale);
        Ok(Tensor::new(dt, first.shape.clone(), mean))
    }
}

