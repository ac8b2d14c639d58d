//! The founding case on the seed fixture (a tiny stand-in for Unmixtraled-22B): unmix, the
//! verbatim model-card config through a Hugging Face cache, byte-identical 0.0.4.2 files, the
//! one-pass route, and verify.
//!
//! Expected outputs were produced by mergekit itself (0.0.4.2 at arcee-ai/mergekit 7467108, and
//! 0.1.5 from PyPI); see tests/fixtures/seed-lerp/README.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use amalgam_io::ModelFolder;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seed() -> PathBuf {
    root().join("tests/fixtures/seed-lerp")
}

fn amalgam(cwd: &Path, args: &[&str]) -> std::process::Output {
    // The cache below holds fake commits of real Hub ids: amalgam must not ask the Hub about
    // them (online it would fetch the real 22B experts).
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .expect("run amalgam")
}

fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "amalgam failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// name -> (dtype, shape, bytes) of every tensor in a folder.
fn tensors(dir: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let f = ModelFolder::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    f.names()
        .into_iter()
        .map(|n| {
            let t = f.get(n).unwrap();
            (
                n.to_string(),
                (
                    t.info.dtype.to_string(),
                    t.info.shape.clone(),
                    t.data.to_vec(),
                ),
            )
        })
        .collect()
}

fn assert_same_tensors(got: &Path, want: &Path) {
    let g = tensors(got);
    let w = tensors(want);
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "tensor names differ"
    );
    for (name, (wd, ws, wb)) in &w {
        let (gd, gs, gb) = &g[name];
        assert_eq!((gd, gs), (wd, ws), "{name}: dtype/shape");
        let diff = gb
            .chunks(2)
            .zip(wb.chunks(2))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} elements differ from {}",
            want.display()
        );
    }
}

/// A Hugging Face cache holding the 8 experts under the model card's Hub ids, with blobs,
/// symlinked snapshots and refs/main, like huggingface_hub lays it out.
fn hf_cache(tmp: &Path) -> PathBuf {
    let cache = tmp.join("hub");
    for k in 0..8 {
        let repo = cache.join(format!(
            "models--thomasgauthier--Unmixtraled-22B-v0.1-expert-{k}"
        ));
        let sha = format!("{:040x}", 0xabc0 + k);
        let snap = repo.join("snapshots").join(&sha);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), &sha).unwrap();
        let src = seed().join(format!("models/expert-{k}"));
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let blob = repo
                .join("blobs")
                .join(format!("{}-{}", k, name.to_string_lossy()));
            std::fs::copy(e.path(), &blob).unwrap();
            std::os::unix::fs::symlink(&blob, snap.join(&name)).unwrap();
        }
    }
    cache
}

#[test]
fn unmix_every_expert_matches_reference_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let mixtral = seed().join("models/mixtral");
    let out = tmp.path().join("experts");
    ok(amalgam(
        tmp.path(),
        &[
            "unmix",
            mixtral.to_str().unwrap(),
            out.to_str().unwrap(),
            "--expert",
            "all",
            "--dtype",
            "float16",
            "--quiet",
        ],
    ));
    for k in 0..8 {
        assert_same_tensors(
            &out.join(format!("expert-{k}")),
            &seed().join(format!("models/expert-{k}")),
        );
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("expert-{k}/config.json"))).unwrap(),
        )
        .unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(seed().join(format!("models/expert-{k}/config.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(cfg, want, "expert-{k} config.json");
    }
}

#[test]
fn verbatim_model_card_config_through_hf_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = hf_cache(tmp.path());
    let config = root().join("configs/unmixtraled-22b-lerp.yml");
    let old = tmp.path().join("lerp-0.0.4.2");
    let new = tmp.path().join("lerp-0.1.5");
    let c = config.to_str().unwrap();
    let h = cache.to_str().unwrap();
    let out = ok(amalgam(
        tmp.path(),
        &[
            "merge",
            c,
            old.to_str().unwrap(),
            "--mergekit-version",
            "0.0.4.2",
            "--hf-cache",
            h,
            "--quiet",
        ],
    ));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1/8"),
        "the 1/N fallback is announced"
    );
    assert_same_tensors(&old, &seed().join("expected-0.0.4.2"));
    ok(amalgam(
        tmp.path(),
        &[
            "merge",
            c,
            new.to_str().unwrap(),
            "--hf-cache",
            h,
            "--quiet",
        ],
    ));
    assert_same_tensors(&new, &seed().join("expected-0.1.5"));
    // mergekit's own answer to the weightless config is kept under --strict.
    let strict = amalgam(
        tmp.path(),
        &[
            "merge",
            c,
            tmp.path().join("strict").to_str().unwrap(),
            "--hf-cache",
            h,
            "--strict",
        ],
    );
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("Missing required parameter weight"));
    assert!(!tmp.path().join("strict").exists());
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .filter(|(n, _)| n.ends_with(".safetensors") || n.ends_with(".index.json"))
        .collect()
}

