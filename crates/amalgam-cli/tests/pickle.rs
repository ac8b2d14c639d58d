//! `.bin`-only models (torch.save pickles) merge exactly as their safetensors twins.
//!
//! The golden `ties` case (`tests/golden/configs/ties.yml`: base + ft-a/b/c) is run on copies of
//! the golden models whose weights are the torch.save fixtures of amalgam-io
//! (`crates/amalgam-io/tests/fixtures/torch/models`: a single bf16 file, a sharded `.bin` with
//! its index, Parameters rebuilt through `_rebuild_from_type_v2`), and the output must be
//! byte-identical to what mergekit 0.1.5 wrote from the safetensors models
//! (`tests/golden/expected/ties`). mergekit 0.1.5 itself, run on these `.bin` folders, writes the
//! same bytes (checked when the fixtures were made; see their `make_fixtures.py`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `dst/models/<m>`: the golden model's side files, and the `.bin` fixture instead of its
/// safetensors.
fn bin_model(dst: &Path, m: &str) {
    let golden = repo().join("tests/golden/models").join(m);
    let bins = repo()
        .join("crates/amalgam-io/tests/fixtures/torch/models")
        .join(m);
    let out = dst.join("models").join(m);
    fs::create_dir_all(&out).unwrap();
    for e in fs::read_dir(&golden).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".safetensors") && !name.ends_with(".safetensors.index.json") {
            fs::copy(e.path(), out.join(&name)).unwrap();
        }
    }
    for e in fs::read_dir(&bins).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
}

#[test]
fn bin_models_merge_like_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for m in ["base", "ft-a", "ft-b", "ft-c"] {
        bin_model(root, m);
    }
    assert!(root
        .join("models/ft-a/pytorch_model.bin.index.json")
        .is_file());
    fs::create_dir_all(root.join("configs")).unwrap();
    fs::copy(
        repo().join("tests/golden/configs/ties.yml"),
        root.join("configs/ties.yml"),
    )
    .unwrap();
    // The output folder's basename is the model card's title: name it as the golden case.
    let out = root.join("out").join("ties");
    let res = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(root)
        .args(["merge", "configs/ties.yml"])
        .arg(&out)
        .args(["--out-shard-size", "40K"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "amalgam failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let expected = repo().join("tests/golden/expected/ties");
    let mut compared = 0;
    for e in fs::read_dir(&expected).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
            let ours = fs::read(out.join(&name)).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(ours == fs::read(e.path()).unwrap(), "{name} differs");
            compared += 1;
        }
    }
    assert_eq!(compared, 4, "three shards and the index");
}
