//! From a YAML tree to a [`MergeConfig`], checking mergekit's schema (its pydantic models and
//! validators) and collecting every problem with its YAML path and position.

use std::collections::BTreeMap;

use crate::model_ref::split_expert;
use crate::params::{coerce, ParamKind};
use crate::yaml::{self, key_text, Kind, Location, Node};
use crate::{
    ConfigError, Diagnostic, InputModel, InputSlice, LoadedConfig, MergeConfig, ModelPath,
    ModelRef, OutputModule, OutputSlice, ParamValue, Parameters, Scalar, Severity, TokenEmbedding,
    TokenEmbeddingSource, TokenizerConfig, TokenizerSource, Warning, DTYPE_NAMES,
};

const TOP_KEYS: &[&str] = &[
    "merge_method",
    "models",
    "slices",
    "modules",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
];

pub(crate) fn parse(text: &str) -> Result<LoadedConfig, ConfigError> {
    let doc = yaml::load(text).map_err(|e| ConfigError::Invalid {
        file: None,
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            path: String::new(),
            location: Some(e.loc),
            message: if e.message.contains("multi-document") {
                e.message
            } else {
                format!("YAML syntax error: {}", e.message)
            },
        }],
    })?;
    let mut cx = Ctx::default();
    let config = match &doc.root {
        None => {
            cx.err(
                "",
                Location { line: 1, column: 1 },
                "the config is empty: it needs at least `merge_method` and one of `models`, \
                 `slices` or `modules`",
            );
            None
        }
        Some(root) => cx.top(root),
    };
    // The shortest path of each location, computed once: looking it up by a scan of every
    // location for each duplicate made many duplicates in a wide mapping quadratic.
    let mut path_at: std::collections::HashMap<Location, &str> = std::collections::HashMap::new();
    if !doc.duplicates.is_empty() {
        for (p, l) in &cx.locations {
            let slot = path_at.entry(*l).or_insert(p.as_str());
            if p.len() < slot.len() {
                *slot = p.as_str();
            }
        }
    }
    let mut dup_warnings = Vec::new();
    for d in &doc.duplicates {
        let map_path = path_at.get(&d.map_loc).copied().unwrap_or("");
        dup_warnings.push((
            child(map_path, &d.key),
            d.again,
            format!(
                "duplicate key `{}` (first at line {}): mergekit (PyYAML) silently keeps this \
                 last value; remove one of them",
                d.key, d.first.line
            ),
        ));
    }
    for (path, at, message) in dup_warnings {
        cx.warn(&path, at, message);
    }
    cx.diags.sort_by_key(|d| (d.severity, d.location));
    match config {
        Some(config) if !cx.diags.iter().any(|d| d.severity == Severity::Error) => {
            let warnings = cx
                .diags
                .iter()
                .map(|d| Warning {
                    path: d.path.clone(),
                    message: d.message.clone(),
                })
                .collect();
            Ok(LoadedConfig {
                config,
                text: text.to_string(),
                path: None,
                warnings,
                diagnostics: cx.diags,
                locations: cx.locations,
                key_locations: cx.key_locations,
            })
        }
        _ => Err(ConfigError::Invalid {
            file: None,
            diagnostics: cx.diags,
        }),
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The Levenshtein distance, for "did you mean" hints. Two rows reused for the whole table:
/// it runs once per unknown key and known name, so a config with 100k unknown keys made
/// millions of small allocations when each row was a new vector.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = Vec::with_capacity(b.len() + 1);
    for (i, ca) in a.chars().enumerate() {
        cur.clear();
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.last().copied().unwrap_or(0)
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo (a few
/// edits, a `-`/`_` or case difference) or a prefix of it (`normalize` → `normalize_weights`).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let word_norm = norm(word);
    candidates
        .into_iter()
        .map(|c| {
            let d = if norm(c) == word_norm {
                0
            } else {
                edit_distance(word, c)
            };
            (d, c)
        })
        .filter(|(d, c)| *d <= 2.max(c.chars().count() / 3) || c.starts_with(word))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Looked-up fields of a mapping.
struct Fields<'n> {
    entries: Vec<(String, &'n Node)>,
    loc: Location,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
    /// The value unless absent or null (pydantic's `Optional[...] = None`).
    fn opt(&self, key: &str) -> Option<&'n Node> {
        self.get(key).filter(|n| n.kind != Kind::Null)
    }
}

#[derive(Default)]
struct Ctx {
    diags: Vec<Diagnostic>,
    locations: BTreeMap<String, Location>,
    key_locations: BTreeMap<String, Location>,
}

impl Ctx {
    fn push(&mut self, severity: Severity, path: &str, loc: Location, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            severity,
            path: path.to_string(),
            location: Some(loc),
            message: message.into(),
        });
    }
    fn err(&mut self, path: &str, loc: Location, message: impl Into<String>) {
        self.push(Severity::Error, path, loc, message);
    }
    fn warn(&mut self, path: &str, loc: Location, message: impl Into<String>) {
        self.push(Severity::Warning, path, loc, message);
    }
    fn note(&mut self, path: &str, node: &Node) {
        self.locations.entry(path.to_string()).or_insert(node.loc);
    }

    /// The fields of a mapping node; unknown keys are warned about (mergekit ignores them).
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        self.note(path, node);
        let Kind::Map(entries) = &node.kind else {
            self.err(
                path,
                node.loc,
                format!("{what} must be a mapping, got {}", node.kind.describe()),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let key = key_text(&k.kind);
            let p = child(path, &key);
            self.note(&p, v);
            self.key_locations.entry(p.clone()).or_insert(k.loc);
            if known.contains(&key.as_str()) && matches!(k.kind, Kind::Str(_)) {
                out.push((key, v));
            } else {
                let hint = unknown_key_hint(path, &key, known);
                self.warn(
                    &p,
                    k.loc,
                    format!("unknown key `{key}` in {what}: mergekit ignores it{hint}"),
                );
            }
        }
        Some(Fields {
            entries: out,
            loc: node.loc,
        })
    }

    fn required<'n>(
        &mut self,
        f: &Fields<'n>,
        path: &str,
        key: &str,
        hint: &str,
    ) -> Option<&'n Node> {
        match f.get(key) {
            Some(n) if n.kind != Kind::Null => Some(n),
            Some(n) => {
                self.err(
                    &child(path, key),
                    n.loc,
                    format!("`{key}` is required and cannot be null{hint}"),
                );
                None
            }
            None => {
                self.err(
                    &child(path, key),
                    f.loc,
                    format!("`{key}` is missing{hint}"),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Str(s) => Some(s.clone()),
            other => {
                self.err(
                    path,
                    node.loc,
                    format!(
                        "{what} must be a string, got {} (quote it)",
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn opt_string(&mut self, f: &Fields, path: &str, key: &str, what: &str) -> Option<String> {
        let n = f.opt(key)?;
        self.string(n, &child(path, key), what)
    }

    fn top(&mut self, root: &Node) -> Option<MergeConfig> {
        let f = self.fields(root, "", "the config", TOP_KEYS)?;
        let merge_method = self
            .required(
                &f,
                "",
                "merge_method",
                ": every config names its merge method, for example `merge_method: linear`",
            )
            .and_then(|n| self.string(n, "merge_method", "`merge_method`"));
        let models = f
            .opt("models")
            .and_then(|n| self.list(n, "models", Self::input_model));
        let slices = f
            .opt("slices")
            .and_then(|n| self.list(n, "slices", Self::output_slice));
        let modules = f.opt("modules").and_then(|n| self.modules(n));
        let base_model = f
            .opt("base_model")
            .and_then(|n| self.model_ref(n, "base_model"));
        let parameters = self.parameters(f.get("parameters"), "parameters");
        let dtype = self.dtype(&f, "dtype");
        let out_dtype = self.dtype(&f, "out_dtype");
        let tokenizer_source = f
            .opt("tokenizer_source")
            .and_then(|n| self.tokenizer_source(n, "tokenizer_source"));
        let tokenizer = f.opt("tokenizer").and_then(|n| self.tokenizer(n));
        let chat_template = self.opt_string(&f, "", "chat_template", "`chat_template`");

        let given: Vec<&str> = [
            ("models", models.as_ref().is_some_and(|v| !v.is_empty())),
            ("slices", slices.as_ref().is_some_and(|v| !v.is_empty())),
            ("modules", modules.as_ref().is_some_and(|v| !v.is_empty())),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        let bad_shape = self.diags.iter().any(|d| {
            d.severity == Severity::Error
                && ["models", "slices", "modules"].iter().any(|k| {
                    d.path == *k
                        || d.path.starts_with(&format!("{k}["))
                        || d.path.starts_with(&format!("{k}."))
                })
        });
        if given.len() != 1 && !bad_shape {
            let found = if given.is_empty() {
                "none is (an empty list counts as absent)".to_string()
            } else {
                format!("found {}", given.join(" and "))
            };
            let at = given
                .get(1)
                .and_then(|k| f.get(k))
                .map_or(root.loc, |n| n.loc);
            self.err(
                given.get(1).copied().unwrap_or(""),
                at,
                format!(
                    "exactly one of `models`, `slices` or `modules` must be given; {found} \
                     (mergekit: \"Exactly one of 'models', 'slices', or 'modules' must be present\")"
                ),
            );
        }
        if tokenizer_source.is_some() && tokenizer.is_some() {
            let at = f.get("tokenizer").map_or(root.loc, |n| n.loc);
            self.err(
                "tokenizer",
                at,
                "`tokenizer_source` and `tokenizer` cannot both be given (mergekit: \"Cannot \
                 specify both tokenizer_source and tokenizer\"); keep one, e.g. `tokenizer: \
                 {source: union}`",
            );
        }
        Some(MergeConfig {
            merge_method: merge_method?,
            models,
            slices,
            modules,
            base_model,
            parameters,
            dtype,
            out_dtype,
            tokenizer_source,
            tokenizer,
            chat_template,
        })
    }

    fn dtype(&mut self, f: &Fields, key: &str) -> Option<String> {
        let name = self.opt_string(f, "", key, &format!("`{key}`"))?;
        let bare = name.strip_prefix("torch.").unwrap_or(&name);
        if !name.is_empty() && !DTYPE_NAMES.contains(&bare) {
            let hint = closest(bare, DTYPE_NAMES.iter().copied())
                .or(match bare {
                    "bf16" => Some("bfloat16"),
                    "fp16" | "f16" | "half" => Some("float16"),
                    "fp32" | "f32" | "float" => Some("float32"),
                    _ => None,
                })
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            let at = f.get(key).map_or(f.loc, |n| n.loc);
            self.err(
                key,
                at,
                format!(
                    "unknown dtype {name:?}{hint} accepted: {} (optionally prefixed `torch.`); \
                     mergekit would stop with `Unimplemented dtype \"{name}\"` only when it is \
                     about to merge",
                    DTYPE_NAMES.join(", ")
                ),
            );
        }
        Some(name)
    }

    fn list<T>(
        &mut self,
        node: &Node,
        path: &str,
        item: fn(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.note(path, node);
        let Kind::Seq(items) = &node.kind else {
            self.err(
                path,
                node.loc,
                format!(
                    "`{}` must be a list, got {}",
                    last_key(path),
                    node.kind.describe()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, n) in items.iter().enumerate() {
            let p = index(path, i);
            self.note(&p, n);
            match item(self, n, &p) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn input_model(&mut self, node: &Node, path: &str) -> Option<InputModel> {
        let f = self.fields(node, path, "a `models` entry", &["model", "parameters"])?;
        let model = self
            .required(
                &f,
                path,
                "model",
                ": each entry is `- model: <path or Hub id>`",
            )
            .and_then(|n| self.model_ref(n, &child(path, "model")));
        let parameters = self.parameters(f.get("parameters"), &child(path, "parameters"));
        Some(InputModel {
            model: model?,
            parameters,
        })
    }

    fn output_slice(&mut self, node: &Node, path: &str) -> Option<OutputSlice> {
        let f = self.fields(
            node,
            path,
            "a slice",
            &["sources", "base_model", "residual_weight", "parameters"],
        )?;
        let sources = self
            .required(
                &f,
                path,
                "sources",
                ": a slice is `- sources: [{model, layer_range}, ...]`",
            )
            .and_then(|n| self.list(n, &child(path, "sources"), Self::input_slice));
        let base_model = f
            .opt("base_model")
            .and_then(|n| self.model_ref(n, &child(path, "base_model")));
        let residual_weight = f.opt("residual_weight").and_then(|n| {
            let p = child(path, "residual_weight");
            let s = self.scalar(n, &p)?;
            match coerce(&s, ParamKind::Float) {
                Ok(Scalar::Float(x)) => Some(x),
                Ok(_) => None,
                Err(e) => {
                    self.err(&p, n.loc, format!("`residual_weight`: {e}"));
                    None
                }
            }
        });
        let parameters = self.parameters(f.get("parameters"), &child(path, "parameters"));
        let sources = sources?;
        if sources.is_empty() {
            self.err(
                &child(path, "sources"),
                f.loc,
                "a slice needs at least one source",
            );
        }
        if let Some(first) = sources.first() {
            for (j, s) in sources.iter().enumerate().skip(1) {
                if s.num_layers() != first.num_layers() {
                    let p = child(&index(&child(path, "sources"), j), "layer_range");
                    let at = self.locations.get(&p).copied().unwrap_or(f.loc);
                    self.err(
                        &p,
                        at,
                        format!(
                            "all sources of a slice must span the same number of layers: \
                             sources[0] has {}, sources[{j}] has {} (mergekit: \"All inputs to a \
                             slice must contain the same number of layers\")",
                            first.num_layers(),
                            s.num_layers()
                        ),
                    );
                }
            }
        }
        Some(OutputSlice {
            sources,
            base_model,
            parameters,
            residual_weight,
        })
    }

    fn input_slice(&mut self, node: &Node, path: &str) -> Option<InputSlice> {
        let f = self.fields(
            node,
            path,
            "a slice source",
            &["model", "layer_range", "parameters"],
        )?;
        let model = self
            .required(
                &f,
                path,
                "model",
                ": each source is `- model: <path>` with `layer_range: [start, end]`",
            )
            .and_then(|n| self.model_ref(n, &child(path, "model")));
        let layer_range = self
            .required(
                &f,
                path,
                "layer_range",
                ": give `layer_range: [start, end]` (end excluded)",
            )
            .and_then(|n| self.layer_range(n, &child(path, "layer_range")));
        let parameters = self.parameters(f.get("parameters"), &child(path, "parameters"));
        Some(InputSlice {
            model: model?,
            layer_range: layer_range?,
            parameters,
        })
    }

    fn layer_range(&mut self, node: &Node, path: &str) -> Option<(usize, usize)> {
        let shape = "`layer_range` must be `[start, end]` (two integers, end excluded)";
        let Kind::Seq(items) = &node.kind else {
            self.err(
                path,
                node.loc,
                format!("{shape}, got {}", node.kind.describe()),
            );
            return None;
        };
        let [a, b] = items.as_slice() else {
            self.err(
                path,
                node.loc,
                format!("{shape}, got {} value(s)", items.len()),
            );
            return None;
        };
        let int = |cx: &mut Self, n: &Node| -> Option<i64> {
            let s = cx.scalar(n, path)?;
            match coerce(&s, ParamKind::Int) {
                Ok(Scalar::Int(i)) => Some(i),
                Ok(_) => None,
                Err(e) => {
                    cx.err(path, n.loc, format!("{shape}: {e}"));
                    None
                }
            }
        };
        let (start, end) = (int(self, a)?, int(self, b)?);
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e)),
            _ => {
                self.err(
                    path,
                    node.loc,
                    format!("{shape} with 0 <= start <= end, got [{start}, {end}]"),
                );
                None
            }
        }
    }

    fn modules(&mut self, node: &Node) -> Option<Vec<(String, OutputModule)>> {
        self.note("modules", node);
        let Kind::Map(entries) = &node.kind else {
            self.err(
                "modules",
                node.loc,
                format!(
                    "`modules` must be a mapping of module name to module, got {}",
                    node.kind.describe()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (k, v) in entries {
            let Some(name) = self.string(k, "modules", "a module name") else {
                ok = false;
                continue;
            };
            let path = child("modules", &name);
            let Some(f) = self.fields(v, &path, "a module", &["slices", "models", "parameters"])
            else {
                ok = false;
                continue;
            };
            let slices = f
                .opt("slices")
                .and_then(|n| self.list(n, &child(&path, "slices"), Self::output_slice));
            let models = f
                .opt("models")
                .and_then(|n| self.list(n, &child(&path, "models"), Self::input_model));
            let parameters = self.parameters(f.get("parameters"), &child(&path, "parameters"));
            let has_s = slices.as_ref().is_some_and(|s| !s.is_empty());
            let has_m = models.as_ref().is_some_and(|m| !m.is_empty());
            if has_s == has_m {
                self.err(
                    &path,
                    v.loc,
                    "a module needs exactly one of `slices` or `models` (mergekit: \"Must specify \
                     either output slices or models to merge\")",
                );
                ok = false;
            }
            out.push((
                name,
                OutputModule {
                    slices,
                    models,
                    parameters,
                },
            ));
        }
        ok.then_some(out)
    }

    fn model_ref(&mut self, node: &Node, path: &str) -> Option<ModelRef> {
        self.note(path, node);
        match &node.kind {
            Kind::Str(s) => match ModelRef::parse(s) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.err(path, node.loc, e);
                    None
                }
            },
            Kind::Map(_) => {
                let f = self.fields(
                    node,
                    path,
                    "a model reference",
                    &["model", "lora", "override_architecture"],
                )?;
                let model = self
                    .required(&f, path, "model", ": the dict form is `{model: {path, revision}, lora, override_architecture}`")
                    .and_then(|n| self.model_path(n, &child(path, "model"), true));
                let lora = f
                    .opt("lora")
                    .and_then(|n| self.model_path(n, &child(path, "lora"), false));
                let override_architecture =
                    self.opt_string(&f, path, "override_architecture", "`override_architecture`");
                let (model, expert) = model?;
                Some(ModelRef {
                    path: model.path,
                    revision: model.revision,
                    lora: lora.map(|(l, _)| l),
                    override_architecture,
                    expert,
                })
            }
            other => {
                self.err(
                    path,
                    node.loc,
                    format!(
                        "expected a model reference (`path[@revision][+lora]` or `{{model: \
                         {{path, revision}}}}`), got {}",
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn model_path(
        &mut self,
        node: &Node,
        path: &str,
        allow_expert: bool,
    ) -> Option<(ModelPath, Option<usize>)> {
        match &node.kind {
            Kind::Str(s) => {
                let parsed = if allow_expert {
                    split_expert(s)
                } else {
                    Ok((s.as_str(), None))
                }
                .and_then(|(body, k)| ModelPath::parse(body).map(|p| (p, k)));
                match parsed {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.err(path, node.loc, e);
                        None
                    }
                }
            }
            Kind::Map(_) => {
                let f = self.fields(node, path, "a model path", &["path", "revision"])?;
                let p = self
                    .required(&f, path, "path", "")
                    .and_then(|n| self.string(n, &child(path, "path"), "`path`"));
                let revision = self.opt_string(&f, path, "revision", "`revision`");
                Some((ModelPath { path: p?, revision }, None))
            }
            other => {
                self.err(
                    path,
                    node.loc,
                    format!(
                        "expected a path string or `{{path, revision}}`, got {}",
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn tokenizer_source(&mut self, node: &Node, path: &str) -> Option<TokenizerSource> {
        match &node.kind {
            Kind::Str(s) if s == "union" => Some(TokenizerSource::Union),
            Kind::Str(s) if s == "base" => Some(TokenizerSource::Base),
            _ => self.model_ref(node, path).map(TokenizerSource::Model),
        }
    }

    fn tokenizer(&mut self, node: &Node) -> Option<TokenizerConfig> {
        let path = "tokenizer";
        let f = self.fields(
            node,
            path,
            "`tokenizer`",
            &["source", "tokens", "pad_to_multiple_of"],
        )?;
        let source = match f.opt("source") {
            Some(n) => self.tokenizer_source(n, "tokenizer.source")?,
            None => TokenizerSource::Union,
        };
        let pad_to_multiple_of = match f.opt("pad_to_multiple_of") {
            Some(n) => {
                let p = "tokenizer.pad_to_multiple_of";
                let s = self.scalar(n, p)?;
                match coerce(&s, ParamKind::Int) {
                    Ok(Scalar::Int(i)) => Some(i),
                    Ok(_) => None,
                    Err(e) => {
                        self.err(p, n.loc, format!("`pad_to_multiple_of`: {e}"));
                        return None;
                    }
                }
            }
            None => None,
        };
        let tokens = match f.opt("tokens") {
            Some(n) => Some(self.tokens(n)?),
            None => None,
        };
        Some(TokenizerConfig {
            source,
            tokens,
            pad_to_multiple_of,
        })
    }

    fn tokens(&mut self, node: &Node) -> Option<Vec<(String, TokenEmbedding)>> {
        let path = "tokenizer.tokens";
        self.note(path, node);
        let Kind::Map(entries) = &node.kind else {
            self.err(
                path,
                node.loc,
                format!(
                    "`tokens` must be a mapping of token to `{{source, force}}`, got {}",
                    node.kind.describe()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let tok = self.string(k, path, "a token")?;
            let p = child(path, &tok);
            let f = self.fields(v, &p, "a token entry", &["source", "force"])?;
            let source = match f.opt("source") {
                Some(n) => Some(self.token_source(n, &child(&p, "source"))?),
                None => None,
            };
            let force = match f.opt("force") {
                Some(n) => {
                    let s = self.scalar(n, &child(&p, "force"))?;
                    match coerce(&s, ParamKind::Bool) {
                        Ok(Scalar::Bool(b)) => b,
                        Ok(_) => false,
                        Err(e) => {
                            self.err(&child(&p, "force"), n.loc, format!("`force`: {e}"));
                            return None;
                        }
                    }
                }
                None => false,
            };
            out.push((tok, TokenEmbedding { source, force }));
        }
        Some(out)
    }

    fn token_source(&mut self, node: &Node, path: &str) -> Option<TokenEmbeddingSource> {
        let kind = match &node.kind {
            Kind::Map(entries) => entries.iter().find_map(|(k, v)| match (&k.kind, &v.kind) {
                (Kind::Str(k), Kind::Str(v)) if k == "kind" => Some(v.clone()),
                _ => None,
            }),
            _ => None,
        };
        match kind.as_deref() {
            Some("zero") => {
                self.fields(node, path, "a token source", &["kind"])?;
                Some(TokenEmbeddingSource::Zero)
            }
            Some("model_token") => {
                let f = self.fields(
                    node,
                    path,
                    "a token source",
                    &["kind", "model", "token_id", "token"],
                )?;
                let model = self
                    .required(&f, path, "model", "")
                    .and_then(|n| self.model_ref(n, &child(path, "model")))?;
                let token_id = match f.opt("token_id") {
                    Some(n) => {
                        let s = self.scalar(n, &child(path, "token_id"))?;
                        match coerce(&s, ParamKind::Int) {
                            Ok(Scalar::Int(i)) => Some(i),
                            _ => {
                                self.err(
                                    &child(path, "token_id"),
                                    n.loc,
                                    "`token_id` must be an integer",
                                );
                                return None;
                            }
                        }
                    }
                    None => None,
                };
                let token = self.opt_string(&f, path, "token", "`token`");
                if token_id.is_some() == token.is_some() {
                    self.err(
                        path,
                        node.loc,
                        if token.is_some() {
                            "only one of `token_id` or `token` may be specified"
                        } else {
                            "`token_id` or `token` must be specified"
                        },
                    );
                    return None;
                }
                Some(TokenEmbeddingSource::ModelToken {
                    model,
                    token_id,
                    token,
                })
            }
            _ => self.model_ref(node, path).map(TokenEmbeddingSource::Model),
        }
    }

    /// A scalar node as a [`Scalar`] (null, dates and collections are errors).
    fn scalar(&mut self, node: &Node, path: &str) -> Option<Scalar> {
        match &node.kind {
            Kind::Bool(b) => Some(Scalar::Bool(*b)),
            Kind::Int(i) => Some(Scalar::Int(*i)),
            Kind::Float(x) => Some(Scalar::Float(*x)),
            Kind::Str(s) => Some(Scalar::Str(s.clone())),
            other => {
                self.err(
                    path,
                    node.loc,
                    format!(
                        "expected a number, boolean or string, got {}",
                        other.describe()
                    ),
                );
                None
            }
        }
    }

    fn parameters(&mut self, node: Option<&Node>, path: &str) -> Parameters {
        let mut out = Parameters::new();
        let Some(node) = node.filter(|n| n.kind != Kind::Null) else {
            return out;
        };
        self.note(path, node);
        let Kind::Map(entries) = &node.kind else {
            let hint = match &node.kind {
                Kind::Seq(items) if items.iter().all(|i| matches!(i.kind, Kind::Map(_))) => {
                    "; drop the `- ` in front of each parameter (`weight: 1.0`, not `- weight: 1.0`)"
                }
                _ => "",
            };
            self.err(
                path,
                node.loc,
                format!(
                    "`parameters` must be a mapping of parameter name to value, got {}{hint}",
                    node.kind.describe()
                ),
            );
            return out;
        };
        for (k, v) in entries {
            let Kind::Str(name) = &k.kind else {
                self.err(
                    &child(path, &key_text(&k.kind)),
                    k.loc,
                    format!(
                        "a parameter name must be a string, got {}",
                        k.kind.describe()
                    ),
                );
                continue;
            };
            let p = child(path, name);
            self.note(&p, v);
            self.key_locations.entry(p.clone()).or_insert(k.loc);
            if let Some(value) = self.param_value(v, &p) {
                out.insert(name.clone(), value);
            }
        }
        out
    }

    fn param_value(&mut self, node: &Node, path: &str) -> Option<ParamValue> {
        const FORMS: &str = "a value is a scalar (`0.5`), a gradient (`[0, 0.5, 1]`) or filters \
                             (`[{filter: self_attn, value: 0.5}, {value: 1}]`)";
        match &node.kind {
            Kind::Null => {
                self.err(
                    path,
                    node.loc,
                    format!("a parameter cannot be null (mergekit rejects it): {FORMS}; remove the key to use the method's default"),
                );
                None
            }
            Kind::Seq(items) => {
                if items.iter().all(|i| matches!(i.kind, Kind::Map(_))) && !items.is_empty() {
                    let mut out = Vec::new();
                    for (i, n) in items.iter().enumerate() {
                        let p = index(path, i);
                        self.note(&p, n);
                        out.push(self.conditional(n, &p)?);
                    }
                    Some(ParamValue::Filters(out))
                } else {
                    self.gradient(items, path, FORMS)
                }
            }
            Kind::Map(_) => Some(ParamValue::Filters(vec![self.conditional(node, path)?])),
            _ => {
                let s = self.scalar(node, path)?;
                Some(ParamValue::Scalar(s))
            }
        }
    }

    fn gradient(&mut self, items: &[Node], path: &str, forms: &str) -> Option<ParamValue> {
        let mut out = Vec::new();
        for (i, n) in items.iter().enumerate() {
            let p = index(path, i);
            self.note(&p, n);
            match &n.kind {
                Kind::Seq(_) | Kind::Map(_) | Kind::Null | Kind::Other { .. } => {
                    self.err(
                        &p,
                        n.loc,
                        format!(
                            "a gradient holds only numbers (or booleans/strings), got {}: {forms}",
                            n.kind.describe()
                        ),
                    );
                    return None;
                }
                _ => out.push(self.scalar(n, &p)?),
            }
        }
        Some(ParamValue::Gradient(out))
    }

    fn conditional(&mut self, node: &Node, path: &str) -> Option<(Option<String>, ParamValue)> {
        let f = self.fields(node, path, "a filter entry", &["filter", "value"])?;
        let filter = match f.opt("filter") {
            Some(n) => Some(self.string(n, &child(path, "filter"), "`filter`")?),
            None => None,
        };
        let vnode = self.required(
            &f,
            path,
            "value",
            ": a filter entry is `{filter: <substring of tensor names>, value: <value>}`",
        )?;
        let vpath = child(path, "value");
        let value = match &vnode.kind {
            Kind::Seq(items) => self.gradient(
                items,
                &vpath,
                "the `value` of a filter is a scalar or a gradient",
            )?,
            Kind::Map(_) => {
                self.err(
                    &vpath,
                    vnode.loc,
                    "the `value` of a filter is a scalar or a gradient; filters do not nest",
                );
                return None;
            }
            _ => ParamValue::Scalar(self.scalar(vnode, &vpath)?),
        };
        Some((filter, value))
    }
}

fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

fn unknown_key_hint(path: &str, key: &str, known: &[&str]) -> String {
    if key == "revision" && !path.is_empty() {
        return "; put the revision in the model reference instead: `model: <path>@<revision>`"
            .into();
    }
    if key == "name" && path.is_empty() {
        return " (`name` only means something in a multi-document, mergekit-multi config: \
                 in a single-document one it is ignored)"
            .into();
    }
    match closest(key, known.iter().copied()) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}