#[test]
fn published_config_files_are_byte_identical_to_mergekit_0_0_4_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    ok(amalgam(
        &seed(),
        &[
            "merge",
            "published-config.yml",
            out.to_str().unwrap(),
            "--mergekit-version",
            "0.0.4.2",
            "--out-shard-size",
            "60K",
            "--no-copy-tokenizer",
            "--no-write-model-card",
            "--quiet",
        ],
    ));
    let got = files(&out);
    let want = files(&seed().join("expected-0.0.4.2"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &want {
        assert!(
            &got[name] == bytes,
            "{name} differs from mergekit 0.0.4.2's"
        );
    }
}

/// The one-pass config, pointed at the fixture's Mixtral.
fn onepass_config(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(root().join("configs/unmixtraled-22b-lerp-onepass.yml")).unwrap();
    let mixtral = seed().join("models/mixtral");
    let text = text.replace(
        "mistral-community/Mixtral-8x22B-v0.1",
        mixtral.to_str().unwrap(),
    );
    let p = dir.join("onepass.yml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn one_pass_equals_two_steps_for_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = onepass_config(tmp.path());
    for (version, expected) in [("0.0.4.2", "expected-0.0.4.2"), ("0.1.5", "expected-0.1.5")] {
        let out = tmp.path().join(format!("onepass-{version}"));
        ok(amalgam(
            tmp.path(),
            &[
                "merge",
                cfg.to_str().unwrap(),
                out.to_str().unwrap(),
                "--mergekit-version",
                version,
                "--quiet",
            ],
        ));
        assert_same_tensors(&out, &seed().join(expected));
        let c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(c["model_type"], "mistral");
        assert_eq!(c["torch_dtype"], "float16");
        assert!(c.get("num_local_experts").is_none());
    }
}

#[test]
fn verify_passes_on_expected_and_names_a_flipped_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    for expected in ["expected-0.0.4.2", "expected-0.1.5"] {
        let out = ok(amalgam(
            &seed(),
            &["verify", "published-config.yml", expected],
        ));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("OK"),
            "{expected}"
        );
    }
    // Flip one byte in the data of a copy.
    let copy = tmp.path().join("broken");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(seed().join("expected-0.0.4.2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let shard = copy.join("model-00003-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&shard, bytes).unwrap();
    let out = amalgam(
        &seed(),
        &[
            "verify",
            "published-config.yml",
            copy.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diffs = report["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{report}");
    assert_eq!(diffs[0]["differing_elements"], 1);
    assert_eq!(report["mergekit_version"], "0.0.4.2");
    // The size of the difference: the flipped element's old and new values, decoded here.
    let orig =
        std::fs::read(seed().join("expected-0.0.4.2/model-00003-of-00003.safetensors")).unwrap();
    let dtype = amalgam_io::SafetensorsFile::open(
        seed().join("expected-0.0.4.2/model-00003-of-00003.safetensors"),
    )
    .unwrap()
    .tensors()
    .iter()
    .max_by_key(|t| t.end)
    .unwrap()
    .dtype;
    let es = dtype.size();
    let mut flipped = orig[last + 1 - es..].to_vec();
    flipped[es - 1] ^= 0x01;
    let was = amalgam_io::convert::decode_f32_vec(dtype, &orig[last + 1 - es..]).unwrap()[0];
    let now = amalgam_io::convert::decode_f32_vec(dtype, &flipped).unwrap()[0];
    let want = (f64::from(was) - f64::from(now)).abs();
    assert_eq!(diffs[0]["max_abs_diff"].as_f64(), Some(want), "{report}");
    // The tensor named is the one whose bytes end the shard.
    let f = amalgam_io::SafetensorsFile::open(
        seed().join("expected-0.0.4.2/model-00003-of-00003.safetensors"),
    )
    .unwrap();
    let last_tensor = f.tensors().iter().max_by_key(|t| t.end).unwrap();
    assert_eq!(diffs[0]["tensor"], last_tensor.name.as_str());
}

/// Rewrites the seed Mixtral in the transformers-5 fused layout (`mlp.experts.gate_up_proj`
/// [E, 2I, H] = per expert cat(w1, w3); `mlp.experts.down_proj` [E, H, I] = stack(w2);
/// `mlp.gate.weight` = router), byte for byte from the per-expert tensors.
fn fused_mixtral(dir: &Path) -> PathBuf {
    use amalgam_io::{IndexStyle, OutputWriter, PlannedTensor, ShardLayout, ShardRule, ShardSpec};
    let src = ModelFolder::open(seed().join("models/mixtral")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(seed().join("models/mixtral/config.json")).unwrap(),
    )
    .unwrap();
    let experts = cfg["num_local_experts"].as_u64().unwrap() as usize;
    let layers = cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    let mut tensors: Vec<(String, amalgam_io::DType, Vec<usize>, Vec<u8>)> = Vec::new();
    for name in src.names() {
        if name.contains("block_sparse_moe") {
            continue;
        }
        let t = src.get(name).unwrap();
        tensors.push((
            name.to_string(),
            t.info.dtype,
            t.info.shape.clone(),
            t.data.to_vec(),
        ));
    }
    for l in 0..layers {
        let p = format!("model.layers.{l}.block_sparse_moe.");
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        let w1 = src.get(&format!("{p}experts.0.w1.weight")).unwrap();
        let (inter, hidden, dtype) = (w1.info.shape[0], w1.info.shape[1], w1.info.dtype);
        for e in 0..experts {
            for w in ["w1", "w3"] {
                gate_up.extend_from_slice(
                    src.get(&format!("{p}experts.{e}.{w}.weight")).unwrap().data,
                );
            }
            down.extend_from_slice(src.get(&format!("{p}experts.{e}.w2.weight")).unwrap().data);
        }
        let q = format!("model.layers.{l}.mlp.");
        tensors.push((
            format!("{q}experts.gate_up_proj"),
            dtype,
            vec![experts, 2 * inter, hidden],
            gate_up,
        ));
        tensors.push((
            format!("{q}experts.down_proj"),
            dtype,
            vec![experts, hidden, inter],
            down,
        ));
        let router = src.get(&format!("{p}gate.weight")).unwrap();
        tensors.push((
            format!("{q}gate.weight"),
            router.info.dtype,
            router.info.shape.clone(),
            router.data.to_vec(),
        ));
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
    let out = dir.join("mixtral-fused");
    let w = OutputWriter::create(&out, ShardLayout::plan(planned, &spec).unwrap()).unwrap();
    for (n, _, _, bytes) in &tensors {
        w.write_tensor(n, bytes).unwrap();
    }
    w.copy_file("config.json", &seed().join("models/mixtral/config.json"))
        .unwrap();
    w.finish().unwrap()
}

#[test]
fn unmix_reads_the_fused_transformers_5_layout_too() {
    let tmp = tempfile::tempdir().unwrap();
    let fused = fused_mixtral(tmp.path());
    for k in [0usize, 5] {
        let out = tmp.path().join(format!("e{k}"));
        ok(amalgam(
            tmp.path(),
            &[
                "unmix",
                fused.to_str().unwrap(),
                out.to_str().unwrap(),
                "--expert",
                &k.to_string(),
                "--dtype",
                "float16",
                "--quiet",
            ],
        ));
        assert_same_tensors(&out, &seed().join(format!("models/expert-{k}")));
    }
    // An expert that does not exist is refused with the count.
    let bad = amalgam(
        tmp.path(),
        &[
            "unmix",
            fused.to_str().unwrap(),
            "x",
            "--expert",
            "8",
            "--quiet",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expert 8"));
}

/// A Hugging Face cache holding the seed Mixtral as `mistral-community/Mixtral-8x22B-v0.1`.
fn mixtral_cache(tmp: &Path) -> PathBuf {
    let cache = tmp.join("hub");
    let repo = cache.join("models--mistral-community--Mixtral-8x22B-v0.1");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    for f in ["config.json", "model.safetensors"] {
        let blob = repo.join("blobs").join(f);
        std::fs::copy(seed().join("models/mixtral").join(f), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(f)).unwrap();
    }
    cache
}

#[test]
fn hub_ids_through_the_cache_for_unmix_and_the_verbatim_one_pass_config() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = mixtral_cache(tmp.path());
    let h = cache.to_str().unwrap();
    let out = tmp.path().join("e2");
    ok(amalgam(
        tmp.path(),
        &[
            "unmix",
            "mistral-community/Mixtral-8x22B-v0.1",
            out.to_str().unwrap(),
            "--expert",
            "2",
            "--dtype",
            "float16",
            "--hf-cache",
            h,
            "--quiet",
        ],
    ));
    assert_same_tensors(&out, &seed().join("models/expert-2"));
    // The committed one-pass config, as is.
    let config = root().join("configs/unmixtraled-22b-lerp-onepass.yml");
    let lerp = tmp.path().join("lerp");
    ok(amalgam(
        tmp.path(),
        &[
            "merge",
            config.to_str().unwrap(),
            lerp.to_str().unwrap(),
            "--mergekit-version",
            "0.0.4.2",
            "--hf-cache",
            h,
            "--quiet",
        ],
    ));
    assert_same_tensors(&lerp, &seed().join("expected-0.0.4.2"));
}
