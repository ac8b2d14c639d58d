//! Large tensors are merged in parallel chunks; the result must equal merging the whole tensor at
//! once (what mergekit does), whatever the thread count.

use std::path::Path;
use std::process::Command;

use amalgam_io::{
    convert, DType, IndexStyle, OutputWriter, PlannedTensor, ShardLayout, ShardRule, ShardSpec,
};
use amalgam_methods::{Compat, MergeArgs, MergeInput, ParamValues, Registry, Tensor, Value};

const N: usize = 1_500_003; // not a multiple of any chunk size

fn values(seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..N)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // Spread over many binades, including float16 subnormals.
            let m = (s % 20000) as f32 / 10000.0 - 1.0;
            let e = ((s >> 20) % 24) as i32 - 20;
            convert::round_f32(DType::F16, m * 2f32.powi(e))
        })
        .collect()
}

fn write_model(dir: &Path, data: &[f32]) {
    let planned = vec![PlannedTensor {
        name: "model.embed_tokens.weight".into(),
        dtype: DType::F16,
        shape: vec![N],
    }];
    let spec = ShardSpec {
        rule: ShardRule::Bytes(0),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    };
    let w = OutputWriter::create(dir, ShardLayout::plan(planned, &spec).unwrap()).unwrap();
    let mut bytes = vec![0u8; N * 2];
    convert::encode_f32(DType::F16, data, &mut bytes).unwrap();
    w.write_tensor("model.embed_tokens.weight", &bytes).unwrap();
    w.finish().unwrap();
}

fn whole(
    method: &str,
    inputs: &[Vec<f32>],
    per: &[ParamValues],
    shared: &ParamValues,
    base: Option<usize>,
) -> Vec<u8> {
    let reg = Registry::builtin();
    let m = reg.get(method).unwrap();
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|d| Tensor::new(DType::F16, vec![N], d.clone()))
        .collect();
    let args = MergeArgs {
        tensor_name: "model.embed_tokens.weight",
        inputs: tensors
            .iter()
            .zip(per)
            .map(|(tensor, params)| MergeInput {
                tensor,
                params,
                label: "x",
            })
            .collect(),
        base,
        shared,
        rng: None,
        compat: Compat::V0_1_5,
        torch_threads: 1,
    };
    let out = m.merge(args).unwrap();
    let mut bytes = vec![0u8; N * 2];
    convert::encode_f32(DType::F16, &out.data, &mut bytes).unwrap();
    bytes
}

fn merged(dir: &Path, config: &str, threads: &str) -> Vec<u8> {
    merged_with(dir, config, threads, &[])
}

fn merged_with(dir: &Path, config: &str, threads: &str, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("out-{threads}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::write(dir.join("c.yml"), config).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(dir)
        .args([
            "merge",
            "c.yml",
            out.to_str().unwrap(),
            "--quiet",
            "-j",
            threads,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = amalgam_io::SafetensorsFile::open(out.join("model.safetensors")).unwrap();
    f.get("model.embed_tokens.weight").unwrap().data.to_vec()
}

fn p(pairs: &[(&str, Value)]) -> ParamValues {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn chunked_linear_and_task_arithmetic_equal_whole_tensor_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<Vec<f32>> = (0..3).map(|i| values(0x9e37_79b9 ^ (i + 1))).collect();
    for (i, d) in data.iter().enumerate() {
        write_model(&tmp.path().join(format!("m{i}")), d);
    }
    let lin = "models:\n  - model: ./m0\n    parameters: {weight: 0.3}\n  - model: ./m1\n    parameters: {weight: 0.45}\n  - model: ./m2\n    parameters: {weight: 0.2}\nmerge_method: linear\n";
    let want = whole(
        "linear",
        &data,
        &[
            p(&[("weight", Value::Float(0.3))]),
            p(&[("weight", Value::Float(0.45))]),
            p(&[("weight", Value::Float(0.2))]),
        ],
        &p(&[("normalize", Value::Bool(true))]),
        None,
    );
    for j in ["1", "2"] {
        assert!(
            merged(tmp.path(), lin, j) == want,
            "linear -j {j} differs from the whole-tensor merge"
        );
    }
    let ta = "base_model: ./m0\nmodels:\n  - model: ./m1\n    parameters: {weight: 0.7}\n  - model: ./m2\n    parameters: {weight: -0.4}\nmerge_method: task_arithmetic\nparameters: {lambda: 0.9}\n";
    let shared = p(&[
        ("normalize", Value::Bool(false)),
        ("rescale", Value::Bool(false)),
        ("int8_mask", Value::Bool(false)),
        ("lambda", Value::Float(0.9)),
    ]);
    let per = |w: f64| p(&[("weight", Value::Float(w)), ("density", Value::Float(1.0))]);
    // Input order as mergekit presents it: config order, the auto-added base last.
    let ordered = vec![data[1].clone(), data[2].clone(), data[0].clone()];
    let want = whole(
        "task_arithmetic",
        &ordered,
        &[per(0.7), per(-0.4), ParamValues::new()],
        &shared,
        Some(2),
    );
    for j in ["1", "2"] {
        assert!(
            merged(tmp.path(), ta, j) == want,
            "task_arithmetic -j {j} differs from the whole-tensor merge"
        );
    }
}

/// slerp streamed (`--stream-above-mib 0`: three passes over mergekit's 1,048,576-element chunks,
/// each chunk read afresh, chunks in parallel) gives the bytes of the whole-tensor merge on a
/// tensor of two chunks, at either thread count, and so does the default (whole) path.
#[test]
fn streamed_slerp_equals_the_whole_tensor_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<Vec<f32>> = (0..2).map(|i| values(0x85eb_ca6b ^ (i + 7))).collect();
    for (i, d) in data.iter().enumerate() {
        write_model(&tmp.path().join(format!("m{i}")), d);
    }
    let cfg = "base_model: ./m0\nmodels:\n  - model: ./m1\nmerge_method: slerp\nparameters: {t: 0.35}\ndtype: float16\n";
    // Input order as mergekit presents it: config order, the auto-added base last.
    let want = whole(
        "slerp",
        &[data[1].clone(), data[0].clone()],
        &[ParamValues::new(), ParamValues::new()],
        &p(&[("t", Value::Float(0.35))]),
        Some(1),
    );
    for j in ["1", "2"] {
        assert!(
            merged_with(tmp.path(), cfg, j, &["--stream-above-mib", "0"]) == want,
            "streamed slerp -j {j} differs from the whole-tensor merge"
        );
        assert!(
            merged(tmp.path(), cfg, j) == want,
            "slerp -j {j} differs from the whole-tensor merge"
        );
    }
}
