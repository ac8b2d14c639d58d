//! The streaming executor: tensors flow from the inputs through the method into their
//! precomputed places in the output shards.
//!
//! Work is split into items: an elementwise method's tensor is cut into items of
//! [`ITEM_ELEMS`] elements, merged in chunks of [`CHUNK_ELEMS`]; any other tensor is one item.
//! Items run on the rayon pool in any order and write at fixed offsets, so the output bytes never
//! depend on the thread count. Input bytes are read with positioned reads into per-thread
//! buffers (the memory maps serve only the validated headers), so memory is bounded by
//! (threads x item size) whatever the model size, with no page cache mapped into the process.
//! Whole-tensor items whose inputs are large ([`BIG_ITEM_BYTES`]) run one at a time, with the
//! method working in parallel inside the tensor, so that two of the largest tensors (embeddings
//! and the LM head) are never held at once; and where the method can
//! ([`amalgam_methods::MergeMethod::streams`]), such a tensor is not held at all: the method
//! reads the chunks it needs through [`ChunkIo`], once per pass, and writes its output in chunks.
//! Methods that draw random numbers run their tensors one after another in save order, because
//! the random stream is consumed in that order (mergekit's order), and only then can a seed
//! reproduce a run.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use amalgam_io::{convert, DType, OutputWriter};
use amalgam_methods::{rng::Mt19937, ChunkIo, MergeArgs, MergeInput, StreamArgs, Tensor};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::plan::{DefaultEmbed, Op, Plan, RowSource, VocabAlign};
use amalgam_methods::numerics::round;
use amalgam_methods::reduce::{self, Dim0Sum};

/// Elements per chunk of an elementwise merge: small enough that every input's chunk stays in
/// the CPU cache between decoding and merging.
pub const CHUNK_ELEMS: usize = 1 << 14;

/// Elements per work item of an elementwise merge (a run of chunks handled by one thread).
pub const ITEM_ELEMS: usize = 1 << 20;

/// Input bytes (as f32) above which a whole-tensor item runs alone (see [`execute`]).
pub const BIG_ITEM_BYTES: usize = 64 << 20;

/// Input bytes (as f32) above which a whole-tensor item is merged in chunks when its method can
/// ([`amalgam_methods::MergeMethod::streams`]): below it, holding the inputs whole costs less CPU
/// (each input is read and decoded once instead of once per pass: about a fifth of slerp's CPU
/// time); above it, the memory of such a tensor (the embeddings of a large vocabulary, say)
/// would grow with the model, while streamed it stays at a few chunks per thread (and the page
/// faults of the large buffers, which cost more than the extra reads, are gone). The same bound
/// as [`BIG_ITEM_BYTES`]: a tensor too large to run beside others streams when it can.
/// [`ExecOptions::stream_above`] overrides it.
pub const STREAM_ITEM_BYTES: usize = BIG_ITEM_BYTES;

/// Progress callback: (output bytes done, tensors done).
pub type ProgressFn = Arc<dyn Fn(u64, usize) + Send + Sync>;

/// Executor settings.
#[derive(Clone, Default)]
pub struct ExecOptions {
    /// Seed for random methods.
    pub seed: Option<u64>,
    /// Called as work completes.
    pub progress: Option<ProgressFn>,
    /// PyTorch intra-op threads of the mergekit run to reproduce (0 is taken as 1): reductions
    /// to one value over 32,768+ elements split per thread in PyTorch (docs/threads.md).
    pub torch_threads: usize,
    /// Input bytes (as f32) above which a whole-tensor item streams (`None`:
    /// [`STREAM_ITEM_BYTES`]; `Some(0)` streams every tensor whose method can, which tests use
    /// to check the chunked path against the same goldens).
    pub stream_above: Option<usize>,
}

