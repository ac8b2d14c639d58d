//! The example method end to end: tiny safetensors models written with `amalgam_io`, a mergekit
//! YAML config naming `merge_method: median`, a merge through the library API and through the
//! `amalgam-custom` binary, and the merged bits compared with values worked out by hand and with
//! PyTorch's (tests/fixtures/median.json, from tests/fixtures/make_median.py).

use std::path::Path;
use std::process::Command;

use amalgam_engine::{MergeOptions, PlanOptions};
use amalgam_io::{
    convert::encode_f32, DType, IndexStyle, ModelFolder, OutputWriter, PlannedTensor, ShardLayout,
    ShardRule, ShardSpec,
};

const TENSOR: &str = "model.layers.0.mlp.down_proj.weight";

/// Writes a one-tensor model folder.
fn write_model(dir: &Path, dtype: DType, shape: &[usize], values: &[f32]) {
    let layout = ShardLayout::plan(
        vec![PlannedTensor {
            name: TENSOR.into(),
            dtype,
            shape: shape.to_vec(),
        }],
        &ShardSpec {
            rule: ShardRule::Bytes(0),
            style: IndexStyle::Modern,
            mergekit_version: "0.1.5".into(),
        },
    )
    .unwrap();
    let w = OutputWriter::create(dir, layout).unwrap();
    let mut bytes = vec![0u8; values.len() * dtype.size()];
    encode_f32(dtype, values, &mut bytes).unwrap();
    w.write_tensor(TENSOR, &bytes).unwrap();
    w.finish().unwrap();
}

/// The merged tensor of `dir`: dtype, shape, raw little-endian bytes.
fn read_merged(dir: &Path) -> (DType, Vec<usize>, Vec<u8>) {
    let f = ModelFolder::open(dir).unwrap();
    let t = f.get(TENSOR).expect("merged tensor");
    (t.info.dtype, t.info.shape.clone(), t.data.to_vec())
}

fn merge_with(
    registry: &amalgam_methods::Registry,
    dir: &Path,
    yaml: &str,
) -> amalgam_engine::Result<(DType, Vec<usize>, Vec<u8>)> {
    let loaded = amalgam_config::parse_str(yaml).unwrap();
    let out = dir.join("out");
    let opts = MergeOptions {
        plan: PlanOptions {
            base_dir: dir.to_path_buf(),
            ..PlanOptions::default()
        },
        ..MergeOptions::default()
    };
    amalgam_engine::merge(&loaded, &out, registry, &opts)?;
    Ok(read_merged(&out))
}

fn f32s(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let mut v = vec![0f32; bytes.len() / dtype.size()];
    amalgam_io::convert::decode_f32(dtype, bytes, &mut v).unwrap();
    v
}

// The hand-worked example. Task vectors (x - base), their median, times lambda = 0.5, plus base:
//
//   element  base   a     b      c     | deltas a, b, c   | median | out
//   0        1.0    1.5   0.0    3.0   |  0.5  -1.0  2.0  |  0.5   | 1.0 + 0.25 = 1.25
//   1        2.0    2.0   2.5    1.0   |  0.0   0.5 -1.0  |  0.0   | 2.0
//   2       -1.0   -3.0  -1.0    1.0   | -2.0   0.0  2.0  |  0.0   | -1.0
//   3        0.0    1.0   2.0   -5.0   |  1.0   2.0 -5.0  |  1.0   | 0.5
//   4        0.5    0.5   0.25   0.75  |  0.0 -0.25  0.25 |  0.0   | 0.5
//   5      256.0  258.0 260.0  256.0   |  2.0   4.0  0.0  |  2.0   | 256 + 1 = 257
//
// 257 needs 9 significant bits: in bfloat16 (8 bits) it is a tie between 256 and 258 and rounds
// to even, 256; in float32 it stays 257. That difference is what per-op rounding is about.
const BASE: [f32; 6] = [1.0, 2.0, -1.0, 0.0, 0.5, 256.0];
const A: [f32; 6] = [1.5, 2.0, -3.0, 1.0, 0.5, 258.0];
const B: [f32; 6] = [0.0, 2.5, -1.0, 2.0, 0.25, 260.0];
const C: [f32; 6] = [3.0, 1.0, 1.0, -5.0, 0.75, 256.0];
const WANT_BF16: [f32; 6] = [1.25, 2.0, -1.0, 0.5, 0.5, 256.0];
const WANT_F32: [f32; 6] = [1.25, 2.0, -1.0, 0.5, 0.5, 257.0];

