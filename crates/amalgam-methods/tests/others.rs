//! Bit-exactness of slerp, passthrough, nearswap, model_stock, nuslerp, multislerp, karcher, sce,
//! ram, ramplus_tl and arcee_fusion against mergekit 0.1.5.
//!
//! Fixtures: `tests/fixtures/others/*.safetensors`, built by `tests/fixtures/others.py` with
//! mergekit's own `merge_tensors` (see that script). Each file holds the inputs, mergekit's output
//! and, as metadata, the method, base index and parameters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use amalgam_io::{convert, DType, SafetensorsFile};
use amalgam_methods::rng::Mt19937;
use amalgam_methods::{Compat, MergeArgs, MergeInput, ParamValues, Registry, Tensor, Value};
use sha2::{Digest, Sha256};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/others")
}

fn load_tensor(f: &SafetensorsFile, name: &str) -> Tensor {
    let r = f.get(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut data = vec![0f32; r.info.numel()];
    convert::decode_f32(r.info.dtype, r.data, &mut data).expect("decode");
    Tensor::new(r.info.dtype, r.info.shape.clone(), data)
}

fn to_values(v: &serde_json::Value) -> ParamValues {
    let mut out = BTreeMap::new();
    if let Some(m) = v.as_object() {
        for (k, x) in m {
            let val = if let Some(b) = x.as_bool() {
                Value::Bool(b)
            } else if let Some(i) = x.as_i64() {
                Value::Int(i)
            } else {
                Value::Float(x.as_f64().expect("number"))
            };
            out.insert(k.clone(), val);
        }
    }
    out
}

/// A parsed fixture case.
struct Case {
    name: String,
    method: String,
    inputs: Vec<Tensor>,
    base: Option<usize>,
    shared: ParamValues,
    per_input: Vec<ParamValues>,
    meta: serde_json::Map<String, serde_json::Value>,
    file: SafetensorsFile,
}

fn meta_str<'a>(m: &'a serde_json::Map<String, serde_json::Value>, k: &str) -> &'a str {
    m.get(k)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("metadata {k}"))
}

fn load_case(path: &Path) -> Case {
    let file = SafetensorsFile::open(path).expect("open fixture");
    let meta = file.metadata().expect("metadata").clone();
    let method = meta_str(&meta, "method").to_string();
    let base: Option<usize> = serde_json::from_str(meta_str(&meta, "base")).expect("base");
    let shared_json: serde_json::Value =
        serde_json::from_str(meta_str(&meta, "shared")).expect("shared");
    let per_json: Vec<serde_json::Value> =
        serde_json::from_str(meta_str(&meta, "per_input")).expect("per_input");
    let n: usize = meta_str(&meta, "n_inputs").parse().expect("n_inputs");
    let inputs = if meta.contains_key("formula_shape") {
        formula_inputs(&meta)
    } else {
        (0..n)
            .map(|i| load_tensor(&file, &format!("in{i}")))
            .collect()
    };
    // Fill declared defaults as the engine does.
    let registry = Registry::builtin();
    let m = registry
        .get(&method)
        .unwrap_or_else(|| panic!("method {method} not registered"));
    let mut shared = to_values(&shared_json);
    let mut per_input: Vec<ParamValues> = per_json.iter().map(to_values).collect();
    for spec in &m.info().params {
        if let Some(d) = spec.default {
            match spec.scope {
                amalgam_methods::ParamScope::Shared => {
                    shared.entry(spec.name.to_string()).or_insert(d);
                }
                amalgam_methods::ParamScope::Input => {
                    for p in per_input.iter_mut() {
                        p.entry(spec.name.to_string()).or_insert(d);
                    }
                }
                amalgam_methods::ParamScope::NonBase => {
                    for (k, p) in per_input.iter_mut().enumerate() {
                        if Some(k) != base {
                            p.entry(spec.name.to_string()).or_insert(d);
                        }
                    }
                }
            }
        }
    }
    Case {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        method,
        inputs,
        base,
        shared,
        per_input,
        meta,
        file,
    }
}

/// Deterministic f32 values, identical to `formula` in others.py.
fn formula(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut h = (i
                .wrapping_mul(2654435761)
                .wrapping_add(seed * 40503 + 12345))
                & 0xFFFF_FFFF;
            h ^= h >> 15;
            h = (h * 2246822519) & 0xFFFF_FFFF;
            h ^= h >> 13;
            ((h as u32) as f32 / 4294967296.0 - 0.5) * scale
        })
        .collect()
}

