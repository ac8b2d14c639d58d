//! Vocabulary alignment (`tokenizer_source`, `tokenizer:`), as mergekit 0.1.5's `BuildTokenizer`
//! and `PermutedVocabulary` do it, decided entirely at planning time.
//!
//! Why at planning time: the output vocabulary, each model's permutation and the rule for every
//! row a model lacks depend only on the tokenizers and the headers, so the planner turns them
//! into a [`VocabAlign`] per vocabulary-indexed op (a row source per output row and input), and
//! the executor materialises the aligned rows as it streams, row by row, with no model held in
//! memory. The merge method then sees aligned tensors, exactly as in mergekit.
//!
//! Deterministic where mergekit is not (its `referenced_models()` is a Python set, and
//! `get_vocab()` iterates a Rust hash map):
//! - without `base_model`, the tokenizer base is the first model in config order;
//! - a union walks the models base first, then in config order, each model's tokens by id.
//!
//! So a union that adds regular (non-added) tokens of another model gives them ids in that order
//! where mergekit's ids are a random permutation of them; added tokens (the usual case: chat
//! tokens) get mergekit's ids exactly when `base_model` is set.
//!
//! Only `tokenizer.json` tokenizers are read (the pure-Rust `tokenizers` crate cannot convert a
//! SentencePiece `tokenizer.model` or a `vocab.json`/`merges.txt` pair the way transformers
//! does); another kind is refused naming the model. Where mergekit silently assumes (a
//! tokenizer that fails to load is "assumed same as base"), amalgam errors.

use std::collections::{HashMap, HashSet};

use amalgam_config::{ModelRef, TokenEmbedding, TokenEmbeddingSource, TokenizerSource};
use serde_json::Value as Json;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{EngineError, Result};
use crate::plan::{DefaultEmbed, Model, RowSource, TokenizerOut, VocabAlign};

/// The output vocabulary and every model's permutation into it.
pub struct Vocab {
    /// Output tokens by id (the real vocabulary, before padding).
    tokens: Vec<String>,
    /// Rows of an aligned tensor (`tokens.len()` rounded up to `pad_to_multiple_of`).
    padded: usize,
    /// Per plan model: per output id, the model's row (`None`: the model lacks the token).
    perms: Vec<Vec<Option<usize>>>,
    /// Per plan model: its tokenizer's vocabulary (for `model_token` with `token:`).
    original: Vec<HashMap<String, u32>>,
    /// `tokenizer.tokens`, by token, with the plan model each source refers to.
    configured: HashMap<String, (TokenEmbedding, Option<usize>)>,
    /// Warnings to pass on.
    pub warnings: Vec<String>,
    /// The output tokenizer's files.
    pub out: TokenizerOut,
}

/// What the vocabulary builder needs from the config.
pub struct VocabConfig<'a> {
    /// Where the output tokenizer comes from.
    pub source: &'a TokenizerSource,
    /// `tokenizer.tokens`.
    pub tokens: &'a [(String, TokenEmbedding)],
    /// `tokenizer.pad_to_multiple_of`.
    pub pad_to_multiple_of: Option<i64>,
    /// The global `base_model`, as a plan model index.
    pub base_model: Option<usize>,
    /// The resolved chat template, if any.
    pub chat_template: Option<String>,
    /// A tokenizer source that is not an input model (mergekit accepts one): its label and
    /// folder.
    pub outside_source: Option<(String, &'a amalgam_io::ModelFolder)>,
}

fn tok_err(model: &str, reason: String) -> EngineError {
    EngineError::Tokenizer {
        model: model.to_string(),
        reason,
    }
}

/// A model's `tokenizer.json`, or an error saying why not.
pub fn load_tokenizer(model: &Model) -> Result<Tokenizer> {
    load_tokenizer_from(&model.label, model.source.folder_ref())
}

