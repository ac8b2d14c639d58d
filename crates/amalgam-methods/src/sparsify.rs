//! Task-vector sparsifiers, bit-exact with mergekit 0.1.5's `mergekit/sparsify.py` on CPU.
//!
//! Each function takes a delta (`x − base`) and returns it with some elements zeroed (and, with
//! `rescale`, scaled back to the original L1 norm). Which elements survive depends on details that
//! are easy to get subtly wrong, so they are reproduced rather than approximated:
//!
//! * magnitude selection sorts `|δ|` with libstdc++'s introsort ([`crate::stdsort`]), so ties
//!   at the cut-off are broken exactly as PyTorch breaks them;
//! * random masks draw one MT19937 word per element in row-major order, comparing against the
//!   probability as stored in the probability tensor's dtype ([`Mt19937::bernoulli`]);
//! * the L1 norms are PyTorch's cascade sum, split per thread as PyTorch does ([`crate::reduce::full_sum_with`]) so that the rescale
//!   factor, rounded to the dtype, is the same.

use amalgam_io::DType;

use crate::numerics::{as_dtype, round, round_slice, scalar};
use crate::reduce::{sum_split_blocks_par, BLOCK};
use crate::rng::Mt19937;
#[cfg(test)]
use crate::stdsort::std_sort_asc;
use crate::stdsort::{select_keyed, std_sort_asc_within, topk_largest, Keyed};
use crate::{MethodError, Tensor};

/// Whether a sparsifier rescales the kept values back to the delta's L1 norm (mergekit's
/// `rescale_norm=l1`), and with how many PyTorch threads mergekit computed that norm: the two
/// sums are reductions to one value, whose last bits depend on the thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescale {
    /// No rescaling.
    No,
    /// Rescale to the L1 norm, summed as with `threads` PyTorch intra-op threads.
    L1 {
        /// `torch.get_num_threads()` of the run being reproduced.
        threads: usize,
    },
}

impl Rescale {
    /// `rescale` as a config gives it, with the thread count of the run.
    pub fn new(rescale: bool, threads: usize) -> Self {
        if rescale {
            Rescale::L1 { threads }
        } else {
            Rescale::No
        }
    }
}

/// The message mergekit raises when della's `density ± epsilon` leaves (0, 1).
pub const DELLA_EPSILON_ERROR: &str =
    "Epsilon must be chosen such that density +/- epsilon is in (0, 1)";

/// The message PyTorch raises when a Bernoulli probability is outside [0, 1] (or NaN).
pub const BERNOULLI_P_ERROR: &str = "Expected p_in >= 0 && p_in <= 1 to be true, but got false.";

/// `Σ|x|` rounded to `dtype`, as `tensor.abs().sum()` with `threads` PyTorch intra-op threads
/// (a reduction to one value, which PyTorch splits per thread from 32,768 elements).
pub fn l1(x: &[f32], dtype: DType, threads: usize) -> f32 {
    l1_blocks(x.len(), dtype, threads, |start, b| {
        match x.get(start..start + b.len()) {
            Some(src) => b.copy_from_slice(src),
            None => b.fill(0.0),
        }
    })
}

/// Elements from which a whole-tensor elementwise step runs in parallel blocks.
const PAR_STEP_MIN: usize = 1 << 16;

/// `f` over `xs` in `BLOCK`-sized pieces, in parallel for large tensors (each piece is
/// independent, so the result is the same).
fn par_blocks(xs: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    if xs.len() >= PAR_STEP_MIN {
        xs.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, c)| f(b * BLOCK, c));
    } else {
        for (b, c) in xs.chunks_mut(BLOCK).enumerate() {
            f(b * BLOCK, c);
        }
    }
}

/// mergekit's `rescaled_masked_tensor` with `norm = l1` (or none): `x·mask`, then, if both norms
/// are at least 1e-7, times `round(before/after)`. `mask` holds 0/1; multiplying (rather than
/// selecting) keeps PyTorch's signed zeros and NaNs.
pub fn rescaled_masked(x: &[f32], mask: &[f32], dtype: DType, rescale: Rescale) -> Vec<f32> {
    let masked: Vec<f32> = x.iter().zip(mask).map(|(&a, &m)| a * m).collect();
    rescale_masked(x, masked, dtype, rescale)
}

/// The rescale step of [`rescaled_masked`] on `masked` (`x·mask`, computed by the caller without
/// materialising the mask).
fn rescale_masked(x: &[f32], mut masked: Vec<f32>, dtype: DType, rescale: Rescale) -> Vec<f32> {
    let Rescale::L1 { threads } = rescale else {
        return masked;
    };
    let before = l1(x, dtype, threads);
    let after = l1(&masked, dtype, threads);
    // A tensor compared with a Python float: PyTorch rounds the float to the tensor dtype.
    let eps = round(dtype, scalar(1e-7));
    if before < eps || after < eps {
        return masked;
    }
    let factor = round(dtype, before / after);
    par_blocks(&mut masked, |_, c| {
        crate::builtin::blocks::mul_round(dtype, c, factor)
    });
    masked
}

/// A task vector `δ = round(x − base)` that is never stored whole: the sparsifiers and the
/// combine pass recompute it block by block. A subtraction and a bulk rounding per block cost
/// less than a tensor-sized f32 copy per model (32 MiB for an 8192 x 1024 embedding), and give
/// the same values bit for bit.
#[derive(Debug, Clone, Copy)]
pub struct TaskVector<'a> {
    x: &'a [f32],
    base: &'a [f32],
    dtype: DType,
}

