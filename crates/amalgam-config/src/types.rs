//! The parsed configuration (mergekit's `MergeConfiguration` and its parts).

use crate::{ModelRef, Parameters};

/// One entry of `models:`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputModel {
    /// The model.
    pub model: ModelRef,
    /// Its parameters.
    pub parameters: Parameters,
}

/// One source of an output slice.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSlice {
    /// The model.
    pub model: ModelRef,
    /// `[start, end)` layers.
    pub layer_range: (usize, usize),
    /// Its parameters.
    pub parameters: Parameters,
}

impl InputSlice {
    /// Number of layers the source spans.
    pub fn num_layers(&self) -> usize {
        self.layer_range.1.saturating_sub(self.layer_range.0)
    }
}

/// One entry of `slices:`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSlice {
    /// The sources merged into this slice.
    pub sources: Vec<InputSlice>,
    /// Slice-level base model (overrides the global one).
    pub base_model: Option<ModelRef>,
    /// Slice-level parameters.
    pub parameters: Parameters,
    /// Accepted by mergekit's schema and never used by it; kept so nothing is lost.
    pub residual_weight: Option<f64>,
}

/// One entry of `modules:` (multi-module architectures such as VLMs).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputModule {
    /// `slices:` form (exactly one of `slices`/`models` is non-empty).
    pub slices: Option<Vec<OutputSlice>>,
    /// `models:` form.
    pub models: Option<Vec<InputModel>>,
    /// Module-level parameters (precedence between slice and global).
    pub parameters: Parameters,
}

/// Where the output tokenizer comes from (`tokenizer_source:` or `tokenizer.source`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSource {
    /// `union`: the union of all vocabularies.
    Union,
    /// `base`: the base model's tokenizer.
    Base,
    /// A given model's tokenizer.
    Model(ModelRef),
}

/// Where the embedding of one token comes from (`tokenizer.tokens.<tok>.source`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEmbeddingSource {
    /// `{kind: model_token, model, token_id | token}`: exactly one of the two is set.
    ModelToken {
        /// The model to read the embedding from.
        model: ModelRef,
        /// The token id in that model.
        token_id: Option<i64>,
        /// The token text in that model.
        token: Option<String>,
    },
    /// `{kind: zero}`.
    Zero,
    /// A model reference: the same token in that model.
    Model(ModelRef),
}

/// One entry of `tokenizer.tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEmbedding {
    /// Where its embedding comes from (`None`: mergekit's default).
    pub source: Option<TokenEmbeddingSource>,
    /// `force: true` overrides an existing embedding.
    pub force: bool,
}

/// The `tokenizer:` block (mergekit's `TokenizerConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerConfig {
    /// `source` (default `union`).
    pub source: TokenizerSource,
    /// `tokens`, in YAML order.
    pub tokens: Option<Vec<(String, TokenEmbedding)>>,
    /// `pad_to_multiple_of`.
    pub pad_to_multiple_of: Option<i64>,
}

/// A parsed merge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeConfig {
    /// Registry name of the method.
    pub merge_method: String,
    /// `models:` form.
    pub models: Option<Vec<InputModel>>,
    /// `slices:` form.
    pub slices: Option<Vec<OutputSlice>>,
    /// `modules:` form, in YAML order (the order mergekit plans them in).
    pub modules: Option<Vec<(String, OutputModule)>>,
    /// Global base model.
    pub base_model: Option<ModelRef>,
    /// Global parameters.
    pub parameters: Parameters,
    /// Load-time dtype (`bfloat16`...), as written.
    pub dtype: Option<String>,
    /// Save-time dtype, as written.
    pub out_dtype: Option<String>,
    /// Legacy tokenizer option.
    pub tokenizer_source: Option<TokenizerSource>,
    /// Modern tokenizer option (`tokenizer: {}` counts as set, as in mergekit).
    pub tokenizer: Option<TokenizerConfig>,
    /// `chat_template`: `auto`, a built-in name or literal Jinja.
    pub chat_template: Option<String>,
}

impl MergeConfig {
    /// mergekit's normalisation of the `models:` form: one output slice whose sources are the
    /// models in config order, each spanning `[0, num_layers(model))`, with the base model
    /// appended last (without parameters) when it is set and not listed.
    pub fn models_as_slice(
        models: &[InputModel],
        base_model: Option<&ModelRef>,
        mut num_layers: impl FnMut(&ModelRef) -> usize,
    ) -> OutputSlice {
        let mut sources: Vec<InputSlice> = models
            .iter()
            .map(|m| InputSlice {
                layer_range: (0, num_layers(&m.model)),
                model: m.model.clone(),
                parameters: m.parameters.clone(),
            })
            .collect();
        if let Some(base) = base_model {
            if !models.iter().any(|m| &m.model == base) {
                sources.push(InputSlice {
                    layer_range: (0, num_layers(base)),
                    model: base.clone(),
                    parameters: Parameters::new(),
                });
            }
        }
        OutputSlice {
            sources,
            base_model: None,
            parameters: Parameters::new(),
            residual_weight: None,
        }
    }

    /// The output slices of every module, normalised like mergekit's planner: `models:` and
    /// `slices:` configs are the single module `default`; `models:` lists become one slice
    /// (see [`MergeConfig::models_as_slice`]). Also returns each module's parameters.
    pub fn normalized_modules(
        &self,
        mut num_layers: impl FnMut(&ModelRef) -> usize,
    ) -> Vec<(String, Vec<OutputSlice>, Parameters)> {
        let base = self.base_model.as_ref();
        if let Some(models) = self.models.as_ref().filter(|m| !m.is_empty()) {
            let s = Self::models_as_slice(models, base, &mut num_layers);
            return vec![("default".into(), vec![s], Parameters::new())];
        }
        if let Some(slices) = self.slices.as_ref().filter(|s| !s.is_empty()) {
            return vec![("default".into(), slices.clone(), Parameters::new())];
        }
        let mut out = Vec::new();
        for (name, m) in self.modules.iter().flatten() {
            let slices = match (&m.models, &m.slices) {
                (Some(models), _) if !models.is_empty() => {
                    vec![Self::models_as_slice(models, base, &mut num_layers)]
                }
                (_, Some(slices)) => slices.clone(),
                _ => Vec::new(),
            };
            out.push((name.clone(), slices, m.parameters.clone()));
        }
        out
    }

    /// Every model the config names, once each, in first-mention order (`base_model` first).
    /// mergekit uses a Python `set` here, whose order changes from run to run; amalgam picks
    /// this stable order instead.
    pub fn referenced_models(&self) -> Vec<ModelRef> {
        let mut out: Vec<ModelRef> = Vec::new();
        let mut add = |m: &ModelRef| {
            if !out.contains(m) {
                out.push(m.clone());
            }
        };
        if let Some(b) = &self.base_model {
            add(b);
        }
        let add_models = |ms: &[InputModel], add: &mut dyn FnMut(&ModelRef)| {
            for m in ms {
                add(&m.model);
            }
        };
        let add_slices = |ss: &[OutputSlice], add: &mut dyn FnMut(&ModelRef)| {
            for s in ss {
                for src in &s.sources {
                    add(&src.model);
                }
            }
        };
        add_models(self.models.as_deref().unwrap_or_default(), &mut add);
        add_slices(self.slices.as_deref().unwrap_or_default(), &mut add);
        for (_, m) in self.modules.iter().flatten() {
            add_models(m.models.as_deref().unwrap_or_default(), &mut add);
            add_slices(m.slices.as_deref().unwrap_or_default(), &mut add);
        }
        out
    }
}