/// Something that receives merged tensor bytes: the output writer, or a hasher for `verify`.
pub trait Sink: Sync {
    /// Receives `bytes` at `offset` into output tensor `op`.
    fn put(&self, op: &Op, offset: u64, bytes: &[u8]) -> Result<()>;
}

impl Sink for OutputWriter {
    fn put(&self, op: &Op, offset: u64, bytes: &[u8]) -> Result<()> {
        Ok(self.write_tensor_part(&op.out_name, offset, bytes)?)
    }
}

/// Padding rows of each aligned input of an op (`pad_to_multiple_of`), computed before the op
/// runs: `pads[op][input]`.
type Pads = Vec<Option<Vec<Vec<f32>>>>;

/// Loads input `j` of `op`, elements `range` of the tensor the method sees (the aligned one for
/// a vocabulary-indexed op), converted to the working dtype.
///
/// The values go into `buf` (its allocation reused): see [`convert::decode_f32_into`] for why a
/// caller decoding on other threads passes buffers it allocated itself.
fn load(
    plan: &Plan,
    op: &Op,
    j: usize,
    range: std::ops::Range<usize>,
    pad: Option<&Vec<Vec<f32>>>,
    buf: Vec<f32>,
) -> Result<Tensor> {
    let Some(a) = &op.align else {
        return load_raw(plan, op, j, range, buf);
    };
    let h = a.row_len.max(1);
    let mut data = buf;
    data.clear();
    data.reserve(range.len());
    let (r0, r1) = (range.start / h, range.end.div_ceil(h));
    for r in r0..r1 {
        let row = aligned_row(plan, op, a, j, r, pad)?;
        let s = range.start.max(r * h) - r * h;
        let e = range.end.min((r + 1) * h) - r * h;
        data.extend_from_slice(row.get(s..e).unwrap_or_default());
    }
    let shape = if range.len() == op.numel() {
        op.shape.clone()
    } else {
        vec![range.len()]
    };
    Ok(Tensor::new(op.work_dtype, shape, data))
}

/// Row `r` of aligned input `j` (mergekit's `PermutedVocabulary`), in the working dtype.
fn aligned_row(
    plan: &Plan,
    op: &Op,
    a: &VocabAlign,
    j: usize,
    r: usize,
    pad: Option<&Vec<Vec<f32>>>,
) -> Result<Vec<f32>> {
    let h = a.row_len;
    let src = a.rows.get(j).and_then(|v| v.get(r)).copied();
    match src {
        Some(RowSource::Own(x)) => input_row(plan, op, j, x, h),
        Some(RowSource::Default(k)) => match a.defaults.get(k) {
            Some(DefaultEmbed::Copy { input, row }) => input_row(plan, op, *input, *row, h),
            Some(DefaultEmbed::Average(list)) => {
                // zeros, then `embed = embed + row` per model in slice order, then
                // `embed /= count`, each rounded to the working dtype as PyTorch does.
                let w = op.work_dtype;
                let mut acc = vec![0f32; h];
                for &(input, row) in list {
                    let x = input_row(plan, op, input, row, h)?;
                    for (a, b) in acc.iter_mut().zip(&x) {
                        *a = round(w, *a + *b);
                    }
                }
                let n = list.len() as f32;
                for a in &mut acc {
                    *a = round(w, *a / n);
                }
                Ok(acc)
            }
            Some(DefaultEmbed::Zero) | None => Ok(vec![0f32; h]),
        },
        Some(RowSource::PadMean) => Ok(pad
            .and_then(|p| p.get(j))
            .cloned()
            .unwrap_or_else(|| vec![0f32; h])),
        Some(RowSource::Zero) | None => Ok(vec![0f32; h]),
    }
}

/// Row `row` (of `h` elements) of input `j`'s own tensor, in the working dtype.
fn input_row(plan: &Plan, op: &Op, j: usize, row: usize, h: usize) -> Result<Vec<f32>> {
    Ok(load_raw(plan, op, j, row * h..(row + 1) * h, Vec::new())?.data)
}

