//! Planning: a config lowered to output tensors, each with its inputs, resolved parameters,
//! method and dtypes. Everything that can be checked without reading tensor data is checked here,
//! before any byte is written: first the config against the method's schema (the same
//! `amalgam_config::validate` that `amalgam validate` runs: contract, parameters, the
//! `--mergekit-version`), before any model is opened; then what needs the models' headers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use amalgam_config::{LoadedConfig, ModelRef, ParamScopes, Parameters};
use amalgam_io::{DType, ModelFolder};
use amalgam_methods::{
    BaseRule, Compat, MergeMethod, MethodInfo, ParamScope, ParamValues, Registry, Value,
};

use crate::arch;
use crate::error::{EngineError, Result};
use crate::mergekit_archs::ModuleTemplate;
use crate::plan::{Model, Op, OpInput, Plan, TokenizerOut};
use crate::source::Source;

/// Options that change the plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Which mergekit release to reproduce.
    pub compat: Compat,
    /// Turn amalgam's lenient fallbacks (linear without weights) back into mergekit's errors.
    pub strict: bool,
    /// Folder relative model paths are taken from (mergekit uses the working directory).
    pub base_dir: PathBuf,
    /// Hugging Face cache folder; default from the environment.
    pub hf_cache: Option<PathBuf>,
    /// mergekit's `--allow-crimes`: merge models of different architectures.
    pub allow_crimes: bool,
    /// The caller has just downloaded the config's Hub models (the CLI does, with a progress
    /// bar): resolve them from the cache without asking the Hub a second time.
    pub hub_fetched: bool,
    /// `--unsafe-truncate-embeddings`: without a tokenizer config, vocabulary-indexed tensors of
    /// different sizes keep their common prefix of rows (mergekit 0.1.5).
    pub unsafe_truncate_embeddings: bool,
    /// mergekit's `--lora-merge-dtype`: the dtype a `model+adapter` model is loaded in for the
    /// LoRA merge (default: the model's config dtype, as transformers' `dtype="auto"`).
    pub lora_merge_dtype: Option<DType>,
}

/// A normalized output slice: what mergekit turns both `models:` and `slices:` into.
struct NSlice {
    sources: Vec<(usize, (usize, usize), Parameters)>,
    base: Option<usize>,
    params: Parameters,
    /// `modules.default.parameters`, in `modules:` syntax (between slice and global scopes).
    module_params: Option<Parameters>,
    /// linear without any weight: the 1/N fallback, if enabled.
    fallback_weight: Option<f64>,
}

/// One output module. mergekit plans each on its own: its pre weights, its slices' layers
/// (numbered from 0 in the module), its post weights.
struct ModuleOut {
    /// Where its slices are in the config, for error paths.
    at: String,
    /// A multi-module architecture's definition of the module (weight prefix, layer-count key,
    /// weights); `None` for the one module of the others (the model's template, or inference).
    template: Option<&'static ModuleTemplate>,
    slices: Vec<NSlice>,
    /// Written as `slices:`: mergekit then sets the module's layer count in config.json.
    from_slices: bool,
}

fn parse_dtype(key: &'static str, s: &Option<String>) -> Result<Option<DType>> {
    let Some(s) = s else { return Ok(None) };
    match DType::from_mergekit(s) {
        Some(d) => Ok(Some(d)),
        None => Err(EngineError::UnknownDtype {
            key,
            name: s.clone(),
        }),
    }
}

struct Planner<'a> {
    loaded: &'a LoadedConfig,
    opts: &'a PlanOptions,
    method: Arc<dyn MergeMethod>,
    models: Vec<Model>,
    by_ref: HashMap<ModelRef, usize>,
    warnings: Vec<String>,
    ops: Vec<Op>,
    config_dtype: Option<DType>,
    config_out_dtype: Option<DType>,
    layer_index: Vec<HashMap<usize, Vec<(String, String)>>>,
    /// mergekit's definition of each model's architecture, when known.
    known: Vec<Option<arch::Known>>,
    /// The output vocabulary, with a tokenizer config.
    vocab: Option<crate::vocab::Vocab>,
    /// Tied names of the modules' weights (prefixed): read when a model lacks the weight.
    tied: HashMap<String, Vec<String>>,
}

