//! The amalgam merge engine: from a parsed config (or a Mixtral checkpoint) to an output folder.
//!
//! Layered so that every import points down:
//! - [`plan`]: the data of a plan (models, output tensors, resolved parameters);
//! - `model_config`: config.json reading and its edits, in one place;
//! - `arch`, `source`: architecture knowledge and tensor sources (folders, `#expert=K` views);
//! - `order`, `legacy_order`: mergekit 0.1.5's and 0.0.4.2's save orders;
//! - [`exec`]: the streaming executor; [`side`]: config.json, tokenizer and model card;
//! - `output`: one "write a plan to an output folder", used by merge and unmix;
//! - `vocab`: vocabulary alignment (`tokenizer_source`, `tokenizer:`), as plan data;
//! - `planner` and `unmix`: the two producers of a plan;
//! - `verify`, on top: recompute a plan and compare instead of writing.
//!
//! [`plan()`] lowers a parsed config to output tensors (checking everything that can be checked
//! without reading weights, the config against the method's schema first); [`merge`] writes the
//! plan through the executor into a temporary folder that becomes the output only when
//! complete; [`verify`] recomputes a merge and compares it with an existing folder without
//! writing a copy; [`unmix`] turns a Mixtral checkpoint into dense experts.
#![deny(missing_docs)]

mod arch;
mod error;
pub mod exec;
mod legacy_order;
mod mergekit_archs;
mod model_config;
pub mod moe;
mod order;
mod output;
pub mod plan;
mod planner;
pub mod side;
mod source;
mod unmix;
mod verify;
mod vocab;

use std::path::{Path, PathBuf};

use amalgam_config::LoadedConfig;
use amalgam_methods::Registry;

pub use error::{EngineError, Result};
pub use exec::{ExecOptions, ProgressFn};
pub use moe::MoeLayout;
pub use plan::{Plan, DEFAULT_SHARD_SIZE};
pub use planner::{plan, PlanOptions};
pub use unmix::{expert_count, unmix, UnmixOptions};
pub use verify::{verify, verify_threads, TensorDiff, TorchThreads, VerifyReport};
pub use vocab::{builtin_chat_template, BUILTIN_CHAT_TEMPLATES};

/// Options of [`merge`].
#[derive(Clone, Default)]
pub struct MergeOptions {
    /// Planning options (compat, strict, paths).
    pub plan: PlanOptions,
    /// `--out-shard-size` (bytes for 0.1.5, elements for 0.0.4.2); default 5B.
    pub out_shard_size: Option<u64>,
    /// Copy the donor's tokenizer files.
    pub copy_tokenizer: bool,
    /// Write README.md and mergekit_config.yml.
    pub write_model_card: bool,
    /// `--random-seed`.
    pub seed: Option<u64>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// PyTorch intra-op threads of the mergekit run to reproduce (0 or 1: one thread).
    pub torch_threads: usize,
    /// Expert layout of a Mixtral output (`--moe-layout`).
    pub moe_layout: MoeLayout,
    /// Input bytes (as f32) above which a whole-tensor merge streams in chunks where its method
    /// can (`None`: `exec::STREAM_ITEM_BYTES`; see `ExecOptions::stream_above`).
    pub stream_above: Option<usize>,
}

