//! Model folders, found by mergekit's rules.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Result, SafetensorsFile, TensorRef};

/// Checkpoint file names in mergekit's order of preference (`ShardedTensorIndex.from_disk`):
/// safetensors first, then a `torch.save` pickle. Each may be sharded with `<name>.index.json`.
const CANDIDATES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// A checkpoint folder: `model.safetensors` or `pytorch_model.bin`, or either's
/// `.index.json` with its shards. Every shard is opened and validated up front so errors
/// surface before a merge starts.
#[derive(Debug)]
pub struct ModelFolder {
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// File names as written in the index (or `model.safetensors`), parallel to `files`.
    file_names: Vec<String>,
    /// Tensor names in index order (file order for a single file).
    names: Vec<String>,
    /// Tensor name -> index into `files`.
    by_name: HashMap<String, usize>,
}

impl ModelFolder {
    /// Opens a folder; one with no checkpoint gets [`crate::Error::NoModelFiles`].
    ///
    /// Discovery follows mergekit's `ShardedTensorIndex.from_disk`: the first of
    /// `model.safetensors` and `pytorch_model.bin` that exists, alone or as
    /// `<name>.index.json`, is used; its index wins over the single file. The index must be a
    /// JSON object with a `weight_map` object of string file names; every shard must exist and
    /// hold each tensor the index puts there. Shards named `*.safetensors` are read as
    /// safetensors and others as `torch.save` archives ([`SafetensorsFile::open_torch`]), as
    /// mergekit's `TensorLoader.get` does.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_dir() {
            return Err(Error::MissingFolder { path });
        }
        for single_name in CANDIDATES {
            let index_path = path.join(format!("{single_name}.index.json"));
            let single = path.join(single_name);
            if index_path.is_file() {
                return Self::open_index(path, &index_path);
            }
            if single.is_file() {
                let file = crate::torch::open_shard(&single)?;
                let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
                let by_name = names.iter().map(|n| (n.clone(), 0)).collect();
                return Ok(ModelFolder {
                    path,
                    files: vec![file],
                    file_names: vec![single_name.to_string()],
                    names,
                    by_name,
                });
            }
        }
        Err(Error::NoModelFiles { path })
    }

    fn open_index(path: PathBuf, index_path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Index {
            path: index_path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, e))?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .ok_or_else(|| bad("no `weight_map`".into()))?
            .as_object()
            .ok_or_else(|| bad("`weight_map` is not an object".into()))?;
        let mut files = Vec::new();
        let mut file_names: Vec<String> = Vec::new();
        let mut file_idx: HashMap<String, usize> = HashMap::new();
        let mut names = Vec::with_capacity(map.len());
        let mut by_name = HashMap::with_capacity(map.len());
        // The folder shards must resolve into, computed at the first shard.
        let mut root: Option<PathBuf> = None;
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| bad(format!("tensor `{tensor}`: shard name is not a string")))?;
            let k = match file_idx.get(shard) {
                Some(&k) => k,
                None => {
                    let shard_path = checked_shard(&path, index_path, tensor, shard, &mut root)?;
                    files.push(crate::torch::open_shard(&shard_path)?);
                    file_names.push(shard.to_string());
                    file_idx.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            let in_shard = files.get(k).is_some_and(|f| f.get(tensor).is_some());
            if !in_shard {
                return Err(bad(format!("tensor `{tensor}` is not in shard `{shard}`")));
            }
            names.push(tensor.clone());
            by_name.insert(tensor.clone(), k);
        }
        Ok(ModelFolder {
            path,
            files,
            file_names,
            names,
            by_name,
        })
    }

    /// The folder path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names (index order for sharded folders, file order otherwise).
    pub fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// Looks a tensor up.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.files.get(*self.by_name.get(name)?)?.get(name)
    }

    /// Like [`ModelFolder::get`], but a missing tensor is an error naming the model.
    pub fn require(&self, name: &str) -> Result<TensorRef<'_>> {
        self.get(name).ok_or_else(|| Error::TensorNotFound {
            model: self.path.clone(),
            tensor: name.to_string(),
        })
    }

    /// Copies `part` (a slice of one of this folder's tensors) into `buf` with positioned reads;
    /// see [`SafetensorsFile::read_part`]. Falls back to copying from the mapping.
    pub fn read_part(&self, part: &[u8], buf: &mut [u8]) -> Result<()> {
        for f in self.files() {
            if f.read_part(part, buf)? {
                return Ok(());
            }
        }
        if buf.len() == part.len() {
            buf.copy_from_slice(part);
        }
        Ok(())
    }

    /// The shard files, in index order (order of first appearance in the index's
    /// `weight_map`).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// The shard file holding `name` (as named in the index), for mergekit 0.0.4.2's
    /// shard-grouped save order.
    pub fn shard_of(&self, name: &str) -> Option<&str> {
        self.file_names
            .get(*self.by_name.get(name)?)
            .map(String::as_str)
    }

    /// Path of an auxiliary file in the folder (config.json, tokenizer...), if present.
    ///
    /// A symlink leading outside the folder is still returned (so a caller that copies it gets
    /// [`crate::OutputWriter::copy_file`]'s refusal rather than a silently missing file); use
    /// [`ModelFolder::side_file`] to have it refused here.
    pub fn aux_file(&self, name: &str) -> Option<PathBuf> {
        let p = self.path.join(name);
        p.is_file().then_some(p)
    }

    /// Like [`ModelFolder::aux_file`], but a file that resolves outside the model folder (for
    /// a Hugging Face cache snapshot: outside the repository folder, where `blobs/` is) is
    /// [`crate::Error::SideFileOutsideFolder`], and a name that is not a plain relative path
    /// is [`crate::Error::Invalid`].
    pub fn side_file(&self, name: &str) -> Result<Option<PathBuf>> {
        let plain = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if name.is_empty() || !plain {
            return Err(Error::Invalid(format!(
                "side file `{}` must be a plain name inside the model folder",
                crate::display::safe(name)
            )));
        }
        let p = self.path.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        check_side_file(&p, &self.path)?;
        Ok(Some(p))
    }
}