impl<'a> Planner<'a> {
    fn model(&mut self, r: &ModelRef) -> Result<usize> {
        if let Some(&i) = self.by_ref.get(r) {
            return Ok(i);
        }
        let cache = self
            .opts
            .hf_cache
            .clone()
            .unwrap_or_else(amalgam_io::hub::cache_dir);
        let dir = amalgam_io::download::resolve_or_download(
            &r.path,
            r.revision.as_deref(),
            &self.opts.base_dir,
            &cache,
            &{
                let mut hub = amalgam_io::download::HubOptions::from_env();
                hub.offline |= self.opts.hub_fetched;
                hub
            },
        )?;
        let folder = ModelFolder::open(&dir)?;
        let mut config = crate::model_config::read_config(&folder)?;
        // mergekit reads the model's config with `architectures` replaced: its architecture
        // (template, the --allow-crimes check) and, for the donor, the output config.json.
        if let (Some(a), Some(obj)) = (
            &r.override_architecture,
            config.as_mut().and_then(|c| c.as_object_mut()),
        ) {
            obj.insert(
                "architectures".into(),
                serde_json::Value::Array(vec![serde_json::Value::String(a.clone())]),
            );
        }
        // mergekit 0.1.5 reads a Mixtral checkpoint in the fused expert layout whatever its
        // on-disk layout (see `crate::moe`).
        let mixtral = crate::model_config::model_type(config.as_ref()) == Some("mixtral");
        let source = match r.expert {
            Some(k) => Source::expert(folder, k)?,
            None if mixtral => Source::moe_folder(folder)?,
            None => Source::folder(folder),
        };
        let source = match &r.lora {
            Some(l) => self.with_lora(source, l, config.as_ref())?,
            None => source,
        };
        let mut index: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        for n in source.names() {
            if let Some((p, i, s)) = arch::split_layer(n) {
                index
                    .entry(i)
                    .or_default()
                    .push((p.to_string(), s.to_string()));
            }
        }
        // mergekit's template order (it numbers tasks in that order, which breaks scheduling
        // ties); unknown architectures keep checkpoint order, as mergekit's inference does.
        // An expert view is a dense Mistral whatever its checkpoint says.
        let arch_name = if source.is_expert_view() {
            Some("MistralForCausalLM")
        } else {
            arch::architecture_of(config.as_ref())
        };
        if self.opts.compat == Compat::V0_0_4_2 && arch_name.is_some_and(|a| a.contains("Mixtral"))
        {
            return Err(EngineError::Unsupported {
                path: r.to_string(),
                key: "merging Mixtral (mixture-of-experts) checkpoints with --mergekit-version \
                      0.0.4.2"
                    .into(),
                advice: "merge them with mergekit 0.1.5 behaviour (the default), or merge their \
                         experts as dense Mistral models with `#expert=K` references"
                    .into(),
            });
        }
        // A known architecture's layers are exactly its template: every listed tensor is
        // required (a missing one fails planning with mergekit's message), others are ignored.
        let known = arch::known(config.as_ref(), source.is_expert_view());
        let modular = arch::module_templates(config.as_ref(), source.is_expert_view()).is_some();
        if let (None, Some(a), false) = (&known, arch_name, modular) {
            let w = format!(
                "{}: architecture {} has no mergekit decoder definition amalgam plans from; its \
                 tensors are inferred from the checkpoint's names",
                r,
                amalgam_io::display::safe(a)
            );
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        if let Some(k) = &known {
            for v in index.values_mut() {
                let prefix = v
                    .first()
                    .map_or_else(|| "model.layers.".to_string(), |(p, _)| p.clone());
                *v = k
                    .layer
                    .iter()
                    .map(|s| (prefix.clone(), s.to_string()))
                    .collect();
            }
        }
        self.layer_index.push(index);
        self.known.push(known);
        let i = self.models.len();
        self.models.push(Model {
            reference: r.clone(),
            label: r.to_string(),
            source,
            config,
        });
        self.by_ref.insert(r.clone(), i);
        Ok(i)
    }

    /// `modules: {default: ...}` names the one module of a single-module architecture; a
    /// multi-module one (a VLM) has no module `default` in mergekit 0.1.5 (which stops there),
    /// and amalgam does not plan its modules yet.
    fn check_single_module(&self) -> Result<()> {
        for m in &self.models {
            let Some(modules) = arch::modules_of(m.config.as_ref(), m.source.is_expert_view())
            else {
                continue;
            };
            return Err(EngineError::Unsupported {
                path: format!("modules.{}", amalgam_config::DEFAULT_MODULE),
                key: format!(
                    "modules of the multi-module architecture {} (model {})",
                    amalgam_io::display::safe(
                        arch::architecture_of(m.config.as_ref()).unwrap_or("?")
                    ),
                    m.label
                ),
                advice: format!(
                    "mergekit 0.1.5 names its modules {} and has no module `default` for it",
                    modules.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Resolves (downloading if needed) adapter `l` of a `model+adapter` reference and applies
    /// it to `source`, in the dtype mergekit loads the model in for peft's merge:
    /// `--lora-merge-dtype`, else the config's `dtype` (`torch_dtype`), else the checkpoint's
    /// first float tensor's, as transformers' `dtype="auto"` chooses.
    fn with_lora(
        &self,
        source: Source,
        l: &amalgam_config::ModelPath,
        config: Option<&serde_json::Value>,
    ) -> Result<Source> {
        let cache = self
            .opts
            .hf_cache
            .clone()
            .unwrap_or_else(amalgam_io::hub::cache_dir);
        let dir = amalgam_io::download::resolve_or_download_as(
            &l.path,
            l.revision.as_deref(),
            &self.opts.base_dir,
            &cache,
            &{
                let mut hub = amalgam_io::download::HubOptions::from_env();
                hub.offline |= self.opts.hub_fetched;
                hub
            },
            amalgam_io::download::Files::Adapter,
        )?;
        let adapter = amalgam_io::lora::LoraAdapter::open(&dir)?;
        let from_config = config.and_then(|c| {
            c.get("dtype")
                .or_else(|| c.get("torch_dtype"))
                .and_then(|d| d.as_str())
                .and_then(DType::from_mergekit)
        });
        let first_float = || {
            source
                .names()
                .iter()
                .filter_map(|n| source.get(n))
                .map(|t| t.dtype)
                .find(|d| d.is_float())
        };
        let dtype = self
            .opts
            .lora_merge_dtype
            .or(from_config)
            .or_else(first_float)
            .unwrap_or(DType::F32);
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(EngineError::Unsupported {
                path: format!("{}+{}", source.path().display(), l),
                key: format!("a LoRA merge in {dtype}"),
                advice: "pass --lora-merge-dtype float32, bfloat16 or float16".into(),
            });
        }
        let conv1d = config
            .and_then(|c| c.get("model_type"))
            .and_then(|t| t.as_str())
            == Some("gpt2");
        source.with_lora(adapter, dtype, conv1d)
    }

    fn num_layers(&self, m: usize) -> usize {
        let model = &self.models[m];
        if let Some((_, n)) = model.config.as_ref().and_then(arch::num_layers_from_config) {
            // An expert view keeps the Mixtral's layer count.
            return n;
        }
        // Saturating: a hostile checkpoint may name layer `usize::MAX`; planning then stops at
        // the first missing layer with an error instead of overflowing here.
        self.layer_index[m]
            .keys()
            .max()
            .map_or(0, |&k| k.saturating_add(1))
    }

    /// A model's layer count in module `t` (mergekit: the module's fixed count, else the
    /// config.json value at the module's key); the model's own count for the single module.
    fn module_num_layers(&self, m: usize, t: Option<&ModuleTemplate>) -> Result<usize> {
        let Some(t) = t else {
            return Ok(self.num_layers(m));
        };
        if let Some(n) = t.override_num_layers {
            return Ok(n);
        }
        let key = t.num_layers_key.unwrap_or("num_hidden_layers");
        self.models[m]
            .config
            .as_ref()
            .and_then(|c| arch::config_path(c, key))
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| EngineError::ModuleLayerCount {
                model: self.models[m].label.clone(),
                module: t.module.to_string(),
                key: key.to_string(),
            })
    }

    /// One module's `models:` or `slices:` as mergekit normalizes them: `models:` become one
    /// slice over every layer of each model (the base model added when not listed).
    fn module_slices(
        &mut self,
        models: Option<&[amalgam_config::InputModel]>,
        slices: Option<&[amalgam_config::OutputSlice]>,
        module_params: Option<&Parameters>,
        global_base: Option<usize>,
        t: Option<&'static ModuleTemplate>,
    ) -> Result<Vec<NSlice>> {
        let mut out = Vec::new();
        match (models, slices) {
            (Some(models), None) => {
                let mut sources = Vec::new();
                for m in models {
                    let i = self.model(&m.model)?;
                    let n = self.module_num_layers(i, t)?;
                    sources.push((i, (0, n), m.parameters.clone()));
                }
                if let Some(b) = global_base {
                    if !sources.iter().any(|s| s.0 == b) {
                        let n = self.module_num_layers(b, t)?;
                        sources.push((b, (0, n), Parameters::new()));
                    }
                }
                out.push(NSlice {
                    fallback_weight: None,
                    sources,
                    base: global_base,
                    params: Parameters::new(),
                    module_params: module_params.cloned(),
                });
            }
            (None, Some(slices)) => {
                for s in slices {
                    let mut sources = Vec::new();
                    for src in &s.sources {
                        let i = self.model(&src.model)?;
                        sources.push((i, src.layer_range, src.parameters.clone()));
                    }
                    let base = match &s.base_model {
                        Some(b) => Some(self.model(b)?),
                        None => global_base,
                    };
                    out.push(NSlice {
                        fallback_weight: None,
                        sources,
                        base,
                        params: s.parameters.clone(),
                        module_params: module_params.cloned(),
                    });
                }
            }
            _ => {
                return Err(EngineError::NoSlices(
                    "Exactly one of 'models', 'slices', or 'modules' must be present",
                ))
            }
        }
        Ok(out)
    }

    /// The modules of the merge's architecture (the global base model's, else the first
    /// model's), when it is a multi-module one amalgam plans.
    fn arch_modules(&self, arch_model: usize) -> Option<Vec<&'static ModuleTemplate>> {
        let m = &self.models[arch_model];
        arch::module_templates(m.config.as_ref(), m.source.is_expert_view())
    }

    /// The named modules of a multi-module architecture (`modules: {text_decoder: ...}`),
    /// checked against mergekit's definition of the merge's architecture.
    fn named_modules(
        &mut self,
        named: &[(String, amalgam_config::OutputModule)],
        global_base: Option<usize>,
    ) -> Result<Vec<ModuleOut>> {
        // Every model first: the architecture is the base model's, else the first listed.
        let mut first = global_base;
        for (_, m) in named {
            for r in m.models.iter().flatten().map(|x| &x.model).chain(
                m.slices
                    .iter()
                    .flatten()
                    .flat_map(|s| s.sources.iter().map(|x| &x.model).chain(&s.base_model)),
            ) {
                let i = self.model(r)?;
                first.get_or_insert(i);
            }
        }
        let Some(arch_model) = first else {
            return Err(EngineError::NoSlices(
                "the modules: section has no input models",
            ));
        };
        let label = self.models[arch_model].label.clone();
        let arch_name = amalgam_io::display::safe(
            arch::architecture_of(self.models[arch_model].config.as_ref()).unwrap_or("?"),
        )
        .to_string();
        let Some(templates) = self.arch_modules(arch_model) else {
            let m = &self.models[arch_model];
            // The first module that is not the architecture's one module `default`.
            let path = named
                .iter()
                .map(|(n, _)| n)
                .find(|n| *n != amalgam_config::DEFAULT_MODULE)
                .or(named.first().map(|(n, _)| n))
                .map_or_else(|| "modules".to_string(), |n| format!("modules.{n}"));
            return Err(
                match arch::modules_of(m.config.as_ref(), m.source.is_expert_view()) {
                    // A multi-module architecture whose weights amalgam's templates cannot say.
                    Some(names) => EngineError::Unsupported {
                        path,
                        key: format!(
                            "modules of the multi-module architecture {arch_name} (model {label})"
                        ),
                        advice: format!(
                            "amalgam plans the modules of {} only; mergekit 0.1.5 names this \
                             one's {}",
                            planned_modular().join(", "),
                            names.join(", ")
                        ),
                    },
                    // mergekit: KeyError on the module name.
                    None => EngineError::UnknownModule {
                        path,
                        arch: arch_name,
                        model: label,
                        known: amalgam_config::DEFAULT_MODULE.to_string(),
                    },
                },
            );
        };
        let names: Vec<&str> = templates.iter().map(|t| t.module).collect();
        if let Some((path, _)) = named.iter().find(|(n, _)| !names.contains(&n.as_str())) {
            return Err(EngineError::UnknownModule {
                path: format!("modules.{path}"),
                arch: arch_name,
                model: label,
                known: names.join(", "),
            });
        }
        // mergekit writes only the modules named; the others' tensors are missing from its
        // output, which then does not load: refused here rather than written incomplete.
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !named.iter().any(|(m, _)| m == n))
            .collect();
        if !missing.is_empty() {
            return Err(EngineError::Unsupported {
                path: "modules".into(),
                key: format!(
                    "a modules: section without module(s) {} of {arch_name}",
                    missing.join(", ")
                ),
                advice: format!(
                    "mergekit 0.1.5 leaves their tensors out of the merge, so the output does \
                     not load as a {arch_name}; name every module ({}), for example with \
                     `models:` listing one model to keep its weights",
                    names.join(", ")
                ),
            });
        }
        let mut out = Vec::new();
        for (name, m) in named {
            let Some(&t) = templates.iter().find(|t| t.module == name) else {
                continue;
            };
            let slices = self.module_slices(
                m.models.as_deref(),
                m.slices.as_deref(),
                Some(&m.parameters),
                global_base,
                Some(t),
            )?;
            out.push(ModuleOut {
                at: format!("modules.{name}.slices"),
                template: Some(t),
                slices,
                from_slices: m.slices.is_some(),
            });
        }
        Ok(out)
    }

    fn normalize(&mut self) -> Result<Vec<ModuleOut>> {
        let cfg = &self.loaded.config;
        let global_base = match &cfg.base_model {
            Some(b) => Some(self.model(b)?),
            None => None,
        };
        let uniform_fallback = if self.opts.strict {
            None
        } else {
            amalgam_config::uniform_fallback(cfg, self.method.info())
        };
        let form = output_form(cfg);
        let mut out = match form.named {
            Some(named) => self.named_modules(named, global_base)?,
            None => {
                let slices = self.module_slices(
                    form.models,
                    form.slices,
                    form.module_params,
                    global_base,
                    None,
                )?;
                if form.module_params.is_some() {
                    self.check_single_module()?;
                }
                let arch_model =
                    global_base.or_else(|| slices.first()?.sources.first().map(|x| x.0));
                match arch_model.and_then(|m| self.arch_modules(m)) {
                    // Top-level `models:` on a multi-module architecture: mergekit merges every
                    // module with those models.
                    Some(templates) if form.module_params.is_none() && form.models.is_some() => {
                        let mut out = Vec::new();
                        for t in templates {
                            let slices =
                                self.module_slices(form.models, None, None, global_base, Some(t))?;
                            out.push(ModuleOut {
                                at: format!("modules.{}.slices", t.module),
                                template: Some(t),
                                slices,
                                from_slices: false,
                            });
                        }
                        out
                    }
                    Some(templates) if form.module_params.is_none() => {
                        return Err(EngineError::MultiModuleSlices {
                            modules: templates
                                .iter()
                                .map(|t| t.module)
                                .collect::<Vec<_>>()
                                .join(", "),
                        })
                    }
                    _ => vec![ModuleOut {
                        at: form.at.to_string(),
                        template: None,
                        slices,
                        from_slices: form.slices.is_some(),
                    }],
                }
            }
        };
        for t in out.iter().filter_map(|m| m.template) {
            for (name, _, tied) in t.pre.iter().chain(t.post) {
                if !tied.is_empty() {
                    self.tied.insert(
                        format!("{}{name}", t.weight_prefix),
                        tied.iter()
                            .map(|x| format!("{}{x}", t.weight_prefix))
                            .collect(),
                    );
                }
            }
        }
        if let Some(w) = uniform_fallback {
            for s in out.iter_mut().flat_map(|m| &mut m.slices) {
                s.fallback_weight = Some(1.0 / s.sources.len() as f64);
            }
            self.warnings.push(w.message);
        }
        Ok(out)
    }

    /// Plans one output tensor from `inputs` (model, input name) of slice `s` at position `t`.
    fn plan_tensor(
        &mut self,
        out_name: String,
        inputs: Vec<(usize, String)>,
        s: &NSlice,
        t: f64,
    ) -> Result<()> {
        let info = self.method.info().clone();
        // Resolve tied names (lm_head <- embed_tokens) and check presence.
        let mut resolved = Vec::with_capacity(inputs.len());
        for (m, name) in inputs {
            let src = &self.models[m].source;
            let name = if src.has(&name) {
                name
            } else if let Some(tied) = self
                .tied
                .get(&name)
                .and_then(|ts| ts.iter().find(|t| src.has(t)))
            {
                tied.to_string()
            } else if let Some(tied) = arch::tied_name(&name).filter(|t| src.has(t)) {
                tied.to_string()
            } else {
                return Err(EngineError::MissingTensor {
                    tensor: name,
                    model: self.models[m].label.clone(),
                    path: src.path().to_path_buf(),
                });
            };
            resolved.push((m, name));
        }
        // Shapes and dtypes.
        let mut shapes = Vec::new();
        let mut dtypes = Vec::new();
        for (m, name) in &resolved {
            let raw = self.models[*m]
                .source
                .require(name, &self.models[*m].label)?;
            shapes.push(raw.shape.to_vec());
            dtypes.push(raw.view_dtype);
        }
        // The callers always pass the slice's sources, which `plan` has checked are not empty;
        // this keeps a future caller from indexing into nothing.
        let (Some(shape0), Some(&dtype0)) = (shapes.first().cloned(), dtypes.first()) else {
            return Err(EngineError::NoSlices(
                "a tensor was planned with no input model",
            ));
        };
        // Checked here so that no later size computation (shard layout, work items) can
        // overflow: only an expert view's derived shapes are not already bounded by a file.
        // Vocabulary alignment (or truncation) before the method sees the tensors, so the
        // aligned shape is the op's shape and no mismatch remains.
        let mut shape0 = shape0;
        let mut align = None;
        let differ = shapes.iter().any(|s| s != &shape0);
        // Vocabulary-indexed as the merge's architecture says (the slice's base model, else
        // its first input: mergekit reads one architecture for the whole merge).
        let arch_model = &self.models[s.base.unwrap_or(resolved[0].0)];
        let vocab_axis = crate::vocab::vocab_axis(
            arch_model.config.as_ref(),
            arch_model.source.is_expert_view(),
            &out_name,
        );
        if let Some(axis) = vocab_axis
            .filter(|_| self.vocab.is_some() || (self.opts.unsafe_truncate_embeddings && differ))
        {
            crate::vocab::check_vocab_axis(&out_name, axis)?;
            let tuples: Vec<String> = shapes.iter().map(|s| format!("{s:?}")).collect();
            if shapes.iter().any(|s| s.is_empty() || s[1..] != shape0[1..]) {
                return Err(EngineError::VocabAlign {
                    tensor: out_name,
                    reason: format!(
                        "Non-vocabulary dimensions must match (vocabulary_axis=0): {}",
                        tuples.join(", ")
                    ),
                });
            }
            if shapes.iter().any(|s| s[0] == 0) {
                return Err(EngineError::VocabAlign {
                    tensor: out_name,
                    reason: format!("Empty vocabulary: {}", tuples.join(", ")),
                });
            }
            let row_len: usize = shape0[1..].iter().product();
            let input_rows: Vec<usize> = shapes.iter().map(|s| s[0]).collect();
            let a = match &self.vocab {
                Some(v) => {
                    let models: Vec<usize> = resolved.iter().map(|(m, _)| *m).collect();
                    let labels = |m: usize| self.models[m].label.clone();
                    let a = v.align(&out_name, &models, &input_rows, row_len, s.base, &labels)?;
                    shape0[0] = v.rows();
                    a
                }
                None => {
                    let a = crate::vocab::truncation(&input_rows, row_len);
                    shape0[0] = a.real_rows;
                    self.warnings.push(format!(
                        "UNSAFE vocabulary truncation for {out_name}: {} -> {:?} \
                         (vocabulary_axis=0). Discarding trailing token slices; this assumes \
                         identical token IDs in the retained prefix and can corrupt the model \
                         otherwise. Use tokenizer configuration (e.g. tokenizer: {{source: base}}) \
                         instead.",
                        tuples.join(", "),
                        shape0
                    ));
                    a
                }
            };
            align = Some(Arc::new(a));
        }
        if shape0
            .iter()
            .try_fold(dtype0.size(), |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(EngineError::TooLarge {
                tensor: out_name,
                shape: shape0,
            });
        }
        if align.is_none() && shapes.iter().any(|s| s != &shape0) {
            let list: Vec<String> = shapes
                .iter()
                .zip(&resolved)
                .map(|(s, (m, _))| format!("{} {:?}", self.models[*m].label, s))
                .collect();
            // mergekit 0.1.5's hint for a vocabulary-indexed tensor.
            let hint = if vocab_axis.is_some() {
                ". Align vocabulary axes with tokenizer configuration before merging (for \
                 example, tokenizer: {source: base}); other dimensions must already match."
            } else {
                ""
            };
            return Err(EngineError::ShapeMismatch {
                tensor: out_name,
                shapes: list,
                hint,
            });
        }
        let float = dtypes.iter().all(|d| d.is_float());
        let work_dtype = if !float {
            dtype0
        } else if let Some(d) = self.config_dtype {
            d
        } else {
            dtypes.iter().copied().fold(dtype0, promote)
        };
        if float && work_dtype == DType::F64 {
            // f64 arithmetic runs through `MergeMethod::merge_f64` on plain reads of the
            // inputs; the methods without it, and the inputs that need f32-valued preparation
            // (vocabulary alignment, a LoRA merged in), are refused before anything is written.
            let name = self.method.info().name;
            let reason = if !self.method.supports_f64(self.opts.compat, resolved.len()) {
                Some(format!(
                    "float64 arithmetic of merge_method {name} (mergekit {}, {} input models) is \
                     not supported yet (the inputs are float64 or dtype: float64 is set; set \
                     dtype: float32 to merge in f32, and out_dtype: float64 to write float64)",
                    self.opts.compat,
                    resolved.len()
                ))
            } else if align.is_some() {
                Some(
                    "float64 arithmetic with vocabulary alignment (tokenizer:) is not supported \
                     yet; set dtype: float32"
                        .to_string(),
                )
            } else if resolved
                .iter()
                .any(|(m, _)| self.models[*m].source.lora().is_some())
            {
                Some(
                    "float64 arithmetic of a model with a LoRA adapter (+lora) is not supported \
                     yet; set dtype: float32"
                        .to_string(),
                )
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(EngineError::WorkDtype {
                    tensor: out_name,
                    reason,
                });
            }
        }
        if float
            && !matches!(
                work_dtype,
                DType::F16 | DType::BF16 | DType::F32 | DType::F64
            )
        {
            return Err(EngineError::WorkDtype {
                tensor: out_name,
                reason: format!(
                    "merging in {work_dtype} is not supported; use dtype: bfloat16, float16, float32 or float64"
                ),
            });
        }
        let out_dtype = if float {
            self.config_out_dtype
                .unwrap_or_else(|| self.method.output_dtype(work_dtype))
        } else {
            work_dtype
        };
        // Parameters, through the resolver tested against mergekit's; declared defaults fill
        // what no scope gives, so the method finds every parameter it declares.
        let global = &self.loaded.config.parameters;
        let slice_scopes = ParamScopes {
            sources: Vec::new(),
            slice: Some(&s.params),
            module: s.module_params.as_ref(),
            global: Some(global),
            per_model: false,
        };
        let mut shared = ParamValues::new();
        for p in info.params.iter().filter(|p| p.scope == ParamScope::Shared) {
            let v = resolve(&slice_scopes, p, &out_name, &out_name, t)?.or(p.default);
            let v = v.ok_or_else(|| EngineError::MissingParam {
                param: p.name.to_string(),
                model: None,
                tensor: out_name.clone(),
            })?;
            shared.insert(p.name.to_string(), v);
        }
        let base_in_inputs = s
            .base
            .and_then(|b| resolved.iter().position(|(m, _)| *m == b));
        // A base the method ignores is an ordinary input, for its parameters too.
        let method_base = if info.contract.base == BaseRule::Ignored {
            None
        } else {
            base_in_inputs
        };
        let mut per_input = Vec::new();
        for (j, (m, name)) in resolved.iter().enumerate() {
            let scopes = ParamScopes {
                sources: s
                    .sources
                    .iter()
                    .filter(|x| x.0 == *m)
                    .map(|x| &x.2)
                    .collect(),
                per_model: true,
                ..slice_scopes.clone()
            };
            let mut values = ParamValues::new();
            let is_base = method_base == Some(j);
            for p in info
                .params
                .iter()
                .filter(|p| MethodInfo::binds(p, is_base, self.opts.compat))
            {
                let fallback = s
                    .fallback_weight
                    .filter(|_| info.uniform_fallback == Some(p.name))
                    .map(Value::Float);
                let v = resolve(&scopes, p, name, &out_name, t)?
                    .or(p.default)
                    .or(fallback)
                    .ok_or_else(|| EngineError::MissingParam {
                        param: p.name.to_string(),
                        model: Some(self.models[*m].label.clone()),
                        tensor: name.clone(),
                    })?;
                values.insert(p.name.to_string(), v);
            }
            per_input.push(values);
        }
        let label = resolved
            .iter()
            .map(|(_, n)| n.as_str())
            .max()
            .unwrap_or("")
            .to_string();
        self.ops.push(Op {
            out_name,
            inputs: resolved
                .into_iter()
                .map(|(model, name)| OpInput { model, name })
                .collect(),
            base: method_base,
            shared,
            per_input,
            shape: shape0,
            work_dtype,
            out_dtype,
            float,
            label,
            align,
        });
        Ok(())
    }

    /// Non-layer tensor names of the given models, in first-seen order.
    fn non_layer_names(&self, models: &[usize], post: bool) -> Vec<String> {
        // A known architecture lists them; an optional one is planned only if some input has it.
        if let Some(Some(k)) = models.first().map(|&m| &self.known[m]) {
            return if post {
                k.post
                    .iter()
                    .filter(|(n, optional)| {
                        !optional || models.iter().any(|&m| self.models[m].source.has(n))
                    })
                    .map(|(n, _)| n.to_string())
                    .collect()
            } else {
                k.pre
                    .iter()
                    .filter(|(n, optional)| {
                        !optional || models.iter().any(|&m| self.models[m].source.has(n))
                    })
                    .map(|(n, _)| n.to_string())
                    .collect()
            };
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for &m in models {
            for n in self.models[m].source.names() {
                if arch::split_layer(n).is_none()
                    && arch::is_post_weight(n) == post
                    && seen.insert(n.clone())
                {
                    out.push(n.clone());
                }
            }
        }
        // As in mergekit's usual templates, the final norm comes before the LM head.
        if post {
            out.sort_by_key(|n| n.starts_with("lm_head"));
        }
        out
    }
}

/// mergekit's architecture check: when every model's architecture has a mergekit definition
/// and they are not all the same one, the merge needs `--allow-crimes`. A model mergekit has
/// no definition for sends it to inference instead, with no check; so here.
fn check_one_architecture(models: &[Model]) -> Result<()> {
    let defs: Vec<Option<&'static str>> = models
        .iter()
        .map(|m| arch::mergekit_definition(m.config.as_ref(), m.source.is_expert_view()))
        .collect();
    let Some(Some(first)) = defs.first() else {
        return Ok(());
    };
    if defs.iter().all(Option::is_some) && defs.iter().any(|d| d != &Some(*first)) {
        let archs = models
            .iter()
            .map(|m| {
                let a = if m.source.is_expert_view() {
                    "MistralForCausalLM"
                } else {
                    arch::architecture_of(m.config.as_ref()).unwrap_or("?")
                };
                format!("{} is {}", m.label, amalgam_io::display::safe(a))
            })
            .collect();
        return Err(EngineError::MixedArchitectures { archs });
    }
    Ok(())
}

/// What a config merges: its `models:` or `slices:`, written at the top level or as the single
/// module `default` (`modules: {default: ...}`, which mergekit plans exactly as the top-level
/// form, with the module's `parameters` as one more scope); or the named modules of a
/// multi-module architecture (`named`).
struct OutputForm<'c> {
    models: Option<&'c [amalgam_config::InputModel]>,
    slices: Option<&'c [amalgam_config::OutputSlice]>,
    module_params: Option<&'c Parameters>,
    /// Where the slices are, for error paths.
    at: &'static str,
    named: Option<&'c [(String, amalgam_config::OutputModule)]>,
}

fn output_form(cfg: &amalgam_config::MergeConfig) -> OutputForm<'_> {
    let Some(modules) = &cfg.modules else {
        return OutputForm {
            models: cfg.models.as_deref(),
            slices: cfg.slices.as_deref(),
            module_params: None,
            at: "slices",
            named: None,
        };
    };
    match modules.as_slice() {
        [(name, m)]
            if name == amalgam_config::DEFAULT_MODULE
                && cfg.models.is_none()
                && cfg.slices.is_none() =>
        {
            OutputForm {
                models: m.models.as_deref(),
                slices: m.slices.as_deref(),
                module_params: Some(&m.parameters),
                at: "modules.default.slices",
                named: None,
            }
        }
        named => OutputForm {
            models: None,
            slices: None,
            module_params: None,
            at: "modules",
            named: Some(named),
        },
    }
}

/// The multi-module architectures amalgam plans (their first class names), for messages.
fn planned_modular() -> Vec<&'static str> {
    let mut defs: Vec<&'static str> = crate::mergekit_archs::MERGEKIT_MODULE_TEMPLATES
        .iter()
        .map(|t| t.definition.split('/').next().unwrap_or(t.definition))
        .collect();
    defs.dedup();
    defs
}

