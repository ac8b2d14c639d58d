//! The `amalgam` binary: the command line of [`amalgam_cli`] with the built-in methods.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the executor allocates and frees buffers of tens of
/// kilobytes per chunk on every thread, and glibc's malloc kept returning that memory to the
/// kernel and faulting it back in (about a tenth of a merge's time went to page faults).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    amalgam_cli::main_with(amalgam_methods::Registry::builtin())
}
