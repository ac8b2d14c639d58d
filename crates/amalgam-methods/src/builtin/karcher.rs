//! `karcher`: the Karcher (Riemannian) mean of the inputs' directions on the unit sphere, scaled
//! by their mean norm.

use amalgam_io::DType;

use crate::numerics::{round, round_slice, scalar};
use crate::reduce::{norm2, torch_sum_with};
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
    norm2(x, DType::F32)
}

fn dot(a: &[f32], b: &[f32], dt: DType) -> f32 {
    let n = a.len().min(b.len());
    let s = torch_sum_with(
        |i| match (a.get(i), b.get(i)) {
            (Some(&x), Some(&y)) => x * y,
            _ => 0.0,
        },
        n,
        DType::F32,
    );
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
        let norms: Vec<f32> = tensors.iter().map(|t| norm_f32(&t.data)).collect();
        let units: Vec<Vec<f32>> = tensors
            .iter()
            .zip(&norms)
            .map(|(t, &nrm)| {
                if nrm == 0.0 {
                    vec![0.0; t.data.len()]
                } else {
                    bulk(dt, t.data.iter().map(|&v| v / nrm).collect())
                }
            })
            .collect();
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
        let vunits: Vec<&Vec<f32>> = valid.iter().filter_map(|&i| units.get(i)).collect();
        let len = first.data.len();
        let mut mean = vec![0f32; len];
        let mut tmp = [0f32; BLOCK];
        for (&a, u) in nalphas.iter().zip(&vunits) {
            let a = scalar(a);
            for (m, u) in mean.chunks_mut(BLOCK).zip(u.chunks(BLOCK)) {
                let tmp = &mut tmp[..m.len()];
                for (t, &v) in tmp.iter_mut().zip(u) {
                    *t = a * v;
                }
                round_slice(dt, tmp);
                for (m, &t) in m.iter_mut().zip(tmp.iter()) {
                    *m += t;
                }
                round_slice(dt, m);
            }
        }
        let mn = norm_f32(&mean);
        mean = if (mn as f64) < tol {
            vunits.first().map(|u| (*u).clone()).unwrap_or_default()
        } else {
            bulk(dt, mean.iter().map(|&v| v / mn).collect())
        };
        for _ in 0..max_iter.max(0) {
            let mut tangent = vec![0f32; len];
            for (&a, u) in nalphas.iter().zip(&vunits) {
                let d = dot(&mean, u, dt);
                let d = if d.is_nan() { d } else { d.clamp(-1.0, 1.0) };
                let theta = round(dt, d.acos());
                if (theta as f64) < tol {
                    continue;
                }
                let ratio = round(dt, theta / round(dt, theta.sin()));
                let coef = round(dt, scalar(a) * ratio);
                for ((t, u), m) in tangent
                    .chunks_mut(BLOCK)
                    .zip(u.chunks(BLOCK))
                    .zip(mean.chunks(BLOCK))
                {
                    // diff = u − d·mean; t += coef·diff, every step rounded.
                    let tmp = &mut tmp[..t.len()];
                    for (x, &mv) in tmp.iter_mut().zip(m) {
                        *x = d * mv;
                    }
                    round_slice(dt, tmp);
                    for (x, &uv) in tmp.iter_mut().zip(u) {
                        *x = uv - *x;
                    }
                    round_slice(dt, tmp);
                    for x in tmp.iter_mut() {
                        *x *= coef;
                    }
                    round_slice(dt, tmp);
                    for (tv, &x) in t.iter_mut().zip(tmp.iter()) {
                        *tv += x;
                    }
                    round_slice(dt, t);
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
                for v in m.iter_mut() {
                    *v *= c;
                }
                round_slice(dt, m);
                for v in t.iter_mut() {
                    *v /= tn;
                }
                round_slice(dt, t);
                for v in t.iter_mut() {
                    *v *= s;
                }
                round_slice(dt, t);
                for (v, &q) in m.iter_mut().zip(t.iter()) {
                    *v += q;
                }
                round_slice(dt, m);
            }
            let un = norm_f32(&mean);
            if (un as f64) > tol {
                for v in mean.iter_mut() {
                    *v /= un;
                }
                round_slice(dt, &mut mean);
            }
        }
        // sum(alpha * norm): f32 products, Python sum from 0.
        let scale = alphas
            .iter()
            .zip(&norms)
            .fold(0f32, |acc, (&a, &nrm)| acc + scalar(a) * nrm);
        let scale = round(dt, scale);
        let data = bulk(dt, mean.iter().map(|&m| scale * m).collect());
        Ok(Tensor::new(dt, first.shape.clone(), data))
    }
}

/// Elements per block of the bulk steps (a few blocks stay in the CPU cache).
const BLOCK: usize = 4096;

/// `xs` rounded to `dt`, in bulk (the same bits as rounding each value).
fn bulk(dt: DType, mut xs: Vec<f32>) -> Vec<f32> {
    round_slice(dt, &mut xs);
    xs
}