/// [`load_tokenizer`] from a folder (a tokenizer source need not be an input model).
pub fn load_tokenizer_from(label: &str, folder: &amalgam_io::ModelFolder) -> Result<Tokenizer> {
    let Some(path) = folder.aux_file("tokenizer.json") else {
        let other = ["tokenizer.model", "vocab.json", "tiktoken.model"]
            .into_iter()
            .find(|f| folder.aux_file(f).is_some());
        return Err(tok_err(
            label,
            match other {
                Some(f) => format!(
                    "it has {f} but no tokenizer.json; amalgam aligns vocabularies from \
                     tokenizer.json only (convert it once with transformers: \
                     AutoTokenizer.from_pretrained(path).save_pretrained(path))"
                ),
                None => "it has no tokenizer.json".to_string(),
            },
        ));
    };
    Tokenizer::from_file(&path).map_err(|e| tok_err(label, format!("{}: {e}", path.display())))
}

/// The model's vocabulary size from its config.json (`vocab_size`, or `text_config.vocab_size`).
pub fn config_vocab_size(model: &Model) -> Option<usize> {
    let cfg = model.config.as_ref()?;
    cfg.get("vocab_size")
        .or_else(|| cfg.get("text_config").and_then(|t| t.get("vocab_size")))
        .and_then(Json::as_u64)
        .map(|v| v as usize)
}

/// mergekit's `get_stripped_tokenizer`: the base tokenizer without the tokens whose id is beyond
/// the model's `vocab_size` (BPE only, as mergekit).
fn stripped(model: &Model, tok: Tokenizer) -> Result<Tokenizer> {
    let vocab = tok.get_vocab(true);
    let vs = config_vocab_size(model).unwrap_or(vocab.len());
    let unused: HashSet<&str> = vocab
        .iter()
        .filter(|(_, &id)| id as usize >= vs)
        .map(|(t, _)| t.as_str())
        .collect();
    if unused.is_empty() {
        return Ok(tok);
    }
    let text = tok
        .to_string(false)
        .map_err(|e| tok_err(&model.label, e.to_string()))?;
    let mut json: Json =
        serde_json::from_str(&text).map_err(|e| tok_err(&model.label, e.to_string()))?;
    let kind = json
        .pointer("/model/type")
        .and_then(Json::as_str)
        .unwrap_or("?")
        .to_string();
    if kind != "BPE" {
        return Err(tok_err(
            &model.label,
            format!(
                "its tokenizer has {} tokens with ids >= vocab_size {vs} and type {kind}; \
                 like mergekit, only BPE tokenizers can be stripped for a tokenizer merge",
                unused.len()
            ),
        ));
    }
    if let Some(Json::Array(added)) = json.get_mut("added_tokens") {
        added.retain(|e| {
            e.get("id")
                .and_then(Json::as_u64)
                .is_some_and(|i| (i as usize) < vs)
        });
    }
    if let Some(Json::Object(v)) = json.pointer_mut("/model/vocab") {
        v.retain(|k, _| !unused.contains(k.as_str()));
    }
    if let Some(Json::Array(merges)) = json.pointer_mut("/model/merges") {
        let mut bad = None;
        merges.retain(|m| {
            let parts: Vec<&str> = match m {
                Json::String(s) if s.matches(' ').count() == 1 => s.split(' ').collect(),
                Json::Array(a) => a.iter().filter_map(Json::as_str).collect(),
                other => {
                    bad = Some(other.to_string());
                    return true;
                }
            };
            !parts.iter().any(|p| unused.contains(p))
        });
        if let Some(m) = bad {
            return Err(tok_err(
                &model.label,
                format!("unexpected merge format: {m}"),
            ));
        }
    }
    json.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| tok_err(&model.label, e.to_string()))
}

/// Tokens of a vocabulary sorted by id (amalgam's deterministic order for mergekit's hash order).
fn by_id(vocab: &HashMap<String, u32>) -> Vec<(&str, u32)> {
    let mut v: Vec<(&str, u32)> = vocab.iter().map(|(t, &i)| (t.as_str(), i)).collect();
    v.sort_by_key(|&(t, i)| (i, t));
    v
}

fn added_sorted(tok: &Tokenizer) -> Vec<(u32, AddedToken)> {
    let mut v: Vec<(u32, AddedToken)> = tok.get_added_tokens_decoder().into_iter().collect();
    v.sort_by_key(|(i, _)| *i);
    v
}

fn same_flags(a: &AddedToken, b: &AddedToken) -> bool {
    (a.single_word, a.lstrip, a.rstrip, a.normalized, a.special)
        == (b.single_word, b.lstrip, b.rstrip, b.normalized, b.special)
}

