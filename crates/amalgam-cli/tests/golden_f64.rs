//! Float64 arithmetic (`tests/golden-f64`, made by `make_golden.sh` with mergekit 0.1.5):
//! linear of three tiny Llama models, task_arithmetic of two over a base and passthrough with
//! `scale`, computed in f64, from float64 inputs (no `dtype:`) and
//! from float32 inputs with `dtype: float64`, normalized or not, written as float64 or
//! (`out_dtype: float32`) float32, gives mergekit's bytes; methods without f64 arithmetic are
//! refused by name, by `validate` and `merge` alike.

mod common;

use std::path::{Path, PathBuf};

use amalgam_methods::{Compat, Registry};

fn dir() -> PathBuf {
    common::fixture("golden-f64")
}

fn run(args: &[&str], cwd: &Path) -> std::process::Output {
    common::amalgam(args, cwd)
}

fn dtype_of(config: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    v.get("dtype")
        .or_else(|| v.get("torch_dtype"))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

const CASES: &[&str] = &[
    "linear-f64",
    "linear-f64-nonorm",
    "linear-f64-out-f32",
    "linear-f32-dtype-f64",
    "linear-f32-dtype-f64-nonorm-out-f32",
    "task_arithmetic-f64",
    "task_arithmetic-f32-dtype-f64-norm-out-f32",
    "passthrough-f64",
    "passthrough-f32-dtype-f64-out-f32",
];

#[test]
fn float64_merges_match_mergekit() {
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let out = tmp.path().join(case);
        let cfg = dir().join(format!("{case}.yml"));
        let o = common::merge(&cfg, &out, &dir(), &[]);
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let want = dir().join("expected").join(case);
        assert!(
            std::fs::read(out.join("model.safetensors")).unwrap()
                == std::fs::read(want.join("model.safetensors")).unwrap(),
            "{case}: model.safetensors differs from mergekit's"
        );
        assert_eq!(
            dtype_of(&out.join("config.json")),
            dtype_of(&want.join("config.json")),
            "{case}: config.json dtype"
        );
    }
}

#[test]
fn float64_differs_from_float32_arithmetic() {
    // The golden cases must be able to tell f64 arithmetic from an f32 merge widened to f64:
    // the same config with dtype: float32, out_dtype: float64 gives other bytes.
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(dir().join("linear-f32-dtype-f64.yml"))
        .unwrap()
        .replace("dtype: float64", "dtype: float32\nout_dtype: float64");
    let cfg = tmp.path().join("f32.yml");
    std::fs::write(
        &cfg,
        text.replace("models/", &format!("{}/models/", dir().display())),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = common::merge(&cfg, &out, tmp.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = dir().join("expected/linear-f32-dtype-f64/model.safetensors");
    assert!(std::fs::read(out.join("model.safetensors")).unwrap() != std::fs::read(want).unwrap());
}

#[test]
fn methods_without_float64_arithmetic_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let models = dir().join("models");
    let m = |n: &str| models.join(n).display().to_string();
    // dtype: float64 (validate and merge) and float64 inputs without dtype (merge: only the
    // inputs tell).
    let configs = [
        (
            format!(
                "merge_method: multislerp\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5}}\ndtype: float64\n",
                m("f32-a"),
                m("f32-b")
            ),
            &["validate", "merge"][..],
            "float64 arithmetic of merge_method: multislerp",
        ),
        (
            format!(
                "merge_method: multislerp\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5}}\n",
                m("f64-a"),
                m("f64-b")
            ),
            &["merge"][..],
            "float64 arithmetic of merge_method multislerp (mergekit 0.1.5, 2 input models) is not supported yet",
        ),
    ];
    // linear's f64 arithmetic is mergekit 0.1.5's: under 0.0.4.2 it is refused too.
    let legacy = std::fs::read_to_string(dir().join("linear-f32-dtype-f64.yml"))
        .unwrap()
        .replace("models/", &format!("{}/models/", dir().display()));
    let configs = [
        configs[0].clone(),
        configs[1].clone(),
        (
            legacy,
            &["validate", "merge"][..],
            "float64 arithmetic of merge_method: linear under mergekit 0.0.4.2",
        ),
    ];
    for (k, (text, cmds, words)) in configs.iter().enumerate() {
        let cfg = tmp.path().join(format!("c{k}.yml"));
        std::fs::write(&cfg, text).unwrap();
        for cmd in cmds.iter() {
            let out = tmp.path().join(format!("out{k}"));
            let mut args = vec![*cmd, cfg.to_str().unwrap()];
            if *cmd == "merge" {
                args.push(out.to_str().unwrap());
            }
            if k == 2 {
                args.extend(["--mergekit-version", "0.0.4.2"]);
            }
            let o = run(&args, tmp.path());
            assert!(!o.status.success(), "{cmd} {k}");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(said.contains("not supported yet"), "{cmd} {k}: {said}");
            assert!(said.contains(words), "{cmd} {k}: {said}");
            assert!(!out.exists());
        }
    }
}

#[test]
fn validate_list_of_float64_methods_matches_the_methods() {
    let registry = Registry::builtin();
    let mut have: Vec<&str> = registry
        .iter()
        .filter(|m| m.supports_f64(Compat::V0_1_5, 3))
        .map(|m| m.info().name)
        .collect();
    have.sort();
    let mut listed = amalgam_config::FLOAT64_METHODS.to_vec();
    listed.sort();
    assert_eq!(have, listed);
    // task_arithmetic's model-axis sum is reproduced up to four task vectors only.
    let ta = registry.get("task_arithmetic").unwrap();
    assert!(ta.supports_f64(Compat::V0_1_5, 5));
    assert!(!ta.supports_f64(Compat::V0_1_5, 6));
    assert!(!ta.supports_f64(Compat::V0_0_4_2, 3));
}
