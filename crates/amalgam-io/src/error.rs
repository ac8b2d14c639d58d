use std::path::PathBuf;

use crate::display::{safe, safe_path};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way reading or writing a checkpoint can fail. Each variant names the file (and tensor)
/// so the message can be acted upon without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named path.
    #[error("{}: {source}", safe_path(.path))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is shorter than the 8-byte header length prefix.
    #[error(
        "{}: not a safetensors file: {len} bytes is too short for the 8-byte header length",
        safe_path(.path)
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The declared header length is larger than the limit or than the file.
    #[error("{}: header length {header_len} is invalid (file is {file_len} bytes, limit {limit}); the file is truncated or not safetensors", safe_path(.path))]
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
    #[error("{}: invalid safetensors header: not UTF-8 (first invalid byte at header offset {valid_up_to})", safe_path(.path))]
    HeaderUtf8 {
        /// The file.
        path: PathBuf,
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The header is not JSON of the expected shape.
    #[error("{}: invalid safetensors header: {}", safe_path(.path), safe(.reason))]
    HeaderJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a dtype this crate does not know.
    #[error("{}: tensor `{}` has unknown dtype `{}`", safe_path(.path), safe(.tensor), safe(.dtype))]
    UnknownDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype string found.
        dtype: String,
    },
    /// shape x dtype size does not equal the byte span given by `data_offsets`.
    #[error("{}: tensor `{}`: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual}", safe_path(.path), safe(.tensor))]
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
    /// `data_offsets` point past the end of the data section, or end before they begin (a
    /// corrupt header, not a short file: the message says which).
    #[error("{}: tensor `{}`: data_offsets [{begin}, {end}] {}", safe_path(.path), safe(.tensor), offsets_problem(*.begin, *.end, *.data_len))]
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
    #[error("{}: tensors `{}` and `{}` overlap in the data section", safe_path(.path), safe(.first), safe(.second))]
    Overlap {
        /// The file.
        path: PathBuf,
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// Bytes of the data section belong to no tensor.
    #[error("{}: bytes {begin}..{end} of the data section belong to no tensor", safe_path(.path))]
    Hole {
        /// The file.
        path: PathBuf,
        /// Start of the hole.
        begin: u64,
        /// End of the hole.
        end: u64,
    },
    /// The same tensor name appears twice in one header.
    #[error("{}: tensor `{}` appears twice in the header", safe_path(.path), safe(.tensor))]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A model folder does not exist (or is not a folder).
    #[error("{}: model folder not found (or not a directory)", safe_path(.path))]
    MissingFolder {
        /// The path that was given.
        path: PathBuf,
    },
    /// A folder holds no loadable checkpoint.
    #[error("{}: no model found: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json", safe_path(.path))]
    NoModelFiles {
        /// The folder.
        path: PathBuf,
    },
    /// A `torch.save` file in the legacy (pre-1.6, non-zip) format, which amalgam does not read.
    #[error("{}: legacy torch format (not a zip archive; torch < 1.6 or `_use_new_zipfile_serialization=False`), not supported; re-save it with a recent torch or convert the model to safetensors", safe_path(.path))]
    LegacyTorch {
        /// The file.
        path: PathBuf,
    },
    /// A `.bin` file whose zip structure is invalid (truncated, not a zip, compressed members).
    #[error("{}: not a readable torch.save archive: {}", safe_path(.path), safe(.reason))]
    TorchZip {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The pickle of a `.bin` file references a global outside the allow-list (a checkpoint
    /// that would run code under `torch.load`, such as `posix.system`); nothing was executed.
    #[error("{}: refused: the pickle references `{}`, which is not one of the classes and functions a state dict needs (nothing was executed)", safe_path(.path), safe(.global))]
    PickleGlobal {
        /// The file.
        path: PathBuf,
        /// `module.name`.
        global: String,
    },
    /// The pickle of a `.bin` file is malformed or uses what a state dict does not.
    #[error("{}: invalid pickle at byte {offset} of data.pkl: {}", safe_path(.path), safe(.reason))]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Byte offset of the opcode in `data.pkl`.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tensor of a `.bin` file cannot be served: strided, or outside its storage.
    #[error("{}: tensor `{}`: {}", safe_path(.path), safe(.tensor), safe(.reason))]
    TorchTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The index file is malformed or names missing shards.
    #[error("{}: invalid index: {}", safe_path(.path), safe(.reason))]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor was asked for that the model does not have.
    #[error("{}: tensor `{}` not found", safe_path(.model), safe(.tensor))]
    TensorNotFound {
        /// The model folder.
        model: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A model reference could not be resolved to a folder.
    #[error("cannot find model `{}`; looked in:\n{looked}", safe(.reference))]
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
        algorithm: &'static str,
        /// The ETag the Hub announced.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A Hub repository has only pickle weights, which amalgam reads but, as mergekit, does not
    /// download.
    #[error("{repo}@{revision} has only pickle weights (.bin); amalgam reads them from a local folder or the cache, but downloads only what mergekit downloads (safetensors, json and tokenizer files), so nothing was downloaded (fetch it first with `hf download {repo}`, or use a safetensors revision)")]
    PickleOnlyRepo {
        /// The repository id.
        repo: String,
        /// The revision asked.
        revision: String,
    },
    /// A PEFT LoRA adapter folder that cannot be applied: a missing or malformed
    /// `adapter_config.json`, a PEFT feature amalgam does not implement (named), or weights
    /// that do not fit the model.
    #[error("LoRA adapter {}: {}", safe_path(.path), safe(.reason))]
    Lora {
        /// The adapter folder (or file).
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The output path exists and is not an empty folder.
    #[error("{}: the output path exists and is {what}; choose a new path or remove it", safe_path(.path))]
    OutputExists {
        /// The path.
        path: PathBuf,
        /// What is there ("a folder that is not empty", "a file", "a character device"...).
        what: &'static str,
    },
    /// An index names a shard outside the model folder (`..`, an absolute path, or a symlink
    /// leading out). Reading it would let a downloaded model make amalgam read any file.
    #[error("{}: tensor `{}`: shard `{}` {why}; refused: an index may only name files inside the model folder {}", safe_path(.index), safe(.tensor), safe(.shard), safe_path(.root))]
    ShardOutsideFolder {
        /// The index file.
        index: PathBuf,
        /// The first tensor the index puts in that shard.
        tensor: String,
        /// The shard name as written in the index.
        shard: String,
        /// What is wrong with it.
        why: String,
        /// The folder it must stay in (boxed: keeps `Error` small).
        root: Box<std::path::Path>,
    },
    /// A side file (tokenizer, config) is a symlink that resolves outside the model folder.
    /// Side files are copied by content into an output folder that is usually published, so a
    /// link to `/etc/shadow` or `/proc/self/environ` (which may hold `HF_TOKEN`) must not be
    /// followed.
    #[error("{}: a symlink to {}, outside the model folder {}; refused, as its content would be copied into the output (copy the file into the model folder if it is meant to be there)", safe_path(.path), safe_path(.target), safe_path(.root))]
    SideFileOutsideFolder {
        /// The side file in the model folder.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
        /// The folder it must stay in (the repository folder for a Hugging Face cache snapshot).
        root: PathBuf,
    },
    /// [`crate::OutputWriter::finish`] was called before every byte of a tensor was written.
    #[error("{}: tensor `{}` is incomplete: {written} of {expected} bytes written", safe_path(.path), safe(.tensor))]
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

/// What is wrong with a tensor's `data_offsets`.
fn offsets_problem(begin: u64, end: u64, data_len: u64) -> String {
    if begin > end {
        "are reversed (the end is before the begin): the header is corrupt".into()
    } else {
        format!("are outside the data section of {data_len} bytes (file truncated?)")
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
