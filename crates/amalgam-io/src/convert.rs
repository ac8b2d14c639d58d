//! Float conversions that round exactly like PyTorch's `Tensor.to()` on CPU.
//!
//! Scalar helpers work on raw bit patterns (`u16` for F16/BF16) so that callers never depend on
//! `half`'s types; slice helpers are the fast paths used for whole tensors.
//!
//! # Rounding
//!
//! Every narrowing rounds to nearest, ties to even, with gradual underflow (subnormals are
//! produced, never flushed) and overflow to a signed infinity; signed zeros are kept.
//!
//! F64 -> F16 and F64 -> BF16 round **twice**, through f32, because that is what PyTorch does
//! (`c10::Half` and `c10::BFloat16` are only constructible from `float`): for example
//! `1 + 2^-11 + 2^-40` becomes `1.0` in F16, where a single rounding would give `1 + 2^-10`.
//! Reproducing mergekit bit for bit matters more than the better rounding.
//!
//! # NaN policy
//!
//! PyTorch's NaN results depend on the code path: the vectorised kernels (every element of a
//! realistic tensor, except a short scalar tail and the elements of 0-d tensors) and the scalar
//! fallback disagree for some conversions. This module follows the **vectorised** path, measured
//! with torch 2.15 on AVX512 and AVX2 kernels:
//!
//! | conversion | NaN result |
//! |---|---|
//! | f32 -> BF16 (and F64 -> BF16) | always `0xFFFF` (scalar path: `0x7FC0`) |
//! | f32 -> F16 (and F64, BF16 -> F16) | `sign \| 0x7E00 \| mantissa >> 13` (quiet bit set, payload truncated) |
//! | F16 -> f32 | `sign \| 0x7FC00000 \| mantissa << 13` (scalar path: `0x7FFFFFFF`) |
//! | BF16 -> f32 | exact (`bits << 16`, payload and signalling bit kept) |
//! | F16 -> BF16 | always `0x7FC0`, the sign is dropped |
//! | f64 -> f32 | `sign \| 0x7FC00000 \| mantissa >> 29` |
//! | f32 -> f64 | `sign \| 0x7FF8000000000000 \| mantissa << 29` |
//!
//! The tests check all of it against PyTorch bit for bit (see `tests/fixtures/make_fixtures.py`).

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::{DType, Error, Result};

/// What PyTorch's *scalar* f32 -> BF16 path (0-d tensors, the tail of a vectorised loop)
/// produces for every NaN. [`f32_to_bf16`] follows the vectorised path and returns `0xFFFF`
/// instead; this constant is here for callers that model a 0-d computation.
pub const BF16_SCALAR_NAN: u16 = 0x7FC0;

/// Elements converted per stack buffer in the slice paths: large enough to amortise the SIMD
/// dispatch, small enough (8 KiB of f32) to stay in L1.
const CHUNK: usize = 2048;

/// BF16 bits -> f32 (exact; NaN payloads kept, as PyTorch does).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> BF16 bits, round to nearest even. Every NaN becomes `0xFFFF`, which is what PyTorch's
/// vectorised CPU kernel (the path every realistic tensor takes) produces; see the module docs.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    // Adding 0x7FFF plus the lowest kept bit rounds to nearest, ties to even; a carry out of the
    // mantissa bumps the exponent, which is exactly right (up to infinity for the largest values).
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        0xFFFF
    } else {
        rounded
    }
}

/// F16 bits -> f32 (exact). NaNs get the quiet bit and keep their payload, like the hardware
/// conversion PyTorch's vectorised path uses.
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x3FF) as u32;
    let bits = if exp == 0x1F {
        if man == 0 {
            0x7F80_0000
        } else {
            0x7FC0_0000 | (man << 13)
        }
    } else if exp == 0 {
        // Zero or subnormal: man * 2^-24 is exact in f32.
        ((man as f32) * f32::from_bits(0x3380_0000)).to_bits()
    } else {
        ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(sign | bits)
}