impl<'a> TaskVector<'a> {
    /// `x − base` in `dtype`, over the elements both hold.
    pub fn new(x: &'a [f32], base: &'a [f32], dtype: DType) -> Self {
        let n = x.len().min(base.len());
        TaskVector {
            x: &x[..n],
            base: &base[..n],
            dtype,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.base.len()
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.base.is_empty()
    }

    /// The dtype of its values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Elements `start..start + out.len()` of δ (zeros past the end).
    pub fn fill(&self, start: usize, out: &mut [f32]) {
        let end = start.saturating_add(out.len());
        match (self.x.get(start..end), self.base.get(start..end)) {
            // The subtraction and its rounding in one vectorised loop.
            (Some(x), Some(b)) => crate::builtin::blocks::task_block(self.dtype, x, Some(b), out),
            _ => out.fill(0.0),
        }
    }

    /// δ as a whole tensor of `shape`, for the sparsifiers that work on whole tensors.
    pub fn to_tensor(&self, shape: &[usize]) -> Tensor {
        let mut data = vec![0f32; self.len()];
        par_blocks(&mut data, |start, chunk| self.fill(start, chunk));
        Tensor::new(self.dtype, shape.to_vec(), data)
    }
}

/// What a sparsifier keeps of a task vector. The masks hold one bit per element instead of the
/// masked values: [`Sparse::fill`] recomputes a block of δ and applies the mask and the rescale
/// factor, the same operations in the same order as on the whole tensor, so the same bits.
#[derive(Debug, Clone, PartialEq)]
pub enum Sparse {
    /// δ unchanged.
    Dense,
    /// Every element +0 (`torch.zeros_like`).
    Zeros,
    /// `δ·mask` (a multiply by 0/1, which keeps PyTorch's signed zeros and NaNs); with a
    /// rescale factor, `· factor` rounded to `work`; then rounded to `out` when given.
    Masked {
        /// Bit `i % 64` of word `i / 64`: whether element `i` is kept.
        bits: Vec<u64>,
        /// `round(‖δ‖₁ / ‖δ·mask‖₁)` when the values are rescaled.
        factor: Option<f32>,
        /// The dtype the rescaled values are rounded to.
        work: DType,
        /// A final rounding (a work dtype wider than the tensor's).
        out: Option<DType>,
    },
    /// Values computed for the whole tensor (the sparsifiers that need every element at once).
    Values(Vec<f32>),
}

impl Sparse {
    /// Elements `start..start + out.len()` of the sparsified task vector `tv`.
    pub fn fill(&self, tv: &TaskVector<'_>, start: usize, out: &mut [f32]) {
        match self {
            Sparse::Dense => tv.fill(start, out),
            Sparse::Zeros => out.fill(0.0),
            Sparse::Values(v) => {
                let end = start.saturating_add(out.len());
                match v.get(start..end) {
                    Some(src) => out.copy_from_slice(src),
                    None => out.fill(0.0),
                }
            }
            Sparse::Masked {
                bits,
                factor,
                work,
                out: out_dtype,
            } => {
                tv.fill(start, out);
                apply_bits(bits, start, out);
                if let Some(f) = factor {
                    for v in out.iter_mut() {
                        *v *= f;
                    }
                    round_slice(*work, out);
                }
                if let Some(d) = out_dtype {
                    round_slice(*d, out);
                }
            }
        }
    }

    /// The whole sparsified task vector.
    pub fn to_vec(&self, tv: &TaskVector<'_>) -> Vec<f32> {
        let mut data = vec![0f32; tv.len()];
        for (b, chunk) in data.chunks_mut(BLOCK).enumerate() {
            self.fill(tv, b * BLOCK, chunk);
        }
        data
    }
}

/// `v[k] *= mask[start + k]` (1.0 or 0.0) for the bit mask `bits`.
fn apply_bits(bits: &[u64], start: usize, v: &mut [f32]) {
    if !start.is_multiple_of(64) {
        for (k, x) in v.iter_mut().enumerate() {
            let i = start + k;
            let on = bits.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 != 0);
            *x *= if on { 1.0 } else { 0.0 };
        }
        return;
    }
    // A byte of the mask at a time, through a table of its eight factors: no branch, and the
    // multiplies vectorise.
    for (c, chunk) in v.chunks_mut(8).enumerate() {
        let i = start / 8 + c;
        let byte = bits.get(i / 8).map_or(0, |w| (w >> (8 * (i % 8))) as u8);
        let f = &BYTE_FACTORS[byte as usize];
        for (x, &m) in chunk.iter_mut().zip(f) {
            *x *= m;
        }
    }
}

/// `BYTE_FACTORS[b][j]`: 1.0 where bit `j` of `b` is set, else 0.0.
static BYTE_FACTORS: [[f32; 8]; 256] = {
    let mut t = [[0f32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            if (b >> j) & 1 != 0 {
                t[b][j] = 1.0;
            }
            j += 1;
        }
        b += 1;
    }
    t
};

