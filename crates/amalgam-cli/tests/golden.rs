//! Golden conformance suite: `amalgam merge` against mergekit 0.1.5, bit for bit.
//!
//! Ground truth lives in `tests/golden/` (built by `tests/golden/make_golden.py` with the mergekit
//! venv; see that script's header). `tests/golden/cases.json` lists every case: its config, the
//! flags given to both CLIs, the folder mergekit wrote (or, for a rejected config, mergekit's last
//! error line and what amalgam's stderr must mention), and its tolerance class.
//!
//! Each case runs the real binary with the case's flags, with `tests/golden` as the working
//! directory (the configs use relative model paths, resolved against the cwd as mergekit does),
//! into `<tempdir>/<case>` (so the README title, which is the output folder's basename, matches
//! mergekit's). Then, against mergekit's folder:
//!
//! * the same set of files (minus the few a case marks optional, with the reason in cases.json);
//! * the same tensor names, dtypes and shapes; tensor bytes bit-identical, or, for the cases that
//!   spec section 11 names (full-tensor f32 reductions whose order follows PyTorch's vectorised
//!   kernels), at most 1 ulp per element, with the number of differing elements reported; for
//!   f32 slerp (`ulp1_scale`: PyTorch's acos/sin come from Intel MKL, whose last bit cannot be
//!   reproduced), every element within 1 ulp of the tensor's largest magnitude;
//! * shard file names and `model.safetensors.index.json` byte-identical; every shard file
//!   byte-identical when the tensors are (always for "exact" cases);
//! * `config.json`: the keys mergekit sets or that the harness can rely on (`dtype`,
//!   `num_hidden_layers`, `vocab_size`, `architectures`, `tie_word_embeddings`) agree;
//! * `mergekit_config.yml` and copied tokenizer/generation files byte-identical; `README.md`
//!   identical once the model bullets are sorted (mergekit lists them in Python set order).
//!
//! Rejected configs: non-zero exit, stderr names the culprit, and no output folder that looks
//! like a finished model.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amalgam_io::{DType, SafetensorsFile};
use serde_json::Value;

// ------------------------------------------------------------------------------------------
// Case descriptions
// ------------------------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tolerance {
    /// Every element bit-identical, every shard file byte-identical.
    Exact,
    /// At most one ulp per element (spec section 11: full-tensor f32 reductions).
    Ulp1,
    /// Every element within one ulp of the tensor's largest magnitude (absolute). For f32 slerp:
    /// PyTorch's acos/sin come from Intel MKL, whose last bit no implementation can reproduce
    /// (and which changes with MKL's code path); a one-ulp change in a coefficient moves every
    /// element by about one ulp of the inputs, which is many ulps of an element that cancels.
    Ulp1Scale,
}

#[derive(Debug)]
struct Case {
    name: String,
    config: String,
    flags: Vec<String>,
    /// Extra flags for amalgam only (e.g. `--strict` where amalgam's default deliberately
    /// differs from mergekit).
    amalgam_flags: Vec<String>,
    /// mergekit's output folder (relative to `tests/golden`); `None` when mergekit rejected it.
    expected: Option<String>,
    mergekit_error: String,
    /// Each inner list: alternatives, one of which amalgam's stderr must contain.
    culprit: Vec<Vec<String>>,
    tolerance: Tolerance,
    tolerance_reason: String,
    optional_files: BTreeSet<String>,
}

fn cases_json() -> Value {
    let path = golden_dir().join("cases.json");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_case(v: &Value) -> Case {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let tolerance = match v.get("tolerance").and_then(Value::as_str) {
        Some("ulp1") => Tolerance::Ulp1,
        Some("ulp1_scale") => Tolerance::Ulp1Scale,
        _ => Tolerance::Exact,
    };
    let culprit = v
        .get("culprit")
        .and_then(Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .map(|g| match g.as_str() {
                    Some(one) => vec![one.to_owned()],
                    None => strings(Some(g)),
                })
                .collect()
        })
        .unwrap_or_default();
    Case {
        name: s("name"),
        config: s("config"),
        flags: strings(v.get("flags")),
        amalgam_flags: strings(v.get("amalgam_flags")),
        expected: v.get("expected").and_then(Value::as_str).map(str::to_owned),
        mergekit_error: s("mergekit_error"),
        culprit,
        tolerance,
        tolerance_reason: s("tolerance_reason"),
        optional_files: strings(v.get("optional_files")).into_iter().collect(),
    }
}

