//! `amalgam-custom`: the `amalgam` command line with the example's extra methods.

use std::process::ExitCode;

fn main() -> ExitCode {
    amalgam_cli::main_with(amalgam_custom::registry())
}
