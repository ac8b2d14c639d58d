//! `amalgam validate`: schema and method checks without loading any model.

use std::path::PathBuf;

use amalgam_config::Severity;
use amalgam_methods::{Compat, Registry};

/// Validates each file, printing one line per file (then its diagnostics, indented); true if
/// all are valid.
pub fn run(configs: &[PathBuf], strict: bool, compat: Compat, registry: &Registry) -> bool {
    let schemas = registry.infos();
    let mut all_ok = true;
    for path in configs {
        let multi = std::fs::read_to_string(path)
            .map(|t| amalgam_config::is_multi_document(&t))
            .unwrap_or(false);
        let diags = match amalgam_config::load(path) {
            // A mergekit-multi file: every document, as `merge` checks them before running.
            _ if multi => match amalgam_config::load_documents(path) {
                Ok(docs) => docs
                    .iter()
                    .flat_map(|d| amalgam_config::validate(&d.loaded, &schemas, strict, compat))
                    .collect(),
                Err(amalgam_config::ConfigError::Invalid { diagnostics, .. }) => diagnostics,
                Err(e) => {
                    all_ok = false;
                    println!("{}: error: {e}", path.display());
                    continue;
                }
            },
            Ok(loaded) => amalgam_config::validate(&loaded, &schemas, strict, compat),
            Err(amalgam_config::ConfigError::Invalid { diagnostics, .. }) => diagnostics,
            Err(amalgam_config::ConfigError::Io { source, .. }) => {
                // The message of `ConfigError::Io` names the file too: said once.
                all_ok = false;
                println!("{}: error: cannot read: {source}", path.display());
                continue;
            }
            Err(e) => {
                all_ok = false;
                println!("{}: error: {e}", path.display());
                continue;
            }
        };
        let count = |s: Severity| diags.iter().filter(|d| d.severity == s).count();
        let (errors, unsupported) = (count(Severity::Error), count(Severity::Unsupported));
        let warnings = count(Severity::Warning);
        if errors > 0 {
            all_ok = false;
            println!(
                "{}: invalid ({errors} error(s), {warnings} warning(s))",
                path.display()
            );
        } else if unsupported > 0 {
            // mergekit would run it; amalgam refuses it, as `merge` does, and says why.
            all_ok = false;
            println!(
                "{}: not supported yet ({unsupported} feature(s), {warnings} warning(s))",
                path.display()
            );
        } else if warnings > 0 {
            println!("{}: ok ({warnings} warning(s))", path.display());
        } else {
            println!("{}: ok", path.display());
        }
        for d in &diags {
            println!("  {}", d.render(Some(path)));
        }
    }
    all_ok
}