/// f32 -> F16 bits, round to nearest even, subnormals and overflow to infinity included.
/// NaN: `sign | 0x7E00 | mantissa >> 13`, as the hardware conversion (and PyTorch) gives.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    let w = x.to_bits();
    let sign = ((w >> 16) & 0x8000) as u16;
    let abs = w & 0x7FFF_FFFF;
    // Branch-free rounding with the FPU doing the work. Scaling by 2^112 then 2^-110 sends every
    // magnitude that must overflow (|x| >= 65520) to infinity and multiplies the others by 4.
    // Adding a power of two taken from the exponent (clamped below at the f16 subnormal scale)
    // puts the f16 rounding point exactly at the f32 ulp of the sum, so the f32 addition performs
    // the round-to-nearest-even; the f16 exponent and mantissa are then read off the sum's bits.
    let mut base =
        (f32::from_bits(abs) * f32::from_bits(0x7780_0000)) * f32::from_bits(0x0880_0000);
    let bias = ((abs << 1) & 0xFF00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let nonsign = (((bits >> 13) & 0x7C00) + (bits & 0x0FFF)) as u16;
    let nan = 0x7E00 | ((abs >> 13) & 0x3FF) as u16;
    sign | if abs > 0x7F80_0000 { nan } else { nonsign }
}

/// f64 -> f32, round to nearest even. NaN: quiet bit set, payload truncated (hardware rule),
/// made explicit because Rust leaves NaN payloads of `as` casts unspecified.
#[inline]
pub fn f64_to_f32(x: f64) -> f32 {
    if x.is_nan() {
        let b = x.to_bits();
        let sign = ((b >> 32) as u32) & 0x8000_0000;
        let man = ((b >> 29) as u32) & 0x007F_FFFF;
        f32::from_bits(sign | 0x7FC0_0000 | man)
    } else {
        x as f32
    }
}

/// f32 -> f64 (exact). NaN: quiet bit set, payload kept.
#[inline]
pub fn f32_to_f64(x: f32) -> f64 {
    if x.is_nan() {
        let b = x.to_bits() as u64;
        f64::from_bits(
            ((b & 0x8000_0000) << 32) | 0x7FF8_0000_0000_0000 | ((b & 0x007F_FFFF) << 29),
        )
    } else {
        x as f64
    }
}

/// f64 -> F16 bits through f32 (two roundings, exactly like PyTorch; see the module docs).
#[inline]
pub fn f64_to_f16(x: f64) -> u16 {
    f32_to_f16(f64_to_f32(x))
}

/// f64 -> BF16 bits through f32 (two roundings, exactly like PyTorch; NaN -> `0xFFFF`).
#[inline]
pub fn f64_to_bf16(x: f64) -> u16 {
    f32_to_bf16(f64_to_f32(x))
}

/// F16 bits -> BF16 bits, one rounding (F16 -> f32 is exact). Every NaN becomes `0x7FC0`: this
/// PyTorch kernel goes through the scalar `c10::BFloat16` conversion even when vectorised.
#[inline]
pub fn f16_to_bf16(h: u16) -> u16 {
    if h & 0x7FFF > 0x7C00 {
        BF16_SCALAR_NAN
    } else {
        f32_to_bf16(f16_to_f32(h))
    }
}

/// BF16 bits -> F16 bits, one rounding (BF16 -> f32 is exact). NaN as in [`f32_to_f16`].
#[inline]
pub fn bf16_to_f16(b: u16) -> u16 {
    f32_to_f16(bf16_to_f32(b))
}

/// Rounds an f32 to the nearest value representable in `dtype` (F16, BF16 or F32) and returns it
/// as f32. This is the "round after each op" primitive the merge numerics are built on; it is
/// branch-free so loops calling it auto-vectorise. Other dtypes return `x` unchanged.
#[inline]
pub fn round_f32(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16_to_f32(f32_to_bf16(x)),
        DType::F16 => f16_to_f32(f32_to_f16(x)),
        _ => x,
    }
}