fn formula_inputs(meta: &serde_json::Map<String, serde_json::Value>) -> Vec<Tensor> {
    let shape: Vec<usize> = serde_json::from_str(meta_str(meta, "formula_shape")).unwrap();
    let dtype = match meta_str(meta, "formula_dtype") {
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        _ => DType::F32,
    };
    let n: usize = shape.iter().product();
    let b0 = formula(n, 1, 4.0);
    let d = formula(n, 2, 0.25);
    let b: Vec<f32> = b0.iter().map(|&v| convert::round_f32(dtype, v)).collect();
    let x: Vec<f32> = b0
        .iter()
        .zip(&d)
        .map(|(&v, &e)| convert::round_f32(dtype, v + e))
        .collect();
    let base: Option<usize> = serde_json::from_str(meta_str(meta, "base")).unwrap();
    let mut v = vec![
        Tensor::new(dtype, shape.clone(), b),
        Tensor::new(dtype, shape, x),
    ];
    if base == Some(1) {
        v.reverse();
    }
    v
}

fn run_case(c: &Case, rng: Option<&mut Mt19937>) -> Result<Tensor, amalgam_methods::MethodError> {
    let registry = Registry::builtin();
    let m = registry.get(&c.method).unwrap();
    let labels: Vec<String> = (0..c.inputs.len()).map(|i| format!("m{i}.w")).collect();
    let inputs = c
        .inputs
        .iter()
        .zip(&c.per_input)
        .zip(&labels)
        .map(|((t, p), l)| MergeInput {
            tensor: t,
            params: p,
            label: l,
        })
        .collect();
    m.merge(MergeArgs {
        tensor_name: "w",
        inputs,
        base: c.base,
        shared: &c.shared,
        rng,
        compat: Compat::V0_1_5,
        torch_threads: 1,
    })
}

fn bits(dtype: DType, x: f32) -> u32 {
    match dtype {
        DType::BF16 => convert::f32_to_bf16(x) as u32,
        DType::F16 => convert::f32_to_f16(x) as u32,
        _ => x.to_bits(),
    }
}

/// Distance in units in the last place between two values of `dtype` (same sign assumed).
fn ulps(dtype: DType, a: f32, b: f32) -> u64 {
    let (x, y) = (bits(dtype, a) as i64, bits(dtype, b) as i64);
    if a.is_nan() && b.is_nan() {
        return 0;
    }
    (x - y).unsigned_abs()
}

/// Compares one case; `tol` is the ulp tolerance (0 = bit-exact). Returns (mismatches, worst).
fn compare(c: &Case, got: &Tensor, expected: &Tensor, tol: u64) -> (usize, u64) {
    assert_eq!(got.dtype, expected.dtype, "{}: dtype", c.name);
    assert_eq!(got.data.len(), expected.data.len(), "{}: length", c.name);
    let mut bad = 0;
    let mut worst = 0;
    for (i, (&g, &e)) in got.data.iter().zip(&expected.data).enumerate() {
        if bits(got.dtype, g) != bits(got.dtype, e) {
            let u = ulps(got.dtype, g, e);
            worst = worst.max(u);
            if u > tol {
                eprintln!(
                    "{}: element {i}: got {g:e} expected {e:e} ({u} ulp)",
                    c.name
                );
            }
            bad += 1;
        }
    }
    (bad, worst)
}

fn cases(prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .strip_prefix(prefix)
                .is_some_and(|rest| {
                    rest.starts_with('_') && rest.trim_start_matches('_').starts_with(['b', 'f'])
                })
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures for {prefix}");
    v
}

/// Runs every small fixture of `method`; `tol` as in [`compare`].
fn check_method(method: &str, tol: u64) {
    check_method_tol(method, tol, tol);
}

