//! The PyTorch reductions replayed by `amalgam_methods::reduce` give PyTorch's bits.
//!
//! Fixture: `tests/fixtures/reduce.safetensors`, built by `tests/fixtures/reduce.py` with torch
//! 2.15 on CPU. Every length and model count around the kernels' switch points is covered for
//! bf16, f16 and f32, so a change of association order in any branch fails here.

use std::path::Path;

use amalgam_io::{convert, DType, SafetensorsFile};
use amalgam_methods::numerics::round;
use amalgam_methods::reduce::{
    norm2, norm2_blocks, norm2_fast, sum_split_blocks, sum_split_blocks_par, sums_blocks_par_mut,
    torch_float_lanes, torch_sum, Dim0Sum, BLOCK,
};

fn open() -> SafetensorsFile {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reduce.safetensors");
    SafetensorsFile::open(&p).expect("open reduce fixture")
}

fn load(f: &SafetensorsFile, name: &str) -> (DType, Vec<usize>, Vec<f32>) {
    let r = f.get(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut data = vec![0f32; r.info.numel()];
    convert::decode_f32(r.info.dtype, r.data, &mut data).expect("decode");
    (r.info.dtype, r.info.shape.clone(), data)
}

/// The fixture cases (`<kind>/<dt>/<case>`) of one kind, sorted by name.
fn cases(f: &SafetensorsFile, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = f
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| n.starts_with(kind) && n.ends_with("/out"))
        .map(|n| n.trim_end_matches("/out").to_string())
        .collect();
    v.sort();
    assert!(v.len() > 100, "{kind}: only {} cases", v.len());
    v
}

