//! Method-aware validation, the features amalgam refuses at merge time, and the uniform-weight
//! decision.
//!
//! The methods are described by their schemas ([`MethodInfo`], from `amalgam-schema`): the same
//! data the methods declare and the planner resolves with, so what `validate` checks is what
//! `merge` does.

use amalgam_schema::{Compat, Contract, ContractViolation, MethodInfo, ParamScope};

use crate::params::coerce;
use crate::schema::closest;
use crate::{
    Diagnostic, LoadedConfig, MergeConfig, ModelRef, ParamScopes, ParamValue, Parameters, Scalar,
    Severity, TokenEmbeddingSource, TokenizerSource, Warning,
};

/// A Parameters map with its YAML path.
struct ParamsAt<'a> {
    path: String,
    params: &'a Parameters,
}

/// One normalised output slice with the YAML paths of its parts.
struct SliceView<'a> {
    /// mergekit's group name, `default.slices[0]`.
    group: String,
    /// YAML path of the slice (or of `models`).
    path: String,
    /// Sources: model, YAML path of the entry, its parameters (`None` for the appended base).
    sources: Vec<(ModelRef, String, Option<&'a Parameters>)>,
    slice_params: Option<&'a Parameters>,
    module_params: Option<&'a Parameters>,
    base: Option<ModelRef>,
}

fn view_of_models<'a>(
    models: &'a [crate::InputModel],
    base: Option<&ModelRef>,
    path: &str,
    module: &str,
    module_params: Option<&'a Parameters>,
) -> SliceView<'a> {
    let mut sources: Vec<_> = models
        .iter()
        .enumerate()
        .map(|(j, m)| (m.model.clone(), format!("{path}[{j}]"), Some(&m.parameters)))
        .collect();
    if let Some(b) = base {
        if !models.iter().any(|m| &m.model == b) {
            sources.push((b.clone(), "base_model".to_string(), None));
        }
    }
    SliceView {
        group: format!("{module}.slices[0]"),
        path: path.to_string(),
        sources,
        slice_params: None,
        module_params,
        base: base.cloned(),
    }
}

fn views_of_slices<'a>(
    slices: &'a [crate::OutputSlice],
    base: Option<&ModelRef>,
    path: &str,
    module: &str,
    module_params: Option<&'a Parameters>,
) -> Vec<SliceView<'a>> {
    slices
        .iter()
        .enumerate()
        .map(|(i, s)| SliceView {
            group: format!("{module}.slices[{i}]"),
            path: format!("{path}[{i}]"),
            sources: s
                .sources
                .iter()
                .enumerate()
                .map(|(j, src)| {
                    let p = format!("{path}[{i}].sources[{j}]");
                    (src.model.clone(), p, Some(&src.parameters))
                })
                .collect(),
            slice_params: Some(&s.parameters),
            module_params,
            base: s.base_model.clone().or_else(|| base.cloned()),
        })
        .collect()
}

/// The output slices as mergekit's planner normalises them (see
/// [`MergeConfig::normalized_modules`]), with YAML paths.
fn views(config: &MergeConfig) -> Vec<SliceView<'_>> {
    let base = config.base_model.as_ref();
    if let Some(models) = config.models.as_ref().filter(|m| !m.is_empty()) {
        return vec![view_of_models(models, base, "models", "default", None)];
    }
    if let Some(slices) = config.slices.as_ref().filter(|s| !s.is_empty()) {
        return views_of_slices(slices, base, "slices", "default", None);
    }
    let mut out = Vec::new();
    for (name, m) in config.modules.iter().flatten() {
        let path = format!("modules.{name}");
        let mp = Some(&m.parameters);
        match (&m.models, &m.slices) {
            (Some(models), _) if !models.is_empty() => out.push(view_of_models(
                models,
                base,
                &format!("{path}.models"),
                name,
                mp,
            )),
            (_, Some(slices)) => out.extend(views_of_slices(
                slices,
                base,
                &format!("{path}.slices"),
                name,
                mp,
            )),
            _ => {}
        }
    }
    out
}

fn params_of_models<'a>(ms: &'a [crate::InputModel], path: &str, out: &mut Vec<ParamsAt<'a>>) {
    for (j, m) in ms.iter().enumerate() {
        out.push(ParamsAt {
            path: format!("{path}[{j}].parameters"),
            params: &m.parameters,
        });
    }
}