fn hand_models(dir: &Path) {
    for (name, v) in [("base", BASE), ("a", A), ("b", B), ("c", C)] {
        write_model(&dir.join(name), DType::BF16, &[2, 3], &v);
    }
}

fn hand_config(dtype: &str) -> String {
    format!(
        "merge_method: median\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n  - model: c\n\
         parameters:\n  lambda: 0.5\ndtype: {dtype}\n"
    )
}

#[test]
fn hand_worked_bfloat16() {
    let tmp = tempfile::tempdir().unwrap();
    hand_models(tmp.path());
    let (dtype, shape, bytes) = merge_with(
        &amalgam_custom::registry(),
        tmp.path(),
        &hand_config("bfloat16"),
    )
    .unwrap();
    assert_eq!((dtype, shape), (DType::BF16, vec![2, 3]));
    assert_eq!(f32s(dtype, &bytes), WANT_BF16);
}

#[test]
fn hand_worked_float32_keeps_the_odd_bit() {
    let tmp = tempfile::tempdir().unwrap();
    hand_models(tmp.path());
    let (dtype, _, bytes) = merge_with(
        &amalgam_custom::registry(),
        tmp.path(),
        &hand_config("float32"),
    )
    .unwrap();
    assert_eq!(dtype, DType::F32);
    assert_eq!(f32s(dtype, &bytes), WANT_F32);
}

#[test]
fn without_registration_the_method_is_unknown() {
    let tmp = tempfile::tempdir().unwrap();
    hand_models(tmp.path());
    let err = merge_with(
        &amalgam_methods::Registry::builtin(),
        tmp.path(),
        &hand_config("bfloat16"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("median"), "{err}");
}

#[test]
fn validation_knows_the_declared_parameters() {
    let registry = amalgam_custom::registry();
    let schemas = registry.infos();
    let v15 = amalgam_methods::Compat::V0_1_5;
    let ok = amalgam_config::parse_str(&hand_config("bfloat16")).unwrap();
    assert!(amalgam_config::validate(&ok, &schemas, true, v15).is_empty());
    let typo =
        amalgam_config::parse_str(&hand_config("bfloat16").replace("lambda", "lamda")).unwrap();
    let diags = amalgam_config::validate(&typo, &schemas, true, v15);
    assert!(
        diags.iter().any(|d| d.render(None).contains("lamda")),
        "{:?}",
        diags.iter().map(|d| d.render(None)).collect::<Vec<_>>()
    );
}

/// Every case of the PyTorch fixture, bit for bit.
#[test]
fn bit_exact_with_pytorch() {
    let text = include_str!("fixtures/median.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let dtype = DType::from_mergekit(case["dtype"].as_str().unwrap()).unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let values = |v: &serde_json::Value| -> Vec<f32> {
            let bits: Vec<u8> = v
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| {
                    let b = b.as_u64().unwrap();
                    if dtype == DType::F32 {
                        (b as u32).to_le_bytes().to_vec()
                    } else {
                        (b as u16).to_le_bytes().to_vec()
                    }
                })
                .collect();
            f32s(dtype, &bits)
        };
        let tmp = tempfile::tempdir().unwrap();
        let mut yaml = String::from("merge_method: median\n");
        if !case["base"].is_null() {
            write_model(
                &tmp.path().join("base"),
                dtype,
                &shape,
                &values(&case["base"]),
            );
            yaml.push_str("base_model: base\n");
        }
        yaml.push_str("models:\n");
        for (k, input) in case["inputs"].as_array().unwrap().iter().enumerate() {
            write_model(
                &tmp.path().join(format!("m{k}")),
                dtype,
                &shape,
                &values(input),
            );
            yaml.push_str(&format!("  - model: m{k}\n"));
        }
        if let Some(l) = case["lambda"].as_f64() {
            yaml.push_str(&format!("parameters:\n  lambda: {l}\n"));
        }
        yaml.push_str(&format!("dtype: {}\n", case["dtype"].as_str().unwrap()));
        let (got_dtype, got_shape, got) =
            merge_with(&amalgam_custom::registry(), tmp.path(), &yaml)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((got_dtype, &got_shape), (dtype, &shape), "{name}");
        let want: Vec<u64> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect();
        let got: Vec<u64> = got
            .chunks(dtype.size())
            .map(|c| c.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
            .collect();
        let differing: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            differing.is_empty(),
            "{name}: {} of {} elements differ from PyTorch (first at {:?}: got {:#x}, want {:#x})",
            differing.len(),
            want.len(),
            differing.first(),
            differing.first().map_or(0, |&i| got[i]),
            differing.first().map_or(0, |&i| want[i]),
        );
    }
}

