//! Broken inputs end with a non-zero exit, a message naming the culprit, no panic, and no output
//! folder that looks like a finished model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/models")
}

fn amalgam(cwd: &Path, args: &[&str]) -> Output {
    // Missing models must be reported from the cache, not looked for on the real Hub.
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .env("HF_HUB_OFFLINE", "1")
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run amalgam")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A temp dir holding `a` and `b` (copies of two golden models) and a linear config over them.
fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&models().join("base"), &tmp.path().join("a"));
    copy_dir(&models().join("ft-a"), &tmp.path().join("b"));
    std::fs::write(
        tmp.path().join("c.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./b\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    )
    .unwrap();
    tmp
}

/// Runs a merge expected to fail; returns stderr after the common checks.
fn fails(dir: &Path, config: &str) -> String {
    let out_dir = dir.join("out");
    let out = amalgam(
        dir,
        &["merge", config, out_dir.to_str().unwrap(), "--quiet"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for f in [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ] {
        assert!(
            !out_dir.join(f).exists(),
            "finished-looking output left behind: {f}"
        );
    }
    // No temporary folder is left beside the target either.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("amalgam-tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
    stderr
}

#[test]
fn corrupt_header_names_the_file() {
    let tmp = setup();
    let f = tmp.path().join("b/model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[8..20].copy_from_slice(b"not json at ");
    std::fs::write(&f, bytes).unwrap();
    let err = fails(tmp.path(), "c.yml");
    assert!(err.contains("b/model.safetensors"), "{err}");
    assert!(err.contains("header"), "{err}");
}

#[test]
fn truncated_file_names_the_file() {
    let tmp = setup();
    let f = tmp.path().join("b/model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let err = fails(tmp.path(), "c.yml");
    assert!(err.contains("b/model.safetensors"), "{err}");
}

#[test]
fn missing_model_says_where_it_looked() {
    let tmp = setup();
    std::fs::write(
        tmp.path().join("m.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./nowhere\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    )
    .unwrap();
    let err = fails(tmp.path(), "m.yml");
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn missing_hub_model_lists_the_cache() {
    let tmp = setup();
    std::fs::write(
        tmp.path().join("h.yml"),
        "models:\n  - model: someorg/somemodel\n    parameters: {weight: 1.0}\nmerge_method: linear\n",
    )
    .unwrap();
    let cache = tmp.path().join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    let out = amalgam(
        tmp.path(),
        &[
            "merge",
            "h.yml",
            "out",
            "--hf-cache",
            cache.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("models--someorg--somemodel"), "{err}");
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let tmp = setup();
    std::fs::write(
        tmp.path().join("y.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5\nmerge_method: linear\n",
    )
    .unwrap();
    let err = fails(tmp.path(), "y.yml");
    assert!(err.contains("y.yml:"), "{err}");
    assert!(err.chars().any(|c| c.is_ascii_digit()), "{err}");
}

#[test]
fn unknown_method_is_named() {
    let tmp = setup();
    std::fs::write(
        tmp.path().join("u.yml"),
        "models:\n  - model: ./a\n  - model: ./b\nmerge_method: lineer\n",
    )
    .unwrap();
    let err = fails(tmp.path(), "u.yml");
    assert!(err.contains("lineer"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let tmp = setup();
    copy_dir(&models().join("vocab72"), &tmp.path().join("v"));
    std::fs::write(
        tmp.path().join("s.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./v\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    )
    .unwrap();
    let err = fails(tmp.path(), "s.yml");
    assert!(
        err.contains("embed_tokens") || err.contains("lm_head"),
        "{err}"
    );
    assert!(err.contains("mismatch"), "{err}");
}

#[test]
fn unsupported_feature_is_refused_by_name() {
    let tmp = setup();
    std::fs::write(
        tmp.path().join("t.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./b\n    parameters: {weight: 0.5}\nmerge_method: multislerp\ndtype: float64\n",
    )
    .unwrap();
    let err = fails(tmp.path(), "t.yml");
    assert!(
        err.contains("float64") && err.contains("not supported yet"),
        "{err}"
    );
}

#[test]
fn existing_output_is_not_mixed_with_new_files() {
    let tmp = setup();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("keep.txt"), "mine").unwrap();
    let out = amalgam(tmp.path(), &["merge", "c.yml", "out", "--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);
}

#[test]
fn a_good_config_still_merges() {
    // The fixture used above is sound: the failures come from the breakage, not the setup.
    let tmp = setup();
    let out = amalgam(tmp.path(), &["merge", "c.yml", "out", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp.path().join("out/config.json").exists());
}

/// Rewrites `src` into `dst` with `extra` tensors added and `drop` removed (config copied).
fn rewrite(src: &Path, dst: &Path, extra: &[(&str, Vec<usize>)], drop: &[&str]) {
    use amalgam_io::{
        DType, IndexStyle, ModelFolder, OutputWriter, PlannedTensor, ShardLayout, ShardRule,
        ShardSpec,
    };
    let f = ModelFolder::open(src).unwrap();
    let mut tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = f
        .names()
        .into_iter()
        .filter(|n| !drop.contains(n))
        .map(|n| {
            let t = f.get(n).unwrap();
            (
                n.to_string(),
                t.info.dtype,
                t.info.shape.clone(),
                t.data.to_vec(),
            )
        })
        .collect();
    for (n, shape) in extra {
        let len: usize = shape.iter().product::<usize>() * 4;
        tensors.push((n.to_string(), DType::F32, shape.clone(), vec![0u8; len]));
    }
    let planned = tensors
        .iter()
        .map(|(n, d, s, _)| PlannedTensor {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
        })
        .collect();
    let spec = ShardSpec {
        rule: ShardRule::Bytes(0),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    };
    let w = OutputWriter::create(dst, ShardLayout::plan(planned, &spec).unwrap()).unwrap();
    for (n, _, _, b) in &tensors {
        w.write_tensor(n, b).unwrap();
    }
    w.copy_file("config.json", &src.join("config.json"))
        .unwrap();
    w.finish().unwrap();
}

#[test]
fn known_architecture_merges_its_template_only() {
    // mergekit's Llama definition names the tensors it merges: a checkpoint's extra buffers are
    // ignored, and a missing required one stops planning with mergekit's message.
    let tmp = setup();
    rewrite(
        &models().join("ft-a"),
        &tmp.path().join("extra"),
        &[
            ("model.layers.0.self_attn.rotary_emb.inv_freq", vec![4]),
            ("model.position_ids", vec![8]),
        ],
        &[],
    );
    std::fs::write(
        tmp.path().join("e.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./extra\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    )
    .unwrap();
    let out = amalgam(tmp.path(), &["merge", "e.yml", "out", "--quiet"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged = amalgam_io::ModelFolder::open(tmp.path().join("out")).unwrap();
    assert!(merged.get("model.position_ids").is_none());
    assert!(merged
        .get("model.layers.0.self_attn.rotary_emb.inv_freq")
        .is_none());
    assert!(merged
        .get("model.layers.0.self_attn.q_proj.weight")
        .is_some());

    drop(merged);
    std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
    rewrite(
        &models().join("ft-a"),
        &tmp.path().join("holey"),
        &[],
        &["model.layers.2.post_attention_layernorm.weight"],
    );
    std::fs::write(
        tmp.path().join("h.yml"),
        "models:\n  - model: ./a\n    parameters: {weight: 0.5}\n  - model: ./holey\n    parameters: {weight: 0.5}\nmerge_method: linear\n",
    )
    .unwrap();
    let err = fails(tmp.path(), "h.yml");
    assert!(
        err.contains(
            "Tensor model.layers.2.post_attention_layernorm.weight required but not present"
        ),
        "{err}"
    );
}

#[test]
fn whole_mixtral_merges_are_refused_under_0_0_4_2() {
    // mergekit 0.1.5 merges whole Mixtrals in the fused expert layout (tests/golden-moe);
    // 0.0.4.2's Mixtral merges are not implemented and must not be answered with 0.1.5's.
    let tmp = setup();
    let mixtral = models().join("../../fixtures/seed-lerp/models/mixtral");
    std::fs::write(
        tmp.path().join("x.yml"),
        format!(
            "models:\n  - model: {}\n    parameters: {{weight: 1.0}}\nmerge_method: linear\n",
            mixtral.display()
        ),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = amalgam(
        tmp.path(),
        &[
            "merge",
            "x.yml",
            out_dir.to_str().unwrap(),
            "--quiet",
            "--mergekit-version",
            "0.0.4.2",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Mixtral") && err.contains("not supported yet"),
        "{err}"
    );
    assert!(err.contains("#expert=K"), "{err}");
    assert!(!out_dir.exists());
}
