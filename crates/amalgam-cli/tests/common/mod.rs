//! Helpers shared by the golden tests that run the `amalgam` binary on a fixture folder under
//! `tests/` and compare its output with mergekit's.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amalgam_io::ModelFolder;

/// `tests/<name>` of the repository (a golden fixture folder).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(name)
}

/// Runs `amalgam ARGS` in `cwd`, offline (a fixture never names a Hub model that is not there).
pub fn amalgam(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the amalgam binary can be started")
}

/// Runs `amalgam merge CONFIG OUT` in `cwd` without the tokenizer and the model card (the
/// golden outputs compare tensors and config.json only), plus `extra` flags.
pub fn merge(config: &Path, out: &Path, cwd: &Path, extra: &[&str]) -> Output {
    let (config, out) = (config.to_string_lossy(), out.to_string_lossy());
    let mut args = vec![
        "merge",
        &config,
        &out,
        "--no-copy-tokenizer",
        "--no-write-model-card",
    ];
    args.extend_from_slice(extra);
    amalgam(&args, cwd)
}

/// The two model folders hold the same tensor names, and each tensor has the same dtype, shape
/// and bytes; `theirs` names the reference in messages.
pub fn same_tensors(ours: &Path, theirs: &Path, reference: &str) {
    let a = ModelFolder::open(ours).expect("our output opens");
    let b = ModelFolder::open(theirs).expect("the reference opens");
    let mut names: Vec<&str> = a.names();
    names.sort();
    let mut want: Vec<&str> = b.names();
    want.sort();
    assert_eq!(names, want, "{}", ours.display());
    for n in names {
        let (x, y) = (
            a.get(n).expect("listed tensor"),
            b.get(n).expect("listed tensor"),
        );
        assert_eq!(x.info.dtype, y.info.dtype, "{n}");
        assert_eq!(x.info.shape, y.info.shape, "{n}");
        assert!(x.data == y.data, "{n} differs from {reference}");
    }
}
