//! Merge methods for amalgam.
//!
//! A merge method is a type implementing [`MergeMethod`]: it declares its parameters and input
//! contract as data ([`MethodInfo`]) so that configs can be validated, documented and listed
//! without running anything, and it merges one tensor at a time from [`MergeArgs`].
//! [`Registry::builtin`] holds every built-in method; [`Registry::register`] adds more at runtime,
//! so a third-party crate can bring its own methods without forking amalgam.
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

pub use error::MethodError;
pub use method::{
    BaseRule, Compat, Contract, InputCount, MergeArgs, MergeInput, MergeMethod, MethodInfo,
    ParamKind, ParamScope, ParamSpec, ParamValues, Value,
};
pub use registry::Registry;
pub use tensor::Tensor;
