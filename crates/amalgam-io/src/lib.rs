//! Tensor I/O for amalgam.
//!
//! Everything a merge reads or writes goes through this crate:
//!
//! * [`DType`] and the [`convert`] module: every safetensors dtype, and float conversions that
//!   round exactly like PyTorch's `.to()` on CPU (so a `dtype: float16` cast reproduces mergekit
//!   bit for bit).
//! * [`SafetensorsFile`]: a memory-mapped safetensors file whose header was fully validated
//!   before any tensor is handed out, so no input, however hostile, can cause a panic or an
//!   out-of-bounds read.
//! * [`ModelFolder`]: a checkpoint folder found by mergekit's rules (single file or sharded
//!   index, safetensors or `torch.save` pickles), routing tensor names to shards.
//! * [`SafetensorsFile::open_torch`]: a `pytorch_model.bin` (the `torch.save` zip format) read
//!   without running code: a restricted unpickler with an allow-list of globals, tensors served
//!   lazily as byte ranges of the mapped file.
//! * [`ShardLayout`] / [`OutputWriter`]: a streaming, positioned writer. The headers of all shards
//!   are computed up front from the planned tensors, so tensor bytes can be written at their final
//!   offsets in any order, from any thread, and memory never grows with the model.
//! * [`hub`]: model references resolved to folders through the Hugging Face cache layout;
//!   [`download`]: Hub ids missing from the cache fetched into it.
//! * [`lora`]: PEFT LoRA adapters, applied to a model's weights as they stream.
//! * [`display`]: untrusted names (tensors, shards, files) made safe to print in messages.
#![deny(missing_docs)]

pub mod convert;
pub mod display;
pub mod download;
mod dtype;
mod error;
mod folder;
pub mod hub;
pub mod lora;
mod read;
mod torch;
mod unpickle;
mod write;
mod zipdir;

pub use dtype::DType;
pub use error::{Error, Result};
pub use folder::ModelFolder;
pub use read::{parse_header, Metadata, SafetensorsFile, TensorInfo, TensorRef, MAX_HEADER_SIZE};
pub use write::{
    remove_temp_folders, sweep_stale_temps, IndexStyle, OutputWriter, PlannedTensor, ShardLayout,
    ShardRule, ShardSpec, MAX_OPEN_SHARDS,
};