/// [`round_f32`] over a buffer, in place: the bulk form every method uses, with the same rule
/// (BF16: round to nearest even, every NaN becomes PyTorch's vectorised `0xFFFF`; F16: the
/// CPU's conversion instructions where it has them). One rounder, so a value rounded one element
/// at a time and one rounded in bulk are the same bits.
pub fn round_f32_slice(dtype: DType, xs: &mut [f32]) {
    match dtype {
        DType::BF16 => round_bf16_slice(xs),
        DType::F16 => {
            use half::slice::HalfFloatSliceExt;
            let mut buf = [half::f16::ZERO; 1024];
            for c in xs.chunks_mut(1024) {
                let b = &mut buf[..c.len()];
                b.convert_from_f32_slice(c);
                b.convert_to_f32_slice(c);
            }
        }
        _ => {}
    }
}

#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn round_bf16_slice(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = bf16_to_f32(f32_to_bf16(*x));
    }
}

fn len_error(what: &str, bytes: usize, n: usize, dtype: DType) -> Error {
    Error::Invalid(format!(
        "{what}: {bytes} bytes is not {n} elements of {dtype}"
    ))
}

/// Reads little-endian u16s from (possibly unaligned) bytes.
#[inline]
fn load_u16(src: &[u8], dst: &mut [u16]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = u16::from_le_bytes([c[0], c[1]]);
    }
}

/// Writes u16s as little-endian bytes.
#[inline]
fn store_u16(src: &[u16], dst: &mut [u8]) {
    for (s, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
        c.copy_from_slice(&s.to_le_bytes());
    }
}

