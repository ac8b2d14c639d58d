//! Blocked passes of the whole-tensor methods (slerp, nuslerp, multislerp, model_stock, karcher).
//!
//! Why: these methods need reductions over the whole tensor (norms, dots) before any output
//! element is known, so they cannot be chunked by the engine; but every intermediate they take
//! those reductions of (task vectors, unit directions, tangents) is elementwise in the inputs.
//! Recomputing such an intermediate block by block from the inputs (a few vectorised operations
//! per element, rounded with `round_slice`) costs less than writing it to memory once, and keeps
//! the method's own memory to its output and at most one more tensor-sized buffer.

use amalgam_io::DType;

pub(crate) use crate::reduce::BLOCK;

use crate::numerics::round_slice;

/// `out = round(x − b)` (the task vector of a block, as PyTorch's subtraction rounds it), or `x`
/// itself without a base. `x`, `b` and `out` are the same block of their tensors.
pub(crate) fn task_block(dt: DType, x: &[f32], base: Option<&[f32]>, out: &mut [f32]) {
    match base {
        Some(b) => {
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(b) {
                *o = v - w;
            }
            round_slice(dt, out);
        }
        None => {
            if let Some(src) = x.get(..out.len()) {
                out.copy_from_slice(src);
            }
        }
    }
}

/// `xs = round(xs · k)`.
pub(crate) fn mul_round(dt: DType, xs: &mut [f32], k: f32) {
    for v in xs.iter_mut() {
        *v *= k;
    }
    round_slice(dt, xs);
}

/// `xs = round(xs / k)`.
pub(crate) fn div_round(dt: DType, xs: &mut [f32], k: f32) {
    for v in xs.iter_mut() {
        *v /= k;
    }
    round_slice(dt, xs);
}

/// `xs = round(xs + ys)`.
pub(crate) fn add_round(dt: DType, xs: &mut [f32], ys: &[f32]) {
    for (v, &y) in xs.iter_mut().zip(ys) {
        *v += y;
    }
    round_slice(dt, xs);
}

/// The range of block `start` (of length `len`) in a slice, empty past its end.
pub(crate) fn part(xs: &[f32], start: usize, len: usize) -> &[f32] {
    xs.get(start..start + len).unwrap_or(&[])
}

/// [`part`], mutable.
pub(crate) fn part_mut(xs: &mut [f32], start: usize, len: usize) -> &mut [f32] {
    xs.get_mut(start..start + len).unwrap_or(&mut [])
}
