//! PyTorch CPU reductions and a few composite ops, emulated so the spherical and statistical
//! methods (slerp, nuslerp, multislerp, karcher, model_stock, sce, arcee_fusion) round like
//! mergekit does.
//!
//! Why a cascade: PyTorch's CPU `sum` over a contiguous axis does not add left to right. It keeps
//! 8 f32 lanes (one AVX2 register), feeds them 4 registers at a time, and folds partial sums on a
//! 4-level cascade whose step grows with the length. Reproducing that order is what makes an f32
//! dot product or norm bit-identical instead of "within a few ulps". Verified against torch 2.15
//! (CPU capability AVX512, whose reduction kernels still use 8-lane registers) for `sum` on f32
//! up to 300,000 elements; norms use a different kernel ([`sum_sq_lastdim`]). Other machines
//! (other vector widths, thread counts) make mergekit itself round differently (spec §11).

use amalgam_io::DType;

use crate::numerics::round;

/// f32 lanes of one vector register in PyTorch's reduction kernels.
const LANES: usize = 8;
/// Independent accumulators PyTorch interleaves (its `ilp_factor`).
const ILP: usize = 4;
/// Levels of the cascade.
const LEVELS: usize = 4;

fn ceil_log2(x: usize) -> usize {
    if x <= 1 {
        0
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// Sums `size` rows of `ILP` vectors of `LANES` lanes, in PyTorch's cascade order.
fn multi_row_sum(row: impl Fn(usize, usize, usize) -> f32, size: usize) -> [[f32; LANES]; ILP] {
    let level_power = std::cmp::max(4, ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; LANES]; ILP]; LEVELS];
    let add_row = |acc0: &mut [[f32; LANES]; ILP], i: usize| {
        for (k, lanes) in acc0.iter_mut().enumerate() {
            for (l, a) in lanes.iter_mut().enumerate() {
                *a += row(i, k, l);
            }
        }
    };
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            if let (Some(prev), Some(cur)) = (lower.last_mut(), upper.first_mut()) {
                add_into(cur, prev);
                *prev = [[0f32; LANES]; ILP];
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        add_row(&mut acc[0], i);
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        if let Some(a0) = first.first_mut() {
            add_into(a0, level);
        }
    }
    first.first().copied().unwrap_or([[0f32; LANES]; ILP])
}

fn add_into(dst: &mut [[f32; LANES]; ILP], src: &[[f32; LANES]; ILP]) {
    for (d, s) in dst.iter_mut().zip(src) {
        for (a, b) in d.iter_mut().zip(s) {
            *a += *b;
        }
    }
}

/// Sum of `n` values given by `get`, as PyTorch's CPU `sum` over one contiguous axis computes it
/// (unrounded f32; round it to the tensor dtype yourself). For 16-bit tensors PyTorch loads 16
/// values per step and adds the upper 8 to the lower 8 before accumulating, which `half` selects.
pub(crate) fn cascade_sum_with(get: impl Fn(usize) -> f32, n: usize, half: bool) -> f32 {
    let stride = if half { 2 * LANES } else { LANES };
    let vec_numel = n / stride;
    let load = |v: usize, l: usize| -> f32 {
        let base = v * stride;
        if half {
            get(base + l) + get(base + LANES + l)
        } else {
            get(base + l)
        }
    };
    // row_sum: interpret the vectors as a (-1, ILP) array.
    let size_ilp = vec_numel / ILP;
    let mut partial = multi_row_sum(|i, k, l| load(i * ILP + k, l), size_ilp);
    for v in size_ilp * ILP..vec_numel {
        for (l, p) in partial[0].iter_mut().enumerate() {
            *p += load(v, l);
        }
    }
    let (p0, rest) = partial.split_at_mut(1);
    if let Some(p0) = p0.first_mut() {
        for pk in rest.iter() {
            for (a, b) in p0.iter_mut().zip(pk) {
                *a += *b;
            }
        }
    }
    let mut acc = 0f32;
    for k in vec_numel * stride..n {
        acc += get(k);
    }
    for p in partial[0] {
        acc += p;
    }
    acc
}

/// [`cascade_sum_with`] over a slice of a tensor of `dtype`.
pub(crate) fn cascade_sum(x: &[f32], dtype: DType) -> f32 {
    cascade_sum_with(
        |i| x.get(i).copied().unwrap_or(0.0),
        x.len(),
        dtype != DType::F32,
    )
}