/// `‖f‖₁` rounded to `dtype`, as `tensor.abs().sum()` with `threads` PyTorch threads, of the `n`
/// values `fill(start, block)` produces block by block.
///
/// The blocked sum runs in parallel pieces (the same cascade, the same bits): for the random
/// methods, whose models are sparsified one after another, this is what keeps both cores busy.
fn l1_blocks(
    n: usize,
    dtype: DType,
    threads: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> f32 {
    round(
        dtype,
        sum_split_blocks_par(n, dtype, dtype, threads, |start, b| {
            fill(start, b);
            for v in b.iter_mut() {
                *v = v.abs();
            }
        }),
    )
}

/// [`Sparse::Masked`] for `bits` of `tv`, with the L1 rescale factor of [`rescaled_masked`]
/// computed in `work` (both norms at least 1e-7, else no factor).
fn masked(
    tv: &TaskVector<'_>,
    bits: Vec<u64>,
    work: DType,
    out: Option<DType>,
    rescale: Rescale,
) -> Sparse {
    masked_after(tv, bits, work, out, rescale, None)
}

/// `‖δ‖₁` of `tv` in `work`, as [`masked`]'s rescale computes it before masking.
fn l1_before(tv: &TaskVector<'_>, work: DType, threads: usize) -> f32 {
    l1_blocks(tv.len(), work, threads, |s, b| tv.fill(s, b))
}

/// [`masked`], given `‖δ‖₁` before masking when it is already known (see [`bernoulli`]).
fn masked_after(
    tv: &TaskVector<'_>,
    bits: Vec<u64>,
    work: DType,
    out: Option<DType>,
    rescale: Rescale,
    before: Option<f32>,
) -> Sparse {
    let factor = match rescale {
        Rescale::No => None,
        Rescale::L1 { threads } => {
            let n = tv.len();
            let before = before.unwrap_or_else(|| l1_before(tv, work, threads));
            let after = l1_blocks(n, work, threads, |s, b| {
                tv.fill(s, b);
                apply_bits(&bits, s, b);
            });
            // A tensor compared with a Python float: PyTorch rounds the float to the dtype.
            let eps = round(work, scalar(1e-7));
            (before >= eps && after >= eps).then(|| round(work, before / after))
        }
    };
    Sparse::Masked {
        bits,
        factor,
        work,
        out,
    }
}

/// The bit mask of the elements `torch.argsort(|δ|, descending)` puts at sorted positions
/// `kept`, through [`select_keyed`] (only the sets before each of `bounds` are fixed).
fn select_bits(
    tv: &TaskVector<'_>,
    descending: bool,
    bounds: &[usize],
    kept: Option<std::ops::Range<usize>>,
) -> Result<Vec<u64>, MethodError> {
    let n = tv.len();
    index_u32(n)?;
    let mut keyed = Vec::with_capacity(n);
    let mut buf = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let b = &mut buf[..BLOCK.min(n - start)];
        tv.fill(start, b);
        keyed.extend(b.iter().enumerate().map(|(k, v)| Keyed {
            key: v.abs(),
            index: (start + k) as u32,
        }));
        start += b.len();
    }
    select_keyed(&mut keyed, descending, bounds);
    let mut bits = vec![0u64; n.div_ceil(64)];
    for k in kept.and_then(|r| keyed.get(r)).unwrap_or(&[]) {
        let i = k.index as usize;
        if let Some(w) = bits.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    Ok(bits)
}

/// `magnitude(δ, density)`: keep the `max(1, ⌊density·n⌋)` largest `|δ|` (0.1.5 rules).
pub fn magnitude(
    tv: &TaskVector<'_>,
    density: f64,
    rescale: Rescale,
) -> Result<Sparse, MethodError> {
    if density >= 1.0 {
        return Ok(Sparse::Dense);
    }
    let n = tv.len();
    if density <= 0.0 || n == 0 {
        return Ok(Sparse::Zeros);
    }
    let k = (py_int(density * n as f64)?.max(1) as usize).min(n);
    // Only which elements the sort puts before position k matters.
    let bits = select_bits(tv, true, &[k], Some(0..k))?;
    Ok(masked(tv, bits, tv.dtype, None, rescale))
}

/// mergekit 0.0.4.2's `magnitude(δ, density, rescale)`: `k = ⌊d·n⌋` must be positive; the kept
/// set is `torch.topk(|δ|, k)` (whose tie-breaking differs from the sort 0.1.5 uses); `rescale`
/// scales the whole delta by `Σ|δ| / Σ|δ·mask|` (when `Σ|δ| >= 1e-8`) before masking.
pub fn magnitude_0_0_4_2(
    delta: &Tensor,
    density: f64,
    rescale: Rescale,
) -> Result<Tensor, MethodError> {
    if density >= 1.0 {
        return Ok(delta.clone());
    }
    let n = delta.numel();
    let k = py_int(density * n as f64)?;
    if k <= 0 {
        return Err(MethodError::Other(
            "not gonna zero out the whole tensor buddy".into(),
        ));
    }
    index_u32(n)?;
    let keys: Vec<f32> = delta.data.iter().map(|v| v.abs()).collect();
    let mut mask = vec![0f32; n];
    for i in topk_largest(&keys, k as usize) {
        if let Some(m) = mask.get_mut(i as usize) {
            *m = 1.0;
        }
    }
    let dtype = delta.dtype;
    let data = if let Rescale::L1 { threads } = rescale {
        let masked: Vec<f32> = delta.data.iter().zip(&mask).map(|(&a, &m)| a * m).collect();
        let org = l1(&delta.data, dtype, threads);
        let new = l1(&masked, dtype, threads);
        let scaled: Vec<f32> = if org >= round(dtype, scalar(1e-8)) {
            let f = round(dtype, org / new);
            delta.data.iter().map(|&v| round(dtype, v * f)).collect()
        } else {
            delta.data.clone()
        };
        scaled.iter().zip(&mask).map(|(&a, &m)| a * m).collect()
    } else {
        delta.data.iter().zip(&mask).map(|(&a, &m)| a * m).collect()
    };
    Ok(with_data(delta, data))
}

/// `magnitude_outliers(δ, density, γ)` (breadcrumbs), 0.1.5 rule: sort `|δ|` ascending and keep
/// sorted positions `[n_bot, n_bot + target)` with `target = ⌊d·n⌋`, `n_top = ⌊γ·n⌋`,
/// `n_bot = max(0, n − target − n_top)` (a Python slice, so out-of-range bounds clip).
pub fn magnitude_outliers(
    tv: &TaskVector<'_>,
    density: f64,
    gamma: f64,
    rescale: Rescale,
) -> Result<Sparse, MethodError> {
    if density >= 1.0 {
        return Ok(Sparse::Dense);
    }
    let n = tv.len();
    let target = py_int(density * n as f64)?;
    let n_top = py_int(gamma * n as f64)?;
    let n_bot = (n as i64 - target - n_top).max(0);
    let range = py_slice(n, n_bot, n_bot.saturating_add(target));
    // Only which elements the sort puts inside the kept range matters.
    let bounds: Vec<usize> = range.iter().flat_map(|r| [r.start, r.end]).collect();
    let bits = select_bits(tv, false, &bounds, range)?;
    Ok(masked(tv, bits, tv.dtype, None, rescale))
}

/// DARE's `bernoulli(δ, density)`: each element kept with probability `density` as stored in the
/// work dtype (bf16 for bf16 deltas, else f32: PyTorch has no f16 Bernoulli on CPU).
pub fn bernoulli(
    tv: &TaskVector<'_>,
    density: f64,
    rescale: Rescale,
    rng: &mut Mt19937,
) -> Result<Sparse, MethodError> {
    if density >= 1.0 {
        return Ok(Sparse::Dense);
    }
    let work = work_dtype(tv.dtype);
    let p = as_dtype(work, density);
    if !(0.0..=1.0).contains(&p) {
        return Err(MethodError::Other(BERNOULLI_P_ERROR.into()));
    }
    // One word per element, in order. The stream is sequential, so while one thread draws,
    // the others compute the L1 norm before masking, which does not depend on the draws.
    let n = tv.len();
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut draw = |bits: &mut Vec<u64>| rng.fill_bernoulli_bits(p, n, bits);
    let before = match rescale {
        Rescale::No => {
            draw(&mut bits);
            None
        }
        Rescale::L1 { threads } => {
            let ((), before) = rayon::join(|| draw(&mut bits), || l1_before(tv, work, threads));
            Some(before)
        }
    };
    Ok(masked_after(
        tv,
        bits,
        work,
        Some(tv.dtype),
        rescale,
        before,
    ))
}

/// DELLA's `della_magprune(δ, density, ε)`: per row (dim 1; a 1-D tensor is one row), rank `|δ|`
/// ascending, map ranks linearly onto `[d − ε, d + ε]` in the work dtype (bf16 ranks above 256
/// round, so neighbours share a probability), and keep each element with that probability.
pub fn della_magprune(
    delta: &Tensor,
    density: f64,
    epsilon: f64,
    rescale: Rescale,
    rng: &mut Mt19937,
) -> Result<Tensor, MethodError> {
    if density >= 1.0 {
        return Ok(delta.clone());
    }
    if density <= 0.0 {
        return Ok(zeros_like(delta));
    }
    if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
        return Err(MethodError::Other(DELLA_EPSILON_ERROR.into()));
    }
    let work = work_dtype(delta.dtype);
    let n = delta.numel();
    // View as (rows, cols, inner): dim 1 is the ranked axis.
    let (rows, cols, inner) = match delta.shape.as_slice() {
        [] => (1, 1, 1),
        [c] => (1, *c, 1),
        [r, c, rest @ ..] => (*r, *c, rest.iter().product::<usize>()),
    };
    if rows * cols * inner != n {
        return Err(MethodError::Other(format!(
            "della: shape {:?} does not match {} elements",
            delta.shape, n
        )));
    }
    let mut masked = vec![0f32; n];
    if n > 0 {
        index_u32(cols)?;
        // `(d − ε) + t`: PyTorch's add kernel casts a Python float to the tensor dtype first
        // (bf16 here), unlike mul, which applies it as f32. Checked against torch 2.15.
        let base = as_dtype(work, density - epsilon);
        let eps = scalar(epsilon);
        // An element's probability depends only on its rank, the same in every row: the
        // ranks `round(round(pos) + 1)` grow with the sorted position `pos`, so the row's
        // minimum is the rank of position 0 and its maximum that of the last one.
        let rank = |pos: usize| round(work, round(work, pos as f32) + 1.0);
        let (mn, mx) = (rank(0), rank(cols - 1));
        let span = round(work, mx - mn);
        let by_pos: Vec<f32> = (0..cols)
            .map(|pos| {
                let rn = round(work, round(work, rank(pos) - mn) / span);
                // clamp(0, 1) keeps NaN (a one-element row), which Bernoulli then refuses.
                let rn = if rn.is_nan() { rn } else { rn.clamp(0.0, 1.0) };
                round(work, base + round(work, round(work, rn * 2.0) * eps))
            })
            .collect();
        // PyTorch checks every probability before drawing any; every row holds every position.
        if by_pos.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err(MethodError::Other(BERNOULLI_P_ERROR.into()));
        }
        let shape = RowShape {
            cols,
            inner,
            dtype: delta.dtype,
        };
        if cols <= 1 << 16 {
            keep_by_rank::<u16>(&delta.data, shape, &by_pos, rng, &mut masked);
        } else {
            keep_by_rank::<u32>(&delta.data, shape, &by_pos, rng, &mut masked);
        }
    }
    let mut out = rescale_masked(&delta.data, masked, work, rescale);
    par_blocks(&mut out, |_, c| round_slice(delta.dtype, c));
    Ok(with_data(delta, out))
}