fn load_case(name: &str) -> Case {
    let doc = cases_json();
    let cases = doc
        .get("cases")
        .and_then(Value::as_array)
        .expect("cases.json has a `cases` array");
    let v = cases
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("case `{name}` is not in tests/golden/cases.json"));
    parse_case(v)
}

// ------------------------------------------------------------------------------------------
// Running amalgam
// ------------------------------------------------------------------------------------------

fn run_amalgam(case: &Case, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(golden_dir())
        .arg("merge")
        .arg(&case.config)
        .arg(out)
        .args(&case.flags)
        .args(&case.amalgam_flags)
        .args(extra)
        .output()
        .expect("the amalgam binary can be started")
}

fn describe(out: &Output) -> String {
    format!(
        "exit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs one case end to end and panics with every discrepancy found.
fn run_case(name: &str) {
    run_case_with(name, &[]);
}

/// [`run_case`] with extra amalgam flags (which must not change the output).
fn run_case_with(name: &str, extra: &[&str]) {
    let case = load_case(name);
    let tmp = tempfile::tempdir().expect("temp dir");
    let out_dir = tmp.path().join(&case.name);
    let out = run_amalgam(&case, &out_dir, extra);
    match &case.expected {
        None => check_rejected(&case, &out, &out_dir),
        Some(expected) => {
            assert!(
                out.status.success(),
                "case `{}`: amalgam failed but mergekit succeeded\n{}",
                case.name,
                describe(&out)
            );
            let problems = compare_outputs(&case, &golden_dir().join(expected), &out_dir);
            assert!(
                problems.is_empty(),
                "case `{}` ({}) differs from mergekit:\n  - {}",
                case.name,
                case.config,
                problems.join("\n  - ")
            );
        }
    }
}

/// A folder "looks like a finished model" if it holds a config or a complete weight index.
fn looks_finished(dir: &Path) -> bool {
    [
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
    ]
    .iter()
    .any(|f| dir.join(f).exists())
}

fn check_rejected(case: &Case, out: &Output, out_dir: &Path) {
    assert!(
        !out.status.success(),
        "case `{}`: mergekit rejects this config ({}) but amalgam exited 0\n{}",
        case.name,
        case.mergekit_error,
        describe(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    for group in &case.culprit {
        assert!(
            group.iter().any(|alt| stderr.contains(&alt.to_lowercase())),
            "case `{}`: stderr should mention one of {:?} (mergekit said: {})\n{}",
            case.name,
            group,
            case.mergekit_error,
            describe(out)
        );
    }
    assert!(
        !looks_finished(out_dir),
        "case `{}`: amalgam failed but left a finished-looking model at {}: {:?}",
        case.name,
        out_dir.display(),
        list_files(out_dir)
    );
}

// ------------------------------------------------------------------------------------------
// Comparison
// ------------------------------------------------------------------------------------------

fn list_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn is_shard(name: &str) -> bool {
    name.ends_with(".safetensors")
}

/// One tensor read from an output folder.
struct Tensor {
    file: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Every tensor of every `*.safetensors` file in `dir`, by name. Errors become problems.
fn read_tensors(dir: &Path, problems: &mut Vec<String>) -> BTreeMap<String, Tensor> {
    let mut all = BTreeMap::new();
    for file in list_files(dir).into_iter().filter(|f| is_shard(f)) {
        let path = dir.join(&file);
        let st = match SafetensorsFile::open(&path) {
            Ok(st) => st,
            Err(e) => {
                problems.push(format!("{}: cannot be read: {e}", path.display()));
                continue;
            }
        };
        for info in st.tensors() {
            let Some(t) = st.get(&info.name) else {
                continue;
            };
            let prev = all.insert(
                info.name.clone(),
                Tensor {
                    file: file.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    data: t.data.to_vec(),
                },
            );
            if let Some(prev) = prev {
                problems.push(format!(
                    "tensor `{}` is stored twice ({} and {file})",
                    info.name, prev.file
                ));
            }
        }
    }
    all
}

/// Whether every element of `a` is within one ulp of `e`'s largest finite magnitude of `e`
/// (both `dtype` tensors' bytes). NaNs or infinities that differ are never within.
fn within_ulp_of_scale(dtype: DType, e: &[u8], a: &[u8]) -> bool {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) || e.len() != a.len() {
        return false;
    }
    let n = e.len() / dtype.size();
    let (mut ev, mut av) = (vec![0f32; n], vec![0f32; n]);
    if amalgam_io::convert::decode_f32(dtype, e, &mut ev).is_err()
        || amalgam_io::convert::decode_f32(dtype, a, &mut av).is_err()
    {
        return false;
    }
    let Some(max) = ev.iter().map(|v| v.abs()).reduce(f32::max) else {
        return true;
    };
    if !max.is_finite() {
        return false;
    }
    // The next representable magnitude above `max` in `dtype`, via its bit pattern.
    let size = dtype.size();
    let Some(imax) = ev.iter().position(|v| v.abs() == max) else {
        return false;
    };
    let mut bits = [0u8; 8];
    bits[..size].copy_from_slice(&e[imax * size..(imax + 1) * size]);
    let sign = 1u64 << (size * 8 - 1);
    let up = (u64::from_le_bytes(bits) & (sign - 1)) + 1;
    let mut next = [0f32; 1];
    if amalgam_io::convert::decode_f32(dtype, &up.to_le_bytes()[..size], &mut next).is_err() {
        return false;
    }
    let ulp = f64::from(next[0]) - f64::from(max);
    ev.iter()
        .zip(&av)
        .all(|(&x, &y)| x.to_bits() == y.to_bits() || (f64::from(x) - f64::from(y)).abs() <= ulp)
}

/// Maps a float's bit pattern to an integer that is monotonic in the float's value, so that the
/// distance between two keys counts the representable values between them (ulps).
fn ordered_key(bits: u64, width_bits: u32) -> i128 {
    let sign = 1u64 << (width_bits - 1);
    let magnitude = i128::from(bits & (sign - 1));
    if bits & sign != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Per-element comparison of two equally-shaped tensors' bytes: the number of elements that
/// differ and the largest distance in ulps (`u128::MAX` for non-float dtypes that differ).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Diff {
    differing: usize,
    max_ulps: u128,
    first: Option<usize>,
}

fn diff_elements(dtype: DType, a: &[u8], b: &[u8]) -> Diff {
    let size = dtype.size();
    let width_bits = match dtype {
        DType::F16 | DType::BF16 => Some(16),
        DType::F32 => Some(32),
        DType::F64 => Some(64),
        _ => None,
    };
    let mut d = Diff::default();
    for (i, (x, y)) in a.chunks_exact(size).zip(b.chunks_exact(size)).enumerate() {
        if x == y {
            continue;
        }
        d.differing += 1;
        d.first.get_or_insert(i);
        let ulps = match width_bits {
            Some(w) => {
                let mut xb = [0u8; 8];
                let mut yb = [0u8; 8];
                xb[..size].copy_from_slice(x);
                yb[..size].copy_from_slice(y);
                let kx = ordered_key(u64::from_le_bytes(xb), w);
                let ky = ordered_key(u64::from_le_bytes(yb), w);
                kx.abs_diff(ky)
            }
            None => u128::MAX,
        };
        d.max_ulps = d.max_ulps.max(ulps);
    }
    d
}

fn element_string(dtype: DType, bytes: &[u8]) -> String {
    match (dtype, bytes.len()) {
        (DType::BF16, 2) => {
            let bits = u16::from_le_bytes([bytes[0], bytes[1]]);
            format!("{} (0x{bits:04x})", f32::from_bits(u32::from(bits) << 16))
        }
        (DType::F16, 2) => {
            let bits = u16::from_le_bytes([bytes[0], bytes[1]]);
            format!("0x{bits:04x}")
        }
        (DType::F32, 4) => {
            let bits = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            format!("{} (0x{bits:08x})", f32::from_bits(bits))
        }
        _ => format!("{bytes:02x?}"),
    }
}

fn compare_tensors(
    case: &Case,
    expected: &BTreeMap<String, Tensor>,
    actual: &BTreeMap<String, Tensor>,
    problems: &mut Vec<String>,
) -> bool {
    let en: BTreeSet<_> = expected.keys().collect();
    let an: BTreeSet<_> = actual.keys().collect();
    for missing in en.difference(&an) {
        problems.push(format!("tensor `{missing}` missing"));
    }
    for extra in an.difference(&en) {
        problems.push(format!("unexpected tensor `{extra}`"));
    }
    let mut all_identical = true;
    let mut report = String::new();
    for (name, e) in expected {
        let Some(a) = actual.get(name) else {
            continue;
        };
        if e.file != a.file {
            problems.push(format!(
                "tensor `{name}` is in {} (mergekit: {})",
                a.file, e.file
            ));
        }
        if e.dtype != a.dtype || e.shape != a.shape {
            problems.push(format!(
                "tensor `{name}`: {:?} {:?}, mergekit wrote {:?} {:?}",
                a.dtype, a.shape, e.dtype, e.shape
            ));
            all_identical = false;
            continue;
        }
        if e.data.len() != a.data.len() {
            problems.push(format!("tensor `{name}`: byte length differs"));
            all_identical = false;
            continue;
        }
        let d = diff_elements(e.dtype, &e.data, &a.data);
        if d.differing == 0 {
            continue;
        }
        all_identical = false;
        let numel = e.data.len() / e.dtype.size();
        let detail = d.first.map_or_else(String::new, |i| {
            let size = e.dtype.size();
            let r = i * size..(i + 1) * size;
            format!(
                "; first at element {i}: amalgam {} vs mergekit {}",
                element_string(e.dtype, a.data.get(r.clone()).unwrap_or(&[])),
                element_string(e.dtype, e.data.get(r).unwrap_or(&[]))
            )
        });
        let line = format!(
            "tensor `{name}` ({:?}): {} of {numel} elements differ, max {} ulp{detail}",
            e.dtype,
            d.differing,
            if d.max_ulps == u128::MAX {
                "non-float".to_owned()
            } else {
                d.max_ulps.to_string()
            }
        );
        let allowed = match case.tolerance {
            Tolerance::Exact => false,
            Tolerance::Ulp1 => d.max_ulps <= 1,
            Tolerance::Ulp1Scale => within_ulp_of_scale(e.dtype, &e.data, &a.data),
        };
        if allowed {
            let _ = writeln!(report, "  {line}");
        } else {
            problems.push(line);
        }
    }
    if !report.is_empty() {
        eprintln!(
            "case `{}`: differences within the case's tolerance ({}):\n{report}",
            case.name, case.tolerance_reason
        );
    }
    all_identical
}

/// The safetensors header of a file: the 8-byte length and the JSON that follows.
fn header_bytes(bytes: &[u8]) -> Option<&[u8]> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    bytes.get(..8usize.checked_add(usize::try_from(len).ok()?)?)
}

/// README.md with the model bullets sorted: mergekit lists them in Python set order.
fn normalise_readme(text: &str) -> String {
    let mut lines: Vec<&str> = text.split('\n').collect();
    let bullets: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("* "))
        .map(|(i, _)| i)
        .collect();
    let mut sorted: Vec<&str> = bullets.iter().map(|&i| lines[i]).collect();
    sorted.sort_unstable();
    for (slot, line) in bullets.iter().zip(sorted) {
        lines[*slot] = line;
    }
    lines.join("\n")
}

fn read_json(path: &Path, problems: &mut Vec<String>) -> Option<Value> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            return None;
        }
    };
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("{}: not JSON: {e}", path.display()));
            None
        }
    }
}

