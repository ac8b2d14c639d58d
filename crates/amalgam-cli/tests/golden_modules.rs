//! `modules:` configs against mergekit 0.1.5 (`tests/golden-modules`, made by its
//! `make_golden.sh`): `modules: {default: ...}` on a tiny Llama, with `slices:` and with
//! `models:`, writes mergekit's files bit for bit (tensors, shard bytes, the layer count in
//! config.json, mergekit_config.yml, README.md); the configs mergekit refuses (a duplicate input
//! in `default.slices[0]`, `default` on a multi-module architecture) are refused too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amalgam_io::ModelFolder;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden-modules")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .args(args)
        .current_dir(dir())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// README.md with the model bullets sorted: mergekit lists them in Python set order.
fn sorted_bullets(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let idx: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("* "))
        .collect();
    let mut bullets: Vec<String> = idx.iter().map(|&i| lines[i].clone()).collect();
    bullets.sort();
    for (i, b) in idx.into_iter().zip(bullets) {
        lines[i] = b;
    }
    lines
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

/// Every file mergekit wrote, compared with amalgam's.
fn same_output(ours: &Path, theirs: &Path) {
    let list = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(ours), list(theirs), "{}", ours.display());
    let a = ModelFolder::open(ours).unwrap();
    let b = ModelFolder::open(theirs).unwrap();
    let mut names: Vec<&str> = a.names();
    names.sort();
    let mut want: Vec<&str> = b.names();
    want.sort();
    assert_eq!(names, want);
    for n in names {
        let (x, y) = (a.get(n).unwrap(), b.get(n).unwrap());
        assert_eq!(x.info.dtype, y.info.dtype, "{n}");
        assert_eq!(x.info.shape, y.info.shape, "{n}");
        assert!(x.data == y.data, "{n} differs from mergekit's");
    }
    for f in ["model.safetensors", "mergekit_config.yml"] {
        assert!(
            fs::read(ours.join(f)).unwrap() == fs::read(theirs.join(f)).unwrap(),
            "{f} is not byte-identical"
        );
    }
    let (e, g) = (
        json(&theirs.join("config.json")),
        json(&ours.join("config.json")),
    );
    for key in ["dtype", "num_hidden_layers", "vocab_size", "architectures"] {
        assert_eq!(g.get(key), e.get(key), "config.json `{key}`");
    }
    let readme = |d: &Path| sorted_bullets(&fs::read_to_string(d.join("README.md")).unwrap());
    assert_eq!(readme(ours), readme(theirs), "README.md");
}

fn merge_case(case: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // The folder's name is the README's title: the same as mergekit's.
    let out = tmp.path().join(case);
    // As make_golden.sh ran mergekit.
    let o = run(&[
        "merge",
        &format!("{case}.yml"),
        out.to_str().unwrap(),
        "--no-copy-tokenizer",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("not supported yet"), "{err}");
    same_output(&out, &dir().join("expected").join(case));
    let o = run(&["validate", &format!("{case}.yml")]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(!text.contains("not supported yet"), "{text}");
}

#[test]
fn default_module_with_slices_matches_mergekit() {
    merge_case("default-slices");
    // The module's two layers are the output's layer count, as mergekit writes it.
    let e = json(&dir().join("expected/default-slices/config.json"));
    assert_eq!(e["num_hidden_layers"], 2);
}

#[test]
fn default_module_with_models_matches_mergekit() {
    merge_case("default-models");
}

fn mergekit_error(case: &str) -> String {
    fs::read_to_string(dir().join(format!("expected/{case}.error")))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn duplicate_input_in_the_default_module_is_refused_as_mergekit_does() {
    let want = mergekit_error("reject-duplicate");
    assert_eq!(
        want,
        "ValueError: Duplicate merge inputs for default.slices[0]"
    );
    for cmd in ["validate", "merge"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut args = vec![cmd, "reject-duplicate.yml"];
        if cmd == "merge" {
            args.push(out.to_str().unwrap());
        }
        let o = run(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{cmd}: {text}");
        assert!(
            text.contains("Duplicate merge inputs for default.slices[0]"),
            "{cmd}: {text}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn default_module_of_a_multi_module_architecture_is_refused() {
    // mergekit stops with a KeyError: the architecture has no module `default`.
    assert_eq!(mergekit_error("reject-vlm-default"), "KeyError: 'default'");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(&["merge", "reject-vlm-default.yml", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("modules.default"), "{err}");
    assert!(err.contains("not supported yet"), "{err}");
    assert!(
        err.contains("text_decoder, multi_modal_projector, vision_tower"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_module_other_than_default_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("vlm.yml");
    let models = dir().join("models");
    fs::write(
        &cfg,
        format!(
            "merge_method: linear\nmodules:\n  text_decoder:\n    models:\n      - model: {a}\n        \
             parameters: {{weight: 0.5}}\n      - model: {b}\n        parameters: {{weight: 0.5}}\n",
            a = models.join("mistral3-a").display(),
            b = models.join("mistral3-b").display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    for args in [
        vec!["validate", cfg.to_str().unwrap()],
        vec!["merge", cfg.to_str().unwrap(), out.to_str().unwrap()],
    ] {
        let o = run(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "{text}");
        assert!(
            text.contains("modules: text_decoder") && text.contains("not supported yet"),
            "{text}"
        );
    }
    assert!(!out.exists());
}

#[test]
fn modules_are_refused_under_mergekit_0_0_4_2() {
    let o = run(&[
        "validate",
        "default-models.yml",
        "--mergekit-version",
        "0.0.4.2",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("mergekit 0.0.4.2 has no `modules:`"),
        "{text}"
    );
}