/// The output tensors `--moe-layout per-expert` writes as several: each fused expert tensor and
/// router of a Mixtral output, mapped to its per-expert tensors (see [`moe::fused_parts`]).
fn moe_split(plan: &Plan, layout: MoeLayout) -> Result<plan::OutputSplit> {
    let mut split = plan::OutputSplit::new();
    if layout == MoeLayout::Fused {
        return Ok(split);
    }
    let donor = plan.models.get(plan.donor);
    let model_type = model_config::model_type(donor.and_then(|m| m.config.as_ref()));
    let expert_view = donor.is_some_and(|m| m.source.is_expert_view());
    if model_type != Some("mixtral") || expert_view {
        return Err(EngineError::MoeLayout {
            model: donor.map_or_else(|| "?".into(), |m| m.label.clone()),
            arch: if expert_view {
                "an `#expert=K` view (a dense Mistral)".into()
            } else {
                amalgam_io::display::safe(model_type.unwrap_or("of unknown model_type")).to_string()
            },
        });
    }
    for op in &plan.ops {
        if let Some(parts) = moe::fused_parts(&op.out_name, &op.shape) {
            split.insert(op.out_name.clone(), parts);
        }
    }
    Ok(split)
}

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// Final output folder.
    pub path: PathBuf,
    /// Warnings raised.
    pub warnings: Vec<String>,
    /// The seed used by a random method (given or drawn).
    pub seed: Option<u64>,
    /// Tensors written.
    pub tensors: usize,
    /// Tensor bytes written.
    pub bytes: u64,
}

/// A seed for a random method when none was given: drawn from the clock, printed by the CLI so
/// the run can be repeated.
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64).rotate_left(32)) & 0xffff_ffff
}

/// Runs a merge into `out`.
pub fn merge(
    loaded: &LoadedConfig,
    out: &Path,
    registry: &Registry,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    let plan = planner::plan(loaded, registry, &opts.plan)?;
    merge_plan(plan, &loaded.text, out, opts)
}

/// Runs an already built plan into `out` (`config_text` is written as `mergekit_config.yml`):
/// lets a caller inspect the plan first (for a progress total, a dry run...) without planning
/// twice.
pub fn merge_plan(
    plan: Plan,
    config_text: &str,
    out: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    let started = std::time::Instant::now();
    for m in &plan.models {
        tracing::info!("model {} -> {}", m.label, m.source.path().display());
    }
    let split = moe_split(&plan, opts.moe_layout)?;
    let layout = plan.layout_with(opts.out_shard_size, &split)?;
    tracing::info!(
        "plan: method {}, {} output tensors, {} bytes in {} shard(s), mergekit {} behaviour",
        plan.method_name(),
        plan.ops.len(),
        plan.output_bytes(),
        layout.shard_names().len(),
        plan.compat.version_str()
    );
    for op in &plan.ops {
        tracing::debug!(
            "{} <- {} input(s), {} -> {}, shared {:?}",
            op.out_name,
            op.inputs.len(),
            op.work_dtype,
            op.out_dtype,
            op.shared
        );
    }
    let seed = if plan.is_random() {
        Some(opts.seed.unwrap_or_else(fresh_seed))
    } else {
        opts.seed
    };
    let mut files = Vec::new();
    if let Some(t) = &plan.tokenizer {
        if t.vocab_size.is_some() || opts.copy_tokenizer {
            files.extend(t.files.iter().cloned());
        }
    }
    if opts.write_model_card {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Untitled Model (1)".into());
        let card = side::model_card(&plan, config_text, &name, &opts.plan.base_dir);
        files.push(("README.md", card.into_bytes()));
        files.push(("mergekit_config.yml", config_text.as_bytes().to_vec()));
    }
    let path = output::write_plan(
        &plan,
        out,
        &output::OutputFiles {
            out_shard_size: opts.out_shard_size,
            exec: ExecOptions {
                seed,
                progress: opts.progress.clone(),
                torch_threads: opts.torch_threads,
                stream_above: opts.stream_above,
            },
            config_json: side::config_json(&plan),
            files,
            split,
            // With a tokenizer config the built tokenizer is always written (as mergekit does);
            // a chat template alone re-saves the donor's, only when tokenizers are copied.
            tokenizer: if plan.tokenizer.is_some() {
                output::TokenizerCopy::No
            } else if opts.copy_tokenizer {
                output::TokenizerCopy::WhenComplete
            } else {
                output::TokenizerCopy::No
            },
        },
    )?;
    let tensors = plan.ops.len();
    let bytes = plan.output_bytes();
    tracing::info!(
        "wrote {} in {:.2} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(MergeReport {
        path,
        warnings: plan.warnings,
        seed,
        tensors,
        bytes,
    })
}
