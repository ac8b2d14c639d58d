//! Merges of whole Mixtral (mixture-of-experts) models (`tests/golden-moe`, made by
//! `make_golden.sh` with mergekit 0.1.5): linear and ties from the per-expert on-disk layout
//! and from the fused one give mergekit's bytes, file for file; `--moe-layout per-expert`
//! writes the same values as transformers' `save_pretrained` of mergekit's output.

mod common;

use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    common::fixture("golden-moe")
}

fn run(args: &[&str], cwd: &Path) -> std::process::Output {
    common::amalgam(args, cwd)
}

/// Merges `config` (in `cwd`) into a fresh folder with `extra` flags and returns it.
fn merge(tmp: &Path, cwd: &Path, config: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = tmp.join(name);
    let o = common::merge(config, &out, cwd, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn same_tensors(ours: &Path, theirs: &Path) {
    common::same_tensors(ours, theirs, "the reference");
}

/// The config with the per-expert inputs replaced by their fused copies.
fn fused_config(tmp: &Path, m: &str) -> PathBuf {
    let text = std::fs::read_to_string(dir().join(format!("{m}.yml"))).unwrap();
    let fused = text
        .replace("models/a\n", "models/a-fused\n")
        .replace("models/b\n", "models/b-fused\n");
    assert_ne!(fused, text);
    let p = tmp.join(format!("{m}-fused.yml"));
    std::fs::write(&p, fused).unwrap();
    p
}

#[test]
fn mixtral_merges_match_mergekit_from_either_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for m in ["linear", "ties"] {
        let want = dir().join("expected").join(m);
        // Per-expert inputs, as save_pretrained writes them.
        let cfg = dir().join(format!("{m}.yml"));
        let out = merge(tmp.path(), &dir(), &cfg, m, &[]);
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        assert!(
            bytes == std::fs::read(want.join("model.safetensors")).unwrap(),
            "{m}: model.safetensors differs from mergekit's"
        );
        // Fused inputs: the same bytes.
        let cfg = fused_config(tmp.path(), m);
        let out2 = merge(tmp.path(), &dir(), &cfg, &format!("{m}-from-fused"), &[]);
        assert!(
            std::fs::read(out2.join("model.safetensors")).unwrap() == bytes,
            "{m}: fused inputs give other bytes than per-expert ones"
        );
        // The per-expert output layout holds transformers' own split of mergekit's tensors.
        let out3 = merge(
            tmp.path(),
            &dir(),
            &dir().join(format!("{m}.yml")),
            &format!("{m}-per-expert"),
            &["--moe-layout", "per-expert"],
        );
        same_tensors(
            &out3,
            &dir().join("expected").join(format!("{m}-per-expert")),
        );
        // And reading that output back gives the fused tensors again.
        let back = tmp.path().join(format!("{m}-back.yml"));
        std::fs::write(
            &back,
            format!(
                "merge_method: passthrough\nmodels:\n  - model: {}\ndtype: float32\n",
                out3.display()
            ),
        )
        .unwrap();
        let out4 = merge(tmp.path(), tmp.path(), &back, &format!("{m}-back"), &[]);
        same_tensors(&out4, &want);
    }
}

#[test]
fn per_expert_layout_is_refused_for_dense_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("dense.yml");
    std::fs::write(
        &cfg,
        format!(
            "merge_method: passthrough\nmodels:\n  - model: {}#expert=1\ndtype: float32\n",
            dir().join("models/a").display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run(
        &[
            "merge",
            cfg.to_str().unwrap(),
            out.to_str().unwrap(),
            "--moe-layout",
            "per-expert",
        ],
        tmp.path(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--moe-layout per-expert applies to Mixtral"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn out_dtype_float64_matches_mergekit() {
    // dtype: float32, out_dtype: float64: merged in f32, widened exactly, written as F64.
    let tmp = tempfile::tempdir().unwrap();
    let out = merge(
        tmp.path(),
        &dir(),
        &dir().join("linear-out-f64.yml"),
        "f64",
        &[],
    );
    let want = dir().join("expected/linear-out-f64/model.safetensors");
    assert!(
        std::fs::read(out.join("model.safetensors")).unwrap() == std::fs::read(want).unwrap(),
        "out_dtype: float64 differs from mergekit's"
    );
}

#[test]
fn float64_arithmetic_is_refused_naming_the_method() {
    // mergekit 0.1.5 computes in f64 with dtype: float64; amalgam does so only for linear
    // (tests/golden_f64.rs), so ties is refused by name.
    let tmp = tempfile::tempdir().unwrap();
    for method in ["ties"] {
        let text = std::fs::read_to_string(dir().join(format!("{method}.yml")))
            .unwrap()
            .replace("dtype: float32", "dtype: float64");
        let cfg = tmp.path().join(format!("{method}-f64.yml"));
        std::fs::write(&cfg, text).unwrap();
        for cmd in ["validate", "merge"] {
            let out = tmp.path().join(format!("out-{method}"));
            let mut args = vec![cmd, cfg.to_str().unwrap()];
            if cmd == "merge" {
                args.push(out.to_str().unwrap());
            }
            let o = run(&args, &dir());
            assert!(!o.status.success());
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(text.contains("not supported yet"), "{cmd}: {text}");
            assert!(
                text.contains(&format!("float64 arithmetic of merge_method: {method}")),
                "{cmd}: {text}"
            );
            assert!(!out.exists());
        }
    }
}
