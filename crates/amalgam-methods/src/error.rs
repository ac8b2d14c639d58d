use amalgam_schema::{ContractViolation, MissingParam};

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
    /// A declared parameter has no value in the arguments (the planner resolves every one, so
    /// this reaches only direct callers of `merge`).
    #[error(transparent)]
    MissingParam(#[from] MissingParam),
    /// A parameter the method does not declare was passed.
    #[error("parameter `{name}` for {target} is not declared by `{method}`")]
    UndeclaredParam {
        /// Method name.
        method: String,
        /// Parameter name.
        name: String,
        /// Tensor or `model.tensor`.
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
    /// A tensor's data does not fill its shape.
    #[error("{tensor}: {len} values do not fill shape {shape}")]
    Malformed {
        /// Tensor name.
        tensor: String,
        /// Values present.
        len: usize,
        /// The shape, as Python prints it.
        shape: String,
    },
    /// The inputs break the method's contract (base, count).
    #[error("{tensor}: {violation}")]
    Contract {
        /// Tensor name.
        tensor: String,
        /// Which rule is broken.
        violation: ContractViolation,
    },
    /// A random method was called without its random stream.
    #[error("{method} draws random numbers and was given no random stream")]
    NoRandomStream {
        /// Method name.
        method: String,
    },
    /// The method has no float64 arithmetic (see `MergeMethod::supports_f64`).
    #[error("float64 arithmetic of merge_method {method} is not supported yet")]
    Float64Unsupported {
        /// Method name.
        method: String,
    },
    /// Anything else that makes the merge impossible.
    #[error("{0}")]
    Other(String),
}