/// The ranked axis of [`della_magprune`]'s `(rows, cols, inner)` view.
#[derive(Clone, Copy)]
struct RowShape {
    cols: usize,
    inner: usize,
    /// The dtype the values are rounded to, which bounds how many distinct magnitudes there are.
    dtype: DType,
}

/// `x·bernoulli(p)` into `masked`, where each element's `p` is `by_pos` at its rank (ascending
/// `|x|` as libstdc++'s sort orders it, per row) and the draws are one MT19937 word per element
/// in row-major order.
///
/// Why this order of work: the words an element is compared with depend only on its position,
/// not on any probability, so the sequential stream (into `masked`, as uniforms) is drawn on one
/// thread while the rows are grouped in parallel on the others; the comparison follows, in
/// parallel rows. The same words meet the same probabilities as drawing row by row after ranking.
///
/// Why most rows need no replay of libstdc++'s sort: the sort only decides the order *inside* a
/// group of equal `|x|`, whose sorted positions `[lo, last]` any sort gives. `by_pos` is monotone
/// (every step of its formula is), so an element whose uniform lies below both `by_pos[lo]` and
/// `by_pos[last]`, or at or above both, is kept or dropped wherever the replay would put it. Only
/// the groups holding an element between the two are replayed, through
/// [`std_sort_asc_within`], which follows just the sub-ranges that reach them.
fn keep_by_rank<R>(
    x: &[f32],
    shape: RowShape,
    by_pos: &[f32],
    rng: &mut Mt19937,
    masked: &mut [f32],
) where
    R: Copy + Default + Send + Sync + TryFrom<usize> + Into<u32>,
{
    use rayon::prelude::*;
    let RowShape { cols, inner, dtype } = shape;
    let row_len = cols * inner;
    // Each element's group of equal magnitudes, as the first and last sorted positions.
    let mut lo: Vec<R> = vec![R::default(); x.len()];
    let mut last: Vec<R> = vec![R::default(); x.len()];
    rayon::join(
        || rng.fill_f32_unit(masked),
        || {
            lo.par_chunks_mut(row_len)
                .zip(last.par_chunks_mut(row_len))
                .zip(x.par_chunks(row_len))
                .for_each_init(
                    || (Vec::with_capacity(cols), Vec::new(), Vec::new()),
                    |(keys, short, tmp), ((lo_row, last_row), row)| {
                        for q in 0..inner {
                            let col = Column { row, q, inner };
                            if !short_magnitude_groups(col, dtype, short, tmp, lo_row, last_row) {
                                magnitude_groups(col, keys, lo_row, last_row);
                            }
                        }
                    },
                );
        },
    );
    let p_at = |r: R| by_pos.get(r.into() as usize).copied().unwrap_or(0.0);
    masked
        .par_chunks_mut(row_len)
        .zip(lo.par_chunks(row_len).zip(last.par_chunks(row_len)))
        .zip(x.par_chunks(row_len))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(spans, keyed, pending), ((us, (lo_row, last_row)), row)| {
                for q in 0..inner {
                    let at = |j: usize| j * inner + q;
                    // One pass: every element decided by its group's first probability, the
                    // draws that lie between its ends set aside with their group.
                    spans.clear();
                    pending.clear();
                    for j in 0..cols {
                        let i = at(j);
                        let (g, h) = (lo_row[i], last_row[i]);
                        let u = us[i];
                        let a = p_at(g);
                        if g.into() != h.into() {
                            let b = p_at(h);
                            if u >= a.min(b) && u < a.max(b) {
                                spans.push((g.into() as usize, h.into() as usize + 1));
                                pending.push((i, u));
                            }
                        }
                        us[i] = row[i] * if u < a { 1.0 } else { 0.0 };
                    }
                    if spans.is_empty() {
                        continue;
                    }
                    // Those draws meet the probability of the position libstdc++'s sort gives
                    // them, replayed only where it reaches their groups.
                    spans.sort_unstable();
                    spans.dedup();
                    keyed.clear();
                    keyed.extend(Column { row, q, inner }.values().enumerate().map(|(j, v)| {
                        Keyed {
                            key: v.abs(),
                            index: j as u32,
                        }
                    }));
                    std_sort_asc_within(keyed, spans);
                    for &(g, h) in spans.iter() {
                        for (pos, k) in keyed.iter().enumerate().take(h).skip(g) {
                            let i = at(k.index as usize);
                            // `pending` is in ascending `i` (the pass above went in order).
                            let found = pending.binary_search_by_key(&i, |&(pi, _)| pi);
                            if let Some(&(_, u)) = found.ok().and_then(|k| pending.get(k)) {
                                let p = by_pos.get(pos).copied().unwrap_or(0.0);
                                us[i] = row[i] * if u < p { 1.0 } else { 0.0 };
                            }
                        }
                    }
                }
            },
        );
}

