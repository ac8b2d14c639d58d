//! The torch.save (`pytorch_model.bin`) reader, against files written by torch
//! (`tests/fixtures/torch/make_fixtures.py`, versions in `versions.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use amalgam_io::{DType, Error, ModelFolder, SafetensorsFile};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch")
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/models")
        .join(name)
}

/// name -> (dtype, shape, bytes read through `read_part`, as the engine reads them).
type Tensors = BTreeMap<String, (DType, Vec<usize>, Vec<u8>)>;

fn tensors_of(folder: &ModelFolder) -> Tensors {
    folder
        .names()
        .into_iter()
        .map(|n| {
            let t = folder.require(n).unwrap();
            let mut buf = vec![0u8; t.data.len()];
            folder.read_part(t.data, &mut buf).unwrap();
            assert_eq!(buf, t.data, "{n}: positioned read and mapping differ");
            (n.to_string(), (t.info.dtype, t.info.shape.clone(), buf))
        })
        .collect()
}

fn file_tensors(f: &SafetensorsFile) -> Tensors {
    f.tensors()
        .iter()
        .map(|i| {
            let t = f.get(&i.name).unwrap();
            (i.name.clone(), (i.dtype, i.shape.clone(), t.data.to_vec()))
        })
        .collect()
}

/// A folder holding `.bin` fixture files of `model`, and nothing else.
fn bin_folder(model: &str) -> ModelFolder {
    ModelFolder::open(fixtures().join("models").join(model)).unwrap()
}

#[test]
fn bin_models_equal_their_safetensors() {
    // bf16, f16 and f32 single files; a sharded index; Parameters (some through
    // `_rebuild_from_type_v2`).
    for model in ["base", "base-fp16", "base-f32", "ft-a", "ft-b", "ft-c"] {
        let bin = tensors_of(&bin_folder(model));
        let st = tensors_of(&ModelFolder::open(golden(model)).unwrap());
        assert!(!bin.is_empty());
        assert_eq!(bin, st, "{model}: .bin and safetensors differ");
    }
    let sharded = bin_folder("ft-a");
    assert_eq!(sharded.files().len(), 2);
    let first = sharded.names()[0];
    assert_eq!(
        sharded.shard_of(first),
        Some("pytorch_model-00001-of-00002.bin")
    );
    let dtypes = |m: &str| {
        tensors_of(&bin_folder(m))
            .values()
            .map(|t| t.0)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        dtypes("base").into_iter().collect::<Vec<_>>(),
        [DType::BF16]
    );
    assert_eq!(
        dtypes("base-fp16").into_iter().collect::<Vec<_>>(),
        [DType::F16]
    );
    assert_eq!(
        dtypes("base-f32").into_iter().collect::<Vec<_>>(),
        [DType::F32]
    );
}

#[test]
fn protocol_4_zip64_and_training_checkpoint() {
    let want = tensors_of(&ModelFolder::open(golden("ft-c")).unwrap());
    // checkpoint.bin: the state dict is the `state_dict` entry, `epoch` is skipped.
    for f in ["proto4.bin", "zip64.bin", "checkpoint.bin"] {
        let got = file_tensors(&SafetensorsFile::open_torch(fixtures().join(f)).unwrap());
        assert_eq!(got, want, "{f}");
    }
}

#[test]
fn views_scalars_and_every_dtype() {
    let bin = SafetensorsFile::open_torch(fixtures().join("views.bin")).unwrap();
    let st = SafetensorsFile::open(fixtures().join("views.safetensors")).unwrap();
    let (got, want) = (file_tensors(&bin), file_tensors(&st));
    assert_eq!(got, want);
    // Pickle order, as torch.load yields it.
    let order: Vec<&str> = bin.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        order,
        ["big", "row2", "tail", "scalar", "empty", "mask", "i8", "f64", "bf16", "f8", "u16"]
    );
    assert_eq!(got["scalar"].1, Vec::<usize>::new());
    assert_eq!(got["f8"].0, DType::F8_E4M3);
    assert_eq!(got["u16"].0, DType::U16);
    // Views share the storage's bytes in the file.
    let big = bin.get("big").unwrap();
    let row2 = bin.get("row2").unwrap();
    assert_eq!(row2.info.start, big.info.start + 12 * 4);
}

fn open_err(name: &str) -> Error {
    SafetensorsFile::open_torch(fixtures().join("hostile").join(name)).unwrap_err()
}

#[test]
fn os_system_pickle_is_refused_without_running_it() {
    let marker = Path::new("/tmp/amalgam-pickle-pwned");
    let _ = std::fs::remove_file(marker);
    let e = open_err("os_system.bin");
    assert!(
        matches!(&e, Error::PickleGlobal { global, .. } if global == "posix.system"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("`posix.system`") && msg.contains("nothing was executed"),
        "{msg}"
    );
    assert!(!marker.exists());
    // The same refusal through a model folder.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("hostile/os_system.bin"),
        tmp.path().join("pytorch_model.bin"),
    )
    .unwrap();
    assert!(matches!(
        ModelFolder::open(tmp.path()),
        Err(Error::PickleGlobal { .. })
    ));
    assert!(!marker.exists());
}

#[test]
fn unknown_globals_are_named() {
    let e = open_err("unknown_global.bin");
    assert!(
        matches!(&e, Error::PickleGlobal { global, .. } if global == "builtins.eval"),
        "{e:?}"
    );
}