/// The custom binary is the whole `amalgam` command line plus `median`.
#[test]
fn custom_binary_lists_validates_and_merges() {
    let bin = env!("CARGO_BIN_EXE_amalgam-custom");
    let tmp = tempfile::tempdir().unwrap();
    hand_models(tmp.path());
    let cfg = tmp.path().join("median.yml");
    std::fs::write(&cfg, hand_config("bfloat16")).unwrap();

    let methods = Command::new(bin).arg("methods").output().unwrap();
    let listing = String::from_utf8_lossy(&methods.stdout);
    assert!(methods.status.success());
    assert!(listing.lines().any(|l| l == "median"), "{listing}");
    assert!(
        listing.lines().any(|l| l == "linear"),
        "built-ins kept: {listing}"
    );

    let validate = Command::new(bin)
        .arg("validate")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );

    let out = tmp.path().join("merged");
    let merge = Command::new(bin)
        .current_dir(tmp.path())
        .args(["merge", "median.yml", "merged", "--quiet"])
        .output()
        .unwrap();
    assert!(
        merge.status.success(),
        "{}",
        String::from_utf8_lossy(&merge.stderr)
    );
    let (dtype, _, bytes) = read_merged(&out);
    assert_eq!(f32s(dtype, &bytes), WANT_BF16);
    // The model card names the method like any built-in.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("median") || card.contains("Median"), "{card}");
}

/// A tensor above the engine's chunk size (32,768 elements) is merged in parallel 1-D chunks
/// because the method says it is elementwise; the result must not show the seams. Expected
/// values: the median of three as max(min(a, b), min(max(a, b), c)).
#[test]
fn chunked_large_tensor() {
    let shape = [200usize, 201];
    let n = shape[0] * shape[1];
    let a: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
    let c: Vec<f32> = (0..n).map(|i| (i % 3) as f32 * 1.5).collect();
    let tmp = tempfile::tempdir().unwrap();
    for (name, v) in [("a", &a), ("b", &b), ("c", &c)] {
        write_model(&tmp.path().join(name), DType::F32, &shape, v);
    }
    let yaml = "merge_method: median\nmodels:\n  - model: a\n  - model: b\n  - model: c\n";
    let (dtype, got_shape, bytes) =
        merge_with(&amalgam_custom::registry(), tmp.path(), yaml).unwrap();
    assert_eq!((dtype, got_shape), (DType::F32, shape.to_vec()));
    let want: Vec<f32> = (0..n)
        .map(|i| a[i].min(b[i]).max(a[i].max(b[i]).min(c[i])))
        .collect();
    assert_eq!(f32s(dtype, &bytes), want);
}