/// The padding rows of an aligned op: per input, `torch.mean` over dim 0 of its aligned real
/// rows (an f32 sum in PyTorch's dim-0 order, divided by the row count, rounded to the dtype:
/// PyTorch sums bf16/f16 in f32 for a mean). The real rows of one input are held while summing.
fn pad_rows(plan: &Plan, op: &Op) -> Result<Option<Vec<Vec<f32>>>> {
    let Some(a) = &op.align else { return Ok(None) };
    if a.rows.iter().all(|r| r.len() <= a.real_rows) {
        return Ok(None);
    }
    let h = a.row_len;
    let n = a.real_rows;
    let sum = Dim0Sum::new(h, DType::F32, reduce::torch_float_lanes());
    let mut out = Vec::with_capacity(a.rows.len());
    for j in 0..a.rows.len() {
        let mut rows = Vec::with_capacity(n);
        for r in 0..n {
            rows.push(aligned_row(plan, op, a, j, r, None)?);
        }
        let mean = (0..h)
            .map(|c| {
                let s = sum.sum_with(c, |i| rows[i][c], n);
                round(op.work_dtype, s / n as f32)
            })
            .collect();
        out.push(mean);
    }
    Ok(Some(out))
}

/// Reads the stored bytes of elements `range` of input `j`'s own tensor with positioned reads
/// into this thread's read buffer (rather than touching the mapping: no page faults, nothing
/// left resident), and hands them to `f` with the tensor's entry and the model.
fn with_input_bytes<T>(
    plan: &Plan,
    op: &Op,
    j: usize,
    range: &std::ops::Range<usize>,
    f: impl FnOnce(&[u8], &crate::source::RawTensor<'_>, &crate::plan::Model) -> Result<T>,
) -> Result<T> {
    let inp = &op.inputs[j];
    let model = &plan.models[inp.model];
    let raw = model.source.require(&inp.name, &model.label)?;
    let es = raw.dtype.size();
    let pieces = raw
        .data
        .range(range.start * es, range.end * es)
        .ok_or_else(|| EngineError::ShortTensor {
            file: raw.file.to_path_buf(),
            tensor: inp.name.clone(),
        })?;
    let len = (range.end - range.start) * es;
    READ_BUF.with(|cell| -> Result<T> {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let buf = &mut buf[..len];
        let mut at = 0;
        for piece in pieces {
            let end = at + piece.len();
            model.source.read_part(piece, &mut buf[at..end])?;
            at = end;
        }
        f(buf, &raw, model)
    })
}

/// Loads elements `range` of input `j`'s own tensor, converted to the working dtype.
fn load_raw(
    plan: &Plan,
    op: &Op,
    j: usize,
    range: std::ops::Range<usize>,
    out: Vec<f32>,
) -> Result<Tensor> {
    let name = &op.inputs[j].name;
    with_input_bytes(plan, op, j, &range.clone(), |buf, raw, model| {
        match model.source.lora() {
            Some(l) if raw.dtype.is_float() => decode_lora(op, buf, raw.dtype, range, l, name, out),
            _ => decode(op, buf, raw.dtype, range.len(), out),
        }
    })
}

thread_local! {
    /// Reused read buffer of each worker thread.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The LoRA factors decoded last on this thread, keyed by the adapter view's address and
    /// the weight: an elementwise tensor is read in chunks, one item (run of chunks) per thread,
    /// so this decodes each weight's factors about once per item without holding the whole
    /// adapter in memory.
    static LORA_FACTORS: std::cell::RefCell<Option<LoraCacheEntry>> =
        const { std::cell::RefCell::new(None) };
}

type LoraCacheEntry = (usize, String, std::rc::Rc<amalgam_io::lora::LoraFactors>);

/// Decodes elements `range` of a float tensor of a model with a LoRA adapter, as mergekit reads
/// its peft-merged copy: the tensor cast to the merge dtype `D` (PyTorch's `.to()`), then, for
/// an adapted weight, `W + delta` computed in f32 (peft's adapter weights are f32, and an
/// in-place add of an f32 delta to a `D` weight computes in f32) and rounded to `D`; then cast
/// to the working dtype.
fn decode_lora(
    op: &Op,
    bytes: &[u8],
    raw_dtype: DType,
    range: std::ops::Range<usize>,
    lora: &crate::source::LoraView,
    name: &str,
    mut data: Vec<f32>,
) -> Result<Tensor> {
    let d = lora.dtype();
    let n = range.len();
    if raw_dtype == DType::F64 && d != DType::F64 {
        let mut tmp = vec![0u8; n * d.size()];
        convert::convert_bytes(DType::F64, bytes, d, &mut tmp)?;
        convert::decode_f32_into(d, &tmp, &mut data)?;
    } else {
        convert::decode_f32_into(raw_dtype, bytes, &mut data)?;
        if raw_dtype != d {
            amalgam_methods::numerics::round_slice(d, &mut data);
        }
    }
    if lora.adapter().module(name).is_some() {
        let key = lora as *const _ as usize;
        let cached = LORA_FACTORS.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(k, n, _)| *k == key && n == name)
                .map(|(_, _, f)| f.clone())
        });
        let f = match cached {
            Some(f) => f,
            None => {
                let f = std::rc::Rc::new(lora.factors(name)?.ok_or_else(|| {
                    EngineError::Io(amalgam_io::Error::Lora {
                        path: lora.adapter().path().to_path_buf(),
                        reason: format!("`{name}` lost its factors"),
                    })
                })?);
                LORA_FACTORS.with(|c| *c.borrow_mut() = Some((key, name.to_string(), f.clone())));
                f
            }
        };
        for (v, idx) in data.iter_mut().zip(range.clone()) {
            *v = round(d, *v + f.delta(idx));
        }
    }
    if d != op.work_dtype {
        amalgam_methods::numerics::round_slice(op.work_dtype, &mut data);
    }
    let shape = if n == op.shape.iter().product::<usize>() {
        op.shape.clone()
    } else {
        vec![n]
    };
    Ok(Tensor::new(op.work_dtype, shape, data))
}

