//! An example of a third-party merge method: `median`, in [`median`], registered into amalgam's
//! registry without forking amalgam.
//!
//! [`registry`] is all the wiring there is: the built-in methods plus one line per extra method.
//! The `amalgam-custom` binary (`src/main.rs`) is the full `amalgam` command line with that
//! registry, so `amalgam-custom merge config.yml out/` accepts `merge_method: median`, and
//! `amalgam-custom methods` / `validate` know it too. The same registry works with the library
//! API (`amalgam_engine::merge`), as the tests show.
#![deny(missing_docs)]

use std::sync::Arc;

use amalgam_methods::Registry;

pub mod median;

/// amalgam's built-in methods plus this crate's.
pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register(Arc::new(median::Median::new()));
    r
}
