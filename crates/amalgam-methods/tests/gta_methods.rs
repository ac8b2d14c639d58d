//! Bit-exactness of the generalized task-arithmetic family (task_arithmetic, ties, dare_*,
//! breadcrumbs*, della*), of the introsort emulation and of the Bernoulli draws, against
//! PyTorch 2.15 / mergekit 0.1.5 on CPU.
//!
//! Fixtures are written by `tests/fixtures/gta.py` (run with mergekit's venv):
//! * `gta_sort.safetensors`: keys with many ties and `torch.argsort` permutations of them;
//! * `gta_rng.safetensors`: `torch.bernoulli` masks after `torch.manual_seed(N)`;
//! * `gta_cases.safetensors` + `gta_cases.json`: inputs, parameters, seeds and mergekit's outputs
//!   (or its refusal text) from `mergekit.merge_methods.api.merge_tensors`; cases marked
//!   `"compat": "0.0.4.2"` come from the April-2024 arithmetic written out with torch ops in the
//!   script (that mergekit cannot be installed).
//!
//! The script runs PyTorch single-threaded: with several threads PyTorch splits whole-tensor sums
//! above 32,768 elements per thread, which mergekit itself does differently on each machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use amalgam_io::{convert, DType, SafetensorsFile};
use amalgam_methods::rng::Mt19937;
use amalgam_methods::stdsort::{argsort, topk_largest};
use amalgam_methods::{
    Compat, MergeArgs, MergeInput, ParamScope, ParamValues, Registry, Tensor, Value,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn open(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(fixture(name)).expect("fixture file")
}

fn load_tensor(f: &SafetensorsFile, name: &str) -> Tensor {
    let r = f.get(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut data = vec![0f32; r.info.numel()];
    convert::decode_f32(r.info.dtype, r.data, &mut data).expect("decode");
    Tensor::new(r.info.dtype, r.info.shape.clone(), data)
}

fn load_i32(f: &SafetensorsFile, name: &str) -> Vec<u32> {
    let r = f.get(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(r.info.dtype, DType::I32);
    r.data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
        .collect()
}

fn load_u8(f: &SafetensorsFile, name: &str) -> Vec<u8> {
    let r = f.get(name).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(r.info.dtype, DType::U8);
    r.data.to_vec()
}

#[test]
fn argsort_matches_torch_with_ties() {
    let f = open("gta_sort.safetensors");
    let mut checked = 0;
    for info in f.tensors() {
        let Some(rest) = info.name.strip_prefix("keys_") else {
            continue;
        };
        if rest == "rows" {
            continue;
        }
        let keys = load_tensor(&f, &info.name).data;
        for (prefix, desc) in [("desc_", true), ("asc_", false)] {
            let name = format!("{prefix}{rest}");
            if f.get(&name).is_none() {
                continue;
            }
            let want = load_i32(&f, &name);
            let got = argsort(&keys, desc);
            assert_eq!(got.len(), want.len(), "{name}");
            let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
            assert_eq!(first_diff, None, "{name}: permutation differs from torch");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} permutations checked");
}

#[test]
fn topk_matches_torch_with_ties() {
    let f = open("gta_sort.safetensors");
    let mut checked = 0;
    for info in f.tensors() {
        let Some(rest) = info.name.strip_prefix("topk_") else {
            continue;
        };
        let (n, k) = rest.split_once('_').expect("topk_<n>_<k>");
        let keys = load_tensor(&f, &format!("keys_{n}")).data;
        let k: usize = k.parse().expect("k");
        assert_eq!(
            topk_largest(&keys, k),
            load_i32(&f, &info.name),
            "{}",
            info.name
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn argsort_rows_matches_torch() {
    let f = open("gta_sort.safetensors");
    let m = load_tensor(&f, "keys_rows");
    let want = load_i32(&f, "asc_rows");
    let cols = m.shape[1];
    for (r, (row, want_row)) in m.data.chunks(cols).zip(want.chunks(cols)).enumerate() {
        assert_eq!(argsort(row, false), want_row, "row {r}");
    }
}

#[test]
fn bernoulli_matches_torch() {
    let f = open("gta_rng.safetensors");
    let mut checked = 0;
    for info in f.tensors() {
        let parts: Vec<&str> = info.name.split('_').collect();
        let ["bern", seed, dt, n] = parts.as_slice() else {
            continue;
        };
        let (Ok(seed), Ok(n)) = (seed.parse::<u64>(), n.parse::<usize>()) else {
            continue;
        };
        let p = match (seed, n) {
            (0 | 42, _) => 0.66,
            (7, _) => 0.3,
            (123456789, _) => 0.9,
            _ => 0.5,
        };
        let dtype = if *dt == "bf16" {
            DType::BF16
        } else {
            DType::F32
        };
        let p = amalgam_methods::numerics::as_dtype(dtype, p);
        let mut rng = Mt19937::new(seed);
        let got: Vec<u8> = (0..n).map(|_| rng.bernoulli(p) as u8).collect();
        assert_eq!(got, load_u8(&f, &info.name), "{}", info.name);
        checked += 1;
    }
    assert_eq!(checked, 7);

    // Per-element probabilities, two tensors drawn from one stream.
    let mut rng = Mt19937::new(99);
    for (probs, mask) in [
        ("probs_bf16", "bern_99_probs_bf16"),
        ("probs_f32", "bern_99_probs_f32_next"),
    ] {
        let p = load_tensor(&f, probs).data;
        let got: Vec<u8> = p.iter().map(|&p| rng.bernoulli(p) as u8).collect();
        assert_eq!(got, load_u8(&f, mask), "{mask}");
    }
}

struct Cases {
    json: serde_json::Value,
    file: SafetensorsFile,
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(fixture("gta_cases.json")).expect("json");
    Cases {
        json: serde_json::from_str(&text).expect("parse json"),
        file: open("gta_cases.safetensors"),
    }
}

fn json_value(v: &serde_json::Value) -> Value {
    if let Some(b) = v.as_bool() {
        Value::Bool(b)
    } else {
        Value::Float(v.as_f64().expect("number"))
    }
}

/// Runs one case; returns the output or the error text.
fn run_case(reg: &Registry, cs: &Cases, case: &serde_json::Value) -> Result<Tensor, String> {
    let method = reg
        .get(case["method"].as_str().expect("method"))
        .expect("registered");
    let info = method.info();
    let names: Vec<String> = case["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|v| v.as_str().expect("name").to_string())
        .collect();
    let tensors: Vec<Tensor> = names.iter().map(|n| load_tensor(&cs.file, n)).collect();
    let base = case["base_index"].as_u64().map(|b| b as usize);
    let params = case["params"].as_object().expect("params");

    // Defaults filled as the engine does, then the given values.
    let mut shared: ParamValues = BTreeMap::new();
    for spec in &info.params {
        if spec.scope == ParamScope::Shared {
            if let Some(d) = spec.default {
                shared.insert(spec.name.to_string(), d);
            }
        }
    }
    let mut per_input: Vec<ParamValues> = vec![BTreeMap::new(); tensors.len()];
    let mut k = 0;
    for (i, p) in per_input.iter_mut().enumerate() {
        if Some(i) == base {
            continue;
        }
        for spec in &info.params {
            if spec.scope == ParamScope::Shared {
                continue;
            }
            let given = params.get(spec.name).map(|v| match v.as_array() {
                Some(list) => json_value(&list[k]),
                None => json_value(v),
            });
            if let Some(v) = given.or(spec.default) {
                p.insert(spec.name.to_string(), v);
            }
        }
        k += 1;
    }
    for spec in &info.params {
        if spec.scope == ParamScope::Shared {
            if let Some(v) = params.get(spec.name) {
                shared.insert(spec.name.to_string(), json_value(v));
            }
        }
    }
    let mut rng = case["seed"].as_u64().map(Mt19937::new);
    let inputs: Vec<MergeInput<'_>> = tensors
        .iter()
        .zip(&per_input)
        .zip(&names)
        .map(|((t, p), n)| MergeInput {
            tensor: t,
            params: p,
            label: n,
        })
        .collect();
    let args = MergeArgs {
        tensor_name: "model.layers.0.mlp.weight",
        inputs,
        base,
        shared: &shared,
        rng: rng.as_mut(),
        compat: case["compat"]
            .as_str()
            .map(|c| Compat::parse(c).expect("compat"))
            .unwrap_or_default(),
        torch_threads: 1,
    };
    method.merge(args).map_err(|e| e.to_string())
}

#[test]
fn merges_match_mergekit_bit_for_bit() {
    let cs = cases();
    let reg = Registry::builtin();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cs.json["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let label = format!(
            "{name} {} {} {}",
            case["method"],
            case["inputs"][0],
            serde_json::to_string(&case["params"]).unwrap_or_default()
        );
        let got = run_case(&reg, &cs, case);
        match (case["error"].as_str(), got) {
            (Some(want), Err(got)) => {
                // mergekit's text is `ValueError: <message>`; ours is the message.
                let want = want.split_once(": ").map(|(_, m)| m).unwrap_or(want);
                if got != want {
                    failures.push(format!("{label}: error {got:?}, want {want:?}"));
                }
            }
            (Some(want), Ok(_)) => failures.push(format!("{label}: merged, want error {want:?}")),
            (None, Err(e)) => failures.push(format!("{label}: error {e}")),
            (None, Ok(out)) => {
                let want = load_tensor(&cs.file, name);
                assert_eq!(out.dtype, want.dtype, "{label}");
                assert_eq!(out.shape, want.shape, "{label}");
                let diffs: Vec<usize> = out
                    .data
                    .iter()
                    .zip(&want.data)
                    .enumerate()
                    .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&i) = diffs.first() {
                    failures.push(format!(
                        "{label}: {} of {} elements differ; first at {i}: {} vs {}",
                        diffs.len(),
                        out.data.len(),
                        out.data[i],
                        want.data[i]
                    ));
                }
            }
        }
        checked += 1;
    }
    assert!(checked > 100);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn random_methods_need_a_stream_and_declare_it() {
    let reg = Registry::builtin();
    for (name, random) in [
        ("task_arithmetic", false),
        ("ties", false),
        ("breadcrumbs", false),
        ("breadcrumbs_ties", false),
        ("dare_linear", true),
        ("dare_ties", true),
        ("della", true),
        ("della_linear", true),
    ] {
        let m = reg.get(name).expect(name);
        assert_eq!(m.info().random, random, "{name}");
    }
}

#[test]
fn refusals_carry_mergekit_text() {
    let cs = cases();
    let reg = Registry::builtin();
    let inputs = serde_json::json!(["bf16.vec.m0", "bf16.vec.m1", "bf16.vec.m2", "bf16.vec.base"]);
    let run = |method: &str, params: serde_json::Value, compat: &str, seed: Option<u64>| {
        let case = serde_json::json!({
            "method": method, "inputs": inputs, "base_index": 3, "params": params,
            "seed": seed, "compat": compat,
        });
        run_case(&reg, &cs, &case).err()
    };
    let w = serde_json::json!([0.3, 0.5, 0.7]);
    // Methods that did not exist in April 2024: refused by their schema, at planning.
    for m in ["breadcrumbs", "breadcrumbs_ties", "della", "della_linear"] {
        let refusal = reg
            .get(m)
            .unwrap()
            .info()
            .check_version(amalgam_methods::Compat::V0_0_4_2)
            .unwrap_err()
            .to_string();
        assert!(
            refusal.contains(&format!("Unimplemented merge method {m}")),
            "{refusal}"
        );
    }
    // 0.0.4.2's magnitude asserted k > 0 (64 elements, density 0.01).
    assert_eq!(
        run(
            "ties",
            serde_json::json!({"weight": w, "density": 0.01}),
            "0.0.4.2",
            None
        ),
        Some("not gonna zero out the whole tensor buddy".to_string())
    );
    // 0.1.5 keeps at least one element instead.
    assert_eq!(
        run(
            "ties",
            serde_json::json!({"weight": w, "density": 0.01}),
            "0.1.5",
            None
        ),
        None
    );
    // A random method without a stream is refused rather than silently unseeded.
    assert!(run(
        "dare_linear",
        serde_json::json!({"weight": w, "density": 0.5}),
        "0.1.5",
        None
    )
    .is_some());
    // A missing weight names the input.
    let e = run("task_arithmetic", serde_json::json!({}), "0.1.5", None).expect("refused");
    assert!(e.contains("weight") && e.contains("bf16.vec.m0"), "{e}");
    // density out of [0, 1] reaches torch.bernoulli's check.
    assert_eq!(
        run(
            "dare_ties",
            serde_json::json!({"weight": w, "density": -0.5}),
            "0.1.5",
            Some(1)
        ),
        Some("Expected p_in >= 0 && p_in <= 1 to be true, but got false.".to_string())
    );
}