/// 16 BF16 values (32 bytes) -> 16 f32 values (64 bytes), written so that it vectorises.
#[inline(always)]
fn bf16_block_to_f32(src: &[u8], dst: &mut [u8]) {
    let mut w = [0u32; 16];
    for (k, x) in w.iter_mut().enumerate() {
        let lo = src.get(2 * k).copied().unwrap_or(0);
        let hi = src.get(2 * k + 1).copied().unwrap_or(0);
        *x = (u16::from_le_bytes([lo, hi]) as u32) << 16;
    }
    for (c, x) in dst.chunks_exact_mut(4).zip(w) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// Decodes little-endian `src` bytes of `dtype` into f32 values (`dst.len()` elements).
/// F64 is narrowed with round-to-nearest-even like `.to(torch.float32)`.
pub fn decode_f32(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let n = dst.len();
    if Some(src.len()) != n.checked_mul(dtype.size()) {
        return Err(len_error("decode_f32", src.len(), n, dtype));
    }
    match dtype {
        // Fast paths: safetensors data written by the reference library is aligned to its
        // element size, so on little-endian machines the bytes can be read in place.
        DType::BF16
            if cfg!(target_endian = "little")
                && bytemuck::try_cast_slice::<u8, u16>(src).is_ok() =>
        {
            let bits: &[u16] = bytemuck::cast_slice(src);
            for (d, &b) in dst.iter_mut().zip(bits) {
                *d = f32::from_bits((b as u32) << 16);
            }
        }
        DType::F16
            if cfg!(target_endian = "little")
                && bytemuck::try_cast_slice::<u8, u16>(src).is_ok() =>
        {
            let bits: &[u16] = bytemuck::cast_slice(src);
            bits.reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(dst);
        }
        DType::F32
            if cfg!(target_endian = "little")
                && bytemuck::try_cast_slice::<u8, f32>(src).is_ok() =>
        {
            dst.copy_from_slice(bytemuck::cast_slice(src));
        }
        DType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            let mut buf = [0u16; CHUNK];
            for (d, s) in dst.chunks_mut(CHUNK).zip(src.chunks(2 * CHUNK)) {
                let b = &mut buf[..d.len()];
                load_u16(s, b);
                // `half` uses the F16C/NEON conversion instructions when the CPU has them.
                b.reinterpret_cast::<half::f16>().convert_to_f32_slice(d);
            }
        }
        DType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F64 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(8)) {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                *d = f64_to_f32(f64::from_le_bytes(b));
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

/// Decodes little-endian `src` bytes of `dtype` into a new vector of f32 values: the same
/// values as [`decode_f32`], built without first zero-filling the buffer (this is the hot path of
/// every merge, and the fill alone cost a tenth of it).
pub fn decode_f32_vec(dtype: DType, src: &[u8]) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    decode_f32_into(dtype, src, &mut out)?;
    Ok(out)
}

/// [`decode_f32_vec`] into `out` (cleared first), reusing its allocation: a caller that frees
/// the values on another thread than the one decoding them hands in a buffer it allocated
/// itself, so that the allocator reuses the memory at once (mimalloc returns a block freed by
/// another thread to its owner only later, which shows as peak memory).
pub fn decode_f32_into(dtype: DType, src: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let le = cfg!(target_endian = "little");
    out.clear();
    match dtype {
        DType::F16 if le && bytemuck::try_cast_slice::<u8, u16>(src).is_ok() => {
            let bits: &[u16] = bytemuck::cast_slice(src);
            out.reserve(bits.len());
            extend_f16(out, bits);
            Ok(())
        }
        DType::BF16 if le && bytemuck::try_cast_slice::<u8, u16>(src).is_ok() => {
            let bits: &[u16] = bytemuck::cast_slice(src);
            out.reserve(bits.len());
            out.extend(bits.iter().map(|&b| f32::from_bits((b as u32) << 16)));
            Ok(())
        }
        _ => {
            let n = src.len() / dtype.size().max(1);
            out.resize(n, 0.0);
            decode_f32(dtype, src, out)
        }
    }
}

/// F16 -> f32 for a whole slice, branch-free so that it vectorises: the f16 exponent and
/// mantissa are moved into f32 position and rescaled by 2^112 (exact for normal and subnormal
/// values alike); infinities and NaNs (quiet bit set, payload kept, as [`f16_to_f32`]) are
/// patched in with a select.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn extend_f16(out: &mut Vec<f32>, bits: &[u16]) {
    #[inline(always)]
    fn one(h: u16) -> f32 {
        let h = h as u32;
        let sign = (h & 0x8000) << 16;
        let magnitude = (h & 0x7fff) << 13;
        let scaled = (f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)).to_bits();
        let man = h & 0x3ff;
        let quiet = if man != 0 { 0x0040_0000 } else { 0 };
        let special = 0x7f80_0000 | (man << 13) | quiet;
        let is_special = (h & 0x7c00) == 0x7c00;
        f32::from_bits(sign | if is_special { special } else { scaled })
    }
    // Fixed-size blocks so the conversion vectorises; the tail goes one by one.
    let mut blocks = bits.chunks_exact(16);
    for b in &mut blocks {
        let mut v = [0f32; 16];
        for (d, &h) in v.iter_mut().zip(b) {
            *d = one(h);
        }
        out.extend_from_slice(&v);
    }
    out.extend(blocks.remainder().iter().map(|&h| one(h)));
}