/// The folder whose files `folder`'s files may resolve into: the folder itself (symlinks
/// resolved), except for a Hugging Face cache snapshot (`models--org--name/snapshots/<sha>`),
/// whose files are symlinks into `../../blobs`: there it is the repository folder.
pub(crate) fn confinement_root(folder: &Path) -> std::io::Result<PathBuf> {
    let canon = folder.canonicalize()?;
    let snapshots = canon.parent();
    let repo = snapshots.and_then(Path::parent);
    if let (Some(snapshots), Some(repo)) = (snapshots, repo) {
        let is_snapshots = snapshots.file_name().is_some_and(|n| n == "snapshots");
        let is_repo = repo
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("models--"));
        if is_snapshots && is_repo {
            return Ok(repo.to_path_buf());
        }
    }
    Ok(canon)
}

/// Checks that `file` (in `folder`) resolves inside [`confinement_root`] of `folder`.
pub(crate) fn check_side_file(file: &Path, folder: &Path) -> Result<()> {
    let root = confinement_root(folder).map_err(|e| Error::io(folder, e))?;
    let target = file.canonicalize().map_err(|e| Error::io(file, e))?;
    if target.starts_with(&root) {
        Ok(())
    } else {
        Err(Error::SideFileOutsideFolder {
            path: file.to_path_buf(),
            target,
            root,
        })
    }
}

/// The path of shard `shard` named by the index for `tensor`, refused unless it is a relative
/// path without `..` that resolves to a regular file inside the model folder. `root` caches
/// the folder's [`confinement_root`].
fn checked_shard(
    folder: &Path,
    index: &Path,
    tensor: &str,
    shard: &str,
    root: &mut Option<PathBuf>,
) -> Result<PathBuf> {
    let root = match root {
        Some(r) => r.clone(),
        None => {
            let r = confinement_root(folder).map_err(|e| Error::io(folder, e))?;
            *root = Some(r.clone());
            r
        }
    };
    let outside = |why: String| Error::ShardOutsideFolder {
        index: index.to_path_buf(),
        tensor: tensor.to_string(),
        shard: shard.to_string(),
        why,
        root: root.clone().into_boxed_path(),
    };
    let rel = Path::new(shard);
    if rel.is_absolute() || rel.has_root() {
        return Err(outside("is an absolute path".into()));
    }
    if rel.components().any(|c| c == Component::ParentDir) {
        return Err(outside("goes up with `..`".into()));
    }
    if !rel.components().any(|c| matches!(c, Component::Normal(_)))
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::Index {
            path: index.to_path_buf(),
            reason: format!("tensor `{tensor}`: `{shard}` is not a file name"),
        });
    }
    let shard_path = folder.join(rel);
    let bad = |reason: String| Error::Index {
        path: index.to_path_buf(),
        reason,
    };
    match std::fs::metadata(&shard_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!(
                "shard `{shard}` (of tensor `{tensor}`) does not exist{}",
                if shard_path.symlink_metadata().is_ok() {
                    " (a dangling symlink)"
                } else {
                    ""
                }
            )))
        }
        Err(e) => return Err(Error::io(&shard_path, e)),
        Ok(m) if m.is_dir() => {
            return Err(bad(format!(
                "shard `{shard}` (of tensor `{tensor}`) is a directory, not a file"
            )))
        }
        Ok(m) if !m.is_file() => {
            return Err(bad(format!(
                "shard `{shard}` (of tensor `{tensor}`) is not a regular file"
            )))
        }
        Ok(_) => {}
    }
    let target = shard_path
        .canonicalize()
        .map_err(|e| Error::io(&shard_path, e))?;
    if !target.starts_with(&root) {
        return Err(outside(format!(
            "resolves to {}",
            crate::display::safe_path(&target)
        )));
    }
    Ok(shard_path)
}
