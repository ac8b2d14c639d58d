//! `arcee_fusion`: keeps the other model's value only where its change from the base is
//! unusually important (|Δ| weighted by the per-row KL divergence of the softmaxed weights).

use amalgam_io::DType;

use rayon::prelude::*;

use crate::numerics::{round, round_slice};
use crate::reduce::{full_sum, threads_for};
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

/// `F.softmax(row)` in `dt` into `out`, as PyTorch's CPU kernel (`_vec_softmax_lastdim`, AVX512
/// build) computes it: f32 max, `exp(x − max)` with SLEEF's `expf` (u10, [`sleef_expf_u10`]),
/// their sum by `vec::reduce_all` over 16-lane vectors ([`lane_tree_sum`]), multiplication by the
/// reciprocal of the sum, one rounding to `dt` (in bulk: the same bits as one by one).
///
/// Why not libm's `exp`: the threshold arcee_fusion applies to these values flips on a 1-ulp
/// difference of an exp (2-7 elements per tensor in a third of random f32 cases).
fn softmax_row(row: &[f32], dt: DType, out: &mut [f32]) {
    let max = row
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    exp_shifted(row, max, out);
    let inv = 1.0 / lane_tree_sum(out);
    for v in out.iter_mut() {
        *v *= inv;
    }
    round_slice(dt, out);
}

/// `out[i] = sleef_expf_u10(row[i] − max)`, compiled for vector units with fused multiply-adds
/// (the same bits: every step is an exactly rounded IEEE operation).
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
fn exp_shifted(row: &[f32], max: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(row) {
        *o = sleef_expf_u10(v - max);
    }
}

