//! A two-step mergekit-multi config (`tests/golden-multi/two-steps.yml`): the named first merge
//! feeds the final one. Both outputs equal mergekit-multi 0.1.5's tensor for tensor
//! (`tests/golden-multi/expected`, made by `make_golden.sh`), and `--lazy` (the default) reuses a
//! finished intermediate.

mod common;

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    common::fixture("golden-multi")
}

fn run(args: &[&str]) -> std::process::Output {
    common::amalgam(args, &dir())
}

fn same_tensors(ours: &Path, theirs: &Path) {
    common::same_tensors(ours, theirs, "mergekit-multi's");
}

#[test]
fn two_steps_match_mergekit_multi() {
    let tmp = tempfile::tempdir().unwrap();
    let inter = tmp.path().join("intermediate");
    let fin = tmp.path().join("final");
    let o = run(&[
        "merge",
        "two-steps.yml",
        fin.to_str().unwrap(),
        "--intermediate-dir",
        inter.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    same_tensors(
        &inter.join("step-one"),
        &dir().join("expected/intermediate/step-one"),
    );
    same_tensors(&fin, &dir().join("expected/final"));
    // The intermediate is finished: a second run reuses it.
    let fin2 = tmp.path().join("final2");
    let o = run(&[
        "merge",
        "two-steps.yml",
        fin2.to_str().unwrap(),
        "-I",
        inter.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("step-one") && err.contains("skipped"), "{err}");
    same_tensors(&fin2, &dir().join("expected/final"));
    // Without an intermediate folder the file is refused with the fix.
    let o = run(&[
        "merge",
        "two-steps.yml",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--intermediate-dir"));
    // `validate` checks every document.
    let o = run(&["validate", "two-steps.yml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
