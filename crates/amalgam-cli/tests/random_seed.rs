//! Without `--random-seed`, a random method draws a seed and prints it; passing that seed back
//! reproduces the run byte for byte (and a different seed changes the result).

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

fn merge(out: &Path, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(golden())
        .args([
            "merge",
            "configs/dare_linear.yml",
            out.to_str().unwrap(),
            "--no-write-model-card",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn shards(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn drawn_seed_is_printed_and_reproduces_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let stderr = merge(&first, &[]);
    let seed = stderr
        .lines()
        .find_map(|l| l.strip_prefix("random seed: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no seed printed: {stderr}"))
        .to_string();
    let again = tmp.path().join("again");
    let stderr2 = merge(&again, &["--random-seed", &seed]);
    assert!(
        !stderr2.contains("random seed:"),
        "a given seed is not announced again"
    );
    assert!(
        shards(&first) == shards(&again),
        "the printed seed did not reproduce the run"
    );
    let other_seed = (seed.parse::<u64>().unwrap() + 1).to_string();
    let other = tmp.path().join("other");
    merge(&other, &["--random-seed", &other_seed]);
    assert!(shards(&first) != shards(&other), "the seed has no effect");
}