fn params_of_slices<'a>(ss: &'a [crate::OutputSlice], path: &str, out: &mut Vec<ParamsAt<'a>>) {
    for (i, s) in ss.iter().enumerate() {
        out.push(ParamsAt {
            path: format!("{path}[{i}].parameters"),
            params: &s.parameters,
        });
        for (j, src) in s.sources.iter().enumerate() {
            out.push(ParamsAt {
                path: format!("{path}[{i}].sources[{j}].parameters"),
                params: &src.parameters,
            });
        }
    }
}

/// Every `parameters` map of the config, with its YAML path.
fn all_params(config: &MergeConfig) -> Vec<ParamsAt<'_>> {
    let mut out = vec![ParamsAt {
        path: "parameters".into(),
        params: &config.parameters,
    }];
    params_of_models(
        config.models.as_deref().unwrap_or_default(),
        "models",
        &mut out,
    );
    params_of_slices(
        config.slices.as_deref().unwrap_or_default(),
        "slices",
        &mut out,
    );
    for (name, m) in config.modules.iter().flatten() {
        let p = format!("modules.{name}");
        out.push(ParamsAt {
            path: format!("{p}.parameters"),
            params: &m.parameters,
        });
        params_of_models(
            m.models.as_deref().unwrap_or_default(),
            &format!("{p}.models"),
            &mut out,
        );
        params_of_slices(
            m.slices.as_deref().unwrap_or_default(),
            &format!("{p}.slices"),
            &mut out,
        );
    }
    out
}

fn scalars(v: &ParamValue) -> Vec<&Scalar> {
    match v {
        ParamValue::Scalar(s) => vec![s],
        ParamValue::Gradient(items) => items.iter().collect(),
        ParamValue::Filters(entries) => entries.iter().flat_map(|(_, v)| scalars(v)).collect(),
    }
}

/// Whether a parameters map belongs to one input (a `models` entry or a slice source).
fn is_per_model_path(path: &str) -> bool {
    path.contains(".sources[") || path.starts_with("models[") || path.contains(".models[")
}

