//! Streaming, positioned safetensors output with mergekit's sharding and index files.
//!
//! SKELETON: signatures are fixed (the engine codes against them); bodies are filled in by the
//! tensor I/O work.

use std::path::{Path, PathBuf};

use crate::{DType, Result};

/// A tensor the merge will produce: known before any byte is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Output name.
    pub name: String,
    /// Output dtype.
    pub dtype: DType,
    /// Output shape.
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Bytes of this tensor.
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// How shards are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRule {
    /// mergekit >= May 2024: the limit counts bytes of the output dtype.
    Bytes(u64),
    /// mergekit 0.0.4.2: the limit counts elements.
    Elements(u64),
}

/// File naming and index format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStyle {
    /// mergekit 0.1.5: one shard is `model.safetensors` without index; otherwise numbered shards
    /// and an `indent=2` index with metadata `{total_size, mergekit_version}`.
    Modern,
    /// mergekit 0.0.4.2: always numbered shards and a compact index with metadata
    /// `{mergekit_version, total_size}`.
    Legacy,
}

/// Everything that decides the output layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    /// Split rule and limit (0 = no limit).
    pub rule: ShardRule,
    /// Naming and index format.
    pub style: IndexStyle,
    /// Written as `mergekit_version` in the index metadata.
    pub mergekit_version: String,
}

/// The complete, precomputed layout of an output model: which shard holds which tensor at which
/// absolute byte offset, every shard header, and the index text.
#[derive(Debug, Clone)]
pub struct ShardLayout {
    _private: (),
}

impl ShardLayout {
    /// Plans shards for `tensors`, given in mergekit's save order.
    pub fn plan(tensors: Vec<PlannedTensor>, spec: &ShardSpec) -> Result<Self> {
        let _ = (tensors, spec);
        todo!("io: ShardLayout::plan")
    }

    /// Shard file names, in order.
    pub fn shard_names(&self) -> Vec<String> {
        todo!("io: shard_names")
    }

    /// Index file text (`model.safetensors.index.json`), if this layout has one.
    pub fn index_json(&self) -> Option<String> {
        todo!("io: index_json")
    }

    /// Total bytes of tensor data.
    pub fn total_size(&self) -> u64 {
        todo!("io: total_size")
    }

    /// Where `name` lives: (shard file name, absolute offset in that file, byte length).
    pub fn locate(&self, name: &str) -> Option<(&str, u64, u64)> {
        let _ = name;
        todo!("io: locate")
    }
}

/// Writes a [`ShardLayout`] into a temporary folder beside the target and renames it into place
/// on [`OutputWriter::finish`]. Tensor bytes may be written from several threads, in any order,
/// in pieces: each write goes to its precomputed offset. Dropping the writer without finishing
/// removes the temporary folder.
#[derive(Debug)]
pub struct OutputWriter {
    _private: (),
}

impl OutputWriter {
    /// Creates the temporary folder and every shard file (header written, data region sized).
    /// Fails with [`crate::Error::OutputExists`] if `out` exists and is not empty.
    pub fn create(out: &Path, layout: ShardLayout) -> Result<Self> {
        let _ = (out, layout);
        todo!("io: OutputWriter::create")
    }

    /// The layout being written.
    pub fn layout(&self) -> &ShardLayout {
        todo!("io: layout")
    }

    /// Writes `bytes` at `offset` bytes into tensor `name`'s data. Thread-safe (positioned write).
    pub fn write_tensor_part(&self, name: &str, offset: u64, bytes: &[u8]) -> Result<()> {
        let _ = (name, offset, bytes);
        todo!("io: write_tensor_part")
    }

    /// Writes the whole of tensor `name`.
    pub fn write_tensor(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_tensor_part(name, 0, bytes)
    }

    /// Writes a side file (config.json, README.md...) into the output folder.
    pub fn write_file(&self, rel_name: &str, bytes: &[u8]) -> Result<()> {
        let _ = (rel_name, bytes);
        todo!("io: write_file")
    }

    /// Copies a file byte for byte into the output folder.
    pub fn copy_file(&self, rel_name: &str, src: &Path) -> Result<()> {
        let _ = (rel_name, src);
        todo!("io: copy_file")
    }

    /// Checks every tensor was fully written, writes the index, syncs, and renames the temporary
    /// folder to the target. Returns the final path.
    pub fn finish(self) -> Result<PathBuf> {
        todo!("io: finish")
    }
}