/// Sum of squares as PyTorch's vectorised 2-norm kernel computes it for a contiguous row
/// (`norm_two_reduce_step`): 8 f32 lanes accumulate `x*x` (separate multiply and add), the lanes
/// are folded left to right, then the remaining `n % step` elements are added one by one with a
/// fused multiply-add. For BF16 rows each step loads 16 values and adds the squares of the lower
/// then the upper 8 to the lanes. Verified bit-exact against torch 2.15 on f32 rows from 100 to
/// 1,048,576 elements.
pub(crate) fn sum_sq_lastdim(get: impl Fn(usize) -> f32, n: usize, bf16: bool) -> f32 {
    let step = if bf16 { 2 * LANES } else { LANES };
    let full = n - n % step;
    let mut lanes = [0f32; LANES];
    let mut d = 0;
    while d < full {
        for (l, acc) in lanes.iter_mut().enumerate() {
            let v = get(d + l);
            *acc += v * v;
        }
        if bf16 {
            for (l, acc) in lanes.iter_mut().enumerate() {
                let v = get(d + LANES + l);
                *acc += v * v;
            }
        }
        d += step;
    }
    let mut acc = lanes[0];
    for &l in &lanes[1..] {
        acc += l;
    }
    for k in full..n {
        let v = get(k);
        acc = v.mul_add(v, acc);
    }
    acc
}

/// Sum of squares by PyTorch's generic norm reduction (F16 tensors, or a reduction over a strided
/// axis): one accumulator, `acc + x*x` contracted to a fused multiply-add, in index order.
pub(crate) fn sum_sq_seq(get: impl Fn(usize) -> f32, n: usize) -> f32 {
    (0..n).fold(0f32, |acc, i| {
        let v = get(i);
        v.mul_add(v, acc)
    })
}

/// `torch.norm(x)` / `torch.linalg.vector_norm(x)` over a contiguous row of a tensor of `dtype`,
/// rounded to `dtype`. F32 and BF16 take PyTorch's vectorised fast path, F16 the generic one.
pub(crate) fn norm2(x: &[f32], dtype: DType) -> f32 {
    let get = |i: usize| x.get(i).copied().unwrap_or(0.0);
    let s = match dtype {
        DType::F16 => sum_sq_seq(get, x.len()),
        DType::BF16 => sum_sq_lastdim(get, x.len(), true),
        _ => sum_sq_lastdim(get, x.len(), false),
    };
    round(dtype, s.sqrt())
}

/// The 2-norm over a strided axis (e.g. columns after a transpose): the generic reduction.
pub(crate) fn norm2_strided(get: impl Fn(usize) -> f32, n: usize, dtype: DType) -> f32 {
    round(dtype, sum_sq_seq(get, n).sqrt())
}

/// PyTorch's `row_sum` for a single lane: element `4i+k` goes to accumulator `k` (each summed on
/// the cascade), leftovers to accumulator 0, then `((p0+p1)+p2)+p3`.
fn row_sum_scalar(get: &impl Fn(usize) -> f32, n: usize) -> f32 {
    let size_ilp = n / ILP;
    let mut p = [0f32; ILP];
    for (k, pk) in p.iter_mut().enumerate() {
        *pk = cascade_1lane(&|i| get(i * ILP + k), size_ilp);
    }
    for i in size_ilp * ILP..n {
        p[0] += get(i);
    }
    ((p[0] + p[1]) + p[2]) + p[3]
}

/// [`multi_row_sum`] for one row of one lane.
fn cascade_1lane(get: &impl Fn(usize) -> f32, size: usize) -> f32 {
    let level_power = std::cmp::max(4, ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [0f32; LEVELS];
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            acc[0] += get(i);
            i += 1;
        }
        for j in 1..LEVELS {
            acc[j] += acc[j - 1];
            acc[j - 1] = 0.0;
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        acc[0] += get(i);
        i += 1;
    }
    let mut s = acc[0];
    for &a in &acc[1..] {
        s += a;
    }
    s
}

/// `t.sum(dim=0)` for column `col` of a contiguous `(n, cols)` tensor of `dtype`, unrounded f32:
/// PyTorch's outer-sum kernel sums blocks of 32 columns (8 for narrow tensors: 4) with the
/// sequential cascade and the leftover columns with the four-way interleaved `row_sum`. The two
/// orders coincide for up to four entries.
pub(crate) fn outer_sum(
    get: impl Fn(usize) -> f32,
    n: usize,
    col: usize,
    cols: usize,
    dtype: DType,
) -> f32 {
    let vec_t = if dtype == DType::F32 {
        LANES
    } else {
        2 * LANES
    };
    let block = if cols >= vec_t && cols > 1 {
        ILP * LANES
    } else {
        ILP
    };
    let multi_end = cols / block * block;
    let s = if n <= ILP {
        (0..n).fold(0f32, |a, i| a + get(i))
    } else if col < multi_end {
        cascade_1lane(&get, n)
    } else {
        row_sum_scalar(&get, n)
    };
    0.0 + s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_log2_matches_definition() {
        assert_eq!(ceil_log2(0), 0);
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(1024), 10);
        assert_eq!(ceil_log2(1025), 11);
    }

    #[test]
    fn cascade_sum_of_small_integers_is_exact() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(cascade_sum(&x, DType::F32), 499_500.0);
        assert_eq!(cascade_sum(&x[..7], DType::BF16), 21.0);
    }
}