/// Converts `bytes` (`n` elements of `dtype`) to the op's working dtype.
fn decode(op: &Op, bytes: &[u8], raw_dtype: DType, n: usize, mut data: Vec<f32>) -> Result<Tensor> {
    let work = op.work_dtype;
    if raw_dtype == DType::F64 && work != DType::F64 {
        // The cast as PyTorch's `.to()` does it from f64 (see amalgam_io::convert).
        let mut tmp = vec![0u8; n * work.size()];
        convert::convert_bytes(DType::F64, bytes, work, &mut tmp)?;
        convert::decode_f32_into(work, &tmp, &mut data)?;
    } else {
        convert::decode_f32_into(raw_dtype, bytes, &mut data)?;
        if raw_dtype != work {
            amalgam_methods::numerics::round_slice(work, &mut data);
        }
    }
    let shape = if n == op.shape.iter().product::<usize>() {
        op.shape.clone()
    } else {
        vec![n]
    };
    Ok(Tensor::new(work, shape, data))
}

/// The label of each input of `op` in method errors: `model.tensor`.
fn input_labels(plan: &Plan, op: &Op) -> Vec<String> {
    op.inputs
        .iter()
        .map(|i| format!("{}.{}", plan.models[i.model].label, i.name))
        .collect()
}

/// A method-less op with no input to copy: nothing to write for `range`.
fn no_input(plan: &Plan, op: &Op, range: &std::ops::Range<usize>) -> EngineError {
    EngineError::MethodOutputSize {
        tensor: op.out_name.clone(),
        method: plan.method_name().into(),
        got: 0,
        want: range.len(),
    }
}

