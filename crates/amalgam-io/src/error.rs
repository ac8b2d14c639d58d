use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way reading or writing a checkpoint can fail. Each variant names the file (and tensor)
/// so the message can be acted upon without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is shorter than the 8-byte header length prefix.
    #[error(
        "{path}: not a safetensors file: {len} bytes is too short for the 8-byte header length"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The declared header length is larger than the limit or than the file.
    #[error("{path}: header length {header_len} is invalid (file is {file_len} bytes, limit {limit}); the file is truncated or not safetensors")]
    HeaderLength {
        /// The file.
        path: PathBuf,
        /// The declared header length.
        header_len: u64,
        /// The file length.
        file_len: u64,
        /// The maximum header length accepted.
        limit: u64,
    },
    /// The header bytes are not UTF-8.
    #[error("{path}: invalid safetensors header: not UTF-8 (first invalid byte at header offset {valid_up_to})")]
    HeaderUtf8 {
        /// The file.
        path: PathBuf,
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The header is not JSON of the expected shape.
    #[error("{path}: invalid safetensors header: {reason}")]
    HeaderJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a dtype this crate does not know.
    #[error("{path}: tensor `{tensor}` has unknown dtype `{dtype}`")]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype string found.
        dtype: String,
    },
    /// shape x dtype size does not equal the byte span given by `data_offsets`.
    #[error("{path}: tensor `{tensor}`: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual}")]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: crate::DType,
        /// Its shape.
        shape: Vec<u64>,
        /// Bytes implied by shape and dtype (None if it overflows).
        expected: String,
        /// Bytes given by the offsets.
        actual: u64,
    },
    /// `data_offsets` point outside the data section or are reversed.
    #[error("{path}: tensor `{tensor}`: data_offsets [{begin}, {end}] are outside the data section of {data_len} bytes (file truncated?)")]
    OffsetsOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Begin offset.
        begin: u64,
        /// End offset.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("{path}: tensors `{first}` and `{second}` overlap in the data section")]
    Overlap {
        /// The file.
        path: PathBuf,
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// Bytes of the data section belong to no tensor.
    #[error("{path}: bytes {begin}..{end} of the data section belong to no tensor")]
    Hole {
        /// The file.
        path: PathBuf,
        /// Start of the hole.
        begin: u64,
        /// End of the hole.
        end: u64,
    },
    /// The same tensor name appears twice in one header.
    #[error("{path}: tensor `{tensor}` appears twice in the header")]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A model folder does not exist (or is not a folder).
    #[error("{path}: model folder not found (or not a directory)")]
    MissingFolder {
        /// The path that was given.
        path: PathBuf,
    },
    /// A folder holds no loadable checkpoint.
    #[error("{path}: no model found: expected model.safetensors or model.safetensors.index.json")]
    NoModelFiles {
        /// The folder.
        path: PathBuf,
    },
    /// A folder holds only pickle checkpoints.
    #[error("{path}: pickle checkpoints (pytorch_model*.bin) are not supported yet; convert the model to safetensors first")]
    PickleNotSupported {
        /// The folder.
        path: PathBuf,
    },
    /// The index file is malformed or names missing shards.
    #[error("{path}: invalid index: {reason}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor was asked for that the model does not have.
    #[error("{model}: tensor `{tensor}` not found")]
    TensorNotFound {
        /// The model folder.
        model: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A model reference could not be resolved to a folder.
    #[error("cannot find model `{reference}`; looked in:\n{looked}")]
    Unresolved {
        /// The reference as written.
        reference: String,
        /// Every place that was tried, one per line.
        looked: String,
    },
    /// The output folder exists and is not empty.
    #[error("{path}: output folder exists and is not empty; choose a new path or remove it")]
    OutputExists {
        /// The folder.
        path: PathBuf,
    },
    /// [`crate::OutputWriter::finish`] was called before every byte of a tensor was written.
    #[error("{path}: tensor `{tensor}` is incomplete: {written} of {expected} bytes written")]
    IncompleteTensor {
        /// The output folder.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Bytes written so far (distinct bytes).
        written: u64,
        /// Bytes the tensor has.
        expected: u64,
    },
    /// A conversion or write was asked for that is not possible.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
