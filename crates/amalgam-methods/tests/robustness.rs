//! No input data makes a built-in method panic: odd shapes (0-d, empty, 3-D, one element),
//! mismatched shapes, tensors whose data length disagrees with their shape, NaN/inf values,
//! missing or out-of-range bases and any input count either merge or return a `MethodError`.
//!
//! A method must never take down a whole merge (or a library caller) with a panic on data it did
//! not expect; a refusal names the tensor and lets the caller report it. When a merge succeeds,
//! the output must be a well-formed tensor (data length = product of its shape).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use amalgam_io::DType;
use amalgam_methods::rng::Mt19937;
use amalgam_methods::{
    Compat, MergeArgs, MergeInput, MergeMethod, ParamScope, ParamValues, Registry, Tensor, Value,
};

/// A value for every declared parameter: its default, else a typical value for its name.
fn params_for(
    m: &dyn MergeMethod,
    n: usize,
    base: Option<usize>,
) -> (ParamValues, Vec<ParamValues>) {
    let typical = |name: &str| match name {
        "weight" => Value::Float(0.6),
        "density" => Value::Float(0.5),
        "t" => Value::Float(0.3),
        "select_topk" => Value::Float(0.5),
        "rescale" | "normalize" => Value::Bool(true),
        _ => Value::Float(0.5),
    };
    let mut shared = BTreeMap::new();
    let mut per: Vec<ParamValues> = vec![BTreeMap::new(); n];
    for spec in &m.info().params {
        let v = spec.default.unwrap_or_else(|| typical(spec.name));
        match spec.scope {
            ParamScope::Shared => {
                shared.insert(spec.name.to_string(), v);
            }
            ParamScope::Input => {
                for p in per.iter_mut() {
                    p.insert(spec.name.to_string(), typical(spec.name));
                }
            }
            ParamScope::NonBase => {
                for (k, p) in per.iter_mut().enumerate() {
                    if Some(k) != base {
                        p.insert(spec.name.to_string(), typical(spec.name));
                    }
                }
            }
        }
    }
    (shared, per)
}

/// Values with zeros, ties, both signs and (optionally) non-finite entries.
fn values(n: usize, seed: usize, nonfinite: bool) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let k = (i * 7 + seed * 13) % 11;
            match k {
                0 => 0.0,
                1 => -0.0,
                2 if nonfinite => f32::NAN,
                3 if nonfinite => f32::INFINITY,
                4 if nonfinite => f32::NEG_INFINITY,
                _ => (k as f32 - 5.0) * 0.125 + seed as f32 * 0.0625,
            }
        })
        .collect()
}

/// A tensor with `shape`; `len` overrides the data length (to build inconsistent tensors).
fn tensor(
    dtype: DType,
    shape: &[usize],
    len: Option<usize>,
    seed: usize,
    nonfinite: bool,
) -> Tensor {
    let n = len.unwrap_or_else(|| shape.iter().product());
    Tensor {
        dtype,
        shape: shape.to_vec(),
        data: values(n, seed, nonfinite),
    }
}

