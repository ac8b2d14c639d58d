//! Model folder discovery and index validation.

mod common;

use std::path::Path;

use amalgam_io::{
    DType, Error, IndexStyle, ModelFolder, OutputWriter, PlannedTensor, ShardLayout, ShardRule,
    ShardSpec,
};
use common::*;

/// Writes a model with tensors a (F32[2]) and b (U8[3]) in two shards plus an index.
fn sharded(dir: &Path) {
    let layout = ShardLayout::plan(
        vec![
            PlannedTensor {
                name: "a".into(),
                dtype: DType::F32,
                shape: vec![2],
            },
            PlannedTensor {
                name: "b".into(),
                dtype: DType::U8,
                shape: vec![3],
            },
        ],
        &ShardSpec {
            rule: ShardRule::Bytes(1),
            style: IndexStyle::Modern,
            mergekit_version: "0.1.5".into(),
        },
    )
    .unwrap();
    let w = OutputWriter::create(dir, layout).unwrap();
    w.write_tensor("a", &[0u8; 8]).unwrap();
    w.write_tensor("b", &[1, 2, 3]).unwrap();
    w.write_file("config.json", b"{}").unwrap();
    w.finish().unwrap();
}

#[test]
fn sharded_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    sharded(&d);
    let f = ModelFolder::open(&d).unwrap();
    assert_eq!(f.names(), ["a", "b"]);
    assert_eq!(f.files().len(), 2);
    assert_eq!(f.shard_of("b"), Some("model-00002-of-00002.safetensors"));
    assert_eq!(f.require("b").unwrap().data, [1, 2, 3]);
    assert!(matches!(f.require("c"), Err(Error::TensorNotFound { .. })));
    assert_eq!(f.aux_file("config.json"), Some(d.join("config.json")));
    assert_eq!(f.aux_file("tokenizer.json"), None);
    assert_eq!(f.path(), d);
}

#[test]
fn seed_lerp_expert_in_four_shards() {
    let d = workspace_fixture("seed-lerp/models/expert-0");
    let f = ModelFolder::open(&d).unwrap();
    assert_eq!(f.files().len(), 4);
    let idx: serde_json::Value =
        serde_json::from_slice(&read(d.join("model.safetensors.index.json"))).unwrap();
    let map = idx["weight_map"].as_object().unwrap();
    assert_eq!(
        f.names(),
        map.keys().map(String::as_str).collect::<Vec<_>>()
    );
    for (k, v) in map {
        assert_eq!(f.shard_of(k), v.as_str());
        assert_eq!(f.get(k).unwrap().info.name, *k);
    }
}

#[test]
fn single_file_and_index_precedence() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    sharded(&d);
    // A stray model.safetensors next to an index: the index wins, as in mergekit.
    let mut st = 8u64.to_le_bytes().to_vec();
    st.extend_from_slice(b"{}      ");
    std::fs::write(d.join("model.safetensors"), &st).unwrap();
    assert_eq!(ModelFolder::open(&d).unwrap().files().len(), 2);
    std::fs::remove_file(d.join("model.safetensors.index.json")).unwrap();
    let f = ModelFolder::open(&d).unwrap();
    assert_eq!(f.files().len(), 1);
    assert!(f.names().is_empty());
    assert_eq!(f.shard_of("a"), None);
}

fn index_error(index: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    sharded(&d);
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    match ModelFolder::open(&d) {
        Err(e @ Error::Index { .. }) => {
            assert!(e.to_string().contains("model.safetensors.index.json"));
            e.to_string()
        }
        other => panic!("{index}: {other:?}"),
    }
}

#[test]
fn index_validation() {
    assert!(index_error("{nope").contains("not JSON"));
    assert!(index_error("{\"metadata\": {}}").contains("weight_map"));
    assert!(index_error("{\"weight_map\": []}").contains("weight_map"));
    assert!(index_error("{\"weight_map\": {\"a\": 3}}").contains("`a`"));
    assert!(
        index_error("{\"weight_map\": {\"a\": \"missing.safetensors\"}}")
            .contains("missing.safetensors")
    );
    let e = index_error("{\"weight_map\": {\"a\": \"model-00002-of-00002.safetensors\"}}");
    assert!(
        e.contains("`a` is not in shard `model-00002-of-00002.safetensors`"),
        "{e}"
    );
}

#[test]
fn corrupt_shard_is_reported_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");
    sharded(&d);
    let p = d.join("model-00002-of-00002.safetensors");
    let mut b = read(&p);
    b.pop();
    std::fs::write(&p, b).unwrap();
    let e = ModelFolder::open(&d).unwrap_err();
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn no_model_empty_pickle_and_missing_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    assert!(matches!(
        ModelFolder::open(d),
        Err(Error::NoModelFiles { .. })
    ));
    // A shard without its index is not a model (as for mergekit); `pytorch_model.bin` is
    // opened as a torch.save archive, and an empty one is not one.
    std::fs::write(d.join("pytorch_model-00001-of-00002.bin"), b"").unwrap();
    assert!(matches!(
        ModelFolder::open(d),
        Err(Error::NoModelFiles { .. })
    ));
    std::fs::write(d.join("pytorch_model.bin"), b"").unwrap();
    assert!(matches!(ModelFolder::open(d), Err(Error::TorchZip { .. })));
    let missing = d.join("nowhere");
    let e = ModelFolder::open(&missing).unwrap_err();
    assert!(matches!(e, Error::MissingFolder { .. }));
    assert!(e.to_string().contains("nowhere"));
}
