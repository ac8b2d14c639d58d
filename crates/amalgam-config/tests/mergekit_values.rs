//! Values computed by PyYAML, pydantic and mergekit 0.1.5 themselves
//! (`tests/fixtures/make_fixtures.py`), compared bit for bit with amalgam's.

mod common;

use std::path::PathBuf;

use amalgam_config::{
    coerce, parse_str, resolve, resolve_as, ConfigError, ParamScopes, ParamValue, Scalar,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn bits(hex: &str) -> f64 {
    f64::from_bits(u64::from_str_radix(hex, 16).unwrap())
}

/// The typed token the fixtures use for a value.
fn token(v: &Scalar) -> String {
    match v {
        Scalar::Float(x) => format!("f:{:016x}", x.to_bits()),
        Scalar::Int(i) => format!("i:{i}"),
        Scalar::Bool(b) => format!("b:{}", u8::from(*b)),
        Scalar::Str(s) => format!("s:{s}"),
    }
}

/// Compares tokens, treating every NaN alike (Python and Rust spell NaN with different bits).
fn same(expected: &str, got: &str) -> bool {
    if expected == "e" || expected.starts_with("e:") {
        return got == "e";
    }
    let nan = |t: &str| t.strip_prefix("f:").is_some_and(|h| bits(h).is_nan());
    expected == got || (nan(expected) && nan(got))
}

fn scalar_from(v: &Value) -> Scalar {
    let s = v["value"].as_str();
    match v["type"].as_str().unwrap() {
        "bool" => Scalar::Bool(v["value"].as_bool().unwrap()),
        "int" => Scalar::Int(s.unwrap().parse().unwrap()),
        "float" => Scalar::Float(bits(s.unwrap())),
        "str" => Scalar::Str(s.unwrap().to_string()),
        other => panic!("{other}"),
    }
}

#[test]
fn plain_scalars_resolve_like_pyyaml() {
    let cases = fixture("yaml_scalars.json");
    let mut bad = Vec::new();
    for c in cases.as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let config =
            format!("merge_method: linear\nmodels:\n  - model: m\nparameters:\n  k: {text}\n");
        let parsed = parse_str(&config);
        let expected = c["type"].as_str().unwrap();
        let ok = match (expected, &parsed) {
            // A null or a date is not a valid parameter value (pydantic rejects both).
            ("null" | "other" | "error", Err(ConfigError::Invalid { .. })) => true,
            (_, Ok(loaded)) => {
                let got = match loaded.config.parameters.get("k") {
                    Some(ParamValue::Scalar(s)) => token(s),
                    other => format!("{other:?}"),
                };
                let want = match expected {
                    "bool" => format!("b:{}", u8::from(c["value"].as_bool().unwrap())),
                    "int" => format!("i:{}", c["value"].as_str().unwrap()),
                    "float" | "bigint" => format!("f:{}", c["value"].as_str().unwrap()),
                    "str" => format!("s:{}", c["value"].as_str().unwrap()),
                    _ => "<error>".into(),
                };
                same(&want, &got)
            }
            _ => false,
        };
        if !ok {
            bad.push(format!(
                "{text:?}: PyYAML {expected} {:?}, amalgam {parsed:?}",
                c.get("value")
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn coercion_matches_pydantic() {
    let cases = fixture("coerce.json");
    let mut bad = Vec::new();
    for c in cases.as_array().unwrap() {
        let kind = common::kind(c["kind"].as_str().unwrap());
        let input = scalar_from(&c["input"]);
        let got = match coerce(&input, kind) {
            Ok(v) => token(&v),
            Err(_) => "e".into(),
        };
        let want = c["expect"].as_str().unwrap();
        if !same(want, &got) {
            bad.push(format!(
                "{kind:?} {input:?}: pydantic {want}, amalgam {got}"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Runs every resolution query of one case and returns the mismatches.
fn check_case(
    name: &str,
    text: &str,
    case: &Value,
    tensors: &[(String, String)],
    ts: &[f64],
) -> Vec<String> {
    let loaded = parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = &loaded.config;
    let modules = config.normalized_modules(|_| 1);
    let mut bad = Vec::new();
    for r in case["results"].as_array().unwrap() {
        let (mi, si) = (
            r["module"].as_u64().unwrap() as usize,
            r["slice"].as_u64().unwrap() as usize,
        );
        let (_, slices, module_params) = &modules[mi];
        let slice = &slices[si];
        let param = r["param"].as_str().unwrap();
        let kind = r["kind"].as_str().map(common::kind);
        let scopes = match r["model"].as_str() {
            None => ParamScopes::shared(config, Some(slice), Some(module_params)),
            Some(m) => {
                let model = slice
                    .sources
                    .iter()
                    .map(|s| &s.model)
                    .find(|x| x.to_string() == m)
                    .unwrap_or_else(|| panic!("{name}: no model {m}"));
                ParamScopes::for_model(config, slice, Some(module_params), model)
            }
        };
        let expected = r["values"].as_array().unwrap();
        let mut k = 0;
        for (tin, tout) in tensors {
            for &t in ts {
                let got = match kind {
                    None => {
                        resolve(&scopes, param, tin, tout, t).map_or("n".to_string(), |v| token(&v))
                    }
                    Some(kind) => match resolve_as(&scopes, param, kind, tin, tout, t) {
                        Ok(v) => v.map_or("n".to_string(), |v| token(&v)),
                        Err(_) => "e".to_string(),
                    },
                };
                let want = expected[k].as_str().unwrap();
                if !same(want, &got) {
                    bad.push(format!(
                        "{name}: module {mi} slice {si} {param} ({kind:?}) model {:?} tensor {tin} t={t}: mergekit {want}, amalgam {got}",
                        r["model"].as_str()
                    ));
                }
                k += 1;
            }
        }
        assert_eq!(k, expected.len());
    }
    bad
}

fn tensors_and_ts(all: &Value, key: &str) -> (Vec<(String, String)>, Vec<f64>) {
    let tensors = all["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ts = all[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| bits(h.as_str().unwrap()))
        .collect();
    (tensors, ts)
}

#[test]
fn gradients_filters_and_precedence_match_mergekit() {
    let all = fixture("resolve.json");
    let (tensors, ts) = tensors_and_ts(&all, "t_full");
    let mut bad = Vec::new();
    let mut n = 0;
    for case in all["synthetic"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        bad.extend(check_case(
            name,
            case["text"].as_str().unwrap(),
            case,
            &tensors,
            &ts,
        ));
        n += case["results"].as_array().unwrap().len();
    }
    assert!(n > 30);
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn real_configs_resolve_like_mergekit() {
    let all = fixture("resolve.json");
    let (tensors, ts) = tensors_and_ts(&all, "t_corpus");
    let dir = common::repo_tests().join("corpus/real");
    let mut bad = Vec::new();
    let cases = all["corpus"].as_array().unwrap();
    assert_eq!(cases.len(), 130);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        bad.extend(check_case(name, &text, case, &tensors, &ts));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}