/// Runs every method on `tensors`, with every base choice and both compat levels; records (with
/// the case) each panic and each malformed output in `failures`.
fn exercise(registry: &Registry, tensors: &[Tensor], what: &str, failures: &mut Vec<String>) {
    for m in registry.iter() {
        let name = m.info().name;
        let n = tensors.len();
        let mut bases: Vec<Option<usize>> = vec![None, Some(0), Some(n)];
        if n > 1 {
            bases.push(Some(n - 1));
        }
        for base in bases {
            for compat in [Compat::V0_1_5, Compat::V0_0_4_2] {
                let (shared, per) = params_for(m.as_ref(), n, base);
                let labels: Vec<String> = (0..n).map(|k| format!("m{k}.w")).collect();
                let mut rng = Mt19937::new(7);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    let args = MergeArgs {
                        tensor_name: "model.layers.0.w",
                        inputs: tensors
                            .iter()
                            .zip(&per)
                            .zip(&labels)
                            .map(|((t, p), l)| MergeInput {
                                tensor: t,
                                params: p,
                                label: l,
                            })
                            .collect(),
                        base,
                        shared: &shared,
                        rng: Some(&mut rng),
                        compat,
                        torch_threads: 1,
                    };
                    m.merge(args)
                }));
                let case = format!("{name} on {what}, base {base:?}, {compat:?}");
                match result {
                    Err(_) => failures.push(format!("{case}: panicked")),
                    Ok(Ok(t)) if t.data.len() != t.shape.iter().product::<usize>() => {
                        failures.push(format!("{case}: malformed output {:?}", t.shape))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}

#[test]
fn odd_shapes_never_panic() {
    let registry = Registry::builtin();
    let mut failures = Vec::new();
    let shapes: &[&[usize]] = &[
        &[],
        &[0],
        &[1],
        &[0, 5],
        &[5, 0],
        &[1, 1],
        &[3, 1],
        &[2, 3, 4],
        &[7],
        &[17, 3],
    ];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for shape in shapes {
            for count in 1..=6 {
                for nonfinite in [false, true] {
                    let ts: Vec<Tensor> = (0..count)
                        .map(|k| tensor(dtype, shape, None, k, nonfinite))
                        .collect();
                    exercise(
                        &registry,
                        &ts,
                        &format!("{count} × {dtype:?}{shape:?} (non-finite: {nonfinite})"),
                        &mut failures,
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_inputs_never_panic() {
    let mut failures = Vec::new();
    exercise(&Registry::builtin(), &[], "no inputs", &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mismatched_inputs_are_refused_not_panicked_on() {
    let registry = Registry::builtin();
    let cases: Vec<(Vec<Tensor>, &str)> = vec![
        (
            vec![
                tensor(DType::F32, &[4, 3], None, 0, false),
                tensor(DType::F32, &[3, 4], None, 1, false),
            ],
            "transposed shapes",
        ),
        (
            vec![
                tensor(DType::BF16, &[6], None, 0, false),
                tensor(DType::BF16, &[7], None, 1, false),
                tensor(DType::BF16, &[6], None, 2, false),
            ],
            "different lengths",
        ),
        (
            vec![
                tensor(DType::F32, &[4, 4], Some(10), 0, false),
                tensor(DType::F32, &[4, 4], Some(10), 1, false),
            ],
            "data shorter than shape",
        ),
        (
            vec![
                tensor(DType::F32, &[2, 2], None, 0, false),
                tensor(DType::F32, &[2, 2], Some(9), 1, false),
            ],
            "one input's data longer than its shape",
        ),
        (
            vec![
                tensor(DType::F16, &[], None, 0, false),
                tensor(DType::F16, &[1], None, 1, false),
            ],
            "0-d and 1-element",
        ),
        (
            vec![
                tensor(DType::F32, &[8, 6], None, 0, false),
                tensor(DType::F32, &[10, 6], None, 1, false),
            ],
            "vocabulary-like rows",
        ),
    ];
    let mut failures = Vec::new();
    for (ts, what) in &cases {
        exercise(&registry, ts, what, &mut failures);
        let rev: Vec<Tensor> = ts.iter().rev().cloned().collect();
        exercise(&registry, &rev, &format!("{what}, reversed"), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn linear_refuses_mismatched_shapes() {
    let registry = Registry::builtin();
    let m = registry.get("linear").expect("linear");
    let ts = [
        tensor(DType::F32, &[6], None, 0, false),
        tensor(DType::F32, &[4], None, 1, false),
    ];
    let (shared, per) = params_for(m.as_ref(), 2, None);
    let args = MergeArgs {
        tensor_name: "w",
        inputs: ts
            .iter()
            .zip(&per)
            .map(|(t, p)| MergeInput {
                tensor: t,
                params: p,
                label: "m.w",
            })
            .collect(),
        base: None,
        shared: &shared,
        rng: None,
        compat: Compat::V0_1_5,
        torch_threads: 1,
    };
    let err = m
        .merge(args)
        .expect_err("mismatched shapes must be refused");
    assert_eq!(err.to_string(), "tensor size mismatch for w: [(6,), (4,)]");
}
