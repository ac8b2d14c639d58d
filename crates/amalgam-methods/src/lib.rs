//! Merge methods for amalgam.
//!
//! A merge method is a type implementing [`MergeMethod`]: it declares its schema ([`MethodInfo`],
//! from `amalgam-schema`: parameters, input contract, mergekit versions) as data so that configs
//! can be validated, documented and listed without running anything, and it merges one tensor
//! at a time from [`MergeArgs`], whose parameters the planner has resolved (defaults included).
//! [`Registry::builtin`] holds every built-in method; [`Registry::register`] adds more at runtime,
//! so a third-party crate can bring its own methods without forking amalgam; [`helpers`] are
//! the building blocks the built-ins share (task vectors, shape checks), public for them too.
//!
//! All arithmetic that must match mergekit bit for bit lives in [`numerics`]: values are kept in
//! `f32` and rounded to the working dtype after every operation, which is exactly what PyTorch
//! does on CPU for bfloat16 and float16 tensors.
//!
//! The crate has no `unsafe` code and forbids it: methods run on data read from untrusted model
//! files, and everything they need (including SIMD, through `multiversion`) is available in safe
//! Rust, so a malformed tensor can at worst produce a [`MethodError`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod docs;
mod error;
mod method;
pub mod numerics;
pub mod reduce;
mod registry;
pub mod rng;
pub mod sparsify;
pub mod stdsort;
mod tensor;

mod builtin;

pub use amalgam_schema::{
    BaseRule, Compat, Contract, ContractViolation, Legacy, MethodInfo, MissingParam, ParamKind,
    ParamScope, ParamSpec, ParamValues, Value, VersionError,
};
pub use builtin::common as helpers;
pub use error::MethodError;
pub use method::{
    ChunkIo, MergeArgs, MergeArgs64, MergeInput, MergeInput64, MergeMethod, StreamArgs,
};
pub use registry::Registry;
pub use tensor::Tensor;
