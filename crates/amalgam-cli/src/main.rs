//! The `amalgam` binary: the command line of [`amalgam_cli`] with the built-in methods.

use std::process::ExitCode;

fn main() -> ExitCode {
    amalgam_cli::main_with(amalgam_methods::Registry::builtin())
}