/// The config.json keys mergekit sets (dtype, layer count for slices) or copies from the donor
/// that any correct merge must agree on. Other keys follow the installed Transformers'
/// serialisation and are not compared.
const CONFIG_KEYS: [&str; 6] = [
    "dtype",
    "num_hidden_layers",
    "vocab_size",
    "architectures",
    "model_type",
    "tie_word_embeddings",
];

fn compare_config(expected: &Path, actual: &Path, problems: &mut Vec<String>) {
    let (Some(e), Some(a)) = (read_json(expected, problems), read_json(actual, problems)) else {
        return;
    };
    for key in CONFIG_KEYS {
        let ev = e.get(key);
        let av = a.get(key);
        if ev != av {
            let hint = if key == "dtype" && a.get("torch_dtype").is_some() {
                " (mergekit 0.1.5 with Transformers 5 writes `dtype`, not `torch_dtype`)"
            } else {
                ""
            };
            problems.push(format!(
                "config.json `{key}`: amalgam {}, mergekit {}{hint}",
                av.map_or("absent".into(), Value::to_string),
                ev.map_or("absent".into(), Value::to_string)
            ));
        }
    }
}

fn compare_outputs(case: &Case, expected_dir: &Path, actual_dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let ef = list_files(expected_dir);
    let af = list_files(actual_dir);
    assert!(
        !ef.is_empty(),
        "fixture folder {} is empty",
        expected_dir.display()
    );
    for f in ef.difference(&af) {
        if !case.optional_files.contains(f) {
            problems.push(format!("file `{f}` missing (mergekit wrote it)"));
        }
    }
    for f in af.difference(&ef) {
        if !case.optional_files.contains(f) {
            problems.push(format!("unexpected file `{f}` (mergekit did not write it)"));
        }
    }

    let et = read_tensors(expected_dir, &mut problems);
    let at = read_tensors(actual_dir, &mut problems);
    let identical = compare_tensors(case, &et, &at, &mut problems);
    let whole_files = case.tolerance == Tolerance::Exact || identical;

    for f in ef.intersection(&af) {
        if case.optional_files.contains(f) {
            continue;
        }
        let (Ok(eb), Ok(ab)) = (fs::read(expected_dir.join(f)), fs::read(actual_dir.join(f)))
        else {
            problems.push(format!("file `{f}` cannot be read"));
            continue;
        };
        if f == "config.json" {
            compare_config(&expected_dir.join(f), &actual_dir.join(f), &mut problems);
        } else if f == "README.md" {
            let e = normalise_readme(&String::from_utf8_lossy(&eb));
            let a = normalise_readme(&String::from_utf8_lossy(&ab));
            if e != a {
                problems.push(first_line_difference("README.md", &e, &a));
            }
        } else if is_shard(f) {
            if whole_files {
                if eb != ab {
                    problems.push(format!("shard `{f}` is not byte-identical"));
                }
            } else if header_bytes(&eb) != header_bytes(&ab) {
                problems.push(format!("shard `{f}`: safetensors header differs"));
            }
        } else if eb != ab {
            let detail = match (std::str::from_utf8(&eb), std::str::from_utf8(&ab)) {
                (Ok(e), Ok(a)) => first_line_difference(f, e, a),
                _ => format!("file `{f}` differs"),
            };
            problems.push(detail);
        }
    }
    problems
}

