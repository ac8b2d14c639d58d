//! Sums in PyTorch's CPU association order.
//!
//! An f32 sum's last bit depends on the order of the additions. PyTorch's CPU sum kernel
//! (`SumKernel.cpp`, "cascade sum") does not add left to right: it loads SIMD vectors, spreads
//! consecutive loads over four accumulators and folds them through a four-level cascade, and for a
//! reduction over an outer axis (`deltas.sum(dim=0)` over models) it picks a different order for
//! different columns. These functions replay that order so the rounded results match mergekit.
//!
//! Emulated: the single-threaded kernel. Above 32 768 input elements PyTorch splits the work per
//! thread, which only changes whole-tensor sums (L1 norms) and model-axis sums of five or more
//! models; mergekit's thread count is the machine's core count, so that split is not reproduced.

use amalgam_io::DType;

const ILP: usize = 4;
const LEVELS: usize = 4;

/// Width (f32 lanes) of the vectors PyTorch's CPU sum kernel accumulates in: 8. Even on CPUs
/// with AVX-512 (PyTorch's "AVX512" capability) the reduction kernels keep 8-lane vectors; this
/// was checked against torch 2.15 on such a machine (`tests/gta_methods.rs` L1-rescale cases).
pub fn torch_float_lanes() -> usize {
    8
}

fn is_reduced(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// PyTorch's `multi_row_sum`: `nrows` independent accumulators (each `lanes` wide) summed over
/// `size` steps through a four-level cascade; `load(i, k, l)` is step `i`, row `k`, lane `l`.
fn multi_row_sum(
    load: &dyn Fn(usize, usize, usize) -> f32,
    size: usize,
    nrows: usize,
    lanes: usize,
) -> Vec<Vec<f32>> {
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = vec![vec![vec![0f32; lanes]; nrows]; LEVELS];
    let add_step = |acc: &mut Vec<Vec<Vec<f32>>>, i: usize| {
        for (k, row) in acc[0].iter_mut().enumerate() {
            for (l, a) in row.iter_mut().enumerate() {
                *a += load(i, k, l);
            }
        }
    };
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_step(&mut acc, i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lo, hi) = acc.split_at_mut(j);
            for (src, dst) in lo[j - 1].iter_mut().zip(hi[0].iter_mut()) {
                for (s, d) in src.iter_mut().zip(dst.iter_mut()) {
                    *d += *s;
                    *s = 0.0;
                }
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        add_step(&mut acc, i);
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (dst, src) in first[0].iter_mut().zip(level) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d += *s;
            }
        }
    }
    std::mem::take(&mut first[0])
}

/// PyTorch's `row_sum`: `size` elements (each `lanes` wide) with four-way ILP: element
/// `4·i + k` goes to accumulator `k`, leftovers to accumulator 0, then `((p0+p1)+p2)+p3`.
fn row_sum(load: &dyn Fn(usize, usize) -> f32, size: usize, lanes: usize) -> Vec<f32> {
    let size_ilp = size / ILP;
    let mut partial = multi_row_sum(&|i, k, l| load(i * ILP + k, l), size_ilp, ILP, lanes);
    let (first, rest) = partial.split_at_mut(1);
    for i in size_ilp * ILP..size {
        for (l, p) in first[0].iter_mut().enumerate() {
            *p += load(i, l);
        }
    }
    for r in rest.iter() {
        for (p, q) in first[0].iter_mut().zip(r) {
            *p += *q;
        }
    }
    std::mem::take(&mut first[0])
}

/// `x.sum()` of a contiguous tensor as PyTorch's single-threaded CPU kernel computes it, in f32,
/// before the final rounding to the dtype (`x` holds the dtype's values widened to f32).
///
/// bf16/f16 inputs are loaded as vectors of `2·lanes` elements whose halves are added first.
pub fn torch_sum(x: &[f32], dtype: DType, lanes: usize) -> f32 {
    let reduced = is_reduced(dtype);
    let n = x.len();
    let lanes = lanes.max(1);
    let vec_numel = if reduced { 2 * lanes } else { lanes };
    if n >= vec_numel {
        let vec_size = n / vec_numel;
        let load = |v: usize, l: usize| -> f32 {
            let b = v * vec_numel;
            if reduced {
                x[b + l] + x[b + lanes + l]
            } else {
                x[b + l]
            }
        };
        let acc = row_sum(&load, vec_size, lanes);
        let mut fin = 0f32;
        for &v in &x[vec_size * vec_numel..] {
            fin += v;
        }
        for a in acc {
            fin += a;
        }
        0.0 + fin
    } else {
        let load = |v: usize, _l: usize| -> f32 { x[v] };
        0.0 + row_sum(&load, n, 1).first().copied().unwrap_or(0.0)
    }
}