/// Checks every `<kind>/…` case whose output is one value: `ours` gets the dtype and the values
/// of the case's input `sum/…/x` (the sums and norms share their inputs).
fn check_scalar_cases(kind: &str, ours: impl Fn(DType, &[f32]) -> f32) {
    let f = open();
    let mut bad = Vec::new();
    for case in cases(&f, kind) {
        let (dt, _, x) = load(&f, &format!("{}/x", case.replacen(kind, "sum/", 1)));
        let (_, _, want) = load(&f, &format!("{case}/out"));
        let got = ours(dt, &x);
        if want.first().map(|w| w.to_bits()) != Some(got.to_bits()) {
            bad.push(format!("{case}: torch {want:?}, ours {got}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn whole_tensor_sums_match_torch() {
    check_scalar_cases("sum/", |dt, x| {
        round(dt, torch_sum(x, dt, torch_float_lanes()))
    });
}

#[test]
fn model_axis_sums_match_torch() {
    let f = open();
    let mut bad = Vec::new();
    for case in cases(&f, "dim0/") {
        let (dt, shape, x) = load(&f, &format!("{case}/x"));
        let (_, _, want) = load(&f, &format!("{case}/out"));
        let (m, cols) = (shape[0], shape[1]);
        let plan = Dim0Sum::new(cols, dt, torch_float_lanes());
        for (c, w) in want.iter().enumerate() {
            let vals: Vec<f32> = (0..m).map(|k| x[k * cols + c]).collect();
            let got = round(dt, plan.sum(c, &vals));
            if got.to_bits() != w.to_bits() {
                bad.push(format!("{case} column {c}: torch {w}, ours {got}"));
            }
        }
        // The same columns summed in bulk from one row per model, from every starting column.
        let rows: Vec<&[f32]> = (0..m).map(|k| &x[k * cols..(k + 1) * cols]).collect();
        for c0 in [0, cols / 2] {
            let part: Vec<&[f32]> = rows.iter().map(|r| &r[c0..]).collect();
            let mut got = vec![0f32; cols - c0];
            plan.sum_rows(c0, &part, &mut got);
            for (j, (g, w)) in got.iter().zip(&want[c0..]).enumerate() {
                let g = round(dt, *g);
                if g.to_bits() != w.to_bits() {
                    bad.push(format!(
                        "{case} column {} (bulk): torch {w}, ours {g}",
                        c0 + j
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn vector_norms_match_torch() {
    check_scalar_cases("norm/", |dt, x| norm2(x, dt));
}

/// Fills `b` with `x[s..]`, as the blocked reductions ask for their values.
fn from(x: &[f32]) -> impl FnMut(usize, &mut [f32]) + '_ {
    move |s, b| b.copy_from_slice(&x[s..s + b.len()])
}

#[test]
fn blocked_sums_match_torch() {
    check_scalar_cases("sum/", |dt, x| {
        round(dt, sum_split_blocks(x.len(), dt, dt, 1, from(x)))
    });
}

/// Several sums fed by one pass over a buffer the pass may update: each gives PyTorch's bits.
/// Sum 0 is of the buffer as the pass leaves it (every value doubled, exactly), sum 1 of the
/// values negated, so a sum fed the buffer before its update, or another sum's values, fails.
/// (The parallel runs are covered by `parallel_blocked_sums_match_sequential`'s lengths.)
#[test]
fn multi_sums_over_an_updated_buffer_match_torch() {
    check_scalar_cases("sum/", |dt, x| {
        let mut data: Vec<f32> = x.iter().map(|v| v / 2.0).collect();
        let sums = sums_blocks_par_mut(&mut data, 2, dt, |_, b, outs: &mut [[f32; BLOCK]]| {
            b.iter_mut().for_each(|v| *v *= 2.0);
            if let [o0, o1] = outs {
                for ((a, c), &v) in o0.iter_mut().zip(o1.iter_mut()).zip(b.iter()) {
                    (*a, *c) = (v, -v);
                }
            }
        });
        assert_eq!(data, x, "the pass's updates are kept");
        assert_eq!(sums.len(), 2);
        // Negation commutes with every addition, except that x + (-x) is +0 either way.
        let (a, b) = (sums[0], sums[1]);
        assert!(
            a == -b || (a.is_nan() && b.is_nan()),
            "{dt:?} n {}: {a} {b}",
            x.len()
        );
        round(dt, sums[0])
    });
}

#[test]
fn blocked_vector_norms_match_torch() {
    check_scalar_cases("norm/", |dt, x| norm2_blocks(x.len(), dt, from(x)));
    check_scalar_cases("norm/", |dt, x| norm2_fast(x, dt));
}

/// The parallel blocked sum gives the sequential one's bits: lengths around multiples of the
/// cascade's top-level run (2^12 steps: 131072 f32 values, 262144 16-bit ones), with and
/// without PyTorch's thread split; values of widely spread magnitudes, so the order shows.
#[test]
fn parallel_blocked_sums_match_sequential() {
    let mut state = 0x2545_f491_u32;
    let x: Vec<f32> = (0..1_200_000)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let m = (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            m * (2f32).powi((state % 24) as i32 - 12)
        })
        .collect();
    let fill = |s: usize, b: &mut [f32]| b.copy_from_slice(&x[s..s + b.len()]);
    for (dt, run) in [
        (DType::F32, 131_072),
        (DType::F16, 262_144),
        (DType::BF16, 262_144),
    ] {
        for k in [1usize, 2, 3, 4] {
            for n in [k * run - 33, k * run, k * run + 1, k * run + 4097] {
                let n = n.min(x.len());
                let mut data = x[..n].to_vec();
                let multi = sums_blocks_par_mut(&mut data, 3, dt, |s, b, outs| {
                    for (j, o) in outs.iter_mut().enumerate() {
                        for (k, (o, &v)) in o.iter_mut().zip(b.iter()).enumerate() {
                            *o = if (s + k) % 3 == j { v } else { 0.0 };
                        }
                    }
                });
                for (j, got) in multi.iter().enumerate() {
                    let want = sum_split_blocks(n, dt, dt, 1, |s, b: &mut [f32]| {
                        for (k, o) in b.iter_mut().enumerate() {
                            *o = if (s + k) % 3 == j { x[s + k] } else { 0.0 };
                        }
                    });
                    assert_eq!(got.to_bits(), want.to_bits(), "{dt:?} n {n} sum {j}");
                }
                for threads in [1, 2, 3] {
                    let a = sum_split_blocks(n, dt, dt, threads, fill);
                    let b = sum_split_blocks_par(n, dt, dt, threads, fill);
                    assert_eq!(a.to_bits(), b.to_bits(), "{dt:?} n {n} threads {threads}");
                }
            }
        }
    }
}
