//! The arithmetic primitives every method is written with, in one place.
//!
//! PyTorch on CPU evaluates each elementwise op on bfloat16/float16 tensors in f32 and rounds the
//! result to the tensor dtype (round to nearest even). Reductions accumulate in f32 and round once.
//! Python float scalars enter ops as f32. These helpers make that explicit so methods read like
//! the formulas in mergekit's source while staying bit-exact.

use amalgam_io::{convert, DType};

/// Rounds an f32 result to `dtype` (identity for F32).
#[inline(always)]
pub fn round(dtype: DType, x: f32) -> f32 {
    convert::round_f32(dtype, x)
}

/// A Python float scalar as PyTorch applies it to a tensor: converted to f32.
#[inline(always)]
pub fn scalar(x: f64) -> f32 {
    x as f32
}

/// A Python float put into a tensor of `dtype` (`torch.tensor(w, dtype=...)`): rounded to it.
#[inline(always)]
pub fn as_dtype(dtype: DType, x: f64) -> f32 {
    round(dtype, x as f32)
}

/// Rounds every value of `xs` to `dtype` in place: the bulk form of [`round`], with the same
/// rule (see [`amalgam_io::convert::round_f32_slice`]).
///
/// float16 goes through the branch-free [`f16_round`](crate::builtin::blocks::f16_round) in a
/// loop compiled for the widest vectors the CPU has: the same bits as [`round`] for every f32
/// (checked over all of them by `blocks`' tests), but 16 values per instruction sequence with
/// AVX-512 instead of the conversion instructions' 8 per call, which made float16 rounding a
/// sixth of a ties merge.
#[inline]
pub fn round_slice(dtype: DType, xs: &mut [f32]) {
    if dtype == DType::F16 {
        crate::builtin::blocks::map1(xs, crate::builtin::blocks::f16_round);
    } else {
        convert::round_f32_slice(dtype, xs)
    }
}

/// `acc[i] = fma(x[i], w, acc[i])` for every i: PyTorch's CPU `addcmul_` on f32, which is
/// contracted to a fused multiply-add. Uses the FMA instruction where the CPU has it (the result
/// is the same either way: a fused multiply-add is exactly rounded by definition).
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
pub fn fma_accumulate(acc: &mut [f32], x: &[f32], w: f32) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = v.mul_add(w, *a);
    }
}

/// `xs[i] /= d` for every i (vectorised).
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
pub fn div_slice(xs: &mut [f32], d: f32) {
    for x in xs.iter_mut() {
        *x /= d;
    }
}

/// [`fma_accumulate`] in f64: PyTorch's CPU `addcmul_` on float64 tensors.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
pub fn fma_accumulate_f64(acc: &mut [f64], x: &[f64], w: f64) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = v.mul_add(w, *a);
    }
}

/// [`div_slice`] in f64.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
pub fn div_slice_f64(xs: &mut [f64], d: f64) {
    for x in xs.iter_mut() {
        *x /= d;
    }
}
