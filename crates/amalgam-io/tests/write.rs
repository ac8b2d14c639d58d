//! The writer against files written by Python `safetensors` and mergekit, byte for byte, and
//! round trips through the reader.

mod common;

use std::path::Path;

use amalgam_io::{
    DType, Error, IndexStyle, ModelFolder, OutputWriter, PlannedTensor, SafetensorsFile,
    ShardLayout, ShardRule, ShardSpec,
};
use common::*;
use proptest::prelude::*;

fn torch_dtype(s: &str) -> DType {
    DType::ALL
        .into_iter()
        .find(|d| d.torch_name() == s)
        .unwrap_or_else(|| panic!("dtype {s}"))
}

/// Every regular file of a folder (recursively not needed), name -> bytes.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), read(e.path())))
        .collect();
    v.sort();
    v
}

/// Re-plans `order` with `spec`, writes every tensor with the bytes found in `reference`, and
/// checks the resulting folder holds exactly the reference's tensor files and index.
fn rewrite_and_compare(reference: &Path, order: Vec<PlannedTensor>, spec: &ShardSpec) {
    let src = ModelFolder::open(reference).unwrap();
    let layout = ShardLayout::plan(order.clone(), spec).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let w = OutputWriter::create(&out, layout).unwrap();
    for t in &order {
        let r = src.require(&t.name).unwrap();
        assert_eq!(r.info.dtype, t.dtype, "{}", t.name);
        w.write_tensor(&t.name, r.data).unwrap();
    }
    assert_eq!(w.finish().unwrap(), out);
    let want: Vec<_> = files_of(reference)
        .into_iter()
        .filter(|(n, _)| n.starts_with("model"))
        .collect();
    let got = files_of(&out);
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{}", reference.display());
    for ((n, g), (_, w)) in got.iter().zip(&want) {
        if g != w {
            let first = g.iter().zip(w).position(|(a, b)| a != b);
            panic!(
                "{}/{n}: differs (len {} vs {}, first difference at {first:?})\n got: {:?}\nwant: {:?}",
                reference.display(),
                g.len(),
                w.len(),
                String::from_utf8_lossy(&g[..g.len().min(400)]),
                String::from_utf8_lossy(&w[..w.len().min(400)])
            );
        }
    }
}

#[test]
fn python_safetensors_and_mergekit_outputs() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&read(fixture("writer/manifest.json"))).unwrap();
    let cases = manifest.as_object().unwrap();
    assert_eq!(cases.len(), 3);
    for (case, m) in cases {
        let order: Vec<PlannedTensor> = m["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| PlannedTensor {
                name: t[0].as_str().unwrap().to_string(),
                dtype: torch_dtype(t[1].as_str().unwrap()),
                shape: t[2]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
            })
            .collect();
        let spec = ShardSpec {
            rule: ShardRule::Bytes(m["limit"].as_u64().unwrap()),
            style: IndexStyle::Modern,
            mergekit_version: m["version"].as_str().unwrap().to_string(),
        };
        rewrite_and_compare(&fixture(&format!("writer/{case}")), order, &spec);
    }
}

/// The order of a reference output's index.
fn index_order(dir: &Path) -> Vec<PlannedTensor> {
    let idx: serde_json::Value =
        serde_json::from_slice(&read(dir.join("model.safetensors.index.json"))).unwrap();
    let folder = ModelFolder::open(dir).unwrap();
    idx["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| {
            let r = folder.require(k).unwrap();
            PlannedTensor {
                name: k.clone(),
                dtype: r.info.dtype,
                shape: r.info.shape.clone(),
            }
        })
        .collect()
}

#[test]
fn seed_lerp_legacy_0_0_4_2_layout() {
    let dir = workspace_fixture("seed-lerp/expected-0.0.4.2");
    let spec = ShardSpec {
        rule: ShardRule::Elements(60_000),
        style: IndexStyle::Legacy,
        mergekit_version: "0.0.4.2".into(),
    };
    let layout = ShardLayout::plan(index_order(&dir), &spec).unwrap();
    assert_eq!(layout.shard_names().len(), 3);
    rewrite_and_compare(&dir, index_order(&dir), &spec);
}

#[test]
fn seed_lerp_modern_0_1_5_layout() {
    let dir = workspace_fixture("seed-lerp/expected-0.1.5");
    // `--out-shard-size 60K` = 60,000 bytes in 0.1.5.
    let spec = ShardSpec {
        rule: ShardRule::Bytes(60_000),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    };
    let layout = ShardLayout::plan(index_order(&dir), &spec).unwrap();
    assert_eq!(layout.shard_names().len(), 5);
    assert_eq!(layout.total_size(), 279_168);
    rewrite_and_compare(&dir, index_order(&dir), &spec);
}

