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
