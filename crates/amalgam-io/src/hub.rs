//! Model references resolved to folders: local paths, or Hub ids found in the Hugging Face cache.
//!
//! Resolution here is offline: a model that is neither a local folder nor in the cache is an
//! error that lists every place looked at. [`crate::download::resolve_or_download`] adds the
//! network: it fetches a missing Hub id into the same layout, then resolves it here.
//!
//! Cache layout (as `huggingface_hub` writes it):
//! `<cache>/models--<org>--<name>/refs/<branch or tag>` holds a commit sha, and
//! `<cache>/models--<org>--<name>/snapshots/<sha>/` holds the files (usually symlinks into
//! `blobs/`, which the OS follows transparently).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::display::{safe, safe_path};
use crate::{Error, Result};

/// Largest ref file read. `huggingface_hub` writes a 40-character commit id; a bigger file is
/// not a ref, and its content (it could be anything, 50 MB of it) must not reach a message.
pub const MAX_REF_LEN: u64 = 1024;

/// Why a `refs/<name>` file gives no commit id.
enum RefProblem {
    /// No such ref (the revision may be a commit id).
    Absent,
    /// There is something, but not a ref file: what is wrong, safe to print.
    Bad(String),
}

/// The commit id in a ref file. The file is never followed if it is a symlink (a link to
/// `/etc/passwd` would print that file in the "snapshot missing" message), never read past
/// [`MAX_REF_LEN`], and must be printable text; surrounding whitespace is ignored.
fn read_ref(path: &Path) -> std::result::Result<String, RefProblem> {
    use std::io::Read as _;
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RefProblem::Absent),
        Err(e) => return Err(RefProblem::Bad(format!("cannot be read ({e})"))),
        Ok(m) => m,
    };
    if meta.file_type().is_symlink() {
        return Err(RefProblem::Bad(
            "is a symlink, not a ref file; it is not followed".into(),
        ));
    }
    if !meta.is_file() {
        return Err(RefProblem::Bad("is not a regular file".into()));
    }
    if meta.len() > MAX_REF_LEN {
        return Err(RefProblem::Bad(format!(
            "is {} bytes, far too large for a commit id (40 hex digits)",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_REF_LEN + 1).read_to_end(&mut bytes))
        .map_err(|e| RefProblem::Bad(format!("cannot be read ({e})")))?;
    if bytes.len() as u64 > MAX_REF_LEN {
        return Err(RefProblem::Bad("grew while being read".into()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| RefProblem::Bad("is not text (a ref holds a commit id)".into()))?;
    let sha = text.trim();
    if sha.chars().any(char::is_control) {
        return Err(RefProblem::Bad(
            "holds control characters, not a commit id".into(),
        ));
    }
    Ok(sha.to_string())
}

/// The Hugging Face hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = var("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = var("HOME")
        .or_else(|| var("USERPROFILE"))
        .unwrap_or_default();
    PathBuf::from(home).join(".cache/huggingface/hub")
}

/// Resolves `path` (a local folder, or a Hub id `org/name`) at optional `revision` (branch, tag or
/// commit) to a folder. `base` is the folder relative paths are taken from. Offline: only the
/// cache is consulted. The error lists every place looked at.
pub fn resolve(path: &str, revision: Option<&str>, base: &Path) -> Result<PathBuf> {
    resolve_in(path, revision, base, &cache_dir())
}

/// Whether `s` can be a Hub repository id (`name` or `org/name`): the cache is only consulted
/// for those, so a mistyped local path is not reported as a missing Hub model.
pub(crate) fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let ok = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (1..=2).contains(&parts.len()) && parts.iter().all(ok)
}

/// A revision must stay inside `refs/` and `snapshots/`.
pub(crate) fn is_safe_revision(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with('/')
        && r.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// Like [`resolve`] with an explicit cache folder (used by tests and `--hf-cache`).
pub fn resolve_in(
    path: &str,
    revision: Option<&str>,
    base: &Path,
    cache: &Path,
) -> Result<PathBuf> {
    let mut looked = String::new();
    let local = base.join(path);
    if local.is_dir() {
        return Ok(local);
    }
    let _ = writeln!(looked, "  {} (local folder)", safe_path(&local));
    if is_repo_id(path) {
        let repo = cache.join(format!("models--{}", path.replace('/', "--")));
        let rev = revision.unwrap_or("main");
        if is_safe_revision(rev) {
            let ref_file = repo.join("refs").join(rev);
            match read_ref(&ref_file) {
                Ok(sha) => {
                    let snap = repo.join("snapshots").join(&sha);
                    // A ref file holds a commit id; anything with a path separator (`/etc`,
                    // `../x`) would lead `join` out of the snapshots folder.
                    let plain =
                        !sha.is_empty() && !sha.contains(['/', '\\']) && sha != "." && sha != "..";
                    if plain && snap.is_dir() {
                        return Ok(snap);
                    }
                    let _ = writeln!(
                        looked,
                        "  {} (revision `{}` -> commit `{}`, snapshot missing)",
                        safe_path(&snap),
                        safe(rev),
                        safe(&sha)
                    );
                }
                Err(RefProblem::Absent) => {
                    let _ = writeln!(
                        looked,
                        "  {} (revision `{}`)",
                        safe_path(&ref_file),
                        safe(rev)
                    );
                }
                Err(RefProblem::Bad(why)) => {
                    let _ = writeln!(
                        looked,
                        "  {} (revision `{}`: {why}; not used, the cache is damaged: delete this \
                         ref or download the model again)",
                        safe_path(&ref_file),
                        safe(rev)
                    );
                }
            }
            let snap = repo.join("snapshots").join(rev);
            if snap.is_dir() {
                return Ok(snap);
            }
            let _ = writeln!(looked, "  {} (commit `{}`)", safe_path(&snap), safe(rev));
        } else {
            let _ = writeln!(
                looked,
                "  (revision `{}` is not a valid revision name)",
                safe(rev)
            );
        }
    }
    Err(Error::Unresolved {
        reference: match revision {
            Some(r) => format!("{path}@{r}"),
            None => path.to_string(),
        },
        looked: looked.trim_end().to_string(),
    })
}