fn t(name: &str, dtype: DType, shape: &[usize]) -> PlannedTensor {
    PlannedTensor {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

fn modern(limit: u64) -> ShardSpec {
    ShardSpec {
        rule: ShardRule::Bytes(limit),
        style: IndexStyle::Modern,
        mergekit_version: "0.1.5".into(),
    }
}

#[test]
fn shard_rules() {
    let ts = vec![
        t("a", DType::F32, &[10]),
        t("b", DType::F32, &[10]),
        t("c", DType::F32, &[0]),
    ];
    // Bytes: 40 + 40 > 79 -> two shards; the empty tensor joins the second.
    let l = ShardLayout::plan(ts.clone(), &modern(79)).unwrap();
    assert_eq!(
        l.shard_names(),
        [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors"
        ]
    );
    assert_eq!(l.locate("c").unwrap().0, "model-00002-of-00002.safetensors");
    // Exactly at the limit stays in one shard, named model.safetensors, without index.
    let l = ShardLayout::plan(ts.clone(), &modern(80)).unwrap();
    assert_eq!(l.shard_names(), ["model.safetensors"]);
    assert!(l.index_json().is_none());
    // Bytes(0) = no limit.
    assert_eq!(
        ShardLayout::plan(ts.clone(), &modern(0))
            .unwrap()
            .shard_names()
            .len(),
        1
    );
    // Elements: 10 + 10 > 19 elements; legacy names even a single shard.
    let legacy = |n| ShardSpec {
        rule: ShardRule::Elements(n),
        style: IndexStyle::Legacy,
        mergekit_version: "0.0.4.2".into(),
    };
    assert_eq!(
        ShardLayout::plan(ts.clone(), &legacy(19))
            .unwrap()
            .shard_names()
            .len(),
        2
    );
    let l = ShardLayout::plan(ts.clone(), &legacy(20)).unwrap();
    assert_eq!(l.shard_names(), ["model-00001-of-00001.safetensors"]);
    assert_eq!(
        l.index_json().unwrap(),
        r#"{"metadata": {"mergekit_version": "0.0.4.2", "total_size": 80}, "weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors", "c": "model-00001-of-00001.safetensors"}}"#
    );
    // Elements(0) as in 0.0.4.2: no "limit > 0" test, so once the shard holds an element every
    // following tensor (even an empty one) starts a new shard.
    assert_eq!(
        ShardLayout::plan(ts.clone(), &legacy(0))
            .unwrap()
            .shard_names()
            .len(),
        3
    );
    // Duplicates are refused.
    let dup = vec![t("a", DType::F32, &[1]), t("a", DType::F16, &[1])];
    assert!(matches!(
        ShardLayout::plan(dup, &modern(0)),
        Err(Error::Invalid(_))
    ));
    let huge = vec![t("h", DType::F64, &[usize::MAX, 4])];
    assert!(matches!(
        ShardLayout::plan(huge, &modern(0)),
        Err(Error::Invalid(_))
    ));
}

fn layout_ab() -> ShardLayout {
    ShardLayout::plan(
        vec![t("a", DType::BF16, &[4, 4]), t("b", DType::U8, &[3])],
        &modern(0),
    )
    .unwrap()
}

fn tmp_entries(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn output_exists_and_empty_target() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"x").unwrap();
    assert!(matches!(
        OutputWriter::create(&out, layout_ab()),
        Err(Error::OutputExists { .. })
    ));
    std::fs::remove_file(out.join("x")).unwrap();
    // An empty folder is replaced.
    let w = OutputWriter::create(&out, layout_ab()).unwrap();
    w.write_tensor("a", &[7u8; 32]).unwrap();
    w.write_tensor("b", &[1, 2, 3]).unwrap();
    w.write_file("config.json", b"{}").unwrap();
    w.write_file("sub/tokenizer.json", b"[]").unwrap();
    w.finish().unwrap();
    assert_eq!(read(out.join("config.json")), b"{}");
    assert_eq!(read(out.join("sub/tokenizer.json")), b"[]");
    let f = SafetensorsFile::open(out.join("model.safetensors")).unwrap();
    assert_eq!(f.get("b").unwrap().data, [1, 2, 3]);
    assert_eq!(tmp_entries(tmp.path()), ["out"]);
    // A file in the way is refused too.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        OutputWriter::create(&file, layout_ab()),
        Err(Error::OutputExists { .. })
    ));
}

#[test]
fn drop_without_finish_removes_the_temporary_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let w = OutputWriter::create(&out, layout_ab()).unwrap();
    assert!(w.temp_path().is_dir());
    let name = w
        .temp_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(".out.amalgam-tmp-"), "{name}");
    w.write_tensor("a", &[0u8; 32]).unwrap();
    drop(w);
    assert!(tmp_entries(tmp.path()).is_empty());
    assert!(!out.exists());
}

