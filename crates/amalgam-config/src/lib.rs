//! The mergekit YAML configuration, as amalgam reads it.
//!
//! SKELETON: the public types below are what the engine codes against; the config work fills in
//! parsing, validation and resolution behind them (and may add fields/functions).
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Anything (skeleton).
    #[error("{0}")]
    Other(String),
}

/// A YAML scalar as given in a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// Number.
    Float(f64),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
    /// String (coerced later to the parameter's declared type, like pydantic does).
    Str(String),
}

/// A parameter setting: scalar, gradient, or filtered conditionals (mergekit §1.3).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A single value.
    Scalar(Scalar),
    /// A list interpolated over the layer position t.
    Gradient(Vec<Scalar>),
    /// `[{filter, value}, ...]`: the first matching entry wins.
    Filters(Vec<(Option<String>, ParamValue)>),
}

/// Parameters at one level, in YAML order.
pub type Parameters = BTreeMap<String, ParamValue>;

/// A model reference (`path[@revision]`, or the dict form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// Local path or Hub id.
    pub path: String,
    /// Branch, tag or commit.
    pub revision: Option<String>,
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{}", self.path, r),
            None => f.write_str(&self.path),
        }
    }
}

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

/// One entry of `slices:`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSlice {
    /// The sources merged into this slice.
    pub sources: Vec<InputSlice>,
    /// Slice-level base model (overrides the global one).
    pub base_model: Option<ModelRef>,
    /// Slice-level parameters.
    pub parameters: Parameters,
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
    /// Global base model.
    pub base_model: Option<ModelRef>,
    /// Global parameters.
    pub parameters: Parameters,
    /// Load-time dtype (`bfloat16`...), as written.
    pub dtype: Option<String>,
    /// Save-time dtype, as written.
    pub out_dtype: Option<String>,
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
    /// Warnings.
    pub warnings: Vec<Warning>,
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Other(format!("{}: {e}", path.display())))?;
    let mut c = parse_str(&text)?;
    c.path = Some(path.to_path_buf());
    Ok(c)
}

/// Parses config text.
pub fn parse_str(text: &str) -> Result<LoadedConfig, ConfigError> {
    let _ = text;
    todo!("config: parse_str")
}

/// Evaluates a setting for `tensor_name` at layer position `t` (mergekit §1.3).
pub fn evaluate(value: &ParamValue, tensor_name: &str, t: f64) -> Option<Scalar> {
    let _ = (value, tensor_name, t);
    todo!("config: evaluate")
}