/// Column `q` of a row viewed as `(cols, inner)`: the elements one della sort ranks.
#[derive(Clone, Copy)]
struct Column<'a> {
    row: &'a [f32],
    q: usize,
    inner: usize,
}

impl Column<'_> {
    fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.row.iter().skip(self.q).step_by(self.inner).copied()
    }

    /// The flat index in the row of the column's `j`-th element.
    fn at(&self, j: usize) -> usize {
        j * self.inner + self.q
    }
}

/// Each element's group of equal `|x|` as the first and last positions an ascending sort gives
/// it, into `lo` and `last`. NaN magnitudes form one group, last, as PyTorch's comparator orders
/// them; `-0` and `0` are one group.
fn magnitude_groups<R: Copy + TryFrom<usize>>(
    col: Column<'_>,
    keys: &mut Vec<u64>,
    lo: &mut [R],
    last: &mut [R],
) {
    // Non-negative floats (and infinity) order as their bits; the position rides below.
    let canonical = |v: f32| {
        if v.is_nan() {
            f32::NAN.to_bits()
        } else {
            v.abs().to_bits()
        }
    };
    keys.clear();
    keys.extend(
        col.values()
            .enumerate()
            .map(|(j, v)| (u64::from(canonical(v)) << 32) | j as u64),
    );
    keys.sort_unstable();
    let index = |k: &u64| (k & u64::from(u32::MAX)) as usize;
    write_groups(keys, |a, b| a >> 32 == b >> 32, index, col, lo, last);
}