/// Loads elements `range` of input `j`'s own tensor as f64 (the float64 working dtype): f64
/// values as stored, any other float dtype widened exactly (PyTorch's `.to(torch.float64)`).
/// The planner refuses vocabulary alignment and LoRA inputs with a float64 working dtype.
fn load_f64(plan: &Plan, op: &Op, j: usize, range: std::ops::Range<usize>) -> Result<Vec<f64>> {
    let n = range.len();
    with_input_bytes(plan, op, j, &range, |buf, raw, _| {
        let mut wide;
        let bytes: &[u8] = if raw.dtype == DType::F64 {
            buf
        } else {
            wide = vec![0u8; n * 8];
            convert::convert_bytes(raw.dtype, buf, DType::F64, &mut wide)?;
            &wide
        };
        Ok(bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    })
}

/// [`merge_range`] for an op whose working dtype is F64: the inputs are read as f64, merged by
/// the method's f64 arithmetic ([`amalgam_methods::MergeMethod::merge_f64`]), and the f64
/// result is cast to the output dtype as PyTorch's `.to()` casts from f64.
fn merge_range_f64(
    plan: &Plan,
    op: &Op,
    range: std::ops::Range<usize>,
    sink: &dyn Sink,
) -> Result<()> {
    let data: Vec<Vec<f64>> = (0..op.inputs.len())
        .map(|j| load_f64(plan, op, j, range.clone()))
        .collect::<Result<_>>()?;
    let out = match &plan.method {
        // A method-less plan copies its one input.
        None => data
            .into_iter()
            .next()
            .ok_or_else(|| no_input(plan, op, &range))?,
        Some(method) => {
            let labels = input_labels(plan, op);
            let inputs = data
                .iter()
                .zip(&op.per_input)
                .zip(&labels)
                .map(|((data, params), label)| amalgam_methods::MergeInput64 {
                    data,
                    params,
                    label,
                })
                .collect();
            let args = amalgam_methods::MergeArgs64 {
                tensor_name: &op.out_name,
                inputs,
                base: op.base,
                shared: &op.shared,
                compat: plan.compat,
            };
            guarded(plan, op, || method.merge_f64(args))?
        }
    };
    output_size(plan, op, out.len(), range.len())?;
    let wide: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    let start = (range.start * op.out_dtype.size()) as u64;
    if op.out_dtype == DType::F64 {
        return sink.put(op, start, &wide);
    }
    let mut bytes = vec![0u8; out.len() * op.out_dtype.size()];
    convert::convert_bytes(DType::F64, &wide, op.out_dtype, &mut bytes)?;
    sink.put(op, start, &bytes)
}

fn merge_range(
    plan: &Plan,
    op: &Op,
    range: std::ops::Range<usize>,
    rng: Option<&mut Mt19937>,
    sink: &dyn Sink,
    torch_threads: usize,
    pad: Option<&Vec<Vec<f32>>>,
) -> Result<()> {
    if op.work_dtype == DType::F64 {
        return merge_range_f64(plan, op, range, sink);
    }
    // A whole large tensor's inputs are read and decoded in parallel (each thread its own read
    // buffer); a chunk's, one after another.
    // The buffers are allocated here, on the thread that frees them after the merge (see
    // `convert::decode_f32_into`): decoded on the pool's threads into their own allocations, a
    // tensor's inputs stayed counted (about 130-160 MiB for ties' embedding) when the next large
    // tensor's were allocated.
    let tensors: Vec<Tensor> = if range.len() > CHUNK_ELEMS {
        let bufs: Vec<Vec<f32>> = (0..op.inputs.len())
            .map(|_| Vec::with_capacity(range.len()))
            .collect();
        bufs.into_par_iter()
            .enumerate()
            .map(|(j, buf)| load(plan, op, j, range.clone(), pad, buf))
            .collect::<Result<_>>()?
    } else {
        (0..op.inputs.len())
            .map(|j| load(plan, op, j, range.clone(), pad, Vec::new()))
            .collect::<Result<_>>()?
    };
    let Some(method) = &plan.method else {
        // A method-less plan copies its one input, already converted to the working dtype.
        let out = tensors
            .into_iter()
            .next()
            .ok_or_else(|| no_input(plan, op, &range))?;
        return put(op, &out.data, range, plan, sink);
    };
    let labels = input_labels(plan, op);
    let inputs = tensors
        .iter()
        .zip(&op.per_input)
        .zip(&labels)
        .map(|((tensor, params), label)| MergeInput {
            tensor,
            params,
            label,
        })
        .collect();
    let args = MergeArgs {
        tensor_name: &op.out_name,
        inputs,
        base: op.base,
        shared: &op.shared,
        rng,
        compat: plan.compat,
        torch_threads,
    };
    let out = guarded(plan, op, || method.merge(args))?;
    put(op, &out.data, range, plan, sink)
}

/// Runs a method on one tensor. A method is third-party code as far as the engine is
/// concerned: a panic in it (a bug, but one a user may meet on an odd tensor) becomes an error
/// naming the tensor and the method, instead of tearing down the rayon pool and the process.
/// Nothing observable is left half-updated: the method's inputs are owned by the caller and its
/// output is discarded.
fn guarded<T>(
    plan: &Plan,
    op: &Op,
    f: impl FnOnce() -> std::result::Result<T, amalgam_methods::MethodError>,
) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| EngineError::MethodPanicked {
            tensor: op.out_name.clone(),
            method: plan.method_name().to_string(),
            message: payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into()),
        })?
        .map_err(|source| EngineError::Method {
            tensor: op.out_name.clone(),
            source,
        })
}

