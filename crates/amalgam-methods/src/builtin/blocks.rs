//! Blocked passes of the whole-tensor methods (slerp, nuslerp, multislerp, model_stock, karcher).
//!
//! Why: these methods need reductions over the whole tensor (norms, dots) before any output
//! element is known, so they cannot be chunked by the engine; but every intermediate they take
//! those reductions of (task vectors, unit directions, tangents) is elementwise in the inputs.
//! Recomputing such an intermediate block by block from the inputs (a few vectorised operations
//! per element, rounded with `round_slice`) costs less than writing it to memory once, and keeps
//! the method's own memory to its output and at most one more tensor-sized buffer.
//!
//! Every elementwise step here is *fused*: the operation and its rounding to the dtype run in one
//! vectorised loop ([`map1`], [`map2`], [`map3`] with a rounder chosen once per call by
//! `with_rounder!`), instead of an f32 pass followed by a `round_slice` pass. For float16 that
//! rounding is [`f16_round`], a branch-free form of the same rule that the compiler vectorises
//! (AVX-512 where the CPU has it): `round_slice`'s float16 path converts 8 values per call, which
//! made it most of the time of the methods that round every step (karcher: about 70 roundings
//! per element).

use amalgam_io::convert::{bf16_to_f32, f32_to_bf16};
use amalgam_io::DType;

pub(crate) use crate::reduce::BLOCK;

/// `x` rounded to the nearest float16 (ties to even) and widened back to f32: the same bits as
/// `numerics::round(DType::F16, x)` and `round_slice` for every f32 (NaN: quiet bit set, payload
/// truncated to float16's 10 bits; overflow to infinity; subnormals), checked over every f32 bit
/// pattern (`f16_round_matches_round_everywhere`).
///
/// Why this form: each case is plain integer or float arithmetic selected without branches, so a
/// loop of it vectorises (about 14 instructions per 16 values with AVX-512).
#[inline(always)]
pub(crate) fn f16_round(x: f32) -> f32 {
    let b = x.to_bits();
    let sign = b & 0x8000_0000;
    let a = b & 0x7FFF_FFFF;
    // The finite range, normal and subnormal alike: |x| has exponent E (at least -14, the
    // subnormals' fixed step), so float16 keeps its multiples of 2^(E-10). Adding
    // M = 1.5 * 2^(E+13) moves |x| into a binade whose f32 ulp is exactly 2^(E-10), so the
    // addition itself rounds to nearest even at float16's last bit (M has no bits there), and
    // subtracting M again is exact; a carry into the next binade is exactly right.
    let e = (a & 0x7F80_0000).max(0x3880_0000);
    let m = f32::from_bits(e.wrapping_add(13 << 23) | 0x0040_0000);
    let finite = ((f32::from_bits(a) + m) - m).to_bits();
    let nan = (a | 0x0040_0000) & 0xFFFF_E000;
    let r = if a > 0x7F80_0000 {
        nan
    } else if a >= 0x477F_F000 {
        // At or above 65520 (half-way past the largest float16, 65504, whose mantissa is odd).
        0x7F80_0000
    } else {
        finite
    };
    f32::from_bits(sign | r)
}

