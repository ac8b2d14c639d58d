//! The mergekit YAML configuration, as amalgam reads it.
//!
//! amalgam must accept exactly the configs mergekit 0.1.5 accepts and read them the same way,
//! so this crate follows mergekit's loader step by step: PyYAML's YAML 1.1 resolution
//! ([`yaml`](crate::yaml)), pydantic's schema with its lax coercions ([`parse_str`]),
//! mergekit's validators, its parameter evaluation ([`evaluate_as`]) and precedence
//! ([`resolve_as`]). Where mergekit says nothing (typos, a dtype it only rejects when it is
//! about to write), amalgam speaks up early with the YAML path and line of the problem.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

mod model_ref;
mod multi;
mod params;
mod schema;
mod types;
mod validate;
mod yaml;

pub use model_ref::{ModelPath, ModelRef};
pub use multi::{
    is_multi_document, load_documents, order, parse_documents, redirect_models, NamedConfig,
};
pub use params::{
    coerce, evaluate, evaluate_as, missing_parameter_message, py_float_repr, resolve, resolve_as,
    resolve_value, CoerceError, ParamKind, ParamScopes, ParamValue, Parameters, Scalar,
};
pub use types::{
    InputModel, InputSlice, MergeConfig, OutputModule, OutputSlice, TokenEmbedding,
    TokenEmbeddingSource, TokenizerConfig, TokenizerSource,
};
pub use validate::{
    uniform_fallback, unsupported_features, unsupported_message, validate, BUILTIN_CHAT_TEMPLATES,
    DEFAULT_MODULE, FLOAT64_METHODS,
};
pub use yaml::Location;

/// The dtype names mergekit 0.1.5 accepts for `dtype`/`out_dtype` (`dtype_from_name`; an
/// optional `torch.` prefix is allowed too).
pub const DTYPE_NAMES: &[&str] = &["bfloat16", "float16", "float32", "float64", "int64"];

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid config: every problem found, each with its position.
    #[error("{}", render(file.as_deref(), diagnostics))]
    Invalid {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The errors (and any warnings found on the way), in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(file: Option<&Path>, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&d.render(file));
    }
    out
}

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// mergekit would refuse the config (or amalgam refuses it for a stated reason).
    Error,
    /// mergekit runs the config, but it uses a feature amalgam does not implement yet: refused,
    /// by `validate` and `merge` alike, and told apart from a config mergekit rejects.
    Unsupported,
    /// mergekit accepts it, but it probably does not do what was meant.
    Warning,
}

/// One finding about a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// YAML path of the offending node (`models[2].parameters.weight`); empty for the document
    /// itself.
    pub path: String,
    /// Line and column of the node, when known.
    pub location: Option<Location>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// `file:line:col: error: path: message` (the parts that are known).
    pub fn render(&self, file: Option<&Path>) -> String {
        let mut s = String::new();
        if let Some(f) = file {
            s.push_str(&f.display().to_string());
            s.push(':');
        }
        if let Some(l) = self.location {
            s.push_str(&format!("{}:{}:", l.line, l.column));
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(match self.severity {
            Severity::Error | Severity::Unsupported => "error: ",
            Severity::Warning => "warning: ",
        });
        if !self.path.is_empty() {
            s.push_str(&self.path);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }
}

impl Severity {
    /// Whether a diagnostic of this severity stops a merge (errors and unsupported features).
    pub fn refuses(self) -> bool {
        self != Severity::Warning
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render(None))
    }
}

/// A warning about a config that mergekit accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    /// YAML path (`models[2].parameters.weight`).
    pub path: String,
    /// The message, with the fix.
    pub message: String,
}

/// A config file as loaded: the parsed config, its verbatim text and any warnings.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed configuration.
    pub config: MergeConfig,
    /// The file text, verbatim (written as `mergekit_config.yml`).
    pub text: String,
    /// Where it came from (relative model paths are relative to the working directory, as in
    /// mergekit).
    pub path: Option<PathBuf>,
    /// Warnings (unknown keys, duplicate keys), each with its location in
    /// [`LoadedConfig::diagnostics`] too.
    pub warnings: Vec<Warning>,
    /// The same warnings as diagnostics (with line and column), for [`validate`].
    pub diagnostics: Vec<Diagnostic>,
    /// Line and column of every node, by YAML path, so later checks can point at the text.
    pub locations: std::collections::BTreeMap<String, Location>,
    /// Line and column of the key of every mapping entry, by the entry's YAML path (a typo is
    /// in the key, not in its value).
    pub key_locations: std::collections::BTreeMap<String, Location>,
}

impl LoadedConfig {
    /// Where the node at `path` is in the text, if it exists.
    pub fn location(&self, path: &str) -> Option<Location> {
        self.locations.get(path).copied()
    }

    /// Where the key of the mapping entry at `path` is, if it exists.
    pub fn key_location(&self, path: &str) -> Option<Location> {
        self.key_locations.get(path).copied()
    }
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match parse_str(&text) {
        Ok(mut c) => {
            c.path = Some(path.to_path_buf());
            Ok(c)
        }
        Err(ConfigError::Invalid { diagnostics, .. }) => Err(ConfigError::Invalid {
            file: Some(path.to_path_buf()),
            diagnostics,
        }),
        Err(e) => Err(e),
    }
}

/// Parses config text: YAML (as PyYAML reads it), mergekit's schema and validators, plus
/// amalgam's model-independent checks (dtype names, equal layer counts per slice, `#expert`
/// syntax). Method-aware checks are in [`validate`].
pub fn parse_str(text: &str) -> Result<LoadedConfig, ConfigError> {
    schema::parse(text)
}