/// [`magnitude_groups`] for columns of at most 2^16 elements whose values are float16 or
/// bfloat16 (as della's deltas are in those dtypes): each magnitude then has a 16-bit key that
/// orders like it, and a two-pass radix sort of `key << 16 | position` replaces the comparison
/// sort (a few passes over a cached row instead of `n·log n` comparisons). Returns false, having
/// written nothing, when that does not apply (another dtype, a longer column, or a value that is
/// not of the dtype after all); the caller then takes [`magnitude_groups`].
fn short_magnitude_groups<R: Copy + TryFrom<usize>>(
    col: Column<'_>,
    dtype: DType,
    keys: &mut Vec<u32>,
    tmp: &mut Vec<u32>,
    lo: &mut [R],
    last: &mut [R],
) -> bool {
    // `|x|`'s f32 bits shifted right by `shift` (dropping bits that are zero in the dtype) less
    // `offset` (the smallest nonzero magnitude's exponent, so that every finite one fits below
    // 0xFFFE; zero saturates to 0); infinity is 0xFFFE and every NaN 0xFFFF.
    let (shift, offset) = match dtype {
        // float16's smallest subnormal is 2^-24: f32 exponent 103, kept above 10 mantissa bits.
        DType::F16 => (13, 102u32 << 10),
        DType::BF16 => (16, 0),
        _ => return false,
    };
    let lost = (1u32 << shift) - 1;
    let cols = col.row.len() / col.inner;
    if cols > 1 << 16 {
        return false;
    }
    let mut exact = true;
    keys.clear();
    keys.extend(col.values().enumerate().map(|(j, v)| {
        let a = v.to_bits() & 0x7FFF_FFFF;
        let key = if v.is_nan() {
            0xFFFF
        } else if a == 0x7F80_0000 {
            0xFFFE
        } else {
            let k = (a >> shift).saturating_sub(offset);
            // Nonzero magnitudes keep nonzero keys: a value below the dtype's range would
            // otherwise join zero's group.
            exact &= a & lost == 0 && k < 0xFFFE && (a == 0 || k > 0);
            k
        };
        (key << 16) | j as u32
    }));
    if !exact {
        return false;
    }
    radix_sort_high16(keys, tmp);
    let index = |k: &u32| (k & 0xFFFF) as usize;
    write_groups(keys, |a, b| a >> 16 == b >> 16, index, col, lo, last);
    true
}

/// Sorts `v` by the upper 16 bits of each entry: LSD radix, one byte per pass (stable, so equal
/// keys keep their positions' order, which nothing here relies on).
fn radix_sort_high16(v: &mut [u32], tmp: &mut Vec<u32>) {
    let mut counts = [[0usize; 256]; 2];
    for &x in v.iter() {
        counts[0][((x >> 16) & 0xFF) as usize] += 1;
        counts[1][(x >> 24) as usize] += 1;
    }
    tmp.clear();
    tmp.resize(v.len(), 0);
    for (pass, count) in counts.iter_mut().enumerate() {
        let byte = |x: u32| ((x >> (16 + 8 * pass)) & 0xFF) as usize;
        // One bucket holds everything: this pass would move nothing.
        if count.contains(&v.len()) {
            continue;
        }
        let mut next = 0;
        for c in count.iter_mut() {
            let here = *c;
            *c = next;
            next += here;
        }
        for &x in v.iter() {
            let slot = &mut count[byte(x)];
            if let Some(t) = tmp.get_mut(*slot) {
                *t = x;
            }
            *slot += 1;
        }
        v.copy_from_slice(tmp);
    }
}

