//! `amalgam unmix`: a Mixtral checkpoint becomes dense Mistral models, one per expert, by keeping
//! the shared tensors and expert K's MLP (`gate_proj <- w1`, `down_proj <- w2`, `up_proj <- w3`),
//! dropping the router. Streamed like every merge: nothing is held in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amalgam_io::{DType, ModelFolder, OutputWriter};
use amalgam_methods::{
    BaseRule, Compat, Contract, InputCount, MergeArgs, MergeMethod, MethodError, MethodInfo,
    ParamValues, Tensor,
};
use serde_json::Value as Json;

use crate::plan::{Model, Op, OpInput, Plan};
use crate::source::Source;
use crate::Result;

/// The MoE-only keys of a Mixtral config.json, removed for a dense Mistral.
pub const MOE_KEYS: [&str; 5] = [
    "num_local_experts",
    "num_experts_per_tok",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_jitter_noise",
];

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
    pub progress: Option<crate::ProgressFn>,
}

/// The identity "method" used to stream tensors through the executor with a dtype cast.
struct Copy(MethodInfo);

impl MergeMethod for Copy {
    fn info(&self) -> &MethodInfo {
        &self.0
    }
    fn is_elementwise(&self, _: &ParamValues, _: &[&ParamValues]) -> bool {
        true
    }
    fn merge(&self, args: MergeArgs<'_>) -> std::result::Result<Tensor, MethodError> {
        args.inputs
            .first()
            .map(|i| i.tensor.clone())
            .ok_or_else(|| MethodError::Contract("copy: no input".into()))
    }
}

fn copy_method() -> Arc<dyn MergeMethod> {
    Arc::new(Copy(MethodInfo {
        name: "copy",
        pretty_name: "Copy",
        reference_url: None,
        summary: "identity",
        params: vec![],
        contract: Contract {
            base: BaseRule::Forbidden,
            count: InputCount::Exactly(1),
        },
        random: false,
        deviations: "",
    }))
}

/// A Mixtral config.json turned into a dense Mistral one: the MoE keys removed, architecture and
/// model type replaced in place (key order kept), dtype updated.
pub fn mistral_config(mixtral: &Json, dtype: Option<DType>) -> Json {
    let mut cfg = mixtral.clone();
    if let Some(obj) = cfg.as_object_mut() {
        for k in MOE_KEYS {
            obj.shift_remove(k);
        }
        obj.insert(
            "architectures".into(),
            Json::Array(vec![Json::String("MistralForCausalLM".into())]),
        );
        obj.insert("model_type".into(), Json::String("mistral".into()));
    }
    if let Some(d) = dtype {
        crate::side::set_dtype(&mut cfg, d);
    }
    cfg
}

/// Writes expert `k` of the Mixtral at `src` as a dense Mistral into `out`.
pub fn unmix(src: &Path, out: &Path, k: usize, opts: &UnmixOptions) -> Result<PathBuf> {
    let folder = ModelFolder::open(src)?;
    let config = crate::side::read_config(&folder)?;
    let source = Source::expert(folder, k)?;
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
        method: copy_method(),
        donor: 0,
        base_model: None,
        num_layers: None,
        config_dtype: opts.dtype,
        config_out_dtype: None,
        compat: opts.compat,
        warnings: vec![],
    };
    match opts.compat {
        Compat::V0_1_5 => plan.ops.sort_by(|a, b| a.label.cmp(&b.label)),
        Compat::V0_0_4_2 => crate::legacy_order::sort(&mut plan.ops, &plan.models),
    }
    let layout = crate::layout(&plan, opts.out_shard_size)?;
    let writer = OutputWriter::create(out, layout)?;
    crate::exec::execute(
        &plan,
        &writer,
        &crate::ExecOptions {
            seed: None,
            progress: opts.progress.clone(),
        },
    )?;
    if let Some(cfg) = &plan.models[0].config {
        let dense = mistral_config(cfg, opts.dtype);
        let mut text = serde_json::to_string_pretty(&dense).unwrap_or_default();
        text.push('\n');
        writer.write_file("config.json", text.as_bytes())?;
    }
    let donor = plan.models[0].source.folder_ref();
    if opts.copy_tokenizer {
        for f in crate::side::TOKENIZER_FILES {
            if let Some(p) = donor.aux_file(f) {
                writer.copy_file(f, &p)?;
            }
        }
    }
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
        writer.write_file("README.md", card.as_bytes())?;
    }
    Ok(writer.finish()?)
}
