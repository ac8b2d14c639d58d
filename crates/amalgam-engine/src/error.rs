use std::path::PathBuf;

/// Everything that can stop a merge, unmix or verify. Planning errors are raised before any byte
/// is written; execution errors leave no finished-looking output (the writer works in a temporary
/// folder).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading or writing tensors failed.
    #[error(transparent)]
    Io(#[from] amalgam_io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] amalgam_config::ConfigError),
    /// A merge method failed on a tensor.
    #[error("{tensor}: {source}")]
    Method {
        /// Output tensor.
        tensor: String,
        /// Why.
        source: amalgam_methods::MethodError,
    },
    /// A merge method panicked on a tensor (a bug in the method, reported as an error so the
    /// merge stops cleanly and says where).
    #[error(
        "{tensor}: merge method `{method}` panicked: {message} (this is a bug in the method; \
         please report it with the config and the tensor's shape)"
    )]
    MethodPanicked {
        /// Output tensor.
        tensor: String,
        /// Method name.
        method: String,
        /// The panic message.
        message: String,
    },
    /// The plan is inconsistent with the inputs (missing tensors, shape mismatch, contract...).
    #[error("{0}")]
    Plan(String),
    /// A feature mergekit has and amalgam does not implement yet.
    #[error("`{key}` (at {path}) is not supported yet by amalgam; remove it or use mergekit for this config")]
    Unsupported {
        /// YAML path.
        path: String,
        /// The key.
        key: String,
    },
    /// A side file (config.json...) could not be read or written.
    #[error("{path}: {reason}")]
    SideFile {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
