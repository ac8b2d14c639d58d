//! Float conversions that round exactly like PyTorch's `Tensor.to()` on CPU.
//!
//! Scalar helpers work on raw bit patterns (`u16` for F16/BF16) so that callers never depend on
//! `half`'s types; slice helpers are the fast paths used for whole tensors.
//!
//! NaN policy: documented on [`f32_to_bf16`] and [`f32_to_f16`].
//! (skeleton: the io helper fills these in)

use crate::{DType, Error, Result};

/// BF16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> BF16 bits, round to nearest even, as PyTorch CPU does.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// F16 bits -> f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 -> F16 bits, round to nearest even, as PyTorch CPU does.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Rounds an f32 to the nearest value representable in `dtype` (F16, BF16 or F32) and returns it
/// as f32. This is the "round after each op" primitive the merge numerics are built on.
#[inline]
pub fn round_f32(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16_to_f32(f32_to_bf16(x)),
        DType::F16 => f16_to_f32(f32_to_f16(x)),
        _ => x,
    }
}

/// Decodes little-endian `src` bytes of `dtype` into f32 values (`dst.len()` elements).
/// F64 is narrowed with round-to-nearest-even like `.to(torch.float32)`.
pub fn decode_f32(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let n = dst.len();
    if src.len() != n * dtype.size() {
        return Err(Error::Invalid(format!(
            "decode_f32: {} bytes is not {n} elements of {dtype}",
            src.len()
        )));
    }
    match dtype {
        DType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F64 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *d = f64::from_le_bytes(b) as f32;
            }
        }
        other => {
            return Err(Error::Invalid(format!(
                "cannot decode {other} tensors as floating point"
            )))
        }
    }
    Ok(())
}

/// Encodes f32 values as little-endian bytes of `dtype` (F16/BF16 rounded to nearest even,
/// F64 widened exactly).
pub fn encode_f32(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let n = src.len();
    if dst.len() != n * dtype.size() {
        return Err(Error::Invalid(format!(
            "encode_f32: {} bytes is not {n} elements of {dtype}",
            dst.len()
        )));
    }
    match dtype {
        DType::BF16 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
                c.copy_from_slice(&f32_to_bf16(*s).to_le_bytes());
            }
        }
        DType::F16 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
                c.copy_from_slice(&f32_to_f16(*s).to_le_bytes());
            }
        }
        DType::F32 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(4)) {
                c.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::F64 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(8)) {
                c.copy_from_slice(&(*s as f64).to_le_bytes());
            }
        }
        other => {
            return Err(Error::Invalid(format!(
                "cannot encode floating point values as {other}"
            )))
        }
    }
    Ok(())
}

/// Converts raw little-endian tensor bytes from one dtype to another, rounding like PyTorch's
/// `.to()` (one rounding, never double rounding through f32 where that would differ).
pub fn convert_bytes(from: DType, src: &[u8], to: DType, dst: &mut [u8]) -> Result<()> {
    if from == to {
        if src.len() != dst.len() {
            return Err(Error::Invalid("convert_bytes: length mismatch".into()));
        }
        dst.copy_from_slice(src);
        return Ok(());
    }
    let n = src.len() / from.size();
    let mut tmp = vec![0f32; n];
    decode_f32(from, src, &mut tmp)?;
    encode_f32(to, &tmp, dst)
}