/// Checks a loaded config against the merge methods amalgam knows.
///
/// Reports (errors unless noted):
/// * an unknown `merge_method`, with the closest known name;
/// * parameters the method does not declare (warning: mergekit ignores them), with the
///   closest declared name; a shared parameter given for one model (warning: mergekit ignores
///   it there);
/// * values that cannot be coerced to the parameter's type (mergekit stops while planning);
/// * required parameters that no scope gives for some input (mergekit: "Missing required
///   parameter"); for a parameter missing everywhere that the method fills uniformly (linear's
///   `weight`) see [`uniform_fallback`];
/// * the method's input contract per output slice, with mergekit's own texts;
/// * a method that `compat` (the `--mergekit-version`) lacks;
/// * plus the warnings found while parsing (unknown and duplicate keys).
///
/// With `strict`, every warning becomes an error (and `linear` without weights gets mergekit's
/// error).
pub fn validate(
    loaded: &LoadedConfig,
    methods: &[&MethodInfo],
    strict: bool,
    compat: Compat,
) -> Vec<Diagnostic> {
    let config = &loaded.config;
    let mut out: Vec<Diagnostic> = Vec::new();
    let method = methods
        .iter()
        .copied()
        .find(|m| m.name == config.merge_method);
    let mut push_at =
        |severity: Severity, path: &str, at: Option<crate::Location>, message: String| {
            let severity = if strict && severity == Severity::Warning {
                Severity::Error
            } else {
                severity
            };
            out.push(Diagnostic {
                severity,
                location: at.or_else(|| loaded.location(path)).or_else(|| {
                    // The nearest enclosing node that has a position.
                    let mut p = path;
                    loop {
                        let cut = p.rfind(['.', '['])?;
                        p = &p[..cut];
                        if let Some(l) = loaded.location(p) {
                            return Some(l);
                        }
                    }
                }),
                path: path.to_string(),
                message,
            });
        };
    for d in &loaded.diagnostics {
        let key = d.path.rsplit('.').next().unwrap_or(&d.path);
        let param = method.and_then(|m| m.param(key));
        let message = match param {
            Some(_) if d.message.starts_with("unknown key") => format!(
                "`{key}` is a parameter of `{}`, but mergekit only reads it under a \
                 `parameters:` key and ignores it here; move it into `parameters:`",
                config.merge_method
            ),
            _ => d.message.clone(),
        };
        push_at(d.severity, &d.path, d.location, message);
    }

    let Some(method) = method else {
        let names: Vec<&str> = methods.iter().map(|m| m.name).collect();
        let hint = closest(&config.merge_method, names.iter().copied())
            .map(|c| format!("did you mean `{c}`? "))
            .unwrap_or_default();
        push_at(
            Severity::Error,
            "merge_method",
            None,
            format!(
                "unknown merge method `{}` (mergekit: \"Unimplemented merge method {}\"); \
                 {hint}known methods: {}",
                config.merge_method,
                config.merge_method,
                names.join(", ")
            ),
        );
        return out;
    };

    // Parameter names and value types, wherever they are given.
    if let Err(e) = method.check_version(compat) {
        push_at(Severity::Error, "merge_method", None, e.to_string());
    }
    // The `modules:` section came with mergekit 0.1's module architectures; the 2024 schema
    // reads only `models:` and `slices:`.
    if compat == Compat::V0_0_4_2 && config.modules.is_some() {
        push_at(
            Severity::Error,
            "modules",
            None,
            "mergekit 0.0.4.2 has no `modules:` section (it came with mergekit 0.1); write the \
             module's `slices:` or `models:` at the top level, or drop --mergekit-version 0.0.4.2"
                .into(),
        );
    }
    // Float64 arithmetic is reproduced for mergekit 0.1.5 only, except passthrough (the same
    // `x * scale` in both versions); the planner refuses the same through `supports_f64`.
    if compat == Compat::V0_0_4_2
        && config.merge_method != "passthrough"
        && FLOAT64_METHODS.contains(&config.merge_method.as_str())
        && config
            .dtype
            .as_deref()
            .is_some_and(|d| d.trim_start_matches("torch.") == "float64")
    {
        push_at(
            Severity::Unsupported,
            "dtype",
            None,
            format!(
                "{}; remove it or use mergekit for this config",
                unsupported_message(&format!(
                    "dtype: float64 (float64 arithmetic of merge_method: {} under mergekit \
                     0.0.4.2)",
                    config.merge_method
                ))
            ),
        );
    }
    let declared: Vec<&str> = method.params.iter().map(|p| p.name).collect();
    for at in all_params(config) {
        for (key, value) in at.params {
            let path = format!("{}.{key}", at.path);
            let Some(schema) = method.param(key) else {
                let hint = closest(key, declared.iter().copied())
                    .map(|c| format!("did you mean `{c}`? "))
                    .unwrap_or_default();
                let takes = if declared.is_empty() {
                    "it takes no parameters".to_string()
                } else {
                    format!("it takes: {}", declared.join(", "))
                };
                push_at(
                    Severity::Warning,
                    &path,
                    loaded.key_location(&path),
                    format!(
                        "parameter `{key}` is not used by `{}` (mergekit ignores it); {hint}{takes}",
                        method.name
                    ),
                );
                continue;
            };
            if schema.scope == ParamScope::Shared && is_per_model_path(&at.path) {
                push_at(
                    Severity::Warning,
                    &path,
                    loaded.key_location(&path),
                    format!(
                        "`{key}` is a shared parameter of `{}`: mergekit ignores it in one \
                         model's parameters; move it to the slice's or the top-level \
                         `parameters:`",
                        method.name
                    ),
                );
            }
            for s in scalars(value) {
                if let Err(e) = coerce(s, schema.kind) {
                    push_at(
                        Severity::Error,
                        &path,
                        None,
                        format!("`{key}`: {e} (mergekit stops with a pydantic validation error)"),
                    );
                    break;
                }
            }
        }
    }

    let fallback = uniform_fallback(config, method);
    let slices = views(config);
    for view in &slices {
        if let Err((path, msg)) = check_contract(&method.contract, view) {
            push_at(Severity::Error, path.unwrap_or(&view.path), None, msg);
        }
        for p in method.params.iter().filter(|p| p.is_required()) {
            let shared_scopes = ParamScopes {
                sources: Vec::new(),
                slice: view.slice_params,
                module: view.module_params,
                global: Some(&config.parameters),
                per_model: false,
            };
            if p.scope == ParamScope::Shared {
                if !shared_scopes.mentions(p.name) {
                    push_at(
                        Severity::Error,
                        &view.path,
                        None,
                        format!(
                            "`{}` requires the parameter `{}` and no scope gives it: add \
                             `parameters: {{{}: ...}}` at the top level (mergekit: \"Missing \
                             required parameter {} for <tensor>\")",
                            method.name, p.name, p.name, p.name
                        ),
                    );
                }
                continue;
            }
            if fallback.is_some() && method.uniform_fallback == Some(p.name) {
                continue;
            }
            for (model, path, _) in &view.sources {
                if !MethodInfo::binds(p, Some(model) == view.base.as_ref(), compat) {
                    continue;
                }
                let mut scopes = shared_scopes.clone();
                scopes.per_model = true;
                scopes.sources = view
                    .sources
                    .iter()
                    .filter(|(m, _, _)| m == model)
                    .filter_map(|(_, _, params)| *params)
                    .collect();
                if !scopes.mentions(p.name) {
                    push_at(
                        Severity::Error,
                        path,
                        None,
                        format!(
                            "`{}` requires `{}` for every {}input and none is given for `{model}` \
                             (mergekit: \"Missing required parameter {} for {model}.<tensor>\"); \
                             add it to this model's `parameters:` or to the top-level ones",
                            method.name,
                            p.name,
                            if p.scope == ParamScope::NonBase {
                                "non-base "
                            } else {
                                ""
                            },
                            p.name
                        ),
                    );
                }
            }
        }
    }

    if let Some(v) = config
        .chat_template
        .as_deref()
        .filter(|v| invalid_chat_template(v))
    {
        push_at(
            Severity::Error,
            "chat_template",
            None,
            format!(
                "Invalid chat template: {} (mergekit's words: give `auto`, a built-in name or a \
                 Jinja template)",
                v.chars().take(80).collect::<String>()
            ),
        );
    }
    for (path, key) in unsupported_features(config) {
        // The path already names a top-level key: not said twice.
        let what = if path == key {
            "not supported yet by amalgam".to_string()
        } else {
            unsupported_message(&key)
        };
        push_at(
            Severity::Unsupported,
            &path,
            None,
            format!("{what}; remove it or use mergekit for this config"),
        );
    }

    if let Some(w) = fallback {
        if strict {
            let first = slices
                .first()
                .and_then(|v| v.sources.first())
                .map(|(m, _, _)| m.to_string())
                .unwrap_or_default();
            out.push(Diagnostic {
                severity: Severity::Error,
                location: loaded.location("merge_method"),
                path: w.path,
                message: crate::missing_parameter_message(
                    method.uniform_fallback.unwrap_or_default(),
                    Some(&ModelRef::new(first)),
                    "model.embed_tokens.weight",
                ),
            });
        } else {
            out.push(Diagnostic {
                severity: Severity::Warning,
                location: loaded.location("merge_method"),
                path: w.path,
                message: w.message,
            });
        }
    }
    for (path, message) in tokenizer_problems(config) {
        out.push(Diagnostic {
            severity: Severity::Error,
            location: loaded
                .location(&path)
                .or_else(|| loaded.location("tokenizer")),
            path,
            message,
        });
    }
    out.sort_by_key(|d| (d.severity, d.location));
    out
}