/// How PyTorch's `t.sum(dim=0)` orders the additions for one output column.
#[derive(Debug, Clone, Copy)]
pub struct Dim0Sum {
    /// Columns below this index are summed in plain sequence (with the 16-step cascade).
    multi_end: usize,
}

impl Dim0Sum {
    /// Plans the sum over dim 0 of a contiguous `(n, cols)` tensor of `dtype`.
    ///
    /// With `cols` at least one SIMD vector of the dtype, PyTorch's outer-sum kernel sums blocks of
    /// `4·lanes` columns with `multi_row_sum` (sequential over dim 0) and the remaining columns with
    /// `row_sum` (four-way interleaved over dim 0); otherwise blocks of 4 columns and `row_sum` for
    /// the rest. The orders differ only once dim 0 has five or more entries.
    pub fn new(cols: usize, dtype: DType, lanes: usize) -> Self {
        let lanes = lanes.max(1);
        let vec_t = if is_reduced(dtype) { 2 * lanes } else { lanes };
        let block = if cols >= vec_t && cols > 1 {
            4 * lanes
        } else {
            4
        };
        Dim0Sum {
            multi_end: cols / block * block,
        }
    }

    /// The f32 sum (before rounding) of `vals` (the dim-0 entries of column `col`).
    #[inline]
    pub fn sum(&self, col: usize, vals: &[f32]) -> f32 {
        // Up to four entries every path adds in plain sequence (the orders differ only in the
        // sign of intermediate zeros, which the final store normalises).
        let s = if vals.len() <= ILP {
            vals.iter().fold(0f32, |a, &v| a + v)
        } else if col < self.multi_end {
            multi_row_sum_scalar::<1>(&|i, _| vals[i], vals.len())[0]
        } else {
            row_sum_scalar(vals)
        };
        // The kernel stores `out += s` into a zero-filled output: -0 becomes +0.
        0.0 + s
    }
}

/// [`multi_row_sum`] for one lane, without allocation (it runs once per output element).
#[inline]
fn multi_row_sum_scalar<const R: usize>(
    load: &dyn Fn(usize, usize) -> f32,
    size: usize,
) -> [f32; R] {
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[0f32; R]; LEVELS];
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a += load(i, k);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lo, hi) = acc.split_at_mut(j);
            for (s, d) in lo[j - 1].iter_mut().zip(hi[0].iter_mut()) {
                *d += *s;
                *s = 0.0;
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a += load(i, k);
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (d, s) in first[0].iter_mut().zip(level) {
            *d += *s;
        }
    }
    first[0]
}

/// [`row_sum`] for one lane, without allocation.
#[inline]
fn row_sum_scalar(vals: &[f32]) -> f32 {
    let size_ilp = vals.len() / ILP;
    let mut p = multi_row_sum_scalar::<ILP>(&|i, k| vals[i * ILP + k], size_ilp);
    for &v in &vals[size_ilp * ILP..] {
        p[0] += v;
    }
    ((p[0] + p[1]) + p[2]) + p[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sums() {
        assert_eq!(torch_sum(&[1.0, 2.0, 3.0], DType::F32, 16), 6.0);
        let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(torch_sum(&x, DType::F32, 16), 499_500.0);
        assert_eq!(torch_sum(&x, DType::BF16, 8), 499_500.0);
        assert_eq!(torch_sum(&[], DType::F32, 16), 0.0);
    }

    #[test]
    fn dim0_orders_differ_from_five_entries() {
        let v = [1.0f32, 1e8, -1e8, 1.0, 1.0];
        // sequential: ((((1+1e8)-1e8)+1)+1) = 2 ; interleaved: ((1+1)+1e8)-1e8+1 = 1
        let plan = Dim0Sum::new(64, DType::F32, 16);
        assert_eq!(plan.sum(0, &v), 2.0);
        let plan = Dim0Sum::new(3, DType::F32, 16);
        assert_eq!(plan.sum(0, &v), 1.0);
        assert!(plan.sum(0, &[-0.0, -0.0]).is_sign_positive());
    }
}