/// One parameter through [`amalgam_config::resolve_value`], its coercion error named.
fn resolve(
    scopes: &ParamScopes,
    p: &amalgam_methods::ParamSpec,
    input_tensor: &str,
    output_tensor: &str,
    t: f64,
) -> Result<Option<Value>> {
    amalgam_config::resolve_value(scopes, p, input_tensor, output_tensor, t).map_err(|source| {
        EngineError::ParamValue {
            param: p.name.to_string(),
            tensor: if scopes.per_model {
                input_tensor
            } else {
                output_tensor
            }
            .to_string(),
            source: Box::new(source),
        }
    })
}

/// PyTorch's type promotion for the float dtypes mergekit meets (bf16 + f16 -> f32).
fn promote(a: DType, b: DType) -> DType {
    use DType::*;
    match (a, b) {
        (x, y) if x == y => x,
        (F64, _) | (_, F64) => F64,
        (F32, _) | (_, F32) => F32,
        (BF16, F16) | (F16, BF16) => F32,
        (x, _) => x,
    }
}

/// Builds and validates the plan for a config.
pub fn plan(loaded: &LoadedConfig, registry: &Registry, opts: &PlanOptions) -> Result<Plan> {
    let cfg = &loaded.config;
    let method =
        registry
            .get(&cfg.merge_method)
            .cloned()
            .ok_or_else(|| EngineError::UnknownMethod {
                method: cfg.merge_method.clone(),
                known: registry.names().join(", "),
            })?;
    // Lists the parser refuses when empty, but a `MergeConfig` built by hand may have: said as
    // such rather than as a contract violation of an empty slice.
    let form = output_form(cfg);
    // Error paths name the slices where the config writes them.
    let at = form.at;
    match (form.models, form.slices) {
        (Some([]), None) => {
            return Err(EngineError::EmptySlice {
                at: at.into(),
                slice: 0,
            })
        }
        (None, Some(s)) => {
            if s.is_empty() {
                return Err(EngineError::NoSlices(
                    "the config has no slices: give a non-empty `models:` or `slices:` list",
                ));
            }
            if let Some(i) = s.iter().position(|s| s.sources.is_empty()) {
                return Err(EngineError::EmptySlice {
                    at: at.into(),
                    slice: i,
                });
            }
        }
        _ => {}
    }
    // The config against the method's schema, exactly as `amalgam validate` checks it, before
    // any model is opened: a contract, parameter or version problem, or a feature amalgam does
    // not implement yet, costs no I/O.
    let errors: Vec<_> =
        amalgam_config::validate(loaded, &registry.infos(), opts.strict, opts.compat)
            .into_iter()
            .filter(|d| d.severity.refuses())
            .collect();
    if !errors.is_empty() {
        return Err(amalgam_config::ConfigError::Invalid {
            file: loaded.path.clone(),
            diagnostics: errors,
        }
        .into());
    }
    let config_dtype = parse_dtype("dtype", &cfg.dtype)?;
    let config_out_dtype = parse_dtype("out_dtype", &cfg.out_dtype)?;
    let mut p = Planner {
        loaded,
        opts,
        method,
        models: Vec::new(),
        by_ref: HashMap::new(),
        warnings: Vec::new(),
        ops: Vec::new(),
        config_dtype,
        config_out_dtype,
        layer_index: Vec::new(),
        known: Vec::new(),
        vocab: None,
        tied: HashMap::new(),
    };
    let modules = p.normalize()?;
    if !opts.allow_crimes {
        check_one_architecture(&p.models)?;
    }
    let Some(first_module) = modules.first() else {
        return Err(EngineError::NoSlices("the config has no modules to merge"));
    };
    let tokenizer = plan_tokenizer(&mut p, &first_module.slices)?;
    let first_models: Vec<usize> = first_module
        .slices
        .first()
        .map(|s| s.sources.iter().map(|x| x.0).collect())
        .unwrap_or_default();
    let mut num_layers = None;
    let mut module_layers = Vec::new();
    for module in &modules {
        let out_layer = plan_module(&mut p, module, opts)?;
        match module.template {
            // mergekit 0.1.5 sets the layer count for `slices:`, top-level or in the `default`
            // module...
            None if module.from_slices => num_layers = Some(out_layer),
            None => {}
            // ...and, for a module of a multi-module architecture written as `slices:`, at the
            // module's key (`text_config.num_hidden_layers`).
            Some(t) if module.from_slices => {
                if let Some(key) = t.num_layers_key {
                    module_layers.push((key, out_layer));
                }
            }
            Some(_) => {}
        }
    }
    let base_model = match &cfg.base_model {
        Some(b) => p.by_ref.get(b).copied(),
        None => None,
    };
    let donor = match (base_model, first_models.first()) {
        (Some(b), _) => b,
        (None, Some(&m)) => m,
        (None, None) => {
            return Err(EngineError::NoSlices(
                "slices[0] has no source model to take config.json from",
            ))
        }
    };
    if p.models[donor].config.is_none() {
        p.warnings.push(format!(
            "model {} has no config.json, so the output has none either (transformers cannot \
             load it; mergekit refuses such a model)",
            p.models[donor].label
        ));
    }
    let mut ops = std::mem::take(&mut p.ops);
    match opts.compat {
        // Replays mergekit's scheduler: sorted by label, ties as its task graph breaks them.
        Compat::V0_1_5 => crate::order::sort(&mut ops),
        Compat::V0_0_4_2 => crate::legacy_order::sort(&mut ops, &p.models),
    }
    // The merge's architecture is the base model's, else the first model's (as the donor).
    let tagalong = {
        let m = &p.models[donor];
        arch::tagalong_files(m.config.as_ref(), m.source.is_expert_view())
    };
    // mergekit warns and keeps the donor's value when the key's parent is not in its config.
    module_layers.retain(|(key, _)| {
        let parent = key.rsplit_once('.').map(|(a, _)| a);
        let ok = match (parent, p.models[donor].config.as_ref()) {
            (Some(parent), Some(c)) => arch::config_path(c, parent).is_some_and(|v| v.is_object()),
            (None, Some(c)) => c.is_object(),
            (_, None) => false,
        };
        if !ok {
            p.warnings.push(format!(
                "Unable to set number of layers ({key}) in output config - you may need to \
                 manually correct it"
            ));
        }
        ok
    });
    Ok(Plan {
        models: p.models,
        ops,
        method: Some(p.method),
        donor,
        base_model,
        num_layers,
        module_layers,
        tagalong,
        config_dtype,
        config_out_dtype,
        compat: opts.compat,
        warnings: p.warnings,
        tokenizer,
    })
}

