//! Shared helpers of the integration tests: the repository paths and mergekit 0.1.5's method
//! registry as recorded by `tests/corpus/make_verdicts.py`.
#![allow(dead_code)]

use std::path::PathBuf;

use amalgam_schema::{BaseRule, Contract, MethodInfo, ParamKind, ParamScope, ParamSpec};

/// The repository's `tests/` folder.
pub fn repo_tests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests")
}

/// A string for the `&'static str` fields of a schema (test data lives for the whole run).
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// mergekit 0.1.5's methods, from `tests/corpus/methods.json`, as schemas. `linear` also gets
/// amalgam's uniform `weight` fallback, which validation applies to it.
pub fn mergekit_methods() -> Vec<&'static MethodInfo> {
    let text = std::fs::read_to_string(repo_tests().join("corpus/methods.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let c = &m["contract"];
            let opt = |k: &str| c[k].as_u64().map(|x| x as usize);
            let name = leak(m["name"].as_str().unwrap());
            let contract = Contract {
                base: match c["base"].as_str().unwrap() {
                    "optional" => BaseRule::Optional,
                    "required" => BaseRule::Required,
                    "forbidden" => BaseRule::Forbidden,
                    "ignored" => BaseRule::Ignored,
                    other => panic!("base {other}"),
                },
                min_inputs: opt("min_inputs").unwrap(),
                max_inputs: opt("max_inputs"),
                min_non_base: opt("min_non_base"),
                max_non_base: opt("max_non_base"),
            };
            let mut info = MethodInfo::new(name, name, contract);
            info.params = m["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| ParamSpec {
                    name: leak(p["name"].as_str().unwrap()),
                    kind: kind(p["kind"].as_str().unwrap()),
                    scope: match p["scope"].as_str().unwrap() {
                        "shared" => ParamScope::Shared,
                        "input" => ParamScope::Input,
                        "non_base" => ParamScope::NonBase,
                        other => panic!("scope {other}"),
                    },
                    // Only "required or not" matters to validation.
                    default: if p["required"].as_bool().unwrap() {
                        None
                    } else {
                        Some(amalgam_schema::Value::Float(0.0))
                    },
                    doc: "",
                })
                .collect();
            info.uniform_fallback = (name == "linear").then_some("weight");
            &*Box::leak(Box::new(info))
        })
        .collect()
}

/// A parameter kind as spelled in the fixtures.
pub fn kind(s: &str) -> ParamKind {
    match s {
        "float" | "optional_float" => ParamKind::Float,
        "bool" => ParamKind::Bool,
        "int" => ParamKind::Int,
        other => panic!("kind {other}"),
    }
}
