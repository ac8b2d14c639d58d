//! `arcee_fusion`: keeps the other model's value only where its change from the base is
//! unusually important (|Δ| weighted by the per-row KL divergence of the softmaxed weights).

use amalgam_io::DType;

use crate::numerics::round;
use crate::reduce::{full_sum_with, threads_for};
use crate::{
    BaseRule, Contract, Legacy, MergeArgs, MergeMethod, MethodError, MethodInfo, Tensor,
};

/// Above this many elements mergekit estimates the quantiles from a random sample of this size
/// (drawn with replacement), which consumes the random stream.
const SAMPLE: usize = 1_000_000;

/// The arcee_fusion method.
pub struct ArceeFusion {
    info: MethodInfo,
}

impl ArceeFusion {
    /// The method with its declared parameters.
    pub fn new() -> Self {
        ArceeFusion {
            info: MethodInfo {
                name: "arcee_fusion",
                pretty_name: "Arcee Fusion",
                reference_url: Some("https://arcee.ai"),
                summary: "imp = |x − b| · KL(softmax(x) ‖ softmax(b)) per row (last axis), in the \
                          input dtype; threshold = median + 1.5·(q3 − q1) of imp (from a 1,000,000 \
                          sample drawn with replacement when the tensor is larger); out = b + (x − \
                          b)·[imp ≥ threshold]. The mask is float32, so the output is float32 even \
                          for bf16/f16 inputs (mergekit issue #604), reproduced here.",
                params: vec![],
                contract: Contract::exactly(BaseRule::Required, 2),
                random: true,
                legacy: Legacy::Absent,
                card_names_base: true,
                uniform_fallback: None,
                deviations: "Output dtype is float32 whatever the inputs (as mergekit 0.1.5; cast with \
                             out_dtype to get bf16). The softmax is PyTorch's (SLEEF u10 expf, \
                             16-lane reduce_all sum): bit-exact with mergekit at 1, 2 and 4 torch \
                             threads in bf16/f16/f32 (tests/golden-threads); the log is the \
                             platform libm's. \
                             Only tensors over 1,000,000 elements consume the random stream. \
                             --mergekit-version 0.0.4.2 has no arcee_fusion.",
            },
        }
    }
}

impl Default for ArceeFusion {
    fn default() -> Self {
        Self::new()
    }
}

/// `F.softmax(row)` in `dt` as PyTorch's CPU kernel (`_vec_softmax_lastdim`, AVX512 build)
/// computes it: f32 max, `exp(x − max)` with SLEEF's `expf` (u10, [`sleef_expf_u10`]), their sum
/// by `vec::reduce_all` over 16-lane vectors ([`lane_tree_sum`]), multiplication by the
/// reciprocal of the sum, one rounding to `dt`.
///
/// Why not libm's `exp`: the threshold arcee_fusion applies to these values flips on a 1-ulp
/// difference of an exp (2-7 elements per tensor in a third of random f32 cases).
fn softmax_row(row: &[f32], dt: DType) -> Vec<f32> {
    let max = row
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let e: Vec<f32> = row.iter().map(|&v| sleef_expf_u10(v - max)).collect();
    let sum = lane_tree_sum(&e);
    let inv = 1.0 / sum;
    e.iter().map(|&v| round(dt, v * inv)).collect()
}

/// SLEEF 3's vectorised `expf` (`xexpf`, 1.0-ulp bound), the function behind PyTorch's
/// `Vectorized<float>::exp()` on x86-64: round `d/ln 2` to the nearest integer q, reduce with a
/// two-part ln 2, a degree-6 polynomial evaluated with fused multiply-adds, then scale by 2^q in
/// two steps; below −104 it is 0, above 100 infinity. Deterministic and portable, so reproducible.
pub(crate) fn sleef_expf_u10(d: f32) -> f32 {
    // SLEEF's R_LN2f, L2Uf (0.693145751953125) and L2Lf (1.428606765330187045e-06) as f32.
    const R_LN2: f32 = std::f32::consts::LOG2_E;
    let l2u = f32::from_bits(0x3f317200);
    let l2l = f32::from_bits(0x35bfbe8e);
    if d.is_nan() {
        return d;
    }
    let q = (d * R_LN2).round_ties_even();
    let qi = q as i32;
    let s = q.mul_add(-l2u, d);
    let s = q.mul_add(-l2l, s);
    let mut u = 0.000_198_527_62_f32;
    u = u.mul_add(s, 0.001_393_043_6);
    u = u.mul_add(s, 0.008_333_361);
    u = u.mul_add(s, 0.041_666_485);
    u = u.mul_add(s, 0.166_666_67);
    u = u.mul_add(s, 0.5);
    let u = 1.0 + (s * s).mul_add(u, s);
    // vldexp2: u · 2^(q>>1) · 2^(q − (q>>1)), each power built from its exponent bits.
    let pow2 = |e: i32| f32::from_bits((((e + 127).clamp(0, 255)) as u32) << 23);
    let h = qi >> 1;
    let u = u * pow2(h) * pow2(qi - h);
    if d < -104.0 {
        0.0
    } else if d > 100.0 {
        f32::INFINITY
    } else {
        u
    }
}

