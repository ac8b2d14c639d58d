//! The data of a plan: input models, output tensors with their inputs, resolved parameters and
//! dtypes. Two producers build plans (the planner from a config, unmix from a Mixtral); the
//! executor, the side-file writer and verify consume them. This module imports nothing else of
//! the engine's, so every other module can depend on it.

use std::sync::Arc;

use amalgam_config::ModelRef;
use amalgam_io::{DType, IndexStyle, PlannedTensor, ShardLayout, ShardRule, ShardSpec};
use amalgam_methods::{Compat, MergeMethod, ParamValues};
use serde_json::Value as Json;

use crate::error::Result;
use crate::source::Source;

/// Output tensors written as several: an op's name -> the tensors its bytes go to, in order,
/// with their shapes (`--moe-layout per-expert`: the engine's `moe` module says which).
pub type OutputSplit = std::collections::HashMap<String, Vec<(String, Vec<usize>)>>;

/// mergekit's default `--out-shard-size` (5B: bytes since 2024-05, elements before).
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// One input model of the merge.
#[derive(Debug)]
pub struct Model {
    /// The reference as written in the config.
    pub reference: ModelRef,
    /// Its string form (mergekit's `str(ModelReference)`), used in messages and the model card.
    pub label: String,
    /// The tensors.
    pub source: Source,
    /// Its config.json, if any.
    pub config: Option<Json>,
}

/// One input of an output tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpInput {
    /// Index into [`Plan::models`].
    pub model: usize,
    /// Tensor name in that model (tied names already resolved).
    pub name: String,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct Op {
    /// Output tensor name.
    pub out_name: String,
    /// Inputs in mergekit's order.
    pub inputs: Vec<OpInput>,
    /// Index of the base model in `inputs`.
    pub base: Option<usize>,
    /// Shared parameters, resolved for this tensor.
    pub shared: ParamValues,
    /// Per-input parameters, resolved.
    pub per_input: Vec<ParamValues>,
    /// Shape (all inputs agree).
    pub shape: Vec<usize>,
    /// dtype the inputs are converted to before merging.
    pub work_dtype: DType,
    /// dtype written.
    pub out_dtype: DType,
    /// False for integer/bool buffers: copied when identical across inputs.
    pub float: bool,
    /// mergekit's scheduling label (the largest resolved input name), which sets the save order.
    pub label: String,
    /// For a vocabulary-indexed tensor (embeddings, LM head) whose inputs are re-indexed to the
    /// output vocabulary (or truncated) before the method sees them: how each input's rows are
    /// made. `shape` is then the aligned shape.
    pub align: Option<Arc<VocabAlign>>,
}

/// Where one row of an aligned input comes from (mergekit's `PermutedVocabulary`, or the common
/// prefix of `--unsafe-truncate-embeddings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSource {
    /// Row `n` of this input's own tensor.
    Own(usize),
    /// The default embedding number `n` of [`VocabAlign::defaults`].
    Default(usize),
    /// Zeros (mergekit: "No embedding for token ...").
    Zero,
    /// A padding row (`pad_to_multiple_of`): the mean of this input's aligned real rows.
    PadMean,
}

/// A default embedding, computed in the working dtype from the op's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultEmbed {
    /// Zeros.
    Zero,
    /// Row `row` of input `input` of the op.
    Copy {
        /// Index into the op's inputs.
        input: usize,
        /// Row in that input's tensor.
        row: usize,
    },
    /// `zeros + row_1 + ... + row_k`, then `/ k`, each operation rounded to the working dtype
    /// (mergekit adds in slice order in the promoted dtype).
    Average(Vec<(usize, usize)>),
}

/// How the inputs of one vocabulary-indexed op are re-indexed (vocabulary axis 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabAlign {
    /// Elements of one row (the product of the non-vocabulary dimensions).
    pub row_len: usize,
    /// Per input, one source per output row.
    pub rows: Vec<Vec<RowSource>>,
    /// The default embeddings the rows refer to.
    pub defaults: Vec<DefaultEmbed>,
    /// Rows before the padding (the real vocabulary), for [`RowSource::PadMean`].
    pub real_rows: usize,
}

