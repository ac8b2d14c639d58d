//! PyTorch's CPU reductions (sums and 2-norms), replayed in PyTorch's association order.
//!
//! Why this exists: an f32 sum's last bit depends on the order of the additions, and PyTorch's
//! CPU kernels do not add left to right. Every method that sums (model-axis sums, dot products,
//! L1 and L2 norms, means) goes through this one module, so that order is written down once:
//!
//! * **Contiguous sums** ([`torch_sum`], [`torch_sum_with`]; `SumKernel.cpp`, "cascade sum"):
//!   the kernel loads SIMD vectors of 8 f32 lanes (for bf16/f16, vectors of 16 values whose two
//!   halves are added first), spreads consecutive vectors over four interleaved accumulators, and
//!   folds each accumulator through a four-level cascade whose step grows with the length. Rows
//!   shorter than one vector take the scalar kernel: the same four-way interleaving on one lane.
//! * **Sums over an outer axis** ([`Dim0Sum`], e.g. `deltas.sum(dim=0)` over models): columns in
//!   whole blocks are summed sequentially through the cascade, the leftover columns four-way
//!   interleaved, so the order depends on the column. With a single column the reduced axis is
//!   contiguous and the contiguous kernel applies instead.
//! * **2-norms** ([`norm2`], [`norm2_strided`]): a different kernel with its own order (8 lanes
//!   of separate multiply and add, then a fused multiply-add tail); F16 and strided axes take the
//!   generic reduction (one fused multiply-add accumulator).
//!
//! * **Thread splits** ([`full_sum_with`], [`full_mean_sum_with`]): a reduction to ONE value over
//!   at least [`GRAIN_SIZE`] elements run with T > 1 intra-op threads is PyTorch's "two-pass
//!   reduction": `min(T, ⌈n/GRAIN_SIZE⌉)` chunks of `⌈n/chunks⌉` elements, each summed by the
//!   kernel above into its own slot of a T-long buffer of the output dtype (so for bf16/f16 each
//!   partial is rounded), then that buffer summed by the same kernel. Reductions with several
//!   outputs (sums over the model axis, per-row sums) give each output to one thread and do not
//!   depend on T, nor do 2-norms, which never split (docs/threads.md, `tests/threads/probe.py`).
//!
//! All are checked bit for bit against torch 2.15 (CPU capability AVX512, whose reduction kernels
//! still use 8-lane vectors) by `tests/reduce.rs` for every length around the kernels' switch
//! points, and the thread splits for T in 1..=8 on lengths around multiples of the grain. Other
//! vector widths (a CPU without AVX2) are not reproduced: mergekit itself rounds differently
//! there (spec §11).

use amalgam_io::DType;

use rayon::prelude::*;

use crate::numerics::round;

/// f32 lanes of one vector in PyTorch's reduction kernels.
const LANES: usize = 8;
/// Independent accumulators PyTorch interleaves (its `ilp_factor`).
const ILP: usize = 4;
/// Levels of the cascade.
const LEVELS: usize = 4;
/// Widest vector [`torch_sum`] accepts (PyTorch's widths are powers of two up to 16 lanes).
const MAX_LANES: usize = 64;

/// Width (f32 lanes) of the vectors PyTorch's CPU sum kernel accumulates in: 8. Even on CPUs
/// with AVX-512 (PyTorch's "AVX512" capability) the reduction kernels keep 8-lane vectors; this
/// was checked against torch 2.15 on such a machine (`tests/reduce.rs`).
pub fn torch_float_lanes() -> usize {
    LANES
}

