//! `amalgam unmix`: a Mixtral checkpoint becomes dense Mistral models, one per expert, by keeping
//! the shared tensors and expert K's MLP (`gate_proj <- w1`, `down_proj <- w2`, `up_proj <- w3`),
//! dropping the router. Streamed like every merge: nothing is held in memory.

use std::path::{Path, PathBuf};

use amalgam_io::{DType, ModelFolder};
use amalgam_methods::{Compat, ParamValues};

use crate::error::Result;
use crate::exec::ExecOptions;
use crate::model_config::{mistral_config, read_config};
use crate::output::{write_plan, OutputFiles, TokenizerCopy};
use crate::plan::{Model, Op, OpInput, Plan};
use crate::source::Source;

/// Options of [`unmix`].
#[derive(Clone, Default)]
pub struct UnmixOptions {
    /// Output dtype (default: the checkpoint's).
    pub dtype: Option<DType>,
    /// File layout to write.
    pub compat: Compat,
    /// `--out-shard-size`.
    pub out_shard_size: Option<u64>,
    /// Copy tokenizer files.
    pub copy_tokenizer: bool,
    /// Write a model card.
    pub write_model_card: bool,
    /// Progress callback.
    pub progress: Option<crate::exec::ProgressFn>,
}

/// How many experts the Mixtral at `src` holds, counted from its tensors (every layer must hold
/// the same experts, each with all its matrices) and checked against its config.json's
/// `num_local_experts`: `--expert all` writes exactly these, and a config that disagrees with
/// the weights is refused rather than trusted.
pub fn expert_count(src: &Path) -> Result<usize> {
    let folder = ModelFolder::open(src)?;
    let config = read_config(&folder)?;
    let source = Source::expert(folder, 0)?;
    let n = source.num_experts().unwrap_or(0);
    check_expert_config(src, config.as_ref(), n)?;
    Ok(n)
}

/// Refuses a config.json whose `num_local_experts` differs from the `n` experts the tensors hold.
fn check_expert_config(src: &Path, config: Option<&serde_json::Value>, n: usize) -> Result<()> {
    let declared = config.and_then(|c| c.get("num_local_experts"));
    match declared {
        None => Ok(()),
        Some(v) if v.as_u64() == Some(n as u64) => Ok(()),
        Some(v) => Err(crate::error::EngineError::Expert {
            path: src.to_path_buf(),
            reason: format!(
                "config.json says num_local_experts = {}, but the tensors hold {n} experts",
                amalgam_io::display::safe(&v.to_string())
            ),
        }),
    }
}

/// Writes expert `k` of the Mixtral at `src` as a dense Mistral into `out`.
pub fn unmix(src: &Path, out: &Path, k: usize, opts: &UnmixOptions) -> Result<PathBuf> {
    let folder = ModelFolder::open(src)?;
    let config = read_config(&folder)?;
    let source = Source::expert(folder, k)?;
    check_expert_config(src, config.as_ref(), source.num_experts().unwrap_or(0))?;
    let mut ops = Vec::new();
    for name in source.names() {
        let raw = source.require(name, "source")?;
        let float = raw.dtype.is_float();
        let dt = if float {
            opts.dtype.unwrap_or(raw.dtype)
        } else {
            raw.dtype
        };
        ops.push(Op {
            out_name: name.clone(),
            inputs: vec![OpInput {
                model: 0,
                name: name.clone(),
            }],
            base: None,
            shared: ParamValues::new(),
            per_input: vec![ParamValues::new()],
            shape: raw.shape.to_vec(),
            work_dtype: dt,
            out_dtype: dt,
            float,
            label: name.clone(),
            align: None,
        });
    }
    let label = format!("{}#expert={k}", src.display());
    let mut plan = Plan {
        models: vec![Model {
            reference: amalgam_config::ModelRef {
                path: src.display().to_string(),
                revision: None,
                ..Default::default()
            },
            label,
            source,
            config,
        }],
        ops,
        method: None,
        donor: 0,
        base_model: None,
        num_layers: None,
        module_layers: Vec::new(),
        tagalong: &[],
        config_dtype: opts.dtype,
        config_out_dtype: None,
        compat: opts.compat,
        warnings: vec![],
        tokenizer: None,
    };
    match opts.compat {
        Compat::V0_1_5 => plan.ops.sort_by(|a, b| a.label.cmp(&b.label)),
        Compat::V0_0_4_2 => crate::legacy_order::sort(&mut plan.ops, &plan.models),
    }
    let config_json = plan.models[0].config.as_ref().map(|cfg| {
        let dense = mistral_config(cfg, opts.dtype);
        let mut text = serde_json::to_string_pretty(&dense).unwrap_or_default();
        text.push('\n');
        text.into_bytes()
    });
    let mut files = Vec::new();
    if opts.write_model_card {
        let card = format!(
            "---\nlibrary_name: transformers\ntags:\n- amalgam\n- unmix\n---\n# {}\n\nA dense Mistral model made \
             from expert {k} of the Mixtral checkpoint `{}` with `amalgam unmix`: every shared tensor \
             (embeddings, attention, norms, LM head) copied, the expert's MLP mapped as \
             `mlp.gate_proj <- experts.{k}.w1`, `mlp.down_proj <- experts.{k}.w2`, \
             `mlp.up_proj <- experts.{k}.w3`, and the router dropped{}.\n",
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            src.display(),
            opts.dtype.map(|d| format!("; weights cast to {}", d.torch_name())).unwrap_or_default()
        );
        files.push(("README.md", card.into_bytes()));
    }
    write_plan(
        &plan,
        out,
        &OutputFiles {
            out_shard_size: opts.out_shard_size,
            exec: ExecOptions {
                seed: None,
                progress: opts.progress.clone(),
                // unmix copies tensors: no reduction, the thread count cannot matter.
                torch_threads: 1,
                stream_above: None,
            },
            config_json,
            files,
            split: Default::default(),
            tokenizer: if opts.copy_tokenizer {
                TokenizerCopy::All
            } else {
                TokenizerCopy::No
            },
        },
    )
}