#[test]
fn incomplete_and_out_of_range_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let w = OutputWriter::create(&out, layout_ab()).unwrap();
    assert!(w.write_tensor_part("a", 30, &[0u8; 3]).is_err());
    assert!(w.write_tensor_part("a", u64::MAX, &[0u8; 3]).is_err());
    assert!(w.write_tensor("nope", &[]).is_err());
    assert!(w.write_file("../escape", b"").is_err());
    assert!(w.write_file("/abs", b"").is_err());
    assert!(w.write_file("model.safetensors", b"").is_err());
    w.write_tensor_part("a", 0, &[1u8; 10]).unwrap();
    w.write_tensor_part("a", 20, &[1u8; 12]).unwrap();
    // Overlapping rewrite counts once.
    w.write_tensor_part("a", 5, &[1u8; 10]).unwrap();
    w.write_tensor("b", &[1, 2, 3]).unwrap();
    match w.finish() {
        Err(Error::IncompleteTensor {
            tensor,
            written,
            expected,
            ..
        }) => assert_eq!((tensor.as_str(), written, expected), ("a", 27, 32)),
        other => panic!("{other:?}"),
    }
    // finish() consumed the writer: the temporary folder is gone, no output appeared.
    assert!(tmp_entries(tmp.path()).is_empty());
}

#[test]
fn parallel_pieces() {
    let n = 64 * 1024;
    let layout = ShardLayout::plan(
        vec![t("big", DType::F32, &[n]), t("small", DType::I64, &[3])],
        &modern(1000),
    )
    .unwrap();
    let data: Vec<u8> = (0..n * 4).map(|i| (i * 31 % 251) as u8).collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let w = OutputWriter::create(&out, layout).unwrap();
    std::thread::scope(|s| {
        for (k, piece) in data.chunks(10_000).enumerate() {
            let w = &w;
            s.spawn(move || {
                w.write_tensor_part("big", (k * 10_000) as u64, piece)
                    .unwrap()
            });
        }
    });
    w.write_tensor("small", &[9u8; 24]).unwrap();
    w.finish().unwrap();
    let f = ModelFolder::open(&out).unwrap();
    assert_eq!(f.require("big").unwrap().data, &data[..]);
    assert_eq!(
        f.shard_of("small"),
        Some("model-00002-of-00002.safetensors")
    );
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn round_trip(
        specs in prop::collection::vec(
            (dtype_strategy(), prop::collection::vec(0usize..5, 0..4)), 0..12),
        limit in 0u64..300,
        legacy in any::<bool>(),
    ) {
        let tensors: Vec<PlannedTensor> = specs
            .iter()
            .enumerate()
            .map(|(i, (d, s))| t(&format!("t{}.{i}", 11 - i), *d, s))
            .collect();
        let spec = if legacy {
            ShardSpec { rule: ShardRule::Elements(limit), style: IndexStyle::Legacy, mergekit_version: "0.0.4.2".into() }
        } else {
            modern(limit)
        };
        let layout = ShardLayout::plan(tensors.clone(), &spec).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o");
        let w = OutputWriter::create(&out, layout).unwrap();
        let bytes = |i: usize, t: &PlannedTensor| -> Vec<u8> {
            (0..t.nbytes()).map(|k| (k as usize * 7 + i * 13) as u8).collect()
        };
        for (i, t) in tensors.iter().enumerate().rev() {
            w.write_tensor(&t.name, &bytes(i, t)).unwrap();
        }
        w.finish().unwrap();
        if tensors.is_empty() {
            prop_assert!(!legacy || out.join("model.safetensors.index.json").is_file());
            return Ok(());
        }
        let f = ModelFolder::open(&out).unwrap();
        prop_assert_eq!(f.names().len(), tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            let r = f.require(&t.name).unwrap();
            prop_assert_eq!(r.info.dtype, t.dtype);
            prop_assert_eq!(&r.info.shape, &t.shape);
            prop_assert_eq!(r.data, &bytes(i, t)[..]);
        }
    }
}

/// Tensors that each fit but together pass 2^64 bytes are refused, not summed with overflow.
#[test]
fn total_size_overflow_is_an_error() {
    let big = 1usize << 62;
    let ts: Vec<PlannedTensor> = (0..5)
        .map(|i| t(&format!("t{i}"), DType::U8, &[big]))
        .collect();
    match ShardLayout::plan(ts, &modern(0)) {
        Err(e) => assert!(e.to_string().contains("2^64"), "{e}"),
        Ok(_) => panic!("a layout of 5 x 2^62 bytes was planned"),
    }
}
