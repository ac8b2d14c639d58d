use std::path::PathBuf;

/// Everything that can stop a merge, unmix or verify. Planning errors are raised before any byte
/// is written; execution errors leave no finished-looking output (the writer works in a temporary
/// folder). Each variant carries the tensor, model, path or method it is about, so callers and
/// tests can match on what went wrong rather than on message text; the messages keep mergekit's
/// wording where mergekit has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading or writing tensors failed.
    #[error(transparent)]
    Io(#[from] amalgam_io::Error),
    /// The configuration is invalid (the same diagnostics `amalgam validate` prints).
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
    /// A merge method returned a tensor of the wrong size (a bug in the method).
    #[error("{tensor}: method `{method}` returned {got} elements, expected {want}")]
    MethodOutputSize {
        /// Output tensor.
        tensor: String,
        /// Method name.
        method: String,
        /// Elements returned.
        got: usize,
        /// Elements expected.
        want: usize,
    },
    /// `merge_method` names no registered method.
    #[error("Unimplemented merge method {method}; known methods: {known}")]
    UnknownMethod {
        /// The name in the config.
        method: String,
        /// Registered names, comma-separated.
        known: String,
    },
    /// `dtype` / `out_dtype` is not a dtype mergekit knows.
    #[error(
        "{key}: unknown dtype `{name}`; mergekit accepts bfloat16, float16, float32, float64, int64"
    )]
    UnknownDtype {
        /// `dtype` or `out_dtype`.
        key: &'static str,
        /// The value given.
        name: String,
    },
    /// A parameter value cannot be coerced to its declared type for a tensor.
    #[error("parameter `{param}` for {tensor}: {source}")]
    ParamValue {
        /// Parameter name.
        param: String,
        /// Tensor (or `model.tensor`) being resolved.
        tensor: String,
        /// Why (boxed: the error type stays small on the hot paths that return it).
        source: Box<amalgam_config::CoerceError>,
    },
    /// A required parameter has no value in any scope (mergekit's message).
    #[error("{}", missing_param(param, model.as_deref(), tensor))]
    MissingParam {
        /// Parameter name.
        param: String,
        /// The model's label, for per-input parameters.
        model: Option<String>,
        /// The tensor name (the model's input tensor for per-input parameters).
        tensor: String,
    },
    /// The config has neither a non-empty `models:` nor `slices:`.
    #[error("{0}")]
    NoSlices(&'static str),
    /// An output slice has no sources.
    #[error("{at}[{slice}]: no input models (the `models:` or `sources:` list is empty)")]
    EmptySlice {
        /// Where the slices are: `slices` or `modules.default.slices`.
        at: String,
        /// Slice index.
        slice: usize,
    },
    /// A `layer_range` is reversed or outside its model.
    #[error("{at}[{slice}]: layer_range [{start}, {end}] {problem}")]
    LayerRange {
        /// Where the slices are: `slices` or `modules.default.slices`.
        at: String,
        /// Slice index.
        slice: usize,
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// What is wrong, with the model.
        problem: String,
    },
    /// The sources of a slice cover different numbers of layers (mergekit's message).
    #[error(
        "{at}[{slice}]: All inputs to a slice must contain the same number of layers (got {lens:?})"
    )]
    LayerCounts {
        /// Where the slices are: `slices` or `modules.default.slices`.
        at: String,
        /// Slice index.
        slice: usize,
        /// Layers per source.
        lens: Vec<usize>,
    },
    /// A model has no tensors for a layer the config reads.
    #[error("model {model} has no tensors for layer {layer}")]
    MissingLayer {
        /// Model label.
        model: String,
        /// Layer index.
        layer: usize,
    },
    /// A tensor the plan needs is not in a model (mergekit's message).
    #[error("Tensor {tensor} required but not present in model {model} ({})", path.display())]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// Model label.
        model: String,
        /// Model folder.
        path: PathBuf,
    },
    /// A model's tokenizer cannot be used for vocabulary alignment.
    #[error("tokenizer of {model}: {reason}")]
    Tokenizer {
        /// Model label.
        model: String,
        /// Why.
        reason: String,
    },
    /// A tokenizer setting names a model that is not an input of the merge.
    #[error(
        "{what} names {model}, which is not among the merge's input models (add it to \
         `models:`/`slices:` or `base_model`, or name one of them)"
    )]
    TokenizerModel {
        /// The setting (`tokenizer source`, `tokenizer.tokens.<tok>.source`).
        what: String,
        /// The model reference.
        model: String,
    },
    /// A vocabulary-indexed tensor cannot be aligned (mergekit's assertion or ValueError).
    #[error("{tensor}: {reason}")]
    VocabAlign {
        /// Output tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// `chat_template` is neither `auto`, a built-in name nor a Jinja template (mergekit:

    /// The inputs of a tensor have different shapes (mergekit's message, with a hint).
    #[error("Tensor size mismatch for {tensor}: {}{hint}", shapes.join(", "))]
    ShapeMismatch {
        /// Output tensor.
        tensor: String,
        /// `model [shape]` per input.
        shapes: Vec<String>,
        /// Extra advice (vocabulary sizes), possibly empty.
        hint: &'static str,
    },
    /// A tensor whose size cannot be addressed.
    #[error("{tensor}: shape {shape:?} is too large to address")]
    TooLarge {
        /// Tensor name.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A working dtype amalgam cannot merge in.
    #[error("{tensor}: {reason}")]
    WorkDtype {
        /// Output tensor.
        tensor: String,
        /// Which dtype and what to use instead.
        reason: String,
    },
    /// An integer/bool buffer differs between inputs.
    #[error(
        "Non-floating buffer '{tensor}' differs between inputs; amalgam cannot merge integer tensors"
    )]
    BufferDiffers {
        /// Output tensor.
        tensor: String,
    },
    /// A tensor's bytes are shorter than its shape says.
    #[error("{}: `{tensor}` is shorter than its shape", file.display())]
    ShortTensor {
        /// The shard.
        file: PathBuf,
        /// Tensor name.
        tensor: String,
    },
    /// An `#expert=K` view cannot be built from a checkpoint.
    #[error("{}: {reason}", path.display())]
    Expert {
        /// The model folder.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// Models of different architectures, without `--allow-crimes` (mergekit's message).
    #[error(
        "Must specify --allow-crimes to attempt to mix different architectures ({})",
        archs.join(", ")
    )]
    MixedArchitectures {
        /// `model is Architecture`, per model.
        archs: Vec<String>,
    },
    /// `--moe-layout per-expert` on a merge whose output is not a Mixtral.
    #[error(
        "--moe-layout per-expert applies to Mixtral (mixture-of-experts) outputs only; the \
         output model {model} is {arch}: drop the option"
    )]
    MoeLayout {
        /// The donor model.
        model: String,
        /// Its architecture (model_type).
        arch: String,
    },
    /// A model's config.json lacks a module's layer count (mergekit reads it there).
    #[error(
        "model {model}: config.json has no `{key}`, the layer count of module {module} (mergekit \
         reads it there)"
    )]
    ModuleLayerCount {
        /// Model label.
        model: String,
        /// Module name.
        module: String,
        /// Dotted config.json key.
        key: String,
    },
    /// A `modules:` key that is not a module of the merge's architecture (mergekit: KeyError).
    #[error(
        "{path}: not a module of architecture {arch} (model {model}); mergekit 0.1.5 names its \
         modules {known}"
    )]
    UnknownModule {
        /// YAML path of the module.
        path: String,
        /// The architecture class.
        arch: String,
        /// The model the architecture is read from.
        model: String,
        /// The architecture's module names.
        known: String,
    },
    /// Top-level `slices:` on a multi-module architecture (mergekit's message).
    #[error(
        "slices: Model has multiple modules, must use modules: config syntax to work with slices \
         (its modules are {modules})"
    )]
    MultiModuleSlices {
        /// The architecture's module names.
        modules: String,
    },
    /// A feature mergekit has and amalgam does not implement yet.
    #[error("`{key}` (at {path}) is not supported yet by amalgam; {advice}")]
    Unsupported {
        /// YAML path (or the model, for checkpoint features).
        path: String,
        /// The key or feature.
        key: String,
        /// What to do instead.
        advice: String,
    },
    /// A side file (config.json...) could not be read or written.
    #[error("{}: {reason}", path.display())]
    SideFile {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `verify` was pointed at something it cannot compare with.
    #[error("{}: {reason}", path.display())]
    Verify {
        /// The model folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// mergekit's text for a parameter no scope gives.
fn missing_param(param: &str, model: Option<&str>, tensor: &str) -> String {
    match model {
        Some(m) => format!("Missing required parameter {param} for {m}.{tensor}"),
        None => format!("Missing required parameter {param} for {tensor}"),
    }
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