/// `x` rounded to bfloat16 and widened: `numerics::round(DType::BF16, x)`.
#[inline(always)]
pub(crate) fn bf16_round(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

/// No rounding (f32 tensors, and f64 ones, which never reach these passes).
#[inline(always)]
pub(crate) fn no_round(x: f32) -> f32 {
    x
}

/// Binds `$r` to the rounder of `$dt` ([`f16_round`], [`bf16_round`] or [`no_round`]) and
/// evaluates `$body` with it: one monomorphised, vectorised loop per dtype.
macro_rules! with_rounder {
    ($dt:expr, $r:ident, $body:expr) => {
        match $dt {
            amalgam_io::DType::F16 => {
                let $r = $crate::builtin::blocks::f16_round;
                $body
            }
            amalgam_io::DType::BF16 => {
                let $r = $crate::builtin::blocks::bf16_round;
                $body
            }
            _ => {
                let $r = $crate::builtin::blocks::no_round;
                $body
            }
        }
    };
}
pub(crate) use with_rounder;

/// `xs[i] = f(xs[i])`, compiled for the widest vectors the CPU has (the closure is inlined).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
pub(crate) fn map1<F: Fn(f32) -> f32>(xs: &mut [f32], f: F) {
    for x in xs.iter_mut() {
        *x = f(*x);
    }
}

/// `xs[i] = f(xs[i], ys[i])` (as [`map1`]).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
pub(crate) fn map2<F: Fn(f32, f32) -> f32>(xs: &mut [f32], ys: &[f32], f: F) {
    for (x, &y) in xs.iter_mut().zip(ys) {
        *x = f(*x, y);
    }
}

/// `xs[i] = f(xs[i], ys[i], zs[i])` (as [`map1`]).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
pub(crate) fn map3<F: Fn(f32, f32, f32) -> f32>(xs: &mut [f32], ys: &[f32], zs: &[f32], f: F) {
    for ((x, &y), &z) in xs.iter_mut().zip(ys).zip(zs) {
        *x = f(*x, y, z);
    }
}

/// `out = round(x − b)` (the task vector of a block, as PyTorch's subtraction rounds it), or `x`
/// itself without a base. `x`, `b` and `out` are the same block of their tensors.
pub(crate) fn task_block(dt: DType, x: &[f32], base: Option<&[f32]>, out: &mut [f32]) {
    match base {
        Some(b) => with_rounder!(
            dt,
            r,
            map3(
                out,
                x,
                b,
                #[inline(always)]
                |_, v, w| r(v - w)
            )
        ),
        None => {
            if let Some(src) = x.get(..out.len()) {
                out.copy_from_slice(src);
            }
        }
    }
}

/// `xs = round(xs · k)`.
pub(crate) fn mul_round(dt: DType, xs: &mut [f32], k: f32) {
    with_rounder!(
        dt,
        r,
        map1(
            xs,
            #[inline(always)]
            |v| r(v * k)
        )
    )
}

/// `xs = round(xs / k)`.
pub(crate) fn div_round(dt: DType, xs: &mut [f32], k: f32) {
    with_rounder!(
        dt,
        r,
        map1(
            xs,
            #[inline(always)]
            |v| r(v / k)
        )
    )
}

/// `xs = round(xs + ys)`.
pub(crate) fn add_round(dt: DType, xs: &mut [f32], ys: &[f32]) {
    with_rounder!(
        dt,
        r,
        map2(
            xs,
            ys,
            #[inline(always)]
            |v, y| r(v + y)
        )
    )
}

/// The range of block `start` (of length `len`) in a slice, empty past its end.
pub(crate) fn part(xs: &[f32], start: usize, len: usize) -> &[f32] {
    xs.get(start..start + len).unwrap_or(&[])
}

/// [`part`], mutable.
pub(crate) fn part_mut(xs: &mut [f32], start: usize, len: usize) -> &mut [f32] {
    xs.get_mut(start..start + len).unwrap_or(&mut [])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::{round, round_slice};

    /// Checks [`f16_round`] (scalar and through [`map1`]) against `round` and `round_slice` on
    /// the f32 bit patterns `hi << 16 | lo` for the given `hi` and every `lo`.
    fn check_f16_patterns(his: impl Iterator<Item = u32>) {
        let mut xs = vec![0f32; 1 << 16];
        let mut bulk = xs.clone();
        for hi in his {
            for (lo, x) in xs.iter_mut().enumerate() {
                *x = f32::from_bits(hi << 16 | lo as u32);
            }
            let mut fused = xs.clone();
            mul_round(DType::F16, &mut fused, 1.0);
            bulk.copy_from_slice(&xs);
            round_slice(DType::F16, &mut bulk);
            for ((&x, &f), &b) in xs.iter().zip(&fused).zip(&bulk) {
                let want = round(DType::F16, x).to_bits();
                assert_eq!(f16_round(x).to_bits(), want, "{:#010x}", x.to_bits());
                assert_eq!(f.to_bits(), want, "{:#010x}", x.to_bits());
                assert_eq!(b.to_bits(), want, "{:#010x}", x.to_bits());
            }
        }
    }

    #[test]
    fn f16_round_matches_round_on_every_case_boundary() {
        // Every upper half-word around zero, the subnormal/normal boundary (2^-14: 0x3880),
        // overflow (0x477F) and infinity/NaN (0x7F80), both signs, plus a stride of the rest.
        let edges = [
            0x0000u32, 0x3300, 0x3380, 0x387F, 0x3880, 0x477F, 0x4780, 0x7F80, 0x7FC0,
        ];
        let his = edges
            .iter()
            .flat_map(|&h| [h.saturating_sub(1), h, h + 1])
            .chain((0..0x8000).step_by(251))
            .flat_map(|h: u32| [h, h | 0x8000])
            .filter(|&h| h <= 0xFFFF);
        check_f16_patterns(his);
    }

    /// Every f32 bit pattern (about a minute in release: `cargo test --release -p
    /// amalgam-methods f16_round_matches_round_everywhere -- --ignored`).
    #[test]
    #[ignore]
    fn f16_round_matches_round_everywhere() {
        check_f16_patterns(0..=0xFFFF);
    }

    #[test]
    fn fused_steps_round_like_the_two_pass_form() {
        let xs: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
        let ys: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.11).cos() * 0.7).collect();
        for dt in [DType::F16, DType::BF16, DType::F32] {
            let two_pass = |f: &dyn Fn(f32, f32) -> f32| -> Vec<u32> {
                let mut v: Vec<f32> = xs.iter().zip(&ys).map(|(&x, &y)| f(x, y)).collect();
                round_slice(dt, &mut v);
                v.iter().map(|v| v.to_bits()).collect()
            };
            let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|v| v.to_bits()).collect() };
            let mut v = xs.clone();
            mul_round(dt, &mut v, 0.3);
            assert_eq!(bits(&v), two_pass(&|x, _| x * 0.3), "{dt:?}");
            let mut v = xs.clone();
            div_round(dt, &mut v, 0.3);
            assert_eq!(bits(&v), two_pass(&|x, _| x / 0.3), "{dt:?}");
            let mut v = xs.clone();
            add_round(dt, &mut v, &ys);
            assert_eq!(bits(&v), two_pass(&|x, y| x + y), "{dt:?}");
            let mut v = vec![0f32; xs.len()];
            task_block(dt, &xs, Some(&ys), &mut v);
            assert_eq!(bits(&v), two_pass(&|x, y| x - y), "{dt:?}");
            task_block(dt, &xs, None, &mut v);
            assert_eq!(bits(&v), bits(&xs), "{dt:?}");
        }
    }
}
