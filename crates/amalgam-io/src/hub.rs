//! Model references resolved to folders: local paths, or Hub ids found in the Hugging Face cache.
//!
//! SKELETON: filled in by the tensor I/O work.

use std::path::{Path, PathBuf};

use crate::Result;

/// The Hugging Face hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    todo!("io: cache_dir")
}

/// Resolves `path` (a local folder, or a Hub id `org/name`) at optional `revision` (branch, tag or
/// commit) to a folder. `base` is the folder relative paths are taken from. Offline: only the
/// cache is consulted. The error lists every place looked at.
pub fn resolve(path: &str, revision: Option<&str>, base: &Path) -> Result<PathBuf> {
    let _ = (path, revision, base);
    todo!("io: resolve")
}

/// Like [`resolve`] with an explicit cache folder (used by tests and `--hf-cache`).
pub fn resolve_in(path: &str, revision: Option<&str>, base: &Path, cache: &Path) -> Result<PathBuf> {
    let _ = (path, revision, base, cache);
    todo!("io: resolve_in")
}
