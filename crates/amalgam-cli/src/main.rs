//! The `amalgam` binary: the command line of [`amalgam_cli`] with the built-in methods.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the executor allocates and frees buffers of tens of
/// kilobytes per chunk on every thread, and glibc's malloc kept returning that memory to the
/// kernel and faulting it back in (about a tenth of a merge's time went to page faults).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v3 `mi_option_e`: the 16th option; the
/// crate exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays mapped before mimalloc returns it to the kernel, in ms.
///
/// Why not mimalloc's 10 ms (100 ms for its arenas): a merge frees one tensor's buffers (tens of
/// MB for an embedding) and allocates the next tensor's a few to a few hundred milliseconds
/// later, so with the default the kernel unmapped them in between and then zeroed every page
/// again on first touch (`clear_page`: about a seventh of a ties or della merge's time). One
/// second covers the gap between tensors and still returns the memory when a merge idles.
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

fn main() -> ExitCode {
    // SAFETY: `mi_option_get`/`mi_option_set` take integers and read or store an option, which
    // mimalloc reads atomically wherever it is used; no pointer crosses the calls. The option is
    // changed only if it holds purge_delay's documented default (10), so a renumbered option in
    // another mimalloc version is left alone rather than misset.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
    amalgam_cli::main_with(amalgam_methods::Registry::builtin())
}
