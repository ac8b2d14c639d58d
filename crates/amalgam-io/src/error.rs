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
    /// `HF_HUB_OFFLINE` is set and the model is not in the cache.
    #[error("cannot find model `{reference}` and HF_HUB_OFFLINE is set, so it was not downloaded; looked in:\n{looked}\n(unset HF_HUB_OFFLINE, or fetch it first with `amalgam download {reference}`)")]
    HubOffline {
        /// The reference as written.
        reference: String,
        /// Every place that was tried, one per line.
        looked: String,
    },
    /// A Hub id that is not a local folder nor cached, and that the Hub did not provide.
    #[error(
        "cannot find model `{reference}`: {hub}\nnot found locally either; looked in:\n{looked}"
    )]
    NotFetched {
        /// The reference as written.
        reference: String,
        /// Every place that was tried, one per line.
        looked: String,
        /// Why the Hub did not provide it (in the message, so not also an error `source`, which
        /// `{:#}` would print a second time).
        hub: Box<Error>,
    },
    /// The Hub refused access (401/403): a gated or private repository, or a bad token.
    #[error("{repo}: the Hub refused access (HTTP {status}){}", match token_source {
        None => " and no token was sent: the repository is gated or private (or does not exist). \
                 Run `huggingface-cli login` or set HF_TOKEN to a token that can read it \
                 (for a gated model, accept its terms on its Hub page first)".to_string(),
        Some(src) => format!(" with the token from {src}: that token cannot read this \
                 repository (gated, private, or it does not exist). For a gated model accept its \
                 terms on its Hub page; else run `huggingface-cli login` or set HF_TOKEN to a \
                 token with access"),
    })]
    HubAccess {
        /// The repository id.
        repo: String,
        /// 401 or 403.
        status: u16,
        /// Where the token that was sent came from (`HF_TOKEN`, a token file), if one was.
        token_source: Option<String>,
    },
    /// The repository, revision or file does not exist on the Hub (404).
    #[error("{repo}: {what} not found on the Hub ({url})")]
    HubNotFound {
        /// The repository id.
        repo: String,
        /// What was missing: `revision `main``, `file `config.json``...
        what: String,
        /// The URL asked.
        url: String,
    },
    /// The Hub answered with an HTTP error other than 401/403/404 (after retries for 5xx).
    #[error("{url}: the Hub answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    HubHttp {
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body (the Hub explains errors there).
        body: String,
    },
    /// The Hub could not be reached (connection refused, reset, timeout), after retries.
    #[error("{url}: cannot reach the Hub ({attempts} attempt{}): {reason} (set HF_HUB_OFFLINE=1 to use only the cache)", if *attempts == 1 { "" } else { "s" })]
    HubNetwork {
        /// The URL asked.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// The Hub's answer is not what its API documents (missing commit, ETag, malformed JSON).
    #[error("{url}: unexpected answer from the Hub: {reason}")]
    HubResponse {
        /// The URL asked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A downloaded file's bytes do not match the checksum the Hub announced; it was deleted.
    #[error("{repo}: `{file}` downloaded with {algorithm} {actual}, but the Hub announced {expected}; the download was deleted (retry, or check HF_ENDPOINT / any proxy)")]
    ChecksumMismatch {
        /// The repository id.
        repo: String,
        /// The file in the repository.
        file: String,
        /// `sha256` (LFS files) or `git sha1` (small files).
        algorithm: String,
        /// The ETag the Hub announced.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A Hub repository has only pickle weights, which amalgam does not read.
    #[error("{repo}@{revision} has only pickle weights (.bin), which amalgam does not read yet; nothing was downloaded (convert the model to safetensors, or use a safetensors revision)")]
    PickleOnlyRepo {
        /// The repository id.
        repo: String,
        /// The revision asked.
        revision: String,
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
