//! `amalgam verify`: recompute a merge and compare it with an existing folder, tensor by tensor,
//! without writing anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use amalgam_config::LoadedConfig;
use amalgam_io::ModelFolder;
use amalgam_methods::{Compat, Registry};

use crate::error::{EngineError, Result};
use crate::exec::{self, ExecOptions, Sink};
use crate::plan::Op;
use crate::planner::PlanOptions;

/// How one tensor differs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorDiff {
    /// Tensor name.
    pub tensor: String,
    /// Elements that differ (for shape/dtype/presence problems: all of them).
    pub differing_elements: u64,
    /// Total elements.
    pub elements: u64,
    /// The largest |recomputed − model| over the differing elements (float tensors; NaN where
    /// one side is NaN and the other not), to tell a last-bit difference from a wrong merge.
    pub max_abs_diff: Option<f64>,
    /// The largest |value| of the recomputed tensor over the compared elements, the scale
    /// `max_abs_diff` is relative to.
    pub max_abs_value: Option<f64>,
    /// What differs, when it is not just values.
    pub problem: Option<String>,
}

/// The verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// The mergekit version whose arithmetic was used.
    pub mergekit_version: String,
    /// Tensors compared.
    pub tensors: usize,
    /// Tensors that differ, sorted by name.
    pub diffs: Vec<TensorDiff>,
    /// The PyTorch thread count the merge was recomputed with (with `auto`: the one that
    /// reproduced the model, else the last one tried).
    pub torch_threads: usize,
    /// With `auto`: every thread count tried, in order (empty otherwise).
    pub torch_threads_tried: Vec<usize>,
    /// With `auto` and a match: the match holds for every thread count from `torch_threads` on,
    /// because no reduction of this model has more chunks than that (docs/threads.md).
    pub torch_threads_or_more: bool,
}

impl VerifyReport {
    /// True when every tensor matched.
    pub fn ok(&self) -> bool {
        self.diffs.is_empty()
    }
}

struct Compare<'a> {
    folder: &'a ModelFolder,
    diffs: Mutex<BTreeMap<String, TensorDiff>>,
}

impl Sink for Compare<'_> {
    fn put(&self, op: &Op, offset: u64, bytes: &[u8]) -> Result<()> {
        let n: u64 = op.shape.iter().product::<usize>() as u64;
        let es = op.out_dtype.size();
        let problem = match self.folder.get(&op.out_name) {
            None => Some("missing from the model".to_string()),
            Some(t) if t.info.dtype != op.out_dtype => Some(format!(
                "dtype {} but the config gives {}",
                t.info.dtype, op.out_dtype
            )),
            Some(t) if t.info.shape != op.shape => Some(format!(
                "shape {:?} but the config gives {:?}",
                t.info.shape, op.shape
            )),
            Some(t) => {
                // Positioned reads, like the inputs: checking a 44 GB model maps nothing in.
                let start = offset as usize;
                let part = t.data.get(start..start + bytes.len()).unwrap_or(&[]);
                let mut theirs = vec![0u8; part.len()];
                self.folder.read_part(part, &mut theirs)?;
                let diff = bytes
                    .chunks(es)
                    .zip(theirs.chunks(es))
                    .filter(|(a, b)| a != b)
                    .count() as u64;
                if diff > 0 {
                    let sizes = magnitudes(op.out_dtype, bytes, &theirs);
                    let mut d = self.diffs.lock().unwrap_or_else(|e| e.into_inner());
                    let e = d.entry(op.out_name.clone()).or_insert_with(|| TensorDiff {
                        tensor: op.out_name.clone(),
                        differing_elements: 0,
                        elements: n,
                        max_abs_diff: None,
                        max_abs_value: None,
                        problem: None,
                    });
                    e.differing_elements += diff;
                    if let Some((dmax, vmax)) = sizes {
                        e.max_abs_diff = Some(e.max_abs_diff.map_or(dmax, |m| nan_max(m, dmax)));
                        e.max_abs_value = Some(e.max_abs_value.map_or(vmax, |m| m.max(vmax)));
                    }
                }
                None
            }
        };
        if let Some(problem) = problem {
            let mut d = self.diffs.lock().unwrap_or_else(|e| e.into_inner());
            d.insert(
                op.out_name.clone(),
                TensorDiff {
                    tensor: op.out_name.clone(),
                    differing_elements: n,
                    elements: n,
                    max_abs_diff: None,
                    max_abs_value: None,
                    problem: Some(problem),
                },
            );
        }
        Ok(())
    }
}

/// For float tensors: the largest |ours − theirs| over differing elements and the largest
/// |ours| over all of them (`None` for other dtypes or undecodable bytes).
fn magnitudes(dtype: amalgam_io::DType, ours: &[u8], theirs: &[u8]) -> Option<(f64, f64)> {
    if !dtype.is_float() {
        return None;
    }
    let a = amalgam_io::convert::decode_f32_vec(dtype, ours).ok()?;
    let b = amalgam_io::convert::decode_f32_vec(dtype, theirs).ok()?;
    let mut dmax = 0f64;
    let mut vmax = 0f64;
    for (&x, &y) in a.iter().zip(&b) {
        let (x, y) = (f64::from(x), f64::from(y));
        if x.is_finite() {
            vmax = vmax.max(x.abs());
        }
        if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
            dmax = nan_max(dmax, (x - y).abs());
        }
    }
    Some((dmax, vmax))
}

