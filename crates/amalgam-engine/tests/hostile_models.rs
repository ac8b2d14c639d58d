//! Broken model folders end with an error naming the file, never with an output that looks
//! finished: an unreadable or contradictory config.json, and Mixtral checkpoints whose experts
//! do not add up (missing, renamed or transposed matrices; a `num_local_experts` that disagrees
//! with the tensors).

use std::path::{Path, PathBuf};

use amalgam_engine::{expert_count, merge, unmix, EngineError, MergeOptions, PlanOptions};
use amalgam_methods::Registry;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A copy of the golden tiny Llama at `dir/m`, its config.json then edited by `edit`.
fn model_with(dir: &Path, edit: &dyn Fn(&Path)) {
    let m = dir.join("m");
    copy_dir(&repo().join("tests/golden/models/base"), &m);
    edit(&m.join("config.json"));
}

fn merge_one(dir: &Path) -> (PathBuf, amalgam_engine::Result<amalgam_engine::MergeReport>) {
    let loaded = amalgam_config::parse_str(
        "merge_method: linear\nmodels:\n  - model: ./m\n    parameters: {weight: 1.0}\n",
    )
    .unwrap();
    let out = dir.join("out");
    let opts = MergeOptions {
        plan: PlanOptions {
            base_dir: dir.to_path_buf(),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = merge(&loaded, &out, &Registry::builtin(), &opts);
    (out, r)
}

fn assert_side_file_error(edit: &dyn Fn(&Path), expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    model_with(tmp.path(), edit);
    let (out, r) = merge_one(tmp.path());
    match r {
        Err(e @ EngineError::SideFile { .. }) | Err(e @ EngineError::Io(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("config.json"), "{msg}");
            assert!(msg.contains(expect), "`{msg}` does not say `{expect}`");
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
        Ok(_) => panic!("merged despite a broken config.json ({expect})"),
    }
    assert!(!out.exists(), "an output was left");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("amalgam-tmp"))
        .collect();
    assert!(left.is_empty(), "temp folders left: {left:?}");
}

fn write(text: &'static str) -> impl Fn(&Path) {
    move |p: &Path| std::fs::write(p, text).unwrap()
}

fn set_key(key: &'static str, value: &'static str) -> impl Fn(&Path) {
    move |p: &Path| {
        let text = std::fs::read_to_string(p).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        std::fs::write(p, serde_json::to_string(&v).unwrap()).unwrap();
    }
}

#[test]
fn unreadable_config_json_is_an_error() {
    let replace = |make: fn(&Path)| {
        move |p: &Path| {
            std::fs::remove_file(p).unwrap();
            make(p)
        }
    };
    assert_side_file_error(&replace(|p| std::fs::create_dir(p).unwrap()), "directory");
    assert_side_file_error(
        &replace(|p| std::os::unix::fs::symlink("nowhere.json", p).unwrap()),
        "symlink",
    );
    assert_side_file_error(
        &replace(|p| std::os::unix::fs::symlink(p, p).unwrap()),
        "symlink",
    );
    assert_side_file_error(
        &replace(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        "regular file",
    );
    assert_side_file_error(
        &replace(|p| {
            let ok = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkfifo");
        }),
        "regular file",
    );
}

#[test]
fn contradictory_config_json_is_an_error() {
    assert_side_file_error(&write("[1, 2]"), "JSON object");
    assert_side_file_error(&write("\"llama\""), "JSON object");
    assert_side_file_error(&write("{"), "invalid JSON");
    for v in ["-1", "\"4\"", "null", "18446744073709551616", "2.5"] {
        assert_side_file_error(&set_key("num_hidden_layers", v), "num_hidden_layers");
    }
    assert_side_file_error(
        &set_key("architectures", "\"LlamaForCausalLM\""),
        "architectures",
    );
    assert_side_file_error(&set_key("architectures", "[1]"), "architectures");
}

/// No config.json at all: amalgam infers the layout (documented), and says the output has none.
#[test]
fn absent_config_json_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    model_with(tmp.path(), &|p: &Path| std::fs::remove_file(p).unwrap());
    let (out, r) = merge_one(tmp.path());
    let report = r.expect("merges");
    assert!(
        report.warnings.iter().any(|w| w.contains("no config.json")),
        "{:?}",
        report.warnings
    );
    assert!(!out.join("config.json").exists());
}

// ---- Mixtral experts ----

fn mixtral() -> PathBuf {
    repo().join("tests/fixtures/seed-lerp/models/mixtral")
}

/// A copy of the fixture Mixtral with its safetensors header rewritten by `edit` (renames and
/// shape changes of the same byte size keep the data valid) and config.json by `cfg`.
fn mixtral_with(
    dir: &Path,
    edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>),
    cfg: &dyn Fn(&mut serde_json::Value),
) -> PathBuf {
    let m = dir.join("mixtral");
    std::fs::create_dir_all(&m).unwrap();
    let bytes = std::fs::read(mixtral().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(m.join("model.safetensors"), out).unwrap();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mixtral().join("config.json")).unwrap())
            .unwrap();
    cfg(&mut c);
    std::fs::write(m.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    m
}

fn rename(
    from: &'static str,
    to: &'static str,
) -> impl Fn(&mut serde_json::Map<String, serde_json::Value>) {
    move |h| {
        let v = h.remove(from).expect(from);
        h.insert(to.to_string(), v);
    }
}

fn unmix_fails(m: &Path, k: usize, expect: &str) {
    let out = m.parent().unwrap().join(format!("expert-{k}"));
    match unmix(m, &out, k, &Default::default()) {
        Err(e @ EngineError::Expert { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(expect), "`{msg}` does not say `{expect}`");
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
        Ok(_) => panic!("unmix succeeded; expected `{expect}`"),
    }
    assert!(!out.exists());
}

#[test]
fn fixture_experts_count_as_eight() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mixtral_with(tmp.path(), &|_| {}, &|_| {});
    assert_eq!(expert_count(&m).unwrap(), 8);
}

#[test]
fn missing_or_renamed_expert_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mixtral_with(
        tmp.path(),
        &rename(
            "model.layers.1.block_sparse_moe.experts.3.w1.weight",
            "model.layers.1.block_sparse_moe.experts.3.w9.weight",
        ),
        &|_| {},
    );
    // Another expert is asked for: the checkpoint is still inconsistent, and said so.
    unmix_fails(&m, 0, "experts.3.w1.weight` is missing");
    assert!(expert_count(&m).is_err());
}

