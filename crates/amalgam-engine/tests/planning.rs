//! Planning refuses what it can before touching a model, and says what went wrong as a variant
//! of `EngineError` (tensor, model, slice...) that callers can match on.
//!
//! The models are the tiny golden Llamas of `tests/golden/models`; a config naming models that
//! do not exist proves a refusal came before any model file was opened.

use std::path::{Path, PathBuf};

use amalgam_config::ConfigError;
use amalgam_engine::{plan, EngineError, PlanOptions};
use amalgam_methods::{Compat, ContractViolation, Registry};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

fn plan_text(text: &str, compat: Compat) -> Result<amalgam_engine::Plan, EngineError> {
    let loaded = amalgam_config::parse_str(text).expect("the config parses");
    plan(
        &loaded,
        &Registry::builtin(),
        &PlanOptions {
            compat,
            base_dir: golden(),
            ..Default::default()
        },
    )
}

/// `--mergekit-version 0.0.4.2` with a method that release lacks fails from the schema, before
/// any model is read: the models here do not exist, so reaching them would be an I/O error.
#[test]
fn version_refused_before_any_model_is_read() {
    for method in ["nuslerp", "della", "karcher", "slerp", "model_stock"] {
        let text = format!(
            "merge_method: {method}\nbase_model: ./missing/base\nmodels:\n  - model: ./missing/a\n    \
             parameters: {{weight: 0.5}}\n  - model: ./missing/b\n    parameters: {{weight: 0.5}}\n\
             parameters: {{t: 0.5}}\n"
        );
        match plan_text(&text, Compat::V0_0_4_2) {
            Err(EngineError::Config(ConfigError::Invalid { diagnostics, .. })) => {
                let all: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
                assert!(
                    all.iter().any(|d| d.contains("0.0.4.2")),
                    "{method}: {all:?}"
                );
            }
            other => panic!("{method}: expected a config error, got {other:?}"),
        }
        // Under 0.1.5 the same config gets as far as the models, which are missing.
        match plan_text(&text, Compat::V0_1_5) {
            Err(EngineError::Io(_)) => {}
            Err(EngineError::Config(ConfigError::Invalid { diagnostics, .. })) => {
                // A contract this config breaks under 0.1.5 (e.g. nuslerp's two models) is fine
                // too, as long as it is not the version.
                assert!(
                    diagnostics
                        .iter()
                        .all(|d| !d.to_string().contains("0.0.4.2")),
                    "{method}"
                );
            }
            other => panic!("{method}: {other:?}"),
        }
    }
}

/// The input contract is checked once, from the schema, before models are opened.
#[test]
fn contract_refused_before_any_model_is_read() {
    let text = "merge_method: slerp\nmodels:\n  - model: ./missing/a\n  - model: ./missing/b\n\
                parameters: {t: 0.5}\n";
    match plan_text(text, Compat::V0_1_5) {
        Err(EngineError::Config(ConfigError::Invalid { diagnostics, .. })) => {
            let msg = diagnostics[0].to_string();
            assert!(
                msg.contains(
                    &ContractViolation::BaseRequired.mergekit_message("default.slices[0]")
                ),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_method_is_a_variant() {
    match plan_text(
        "merge_method: lineer\nmodels:\n  - model: ./models/base\n",
        Compat::V0_1_5,
    ) {
        Err(EngineError::UnknownMethod { method, known }) => {
            assert_eq!(method, "lineer");
            assert!(known.contains("linear"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn layer_range_outside_the_model_is_a_variant() {
    let text =
        "merge_method: passthrough\nslices:\n  - sources:\n      - model: ./models/base\n        \
                layer_range: [0, 9]\n";
    match plan_text(text, Compat::V0_1_5) {
        Err(EngineError::LayerRange {
            slice, start, end, ..
        }) => assert_eq!((slice, start, end), (0, 0, 9)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn layer_range_error_of_the_default_module_names_its_path() {
    let text = "merge_method: passthrough\nmodules:\n  default:\n    slices:\n      - sources:\n          \
                - model: ./models/base\n            layer_range: [0, 9]\n";
    match plan_text(text, Compat::V0_1_5) {
        Err(
            ref e @ EngineError::LayerRange {
                ref at, slice: 0, ..
            },
        ) => {
            assert_eq!(at, "modules.default.slices");
            assert!(
                e.to_string()
                    .starts_with("modules.default.slices[0]: layer_range [0, 9]"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn vocabulary_mismatch_is_a_variant() {
    let text =
        "merge_method: linear\nmodels:\n  - model: ./models/base\n    parameters: {weight: 1}\n  \
                - model: ./models/vocab72\n    parameters: {weight: 1}\n";
    match plan_text(text, Compat::V0_1_5) {
        Err(EngineError::ShapeMismatch { tensor, shapes, .. }) => {
            assert!(tensor.contains("embed_tokens") || tensor.starts_with("lm_head"));
            assert_eq!(shapes.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

/// Defaults come from the schema through the planner: a method receives every declared
/// parameter, resolved (ties' `normalize` defaults to true in mergekit and here).
#[test]
fn planner_fills_declared_defaults() {
    let text = std::fs::read_to_string(golden().join("configs/ties.yml"))
        .unwrap()
        .replace("parameters:\n  normalize: true\n", "");
    let p = plan_text(&text, Compat::V0_1_5).expect("plans");
    let info = p.method.as_ref().unwrap().info();
    for op in &p.ops {
        for spec in info
            .params
            .iter()
            .filter(|s| s.scope == amalgam_methods::ParamScope::Shared)
        {
            assert!(
                op.shared.contains_key(spec.name),
                "{} {}",
                op.out_name,
                spec.name
            );
        }
        assert_eq!(
            op.shared.get("normalize"),
            Some(&amalgam_methods::Value::Bool(true))
        );
    }
}