/// `max` where a NaN (one side NaN, the other not) wins: such a difference is never small.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// The mergekit version recorded in a folder's index metadata, if any.
pub fn recorded_version(folder: &Path) -> Option<Compat> {
    let text = std::fs::read_to_string(folder.join("model.safetensors.index.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Compat::parse(v.get("metadata")?.get("mergekit_version")?.as_str()?)
}

/// Which PyTorch intra-op thread count `verify` recomputes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchThreads {
    /// Exactly this many (mergekit's `torch.get_num_threads()`).
    Fixed(usize),
    /// Try the thread counts that can matter for the model's tensor sizes, and report the first
    /// that reproduces it: a published model does not say how many cores made it.
    Auto,
}

/// The order `auto` tries thread counts in: 1, the usual core counts (powers of two), then the
/// others; only those below the split limit of the largest tensor (`distinct_thread_counts`),
/// since more threads than chunks change nothing.
fn auto_candidates(largest: usize) -> Vec<usize> {
    /// Thread counts beyond this are not tried (each try recomputes the whole merge).
    const CAP: usize = 256;
    let all = amalgam_methods::reduce::distinct_thread_counts(largest, CAP);
    let mut order: Vec<usize> = [1, 2, 4, 8, 16, 32, 64, 128, 256]
        .into_iter()
        .filter(|t| all.contains(t))
        .collect();
    let rest: Vec<usize> = all.into_iter().filter(|t| !order.contains(t)).collect();
    order.extend(rest);
    order
}

/// Recomputes the merge of `loaded` with each candidate thread count (one for
/// [`TorchThreads::Fixed`]) and compares it with the model in `model_dir`; stops at the first
/// count that reproduces it. See [`verify`] for the rest.
pub fn verify_threads(
    loaded: &LoadedConfig,
    model_dir: &Path,
    registry: &Registry,
    opts: &PlanOptions,
    compat: Option<Compat>,
    seed: Option<u64>,
    threads: TorchThreads,
) -> Result<VerifyReport> {
    if let TorchThreads::Fixed(n) = threads {
        return verify(loaded, model_dir, registry, opts, compat, seed, n);
    }
    let compat_now = compat
        .or_else(|| recorded_version(model_dir))
        .unwrap_or_default();
    let plan = crate::planner::plan(
        loaded,
        registry,
        &PlanOptions {
            compat: compat_now,
            ..opts.clone()
        },
    )?;
    let largest = plan
        .ops
        .iter()
        .map(|o| o.shape.iter().product::<usize>())
        .max()
        .unwrap_or(0);
    drop(plan);
    let candidates = auto_candidates(largest);
    let most = candidates.iter().copied().max().unwrap_or(1);
    let mut tried = Vec::new();
    let mut last = None;
    for t in candidates {
        tried.push(t);
        let mut report = verify(loaded, model_dir, registry, opts, compat, seed, t)?;
        if report.ok() {
            report.torch_threads_or_more = t == most;
            report.torch_threads_tried = tried;
            return Ok(report);
        }
        last = Some(report);
    }
    let mut report = match last {
        Some(r) => r,
        None => verify(loaded, model_dir, registry, opts, compat, seed, 1)?,
    };
    report.torch_threads_tried = tried;
    Ok(report)
}

/// Recomputes the merge of `loaded` and compares it with the model in `model_dir`. The mergekit
/// version is `compat` if given, else the one recorded in the folder's index, else 0.1.5;
/// `torch_threads` is the PyTorch thread count mergekit ran with.
pub fn verify(
    loaded: &LoadedConfig,
    model_dir: &Path,
    registry: &Registry,
    opts: &PlanOptions,
    compat: Option<Compat>,
    seed: Option<u64>,
    torch_threads: usize,
) -> Result<VerifyReport> {
    let folder = ModelFolder::open(model_dir)?;
    let compat = compat
        .or_else(|| recorded_version(model_dir))
        .unwrap_or_default();
    let opts = PlanOptions {
        compat,
        ..opts.clone()
    };
    let plan = crate::planner::plan(loaded, registry, &opts)?;
    if plan.is_random() && seed.is_none() {
        return Err(EngineError::Verify {
            path: model_dir.to_path_buf(),
            reason: format!(
                "`{}` draws random numbers: give the --random-seed the model was made with",
                plan.method_name()
            ),
        });
    }
    let cmp = Compare {
        folder: &folder,
        diffs: Mutex::new(BTreeMap::new()),
    };
    exec::execute(
        &plan,
        &cmp,
        &ExecOptions {
            seed,
            progress: None,
            torch_threads,
            stream_above: None,
        },
    )?;
    let mut diffs = cmp.diffs.into_inner().unwrap_or_else(|e| e.into_inner());
    let planned: std::collections::HashSet<&str> =
        plan.ops.iter().map(|o| o.out_name.as_str()).collect();
    for name in folder.names() {
        if !planned.contains(name) {
            let n = folder.get(name).map_or(0, |t| t.info.numel() as u64);
            diffs.insert(
                name.to_string(),
                TensorDiff {
                    tensor: name.to_string(),
                    differing_elements: n,
                    elements: n,
                    max_abs_diff: None,
                    max_abs_value: None,
                    problem: Some("in the model but not produced by the config".into()),
                },
            );
        }
    }
    Ok(VerifyReport {
        mergekit_version: compat.version_str().to_string(),
        tensors: plan.ops.len(),
        diffs: diffs.into_values().collect(),
        torch_threads: torch_threads.max(1),
        torch_threads_tried: Vec::new(),
        torch_threads_or_more: false,
    })
}
