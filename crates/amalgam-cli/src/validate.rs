//! `amalgam validate`: schema and method checks without loading any model.

use std::path::PathBuf;

/// Validates each file, printing one line per file; true if all are valid.
pub fn run(configs: &[PathBuf], strict: bool) -> bool {
    let _ = strict;
    let mut ok = true;
    for path in configs {
        match amalgam_config::load(path) {
            Ok(_) => println!("{}: ok", path.display()),
            Err(e) => {
                ok = false;
                println!("{}: {e}", path.display());
            }
        }
    }
    ok
}