/// Writes each group's first and last sorted positions (runs of `same` in the sorted `keys`) at
/// the column positions `index` reads from the keys.
fn write_groups<K, R: Copy + TryFrom<usize>>(
    keys: &[K],
    same: impl Fn(&K, &K) -> bool,
    index: impl Fn(&K) -> usize,
    col: Column<'_>,
    lo: &mut [R],
    last: &mut [R],
) {
    let mut start = 0;
    for group in keys.chunk_by(same) {
        let end = start + group.len();
        if let (Ok(g), Ok(h)) = (R::try_from(start), R::try_from(end - 1)) {
            for k in group {
                let i = col.at(index(k));
                if let (Some(a), Some(b)) = (lo.get_mut(i), last.get_mut(i)) {
                    *a = g;
                    *b = h;
                }
            }
        }
        start = end;
    }
}

/// The full-replay form of [`keep_by_rank`] (every row ranked by libstdc++'s sort), which the
/// tests hold the group decisions against.
#[cfg(test)]
fn keep_by_rank_replay(
    x: &[f32],
    shape: RowShape,
    by_pos: &[f32],
    rng: &mut Mt19937,
    masked: &mut [f32],
) {
    let RowShape { cols, inner, .. } = shape;
    rng.fill_f32_unit(masked);
    let mut rank = vec![0usize; x.len()];
    for (r, row) in x.chunks(cols * inner).enumerate() {
        for q in 0..inner {
            let mut keyed: Vec<Keyed> = row
                .iter()
                .skip(q)
                .step_by(inner)
                .enumerate()
                .map(|(j, v)| Keyed {
                    key: v.abs(),
                    index: j as u32,
                })
                .collect();
            std_sort_asc(&mut keyed);
            for (pos, k) in keyed.iter().enumerate() {
                rank[r * cols * inner + k.index as usize * inner + q] = pos;
            }
        }
    }
    for ((u, &a), &r) in masked.iter_mut().zip(x).zip(&rank) {
        *u = a * if *u < by_pos[r] { 1.0 } else { 0.0 };
    }
}

/// The dtype PyTorch's CPU Bernoulli works in for a tensor of `dtype`.
fn work_dtype(dtype: DType) -> DType {
    if dtype == DType::BF16 {
        DType::BF16
    } else {
        DType::F32
    }
}

fn index_u32(i: usize) -> Result<u32, MethodError> {
    u32::try_from(i)
        .map_err(|_| MethodError::Other("tensor too large to sort (> 2^32 elements)".into()))
}

/// Python's `int(x)` for a float: truncation, refusing NaN/inf as Python does.
fn py_int(x: f64) -> Result<i64, MethodError> {
    if x.is_nan() {
        return Err(MethodError::Other(
            "ValueError: cannot convert float NaN to integer".into(),
        ));
    }
    if x.is_infinite() {
        return Err(MethodError::Other(
            "OverflowError: cannot convert float infinity to integer".into(),
        ));
    }
    Ok(x.trunc() as i64)
}

/// The index range a Python slice `[start:stop]` selects from a sequence of length `n`.
fn py_slice(n: usize, start: i64, stop: i64) -> Option<std::ops::Range<usize>> {
    let n = n as i64;
    let fix = |i: i64| -> i64 {
        if i < 0 {
            (i + n).max(0)
        } else {
            i.min(n)
        }
    };
    let (a, b) = (fix(start), fix(stop));
    if b > a {
        Some(a as usize..b as usize)
    } else {
        None
    }
}

fn zeros_like(t: &Tensor) -> Tensor {
    Tensor::new(t.dtype, t.shape.clone(), vec![0.0; t.numel()])
}