/// The index of the plan model a reference names, which must be an input of the merge.
fn model_index(by_ref: &HashMap<ModelRef, usize>, r: &ModelRef, what: &str) -> Result<usize> {
    by_ref
        .get(r)
        .copied()
        .ok_or_else(|| EngineError::TokenizerModel {
            what: what.to_string(),
            model: r.to_string(),
        })
}

impl Vocab {
    /// Builds the output tokenizer and the permutations (mergekit's `build_tokenizer`).
    pub fn build(
        models: &[Model],
        by_ref: &HashMap<ModelRef, usize>,
        cfg: &VocabConfig<'_>,
    ) -> Result<Vocab> {
        let mut warnings = Vec::new();
        let base = cfg.base_model.unwrap_or(0);
        let base_model = models
            .get(base)
            .ok_or(EngineError::NoSlices("no model to take a tokenizer from"))?;
        let mut toks: Vec<Tokenizer> = Vec::with_capacity(models.len());
        for (i, m) in models.iter().enumerate() {
            let t = load_tokenizer(m)?;
            toks.push(if i == base { stripped(m, t)? } else { t });
        }
        let vocab_size = |i: usize, t: &Tokenizer, added: bool| {
            config_vocab_size(&models[i]).unwrap_or_else(|| t.get_vocab_size(added))
        };
        let (mut out, source_model) = match cfg.source {
            TokenizerSource::Base => (toks[base].clone(), Some(base)),
            TokenizerSource::Model(r) => match (by_ref.get(r), &cfg.outside_source) {
                // Not stripped, as in mergekit.
                (Some(&i), _) => (load_tokenizer(&models[i])?, Some(i)),
                (None, Some((label, folder))) => (load_tokenizer_from(label, folder)?, None),
                (None, None) => {
                    return Err(EngineError::TokenizerModel {
                        what: "tokenizer source".into(),
                        model: r.to_string(),
                    })
                }
            },
            TokenizerSource::Union => {
                let order: Vec<usize> = std::iter::once(base)
                    .chain((0..models.len()).filter(|&i| i != base))
                    .collect();
                let mut out_vocab: Vec<String> = Vec::new();
                let mut seen: HashSet<String> = HashSet::new();
                let mut out_added: Vec<AddedToken> = Vec::new();
                let mut added_seen: HashMap<String, usize> = HashMap::new();
                for &i in &order {
                    let t = &toks[i];
                    let vs = vocab_size(i, t, false);
                    let vocab = t.get_vocab(true);
                    let mut beyond = 0usize;
                    for (tok, id) in by_id(&vocab) {
                        if id as usize >= vs {
                            beyond += 1;
                            continue;
                        }
                        if seen.insert(tok.to_string()) {
                            out_vocab.push(tok.to_string());
                        }
                    }
                    if beyond > 0 {
                        warnings.push(format!(
                            "{} tokens of {}'s tokenizer have ids >= its vocab_size {vs} and \
                             are left out of the union",
                            beyond, models[i].label
                        ));
                    }
                    for (id, info) in added_sorted(t) {
                        if id as usize >= vs {
                            continue;
                        }
                        match added_seen.get(&info.content) {
                            Some(&k) => {
                                if !same_flags(&out_added[k], &info) {
                                    warnings.push(format!(
                                        "token {:?} is added with different settings in {}; \
                                         using the first",
                                        info.content, models[i].label
                                    ));
                                }
                            }
                            None => {
                                added_seen.insert(info.content.clone(), out_added.len());
                                out_added.push(info);
                            }
                        }
                    }
                }
                let mut res = toks[base].clone();
                let base_vocab = res.get_vocab(true);
                // One call for all of them: the same ids as mergekit's one call per token
                // (each new token takes the next id), without rebuilding the matcher each time.
                let plain: Vec<AddedToken> = out_vocab
                    .iter()
                    .filter(|t| !added_seen.contains_key(*t) && !base_vocab.contains_key(*t))
                    .map(|t| AddedToken::from(t.clone(), false))
                    .collect();
                res.add_tokens(plain)
                    .map_err(|e| tok_err(&base_model.label, e.to_string()))?;
                res.add_tokens(out_added)
                    .map_err(|e| tok_err(&base_model.label, e.to_string()))?;
                (res, Some(base))
            }
        };
        let (source_label, source_folder) = match (source_model, &cfg.outside_source) {
            (Some(i), _) => (models[i].label.clone(), models[i].source.folder_ref()),
            (None, Some((l, f))) => (l.clone(), *f),
            (None, None) => (base_model.label.clone(), base_model.source.folder_ref()),
        };
        let existing = out.get_vocab(true);
        let extra: Vec<AddedToken> = cfg
            .tokens
            .iter()
            .filter(|(t, _)| !existing.contains_key(t))
            .map(|(t, _)| AddedToken::from(t.clone(), false))
            .collect();
        if !extra.is_empty() {
            out.add_tokens(extra)
                .map_err(|e| tok_err(&base_model.label, e.to_string()))?;
        }
        let vocab_out = out.get_vocab(true);
        let n = vocab_out.len();
        let mut tokens = vec![None; n];
        for (t, &id) in &vocab_out {
            match tokens.get_mut(id as usize) {
                Some(slot) => *slot = Some(t.clone()),
                None => {
                    return Err(tok_err(
                        &source_label,
                        format!(
                            "the output vocabulary has {n} tokens but token {t:?} has id {id}: \
                             its ids are not contiguous"
                        ),
                    ))
                }
            }
        }
        let tokens: Vec<String> = tokens.into_iter().map(Option::unwrap_or_default).collect();
        let padded = match cfg.pad_to_multiple_of {
            Some(p) if p > 0 && n % p as usize != 0 => n.div_ceil(p as usize) * p as usize,
            _ => n,
        };
        let mut perms = Vec::with_capacity(models.len());
        let mut original = Vec::with_capacity(models.len());
        for (i, t) in toks.iter().enumerate() {
            let mv = t.get_vocab(true);
            let vs = config_vocab_size(&models[i]).unwrap_or(mv.len());
            let mut beyond = 0usize;
            let p: Vec<Option<usize>> = tokens
                .iter()
                .map(|tok| match mv.get(tok) {
                    Some(&o) if (o as usize) < vs => Some(o as usize),
                    Some(_) => {
                        // mergekit leaves no entry (a KeyError later); amalgam treats the token
                        // as absent from this model and says so.
                        beyond += 1;
                        None
                    }
                    None => None,
                })
                .collect();
            if beyond > 0 {
                warnings.push(format!(
                    "{beyond} output tokens have ids >= vocab_size {vs} in {} (padding?); they \
                     are treated as absent from it",
                    models[i].label
                ));
            }
            perms.push(p);
            original.push(mv);
        }
        let mut configured = HashMap::new();
        for (t, e) in cfg.tokens {
            let m = match &e.source {
                Some(TokenEmbeddingSource::Model(r))
                | Some(TokenEmbeddingSource::ModelToken { model: r, .. }) => Some(model_index(
                    by_ref,
                    r,
                    &format!("tokenizer.tokens.{t}.source"),
                )?),
                _ => None,
            };
            configured.insert(t.clone(), (e.clone(), m));
        }
        let files = output_files(
            &source_label,
            source_folder,
            &out,
            cfg.chat_template.as_deref(),
        )?;
        Ok(Vocab {
            tokens,
            padded,
            perms,
            original,
            configured,
            warnings,
            out: TokenizerOut {
                files,
                vocab_size: Some(padded),
            },
        })
    }

