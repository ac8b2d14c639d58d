//! `override_architecture` (`tests/golden-override`, made by mergekit 0.1.5 with
//! `make_golden.sh`): the override makes the models' architectures differ, so the merge needs
//! `--allow-crimes` (mergekit's message otherwise), and it sets the output config.json's
//! `architectures`; the tensors equal mergekit's.

use std::path::{Path, PathBuf};
use std::process::Command;

use amalgam_io::ModelFolder;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden-override")
}

fn merge(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .args(["merge", "override.yml", out.to_str().unwrap()])
        .args(extra)
        .current_dir(dir())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

#[test]
fn override_architecture_as_mergekit() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = merge(&tmp.path().join("a"), &[]);
    assert_eq!(refused.status.code(), Some(1));
    let want = std::fs::read_to_string(dir().join("expected/refused.txt")).unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(want.trim()), "{err}");

    let out = tmp.path().join("b");
    let o = merge(&out, &["--allow-crimes"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).unwrap()).unwrap()
    };
    let expected = dir().join("expected/merged");
    assert_eq!(cfg(&out)["architectures"], cfg(&expected)["architectures"]);
    assert_eq!(cfg(&out)["architectures"][0], "MistralForCausalLM");
    let (a, b) = (
        ModelFolder::open(&out).unwrap(),
        ModelFolder::open(&expected).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    let mut want = b.names();
    want.sort();
    assert_eq!(names, want);
    for n in names {
        assert!(a.get(n).unwrap().data == b.get(n).unwrap().data, "{n}");
    }
}
