//! The streaming executor: tensors flow from the inputs through the method into their
//! precomputed places in the output shards.
//!
//! Work is split into items: an elementwise method's tensor is cut into items of
//! [`ITEM_ELEMS`] elements, merged in chunks of [`CHUNK_ELEMS`]; any other tensor is one item.
//! Items run on the rayon pool in any order and write at fixed offsets, so the output bytes never
//! depend on the thread count. Input bytes are read with positioned reads into per-thread
//! buffers (the memory maps serve only the validated headers), so memory is bounded by
//! (threads x item size) whatever the model size, with no page cache mapped into the process.
//! Methods that draw random numbers run their tensors one after another in save order, because
//! the random stream is consumed in that order (mergekit's order), and only then can a seed
//! reproduce a run.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use amalgam_io::{convert, DType, OutputWriter};
use amalgam_methods::{rng::Mt19937, MergeArgs, MergeInput, Tensor};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::plan::{Op, Plan};

/// Elements per chunk of an elementwise merge: small enough that every input's chunk stays in
/// the CPU cache between decoding and merging.
pub const CHUNK_ELEMS: usize = 1 << 14;

/// Elements per work item of an elementwise merge (a run of chunks handled by one thread).
pub const ITEM_ELEMS: usize = 1 << 20;

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

/// Loads input `j` of `op`, elements `range`, converted to the working dtype.
fn load(plan: &Plan, op: &Op, j: usize, range: std::ops::Range<usize>) -> Result<Tensor> {
    let inp = &op.inputs[j];
    let model = &plan.models[inp.model];
    let raw = model.source.require(&inp.name, &model.label)?;
    let es = raw.dtype.size();
    let bytes = raw
        .data
        .get(range.start * es..range.end * es)
        .ok_or_else(|| EngineError::ShortTensor {
            file: raw.file.to_path_buf(),
            tensor: inp.name.clone(),
        })?;
    // Read the bytes with positioned reads into a per-thread buffer rather than touching the
    // mapping: no page faults, nothing left resident.
    READ_BUF.with(|cell| -> Result<Tensor> {
        let mut buf = cell.borrow_mut();
        if buf.len() < bytes.len() {
            buf.resize(bytes.len(), 0);
        }
        let buf = &mut buf[..bytes.len()];
        model.source.folder_ref().read_part(bytes, buf)?;
        decode(op, buf, raw.dtype, range.len())
    })
}

thread_local! {
    /// Reused read buffer of each worker thread.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Converts `bytes` (`n` elements of `dtype`) to the op's working dtype.
fn decode(op: &Op, bytes: &[u8], raw_dtype: DType, n: usize) -> Result<Tensor> {
    let work = op.work_dtype;
    let data = if raw_dtype == DType::F64 && work != DType::F64 {
        // The cast as PyTorch's `.to()` does it from f64 (see amalgam_io::convert).
        let mut tmp = vec![0u8; n * work.size()];
        convert::convert_bytes(DType::F64, bytes, work, &mut tmp)?;
        convert::decode_f32_vec(work, &tmp)?
    } else {
        let mut data = convert::decode_f32_vec(raw_dtype, bytes)?;
        if raw_dtype != work {
            amalgam_methods::numerics::round_slice(work, &mut data);
        }
        data
    };
    let shape = if n == op.shape.iter().product::<usize>() {
        op.shape.clone()
    } else {
        vec![n]
    };
    Ok(Tensor::new(work, shape, data))
}

fn merge_range(
    plan: &Plan,
    op: &Op,
    range: std::ops::Range<usize>,
    rng: Option<&mut Mt19937>,
    sink: &dyn Sink,
    torch_threads: usize,
) -> Result<()> {
    let tensors: Vec<Tensor> = (0..op.inputs.len())
        .map(|j| load(plan, op, j, range.clone()))
        .collect::<Result<_>>()?;
    let Some(method) = &plan.method else {
        // A method-less plan copies its one input, already converted to the working dtype.
        let out = tensors
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::MethodOutputSize {
                tensor: op.out_name.clone(),
                method: plan.method_name().into(),
                got: 0,
                want: range.len(),
            })?;
        return put(op, &out, range, plan, sink);
    };
    let labels: Vec<String> = op
        .inputs
        .iter()
        .map(|i| format!("{}.{}", plan.models[i.model].label, i.name))
        .collect();
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
    // A method is third-party code as far as the engine is concerned: a panic in it (a bug,
    // but one a user may meet on an odd tensor) becomes an error naming the tensor and the
    // method, instead of tearing down the rayon pool and the process. Nothing observable is
    // left half-updated: the method's inputs are owned here and its output is discarded.
    let merged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| method.merge(args)))
        .map_err(|payload| EngineError::MethodPanicked {
            tensor: op.out_name.clone(),
            method: plan.method_name().to_string(),
            message: payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into()),
        })?;
    let out = merged.map_err(|source| EngineError::Method {
        tensor: op.out_name.clone(),
        source,
    })?;
    put(op, &out, range, plan, sink)
}

