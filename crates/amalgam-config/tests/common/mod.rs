//! Shared helpers of the integration tests: the repository paths and mergekit 0.1.5's method
//! registry as recorded by `tests/corpus/make_verdicts.py`.
#![allow(dead_code)]

use std::path::PathBuf;

use amalgam_config::{BasePolicy, InputContract, MethodSchema, ParamKind, ParamSchema, ParamScope};

/// The repository's `tests/` folder.
pub fn repo_tests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests")
}

/// mergekit 0.1.5's methods, from `tests/corpus/methods.json`.
pub fn mergekit_methods() -> Vec<MethodSchema> {
    let text = std::fs::read_to_string(repo_tests().join("corpus/methods.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let c = &m["contract"];
            let opt = |k: &str| c[k].as_u64().map(|x| x as usize);
            MethodSchema {
                name: m["name"].as_str().unwrap().to_string(),
                params: m["params"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| ParamSchema {
                        name: p["name"].as_str().unwrap().to_string(),
                        kind: kind(p["kind"].as_str().unwrap()),
                        scope: match p["scope"].as_str().unwrap() {
                            "shared" => ParamScope::Shared,
                            "input" => ParamScope::Input,
                            "non_base" => ParamScope::NonBase,
                            other => panic!("scope {other}"),
                        },
                        required: p["required"].as_bool().unwrap(),
                    })
                    .collect(),
                contract: Some(InputContract {
                    base: match c["base"].as_str().unwrap() {
                        "optional" => BasePolicy::Optional,
                        "required" => BasePolicy::Required,
                        "forbidden" => BasePolicy::Forbidden,
                        "ignored" => BasePolicy::Ignored,
                        other => panic!("base {other}"),
                    },
                    min_inputs: opt("min_inputs").unwrap(),
                    max_inputs: opt("max_inputs"),
                    min_non_base: opt("min_non_base"),
                    max_non_base: opt("max_non_base"),
                }),
            }
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