    /// Rows of an aligned tensor.
    pub fn rows(&self) -> usize {
        self.padded
    }

    /// The alignment of one vocabulary-indexed op (mergekit's `PermutedVocabulary.execute`):
    /// `inputs` are the op's input models in order, `input_rows` their tensors' row counts,
    /// `base` the slice's base model.
    pub fn align(
        &self,
        tensor: &str,
        inputs: &[usize],
        input_rows: &[usize],
        row_len: usize,
        base: Option<usize>,
        labels: &dyn Fn(usize) -> String,
    ) -> Result<VocabAlign> {
        let err = |reason: String| EngineError::VocabAlign {
            tensor: tensor.to_string(),
            reason,
        };
        let perm = |j: usize, id: usize| self.perms[inputs[j]][id];
        let mut defaults: Vec<DefaultEmbed> = Vec::new();
        let mut rows: Vec<Vec<RowSource>> = vec![Vec::with_capacity(self.padded); inputs.len()];
        let base_j = base.and_then(|b| inputs.iter().position(|&m| m == b));
        for (id, tok) in self.tokens.iter().enumerate() {
            let cfg = self.configured.get(tok);
            let force = cfg.is_some_and(|(c, _)| c.force);
            let has: Vec<Option<usize>> = (0..inputs.len()).map(|j| perm(j, id)).collect();
            let mut default = None;
            if force || has.iter().any(Option::is_none) {
                let d = match cfg {
                    Some((c, m)) => Some(match &c.source {
                        None => {
                            return Err(err(format!(
                                "tokenizer.tokens.{tok} has no `source` (mergekit cannot compute \
                                 its embedding either)"
                            )))
                        }
                        Some(TokenEmbeddingSource::Zero) => DefaultEmbed::Zero,
                        Some(src) => {
                            let mi = m.unwrap_or(0);
                            let j = inputs.iter().position(|&x| x == mi).ok_or_else(|| {
                                err(format!(
                                    "token {tok:?} requires a vocabulary weight from model {}, \
                                     but that weight is missing",
                                    labels(mi)
                                ))
                            })?;
                            let row = match src {
                                TokenEmbeddingSource::ModelToken {
                                    token_id, token, ..
                                } => {
                                    let r = match (token_id, token) {
                                        (Some(i), _) => *i,
                                        (None, Some(t)) => match self.original[mi].get(t) {
                                            Some(&i) => i as i64,
                                            None => {
                                                return Err(err(format!(
                                                    "token {t:?} not found in model {}",
                                                    labels(mi)
                                                )))
                                            }
                                        },
                                        (None, None) => {
                                            return Err(err(format!(
                                                "tokenizer.tokens.{tok}: model_token needs \
                                                 `token` or `token_id`"
                                            )))
                                        }
                                    };
                                    if r < 0 || r as usize >= input_rows[j] {
                                        return Err(err(format!(
                                            "token ID {r} out of range for model {}",
                                            labels(mi)
                                        )));
                                    }
                                    r as usize
                                }
                                _ => has[j].ok_or_else(|| {
                                    err(format!("token {tok:?} not found in model {}", labels(mi)))
                                })?,
                            };
                            DefaultEmbed::Copy { input: j, row }
                        }
                    }),
                    None => {
                        let present: Vec<(usize, usize)> = has
                            .iter()
                            .enumerate()
                            .filter_map(|(j, r)| r.map(|r| (j, r)))
                            .collect();
                        Some(match present.as_slice() {
                            [] => DefaultEmbed::Zero,
                            [(j, r)] => DefaultEmbed::Copy { input: *j, row: *r },
                            _ => match base_j.and_then(|b| has[b].map(|r| (b, r))) {
                                Some((b, r)) => DefaultEmbed::Copy { input: b, row: r },
                                None => DefaultEmbed::Average(present),
                            },
                        })
                    }
                };
                if let Some(d) = d {
                    defaults.push(d);
                    default = Some(defaults.len() - 1);
                }
            }
            for (j, r) in has.iter().enumerate() {
                let src = match (r, default) {
                    (Some(r), _) if !force => {
                        if *r >= input_rows[j] {
                            return Err(err(format!(
                                "token {tok:?} is row {r} of model {}, whose tensor has {} rows",
                                labels(inputs[j]),
                                input_rows[j]
                            )));
                        }
                        RowSource::Own(*r)
                    }
                    (_, Some(k)) => RowSource::Default(k),
                    _ => RowSource::Zero,
                };
                rows[j].push(src);
            }
        }
        for r in &mut rows {
            r.resize(self.padded, RowSource::PadMean);
        }
        Ok(VocabAlign {
            row_len,
            rows,
            defaults,
            real_rows: self.tokens.len(),
        })
    }