/// Tokenizer settings that name a model which is not an input of the merge, visible without
/// opening any model: a `tokenizer.tokens` source (mergekit fails on it with "requires a
/// vocabulary weight from model ..., but that weight is missing").
pub fn tokenizer_problems(config: &MergeConfig) -> Vec<(String, String)> {
    let mut inputs: Vec<&ModelRef> = Vec::new();
    inputs.extend(config.base_model.iter());
    for m in config.models.iter().flatten() {
        inputs.push(&m.model);
    }
    for s in config.slices.iter().flatten() {
        inputs.extend(s.base_model.iter());
        for src in &s.sources {
            inputs.push(&src.model);
        }
    }
    let mut out = Vec::new();
    let mut check = |m: &ModelRef, path: String, why: &str| {
        if !inputs.contains(&m) {
            out.push((
                path,
                format!("`{m}` is not among the merge's input models; {why}"),
            ));
        }
    };
    // A tokenizer source need not be an input (mergekit reads only its tokenizer).
    if let Some(t) = &config.tokenizer {
        for (tok, e) in t.tokens.iter().flatten() {
            if let Some(TokenEmbeddingSource::Model(m))
            | Some(TokenEmbeddingSource::ModelToken { model: m, .. }) = &e.source
            {
                check(
                    m,
                    format!("tokenizer.tokens.{tok}.source"),
                    "mergekit fails on it (\"requires a vocabulary weight from model ..., but \
                     that weight is missing\"); name an input model",
                );
            }
        }
    }
    out
}