/// SLEEF 3's vectorised `expf` (`xexpf`, 1.0-ulp bound), the function behind PyTorch's
/// `Vectorized<float>::exp()` on x86-64: round `d/ln 2` to the nearest integer q, reduce with a
/// two-part ln 2, a degree-6 polynomial evaluated with fused multiply-adds, then scale by 2^q in
/// two steps; below −104 it is 0, above 100 infinity. Deterministic and portable, so reproducible.
/// Branch-free (the special cases are selects) so that [`exp_shifted`] vectorises.
#[inline(always)]
pub(crate) fn sleef_expf_u10(d: f32) -> f32 {
    // SLEEF's R_LN2f, L2Uf (0.693145751953125) and L2Lf (1.428606765330187045e-06) as f32.
    const R_LN2: f32 = std::f32::consts::LOG2_E;
    let l2u = f32::from_bits(0x3f317200);
    let l2l = f32::from_bits(0x35bfbe8e);
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
    if d.is_nan() {
        d
    } else if d < -104.0 {
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

/// `torch.sort(x).values` on CPU compares as this: ascending, every NaN last whatever its sign bit
/// (x86 produces NaNs with the sign bit set, which `f32::total_cmp` would put first and so shift
/// the quantiles).
fn torch_value_order(a: &f32, c: &f32) -> std::cmp::Ordering {
    match (a.is_nan(), c.is_nan()) {
        (false, false) => a.partial_cmp(c).unwrap_or(std::cmp::Ordering::Equal),
        (a_nan, c_nan) => a_nan.cmp(&c_nan),
    }
}

/// The values `torch.sort(xs).values` holds at the ascending positions `at` (each below
/// `xs.len()`), by selection instead of a full sort: only values are read, so the order among
/// equal keys (which any two algorithms may break differently) is irrelevant, and the value at
/// a sorted position is the same whichever algorithm puts it there. `xs` is left permuted.
fn sorted_values_at<const K: usize>(xs: &mut [f32], at: [usize; K]) -> [f32; K] {
    let mut out = [f32::NAN; K];
    // Largest position first: each selection leaves the smaller values in front of it, which is
    // all the next (smaller) position needs.
    let mut order: [usize; K] = std::array::from_fn(|i| i);
    order.sort_by(|&i, &j| at[j].cmp(&at[i]));
    let mut end = xs.len();
    for i in order {
        let pos = at[i];
        if let Some(part) = xs.get_mut(..end) {
            if pos < part.len() {
                let (_, v, _) = part.select_nth_unstable_by(pos, torch_value_order);
                out[i] = *v;
                end = pos + 1;
            }
        }
    }
    out
}

/// Elements per parallel block of the final masked sum.
const BLOCK: usize = 4096;

/// Per-thread buffers of one row.
struct RowScratch {
    p: Vec<f32>,
    q: Vec<f32>,
    t: Vec<f32>,
}

impl RowScratch {
    fn new(len: usize) -> Self {
        RowScratch {
            p: vec![0.0; len],
            q: vec![0.0; len],
            t: vec![0.0; len],
        }
    }
}

/// One row's importance `|x − b| · KL(p ‖ q)` into `out`, with `p = softmax(x) + 1e-8` and
/// `q = softmax(b) + 1e-8`, every elementwise step rounded to `dt` (in bulk) and the KL sum
/// reduced as PyTorch does with `threads` threads.
fn row_importance(
    xr: &[f32],
    br: &[f32],
    dt: DType,
    threads: usize,
    sc: &mut RowScratch,
    out: &mut [f32],
) {
    let len = xr.len();
    let (p, q, t) = (&mut sc.p[..len], &mut sc.q[..len], &mut sc.t[..len]);
    let eps = 1e-8f32;
    for (buf, row) in [(&mut *p, xr), (&mut *q, br)] {
        softmax_row(row, dt, buf);
        for v in buf.iter_mut() {
            *v += eps;
        }
        round_slice(dt, buf);
    }
    // `p · ln(p / q)`, each step rounded.
    for ((tv, &pv), &qv) in t.iter_mut().zip(p.iter()).zip(q.iter()) {
        *tv = pv / qv;
    }
    round_slice(dt, t);
    for tv in t.iter_mut() {
        *tv = tv.ln();
    }
    round_slice(dt, t);
    for (tv, &pv) in t.iter_mut().zip(p.iter()) {
        *tv *= pv;
    }
    round_slice(dt, t);
    let kl = round(dt, full_sum(t, dt, threads));
    for ((o, &a), &c) in out.iter_mut().zip(xr).zip(br) {
        *o = a - c;
    }
    round_slice(dt, out);
    for o in out.iter_mut() {
        *o = o.abs() * kl;
    }
    round_slice(dt, out);
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
        let mut importance = vec![0f32; n];
        // Rows are independent (each its own softmaxes and KL sum): in parallel.
        let threads = threads_for(n / row_len, args.torch_threads);
        importance
            .par_chunks_mut(row_len)
            .zip(x.data.par_chunks(row_len).zip(b.data.par_chunks(row_len)))
            .for_each_init(
                || RowScratch::new(row_len),
                |sc, (ir, (xr, br))| row_importance(xr, br, dt, threads, sc, ir),
            );
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
        if sample.is_empty() {
            return Ok(Tensor::new(DType::F32, b.shape.clone(), Vec::new()));
        }
        let last = (sample.len() - 1) as f32;
        let [q1, med, q3] = sorted_values_at(&mut sample, [0.25, 0.5, 0.75].map(|q: f32| (q * last) as usize));
        drop(sample);
        let thr = round(dt, med + round(dt, 1.5 * round(dt, q3 - q1)));
        // `b + (x − b)·mask`, in parallel blocks (the difference rounded in bulk).
        let mut data = vec![0f32; n];
        data.par_chunks_mut(BLOCK)
            .zip(b.data.par_chunks(BLOCK))
            .zip(x.data.par_chunks(BLOCK).zip(importance.par_chunks(BLOCK)))
            .for_each(|((out, bs), (xs, imps))| {
                for ((o, &bv), &xv) in out.iter_mut().zip(bs).zip(xs) {
                    *o = xv - bv;
                }
                round_slice(dt, out);
                for ((o, &bv), &imp) in out.iter_mut().zip(bs).zip(imps) {
                    let m = if imp >= thr { 1.0f32 } else { 0.0 };
                    *o = bv + *o * m;
                }
            });
        Ok(Tensor::new(DType::F32, b.shape.clone(), data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.sort(x).values` as a full sort with [`torch_value_order`].
    fn sorted(xs: &[f32]) -> Vec<f32> {
        let mut v = xs.to_vec();
        v.sort_by(torch_value_order);
        v
    }

    #[test]
    fn nans_sort_last_whatever_their_sign() {
        // torch.sort(torch.tensor([1.0, -nan, -2.0, nan, 0.5])).values == [-2, 0.5, 1, nan, nan]
        let neg_nan = f32::from_bits(0xffc0_0000);
        let x = [1.0, neg_nan, -2.0, f32::NAN, 0.5];
        let v = sorted(&x);
        assert_eq!(&v[..3], &[-2.0, 0.5, 1.0]);
        assert!(v[3].is_nan() && v[4].is_nan());
        let mut y = x;
        let got = sorted_values_at(&mut y, [0, 1, 2, 3, 4]);
        assert_eq!(&got[..3], &[-2.0, 0.5, 1.0]);
        assert!(got[3].is_nan() && got[4].is_nan());
    }

    #[test]
    fn selected_quantiles_are_the_sorted_values() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for (n, distinct) in [(1usize, 3u64), (2, 2), (7, 3), (100, 5), (1000, 1 << 20), (4097, 9)] {
            let xs: Vec<f32> = (0..n)
                .map(|_| {
                    crate::rng::xorshift64(&mut s);
                    match s % 31 {
                        0 => f32::NAN,
                        1 => f32::from_bits(0xffc0_0000),
                        2 => -0.0,
                        _ => (s % distinct) as f32 - (distinct / 2) as f32,
                    }
                })
                .collect();
            let full = sorted(&xs);
            let last = (n - 1) as f32;
            let at = [0.25f32, 0.5, 0.75].map(|q| (q * last) as usize);
            let got = sorted_values_at(&mut xs.clone(), at);
            for (g, &i) in got.iter().zip(&at) {
                assert_eq!(g.to_bits() & 0x7fff_ffff, full[i].to_bits() & 0x7fff_ffff, "n {n} at {i}");
            }
        }
    }
}
