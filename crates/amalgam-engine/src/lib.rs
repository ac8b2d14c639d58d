//! The amalgam merge engine.
//!
//! [`plan()`] lowers a parsed config to output tensors (checking everything that can be checked
//! without reading weights); [`merge`] writes the plan through the streaming executor into a
//! temporary folder that becomes the output only when complete; [`verify`] recomputes a merge
//! and compares it with an existing folder without writing a copy; [`unmix`] turns a Mixtral
//! checkpoint into dense experts.
#![deny(missing_docs)]

mod arch;
mod error;
pub mod exec;
mod legacy_order;
mod order;
pub mod plan;
pub mod side;
mod source;
mod unmix;
mod verify;

use std::path::{Path, PathBuf};

use amalgam_config::LoadedConfig;
use amalgam_io::{IndexStyle, OutputWriter, PlannedTensor, ShardLayout, ShardRule, ShardSpec};
use amalgam_methods::{Compat, Registry};

pub use error::{EngineError, Result};
pub use exec::{ExecOptions, ProgressFn};
pub use plan::{plan, Plan, PlanOptions};
pub use unmix::{mistral_config, unmix, UnmixOptions};
pub use verify::{verify, TensorDiff, VerifyReport};

/// mergekit's default `--out-shard-size` (5B: bytes since 2024-05, elements before).
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

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

/// The shard layout mergekit would use for `plan`.
pub fn layout(plan: &Plan, out_shard_size: Option<u64>) -> Result<ShardLayout> {
    let size = out_shard_size.unwrap_or(DEFAULT_SHARD_SIZE);
    let spec = match plan.compat {
        Compat::V0_1_5 => ShardSpec {
            rule: ShardRule::Bytes(size),
            style: IndexStyle::Modern,
            mergekit_version: "0.1.5".into(),
        },
        Compat::V0_0_4_2 => ShardSpec {
            rule: ShardRule::Elements(size),
            style: IndexStyle::Legacy,
            mergekit_version: "0.0.4.2".into(),
        },
    };
    let tensors = plan
        .ops
        .iter()
        .map(|o| PlannedTensor {
            name: o.out_name.clone(),
            dtype: o.out_dtype,
            shape: o.shape.clone(),
        })
        .collect();
    Ok(ShardLayout::plan(tensors, &spec)?)
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
    let plan = plan::plan(loaded, registry, &opts.plan)?;
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
    let layout = layout(&plan, opts.out_shard_size)?;
    tracing::info!(
        "plan: method {}, {} output tensors, {} bytes in {} shard(s), mergekit {} behaviour",
        plan.method.info().name,
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
    let seed = if plan.method.info().random {
        Some(opts.seed.unwrap_or_else(fresh_seed))
    } else {
        opts.seed
    };
    let writer = OutputWriter::create(out, layout)?;
    exec::execute(
        &plan,
        &writer,
        &ExecOptions {
            seed,
            progress: opts.progress.clone(),
        },
    )?;
    if let Some(cfg) = side::config_json(&plan) {
        writer.write_file("config.json", &cfg)?;
    }
    if opts.write_model_card {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Untitled Model (1)".into());
        let card = side::model_card(&plan, config_text, &name, &opts.plan.base_dir);
        writer.write_file("README.md", card.as_bytes())?;
        writer.write_file("mergekit_config.yml", config_text.as_bytes())?;
    }
    if opts.copy_tokenizer {
        let donor = plan.models[plan.donor].source.folder_ref();
        let has_cfg = donor.aux_file("tokenizer_config.json").is_some();
        let has_tok = donor.aux_file("tokenizer.json").is_some()
            || donor.aux_file("tokenizer.model").is_some();
        if has_cfg && has_tok {
            for f in side::TOKENIZER_FILES {
                if let Some(p) = donor.aux_file(f) {
                    writer.copy_file(f, &p)?;
                }
            }
        } else {
            tracing::warn!(
                "donor model {} has no tokenizer files to copy; the output has no tokenizer",
                plan.models[plan.donor].label
            );
        }
    }
    let tensors = plan.ops.len();
    let bytes = plan.output_bytes();
    let path = writer.finish()?;
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

/// What the config crate's validation needs to know of each registered method.
pub fn method_schemas(registry: &Registry) -> Vec<amalgam_config::MethodSchema> {
    use amalgam_config::{BasePolicy, InputContract, ParamSchema, ParamScope as CScope};
    use amalgam_methods::{BaseRule, InputCount, ParamKind, ParamScope};
    registry
        .iter()
        .map(|m| {
            let info = m.info();
            let (min_inputs, max_inputs, min_non_base, max_non_base) = match info.contract.count {
                InputCount::Any => (1, None, None, None),
                InputCount::Exactly(n) => (n, Some(n), None, None),
                InputCount::AtLeast(n) => (n, None, None, None),
                InputCount::ExactlyNonBase(n) => (1, None, Some(n), Some(n)),
                InputCount::AtLeastNonBase(n) => (1, None, Some(n), None),
            };
            amalgam_config::MethodSchema {
                name: info.name.to_string(),
                params: info
                    .params
                    .iter()
                    .map(|p| ParamSchema {
                        name: p.name.to_string(),
                        kind: match p.kind {
                            ParamKind::Float => amalgam_config::ParamKind::Float,
                            ParamKind::Bool => amalgam_config::ParamKind::Bool,
                            ParamKind::Int => amalgam_config::ParamKind::Int,
                        },
                        scope: match p.scope {
                            ParamScope::Shared => CScope::Shared,
                            ParamScope::Input => CScope::Input,
                            ParamScope::NonBase => CScope::NonBase,
                        },
                        required: p.default.is_none(),
                    })
                    .collect(),
                contract: Some(InputContract {
                    base: match info.contract.base {
                        BaseRule::Required => BasePolicy::Required,
                        BaseRule::Optional => BasePolicy::Optional,
                        BaseRule::Forbidden => BasePolicy::Forbidden,
                        BaseRule::Ignored => BasePolicy::Ignored,
                    },
                    min_inputs,
                    max_inputs,
                    min_non_base,
                    max_non_base,
                }),
            }
        })
        .collect()
}