/// Encodes a merged tensor to the output dtype and hands it to the sink at its offset.
fn put(
    op: &Op,
    out: &Tensor,
    range: std::ops::Range<usize>,
    plan: &Plan,
    sink: &dyn Sink,
) -> Result<()> {
    if out.data.len() != range.len() {
        return Err(EngineError::MethodOutputSize {
            tensor: op.out_name.clone(),
            method: plan.method_name().to_string(),
            got: out.data.len(),
            want: range.len(),
        });
    }
    let mut bytes = vec![0u8; out.data.len() * op.out_dtype.size()];
    convert::encode_f32(op.out_dtype, &out.data, &mut bytes)?;
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
) -> Result<()> {
    let mut s = range.start;
    while s < range.end {
        let e = (s + CHUNK_ELEMS).min(range.end);
        merge_range(plan, op, s..e, None, sink, torch_threads)?;
        s = e;
    }
    Ok(())
}

/// Copies an integer/bool buffer, which must be identical across inputs.
fn copy_buffer(plan: &Plan, op: &Op, sink: &dyn Sink) -> Result<()> {
    let mut first: Option<&[u8]> = None;
    for inp in &op.inputs {
        let m = &plan.models[inp.model];
        let raw = m.source.require(&inp.name, &m.label)?;
        match first {
            None => first = Some(raw.data),
            Some(f) if f != raw.data => {
                return Err(EngineError::BufferDiffers {
                    tensor: op.out_name.clone(),
                })
            }
            _ => {}
        }
    }
    sink.put(op, 0, first.unwrap_or(&[]))
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
    if plan.is_random() {
        let mut rng = Mt19937::new(opts.seed.unwrap_or(0));
        for op in &plan.ops {
            if op.float {
                let n = op.shape.iter().product();
                merge_range(plan, op, 0..n, Some(&mut rng), sink, threads)?;
            } else {
                copy_buffer(plan, op, sink)?;
            }
            report(nbytes(op), true);
        }
        return Ok(());
    }
    // Work items: (op index, element range, elementwise item merged in chunks?).
    let mut items: Vec<(usize, std::ops::Range<usize>, bool)> = Vec::new();
    for (i, op) in plan.ops.iter().enumerate() {
        let n: usize = op.shape.iter().product();
        let per: Vec<&amalgam_methods::ParamValues> = op.per_input.iter().collect();
        let elementwise = plan
            .method
            .as_ref()
            .is_none_or(|m| m.is_elementwise(&op.shared, &per));
        if op.float && n > CHUNK_ELEMS && elementwise {
            let mut s = 0;
            while s < n {
                let e = (s + ITEM_ELEMS).min(n);
                items.push((i, s..e, true));
                s = e;
            }
        } else {
            items.push((i, 0..n, false));
        }
    }
    // Items still to do per op, to count finished tensors for progress.
    let remaining: Vec<AtomicUsize> = plan.ops.iter().map(|_| AtomicUsize::new(0)).collect();
    for (i, _, _) in &items {
        remaining[*i].fetch_add(1, Ordering::Relaxed);
    }
    items.par_iter().try_for_each(|(i, range, chunked)| {
        let op = &plan.ops[*i];
        if *chunked {
            merge_item(plan, op, range.clone(), sink, threads)?;
        } else if op.float {
            merge_range(plan, op, range.clone(), None, sink, threads)?;
        } else {
            copy_buffer(plan, op, sink)?;
        }
        let finished = remaining[*i].fetch_sub(1, Ordering::AcqRel) == 1;
        report((range.len() * op.out_dtype.size()) as u64, finished);
        Ok(())
    })
}

fn nbytes(op: &Op) -> u64 {
    op.shape.iter().product::<usize>() as u64 * op.out_dtype.size() as u64
}