fn first_line_difference(file: &str, expected: &str, actual: &str) -> String {
    let mut e = expected.split('\n');
    let mut a = actual.split('\n');
    let mut line = 1;
    loop {
        match (e.next(), a.next()) {
            (Some(x), Some(y)) if x == y => line += 1,
            (x, y) => {
                return format!(
                    "file `{file}` differs at line {line}: amalgam {:?}, mergekit {:?}",
                    y.unwrap_or("<end>"),
                    x.unwrap_or("<end>")
                )
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// One test per case
// ------------------------------------------------------------------------------------------

macro_rules! golden_cases {
    ($($name:ident),* $(,)?) => {
        /// Every case with a test below, to check that cases.json and this file agree.
        const ALL_CASES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name));
            }
        )*
    };
}

golden_cases!(
    linear_weights,
    linear_normalize_base,
    linear_gradient_filter,
    linear_f32,
    slerp,
    slerp_f32,
    passthrough_frankenmerge,
    passthrough_scale,
    task_arithmetic,
    ties,
    ties_f32,
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    model_stock,
    model_stock_filter_wise,
    nuslerp_flatten,
    nuslerp_flatten_base,
    nuslerp_rows,
    nuslerp_rowwise_base,
    multislerp,
    multislerp_base,
    karcher,
    sce,
    nearswap,
    arcee_fusion,
    ram,
    ramplus_tl,
    dtype_fp16_to_bf16,
    out_dtype_f32,
    fp16_linear_out_bf16,
    mixed_bf16_fp16,
    slices_params,
    tied_linear,
    tied_base_ties,
    tied_only,
    qwen2_slerp,
    qwen2_ties,
    reject_linear_no_weight,
    reject_slerp_three_models,
    reject_unknown_method,
    reject_shape_mismatch,
    reject_della_epsilon,
);