/// Plans one module: its slices checked (layer ranges, equal lengths), then its pre weights
/// (first slice's models), layers (numbered from 0 in the module) and post weights (last
/// slice's models), as mergekit's `plan_module`. Returns the module's output layer count.
fn plan_module(p: &mut Planner<'_>, module: &ModuleOut, opts: &PlanOptions) -> Result<usize> {
    let at = &module.at;
    let slices = &module.slices;
    let t_module = module.template;
    let (Some(first), Some(last)) = (slices.first(), slices.last()) else {
        return Err(EngineError::NoSlices(
            "the config has no slices: give a non-empty `models:` or `slices:` list",
        ));
    };
    for (i, s) in slices.iter().enumerate() {
        if s.sources.is_empty() {
            return Err(EngineError::EmptySlice {
                at: at.clone(),
                slice: i,
            });
        }
        for (m, (a, b), _) in &s.sources {
            let n = p.module_num_layers(*m, t_module)?;
            if a > b {
                return Err(EngineError::LayerRange {
                    at: at.clone(),
                    slice: i,
                    start: *a,
                    end: *b,
                    problem: format!(
                        "of model {} is reversed: it must be [start, end] with start <= end \
                         (end excluded)",
                        p.models[*m].label
                    ),
                });
            }
            if *b > n {
                return Err(EngineError::LayerRange {
                    at: at.clone(),
                    slice: i,
                    start: *a,
                    end: *b,
                    problem: format!(
                        "is outside model {} which has {n} layers",
                        p.models[*m].label
                    ),
                });
            }
        }
        let lens: Vec<usize> = s
            .sources
            .iter()
            .map(|x| x.1 .1.saturating_sub(x.1 .0))
            .collect();
        if lens.iter().any(|&l| Some(&l) != lens.first()) {
            return Err(EngineError::LayerCounts {
                at: at.clone(),
                slice: i,
                lens,
            });
        }
    }
    let first_models: Vec<usize> = first.sources.iter().map(|x| x.0).collect();
    let last_models: Vec<usize> = last.sources.iter().map(|x| x.0).collect();
    for name in module_non_layer_names(p, t_module, &first_models, false) {
        let inputs = first_models.iter().map(|&m| (m, name.clone())).collect();
        p.plan_tensor(name, inputs, first, 0.0)?;
    }
    let mut out_layer = 0usize;
    for s in slices {
        // Not empty, and start <= end: both checked above.
        let Some(&(m0, (a0, b0), _)) = s.sources.first() else {
            continue;
        };
        let len = b0.saturating_sub(a0);
        for i in 0..len {
            let t = if len > 1 {
                i as f64 / (len - 1) as f64
            } else {
                1.0
            };
            let templates: Vec<(String, String)> = match t_module {
                Some(tm) => tm
                    .layer
                    .iter()
                    .map(|(a, b)| (format!("{}{a}", tm.weight_prefix), b.to_string()))
                    .collect(),
                None => p.layer_index[m0]
                    .get(&(a0 + i))
                    .cloned()
                    .unwrap_or_default(),
            };
            if templates.is_empty() {
                return Err(EngineError::MissingLayer {
                    model: p.models[m0].label.clone(),
                    layer: a0 + i,
                });
            }
            for (prefix, suffix) in templates {
                let inputs = s
                    .sources
                    .iter()
                    .map(|(m, (a, _), _)| (*m, arch::layer_name(&prefix, a + i, &suffix)))
                    .collect();
                p.plan_tensor(arch::layer_name(&prefix, out_layer, &suffix), inputs, s, t)?;
            }
            out_layer += 1;
        }
    }
    // Post-weights see t = 0 in 0.1.5 and t = 1 in 0.0.4.2 (its planner built their config
    // reader with t=1).
    let post_t = if opts.compat == Compat::V0_0_4_2 {
        1.0
    } else {
        0.0
    };
    // mergekit 0.1.5 pairs the last slice's models with the first slice's source list, so only
    // as many of them as the first slice has sources take part (0.0.4.2 used all of them).
    let post_models: Vec<usize> = match opts.compat {
        Compat::V0_1_5 => last_models
            .iter()
            .copied()
            .take(first_models.len())
            .collect(),
        Compat::V0_0_4_2 => last_models.clone(),
    };
    for name in module_non_layer_names(p, t_module, &post_models, true) {
        let inputs = post_models.iter().map(|&m| (m, name.clone())).collect();
        p.plan_tensor(name, inputs, last, post_t)?;
    }
    Ok(out_layer)
}

