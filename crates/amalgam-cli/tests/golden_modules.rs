//! `modules:` configs against mergekit 0.1.5 (`tests/golden-modules`, made by its
//! `make_golden.sh`): `modules: {default: ...}` on a tiny Llama, with `slices:` and with
//! `models:`, writes mergekit's files bit for bit (tensors, shard bytes, the layer count in
//! config.json, mergekit_config.yml, README.md); the configs mergekit refuses (a duplicate input
//! in `default.slices[0]`, `default` on a multi-module architecture) are refused too. The
//! modules of a tiny Mistral3ForConditionalGeneration (text decoder, vision tower, projector),
//! with `models:` and with `slices:`, match mergekit's output likewise (nested layer counts,
//! processor files); a config leaving modules out, which mergekit writes incomplete, is refused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use amalgam_io::ModelFolder;

fn dir() -> PathBuf {
    common::fixture("golden-modules")
}

fn run(args: &[&str]) -> Output {
    common::amalgam(args, &dir())
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

/// bf16 bits (little-endian) as f32 values.
fn bf16_values(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
        .collect()
}

/// Elements of a bf16 tensor that differ from mergekit's; panics when one differs by more than
/// 4 ulp of the tensor's largest magnitude (slerp's documented bound, docs/methods.md).
fn slerp_differences(n: &str, ours: &[u8], theirs: &[u8]) -> usize {
    let (a, b) = (bf16_values(ours), bf16_values(theirs));
    let max = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    // bf16 keeps 8 significant bits: one ulp at `max` is 2^(exponent - 7).
    let ulp = 2f32.powi(max.log2().floor() as i32 - 7);
    let mut differ = 0;
    for (x, y) in a.iter().zip(&b) {
        if x.to_bits() != y.to_bits() {
            assert!((x - y).abs() <= 4.0 * ulp, "{n}: {x} vs mergekit's {y}");
            differ += 1;
        }
    }
    differ
}

/// Every file mergekit wrote, compared with amalgam's; with `slerp_elements`, bf16 tensors may
/// differ from mergekit's in at most that many elements in all, each within slerp's bound (the
/// shard bytes then differ too).
fn same_output_within(ours: &Path, theirs: &Path, slerp_elements: Option<usize>) {
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
    let mut differ = 0;
    for n in names {
        let (x, y) = (a.get(n).unwrap(), b.get(n).unwrap());
        assert_eq!(x.info.dtype, y.info.dtype, "{n}");
        assert_eq!(x.info.shape, y.info.shape, "{n}");
        match slerp_elements {
            Some(_) if x.data != y.data => differ += slerp_differences(n, x.data, y.data),
            _ => assert!(x.data == y.data, "{n} differs from mergekit's"),
        }
    }
    let files: &[&str] = match slerp_elements {
        Some(max) => {
            assert!(differ <= max, "{differ} elements differ from mergekit's");
            &["mergekit_config.yml"]
        }
        None => &["model.safetensors", "mergekit_config.yml"],
    };
    for &f in files {
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
    // A multi-module architecture's layer counts are nested, one per module.
    for sub in ["text_config", "vision_config"] {
        for key in ["num_hidden_layers", "vocab_size"] {
            assert_eq!(
                g.get(sub).and_then(|c| c.get(key)),
                e.get(sub).and_then(|c| c.get(key)),
                "config.json `{sub}.{key}`"
            );
        }
    }
    // mergekit's tagalong files, copied from the donor.
    for f in ["preprocessor_config.json", "processor_config.json"] {
        if theirs.join(f).exists() {
            assert!(
                fs::read(ours.join(f)).unwrap() == fs::read(theirs.join(f)).unwrap(),
                "{f} is not the donor's"
            );
        }
    }
    let readme = |d: &Path| sorted_bullets(&fs::read_to_string(d.join("README.md")).unwrap());
    assert_eq!(readme(ours), readme(theirs), "README.md");
}

fn merge_case(case: &str) {
    merge_case_within(case, None)
}

fn merge_case_within(case: &str, slerp_elements: Option<usize>) {
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
    same_output_within(&out, &dir().join("expected").join(case), slerp_elements);
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
fn vlm_modules_with_models_match_mergekit() {
    // slerp in bf16: measured 1 element of 35 tensors (2,048 elements of
    // language_model.model.layers.1.mlp.gate_proj.weight, 9.3e-10 apart) differs from
    // mergekit's, PyTorch's MKL acos/sin against the platform libm (docs/methods.md, slerp).
    merge_case_within("vlm-models", Some(1));
    let e = dir().join("expected/vlm-models");
    // Every module was merged (text, vision, projector), and the processor files came along.
    let names = ModelFolder::open(&e).unwrap().names().join(" ");
    for prefix in ["language_model.", "vision_tower.", "multi_modal_projector."] {
        assert!(names.contains(prefix), "{prefix}");
    }
    assert!(e.join("processor_config.json").exists());
}

#[test]
fn vlm_modules_with_slices_match_mergekit() {
    merge_case("vlm-slices");
    // Three text layers: mergekit sets the text module's count in the nested config, and keeps
    // the vision tower's.
    let e = json(&dir().join("expected/vlm-slices/config.json"));
    assert_eq!(e["text_config"]["num_hidden_layers"], 3);
    assert_eq!(e["vision_config"]["num_hidden_layers"], 1);
    // The base model is the donor of the processor files.
    let p = fs::read_to_string(dir().join("expected/vlm-slices/processor_config.json")).unwrap();
    assert!(p.contains("mistral3-b"), "{p}");
}

#[test]
fn top_level_models_merge_every_module_of_a_vlm() {
    merge_case("vlm-top-models");
    let names = ModelFolder::open(dir().join("expected/vlm-top-models"))
        .unwrap()
        .names()
        .len();
    // All 35 tensors of the Mistral3 checkpoints (none is tied away).
    assert_eq!(names, 35);
}

#[test]
fn a_vlm_merge_that_leaves_out_modules_is_refused() {
    // mergekit writes the named module only: its output has no vision tower or projector, and
    // does not load as a Mistral3 model.
    let written = fs::read_to_string(dir().join("expected/vlm-partial.tensors")).unwrap();
    assert_eq!(written.lines().count(), 20);
    assert!(
        written.lines().all(|n| n.starts_with("language_model.")),
        "{written}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = run(&["merge", "vlm-partial.yml", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("not supported yet"), "{err}");
    assert!(
        err.contains("multi_modal_projector, vision_tower of Mistral3ForConditionalGeneration"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn modules_of_an_architecture_without_templates_are_not_supported_yet() {
    // Qwen2-VL's mergekit definition is multi-module, with weights amalgam's templates do not
    // express: refused when planning, before any tensor is read.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen2vl");
    fs::create_dir(&model).unwrap();
    fs::write(
        model.join("config.json"),
        r#"{"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl"}"#,
    )
    .unwrap();
    fs::copy(
        dir().join("models/mistral3-a/model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let cfg = tmp.path().join("q.yml");
    fs::write(
        &cfg,
        format!(
            "merge_method: linear\nmodules:\n  text_decoder:\n    models:\n      - model: {}\n        \
             parameters: {{weight: 1.0}}\n",
            model.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run(&["merge", cfg.to_str().unwrap(), out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("not supported yet"), "{err}");
    assert!(
        err.contains("modules of the multi-module architecture Qwen2VLForConditionalGeneration"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_module_the_architecture_has_not_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("llama.yml");
    let models = dir().join("../golden/models");
    fs::write(
        &cfg,
        format!(
            "merge_method: linear\nmodules:\n  text_decoder:\n    models:\n      - model: {a}\n        \
             parameters: {{weight: 0.5}}\n      - model: {b}\n        parameters: {{weight: 0.5}}\n",
            a = models.join("ft-a").display(),
            b = models.join("ft-b").display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run(&["merge", cfg.to_str().unwrap(), out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("modules.text_decoder: not a module of architecture LlamaForCausalLM"),
        "{err}"
    );
    assert!(err.contains("names its modules default"), "{err}");
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