#[test]
fn transposed_expert_matrix_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "model.layers.0.block_sparse_moe.experts.2.w2.weight";
    let m = mixtral_with(
        tmp.path(),
        &|h| {
            h.get_mut(name).unwrap()["shape"] = serde_json::json!([128, 64]);
        },
        &|_| {},
    );
    unmix_fails(&m, 2, "transposed");
}

#[test]
fn num_local_experts_must_match_the_tensors() {
    for n in [0u64, 4, 16, 1_000_000_000_000] {
        let tmp = tempfile::tempdir().unwrap();
        let m = mixtral_with(tmp.path(), &|_| {}, &|c| c["num_local_experts"] = n.into());
        match expert_count(&m) {
            Err(EngineError::Expert { reason, .. }) => {
                assert!(reason.contains("num_local_experts"), "{reason}")
            }
            other => panic!("{n}: {other:?}"),
        }
        unmix_fails(&m, 1, "num_local_experts");
    }
}

#[test]
fn expert_beyond_the_count_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = mixtral_with(tmp.path(), &|_| {}, &|_| {});
    unmix_fails(&m, 12, "8 experts");
}

// ---- Mixed architectures ----

/// `a`: the golden Llama; `q`: the same weights whose config.json says Qwen2 (mergekit knows
/// both architectures, so it refuses to mix them without `--allow-crimes`).
fn llama_and_qwen(dir: &Path) {
    copy_dir(&repo().join("tests/golden/models/base"), &dir.join("a"));
    copy_dir(&repo().join("tests/golden/models/base"), &dir.join("q"));
    let p = dir.join("q/config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    v["model_type"] = "qwen2".into();
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn merge_two(
    dir: &Path,
    allow_crimes: bool,
    second: &str,
) -> amalgam_engine::Result<amalgam_engine::MergeReport> {
    let loaded = amalgam_config::parse_str(&format!(
        "merge_method: linear\nmodels:\n  - model: ./a\n    parameters: {{weight: 0.5}}\n  - model: \
         ./{second}\n    parameters: {{weight: 0.5}}\n"
    ))
    .unwrap();
    let opts = MergeOptions {
        plan: PlanOptions {
            base_dir: dir.to_path_buf(),
            allow_crimes,
            ..Default::default()
        },
        ..Default::default()
    };
    merge(
        &loaded,
        &dir.join(format!("out-{allow_crimes}-{second}")),
        &Registry::builtin(),
        &opts,
    )
}

#[test]
fn mixing_architectures_needs_allow_crimes() {
    let tmp = tempfile::tempdir().unwrap();
    llama_and_qwen(tmp.path());
    match merge_two(tmp.path(), false, "q") {
        Err(e @ EngineError::MixedArchitectures { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(
                    "Must specify --allow-crimes to attempt to mix different architectures"
                ),
                "{msg}"
            );
            assert!(
                msg.contains("Qwen2ForCausalLM") && msg.contains("LlamaForCausalLM"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!tmp.path().join("out-false-q").exists());
    merge_two(tmp.path(), true, "q").expect("--allow-crimes merges");
    // Same architecture: no flag needed.
    copy_dir(
        &repo().join("tests/golden/models/base"),
        &tmp.path().join("b"),
    );
    merge_two(tmp.path(), false, "b").expect("one architecture");
}

/// mergekit checks only when it has a definition for every model: an architecture it does not
/// know goes to inference, unchecked.
#[test]
fn unknown_architecture_is_not_a_crime() {
    let tmp = tempfile::tempdir().unwrap();
    llama_and_qwen(tmp.path());
    let p = tmp.path().join("q/config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("Qwen2ForCausalLM", "MadeUpForCausalLM");
    std::fs::write(&p, text).unwrap();
    let report =
        merge_two(tmp.path(), false, "q").expect("unknown architecture: inferred, not refused");
    // Said so: its tensors come from the checkpoint's names, not a mergekit template.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("MadeUpForCausalLM") && w.contains("inferred")),
        "{:?}",
        report.warnings
    );
}
