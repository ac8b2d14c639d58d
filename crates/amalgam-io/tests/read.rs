//! Header validation: one error per violation, and no input can make the parser panic.

use std::path::Path;

use amalgam_io::{parse_header, Error, SafetensorsFile, MAX_HEADER_SIZE};
use proptest::prelude::*;

/// A file made of `header` (length-prefixed) and `data_len` data bytes.
fn st(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend((0..data_len).map(|i| i as u8));
    v
}

fn parse(bytes: &[u8]) -> Result<Vec<(String, usize, usize)>, Error> {
    parse_header(Path::new("/m/x.safetensors"), bytes)
        .map(|(t, _)| t.into_iter().map(|t| (t.name, t.start, t.end)).collect())
}

fn err(bytes: &[u8]) -> Error {
    let e = parse(bytes).unwrap_err();
    assert!(e.to_string().contains("/m/x.safetensors"), "{e}");
    e
}

const A2: &str = r#""a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}"#;

#[test]
fn valid_with_leading_whitespace_and_padding() {
    let h = format!("\n  {{\"__metadata__\":{{\"format\":\"pt\"}},{A2}}}   ");
    let bytes = st(&h, 2);
    let (t, meta) = parse_header(Path::new("x"), &bytes).unwrap();
    assert_eq!(t[0].start, 8 + h.len());
    assert_eq!(meta.unwrap()["format"], "pt");
}

#[test]
fn too_short() {
    assert!(matches!(err(&[1, 2, 3]), Error::TooShort { len: 3, .. }));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.safetensors");
    std::fs::write(&p, b"").unwrap();
    let e = SafetensorsFile::open(&p).unwrap_err();
    assert!(matches!(e, Error::TooShort { len: 0, .. }), "{e}");
    assert!(e.to_string().contains("empty.safetensors"));
}

#[test]
fn header_length() {
    let mut b = st("{}", 0);
    b[0] = 200;
    assert!(matches!(
        err(&b),
        Error::HeaderLength {
            header_len: 200,
            ..
        }
    ));
    let mut b = vec![0u8; 16];
    b[..8].copy_from_slice(&(MAX_HEADER_SIZE + 1).to_le_bytes());
    assert!(matches!(err(&b), Error::HeaderLength { .. }));
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(err(&b), Error::HeaderLength { .. }));
}

#[test]
fn invalid_utf8() {
    let mut b = st("{\"a\u{e9}\":1}", 0);
    b[11] = 0xFF;
    assert!(matches!(err(&b), Error::HeaderUtf8 { valid_up_to: 3, .. }));
}

#[test]
fn invalid_json() {
    for h in [
        "{\"a\":",
        "[]",
        "{\"a\":{\"dtype\":\"U8\"}}",
        "{\"__metadata__\":{\"k\":1}}",
        "{\"__metadata__\":[]}",
        "{} x",
    ] {
        assert!(matches!(err(&st(h, 0)), Error::HeaderJson { .. }), "{h}");
    }
}

#[test]
fn unknown_dtype() {
    let h = r#"{"w":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}}"#;
    match err(&st(h, 2)) {
        Error::UnknownDtype { tensor, dtype, .. } => {
            assert_eq!((tensor.as_str(), dtype.as_str()), ("w", "F7"))
        }
        e => panic!("{e}"),
    }
}

#[test]
fn size_mismatch() {
    let h = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let e = err(&st(h, 8));
    assert!(matches!(e, Error::SizeMismatch { actual: 8, .. }), "{e}");
    assert!(e.to_string().contains("`w`"));
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
    assert!(matches!(err(&st(h, 8)), Error::SizeMismatch { .. }));
}

#[test]
fn offsets_out_of_the_file() {
    let h = r#"{"w":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}"#;
    assert!(matches!(
        err(&st(h, 4)),
        Error::OffsetsOutOfBounds {
            end: 9,
            data_len: 4,
            ..
        }
    ));
    let h = r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}}"#;
    assert!(matches!(err(&st(h, 4)), Error::OffsetsOutOfBounds { .. }));
}

#[test]
fn overlap() {
    let h = format!(r#"{{{A2},"b":{{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}}}"#);
    match err(&st(&h, 3)) {
        Error::Overlap { first, second, .. } => {
            assert_eq!((first.as_str(), second.as_str()), ("a", "b"))
        }
        e => panic!("{e}"),
    }
}

#[test]
fn holes() {
    // In the middle...
    let h = format!(r#"{{{A2},"b":{{"dtype":"U8","shape":[1],"data_offsets":[3,4]}}}}"#);
    assert!(matches!(
        err(&st(&h, 4)),
        Error::Hole {
            begin: 2,
            end: 3,
            ..
        }
    ));
    // ... and at the end.
    assert!(matches!(
        err(&st(&format!("{{{A2}}}"), 5)),
        Error::Hole {
            begin: 2,
            end: 5,
            ..
        }
    ));
}

#[test]
fn duplicate_name() {
    let h = format!("{{{A2},{A2}}}");
    assert!(matches!(err(&st(&h, 2)), Error::DuplicateTensor { tensor, .. } if tensor == "a"));
}

#[test]
fn empty_tensors_share_offsets() {
    let h = r#"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"U8","shape":[],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[0],"data_offsets":[1,1]}}"#;
    assert_eq!(parse(&st(h, 1)).unwrap().len(), 3);
}

/// A valid file to mutate.
fn seed() -> Vec<u8> {
    let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"a":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}"#;
    st(h, 11)
}

fn check_ok(bytes: &[u8]) {
    if let Ok(ts) = parse(bytes) {
        for (_, s, e) in ts {
            assert!(s <= e && e <= bytes.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_ok(&bytes);
    }

    #[test]
    fn random_headers_never_panic(h in "\\PC{0,200}", data in 0usize..64) {
        check_ok(&st(&h, data));
    }

    #[test]
    fn mutated_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = seed();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if truncate {
            let n = cut.index(b.len());
            b.truncate(n);
        }
        check_ok(&b);
    }
}
