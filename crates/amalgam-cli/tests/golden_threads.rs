//! `--torch-threads`: amalgam against mergekit 0.1.5 run with 1, 2 and 4 PyTorch threads.
//!
//! Ground truth: `tests/golden-threads/` (built by its `make_golden.py` with mergekit's own
//! `run_merge` after `torch.set_num_threads(T)`; see that script's header). Its `cases.json` holds,
//! for every case (method x dtype) and thread count, the sha256 of every tensor mergekit wrote;
//! the slerp-family cases (multislerp, nuslerp, karcher) also keep the f32 values of their large
//! tensors for a tolerance check. The models' largest tensors (45,056 and 70,400 elements) are
//! past PyTorch's 32,768-element split, so a reduction that does not split as PyTorch's does
//! changes bytes here.
//!
//! Tolerances: every method bit-exact (sha256 equal), except the trig-dependent ones, whose f32
//! `acos`/`sin`/`cos` come from Intel MKL in PyTorch and cannot be reproduced: there every element
//! must be within 4 ulp of the tensor's largest magnitude (the error a 1-ulp coefficient
//! difference becomes after cancellation), checked on the stored values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use amalgam_io::{convert, DType, SafetensorsFile};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden-threads")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("cases.json")).expect("cases.json");
    let v: Value = serde_json::from_str(&text).expect("cases.json parses");
    v["cases"].as_array().expect("cases").clone()
}

/// Methods whose f32 transcendental functions are MKL's in PyTorch (tolerance, not bits).
const TRIG: &[&str] = &["multislerp", "nuslerp", "karcher", "slerp"];

/// Runs `amalgam merge` for `case` with `threads` into `out`.
fn merge(case: &Value, threads: usize, out: &Path) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amalgam"));
    cmd.current_dir(dir())
        .arg("merge")
        .arg(case["config"].as_str().expect("config"))
        .arg(out)
        .args(["--no-copy-tokenizer", "--quiet"])
        .args(["--torch-threads", &threads.to_string()]);
    if let Some(seed) = case["random_seed"].as_u64() {
        cmd.args(["--random-seed", &seed.to_string()]);
    }
    let o = cmd.output().expect("amalgam runs");
    assert!(
        o.status.success(),
        "{} T={threads}: {}",
        case["name"],
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (dtype, bytes) of every tensor in the safetensors files of `dir`.
fn tensors(dir: &Path) -> BTreeMap<String, (DType, Vec<u8>)> {
    let mut all = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("output folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for f in files {
        let st = SafetensorsFile::open(&f).expect("safetensors");
        for info in st.tensors() {
            if let Some(t) = st.get(&info.name) {
                all.insert(info.name.clone(), (info.dtype, t.data.to_vec()));
            }
        }
    }
    all
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The largest |e - a| over the tensor in units of the ulp of max |e| (f32 values).
fn ulps_of_scale(dtype: DType, e: &[u8], a: &[u8]) -> f64 {
    let n = e.len() / dtype.size();
    let (mut ev, mut av) = (vec![0f32; n], vec![0f32; n]);
    if convert::decode_f32(dtype, e, &mut ev).is_err()
        || convert::decode_f32(dtype, a, &mut av).is_err()
        || e.len() != a.len()
    {
        return f64::INFINITY;
    }
    let max = ev.iter().fold(0f32, |m, v| m.max(v.abs()));
    let ulp = f64::from(f32::from_bits(max.to_bits() + 1)) - f64::from(max);
    ev.iter()
        .zip(&av)
        .map(|(&x, &y)| {
            if x.to_bits() == y.to_bits() {
                0.0
            } else {
                (f64::from(x) - f64::from(y)).abs() / ulp
            }
        })
        .fold(0.0, f64::max)
}

/// Checks every run of the cases of `method`; returns the problems.
fn check_method(method: &str) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut problems = Vec::new();
    for case in cases().iter().filter(|c| c["method"] == method) {
        let name = case["name"].as_str().unwrap_or("?");
        for run in case["runs"].as_array().expect("runs") {
            let t = run["torch_threads"].as_u64().expect("threads") as usize;
            let out = tmp.path().join(format!("{name}-t{t}"));
            merge(case, t, &out);
            let ours = tensors(&out);
            let want = run["sha256"].as_object().expect("sha256");
            let values = run["values"]
                .as_str()
                .map(|f| SafetensorsFile::open(dir().join(f)).expect("values file"));
            for (tensor, h) in want {
                let Some((dt, bytes)) = ours.get(tensor) else {
                    problems.push(format!("{name} T={t}: {tensor} missing"));
                    continue;
                };
                if Some(sha(bytes).as_str()) == h.as_str() {
                    continue;
                }
                // Values are stored for some runs only; a run whose tensor has the same sha256
                // (mergekit gave the same bytes at another thread count) shares them.
                let other = case["runs"].as_array().and_then(|runs| {
                    runs.iter()
                        .find(|r| r["values"].is_string() && r["sha256"][tensor] == *h)
                });
                let other = other
                    .and_then(|r| r["values"].as_str())
                    .map(|f| SafetensorsFile::open(dir().join(f)).expect("values file"));
                let stored = values
                    .as_ref()
                    .filter(|v| v.get(tensor).is_some())
                    .or(other.as_ref())
                    .and_then(|v| v.get(tensor));
                match stored {
                    Some(e) if TRIG.contains(&method) => {
                        let u = ulps_of_scale(*dt, e.data, bytes);
                        eprintln!("{name} T={t}: {tensor} within {u:.2} ulp of max |x|");
                        if u > 4.0 {
                            problems.push(format!(
                                "{name} T={t}: {tensor} off by {u:.2} ulp of its largest magnitude"
                            ));
                        }
                    }
                    _ => problems.push(format!("{name} T={t}: {tensor} differs")),
                }
            }
        }
    }
    problems
}

macro_rules! method_tests {
    ($($test:ident => $method:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let p = check_method($method);
            assert!(p.is_empty(), "{} problems:\n{}", p.len(), p.join("\n"));
        }
    )*};
}