/// Whether PyTorch loads `dtype` as half-width values (two f32 vectors per load).
fn is_reduced(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// ⌈log₂ x⌉, with 0 for x ≤ 1 (only ever used through `max(4, ·/4)`, where 0 and 1 agree).
fn ceil_log2(x: usize) -> usize {
    if x <= 1 {
        0
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

/// PyTorch's `multi_row_sum`: `R` independent accumulators (each `L` lanes wide) summed over
/// `size` steps through the four-level cascade; `load(i, k, l)` is step `i`, row `k`, lane `l`.
///
/// Fixed-size arrays (no allocation) because it runs once per output element of model-axis sums.
#[inline]
fn multi_row_sum<const R: usize, const L: usize>(
    load: impl Fn(usize, usize, usize) -> f32,
    size: usize,
) -> [[f32; L]; R] {
    let level_power = LEVELS.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; L]; R]; LEVELS];
    let add_step = |acc0: &mut [[f32; L]; R], i: usize| {
        for (k, row) in acc0.iter_mut().enumerate() {
            for (l, a) in row.iter_mut().enumerate() {
                *a += load(i, k, l);
            }
        }
    };
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_step(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            if let (Some(prev), Some(cur)) = (lower.last_mut(), upper.first_mut()) {
                add_into(cur, prev);
                *prev = [[0f32; L]; R];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add_step(&mut acc[0], i);
        i += 1;
    }
    let [mut first, rest @ ..] = acc;
    for level in &rest {
        add_into(&mut first, level);
    }
    first
}

/// `dst += src`, element by element.
#[inline]
fn add_into<const R: usize, const L: usize>(dst: &mut [[f32; L]; R], src: &[[f32; L]; R]) {
    for (d, s) in dst.iter_mut().zip(src) {
        for (a, b) in d.iter_mut().zip(s) {
            *a += *b;
        }
    }
}

/// PyTorch's `row_sum`: `size` elements (each `L` lanes wide) with four-way interleaving:
/// element `4·i + k` goes to accumulator `k`, leftovers to accumulator 0, then
/// `((p0 + p1) + p2) + p3` lane by lane.
#[inline]
fn row_sum<const L: usize>(load: impl Fn(usize, usize) -> f32, size: usize) -> [f32; L] {
    let size_ilp = size / ILP;
    let [mut p0, p1, p2, p3] = multi_row_sum::<ILP, L>(|i, k, l| load(i * ILP + k, l), size_ilp);
    for i in size_ilp * ILP..size {
        for (l, p) in p0.iter_mut().enumerate() {
            *p += load(i, l);
        }
    }
    for pk in [p1, p2, p3] {
        for (a, b) in p0.iter_mut().zip(pk) {
            *a += b;
        }
    }
    p0
}

/// The contiguous sum of `n` values with `L`-lane vectors (see [`torch_sum_with`]).
fn inner_sum<const L: usize>(get: impl Fn(usize) -> f32, n: usize, reduced: bool) -> f32 {
    let vec_numel = if reduced { 2 * L } else { L };
    let s = if n >= vec_numel {
        let vec_size = n / vec_numel;
        let load = |v: usize, l: usize| -> f32 {
            let b = v * vec_numel;
            if reduced {
                get(b + l) + get(b + L + l)
            } else {
                get(b + l)
            }
        };
        let acc = row_sum::<L>(load, vec_size);
        let mut fin = 0f32;
        for k in vec_size * vec_numel..n {
            fin += get(k);
        }
        for a in acc {
            fin += a;
        }
        fin
    } else {
        // Shorter than one vector: the scalar kernel, the same interleaving on one lane.
        let [s] = row_sum::<1>(|i, _| get(i), n);
        s
    };
    // The kernel accumulates into a zero-filled output, so -0 is stored as +0.
    0.0 + s
}

/// `x.sum()` of a contiguous tensor of `dtype` as PyTorch's single-threaded CPU kernel computes
/// it, in f32 before the final rounding to the dtype (`x` holds the dtype's values widened to
/// f32), with vectors of `lanes` f32 lanes ([`torch_float_lanes`] to match PyTorch).
///
/// `lanes` is taken as the largest power of two not above it, at most 64 (PyTorch's vector
/// widths are powers of two); 0 counts as 1.
pub fn torch_sum(x: &[f32], dtype: DType, lanes: usize) -> f32 {
    let get = |i: usize| x.get(i).copied().unwrap_or(0.0);
    let (n, reduced) = (x.len(), is_reduced(dtype));
    let lanes = lanes.clamp(1, MAX_LANES);
    match 1usize << (usize::BITS - 1 - lanes.leading_zeros()) {
        1 => inner_sum::<1>(get, n, reduced),
        2 => inner_sum::<2>(get, n, reduced),
        4 => inner_sum::<4>(get, n, reduced),
        8 => inner_sum::<8>(get, n, reduced),
        16 => inner_sum::<16>(get, n, reduced),
        32 => inner_sum::<32>(get, n, reduced),
        _ => inner_sum::<MAX_LANES>(get, n, reduced),
    }
}

/// [`torch_sum`] of `n` values given by `get` (e.g. the products of a dot product, which are
/// never materialised), with PyTorch's 8 lanes; `dtype` is the dtype of the summed tensor.
pub fn torch_sum_with(get: impl Fn(usize) -> f32, n: usize, dtype: DType) -> f32 {
    inner_sum::<LANES>(get, n, is_reduced(dtype))
}

/// PyTorch's `at::internal::GRAIN_SIZE`: reductions over fewer input elements never split.
pub const GRAIN_SIZE: usize = 32_768;

/// The chunk length of PyTorch's two-pass reduction of `n` elements with `threads` intra-op
/// threads, or `None` when it runs on one thread.
///
/// Why this shape: `TensorIterator::parallel_reduce` goes serial below [`GRAIN_SIZE`] elements or
/// with one thread; otherwise `at::parallel_for(0, n, GRAIN_SIZE)` (OpenMP) starts
/// `min(threads, ⌈n/GRAIN_SIZE⌉)` workers and gives each `⌈n/workers⌉` consecutive elements.
pub fn split_chunk(n: usize, threads: usize) -> Option<usize> {
    if threads <= 1 || n < GRAIN_SIZE {
        return None;
    }
    let workers = threads.min(n.div_ceil(GRAIN_SIZE)).max(1);
    Some(n.div_ceil(workers))
}

/// The thread counts that can give different results for reductions over at most `n` elements,
/// ascending: 1, then 2 ..= the number of chunks `n` can split into (capped at `cap`).
///
/// More threads than chunks leave buffer slots at zero, which change no sum; so for a model whose
/// largest reduced tensor has `n` elements, every T above `⌈n/GRAIN_SIZE⌉` (and at most four
/// chunks) gives the same bits as T = `⌈n/GRAIN_SIZE⌉`.
pub fn distinct_thread_counts(n: usize, cap: usize) -> Vec<usize> {
    let most = n.div_ceil(GRAIN_SIZE).clamp(1, cap.max(1));
    (1..=most).collect()
}

/// `Σ get(0..n)` of a reduction to one value, as PyTorch computes it with `threads` intra-op
/// threads: `in_dtype` is the summed tensor's dtype (how the kernel loads it), `out_dtype` the
/// result's (each thread's partial is stored in it). Unrounded f32, like [`torch_sum_with`]; the
/// caller rounds to `out_dtype`.
pub fn sum_split(
    get: impl Fn(usize) -> f32,
    n: usize,
    in_dtype: DType,
    out_dtype: DType,
    threads: usize,
) -> f32 {
    let reduced = is_reduced(in_dtype);
    let Some(chunk) = split_chunk(n, threads) else {
        return inner_sum::<LANES>(get, n, reduced);
    };
    // One slot per thread, zero-filled ("the identity"); thread k adds its chunk's sum to slot k.
    let mut slots = vec![0f32; threads];
    for (k, slot) in slots.iter_mut().enumerate() {
        let start = k.saturating_mul(chunk);
        if start >= n {
            break;
        }
        let len = chunk.min(n - start);
        let part = inner_sum::<LANES>(|i| get(start + i), len, reduced);
        *slot = round(out_dtype, part);
    }
    // The second pass: the buffer (of the output dtype) summed by the same kernel.
    inner_sum::<LANES>(
        |i| slots.get(i).copied().unwrap_or(0.0),
        threads,
        is_reduced(out_dtype),
    )
}

/// `x.sum()` (a reduction to one value, the result in `dtype`) with `threads` PyTorch intra-op
/// threads; unrounded f32 (see [`sum_split`]).
pub fn full_sum(x: &[f32], dtype: DType, threads: usize) -> f32 {
    full_sum_with(
        |i| x.get(i).copied().unwrap_or(0.0),
        x.len(),
        dtype,
        threads,
    )
}

/// [`full_sum`] of values computed on the fly (the products of a dot, `|x|` of an L1 norm).
pub fn full_sum_with(get: impl Fn(usize) -> f32, n: usize, dtype: DType, threads: usize) -> f32 {
    sum_split(get, n, dtype, dtype, threads)
}

/// The sum inside `x.mean()` (any float dtype) reduced to one value: on the CPU PyTorch casts a
/// bf16/f16 input to f32 before the reduction (`make_reduction`) and sums it with an f32 result,
/// so the loads are f32 vectors and, with threads, the partials stay f32. Verified against torch
/// 2.15 (`tests/threads/probe.py`).
pub fn full_mean_sum_with(get: impl Fn(usize) -> f32, n: usize, threads: usize) -> f32 {
    sum_split(get, n, DType::F32, DType::F32, threads)
}

/// The thread count a reduction with `outputs` results over rows of `n` elements effectively
/// runs with: only a reduction to a single value splits (see the module doc).
pub fn threads_for(outputs: usize, threads: usize) -> usize {
    if outputs == 1 {
        threads
    } else {
        1
    }
}

/// How PyTorch's `t.sum(dim=0)` orders the additions for one output column.
#[derive(Debug, Clone, Copy)]
pub struct Dim0Sum {
    /// Columns below this index are summed in plain sequence (with the 16-step cascade).
    multi_end: usize,
    /// `Some((dtype, lanes))` when there is a single column: the reduced axis is then
    /// contiguous and PyTorch takes the contiguous kernel ([`torch_sum`]).
    contiguous: Option<(DType, usize)>,
}

impl Dim0Sum {
    /// Plans the sum over dim 0 of a contiguous `(n, cols)` tensor of `dtype`.
    ///
    /// With `cols` at least one SIMD vector of the dtype, PyTorch's outer-sum kernel sums blocks of
    /// `4·lanes` columns with `multi_row_sum` (sequential over dim 0) and the remaining columns with
    /// `row_sum` (four-way interleaved over dim 0); otherwise blocks of 4 columns and `row_sum` for
    /// the rest. The orders differ only once dim 0 has five or more entries. A single column is a
    /// contiguous reduction (PyTorch coalesces the dimensions), summed as [`torch_sum`] does.
    pub fn new(cols: usize, dtype: DType, lanes: usize) -> Self {
        let lanes = lanes.clamp(1, MAX_LANES);
        let vec_t = if is_reduced(dtype) { 2 * lanes } else { lanes };
        let block = if cols >= vec_t && cols > 1 {
            4 * lanes
        } else {
            4
        };
        Dim0Sum {
            multi_end: cols / block * block,
            contiguous: (cols == 1).then_some((dtype, lanes)),
        }
    }

    /// The f32 sum (before rounding) of `vals` (the dim-0 entries of column `col`).
    #[inline]
    pub fn sum(&self, col: usize, vals: &[f32]) -> f32 {
        if let Some((dtype, lanes)) = self.contiguous {
            return torch_sum(vals, dtype, lanes);
        }
        self.sum_with(col, |i| vals.get(i).copied().unwrap_or(0.0), vals.len())
    }

    /// [`Dim0Sum::sum`] of the `n` entries given by `get`, which are typically computed on the
    /// fly from several model tensors.
    #[inline]
    pub fn sum_with(&self, col: usize, get: impl Fn(usize) -> f32, n: usize) -> f32 {
        if let Some((dtype, lanes)) = self.contiguous {
            if lanes == LANES {
                return inner_sum::<LANES>(get, n, is_reduced(dtype));
            }
            let vals: Vec<f32> = (0..n).map(get).collect();
            return torch_sum(&vals, dtype, lanes);
        }
        // Up to four entries every path adds in plain sequence (the orders differ only in the
        // sign of intermediate zeros, which the final store normalises).
        let s = if n <= ILP {
            (0..n).fold(0f32, |a, i| a + get(i))
        } else if col < self.multi_end {
            let [[s]] = multi_row_sum::<1, 1>(|i, _, _| get(i), n);
            s
        } else {
            let [s] = row_sum::<1>(|i, _| get(i), n);
            s
        };
        // The kernel stores `out += s` into a zero-filled output: -0 becomes +0.
        0.0 + s
    }
}

/// `t.sum(dim=0)` for column `col` of a contiguous `(n, cols)` tensor of `dtype` whose entries
/// `get(0..n)` are computed on the fly, unrounded f32 (see [`Dim0Sum`]).
pub(crate) fn outer_sum(
    get: impl Fn(usize) -> f32,
    n: usize,
    col: usize,
    cols: usize,
    dtype: DType,
) -> f32 {
    Dim0Sum::new(cols, dtype, LANES).sum_with(col, get, n)
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
    let [first, rest @ ..] = lanes;
    let mut acc = first;
    for l in rest {
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
pub fn norm2(x: &[f32], dtype: DType) -> f32 {
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

/// Elements per block of the blocked reductions ([`norm2_blocks`], [`sum_split_blocks`]) and of
/// the methods' blocked elementwise passes: a multiple of every kernel's vector step (16 values),
/// small enough that a few blocks per input stay in the L1/L2 cache.
pub const BLOCK: usize = 4096;

/// Calls `fill(start, buf)` for the consecutive blocks of `0..n` (each at most [`BLOCK`] long,
/// starting at a multiple of it), then `each(start, block)` on the filled block.
#[inline]
fn for_blocks(
    n: usize,
    mut fill: impl FnMut(usize, &mut [f32]),
    mut each: impl FnMut(usize, &[f32]),
) {
    let mut buf = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let b = &mut buf[..len];
        fill(start, b);
        each(start, b);
        start += len;
    }
}

/// `acc = fma(v, v, acc)` over `xs` in order (the generic norm reduction's one accumulator),
/// compiled with the FMA instruction where the CPU has it: without it `mul_add` is a call into
/// the maths library per element. The result is the same either way (a fused multiply-add is
/// exactly rounded).
#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
fn fma_squares(mut acc: f32, xs: &[f32]) -> f32 {
    for &v in xs {
        acc = v.mul_add(v, acc);
    }
    acc
}

/// `lanes[l] += v*v` (separate multiply and add) for the values of `xs` taken 8 at a time, lane
/// `l` getting every value at `l` mod 8: the vectorised 2-norm kernel's body.
#[multiversion::multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn lane_squares(lanes: &mut [f32; LANES], xs: &[f32]) {
    for c in xs.chunks_exact(LANES) {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += v * v;
        }
    }
}

/// [`norm2`] of `n` values that are produced block by block: `fill(start, buf)` writes elements
/// `start..start + buf.len()` (blocks arrive in order). The same bits as [`norm2`] on the whole
/// row, without materialising it: what lets a method take the norm of a task vector or a unit
/// direction straight from its inputs (`tests/reduce.rs` checks both against PyTorch).
pub fn norm2_blocks(n: usize, dtype: DType, fill: impl FnMut(usize, &mut [f32])) -> f32 {
    norm2_visit(n, dtype, |each| for_blocks(n, fill, each))
}

/// [`norm2`] of `n` values that `visit` hands, in order and in slices of any length whose
/// starts it passes along, to the callback it is given.
fn norm2_visit(n: usize, dtype: DType, visit: impl FnOnce(&mut dyn FnMut(usize, &[f32]))) -> f32 {
    let s = if dtype == DType::F16 {
        let mut acc = 0f32;
        visit(&mut |_, b| acc = fma_squares(acc, b));
        acc
    } else {
        // The vectorised kernel: every value below `full` goes to lane (index mod 8) in index
        // order (a BF16 step of 16 adds its lower then its upper 8); the rest is the FMA tail.
        let step = if dtype == DType::BF16 {
            2 * LANES
        } else {
            LANES
        };
        let full = n - n % step;
        let mut lanes = [0f32; LANES];
        let mut tail = [0f32; 2 * LANES];
        let mut nt = 0;
        visit(&mut |start, b| {
            let k = full.saturating_sub(start).min(b.len());
            let (body, rest) = b.split_at(k);
            lane_squares(&mut lanes, body);
            for &v in rest {
                if let Some(t) = tail.get_mut(nt) {
                    *t = v;
                    nt += 1;
                }
            }
        });
        let [first, rest @ ..] = lanes;
        let mut acc = first;
        for l in rest {
            acc += l;
        }
        fma_squares(acc, tail.get(..nt).unwrap_or(&[]))
    };
    round(dtype, s.sqrt())
}

/// [`norm2`] of a contiguous row, by the kernel of [`norm2_blocks`] (the same bits; vectorised
/// and with the FMA instruction, which [`norm2`]'s generic closure form does not get), reading
/// the row in place.
pub fn norm2_fast(x: &[f32], dtype: DType) -> f32 {
    norm2_visit(x.len(), dtype, |each| {
        for (k, c) in x.chunks(BLOCK).enumerate() {
            each(k * BLOCK, c);
        }
    })
}

/// The contiguous sum kernel ([`inner_sum`] with [`LANES`] lanes) fed with its values in order,
/// in slices of any length: the same additions in the same order, but vectorised over whole
/// steps (four vectors) instead of one closure call per element.
#[derive(Clone)]
struct StreamSum {
    /// Values per vector: 16 for bf16/f16 (two halves added first), 8 for f32.
    vec_numel: usize,
    reduced: bool,
    n: usize,
    /// Values summed by the four-accumulator cascade (whole steps of four vectors).
    body_end: usize,
    /// Values consumed so far.
    pos: usize,
    /// A step split across two slices.
    stage: [f32; 4 * 2 * LANES],
    staged: usize,
    /// The cascade of `multi_row_sum::<4, LANES>` over `steps` steps.
    acc: [[[f32; LANES]; ILP]; LEVELS],
    steps_done: usize,
    level_power: usize,
    /// The values after `body_end` (leftover vectors, then scalars): fewer than 5 vectors.
    tail: [f32; 5 * 2 * LANES],
    nt: usize,
}

impl StreamSum {
    fn new(n: usize, dtype: DType) -> Self {
        let reduced = is_reduced(dtype);
        let vec_numel = if reduced { 2 * LANES } else { LANES };
        let steps = if n >= vec_numel {
            n / vec_numel / ILP
        } else {
            0
        };
        StreamSum {
            vec_numel,
            reduced,
            n,
            body_end: steps * ILP * vec_numel,
            pos: 0,
            stage: [0f32; 4 * 2 * LANES],
            staged: 0,
            acc: [[[0f32; LANES]; ILP]; LEVELS],
            steps_done: 0,
            level_power: LEVELS.max(ceil_log2(steps) / LEVELS),
            tail: [0f32; 5 * 2 * LANES],
            nt: 0,
        }
    }

    /// One step (four vectors) into the first level, then the cascade when a level fills.
    #[inline]
    fn step(&mut self, v: &[f32]) {
        let vn = self.vec_numel;
        if self.reduced {
            step_add_reduced(&mut self.acc[0], v);
        } else {
            step_add(&mut self.acc[0], v, vn);
        }
        self.steps_done += 1;
        // A level of `2^level_power` steps is complete.
        let mask = (1usize << self.level_power) - 1;
        if self.steps_done & mask != 0 {
            return;
        }
        for j in 1..LEVELS {
            let (lower, upper) = self.acc.split_at_mut(j);
            if let (Some(prev), Some(cur)) = (lower.last_mut(), upper.first_mut()) {
                add_into(cur, prev);
                *prev = [[0f32; LANES]; ILP];
            }
            if self.steps_done & (mask << (j * self.level_power)) != 0 {
                break;
            }
        }
    }

    fn push(&mut self, mut xs: &[f32]) {
        let stepw = ILP * self.vec_numel;
        while !xs.is_empty() && self.pos < self.body_end {
            if self.staged > 0 || xs.len() < stepw {
                let k = (stepw - self.staged).min(xs.len());
                let (head, rest) = xs.split_at(k);
                if let Some(dst) = self.stage.get_mut(self.staged..self.staged + k) {
                    dst.copy_from_slice(head);
                }
                self.staged += k;
                self.pos += k;
                xs = rest;
                if self.staged == stepw {
                    let stage = self.stage;
                    self.step(stage.get(..stepw).unwrap_or(&[]));
                    self.staged = 0;
                }
            } else {
                let whole = (xs.len().min(self.body_end - self.pos)) / stepw;
                let (body, rest) = xs.split_at(whole * stepw);
                for v in body.chunks_exact(stepw) {
                    self.step(v);
                }
                self.pos += body.len();
                xs = rest;
            }
        }
        for &v in xs {
            if self.pos >= self.n {
                break;
            }
            if let Some(t) = self.tail.get_mut(self.nt) {
                *t = v;
                self.nt += 1;
            }
            self.pos += 1;
        }
    }

    fn finish(self) -> f32 {
        let tail = self.tail.get(..self.nt).unwrap_or(&[]);
        if self.n < self.vec_numel {
            let [s] = row_sum::<1>(|i, _| tail.get(i).copied().unwrap_or(0.0), tail.len());
            return 0.0 + s;
        }
        let [mut first, rest @ ..] = self.acc;
        for level in &rest {
            add_into(&mut first, level);
        }
        let [mut p0, p1, p2, p3] = first;
        let vn = self.vec_numel;
        let vec_size = self.n / vn;
        let leftover = vec_size - (self.body_end / vn);
        for v in 0..leftover {
            for (l, p) in p0.iter_mut().enumerate() {
                let g = |i: usize| tail.get(v * vn + i).copied().unwrap_or(0.0);
                *p += if self.reduced {
                    g(l) + g(LANES + l)
                } else {
                    g(l)
                };
            }
        }
        for pk in [p1, p2, p3] {
            for (a, b) in p0.iter_mut().zip(pk) {
                *a += b;
            }
        }
        let mut fin = 0f32;
        for &x in tail.get(leftover * vn..).unwrap_or(&[]) {
            fin += x;
        }
        for a in p0 {
            fin += a;
        }
        0.0 + fin
    }
}

/// `acc[k][l] += v[k·8 + l]` for the four f32 vectors of a step.
#[inline]
fn step_add(acc: &mut [[f32; LANES]; ILP], v: &[f32], vn: usize) {
    for (k, row) in acc.iter_mut().enumerate() {
        if let Some(x) = v.get(k * vn..k * vn + LANES) {
            for (a, &b) in row.iter_mut().zip(x) {
                *a += b;
            }
        }
    }
}

/// `acc[k][l] += v[k·16 + l] + v[k·16 + 8 + l]` for the four bf16/f16 vectors of a step.
#[inline]
fn step_add_reduced(acc: &mut [[f32; LANES]; ILP], v: &[f32]) {
    let vn = 2 * LANES;
    for (k, row) in acc.iter_mut().enumerate() {
        if let (Some(lo), Some(hi)) = (
            v.get(k * vn..k * vn + LANES),
            v.get(k * vn + LANES..(k + 1) * vn),
        ) {
            for ((a, &x), &y) in row.iter_mut().zip(lo).zip(hi) {
                *a += x + y;
            }
        }
    }
}

/// Pushes elements `lo..hi` (of `n`) into `acc`, filling the [`BLOCK`]-aligned blocks that hold
/// them with `fill` into `buf`.
fn feed(
    acc: &mut StreamSum,
    n: usize,
    (lo, hi): (usize, usize),
    buf: &mut [f32; BLOCK],
    fill: &mut impl FnMut(usize, &mut [f32]),
) {
    let mut b0 = lo - lo % BLOCK;
    while b0 < hi {
        let len = BLOCK.min(n - b0);
        let b = &mut buf[..len];
        fill(b0, b);
        let from = lo.max(b0) - b0;
        let to = hi.min(b0 + len) - b0;
        acc.push(b.get(from..to).unwrap_or(&[]));
        b0 += len;
    }
}

/// The second pass of a thread-split reduction: the per-thread partials (each already rounded
/// to `out_dtype`) summed by the same kernel.
fn sum_slots(slots: &[f32], out_dtype: DType) -> f32 {
    inner_sum::<LANES>(
        |i| slots.get(i).copied().unwrap_or(0.0),
        slots.len(),
        is_reduced(out_dtype),
    )
}

/// [`sum_split`] of `n` values that are produced block by block: `fill(start, buf)` writes
/// elements `start..start + buf.len()`, for `start` a multiple of [`BLOCK`]. The same additions
/// in the same order as [`sum_split`] over the materialised values (`tests/reduce.rs` checks
/// against PyTorch), vectorised, and without materialising them.
pub fn sum_split_blocks(
    n: usize,
    in_dtype: DType,
    out_dtype: DType,
    threads: usize,
    mut fill: impl FnMut(usize, &mut [f32]),
) -> f32 {
    let mut buf = [0f32; BLOCK];
    let mut chunk_sum = |start: usize, end: usize| -> f32 {
        let mut acc = StreamSum::new(end - start, in_dtype);
        feed(&mut acc, n, (start, end), &mut buf, &mut fill);
        acc.finish()
    };
    let Some(chunk) = split_chunk(n, threads) else {
        return chunk_sum(0, n);
    };
    let mut slots = vec![0f32; threads];
    for (k, slot) in slots.iter_mut().enumerate() {
        let start = k.saturating_mul(chunk);
        if start >= n {
            break;
        }
        let end = n.min(start + chunk);
        *slot = round(out_dtype, chunk_sum(start, end));
    }
    sum_slots(&slots, out_dtype)
}

/// [`sum_split_blocks`] (the same bits) with the work spread over rayon's threads: the thread
/// split's chunks run in parallel, and so do the top-level pieces of each chunk's cascade.
///
/// Why this is exact: the cascade's last level only ever receives, in order, the sums of
/// consecutive runs of `2^(3·level_power)` steps, each accumulated from zero by the lower
/// levels. Those runs are independent; they are summed in parallel, added to the last level in
/// their order, and the rest of the range continues the cascade from there.
pub fn sum_split_blocks_par(
    n: usize,
    in_dtype: DType,
    out_dtype: DType,
    threads: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> f32 {
    let range_sum = |start: usize, end: usize| -> f32 {
        let len = end - start;
        let proto = StreamSum::new(len, in_dtype);
        let stepw = ILP * proto.vec_numel;
        let run_steps = 1usize << (3 * proto.level_power);
        let runs = proto.body_end / stepw / run_steps;
        let run_len = run_steps * stepw;
        let tops: Vec<[[f32; LANES]; ILP]> = (0..runs)
            .into_par_iter()
            .map(|c| {
                let mut acc = StreamSum::new(len, in_dtype);
                acc.pos = c * run_len;
                acc.steps_done = c * run_steps;
                let lo = start + c * run_len;
                feed(
                    &mut acc,
                    n,
                    (lo, lo + run_len),
                    &mut [0f32; BLOCK],
                    &mut |s, b| fill(s, b),
                );
                let [.., top] = acc.acc;
                top
            })
            .collect();
        let mut acc = proto;
        if let Some(top) = acc.acc.last_mut() {
            for t in &tops {
                add_into(top, t);
            }
        }
        acc.pos = runs * run_len;
        acc.steps_done = runs * run_steps;
        feed(
            &mut acc,
            n,
            (start + runs * run_len, end),
            &mut [0f32; BLOCK],
            &mut |s, b| fill(s, b),
        );
        acc.finish()
    };
    let Some(chunk) = split_chunk(n, threads) else {
        return range_sum(0, n);
    };
    let slots: Vec<f32> = (0..threads)
        .into_par_iter()
        .map(|k| {
            let start = k.saturating_mul(chunk);
            if start >= n {
                return 0.0;
            }
            round(out_dtype, range_sum(start, n.min(start + chunk)))
        })
        .collect();
    sum_slots(&slots, out_dtype)
}

/// `k` sums of [`sum_split_blocks_par`] with one thread (each over `data.len()` values), fed by
/// one pass over `data`: `fill(start, block, outs)` gets block `start..` of `data`, may update
/// it in place, and writes the values of sum `j` at those positions to `outs[j]`.
///
/// Why: karcher's dot products of every input with the mean direction (and the mean's pending
/// normalisation) read the mean once instead of once per input. Each sum is the same additions
/// in the same order as [`sum_split_blocks_par`]: the same runs of the cascade's last level,
/// each run a disjoint range of `data`, which is what lets the runs update it in parallel.
/// Unrounded f32, like [`sum_split_blocks_par`].
pub fn sums_blocks_par_mut(
    data: &mut [f32],
    k: usize,
    in_dtype: DType,
    fill: impl Fn(usize, &mut [f32], &mut [[f32; BLOCK]]) + Sync,
) -> Vec<f32> {
    let n = data.len();
    let proto = StreamSum::new(n, in_dtype);
    let stepw = ILP * proto.vec_numel;
    let run_steps = 1usize << (3 * proto.level_power);
    let runs = proto.body_end / stepw / run_steps;
    // A power of two of at least 2^12 steps of 8 values: whole blocks, so a run's blocks start
    // where the sequential pass's would.
    let run_len = run_steps * stepw;
    let (head, rest) = data.split_at_mut(runs * run_len);
    let feed_blocks =
        |accs: &mut [StreamSum], bufs: &mut [[f32; BLOCK]], s0: usize, xs: &mut [f32]| {
            for (b, blk) in xs.chunks_mut(BLOCK).enumerate() {
                let len = blk.len();
                fill(s0 + b * BLOCK, blk, bufs);
                for (acc, buf) in accs.iter_mut().zip(bufs.iter()) {
                    acc.push(buf.get(..len).unwrap_or(&[]));
                }
            }
        };
    let tops: Vec<Vec<[[f32; LANES]; ILP]>> = head
        .par_chunks_mut(run_len.max(1))
        .enumerate()
        .map(|(c, chunk)| {
            let mut acc = proto.clone();
            acc.pos = c * run_len;
            acc.steps_done = c * run_steps;
            let mut accs = vec![acc; k];
            let mut bufs = vec![[0f32; BLOCK]; k];
            feed_blocks(&mut accs, &mut bufs, c * run_len, chunk);
            accs.iter()
                .map(|a| {
                    let [.., top] = a.acc;
                    top
                })
                .collect()
        })
        .collect();
    let mut accs = vec![proto; k];
    for (j, acc) in accs.iter_mut().enumerate() {
        if let Some(top) = acc.acc.last_mut() {
            for t in tops.iter().filter_map(|t| t.get(j)) {
                add_into(top, t);
            }
        }
        acc.pos = runs * run_len;
        acc.steps_done = runs * run_steps;
    }
    let mut bufs = vec![[0f32; BLOCK]; k];
    feed_blocks(&mut accs, &mut bufs, runs * run_len, rest);
    accs.into_iter().map(StreamSum::finish).collect()
}

impl Dim0Sum {
    /// [`Dim0Sum::sum`] of columns `col0..col0 + out.len()` at once: `rows[m]` holds entry `m`
    /// of each of those columns. Up to four entries (every path then adds in plain sequence)
    /// this is a vectorised loop; otherwise column by column.
    pub fn sum_rows(&self, col0: usize, rows: &[&[f32]], out: &mut [f32]) {
        if self.contiguous.is_none() && rows.len() <= ILP {
            out.fill(0.0);
            for r in rows {
                for (o, &v) in out.iter_mut().zip(*r) {
                    *o += v;
                }
            }
            for o in out.iter_mut() {
                *o += 0.0;
            }
            return;
        }
        for (j, o) in out.iter_mut().enumerate() {
            *o = self.sum_with(
                col0 + j,
                |m| rows.get(m).and_then(|r| r.get(j)).copied().unwrap_or(0.0),
                rows.len(),
            );
        }
    }
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
    fn small_sums() {
        assert_eq!(torch_sum(&[1.0, 2.0, 3.0], DType::F32, 16), 6.0);
        let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(torch_sum(&x, DType::F32, 16), 499_500.0);
        assert_eq!(torch_sum(&x, DType::BF16, 8), 499_500.0);
        assert_eq!(torch_sum(&x[..7], DType::BF16, 8), 21.0);
        assert_eq!(torch_sum(&[], DType::F32, 16), 0.0);
        assert_eq!(torch_sum_with(|_| 1.0, 0, DType::F32), 0.0);
    }

    #[test]
    fn odd_lane_counts_do_not_panic() {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        for lanes in [0, 1, 3, 5, 7, 9, 63, 64, 65, 1000, usize::MAX] {
            assert_eq!(torch_sum(&x, DType::F32, lanes), 4950.0, "lanes {lanes}");
            let plan = Dim0Sum::new(7, DType::BF16, lanes);
            assert_eq!(plan.sum(3, &x), 4950.0, "lanes {lanes}");
        }
    }

    #[test]
    fn short_rows_interleave_four_ways() {
        // torch.tensor([1, 1e8, -1e8, 1, 1]).sum() == 1: element 4 joins accumulator 0 first.
        let v = [1.0f32, 1e8, -1e8, 1.0, 1.0];
        assert_eq!(torch_sum(&v, DType::F32, 8), 1.0);
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
        assert_eq!(plan.sum(0, &[]), 0.0);
    }

    #[test]
    fn norms_of_empty_rows_are_zero() {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            assert_eq!(norm2(&[], dt), 0.0);
            assert_eq!(norm2_strided(|_| 1.0, 0, dt), 0.0);
        }
        assert_eq!(norm2(&[3.0, 4.0], DType::F32), 5.0);
    }
}