    /// Tokens present in none of the models (mergekit warns about each and uses zeros).
    pub fn missing_everywhere(&self) -> Vec<&str> {
        self.tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| self.perms.iter().all(|p| p[*id].is_none()))
            .map(|(_, t)| t.as_str())
            .collect()
    }
}

/// `--unsafe-truncate-embeddings`: every input keeps the common prefix of rows.
pub fn truncation(input_rows: &[usize], row_len: usize) -> VocabAlign {
    let rows = input_rows.iter().copied().min().unwrap_or(0);
    VocabAlign {
        row_len,
        rows: input_rows
            .iter()
            .map(|_| (0..rows).map(RowSource::Own).collect())
            .collect(),
        defaults: Vec::new(),
        real_rows: rows,
    }
}

/// The tokenizer files of the output: `tokenizer.json` from the built tokenizer, the source
/// model's `tokenizer_config.json` (byte for byte unless it must change: a stale
/// `added_tokens_decoder` or an inline chat template is dropped, as transformers 5 drops them
/// on save) and `chat_template.jinja` (the configured template, else the source's).
///
/// Not byte-identical to mergekit's: transformers re-serialises through the tokenizer class
/// (a `LlamaTokenizer` gains its Metaspace pre-tokenizer and decoder, `tokenizer_config.json`
/// gains `is_local` and `local_files_only`); the vocabulary, the added tokens and their flags are
/// the same.
pub fn output_files(
    label: &str,
    folder: &amalgam_io::ModelFolder,
    tok: &Tokenizer,
    chat_template: Option<&str>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut files = Vec::new();
    let json = tok
        .to_string(true)
        .map_err(|e| tok_err(label, e.to_string()))?;
    files.push(("tokenizer.json", json.into_bytes()));
    files.extend(tokenizer_config_files(folder, chat_template)?);
    Ok(files)
}

