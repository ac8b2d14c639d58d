//! Every registered method reads its parameters only from what the planner resolved: called
//! with no parameters it refuses (never computes with a default it restated), an undeclared
//! parameter is an error, and what it declares about mergekit 0.0.4.2 is what it does.

use std::collections::BTreeMap;

use amalgam_io::DType;
use amalgam_methods::rng::Mt19937;
use amalgam_methods::{
    BaseRule, Compat, Legacy, MergeArgs, MergeInput, MethodError, MethodInfo, ParamValues,
    Registry, Tensor, Value, VersionError,
};

/// Inputs that satisfy `info`'s contract: (count, base index).
fn contract_inputs(info: &MethodInfo) -> (usize, Option<usize>) {
    let c = &info.contract;
    let base = matches!(c.base, BaseRule::Required | BaseRule::Optional).then_some(0);
    let with_base = usize::from(base.is_some());
    let mut n = c
        .min_inputs
        .max(c.min_non_base.unwrap_or(1) + with_base)
        .max(3);
    if let Some(m) = c.max_inputs {
        n = n.min(m);
    }
    if let Some(m) = c.max_non_base {
        n = n.min(m + with_base);
    }
    (n, base)
}

fn run(
    info: &MethodInfo,
    method: &dyn amalgam_methods::MergeMethod,
    shared: &ParamValues,
    per: &[ParamValues],
) -> Result<Tensor, MethodError> {
    let (n, base) = contract_inputs(info);
    let tensors: Vec<Tensor> = (0..n)
        .map(|k| {
            Tensor::new(
                DType::F32,
                vec![2, 4],
                (0..8).map(|i| (i + k) as f32).collect(),
            )
        })
        .collect();
    let labels: Vec<String> = (0..n).map(|k| format!("m{k}.w")).collect();
    let mut rng = Mt19937::new(1);
    let empty = ParamValues::new();
    method.merge(MergeArgs {
        tensor_name: "model.w",
        inputs: tensors
            .iter()
            .zip(&labels)
            .enumerate()
            .map(|(k, (tensor, label))| MergeInput {
                tensor,
                params: per.get(k).unwrap_or(&empty),
                label,
            })
            .collect(),
        base,
        shared,
        rng: Some(&mut rng),
        compat: Compat::V0_1_5,
        torch_threads: 1,
    })
}

#[test]
fn empty_parameters_are_refused_by_every_method() {
    let registry = Registry::builtin();
    let mut checked = 0;
    for m in registry.iter() {
        let info = m.info();
        let got = run(info, m.as_ref(), &ParamValues::new(), &[]);
        if info.params.is_empty() {
            // Nothing to leave out: the empty set is complete for it.
            assert_eq!(
                info.name, "arcee_fusion",
                "only arcee_fusion declares no parameter"
            );
            continue;
        }
        match got {
            Err(MethodError::MissingParam(p)) => {
                assert!(info.param(&p.name).is_some(), "{}: {}", info.name, p.name)
            }
            Err(e) => panic!(
                "{}: refused, but not for a missing parameter: {e}",
                info.name
            ),
            Ok(_) => panic!("{}: merged with no parameters", info.name),
        }
        checked += 1;
    }
    assert_eq!(checked, registry.names().len() - 1);
}

#[test]
fn undeclared_parameters_are_refused() {
    let registry = Registry::builtin();
    for m in registry.iter() {
        let info = m.info();
        let mut shared: ParamValues = BTreeMap::new();
        shared.insert("no_such_parameter".into(), Value::Float(1.0));
        match run(info, m.as_ref(), &shared, &[]) {
            Err(MethodError::UndeclaredParam { name, .. }) => {
                assert_eq!(name, "no_such_parameter", "{}", info.name)
            }
            other => panic!("{}: {other:?}", info.name),
        }
    }
}

/// The 0.0.4.2 refusals are data, checked at planning: each method says what mergekit 0.0.4.2
/// had, and the message carries mergekit's own text for the methods it lacked.
#[test]
fn legacy_availability_is_declared() {
    let registry = Registry::builtin();
    let absent = [
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "nearswap",
        "nuslerp",
        "ram",
        "ramplus_tl",
        "sce",
        "multislerp",
        "karcher",
        "arcee_fusion",
    ];
    let not_implemented = ["slerp", "model_stock"];
    for m in registry.iter() {
        let info = m.info();
        assert!(info.check_version(Compat::V0_1_5).is_ok());
        let got = info.check_version(Compat::V0_0_4_2);
        if absent.contains(&info.name) {
            assert_eq!(info.legacy, Legacy::Absent, "{}", info.name);
            let e = got.unwrap_err();
            assert!(matches!(e, VersionError::Absent { .. }));
            assert!(
                e.to_string()
                    .contains(&format!("Unimplemented merge method {}", info.name)),
                "{e}"
            );
        } else if not_implemented.contains(&info.name) {
            assert!(matches!(got, Err(VersionError::NotImplemented { .. })));
        } else {
            assert!(got.is_ok(), "{}", info.name);
        }
    }
}