/// [`check_method`] with a separate tolerance for f32 outputs (`tol_f32`).
fn check_method_tol(method: &str, tol: u64, tol_f32: u64) {
    let mut failures = Vec::new();
    for p in cases(method) {
        let c = load_case(&p);
        assert_eq!(c.method, method);
        let got = run_case(&c, None);
        if let Some(err) = c.meta.get("error").and_then(|v| v.as_str()) {
            match got {
                Err(e) => assert_eq!(e.to_string(), err, "{}", c.name),
                Ok(_) => failures.push(format!("{}: expected error {err}", c.name)),
            }
            continue;
        }
        let expected = load_tensor(&c.file, "out");
        match got {
            Err(e) => failures.push(format!("{}: {e}", c.name)),
            Ok(got) => {
                assert_eq!(got.shape, expected.shape, "{}: shape", c.name);
                let tol = if got.dtype == DType::F32 {
                    tol_f32
                } else {
                    tol
                };
                let (bad, worst) = compare(&c, &got, &expected, tol);
                if worst > tol {
                    failures.push(format!(
                        "{}: {bad} elements differ, worst {worst} ulp",
                        c.name
                    ));
                } else if bad > 0 {
                    eprintln!("{}: {bad} elements within {tol} ulp", c.name);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs a large formula-input fixture: compares the stored strided sample (within `tol`) and, when
/// `exact` is set, the SHA-256 of the whole output.
fn check_big(name: &str, tol: u64, exact: bool) {
    let c = load_case(&fixture_dir().join(format!("{name}.safetensors")));
    let mut rng = c
        .meta
        .get("seed")
        .and_then(|s| s.as_str())
        .map(|s| Mt19937::new(s.parse().unwrap()));
    let got = run_case(&c, rng.as_mut()).expect("merge");
    let stride: usize = meta_str(&c.meta, "sample_stride").parse().unwrap();
    let sample = load_tensor(&c.file, "out");
    let got_sample = Tensor::new(
        got.dtype,
        vec![sample.data.len()],
        got.data.iter().step_by(stride).copied().collect(),
    );
    let (bad, worst) = compare(&c, &got_sample, &sample, tol);
    assert!(
        worst <= tol,
        "{name}: {bad} sampled elements differ, worst {worst} ulp"
    );
    let mut bytes = vec![0u8; got.data.len() * got.dtype.size()];
    convert::encode_f32(got.dtype, &got.data, &mut bytes).unwrap();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if exact {
        assert_eq!(
            digest,
            meta_str(&c.meta, "sha256"),
            "{name}: full output hash"
        );
    } else if digest != meta_str(&c.meta, "sha256") {
        eprintln!("{name}: full output differs from mergekit's (allowed: see the test comment)");
    }
}

#[test]
fn slerp_matches_mergekit() {
    check_method("slerp", 0);
}

/// slerp over more than 1,048,576 elements (two chunks): bit-exact, whole output hashed.
#[test]
fn slerp_large_matches_mergekit() {
    check_big("big_slerp_bf16", 0, true);
    check_big("big_slerp_f32", 0, true);
}

#[test]
fn passthrough_matches_mergekit() {
    check_method("passthrough", 0);
}

#[test]
fn nearswap_matches_mergekit() {
    check_method("nearswap", 0);
}

#[test]
fn model_stock_matches_mergekit() {
    check_method("model_stock", 0);
}

/// bf16/f16: bit-exact. f32: PyTorch evaluates `acos`/`sin` with SLEEF, amalgam with the
/// platform libm; they disagree in the last bit for ~5 % of arguments, and acos near 1 amplifies
/// that, so f32 outputs may differ by a few ulps (up to 16 seen on these fixtures).
#[test]
fn nuslerp_matches_mergekit() {
    check_method_tol("nuslerp", 0, 32);
}

#[test]
fn ram_matches_mergekit() {
    check_method("ram", 0);
}

#[test]
fn ramplus_tl_matches_mergekit() {
    check_method("ramplus_tl", 0);
}

#[test]
fn sce_matches_mergekit() {
    check_method("sce", 0);
}

#[test]
fn multislerp_matches_mergekit() {
    check_method("multislerp", 0);
}

#[test]
fn karcher_matches_mergekit() {
    check_method("karcher", 0);
}

#[test]
fn arcee_fusion_matches_mergekit() {
    check_method("arcee_fusion", 0);
}

/// Over 1,000,000 elements: the quantiles come from 1,000,000 indices drawn with `randint`
/// (MT19937 `% n`) from the stream seeded like `torch.manual_seed(42)`.
#[test]
fn arcee_fusion_large_matches_mergekit() {
    check_big("big_arcee_fusion_bf16", 0, true);
}

/// The large arcee_fusion output depends on the random stream (so the test above can fail on a
/// wrong generator): another seed moves the sampled threshold and changes the output.
#[test]
fn arcee_fusion_large_depends_on_seed() {
    let c = load_case(&fixture_dir().join("big_arcee_fusion_bf16.safetensors"));
    let mut a = Mt19937::new(42);
    let mut b = Mt19937::new(7);
    let x = run_case(&c, Some(&mut a)).expect("merge");
    let y = run_case(&c, Some(&mut b)).expect("merge");
    assert_ne!(x.data, y.data);
    assert!(run_case(&c, None).is_err(), "needs the random stream");
}