/// `tokenizer_config.json` and `chat_template.jinja` of `source`, with `chat_template` (when
/// given) replacing the source's template.
pub fn tokenizer_config_files(
    folder: &amalgam_io::ModelFolder,
    chat_template: Option<&str>,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut files = Vec::new();
    if let Some(p) = folder.aux_file("tokenizer_config.json") {
        let bytes = std::fs::read(&p).map_err(|e| EngineError::SideFile {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let mut json: Json = serde_json::from_slice(&bytes).map_err(|e| EngineError::SideFile {
            path: p.clone(),
            reason: format!("invalid JSON: {e}"),
        })?;
        let stale = json.get("added_tokens_decoder").is_some()
            || (chat_template.is_some() && json.get("chat_template").is_some());
        if stale {
            if let Some(o) = json.as_object_mut() {
                o.shift_remove("added_tokens_decoder");
                if chat_template.is_some() {
                    o.shift_remove("chat_template");
                }
            }
            files.push(("tokenizer_config.json", crate::side::to_sorted_json(&json)));
        } else {
            files.push(("tokenizer_config.json", bytes));
        }
    }
    match chat_template {
        Some(t) => files.push(("chat_template.jinja", t.as_bytes().to_vec())),
        None => {
            if let Some(p) = folder.aux_file("chat_template.jinja") {
                let b = std::fs::read(&p).map_err(|e| EngineError::SideFile {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                files.push(("chat_template.jinja", b));
            }
        }
    }
    Ok(files)
}

/// amalgam's templates for mergekit 0.1.5's built-in chat template names
/// (`amalgam_config::BUILTIN_CHAT_TEMPLATES`), in `templates/`.
///
/// Why our own text: mergekit's template files are not ours to copy. These are written from the
/// conversation formats and checked to render exactly what mergekit's files render (through
/// transformers' jinja2 settings: trim_blocks, lstrip_blocks, `raise_exception`) over a set of
/// conversations (`tests/chat-templates/`, test `chat_templates`), so `chat_template.jinja`
/// differs from mergekit's output in text, not in any prompt it produces. An error case (a
/// Mistral conversation whose roles do not alternate, an empty one) raises in both, with other
/// words.
pub const BUILTIN_CHAT_TEMPLATES: [(&str, &str); 5] = [
    ("alpaca", include_str!("../templates/alpaca.jinja")),
    ("chatml", include_str!("../templates/chatml.jinja")),
    ("exaone", include_str!("../templates/exaone.jinja")),
    ("llama3", include_str!("../templates/llama3.jinja")),
    ("mistral", include_str!("../templates/mistral.jinja")),
];

/// The template amalgam writes for a built-in name (see [`BUILTIN_CHAT_TEMPLATES`]).
pub fn builtin_chat_template(name: &str) -> Option<&'static str> {
    BUILTIN_CHAT_TEMPLATES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
}

/// mergekit's `_set_chat_template` resolution: `auto` (the most common template among the
/// models, ties to the first in config order; `None` when no model has one), a built-in name
/// (amalgam's template for it, [`builtin_chat_template`]) or a literal Jinja template. The value
/// was checked by config validation (`amalgam_config::validate`: a value that is none of these
/// is mergekit's "Invalid chat template").
pub fn resolve_chat_template(value: &str, models: &[Model]) -> Result<Option<String>> {
    if let Some(t) = builtin_chat_template(value) {
        return Ok(Some(t.to_string()));
    }
    if value == "auto" {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for m in models {
            if let Some(t) = model_chat_template(m) {
                let t = t.trim().to_string();
                if t.is_empty() {
                    continue;
                }
                match counts.iter_mut().find(|(x, _)| *x == t) {
                    Some(e) => e.1 += 1,
                    None => counts.push((t, 1)),
                }
            }
        }
        // max_by_key returns the last maximum; keep the first.
        let mut best: Option<(String, usize)> = None;
        for (t, c) in counts {
            if best.as_ref().is_none_or(|(_, b)| c > *b) {
                best = Some((t, c));
            }
        }
        return Ok(best.map(|(t, _)| t));
    }
    Ok(Some(value.to_string()))
}

/// A model's chat template: `chat_template.jinja`, else `chat_template` in
/// `tokenizer_config.json` (a string, or the `default` entry of a list of named templates).
fn model_chat_template(m: &Model) -> Option<String> {
    let folder = m.source.folder_ref();
    if let Some(p) = folder.aux_file("chat_template.jinja") {
        return std::fs::read_to_string(p).ok();
    }
    let p = folder.aux_file("tokenizer_config.json")?;
    let json: Json = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    match json.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(a) => a
            .iter()
            .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|e| e.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// The axis indexed by token ids of a tensor, when it is vocabulary-indexed (what tokenizer
/// alignment and `--unsafe-truncate-embeddings` touch), for a model of config `cfg`.
///
/// As mergekit: a model whose architecture has a mergekit definition gets exactly the weights
/// that definition marks with `vocabulary_axis` (`MERGEKIT_VOCAB_WEIGHTS`, generated from
/// mergekit's own definitions: embeddings, LM heads and their biases, e.g. GPT-NeoX's
/// `gpt_neox.embed_in.weight`, Phi-2's `lm_head.bias`, Phi-1's `layers.${num_layers}.linear.*`);
/// any other model gets what mergekit infers through transformers (the input and output
/// embeddings, weight and bias, axis 0), here by the usual names of those modules.
pub fn vocab_axis(cfg: Option<&Json>, expert_view: bool, name: &str) -> Option<usize> {
    let Some(def) = crate::arch::mergekit_definition(cfg, expert_view) else {
        return inferred_vocab_tensor(name).then_some(0);
    };
    let layers = cfg
        .and_then(crate::arch::num_layers_from_config)
        .map(|(_, n)| n);
    crate::mergekit_archs::MERGEKIT_VOCAB_WEIGHTS
        .iter()
        .filter(|(d, _, _)| *d == def)
        .find(|(_, pattern, _)| match layers {
            Some(n) if pattern.contains("${") => {
                let sub = pattern
                    .replace("${num_layers+1}", &(n + 1).to_string())
                    .replace("${num_layers-1}", &n.saturating_sub(1).to_string())
                    .replace("${num_layers}", &n.to_string());
                sub == name
            }
            _ => *pattern == name,
        })
        .map(|(_, _, axis)| *axis)
}

/// amalgam aligns vocabularies along axis 0 only. mergekit 0.1.5 moves any other axis first and
/// back (`vocabulary_views`), but none of its definitions declares one (a test checks the
/// generated table), so a definition that did would be refused here rather than aligned along
/// the wrong axis.
pub fn check_vocab_axis(tensor: &str, axis: usize) -> Result<()> {
    if axis == 0 {
        return Ok(());
    }
    Err(EngineError::VocabAlign {
        tensor: tensor.to_string(),
        reason: format!(
            "its architecture definition puts the vocabulary on axis {axis}; aligning a \
             vocabulary axis other than 0 is not supported yet by amalgam"
        ),
    })
}

/// Whether a tensor of a model with no mergekit definition is vocabulary-indexed: the names
/// transformers gives input embeddings and LM heads (mergekit's inference from
/// `get_input_embeddings` / `get_output_embeddings`, weights and biases).
fn inferred_vocab_tensor(name: &str) -> bool {
    [
        "embed_tokens.weight",
        "lm_head.weight",
        "lm_head.bias",
        "embed_out.weight",
        "embed_in.weight",
        "wte.weight",
        "word_embeddings.weight",
        "tok_embeddings.weight",
    ]
    .iter()
    .any(|s| name == *s || name.ends_with(&format!(".{s}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mergekit_archs::{MERGEKIT_ARCHITECTURES, MERGEKIT_VOCAB_WEIGHTS};
    use serde_json::json;

    #[test]
    fn no_mergekit_definition_has_a_vocabulary_axis_other_than_0() {
        assert!(MERGEKIT_VOCAB_WEIGHTS.len() > 100);
        let odd: Vec<_> = MERGEKIT_VOCAB_WEIGHTS
            .iter()
            .filter(|(_, _, a)| *a != 0)
            .collect();
        assert!(odd.is_empty(), "{odd:?}: alignment along them is refused");
        for (d, _, _) in MERGEKIT_VOCAB_WEIGHTS {
            assert!(
                MERGEKIT_ARCHITECTURES.iter().any(|(_, _, k)| k == d),
                "{d}: not a definition key"
            );
        }
    }

    #[test]
    fn an_axis_other_than_0_is_refused_naming_the_tensor() {
        assert!(check_vocab_axis("lm_head.weight", 0).is_ok());
        let e = check_vocab_axis("lm_head.weight", 1)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("lm_head.weight") && e.contains("axis 1"), "{e}");
        assert!(e.contains("not supported yet"), "{e}");
    }

    #[test]
    fn vocabulary_tensors_are_those_of_mergekits_definition() {
        let llama = json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama"});
        assert_eq!(
            vocab_axis(Some(&llama), false, "model.embed_tokens.weight"),
            Some(0)
        );
        assert_eq!(vocab_axis(Some(&llama), false, "lm_head.weight"), Some(0));
        assert_eq!(vocab_axis(Some(&llama), false, "model.norm.weight"), None);
        let neox = json!({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"});
        assert_eq!(
            vocab_axis(Some(&neox), false, "gpt_neox.embed_in.weight"),
            Some(0)
        );
        assert_eq!(vocab_axis(Some(&neox), false, "embed_out.weight"), Some(0));
        let phi2 = json!({"architectures": ["PhiForCausalLM"], "model_type": "phi"});
        assert_eq!(vocab_axis(Some(&phi2), false, "lm_head.bias"), Some(0));
        let phi1 = json!({"architectures": ["MixFormerSequentialForCausalLM"],
                          "model_type": "mixformer-sequential", "n_layer": 24});
        assert_eq!(
            vocab_axis(Some(&phi1), false, "layers.24.linear.bias"),
            Some(0)
        );
        assert_eq!(
            vocab_axis(Some(&phi1), false, "layers.24.linear.weight"),
            Some(0)
        );
        assert_eq!(
            vocab_axis(Some(&phi1), false, "layers.23.linear.weight"),
            None
        );
        assert_eq!(
            vocab_axis(Some(&phi1), false, "layers.0.wte.weight"),
            Some(0)
        );
        // No definition: transformers' embedding names.
        let other = json!({"architectures": ["SomethingNewForCausalLM"]});
        assert_eq!(
            vocab_axis(Some(&other), false, "model.embed_tokens.weight"),
            Some(0)
        );
        assert_eq!(vocab_axis(Some(&other), false, "lm_head.bias"), Some(0));
        assert_eq!(vocab_axis(None, false, "transformer.wte.weight"), Some(0));
        assert_eq!(vocab_axis(None, false, "model.norm.weight"), None);
    }
}