/// The contract of `c` on one output slice ([`Contract::check`]), with mergekit's message and
/// a hint. The error carries the YAML path of the offending source when there is one.
fn check_contract<'v>(c: &Contract, view: &'v SliceView) -> Result<(), (Option<&'v str>, String)> {
    let group = &view.group;
    let ids: Vec<&ModelRef> = view.sources.iter().map(|(m, _, _)| m).collect();
    let base = view.base.as_ref();
    let Err(v) = c.check(&ids, base.as_ref()) else {
        return Ok(());
    };
    let mk = v.mergekit_message(group);
    Err(match v {
        ContractViolation::Duplicate { index } => {
            let (m, path, _) = &view.sources[index];
            (
                Some(path.as_str()),
                format!(
                    "`{m}` is listed twice among the inputs of this slice (mergekit: \"{mk}\"); \
                     list each model once"
                ),
            )
        }
        ContractViolation::BaseNotPresent => (
            None,
            format!(
                "the base model `{}` is not among the inputs of this slice (mergekit: \"{mk}\"); \
                 add it as a source with the same `layer_range`",
                base.map(|b| b.to_string()).unwrap_or_default()
            ),
        ),
        ContractViolation::BaseRequired => (
            None,
            format!("this method needs a `base_model` (mergekit: \"{mk}\")"),
        ),
        ContractViolation::BaseForbidden => (
            None,
            format!("this method takes no `base_model` (mergekit: \"{mk}\")"),
        ),
        ContractViolation::Count { .. } => (None, mk),
    })
}

/// mergekit 0.1.5's built-in chat template names (`mergekit/_data/chat_templates`). amalgam
/// ships its own templates for them (`amalgam_engine::builtin_chat_template`: other text,
/// the same renderings), so a name is accepted and resolved at merge time.
pub const BUILTIN_CHAT_TEMPLATES: [&str; 5] = ["alpaca", "chatml", "exaone", "llama3", "mistral"];

fn is_builtin_chat_template(v: &str) -> bool {
    BUILTIN_CHAT_TEMPLATES.contains(&v)
}

/// mergekit's check of a `chat_template` that is neither `auto` nor a built-in name: it must
/// look like a Jinja template (at least 20 characters, with a `{`).
fn invalid_chat_template(v: &str) -> bool {
    v != "auto" && !is_builtin_chat_template(v) && (v.chars().count() < 20 || !v.contains('{'))
}

/// The words of a "not supported yet" refusal of `key`, the same for `validate` and `merge`.
pub fn unsupported_message(key: &str) -> String {
    format!("`{key}` is not supported yet by amalgam")
}

/// The name mergekit gives the one module of a single-module architecture.
pub const DEFAULT_MODULE: &str = "default";

/// The merge methods with float64 arithmetic (`MergeMethod::supports_f64` in amalgam-methods,
/// for mergekit 0.1.5; a test checks the two agree): mergekit computes in f64 when the
/// working dtype is float64, and only these reproduce it (task_arithmetic up to four models
/// besides the base; the planner refuses more).
pub const FLOAT64_METHODS: &[&str] = &["linear", "passthrough", "task_arithmetic"];

