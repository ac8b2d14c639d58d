//! The README's quick start, as a new user runs it on a fresh clone: its first command merges
//! the shipped example into a folder transformers can load, and its second runs the tests.
//!
//! The command is read from the README itself (first line of the first `sh` block), so the
//! README cannot drift from what works.

use std::path::{Path, PathBuf};
use std::process::Command;

use amalgam_io::ModelFolder;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The lines of the README's first ```sh block.
fn first_sh_block() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut lines = readme.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "```sh")
        .expect("README.md has a ```sh block");
    lines
        .take_while(|l| l.trim() != "```")
        .map(str::to_string)
        .collect()
}

/// The block's commands: lines that are neither blank nor comments.
fn commands() -> Vec<String> {
    first_sh_block()
        .into_iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn readme_quick_start_is_two_commands() {
    let block = first_sh_block();
    let first = block.first().expect("the block is not empty");
    assert!(
        first.starts_with("cargo run --release -- merge "),
        "the block must open with the merge: {first}"
    );
    assert_eq!(commands().len(), 2, "exactly two commands: {block:?}");
    assert_eq!(commands()[1], "cargo test --workspace");
}

#[test]
fn readme_first_command_merges_the_shipped_example() {
    let block = first_sh_block();
    let words: Vec<&str> = block[0].split_whitespace().collect();
    // cargo run --release -- merge CONFIG OUT [flags...]
    let [_, _, _, "--", "merge", config, out, flags @ ..] = words.as_slice() else {
        panic!("unexpected first command: {}", block[0]);
    };
    assert!(
        config.starts_with("configs/examples/"),
        "the example lives in configs/examples/: {config}"
    );
    assert!(root().join(config).is_file(), "{config} is shipped");
    // Same config, same working directory (the repository root) and flags; only the output goes
    // to a temporary folder instead of the clone.
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp
        .path()
        .join(Path::new(out).file_name().expect("an output name"));
    let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(root())
        .arg("merge")
        .arg(config)
        .arg(&out_dir)
        .args(flags)
        .output()
        .expect("run amalgam");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains(&out_dir.display().to_string()),
        "the summary says where the model is: {stderr}"
    );

    // What transformers needs to load it.
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    let merged = ModelFolder::open(&out_dir).expect("safetensors output");
    assert!(out_dir.join("model.safetensors").is_file());

    // The example is the golden case `slerp`: same tensors as mergekit 0.1.5 wrote (that case
    // was made with a smaller shard size, so only the tensors are compared, not the files).
    let expected = ModelFolder::open(root().join("tests/golden/expected/slerp")).unwrap();
    let mut names = merged.names();
    names.sort_unstable();
    let mut want = expected.names();
    want.sort_unstable();
    assert_eq!(names, want);
    for name in names {
        let (a, b) = (merged.get(name).unwrap(), expected.get(name).unwrap());
        assert_eq!(a.info.dtype, b.info.dtype, "{name}");
        assert_eq!(a.info.shape, b.info.shape, "{name}");
        assert!(a.data == b.data, "{name} differs from mergekit's");
    }
}

#[test]
fn every_shipped_config_validates() {
    let mut configs = Vec::new();
    for dir in ["configs", "configs/examples"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yml") {
                configs.push(p);
            }
        }
    }
    assert!(configs.len() >= 4, "{configs:?}");
    let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(root())
        .arg("validate")
        .args(&configs)
        .output()
        .expect("run amalgam");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