// ------------------------------------------------------------------------------------------
// Determinism across thread counts and runs
// ------------------------------------------------------------------------------------------

/// All files of a folder, by name.
/// The cases whose method can merge in chunks (`MergeMethod::streams`), again with every tensor
/// streamed (`--stream-above-mib 0`): the chunked passes must give mergekit's bytes too.
#[test]
fn streamed_cases_equal_mergekit() {
    for name in ["slerp", "slerp_f32", "qwen2_slerp"] {
        run_case_with(name, &["--stream-above-mib", "0"]);
    }
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    list_files(dir)
        .into_iter()
        .map(|f| {
            let bytes = fs::read(dir.join(&f)).unwrap_or_default();
            (f, bytes)
        })
        .collect()
}

#[test]
fn thread_count_and_reruns_do_not_change_bytes() {
    for name in ["linear_weights", "ties"] {
        let case = load_case(name);
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut runs: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
        for (i, threads) in ["1", "2", "1", "2"].iter().enumerate() {
            let out_dir = tmp.path().join(format!("{i}")).join(name);
            let out = run_amalgam(&case, &out_dir, &["-j", threads]);
            assert!(
                out.status.success(),
                "case `{name}` with -j {threads} failed\n{}",
                describe(&out)
            );
            runs.push((format!("run {i} (-j {threads})"), snapshot(&out_dir)));
        }
        let (first_label, first) = &runs[0];
        assert!(!first.is_empty(), "case `{name}`: no output files");
        for (label, files) in &runs[1..] {
            let names: Vec<_> = files.keys().collect();
            let first_names: Vec<_> = first.keys().collect();
            assert_eq!(
                names, first_names,
                "case `{name}`: {label} wrote different files than {first_label}"
            );
            for (f, bytes) in files {
                assert!(
                    first.get(f) == Some(bytes),
                    "case `{name}`: `{f}` differs between {first_label} and {label}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The harness itself (these pass without an engine)
// ------------------------------------------------------------------------------------------

#[test]
fn every_case_in_cases_json_has_a_test() {
    let doc = cases_json();
    let names: BTreeSet<String> = doc
        .get("cases")
        .and_then(Value::as_array)
        .expect("cases array")
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let tested: BTreeSet<String> = ALL_CASES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        names, tested,
        "cases.json and golden.rs list different cases"
    );
}

/// The fixtures are what the harness expects: every successful case has its folder, its
/// index lists exactly the stored tensors, and the folder compares equal to itself (so the
/// comparison code reads real mergekit output without complaint).
#[test]
fn fixtures_are_consistent_and_self_compare_clean() {
    let doc = cases_json();
    for v in doc.get("cases").and_then(Value::as_array).expect("cases") {
        let case = parse_case(v);
        assert!(
            golden_dir().join(&case.config).is_file(),
            "case `{}`: config {} missing",
            case.name,
            case.config
        );
        let Some(expected) = &case.expected else {
            assert!(
                !case.culprit.is_empty() && !case.mergekit_error.is_empty(),
                "rejected case `{}` must record mergekit's error and a culprit",
                case.name
            );
            continue;
        };
        let dir = golden_dir().join(expected);
        let problems = compare_outputs(&case, &dir, &dir);
        assert!(problems.is_empty(), "{}: {problems:?}", case.name);
        let mut problems = Vec::new();
        let tensors = read_tensors(&dir, &mut problems);
        assert!(problems.is_empty(), "{}: {problems:?}", case.name);
        assert!(!tensors.is_empty(), "{}: no tensors", case.name);
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let idx = read_json(&index, &mut problems).expect("index JSON");
            let map = idx
                .get("weight_map")
                .and_then(Value::as_object)
                .expect("weight_map");
            let listed: BTreeSet<&str> = map.keys().map(String::as_str).collect();
            let stored: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
            assert_eq!(listed, stored, "{}: index and shards disagree", case.name);
            for (name, file) in map {
                assert_eq!(
                    Some(tensors[name].file.as_str()),
                    file.as_str(),
                    "{}: {name} routed to the wrong shard",
                    case.name
                );
            }
        }
    }
}

/// The comparison catches a one-bit change and a two-ulp change, and tolerates one ulp only in
/// `Ulp1` cases.
#[test]
fn comparison_detects_flipped_bits() {
    let one = 1.0f32.to_le_bytes();
    let next = f32::from_bits(1.0f32.to_bits() + 1).to_le_bytes();
    let two = f32::from_bits(1.0f32.to_bits() + 2).to_le_bytes();
    let d = diff_elements(DType::F32, &one, &next);
    assert_eq!((d.differing, d.max_ulps), (1, 1));
    let d = diff_elements(DType::F32, &one, &two);
    assert_eq!((d.differing, d.max_ulps), (1, 2));
    // Across zero: +0 and -0 are 0 ulps apart in value order but different bits.
    let d = diff_elements(DType::BF16, &[0x00, 0x00], &[0x00, 0x80]);
    assert_eq!((d.differing, d.max_ulps), (1, 0));
    // Smallest positive and smallest negative bf16 subnormals are 2 ulps apart.
    let d = diff_elements(DType::BF16, &[0x01, 0x00], &[0x01, 0x80]);
    assert_eq!(d.max_ulps, 2);
    let d = diff_elements(DType::I64, &[0; 8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(d.max_ulps, u128::MAX);

    // A real fixture with one element nudged by one ulp: exact cases fail, ulp1 cases pass.
    let case_exact = load_case("ties");
    let dir = golden_dir().join(case_exact.expected.as_deref().expect("ties succeeded"));
    let mut problems = Vec::new();
    let expected = read_tensors(&dir, &mut problems);
    let mut actual = read_tensors(&dir, &mut problems);
    let t = actual
        .get_mut("model.layers.0.mlp.up_proj.weight")
        .expect("tensor present");
    t.data[0] ^= 1;
    let mut p = Vec::new();
    assert!(!compare_tensors(&case_exact, &expected, &actual, &mut p));
    assert_eq!(p.len(), 1, "{p:?}");
    let mut loose = load_case("ties");
    loose.tolerance = Tolerance::Ulp1;
    let mut p = Vec::new();
    let _ = compare_tensors(&loose, &expected, &actual, &mut p);
    // Flipping the lowest mantissa bit is exactly one ulp unless it crosses zero.
    assert!(p.is_empty(), "{p:?}");

    // Scale tolerance: an f32 element moved by the ulp of the tensor's largest magnitude passes
    // (even when that is many ulps of the element itself); twice that fails.
    let big = 4.0f32;
    let ulp = f32::from_bits(big.to_bits() + 1) - big;
    let tensor = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let e = tensor(&[big, 1e-3, -2.0]);
    assert!(within_ulp_of_scale(
        DType::F32,
        &e,
        &tensor(&[big, 1e-3 + ulp, -2.0])
    ));
    assert!(within_ulp_of_scale(
        DType::F32,
        &e,
        &tensor(&[big, 1e-3, -2.0 - ulp])
    ));
    assert!(!within_ulp_of_scale(
        DType::F32,
        &e,
        &tensor(&[big, 1e-3 + 2.0 * ulp, -2.0])
    ));
    assert!(!within_ulp_of_scale(
        DType::F32,
        &e,
        &tensor(&[big, f32::NAN, -2.0])
    ));
    let d = diff_elements(DType::F32, &e, &tensor(&[big, 1e-3 + ulp, -2.0]));
    assert!(d.max_ulps > 1000);
}

#[test]
fn readme_normalisation_only_sorts_bullets() {
    let a = "x\n* b\n* a\ny\n";
    let b = "x\n* a\n* b\ny\n";
    assert_eq!(normalise_readme(a), normalise_readme(b));
    assert_ne!(normalise_readme("x\n* a\n"), normalise_readme("y\n* a\n"));
}

/// Without `--strict`, amalgam merges a weightless linear config with 1/N weights and says so
/// (the documented extension) and writes a finished model.
#[test]
fn linear_without_weights_defaults_to_uniform_with_warning() {
    let case = load_case("reject_linear_no_weight");
    let tmp = tempfile::tempdir().expect("temp dir");
    let out_dir = tmp.path().join("uniform");
    let out = Command::new(env!("CARGO_BIN_EXE_amalgam"))
        .current_dir(golden_dir())
        .arg("merge")
        .arg(&case.config)
        .arg(&out_dir)
        .args(&case.flags)
        .output()
        .expect("the amalgam binary can be started");
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1/2"),
        "the fallback is announced: {stderr}"
    );
    assert!(looks_finished(&out_dir));
}
