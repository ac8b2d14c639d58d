/// Why a method refused or failed to merge a tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MethodError {
    /// A parameter has an invalid value (e.g. della's epsilon range).
    #[error("parameter `{name}`: {reason}")]
    Param {
        /// Parameter name.
        name: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A required parameter has no value anywhere.
    #[error("missing required parameter `{name}` for {target}")]
    MissingParam {
        /// Parameter name.
        name: String,
        /// Model and tensor (or tensor) it was needed for.
        target: String,
    },
    /// Inputs have different shapes.
    #[error("tensor size mismatch for {tensor}: {shapes}")]
    Shape {
        /// Tensor name.
        tensor: String,
        /// The shapes seen.
        shapes: String,
    },
    /// The inputs break the method's contract (base, count).
    #[error("{0}")]
    Contract(String),
    /// Anything else that makes the merge impossible.
    #[error("{0}")]
    Other(String),
}