impl Op {
    /// Elements of the output tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the output tensor.
    pub fn out_bytes(&self) -> u64 {
        self.numel() as u64 * self.out_dtype.size() as u64
    }
}

/// A validated plan.
pub struct Plan {
    /// Input models, in order of first appearance in the config.
    pub models: Vec<Model>,
    /// Output tensors in mergekit's save order.
    pub ops: Vec<Op>,
    /// The merge method; `None` for a plan whose every tensor is its one input, converted to the
    /// output dtype (unmix).
    pub method: Option<Arc<dyn MergeMethod>>,
    /// The model whose config.json and tokenizer are copied.
    pub donor: usize,
    /// The base model, if any (global).
    pub base_model: Option<usize>,
    /// New layer count for config.json (slices syntax only).
    pub num_layers: Option<usize>,
    /// New layer counts of the modules of a multi-module architecture written as `slices:`,
    /// at their dotted config.json keys (`text_config.num_hidden_layers`).
    pub module_layers: Vec<(&'static str, usize)>,
    /// Files copied from the donor when it has them (mergekit's `tagalong_files`: a VLM's
    /// processor configs).
    pub tagalong: &'static [&'static str],
    /// The config's `dtype` / `out_dtype`, resolved.
    pub config_dtype: Option<DType>,
    /// See above.
    pub config_out_dtype: Option<DType>,
    /// Which mergekit release is reproduced.
    pub compat: Compat,
    /// Warnings raised while planning.
    pub warnings: Vec<String>,
    /// With a tokenizer config: the output tokenizer's files (replacing the donor's) and the new
    /// vocabulary size for config.json.
    pub tokenizer: Option<TokenizerOut>,
}

/// The output tokenizer of a vocabulary-aligned merge.
#[derive(Debug, Clone)]
pub struct TokenizerOut {
    /// Files to write, by name.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// `vocab_size` written to config.json (padded); `None` when only the chat template changes.
    pub vocab_size: Option<usize>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("models", &self.models.len())
            .field("ops", &self.ops.len())
            .field("method", &self.method_name())
            .finish()
    }
}

impl Plan {
    /// Total bytes of output tensors.
    pub fn output_bytes(&self) -> u64 {
        self.ops.iter().map(Op::out_bytes).sum()
    }

    /// The method's name (`copy` for a method-less plan), for messages and logs.
    pub fn method_name(&self) -> &'static str {
        self.method.as_ref().map_or("copy", |m| m.info().name)
    }

    /// Whether the method draws random numbers.
    pub fn is_random(&self) -> bool {
        self.method.as_ref().is_some_and(|m| m.info().random)
    }

    /// The shard layout mergekit would use for this plan.
    pub fn layout(&self, out_shard_size: Option<u64>) -> Result<ShardLayout> {
        self.layout_with(out_shard_size, &Default::default())
    }

    /// The shard layout with the output tensors `split` replaces (an op's name -> the tensors
    /// its bytes are written to, in order) listed in their place.
    pub fn layout_with(
        &self,
        out_shard_size: Option<u64>,
        split: &OutputSplit,
    ) -> Result<ShardLayout> {
        let size = out_shard_size.unwrap_or(DEFAULT_SHARD_SIZE);
        let spec = match self.compat {
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
        let tensors = self
            .ops
            .iter()
            .flat_map(|o| match split.get(&o.out_name) {
                Some(parts) => parts
                    .iter()
                    .map(|(name, shape)| PlannedTensor {
                        name: name.clone(),
                        dtype: o.out_dtype,
                        shape: shape.clone(),
                    })
                    .collect(),
                None => vec![PlannedTensor {
                    name: o.out_name.clone(),
                    dtype: o.out_dtype,
                    shape: o.shape.clone(),
                }],
            })
            .collect();
        Ok(ShardLayout::plan(tensors, &spec)?)
    }
}