/// The pre (or post) weights of a module, prefixed, an optional one only when some of `models`
/// has it; the single module's from the model's template or its checkpoint.
fn module_non_layer_names(
    p: &Planner<'_>,
    t: Option<&ModuleTemplate>,
    models: &[usize],
    post: bool,
) -> Vec<String> {
    let Some(t) = t else {
        return p.non_layer_names(models, post);
    };
    let list = if post { t.post } else { t.pre };
    list.iter()
        .map(|(n, optional, _)| (format!("{}{n}", t.weight_prefix), *optional))
        .filter(|(n, optional)| !optional || models.iter().any(|&m| p.models[m].source.has(n)))
        .map(|(n, _)| n)
        .collect()
}

/// The output vocabulary (with `tokenizer_source` / `tokenizer:`) and the output tokenizer
/// files; with only `chat_template`, the donor's tokenizer with that template (mergekit then
/// re-saves the donor's tokenizer instead of copying it).
fn plan_tokenizer(p: &mut Planner<'_>, slices: &[NSlice]) -> Result<Option<TokenizerOut>> {
    let cfg = &p.loaded.config;
    let chat_template = match &cfg.chat_template {
        Some(v) => crate::vocab::resolve_chat_template(v, &p.models)?,
        None => None,
    };
    let (source, tokens, pad) = match (&cfg.tokenizer, &cfg.tokenizer_source) {
        (Some(t), _) => (
            &t.source,
            t.tokens.as_deref().unwrap_or_default(),
            t.pad_to_multiple_of,
        ),
        (None, Some(s)) => (s, &[][..], None),
        (None, None) => {
            let Some(t) = chat_template else {
                return Ok(None);
            };
            // The donor is the base model, else the first model of the first slice.
            let donor = cfg
                .base_model
                .as_ref()
                .and_then(|b| p.by_ref.get(b).copied())
                .or_else(|| slices.first().and_then(|s| s.sources.first()).map(|x| x.0))
                .unwrap_or(0);
            let Some(model) = p.models.get(donor) else {
                return Ok(None);
            };
            let folder = model.source.folder_ref();
            let mut files = Vec::new();
            for f in crate::side::TOKENIZER_FILES {
                if matches!(
                    f,
                    "tokenizer_config.json" | "chat_template.jinja" | "chat_template.json"
                ) {
                    continue;
                }
                if let Some(path) = folder.aux_file(f) {
                    let bytes = std::fs::read(&path).map_err(|e| EngineError::SideFile {
                        path,
                        reason: e.to_string(),
                    })?;
                    files.push((f, bytes));
                }
            }
            files.extend(crate::vocab::tokenizer_config_files(folder, Some(&t))?);
            return Ok(Some(TokenizerOut {
                files,
                vocab_size: None,
            }));
        }
    };
    let base_model = match &cfg.base_model {
        Some(b) => p.by_ref.get(b).copied(),
        None => None,
    };
    // mergekit reads the output tokenizer from a source model that need not be an input.
    let outside = match source {
        amalgam_config::TokenizerSource::Model(r) if !p.by_ref.contains_key(r) => {
            let cache = p
                .opts
                .hf_cache
                .clone()
                .unwrap_or_else(amalgam_io::hub::cache_dir);
            let dir = amalgam_io::hub::resolve_in(
                &r.path,
                r.revision.as_deref(),
                &p.opts.base_dir,
                &cache,
            )?;
            Some((r.to_string(), ModelFolder::open(&dir)?))
        }
        _ => None,
    };
    let vocab = crate::vocab::Vocab::build(
        &p.models,
        &p.by_ref,
        &crate::vocab::VocabConfig {
            source,
            tokens,
            pad_to_multiple_of: pad,
            base_model,
            chat_template,
            outside_source: outside.as_ref().map(|(l, f)| (l.clone(), f)),
        },
    )?;
    p.warnings.extend(vocab.warnings.iter().cloned());
    for t in vocab.missing_everywhere() {
        p.warnings
            .push(format!("Token {t:?} not found in any model"));
    }
    let out = vocab.out.clone();
    p.vocab = Some(vocab);
    Ok(Some(out))
}
