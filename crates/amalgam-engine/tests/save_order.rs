//! mergekit 0.1.5's save order: amalgam's plans against the order mergekit's own scheduler
//! produced for the same configs.
//!
//! `tests/fixtures/order/cases.json` was written by `tests/fixtures/order/make_order.py` (run
//! with the mergekit venv): for each config, mergekit's planner and `graph.build_schedule` on
//! the tiny checkpoints in `tests/fixtures/order/models/`, and the SaveTensor tasks read off the
//! schedule. The configs cover `models:` merges of 1 to 8 models (with the base model
//! appended or listed), tied LM heads, and `slices:` frankenmerges with repeated and
//! overlapping ranges from one or several models, including a 1119-tensor one. 20 of the 54
//! orders differ from a stable sort by label (what amalgam did before), so the ties matter.

use std::path::{Path, PathBuf};

use amalgam_engine::{plan, PlanOptions};
use amalgam_methods::{Compat, Registry};
use serde_json::Value;

/// Cases where amalgam's *plan* (not its scheduling) differs from mergekit's, with the reason;
/// none today. (It once listed frankenmerges whose first slice has fewer sources than the last:
/// mergekit 0.1.5 merges post-weights from only that many of the last slice's models, which the
/// planner now reproduces.)
const KNOWN_PLAN_DIFFERENCES: [(&str, &str); 0] = [];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/order")
}

struct Case {
    name: String,
    config: String,
    order: Vec<String>,
}

fn cases() -> Vec<Case> {
    let path = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    json.as_array()
        .expect("cases.json is a list")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            config: c["config"].as_str().expect("config").to_string(),
            order: c["order"]
                .as_array()
                .expect("order")
                .iter()
                .map(|n| n.as_str().expect("tensor name").to_string())
                .collect(),
        })
        .collect()
}

fn amalgam_order(config: &str) -> Vec<String> {
    let loaded = amalgam_config::parse_str(config).expect("config parses");
    let opts = PlanOptions {
        compat: Compat::V0_1_5,
        base_dir: fixtures(),
        ..PlanOptions::default()
    };
    let plan = plan(&loaded, &Registry::builtin(), &opts).expect("plan");
    plan.ops.iter().map(|o| o.out_name.clone()).collect()
}

/// Where two orders first part, for a readable failure.
fn first_difference(got: &[String], want: &[String]) -> String {
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |v: &[String]| v[i.saturating_sub(2)..(i + 3).min(v.len())].join(", ");
    format!(
        "first difference at {i} of {}/{}: amalgam [{}], mergekit [{}]",
        got.len(),
        want.len(),
        window(got),
        window(want)
    )
}

#[test]
fn save_order_matches_mergekit() {
    let cases = cases();
    assert!(cases.len() >= 50, "fixture lost cases");
    let mut failures = Vec::new();
    for case in &cases {
        let got = amalgam_order(&case.config);
        if let Some((_, why)) = KNOWN_PLAN_DIFFERENCES.iter().find(|k| k.0 == case.name) {
            if got == case.order {
                failures.push(format!(
                    "{}: now matches mergekit; remove it from KNOWN_PLAN_DIFFERENCES ({why})",
                    case.name
                ));
            }
            continue;
        }
        if got != case.order {
            failures.push(format!(
                "{}: {}",
                case.name,
                first_difference(&got, &case.order)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