/// The engine's side of [`ChunkIo`] for one op: reads load (and align) input ranges as
/// [`merge_range`] does, writes encode and hand them to the sink. An engine error (a read
/// failing, say) is kept here and reported as itself, not as the method's.
struct OpIo<'a> {
    plan: &'a Plan,
    op: &'a Op,
    pad: Option<&'a Vec<Vec<f32>>>,
    sink: &'a dyn Sink,
    failed: std::sync::Mutex<Option<EngineError>>,
}

impl OpIo<'_> {
    fn keep(&self, e: EngineError) -> amalgam_methods::MethodError {
        let message = e.to_string();
        let mut slot = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
        amalgam_methods::MethodError::Other(message)
    }
}

impl ChunkIo for OpIo<'_> {
    fn read(
        &self,
        input: usize,
        range: std::ops::Range<usize>,
    ) -> std::result::Result<Vec<f32>, amalgam_methods::MethodError> {
        if input >= self.op.inputs.len() {
            return Err(self.keep(no_input(self.plan, self.op, &range)));
        }
        load(self.plan, self.op, input, range, self.pad, Vec::new())
            .map(|t| t.data)
            .map_err(|e| self.keep(e))
    }

    fn write(
        &self,
        range: std::ops::Range<usize>,
        values: &[f32],
    ) -> std::result::Result<(), amalgam_methods::MethodError> {
        if range.end > self.op.numel() {
            let e = output_size(self.plan, self.op, range.end, self.op.numel());
            return e.map_err(|e| self.keep(e));
        }
        put(self.op, values, range, self.plan, self.sink).map_err(|e| self.keep(e))
    }
}

