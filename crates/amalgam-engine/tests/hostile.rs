//! Hostile and odd inputs, end to end through `amalgam_engine::merge`: every case must either
//! merge correctly or fail with an error that names the culprit; none may panic. The tests run
//! in-process, so a panic anywhere in planning or execution fails them.
//!
//! Expected tensor values are worked by hand: inputs are small integers and the linear weights
//! are 0.5 and 0.5, so every intermediate is exact in f32 and the result (the mean) is the same
//! whatever the order of operations; PyTorch gives the same numbers for the same reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use amalgam_engine::{merge, EngineError, MergeOptions, PlanOptions};
use amalgam_io::{
    DType, IndexStyle, ModelFolder, OutputWriter, PlannedTensor, ShardLayout, ShardRule, ShardSpec,
};
use amalgam_methods::{
    BaseRule, Contract, MergeArgs, MergeMethod, MethodError, MethodInfo, ParamKind, ParamScope,
    ParamSpec, ParamValues, Registry, Tensor,
};

/// One tensor of a test model: name, dtype, shape, little-endian bytes.
struct T {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32s(name: &str, shape: &[usize], values: &[f32]) -> T {
    T {
        name: name.into(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn i64s(name: &str, values: &[i64]) -> T {
    T {
        name: name.into(),
        dtype: DType::I64,
        shape: vec![values.len()],
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Writes `tensors` as `dir/model.safetensors` with amalgam's own writer.
fn write_model(dir: &Path, tensors: &[T]) {
    let planned = tensors
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let spec = ShardSpec {
        rule: ShardRule::Bytes(0),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    };
    let layout = ShardLayout::plan(planned, &spec).expect("layout");
    let w = OutputWriter::create(dir, layout).expect("writer");
    for t in tensors {
        w.write_tensor(&t.name, &t.bytes).expect("write");
    }
    w.finish().expect("finish");
}

/// The regular part of both test models: embeddings, two layers (each with a 4x4 weight, a 0-d
/// scale and an empty [0, 4] tensor), a final norm, and an I64 buffer equal in both models.
/// Model `a` has an LM head; model `b` ties it to its embeddings.
fn common(scale: f32) -> Vec<T> {
    let v = |k: f32| -> Vec<f32> { (0..16).map(|i| (i as f32 + k) * scale).collect() };
    let mut t = vec![
        f32s("model.embed_tokens.weight", &[4, 4], &v(0.0)),
        i64s("model.position_ids", &[0, 1, 2, 3]),
    ];
    for l in 0..2 {
        t.push(f32s(
            &format!("model.layers.{l}.self_attn.q_proj.weight"),
            &[4, 4],
            &v(l as f32),
        ));
        t.push(f32s(&format!("model.layers.{l}.mlp.scale"), &[], &[scale]));
        t.push(f32s(&format!("model.layers.{l}.mlp.empty"), &[0, 4], &[]));
    }
    t.push(f32s("model.norm.weight", &[4], &[scale; 4]));
    t
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

/// Models: `a` (values x1, own LM head of 100s), `b` (values x3, tied LM head),
/// `c` = `a` plus a tensor nobody else has, `d` = `b` with a different I64 buffer,
/// `e` = `a` with one 4x4 weight reshaped to [2, 8].
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut a = common(1.0);
    a.push(f32s("lm_head.weight", &[4, 4], &[100.0; 16]));
    write_model(&dir.join("a"), &a);
    write_model(&dir.join("b"), &common(3.0));
    let mut c = common(1.0);
    c.push(f32s("lm_head.weight", &[4, 4], &[100.0; 16]));
    c.push(f32s("model.extra.weight", &[2], &[1.0, 2.0]));
    write_model(&dir.join("c"), &c);
    let mut d = common(3.0);
    for t in &mut d {
        if t.name == "model.position_ids" {
            *t = i64s("model.position_ids", &[0, 1, 2, 4]);
        }
    }
    write_model(&dir.join("d"), &d);
    let mut e = common(1.0);
    for t in &mut e {
        if t.name == "model.layers.1.self_attn.q_proj.weight" {
            t.shape = vec![2, 8];
        }
    }
    write_model(&dir.join("e"), &e);
    Fixture { _tmp: tmp, dir }
}

fn opts(base: &Path) -> MergeOptions {
    MergeOptions {
        plan: PlanOptions {
            base_dir: base.to_path_buf(),
            ..PlanOptions::default()
        },
        ..MergeOptions::default()
    }
}

fn run(fx: &Fixture, config: &str, registry: &Registry) -> (PathBuf, amalgam_engine::Result<()>) {
    let out = fx.dir.join("out");
    let loaded = match amalgam_config::parse_str(config) {
        Ok(l) => l,
        Err(e) => return (out, Err(e.into())),
    };
    let r = merge(&loaded, &out, registry, &opts(&fx.dir)).map(|_| ());
    (out, r)
}

/// Nothing that looks like an output: no target folder and no temporary folder left.
fn assert_no_output(fx: &Fixture, out: &Path) {
    assert!(
        !out.exists(),
        "{} exists after a failed merge",
        out.display()
    );
    let leftovers: Vec<String> = std::fs::read_dir(&fx.dir)
        .expect("read tmp dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("amalgam-tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

/// Asserts the merge failed, that no output was left, and that the message holds every
/// fragment of `expect`.
fn assert_fails(fx: &Fixture, config: &str, expect: &[&str]) -> String {
    let (out, r) = run(fx, config, &Registry::builtin());
    let msg = match r {
        Ok(()) => panic!("merge succeeded; expected an error with {expect:?}"),
        Err(e) => e.to_string(),
    };
    eprintln!("error as reported: {msg}");
    for part in expect {
        assert!(
            msg.contains(part),
            "error `{msg}` does not mention `{part}`"
        );
    }
    assert_no_output(fx, &out);
    msg
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const LINEAR_AB: &str = "merge_method: linear
dtype: float32
models:
  - model: a
    parameters: {weight: 0.5}
  - model: b
    parameters: {weight: 0.5}
";

/// The models have no config.json, so amalgam infers the layout from tensor names and merges
/// every tensor it finds, substituting `b`'s embeddings for its missing LM head. This pins
/// amalgam's current behaviour, which is robust but not mergekit's: mergekit 0.1.5 cannot load
/// a folder without config.json, and with a config.json of an unknown architecture (inferred
/// through transformers, `tie_word_embeddings: false`) it was seen to drop the tensors a
/// transformers Llama does not declare (`position_ids`, `mlp.scale`, `mlp.empty`) and to merge
/// `lm_head` from `a` alone (100.0) instead of substituting `b`'s embeddings.
#[test]
fn odd_tensors_merge() {
    let fx = fixture();
    let (out, r) = run(&fx, LINEAR_AB, &Registry::builtin());
    r.expect("merge of 0-d, empty, I64 and tied tensors");
    let m = ModelFolder::open(&out).expect("output opens");
    let get = |n: &str| {
        let t = m
            .get(n)
            .unwrap_or_else(|| panic!("{n} missing from output"));
        (t.info.dtype, t.info.shape.clone(), t.data.to_vec())
    };
    // Mean of (i + l) and 3 (i + l).
    for l in 0..2usize {
        let (dt, shape, data) = get(&format!("model.layers.{l}.self_attn.q_proj.weight"));
        assert_eq!((dt, shape), (DType::F32, vec![4, 4]));
        let want: Vec<f32> = (0..16).map(|i| 2.0 * (i + l) as f32).collect();
        assert_eq!(f32_values(&data), want);
        // 0-d: mean of 1 and 3.
        let (dt, shape, data) = get(&format!("model.layers.{l}.mlp.scale"));
        assert_eq!(
            (dt, shape, f32_values(&data)),
            (DType::F32, vec![], vec![2.0])
        );
        // Empty stays empty, with its shape.
        let (dt, shape, data) = get(&format!("model.layers.{l}.mlp.empty"));
        assert_eq!((dt, shape, data.len()), (DType::F32, vec![0, 4], 0));
    }
    // Equal I64 buffers are copied unchanged.
    let (dt, shape, data) = get("model.position_ids");
    assert_eq!((dt, shape), (DType::I64, vec![4]));
    let ids: Vec<i64> = data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    // b has no LM head: its embeddings stand in (mean of 100 and 3 i).
    let (_, shape, data) = get("lm_head.weight");
    assert_eq!(shape, vec![4, 4]);
    let want: Vec<f32> = (0..16).map(|i| (100.0 + 3.0 * i as f32) / 2.0).collect();
    assert_eq!(f32_values(&data), want);
    let (_, _, data) = get("model.norm.weight");
    assert_eq!(f32_values(&data), [2.0; 4]);
}

#[test]
fn tensor_in_one_model_only() {
    let fx = fixture();
    let cfg = LINEAR_AB.replace("model: a", "model: c");
    assert_fails(&fx, &cfg, &["model.extra.weight", "b"]);
}

#[test]
fn differing_integer_buffer() {
    let fx = fixture();
    let cfg = LINEAR_AB.replace("model: b", "model: d");
    assert_fails(&fx, &cfg, &["model.position_ids", "differs"]);
}

#[test]
fn shape_mismatch() {
    let fx = fixture();
    let cfg = LINEAR_AB.replace("model: a", "model: e");
    assert_fails(
        &fx,
        &cfg,
        &["model.layers.1.self_attn.q_proj.weight", "[2, 8]", "[4, 4]"],
    );
}

fn slices(ranges: &[[i64; 2]]) -> String {
    let mut s = String::from("merge_method: passthrough\ndtype: float32\nslices:\n");
    for r in ranges {
        s.push_str(&format!(
            "  - sources:\n      - model: a\n        layer_range: [{}, {}]\n",
            r[0], r[1]
        ));
    }
    s
}

#[test]
fn slices_within_range_merge() {
    let fx = fixture();
    let (out, r) = run(&fx, &slices(&[[1, 2], [0, 2]]), &Registry::builtin());
    r.expect("frankenmerge of 1 + 2 layers");
    let m = ModelFolder::open(&out).expect("output");
    let layer = |l: usize| {
        f32_values(
            m.get(&format!("model.layers.{l}.self_attn.q_proj.weight"))
                .expect("layer")
                .data,
        )
    };
    let v = |k: f32| -> Vec<f32> { (0..16).map(|i| i as f32 + k).collect() };
    assert_eq!(layer(0), v(1.0));
    assert_eq!(layer(1), v(0.0));
    assert_eq!(layer(2), v(1.0));
    assert!(m.get("model.layers.3.self_attn.q_proj.weight").is_none());
}

#[test]
fn layer_range_beyond_model() {
    let fx = fixture();
    assert_fails(&fx, &slices(&[[0, 5]]), &["layer_range", "5", "2 layers"]);
}

#[test]
fn layer_range_reversed() {
    let fx = fixture();
    let msg = assert_fails(&fx, &slices(&[[2, 0]]), &["layer_range"]);
    assert!(msg.contains("[2, 0]"), "{msg}");
}

#[test]
fn layer_range_negative() {
    let fx = fixture();
    assert_fails(&fx, &slices(&[[-1, 1]]), &["layer_range"]);
}

#[test]
fn empty_models_list() {
    let fx = fixture();
    assert_fails(&fx, "merge_method: linear\nmodels: []\n", &["models"]);
}

#[test]
fn empty_slices_list() {
    let fx = fixture();
    assert_fails(&fx, "merge_method: passthrough\nslices: []\n", &["slices"]);
}

#[test]
fn slice_without_sources() {
    let fx = fixture();
    assert_fails(
        &fx,
        "merge_method: passthrough\nslices:\n  - sources: []\n",
        &["sources"],
    );
}

/// A `MergeConfig` built (or edited) in code skips the parser's checks: the engine must still
/// refuse empty lists and reversed ranges with an error.
#[test]
fn hand_built_configs() {
    let fx = fixture();
    let check = |edit: &dyn Fn(&mut amalgam_config::MergeConfig), config: &str, expect: &[&str]| {
        let mut loaded = amalgam_config::parse_str(config).expect("valid before the edit");
        edit(&mut loaded.config);
        let out = fx.dir.join("out");
        let msg = match merge(&loaded, &out, &Registry::builtin(), &opts(&fx.dir)) {
            Ok(_) => panic!("merge succeeded; expected an error with {expect:?}"),
            Err(e) => e.to_string(),
        };
        eprintln!("error as reported: {msg}");
        for part in expect {
            assert!(
                msg.contains(part),
                "error `{msg}` does not mention `{part}`"
            );
        }
        assert_no_output(&fx, &out);
    };
    let sliced = slices(&[[0, 2]]);
    check(
        &|c| c.slices = Some(Vec::new()),
        &sliced,
        &["no slices", "models:", "slices:"],
    );
    check(
        &|c| {
            if let Some(s) = c.slices.as_mut().and_then(|s| s.first_mut()) {
                s.sources.clear();
            }
        },
        &sliced,
        &["slices[0]", "empty"],
    );
    check(
        &|c| {
            if let Some(src) = c
                .slices
                .as_mut()
                .and_then(|s| s.first_mut())
                .and_then(|s| s.sources.first_mut())
            {
                src.layer_range = (2, 0);
            }
        },
        &sliced,
        &["slices[0]", "[2, 0]", "reversed"],
    );
    check(
        &|c| {
            if let Some(m) = c.models.as_mut() {
                m.clear();
            }
        },
        LINEAR_AB,
        &["no input models"],
    );
}

/// A layer index that does not fit a layer count (`usize::MAX + 1`) must not overflow.
#[test]
fn huge_layer_index() {
    let fx = fixture();
    let mut f = common(1.0);
    f.push(f32s(
        &format!("model.layers.{}.mlp.scale", usize::MAX),
        &[],
        &[1.0],
    ));
    write_model(&fx.dir.join("f"), &f);
    let cfg = LINEAR_AB
        .replace("model: a", "model: f")
        .replace("model: b", "model: f2");
    write_model(&fx.dir.join("f2"), &common(1.0));
    assert_fails(&fx, &cfg, &["layer"]);
}

/// A fused Mixtral whose down_proj has 0 experts and enormous other dimensions (0 bytes, a
/// valid header) seen as expert 0: the per-expert size overflows and must be an error.
#[test]
fn expert_view_with_overflowing_shape() {
    let fx = fixture();
    let big = 1usize << 40;
    let m = vec![
        f32s("model.embed_tokens.weight", &[4, 4], &[0.0; 16]),
        f32s(
            "model.layers.0.mlp.experts.gate_up_proj",
            &[2, 4, 2],
            &[1.0; 16],
        ),
        f32s("model.layers.0.mlp.experts.down_proj", &[0, big, big], &[]),
    ];
    write_model(&fx.dir.join("moe"), &m);
    let cfg = "merge_method: passthrough\ndtype: float32\nmodels:\n  - model: moe#expert=0\n";
    assert_fails(&fx, cfg, &["down_proj"]);
}

/// A method that fails on one tensor (or, with `fail_at`, one chunk of one), counting calls.
struct Failing {
    info: MethodInfo,
    calls: AtomicUsize,
    elementwise: bool,
}

impl Failing {
    fn new(elementwise: bool) -> Self {
        Failing {
            info: MethodInfo {
                summary: "copies its first input; fails on tensors named `*.boom` and on \
                          chunks whose first value is -1; panics on tensors named `*.panic`",
                params: vec![ParamSpec::optional(
                    "weight",
                    ParamScope::Input,
                    ParamKind::Float,
                    amalgam_methods::Value::Float(1.0),
                    "unused",
                )],
                ..MethodInfo::new("failing", "Failing", Contract::any(BaseRule::Ignored))
            },
            calls: AtomicUsize::new(0),
            elementwise,
        }
    }
}

impl MergeMethod for Failing {
    fn info(&self) -> &MethodInfo {
        &self.info
    }

    fn is_elementwise(&self, _: &ParamValues, _: &[&ParamValues]) -> bool {
        self.elementwise
    }

    fn merge(&self, args: MergeArgs<'_>) -> Result<Tensor, MethodError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let first = args.first()?;
        if args.tensor_name.ends_with(".boom") || first.tensor.data.first() == Some(&-1.0) {
            return Err(MethodError::Other("injected failure".into()));
        }
        if args.tensor_name.ends_with(".panic") {
            panic!("injected panic");
        }
        Ok(first.tensor.clone())
    }
}

/// Many small tensors, one of which makes the method fail: the merge stops with that error,
/// later work items are not all run, and nothing finished-looking is left behind.
#[test]
fn failing_work_item_stops_the_merge() {
    let fx = fixture();
    let mut t = Vec::new();
    for i in 0..400 {
        t.push(f32s(&format!("model.w{i:03}"), &[4], &[i as f32; 4]));
    }
    t.push(f32s("model.a.boom", &[4], &[0.0; 4]));
    write_model(&fx.dir.join("many"), &t);
    let method = Arc::new(Failing::new(false));
    let mut reg = Registry::builtin();
    reg.register(method.clone());
    let cfg = "merge_method: failing\nmodels:\n  - model: many\n";
    let (out, r) = run(&fx, cfg, &reg);
    match r {
        Err(EngineError::Method { tensor, source }) => {
            assert_eq!(tensor, "model.a.boom");
            assert!(source.to_string().contains("injected failure"));
        }
        other => panic!("expected the injected method error, got {other:?}"),
    }
    assert_no_output(&fx, &out);
    let calls = method.calls.load(Ordering::SeqCst);
    assert!(
        calls < 401,
        "every work item ran ({calls}) despite the failure"
    );
}

/// The same through the chunked path: one chunk in the middle of a large elementwise tensor
/// fails.
#[test]
fn failing_chunk_stops_the_merge() {
    let fx = fixture();
    let n = 3 * amalgam_engine::exec::ITEM_ELEMS;
    let mut v = vec![1.0f32; n];
    // First element of a chunk inside the second work item.
    if let Some(x) =
        v.get_mut(amalgam_engine::exec::ITEM_ELEMS + 4 * amalgam_engine::exec::CHUNK_ELEMS)
    {
        *x = -1.0;
    }
    write_model(&fx.dir.join("big"), &[f32s("model.big", &[n], &v)]);
    let method = Arc::new(Failing::new(true));
    let mut reg = Registry::builtin();
    reg.register(method.clone());
    let cfg = "merge_method: failing\nmodels:\n  - model: big\n";
    let (out, r) = run(&fx, cfg, &reg);
    match r {
        Err(EngineError::Method { tensor, .. }) => assert_eq!(tensor, "model.big"),
        other => panic!("expected the injected method error, got {other:?}"),
    }
    assert_no_output(&fx, &out);
}

/// The same method with no failing input merges, so the failures above are the injected ones.
#[test]
fn failing_method_control() {
    let fx = fixture();
    write_model(
        &fx.dir.join("ok"),
        &[f32s("model.w", &[4], &[1.0, 2.0, 3.0, 4.0])],
    );
    let mut reg = Registry::builtin();
    reg.register(Arc::new(Failing::new(false)));
    let (out, r) = run(&fx, "merge_method: failing\nmodels:\n  - model: ok\n", &reg);
    r.expect("merge");
    let m = ModelFolder::open(&out).expect("output");
    assert_eq!(
        f32_values(m.get("model.w").expect("model.w").data),
        [1.0, 2.0, 3.0, 4.0]
    );
}

/// A method that panics: the merge ends with an error naming the tensor and the method (not a
/// panic out of `merge`), and no output is left.
#[test]
fn panicking_method_is_an_error() {
    let fx = fixture();
    let mut t = Vec::new();
    for i in 0..50 {
        t.push(f32s(&format!("model.w{i:03}"), &[4], &[i as f32; 4]));
    }
    t.push(f32s("model.x.panic", &[4], &[0.0; 4]));
    write_model(&fx.dir.join("p"), &t);
    let mut reg = Registry::builtin();
    reg.register(Arc::new(Failing::new(false)));
    let (out, r) = run(&fx, "merge_method: failing\nmodels:\n  - model: p\n", &reg);
    match r {
        Err(e @ EngineError::MethodPanicked { .. }) => {
            let msg = e.to_string();
            for part in ["model.x.panic", "failing", "injected panic"] {
                assert!(msg.contains(part), "`{msg}` does not mention `{part}`");
            }
        }
        other => panic!("expected a MethodPanicked error, got {other:?}"),
    }
    assert_no_output(&fx, &out);
}