fn with_data(t: &Tensor, data: Vec<f32>) -> Tensor {
    Tensor::new(t.dtype, t.shape.clone(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tie-heavy rows (few distinct magnitudes, both signs, `-0`, some NaN): the groups of equal
    /// `|x|` are large, so many draws fall between a group's end probabilities.
    fn tied_rows(n: usize, distinct: u64, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                crate::rng::xorshift64(&mut s);
                match s % 211 {
                    0 => f32::NAN,
                    1 => -0.0,
                    r => (s / 211 % distinct) as f32 * if r % 2 == 0 { 0.5 } else { -0.5 },
                }
            })
            .collect()
    }

    #[test]
    fn della_group_decisions_match_the_full_replay() {
        let mut undecided = 0usize;
        for (rows, cols, inner, distinct) in [
            (1usize, 1usize, 1usize, 1u64),
            (3, 17, 1, 2),
            (5, 100, 1, 7),
            (4, 64, 3, 5),
            (2, 1000, 1, 40),
            (3, 5000, 1, 3),
            (2, 3000, 2, 1 << 20),
            (1, 70_000, 1, 9),
        ] {
            let n = rows * cols * inner;
            for (seed, ascending, dtype) in [
                (1u64, true, DType::F32),
                (2, false, DType::F32),
                (3, true, DType::F16),
                (4, false, DType::BF16),
            ] {
                let mut x = tied_rows(n, distinct, seed + n as u64);
                round_slice(dtype, &mut x);
                // A monotone probability per position, rising or falling, as della's formula is.
                let by_pos: Vec<f32> = (0..cols)
                    .map(|pos| {
                        let t = pos as f32 / cols.max(2) as f32;
                        if ascending {
                            0.3 + 0.4 * t
                        } else {
                            0.7 - 0.4 * t
                        }
                    })
                    .collect();
                let shape = RowShape { cols, inner, dtype };
                let mut want = vec![0f32; n];
                keep_by_rank_replay(&x, shape, &by_pos, &mut Mt19937::new(seed), &mut want);
                let mut got16 = vec![0f32; n];
                let mut got32 = vec![0f32; n];
                if cols <= 1 << 16 {
                    keep_by_rank::<u16>(&x, shape, &by_pos, &mut Mt19937::new(seed), &mut got16);
                } else {
                    got16.clone_from(&want);
                }
                keep_by_rank::<u32>(&x, shape, &by_pos, &mut Mt19937::new(seed), &mut got32);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got16), bits(&want), "u16 {rows}x{cols}x{inner}");
                assert_eq!(bits(&got32), bits(&want), "u32 {rows}x{cols}x{inner}");
                // Deciding every element by its group's first probability alone (no replay)
                // must differ somewhere, or the replay of undecided groups went untested.
                let mut u = vec![0f32; n];
                Mt19937::new(seed).fill_f32_unit(&mut u);
                let mut lo = vec![0u32; n];
                let mut last = vec![0u32; n];
                for (r, row) in x.chunks(cols * inner).enumerate() {
                    let span = r * cols * inner..(r + 1) * cols * inner;
                    for q in 0..inner {
                        let col = Column { row, q, inner };
                        let (lo, last) = (&mut lo[span.clone()], &mut last[span.clone()]);
                        magnitude_groups(col, &mut Vec::new(), lo, last);
                    }
                }
                undecided += (0..n)
                    .filter(|&i| {
                        let naive = x[i]
                            * if u[i] < by_pos[lo[i] as usize] {
                                1.0
                            } else {
                                0.0
                            };
                        naive.to_bits() != want[i].to_bits()
                    })
                    .count();
            }
        }
        assert!(undecided > 50, "only {undecided} draws needed the replay");
    }

    #[test]
    fn radix_groups_match_the_comparison_sort() {
        // Every float16 magnitude class (zeros, subnormals, normals, the largest, infinity,
        // NaN), both signs, in bfloat16 and float16; then values the short path must refuse.
        let specials = [
            0.0f32,
            -0.0,
            5.960_464_5e-8,
            -1.192_092_9e-7,
            6.097_555e-5,
            6.103_515_6e-5,
            1.0,
            -1.0,
            0.333_251_95,
            65504.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for dtype in [DType::F16, DType::BF16] {
            for cols in [1usize, 2, 17, 300, 5000] {
                let mut row: Vec<f32> = tied_rows(cols, 50, cols as u64)
                    .iter()
                    .zip(specials.iter().cycle())
                    .enumerate()
                    .map(|(j, (&v, &sp))| if j % 3 == 0 { sp } else { v * 0.001 })
                    .collect();
                round_slice(dtype, &mut row);
                let col = Column {
                    row: &row,
                    q: 0,
                    inner: 1,
                };
                let (mut lo, mut last) = (vec![0u16; cols], vec![0u16; cols]);
                magnitude_groups(col, &mut Vec::new(), &mut lo, &mut last);
                let (mut lo2, mut last2) = (vec![9u16; cols], vec![9u16; cols]);
                let (mut k, mut t) = (Vec::new(), Vec::new());
                assert!(short_magnitude_groups(
                    col, dtype, &mut k, &mut t, &mut lo2, &mut last2
                ));
                assert_eq!((lo2, last2), (lo, last), "{dtype:?} {cols}");
            }
        }
        // Not representable in the dtype, or below its smallest subnormal: refused, untouched.
        for (v, dtype) in [
            (1e-9f32, DType::F16),
            (1.0001, DType::F16),
            (1.0001, DType::BF16),
        ] {
            let row = [0.0, v, 1.0];
            let col = Column {
                row: &row,
                q: 0,
                inner: 1,
            };
            let (mut lo, mut last) = (vec![7u16; 3], vec![7u16; 3]);
            let (mut k, mut t) = (Vec::new(), Vec::new());
            assert!(!short_magnitude_groups(
                col, dtype, &mut k, &mut t, &mut lo, &mut last
            ));
            assert_eq!((lo, last), (vec![7; 3], vec![7; 3]));
        }
    }

    #[test]
    fn bit_masks_multiply_each_element() {
        let bits: Vec<u64> = vec![0x8000_0000_0000_0001, 0xF0F0_0000_FFFF_1234, 0x5];
        let n = 150;
        let want = |i: usize| {
            if (bits[i / 64] >> (i % 64)) & 1 != 0 {
                1.0
            } else {
                0.0
            }
        };
        for start in [0usize, 64, 3, 65] {
            let len = n - start;
            let src: Vec<f32> = (0..len).map(|k| -(k as f32) - 0.5).collect();
            let mut v = src.clone();
            apply_bits(&bits, start, &mut v);
            for (k, (&a, &b)) in v.iter().zip(&src).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    (b * want(start + k)).to_bits(),
                    "start {start} k {k}"
                );
            }
        }
    }

    #[test]
    fn python_slices() {
        assert_eq!(py_slice(10, 2, 5), Some(2..5));
        assert_eq!(py_slice(10, 12, 15), None);
        assert_eq!(py_slice(10, 3, -2), Some(3..8));
        assert_eq!(py_slice(10, 5, 5), None);
    }
}