/// Merges a whole-tensor op through the method's chunked entry point.
fn merge_streamed(
    plan: &Plan,
    op: &Op,
    sink: &dyn Sink,
    torch_threads: usize,
    pad: Option<&Vec<Vec<f32>>>,
) -> Result<()> {
    let method = plan
        .method
        .as_ref()
        .ok_or_else(|| no_input(plan, op, &(0..op.numel())))?;
    let io = OpIo {
        plan,
        op,
        pad,
        sink,
        failed: std::sync::Mutex::new(None),
    };
    let labels = input_labels(plan, op);
    let args = StreamArgs {
        tensor_name: &op.out_name,
        shape: &op.shape,
        dtype: op.work_dtype,
        params: op.per_input.iter().collect(),
        labels: labels.iter().map(String::as_str).collect(),
        base: op.base,
        shared: &op.shared,
        compat: plan.compat,
        torch_threads,
        io: &io,
    };
    let done = guarded(plan, op, || method.merge_streamed(args));
    match io.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => done,
    }
}

/// A method's output of `got` values where `want` are due: an error naming the method.
fn output_size(plan: &Plan, op: &Op, got: usize, want: usize) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(EngineError::MethodOutputSize {
        tensor: op.out_name.clone(),
        method: plan.method_name().to_string(),
        got,
        want,
    })
}

/// Encodes a merged tensor to the output dtype and hands it to the sink at its offset.
fn put(
    op: &Op,
    out: &[f32],
    range: std::ops::Range<usize>,
    plan: &Plan,
    sink: &dyn Sink,
) -> Result<()> {
    output_size(plan, op, out.len(), range.len())?;
    let mut bytes = vec![0u8; out.len() * op.out_dtype.size()];
    convert::encode_f32(op.out_dtype, out, &mut bytes)?;
    sink.put(op, (range.start * op.out_dtype.size()) as u64, &bytes)
}

/// Merges an elementwise work item chunk by chunk: each chunk's inputs fit in the CPU cache
/// between decoding and merging.
fn merge_item(
    plan: &Plan,
    op: &Op,
    range: std::ops::Range<usize>,
    sink: &dyn Sink,
    torch_threads: usize,
    pad: Option<&Vec<Vec<f32>>>,
) -> Result<()> {
    let mut s = range.start;
    while s < range.end {
        let e = (s + CHUNK_ELEMS).min(range.end);
        merge_range(plan, op, s..e, None, sink, torch_threads, pad)?;
        s = e;
    }
    Ok(())
}

/// Copies an integer/bool buffer, which must be identical across inputs.
fn copy_buffer(plan: &Plan, op: &Op, sink: &dyn Sink) -> Result<()> {
    let mut first: Option<Vec<u8>> = None;
    for inp in &op.inputs {
        let m = &plan.models[inp.model];
        let raw = m.source.require(&inp.name, &m.label)?;
        let data = raw.data.to_vec();
        match &first {
            None => first = Some(data),
            Some(f) if *f != data => {
                return Err(EngineError::BufferDiffers {
                    tensor: op.out_name.clone(),
                })
            }
            _ => {}
        }
    }
    sink.put(op, 0, first.as_deref().unwrap_or(&[]))
}