#[test]
fn bad_storages_and_tensors() {
    let e = open_err("huge_storage.bin");
    assert!(matches!(e, Error::TorchTensor { .. }), "{e:?}");
    assert!(
        e.to_string().contains("2305843009213693952 elements"),
        "{e}"
    );
    let e = open_err("offset_oob.bin");
    assert!(matches!(e, Error::TorchTensor { .. }), "{e:?}");
    assert!(e.to_string().contains("past its 24 bytes"), "{e}");
    let e = open_err("missing_storage.bin");
    assert!(
        e.to_string().contains("storage `9` is not a stored member"),
        "{e}"
    );
    let e = open_err("strided.bin");
    assert!(e.to_string().contains("strided (non-contiguous)"), "{e}");
    let e = open_err("legacy.bin");
    assert!(matches!(e, Error::LegacyTorch { .. }), "{e:?}");
    assert!(e.to_string().contains("legacy torch format"), "{e}");
    let e = open_err("deflated.bin");
    assert!(e.to_string().contains("compressed"), "{e}");
}

#[test]
fn truncated_and_mutated_archives_fail_cleanly() {
    let src =
        std::fs::read(fixtures().join("models/ft-a/pytorch_model-00002-of-00002.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.bin");
    // Every truncation point in the last 2 KiB (central directory, end records), then every
    // 97th byte: each is an error, never a panic.
    let tail = (src.len().saturating_sub(2048)..src.len()).collect::<Vec<_>>();
    for cut in tail.into_iter().chain((0..src.len()).step_by(97)) {
        std::fs::write(&p, &src[..cut]).unwrap();
        assert!(SafetensorsFile::open_torch(&p).is_err(), "cut at {cut}");
    }
    let e = {
        std::fs::write(&p, &src[..src.len() - 10]).unwrap();
        SafetensorsFile::open_torch(&p).unwrap_err()
    };
    assert!(matches!(e, Error::TorchZip { .. }), "{e:?}");
    // Seeded byte mutations: anything may happen but a panic or an out-of-bounds tensor.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..400 {
        let mut m = src.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() % m.len() as u64) as usize;
            m[i] = next() as u8;
        }
        std::fs::write(&p, &m).unwrap();
        if let Ok(f) = SafetensorsFile::open_torch(&p) {
            for t in f.tensors() {
                let r = f.get(&t.name).unwrap();
                assert_eq!(r.data.len(), t.numel() * t.dtype.size());
            }
        }
    }
}

#[test]
fn safetensors_preferred_over_bin() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::copy(
        fixtures().join("models/base/pytorch_model.bin"),
        d.join("pytorch_model.bin"),
    )
    .unwrap();
    let f = ModelFolder::open(d).unwrap();
    assert_eq!(f.files()[0].path(), d.join("pytorch_model.bin"));
    std::fs::copy(
        golden("ft-c").join("model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    let f = ModelFolder::open(d).unwrap();
    assert_eq!(f.files()[0].path(), d.join("model.safetensors"));
}

#[test]
fn malformed_pickles() {
    // Hand-made data.pkl members in a stored zip: each must be refused with a reason.
    let cases: &[(&[u8], &str)] = &[
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00a", "truncated"),
        (b"\x80\x02]q\x00.", "not a state dict"),
        (b"\x80\x02}q\x00h\x07.", "never stored"),
        (b"\x80\x02}(\x81.", "NEWOBJ"),
        (
            b"\x80\x02ccollections\nOrderedDict\n(K\x01tR.",
            "OrderedDict called with",
        ),
        (b"\x80\x02ctorch\nFloatStorage\n)R.", "a storage class"),
        (b"\x80\x02}X\x01\x00\x00\x00aQ.", "persistent id"),
        (b"\x80\x02}K\x01K\x02s.", "key is an int"),
        (b"\x80\x02s.", "underflow"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (pkl, want)) in cases.iter().enumerate() {
        let p = tmp.path().join(format!("{i}.bin"));
        std::fs::write(&p, stored_zip(&[("archive/data.pkl", pkl)])).unwrap();
        let e = SafetensorsFile::open_torch(&p).unwrap_err();
        assert!(matches!(e, Error::Pickle { .. }), "case {i}: {e:?}");
        assert!(e.to_string().contains(want), "case {i}: {e}");
    }
    // A deeply nested pickle (a million TUPLE1) is refused, not a stack overflow.
    let mut deep = b"\x80\x02K\x00".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    let p = tmp.path().join("deep.bin");
    std::fs::write(&p, stored_zip(&[("archive/data.pkl", &deep)])).unwrap();
    assert!(SafetensorsFile::open_torch(&p)
        .unwrap_err()
        .to_string()
        .contains("not a state dict"));
}

/// A zip of stored members (no CRC: the reader does not check it).
fn stored_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let off = out.len() as u32;
        let n = name.len() as u16;
        let len = data.len() as u32;
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(len.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(*data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(len.to_le_bytes());
        central.extend(len.to_le_bytes());
        central.extend(n.to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(off.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    let cd_len = central.len() as u32;
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    let count = members.len() as u16;
    out.extend(count.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend(cd_len.to_le_bytes());
    out.extend(cd_off.to_le_bytes());
    out.extend([0, 0]);
    out
}
