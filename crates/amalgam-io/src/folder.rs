//! Model folders, found by mergekit's rules.

use std::path::{Path, PathBuf};

use crate::{Result, SafetensorsFile, TensorRef};

/// A checkpoint folder: `model.safetensors`, or `model.safetensors.index.json` with its shards.
/// Every shard is opened and validated up front so errors surface before a merge starts.
#[derive(Debug)]
pub struct ModelFolder {
    _private: (),
}

impl ModelFolder {
    /// Opens a folder. A folder with only `pytorch_model*.bin` gets
    /// [`crate::Error::PickleNotSupported`]; an empty one [`crate::Error::NoModelFiles`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let _ = path;
        todo!("io: ModelFolder::open")
    }

    /// The folder path.
    pub fn path(&self) -> &Path {
        todo!("io: path")
    }

    /// All tensor names (index order for sharded folders, file order otherwise).
    pub fn names(&self) -> Vec<&str> {
        todo!("io: names")
    }

    /// Looks a tensor up.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let _ = name;
        todo!("io: get")
    }

    /// Like [`ModelFolder::get`], but a missing tensor is an error naming the model.
    pub fn require(&self, name: &str) -> Result<TensorRef<'_>> {
        let _ = name;
        todo!("io: require")
    }

    /// The shard files, in index order.
    pub fn files(&self) -> &[SafetensorsFile] {
        todo!("io: files")
    }

    /// The shard file holding `name` (as named in the index), for mergekit 0.0.4.2's
    /// shard-grouped save order.
    pub fn shard_of(&self, name: &str) -> Option<&str> {
        let _ = name;
        todo!("io: shard_of")
    }

    /// Path of an auxiliary file in the folder (config.json, tokenizer...), if present.
    pub fn aux_file(&self, name: &str) -> Option<PathBuf> {
        let _ = name;
        todo!("io: aux_file")
    }
}
