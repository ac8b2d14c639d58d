//! docs/methods.md is generated from the registry's declarations; this test fails when the
//! committed file no longer matches them (a method, parameter, default or summary changed
//! without regenerating). `AMALGAM_BLESS=1` rewrites the file instead.

use std::path::PathBuf;

use amalgam_methods::{docs, Registry};

fn methods_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/methods.md")
}

#[test]
fn methods_md_is_up_to_date() {
    let want = docs::methods_markdown(&Registry::builtin());
    let path = methods_md();
    if std::env::var_os("AMALGAM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let line = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "{} is stale (first difference at line {}). Refresh it with\n\n    \
             AMALGAM_BLESS=1 cargo test -p amalgam-methods --test docs\n\nand commit the result.",
            path.display(),
            line + 1
        );
    }
}

#[test]
fn every_method_and_parameter_is_documented() {
    let reg = Registry::builtin();
    let md = docs::methods_markdown(&reg);
    for m in reg.iter() {
        let info = m.info();
        assert!(
            md.contains(&format!("\n## {}\n", info.name)),
            "no section for {}",
            info.name
        );
        assert!(
            !info.summary.trim().is_empty(),
            "{}: empty summary",
            info.name
        );
        for p in &info.params {
            assert!(
                !p.doc.trim().is_empty(),
                "{}.{}: empty doc",
                info.name,
                p.name
            );
        }
    }
}
