//! `merge --overwrite`: replacing an existing model folder without ever leaving a mix of the old
//! and the new model.
//!
//! mergekit writes into an existing folder, file by file. Files of the old model that the new
//! one does not have (a shard `model-00005-of-00005.safetensors` when the new model has three,
//! a tokenizer the new donor lacks) stay behind, and a merge that fails halfway leaves an old
//! index pointing at half-written shards; transformers loads such a folder without complaint.
//! So amalgam refuses a non-empty output folder by default, and `--overwrite` replaces the
//! whole folder, only once the new model is complete: the merge runs into a staging folder
//! beside the target, then two renames swap it in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where a merge writes, and what to do once it succeeded.
pub(crate) struct Target {
    /// The folder to pass to the engine.
    pub(crate) merge_into: PathBuf,
    /// Set when an existing folder is to be replaced.
    swap: Option<Swap>,
}

struct Swap {
    /// Holds `merge_into` (and nothing else).
    staging: PathBuf,
    /// Where the old model is moved while the new one is renamed into place.
    old: PathBuf,
    /// The final path.
    out: PathBuf,
}

impl Target {
    /// Decides where to merge for `out`. Without `overwrite`, or when `out` does not exist or is
    /// an empty folder, that is `out` itself (the writer refuses a non-empty folder). With
    /// `overwrite` and a non-empty model folder, a staging folder beside it.
    pub(crate) fn prepare(out: &Path, overwrite: bool) -> Result<Target> {
        let direct = Target {
            merge_into: out.to_path_buf(),
            swap: None,
        };
        if !overwrite {
            return Ok(direct);
        }
        let meta = match std::fs::symlink_metadata(out) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(direct),
            Err(e) => return Err(e).with_context(|| format!("{}", out.display())),
            Ok(m) => m,
        };
        if meta.file_type().is_symlink() || !meta.is_dir() {
            bail!(
                "{}: exists and is not a folder; --overwrite replaces only a model folder",
                out.display()
            );
        }
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if empty {
            return Ok(direct);
        }
        check_replaceable(out)?;
        let name = out
            .file_name()
            .with_context(|| format!("{}: output path has no folder name", out.display()))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // The merge goes to staging/<name>, not to a renamed folder, because the model card
        // is titled with the output folder's name.
        let hidden = |what: &str| {
            parent.join(format!(
                ".{}.amalgam-{what}-{}",
                name.to_string_lossy(),
                std::process::id()
            ))
        };
        let (staging, old) = (hidden("overwrite"), hidden("old"));
        // Left by a crashed run that had the same pid: ours by construction. (`old` can hold
        // the only copy of a model only while `out` is missing, and `out` exists here.)
        for stale in [&staging, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale)
                    .with_context(|| format!("removing {}", stale.display()))?;
            }
        }
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        Ok(Target {
            merge_into: staging.join(name),
            swap: Some(Swap {
                staging,
                old,
                out: out.to_path_buf(),
            }),
        })
    }

    /// After a successful merge: swaps the new model in and deletes the old one. Returns the
    /// final path.
    pub(crate) fn commit(mut self, written: PathBuf) -> Result<PathBuf> {
        let Some(Swap { staging, old, out }) = self.swap.take() else {
            return Ok(written);
        };
        std::fs::rename(&out, &old)
            .with_context(|| format!("moving the old {} aside", out.display()))?;
        if let Err(e) = std::fs::rename(&written, &out) {
            // Put the old model back: the user is left exactly where they started.
            let _ = std::fs::rename(&old, &out);
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e).with_context(|| format!("moving the new model to {}", out.display()));
        }
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the old model (moved to {})", old.display()))?;
        Ok(out)
    }
}

impl Drop for Target {
    /// A failed merge leaves no staging folder (the writer already removed its own).
    fn drop(&mut self) {
        if let Some(swap) = &self.swap {
            let _ = std::fs::remove_dir_all(&swap.staging);
        }
    }
}

/// Files a model folder written by mergekit or amalgam holds, or that a user keeps beside one.
fn is_model_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".json")
        || name.ends_with(".bin")
        || name.ends_with(".model")
        || name.ends_with(".jinja")
        || name.ends_with(".txt")
        || name.ends_with(".md")
        || name.ends_with(".yml")
        || name.ends_with(".yaml")
        || name.starts_with('.')
}

/// `--overwrite` deletes the folder: refuse anything that does not look like a model folder
/// (a typo such as `merge c.yml . --overwrite` must not delete a project).
fn check_replaceable(out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
    let mut has_model = false;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", out.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(true);
        if is_dir || !is_model_file(&name) {
            bail!(
                "{}: --overwrite replaces only a model folder, and this one holds `{name}`; \
                 remove the folder yourself or choose another output path",
                out.display()
            );
        }
        has_model |= name == "config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || name == "mergekit_config.yml";
    }
    if !has_model {
        bail!(
            "{}: --overwrite replaces only a model folder (config.json or *.safetensors), and \
             this one holds neither; remove it yourself or choose another output path",
            out.display()
        );
    }
    Ok(())
}