method_tests! {
    ties => "ties",
    dare_ties => "dare_ties",
    della => "della",
    breadcrumbs => "breadcrumbs",
    dare_linear => "dare_linear",
    model_stock => "model_stock",
    sce => "sce",
    arcee_fusion => "arcee_fusion",
    multislerp => "multislerp",
    nuslerp => "nuslerp",
    karcher => "karcher",
}

#[test]
fn every_method_in_cases_json_has_a_test() {
    let tested = [
        "ties",
        "dare_ties",
        "della",
        "breadcrumbs",
        "dare_linear",
        "model_stock",
        "sce",
        "arcee_fusion",
        "multislerp",
        "nuslerp",
        "karcher",
    ];
    for c in cases() {
        let m = c["method"].as_str().unwrap_or("?");
        assert!(tested.contains(&m), "{m} has no test");
    }
}

/// `verify --torch-threads auto` names the thread count of a model made by mergekit with that
/// many threads. The folders are written by amalgam, but each is first checked to hold exactly
/// mergekit's tensors for that thread count (the sha256 of cases.json), so what verify sees are
/// mergekit's bytes.
#[test]
fn verify_auto_finds_the_thread_count() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = cases();
    let case = all
        .iter()
        .find(|c| c["name"] == "ties_float32")
        .expect("ties_float32 case");
    // 70,400 elements split into at most 3 chunks: 4 threads behave as 3 (reported as "or more").
    for (t, want) in [(1usize, "1"), (2, "2"), (4, "3 (or more")] {
        let run = case["runs"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["torch_threads"] == t))
            .expect("run");
        let out = tmp.path().join(format!("t{t}"));
        merge(case, t, &out);
        for (tensor, (_, bytes)) in tensors(&out) {
            assert_eq!(
                run["sha256"][&tensor].as_str(),
                Some(sha(&bytes).as_str()),
                "T={t}: {tensor} is not mergekit's"
            );
        }
        let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
            .current_dir(dir())
            .arg("verify")
            .arg(case["config"].as_str().expect("config"))
            .arg(&out)
            .args(["--torch-threads", "auto"])
            .output()
            .expect("amalgam verify runs");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "T={t}: {stdout}");
        assert!(
            stdout.contains(&format!("reproduced with --torch-threads {want}")),
            "T={t}: {stdout}"
        );
        // And a fixed wrong count is a mismatch (T=1 and T=2 differ on this model).
        if t == 2 {
            let o = Command::new(env!("CARGO_BIN_EXE_amalgam"))
                .current_dir(dir())
                .arg("verify")
                .arg(case["config"].as_str().expect("config"))
                .arg(&out)
                .output()
                .expect("amalgam verify runs");
            assert!(!o.status.success(), "T=2 model verified with 1 thread");
        }
    }
}