/// Encodes f32 values as little-endian bytes of `dtype` (F16/BF16 rounded to nearest even,
/// F64 widened exactly).
pub fn encode_f32(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let n = src.len();
    if Some(dst.len()) != n.checked_mul(dtype.size()) {
        return Err(len_error("encode_f32", dst.len(), n, dtype));
    }
    let le = cfg!(target_endian = "little");
    match dtype {
        // Fast paths when the destination is aligned (it is for freshly allocated buffers).
        DType::BF16 if le && bytemuck::try_cast_slice_mut::<u8, u16>(dst).is_ok() => {
            let bits: &mut [u16] = bytemuck::cast_slice_mut(dst);
            for (b, &x) in bits.iter_mut().zip(src) {
                *b = f32_to_bf16(x);
            }
        }
        DType::F16 if le && bytemuck::try_cast_slice_mut::<u8, u16>(dst).is_ok() => {
            let bits: &mut [u16] = bytemuck::cast_slice_mut(dst);
            bits.reinterpret_cast_mut::<half::f16>()
                .convert_from_f32_slice(src);
        }
        DType::F32 if le && bytemuck::try_cast_slice_mut::<u8, f32>(dst).is_ok() => {
            dst.copy_from_slice(bytemuck::cast_slice(src));
        }
        DType::BF16 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(2)) {
                c.copy_from_slice(&f32_to_bf16(*s).to_le_bytes());
            }
        }
        DType::F16 => {
            let mut buf = [half::f16::ZERO; CHUNK];
            for (s, d) in src.chunks(CHUNK).zip(dst.chunks_mut(2 * CHUNK)) {
                let b = &mut buf[..s.len()];
                b.convert_from_f32_slice(s);
                store_u16(b.reinterpret_cast(), d);
            }
        }
        DType::F32 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(4)) {
                c.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::F64 => {
            for (s, c) in src.iter().zip(dst.chunks_exact_mut(8)) {
                c.copy_from_slice(&f32_to_f64(*s).to_le_bytes());
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

/// Converts raw little-endian tensor bytes from one dtype to another, exactly like PyTorch's
/// `.to()` on CPU (see the module docs for the F64 double rounding and the NaN policy).
///
/// Works in fixed-size chunks, so converting a tensor never allocates; `from == to` is a copy
/// and works for every dtype, other pairs need floating-point dtypes (F16, BF16, F32, F64).
pub fn convert_bytes(from: DType, src: &[u8], to: DType, dst: &mut [u8]) -> Result<()> {
    if !src.len().is_multiple_of(from.size()) {
        return Err(Error::Invalid(format!(
            "convert_bytes: {} bytes is not a whole number of {from} elements",
            src.len()
        )));
    }
    let n = src.len() / from.size();
    if Some(dst.len()) != n.checked_mul(to.size()) {
        return Err(len_error("convert_bytes", dst.len(), n, to));
    }
    let float = |d: DType| matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    if from == to {
        dst.copy_from_slice(src);
        return Ok(());
    }
    if !float(from) || !float(to) {
        return Err(Error::Invalid(format!(
            "cannot convert {from} tensors to {to}: only F16, BF16, F32 and F64 convert"
        )));
    }
    match (from, to) {
        // The hot widening of checkpoint loading: a shift, no f32 buffer.
        (DType::BF16, DType::F32) => {
            // Fixed-size blocks so the compiler sees whole vectors (unaligned loads and
            // stores), then the remainder element by element.
            let mut s16 = src.chunks_exact(32);
            let mut d32 = dst.chunks_exact_mut(64);
            for (s, d) in (&mut s16).zip(&mut d32) {
                bf16_block_to_f32(s, d);
            }
            for (s, d) in s16
                .remainder()
                .chunks_exact(2)
                .zip(d32.into_remainder().chunks_exact_mut(4))
            {
                d.copy_from_slice(&[0, 0, s[0], s[1]]);
            }
        }
        (DType::F16, DType::BF16) => {
            for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&f16_to_bf16(u16::from_le_bytes([s[0], s[1]])).to_le_bytes());
            }
        }
        (DType::F64, DType::F32) => {
            for (s, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(4)) {
                let b = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
                d.copy_from_slice(&f64_to_f32(f64::from_le_bytes(b)).to_le_bytes());
            }
        }
        _ => {
            // Everything else goes through f32, which is exact for every widening and is
            // PyTorch's own route for the F64 narrowings (double rounding included).
            let mut buf = [0f32; CHUNK];
            for (s, d) in src
                .chunks(CHUNK * from.size())
                .zip(dst.chunks_mut(CHUNK * to.size()))
            {
                let b = &mut buf[..s.len() / from.size()];
                decode_f32(from, s, b)?;
                encode_f32(to, b, d)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_to_f16_matches_half_on_every_pattern_slice() {
        // Exhaustive over a strided subset of all 2^32 patterns (every 257th), against `half`'s
        // independent implementation; the PyTorch fixtures cover the rest.
        let mut i: u64 = 0;
        while i < 1 << 32 {
            let x = f32::from_bits(i as u32);
            assert_eq!(
                f32_to_f16(x),
                half::f16::from_f32(x).to_bits(),
                "pattern {i:#010x}"
            );
            i += 257;
        }
    }
}
