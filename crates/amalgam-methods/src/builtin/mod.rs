//! Built-in methods: one file each, one line each in [`all`].

use std::sync::Arc;

use crate::MergeMethod;

mod linear;

mod common;
mod slerp;
pub(crate) mod torchops;

/// Every built-in method. Adding a method: one file in this folder, one line here.
pub(crate) fn all() -> Vec<Arc<dyn MergeMethod>> {
    vec![
        Arc::new(linear::Linear::new()),
        Arc::new(slerp::Slerp::new()),
        Arc::new(slerp::Slerp::new()),
        Arc::new(passthrough::Passthrough::new()),
        Arc::new(nearswap::NearSwap::new()),
    ]
}