/// Runs every op of `plan` into `sink`.
pub fn execute(plan: &Plan, sink: &dyn Sink, opts: &ExecOptions) -> Result<()> {
    let threads = opts.torch_threads.max(1);
    let bytes_done = AtomicU64::new(0);
    let tensors_done = AtomicUsize::new(0);
    let report = |n: u64, finished: bool| {
        let b = bytes_done.fetch_add(n, Ordering::Relaxed) + n;
        let t = tensors_done.fetch_add(finished as usize, Ordering::Relaxed) + finished as usize;
        if let Some(p) = &opts.progress {
            p(b, t);
        }
    };
    let pads: Pads = plan
        .ops
        .iter()
        .map(|op| pad_rows(plan, op))
        .collect::<Result<_>>()?;
    if plan.is_random() {
        let mut rng = Mt19937::new(opts.seed.unwrap_or(0));
        for (i, op) in plan.ops.iter().enumerate() {
            if op.float {
                let n = op.shape.iter().product();
                merge_range(
                    plan,
                    op,
                    0..n,
                    Some(&mut rng),
                    sink,
                    threads,
                    pads[i].as_ref(),
                )?;
            } else {
                copy_buffer(plan, op, sink)?;
            }
            report(nbytes(op), true);
        }
        return Ok(());
    }
    // Work items: (op index, element range, how it is merged).
    let stream_above = opts.stream_above.unwrap_or(STREAM_ITEM_BYTES);
    let mut items: Vec<(usize, std::ops::Range<usize>, Item)> = Vec::new();
    for (i, op) in plan.ops.iter().enumerate() {
        let n: usize = op.shape.iter().product();
        let per: Vec<&amalgam_methods::ParamValues> = op.per_input.iter().collect();
        let elementwise = plan
            .method
            .as_ref()
            .is_none_or(|m| m.is_elementwise(&op.shared, &per));
        let streams = plan
            .method
            .as_ref()
            .is_some_and(|m| m.streams(&op.shared, plan.compat));
        if op.float && n > CHUNK_ELEMS && elementwise {
            let mut s = 0;
            while s < n {
                let e = (s + ITEM_ELEMS).min(n);
                items.push((i, s..e, Item::Chunked));
                s = e;
            }
        } else if op.float
            && streams
            && op.work_dtype != DType::F64
            && f32_input_bytes(op) > stream_above
        {
            items.push((i, 0..n, Item::Streamed));
        } else {
            items.push((i, 0..n, Item::Whole));
        }
    }
    // Items still to do per op, to count finished tensors for progress.
    let remaining: Vec<AtomicUsize> = plan.ops.iter().map(|_| AtomicUsize::new(0)).collect();
    for (i, _, _) in &items {
        remaining[*i].fetch_add(1, Ordering::Relaxed);
    }
    // Whole-tensor items whose inputs alone take more than BIG_ITEM_BYTES as f32 run one at a
    // time, before the rest (the methods work in parallel inside such a tensor): two of them at
    // once would double the peak memory, which grows with the largest tensor and the inputs.
    // Streamed items too: their chunks run in parallel.
    let big = |(i, _, kind): &(usize, std::ops::Range<usize>, Item)| match kind {
        Item::Chunked => false,
        Item::Streamed => true,
        Item::Whole => plan.ops[*i].float && f32_input_bytes(&plan.ops[*i]) > BIG_ITEM_BYTES,
    };
    let (big_items, items): (Vec<_>, Vec<_>) = items.into_iter().partition(big);
    let run = |(i, range, kind): &(usize, std::ops::Range<usize>, Item)| -> Result<()> {
        let op = &plan.ops[*i];
        let pad = pads[*i].as_ref();
        match kind {
            Item::Chunked => merge_item(plan, op, range.clone(), sink, threads, pad)?,
            Item::Streamed => merge_streamed(plan, op, sink, threads, pad)?,
            Item::Whole if op.float => {
                merge_range(plan, op, range.clone(), None, sink, threads, pad)?
            }
            Item::Whole => copy_buffer(plan, op, sink)?,
        }
        let finished = remaining[*i].fetch_sub(1, Ordering::AcqRel) == 1;
        report((range.len() * op.out_dtype.size()) as u64, finished);
        Ok(())
    };
    big_items.iter().try_for_each(run)?;
    items.par_iter().try_for_each(run)
}

/// How a work item is merged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Item {
    /// A range of an elementwise tensor, merged chunk by chunk.
    Chunked,
    /// A whole tensor given to the method at once (or a buffer copied).
    Whole,
    /// A whole tensor merged through the method's chunked entry point.
    Streamed,
}

/// The bytes an op's inputs take as f32, the form a whole-tensor merge holds them in.
fn f32_input_bytes(op: &Op) -> usize {
    op.numel().saturating_mul(op.inputs.len()).saturating_mul(4)
}

fn nbytes(op: &Op) -> u64 {
    op.shape.iter().product::<usize>() as u64 * op.out_dtype.size() as u64
}