/// PyTorch's `vec::reduce_all(+)` with 16-lane (AVX-512) float vectors: the first vector as the
/// accumulator, each further full vector added lane-wise, the last partial vector added into its
/// lanes only, then the lanes folded by the shuffle tree (lane i with i^8, then i^4, i^2, i^1).
/// Shorter rows are summed in sequence.
fn lane_tree_sum(x: &[f32]) -> f32 {
    const W: usize = 16;
    if x.len() < W {
        let mut it = x.iter();
        let first = it.next().copied().unwrap_or(0.0);
        return it.fold(first, |a, &v| a + v);
    }
    let mut acc = [0f32; W];
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = v;
    }
    let mut d = W;
    while d + W <= x.len() {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += x.get(d + l).copied().unwrap_or(0.0);
        }
        d += W;
    }
    for (l, a) in acc.iter_mut().enumerate() {
        if let Some(&v) = x.get(d + l) {
            *a += v;
        }
    }
    for k in [8usize, 4, 2, 1] {
        let prev = acc;
        for (l, a) in acc.iter_mut().enumerate() {
            *a = prev[l] + prev[l ^ k];
        }
    }
    acc[0]
}

/// `torch.sort(x).values` on CPU: ascending, every NaN last whatever its sign bit (x86 produces
/// NaNs with the sign bit set, which `f32::total_cmp` would put first and so shift the
/// quantiles). Only values are used, so the order among equal keys is irrelevant.
fn sort_like_torch(xs: &mut [f32]) {
    xs.sort_by(|a, c| match (a.is_nan(), c.is_nan()) {
        (false, false) => a.partial_cmp(c).unwrap_or(std::cmp::Ordering::Equal),
        (a_nan, c_nan) => a_nan.cmp(&c_nan),
    });
}

impl MergeMethod for ArceeFusion {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn output_dtype(&self, _work: DType) -> DType {
        DType::F32
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        let mut args = args;
        let rng = args.rng.take();
        args.check(&self.info)?;
        let (b, x) = args.base_and_other()?;
        let dt = b.dtype;
        let n = b.data.len();
        let row_len = if b.shape.is_empty() {
            1
        } else {
            b.shape.last().copied().unwrap_or(1).max(1)
        };
        let eps = 1e-8f32;
        let mut importance = vec![0f32; n];
        for ((xr, br), ir) in x
            .data
            .chunks(row_len)
            .zip(b.data.chunks(row_len))
            .zip(importance.chunks_mut(row_len))
        {
            let p: Vec<f32> = softmax_row(xr, dt)
                .iter()
                .map(|&v| round(dt, v + eps))
                .collect();
            let q: Vec<f32> = softmax_row(br, dt)
                .iter()
                .map(|&v| round(dt, v + eps))
                .collect();
            let kl = round(
                dt,
                full_sum_with(
                    |i| match (p.get(i), q.get(i)) {
                        (Some(&pv), Some(&qv)) => {
                            round(dt, pv * round(dt, round(dt, pv / qv).ln()))
                        }
                        _ => 0.0,
                    },
                    p.len(),
                    dt,
                    // `sum(dim=-1)` over a 1-D tensor is a reduction to one value: it splits.
                    threads_for(n / row_len, args.torch_threads),
                ),
            );
            for ((o, &a), &c) in ir.iter_mut().zip(xr).zip(br) {
                *o = round(dt, round(dt, a - c).abs() * kl);
            }
        }
        let mut sample: Vec<f32> = if n > SAMPLE {
            let rng = rng.ok_or_else(|| {
                MethodError::Other(
                    "arcee_fusion needs the random stream (--random-seed) for tensors over \
                     1,000,000 elements"
                        .into(),
                )
            })?;
            (0..SAMPLE)
                .map(|_| {
                    let k = (rng.next_u32() as u64 % n as u64) as usize;
                    importance.get(k).copied().unwrap_or(0.0)
                })
                .collect()
        } else {
            importance.clone()
        };
        sort_like_torch(&mut sample);
        if sample.is_empty() {
            return Ok(Tensor::new(DType::F32, b.shape.clone(), Vec::new()));
        }
        let last = (sample.len() - 1) as f32;
        let at = |q: f32| -> f32 {
            let idx = (q * last) as usize;
            sample.get(idx).copied().unwrap_or(f32::NAN)
        };
        let (q1, med, q3) = (at(0.25), at(0.5), at(0.75));
        let thr = round(dt, med + round(dt, 1.5 * round(dt, q3 - q1)));
        let data = b
            .data
            .iter()
            .zip(&x.data)
            .zip(&importance)
            .map(|((&bv, &xv), &imp)| {
                let m = if imp >= thr { 1.0f32 } else { 0.0 };
                bv + round(dt, xv - bv) * m
            })
            .collect();
        Ok(Tensor::new(DType::F32, b.shape.clone(), data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nans_sort_last_whatever_their_sign() {
        // torch.sort(torch.tensor([1.0, -nan, -2.0, nan, 0.5])).values == [-2, 0.5, 1, nan, nan]
        let neg_nan = f32::from_bits(0xffc0_0000);
        let mut x = [1.0, neg_nan, -2.0, f32::NAN, 0.5];
        sort_like_torch(&mut x);
        assert_eq!(&x[..3], &[-2.0, 0.5, 1.0]);
        assert!(x[3].is_nan() && x[4].is_nan());
    }
}