/// What amalgam does not implement yet ("not supported yet"): `(YAML path, key)` for each
/// LoRA (`+lora` or `lora:`) on a tokenizer source, and float64 arithmetic (`dtype: float64`) of a method not in
/// [`FLOAT64_METHODS`] (mergekit 0.1.5 computes in f64 then; `out_dtype: float64` alone is
/// supported, an exact widening of the result). [`validate`] reports
/// them as [`Severity::Unsupported`]; the planner refuses through `validate`, so both commands
/// decide with this one function, before any model is read. (Float64 *inputs* without
/// `dtype:` are only known once the models are read: the planner refuses those for the same
/// methods.)
pub fn unsupported_features(config: &MergeConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if config
        .dtype
        .as_deref()
        .is_some_and(|d| d.trim_start_matches("torch.") == "float64")
        && !FLOAT64_METHODS.contains(&config.merge_method.as_str())
    {
        out.push((
            "dtype".into(),
            format!(
                "dtype: float64 (float64 arithmetic of merge_method: {})",
                config.merge_method
            ),
        ));
    }
    // A LoRA on a merged model is applied (amalgam_engine); as the source of a tokenizer or of
    // a token's embedding it would make mergekit read the tokenizer of peft's merged copy,
    // which amalgam does not reproduce.
    let model = |m: &ModelRef, path: String, out: &mut Vec<(String, String)>| {
        if m.lora.is_some() {
            out.push((path, "lora".to_string()));
        }
    };
    // `modules:` names are checked against the architecture when planning (they need the
    // models' config.json): `default` for a single-module architecture, a VLM's
    // `text_decoder`, `vision_tower`... for the multi-module ones amalgam plans.
    // A tokenizer merge reads each model's tokenizer; mergekit reads a `model+adapter`'s from
    // the merged copy, which has none.
    let tokenizer_key = if config.tokenizer.is_some() {
        Some("tokenizer")
    } else if config.tokenizer_source.is_some() {
        Some("tokenizer_source")
    } else {
        None
    };
    if let Some(k) = tokenizer_key {
        if let Some(m) = config.referenced_models().iter().find(|m| m.lora.is_some()) {
            out.push((k.into(), format!("lora ({m}) with `{k}`")));
        }
    }
    if let Some(TokenizerSource::Model(m)) = &config.tokenizer_source {
        model(m, "tokenizer_source".into(), &mut out);
    }
    if let Some(t) = &config.tokenizer {
        if let TokenizerSource::Model(m) = &t.source {
            model(m, "tokenizer.source".into(), &mut out);
        }
        for (tok, e) in t.tokens.iter().flatten() {
            match &e.source {
                Some(TokenEmbeddingSource::Model(m))
                | Some(TokenEmbeddingSource::ModelToken { model: m, .. }) => {
                    model(m, format!("tokenizer.tokens.{tok}.source"), &mut out)
                }
                _ => {}
            }
        }
    }
    out
}

/// amalgam's answer to a merge that gives a uniformly-fillable parameter nowhere (the method's
/// [`MethodInfo::uniform_fallback`]: linear's `weight`).
///
/// mergekit (every version) stops while planning with `Missing required parameter weight for
/// <first model>.model.embed_tokens.weight`. amalgam instead weights every input 1/N (the
/// obvious intent of such a config) and says so with this warning; `--strict` keeps mergekit's
/// error (see [`validate`]). Returns `None` when the method declares no such parameter or some
/// scope mentions it (then a model left without one is an error, as in mergekit).
pub fn uniform_fallback(config: &MergeConfig, method: &MethodInfo) -> Option<Warning> {
    let key = method.uniform_fallback?;
    if all_params(config)
        .iter()
        .any(|p| p.params.contains_key(key))
    {
        return None;
    }
    let slices = views(config);
    let n = slices.first().map_or(0, |v| v.sources.len());
    let first = slices
        .first()
        .and_then(|v| v.sources.first())
        .map(|(m, _, _)| m.to_string())
        .unwrap_or_default();
    Some(Warning {
        path: "parameters".into(),
        message: format!(
            "no `{key}` is given anywhere: amalgam averages the {n} inputs with {key} 1/{n} \
             each; mergekit stops instead (\"Missing required parameter {key} for \
             {first}.model.embed_tokens.weight\"), and so does amalgam with --strict"
        ),
    })
}
