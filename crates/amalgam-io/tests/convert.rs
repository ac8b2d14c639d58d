//! Float conversions against PyTorch, bit for bit (fixtures from tests/fixtures/make_fixtures.py).

mod common;

use amalgam_io::{convert, DType};
use common::*;

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&read(fixture("convert/manifest.json"))).unwrap()
}

fn all16() -> Vec<u16> {
    (0..=u16::MAX).collect()
}

fn bytes16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Reports the first mismatches in hex, so a failure says which patterns are wrong.
fn check<T: PartialEq + std::fmt::LowerHex + Copy>(
    what: &str,
    inputs: &[u64],
    got: &[T],
    want: &[T],
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| got[i] != want[i])
        .take(8)
        .map(|i| format!("in {:#x}: got {:#x} want {:#x}", inputs[i], got[i], want[i]))
        .collect();
    let count = (0..got.len()).filter(|&i| got[i] != want[i]).count();
    assert!(bad.is_empty(), "{what}: {count} mismatches, e.g. {bad:?}");
}

/// Runs `convert_bytes` on a whole fixture and checks it, plus every scalar helper result.
fn check_bytes(what: &str, from: DType, src: &[u8], to: DType, want: &[u8], inputs: &[u64]) {
    let mut dst = vec![0u8; want.len()];
    convert::convert_bytes(from, src, to, &mut dst).unwrap();
    match to.size() {
        2 => check(what, inputs, &u16s(&dst), &u16s(want)),
        4 => check(what, inputs, &u32s(&dst), &u32s(want)),
        _ => check(what, inputs, &u64s(&dst), &u64s(want)),
    }
}

#[test]
fn f16_all_patterns_to_f32() {
    let want = u32s(&read(fixture("convert/f16_to_f32.bin")));
    let inputs: Vec<u64> = (0..65536).collect();
    let scalar: Vec<u32> = all16()
        .iter()
        .map(|&h| convert::f16_to_f32(h).to_bits())
        .collect();
    check("f16_to_f32 scalar", &inputs, &scalar, &want);
    let mut slice = vec![0f32; 65536];
    convert::decode_f32(DType::F16, &bytes16(&all16()), &mut slice).unwrap();
    let slice: Vec<u32> = slice.iter().map(|x| x.to_bits()).collect();
    check("decode_f32 F16", &inputs, &slice, &want);
    check_bytes(
        "convert F16->F32",
        DType::F16,
        &bytes16(&all16()),
        DType::F32,
        &bytes32(&want),
        &inputs,
    );
}

#[test]
fn bf16_all_patterns_to_f32() {
    let want = u32s(&read(fixture("convert/bf16_to_f32.bin")));
    let inputs: Vec<u64> = (0..65536).collect();
    let scalar: Vec<u32> = all16()
        .iter()
        .map(|&h| convert::bf16_to_f32(h).to_bits())
        .collect();
    check("bf16_to_f32 scalar", &inputs, &scalar, &want);
    let mut slice = vec![0f32; 65536];
    convert::decode_f32(DType::BF16, &bytes16(&all16()), &mut slice).unwrap();
    let slice: Vec<u32> = slice.iter().map(|x| x.to_bits()).collect();
    check("decode_f32 BF16", &inputs, &slice, &want);
    check_bytes(
        "convert BF16->F32",
        DType::BF16,
        &bytes16(&all16()),
        DType::F32,
        &bytes32(&want),
        &inputs,
    );
    // A length that is not a multiple of the 16-element block exercises the tail loop too.
    let odd = 65531;
    let src = bytes16(&all16()[..odd]);
    check_bytes(
        "convert BF16->F32 (tail)",
        DType::BF16,
        &src,
        DType::F32,
        &bytes32(&want[..odd]),
        &inputs[..odd],
    );
}

#[test]
fn f16_all_patterns_to_bf16() {
    let want = u16s(&read(fixture("convert/f16_to_bf16.bin")));
    let inputs: Vec<u64> = (0..65536).collect();
    let scalar: Vec<u16> = all16().iter().map(|&h| convert::f16_to_bf16(h)).collect();
    check("f16_to_bf16 scalar", &inputs, &scalar, &want);
    check_bytes(
        "convert F16->BF16",
        DType::F16,
        &bytes16(&all16()),
        DType::BF16,
        &bytes16(&want),
        &inputs,
    );
}

#[test]
fn bf16_all_patterns_to_f16() {
    let want = u16s(&read(fixture("convert/bf16_to_f16.bin")));
    let inputs: Vec<u64> = (0..65536).collect();
    let scalar: Vec<u16> = all16().iter().map(|&h| convert::bf16_to_f16(h)).collect();
    check("bf16_to_f16 scalar", &inputs, &scalar, &want);
    check_bytes(
        "convert BF16->F16",
        DType::BF16,
        &bytes16(&all16()),
        DType::F16,
        &bytes16(&want),
        &inputs,
    );
}

#[test]
fn f16_top_patterns_to_f64() {
    let want = u64s(&read(fixture("convert/f16_7800_to_f64.bin")));
    let src: Vec<u16> = (0x7800..0x8000).collect();
    let inputs: Vec<u64> = src.iter().map(|&x| x as u64).collect();
    check_bytes(
        "convert F16->F64",
        DType::F16,
        &bytes16(&src),
        DType::F64,
        &bytes64(&want),
        &inputs,
    );
}

#[test]
fn f32_sample_matches_the_generator() {
    let s = f32_sample();
    let h = format!("{:016x}", fnv1a64(&bytes32(&s)));
    assert_eq!(h, manifest()["f32_sample_fnv1a64"].as_str().unwrap());
    let s = f64_sample();
    let h = format!("{:016x}", fnv1a64(&bytes64(&s)));
    assert_eq!(h, manifest()["f64_sample_fnv1a64"].as_str().unwrap());
}

#[test]
fn f32_sample_to_f16_and_bf16() {
    let s = f32_sample();
    let inputs: Vec<u64> = s.iter().map(|&x| x as u64).collect();
    let xs: Vec<f32> = s.iter().map(|&b| f32::from_bits(b)).collect();
    for (dtype, file) in [
        (DType::F16, "convert/f32_sample_to_f16.bin"),
        (DType::BF16, "convert/f32_sample_to_bf16.bin"),
    ] {
        let want = u16s(&read(fixture(file)));
        let scalar: Vec<u16> = xs
            .iter()
            .map(|&x| {
                if dtype == DType::F16 {
                    convert::f32_to_f16(x)
                } else {
                    convert::f32_to_bf16(x)
                }
            })
            .collect();
        check(&format!("f32->{dtype} scalar"), &inputs, &scalar, &want);
        let mut enc = vec![0u8; xs.len() * 2];
        convert::encode_f32(dtype, &xs, &mut enc).unwrap();
        check(&format!("encode_f32 {dtype}"), &inputs, &u16s(&enc), &want);
        check_bytes(
            &format!("convert F32->{dtype}"),
            DType::F32,
            &bytes32(&s),
            dtype,
            &bytes16(&want),
            &inputs,
        );
        // round_f32 is the decode of the narrowed value.
        let rounded: Vec<u32> = xs
            .iter()
            .map(|&x| convert::round_f32(dtype, x).to_bits())
            .collect();
        let mut dec = vec![0f32; want.len()];
        convert::decode_f32(dtype, &bytes16(&want), &mut dec).unwrap();
        let dec: Vec<u32> = dec.iter().map(|x| x.to_bits()).collect();
        check(&format!("round_f32 {dtype}"), &inputs, &rounded, &dec);
    }
}

#[test]
fn f32_sample_head_to_f64() {
    let s: Vec<u32> = f32_sample()[..8192].to_vec();
    let inputs: Vec<u64> = s.iter().map(|&x| x as u64).collect();
    let want = u64s(&read(fixture("convert/f32_sample_head_to_f64.bin")));
    let scalar: Vec<u64> = s
        .iter()
        .map(|&b| convert::f32_to_f64(f32::from_bits(b)).to_bits())
        .collect();
    check("f32_to_f64 scalar", &inputs, &scalar, &want);
    check_bytes(
        "convert F32->F64",
        DType::F32,
        &bytes32(&s),
        DType::F64,
        &bytes64(&want),
        &inputs,
    );
}

#[test]
fn f64_sample_to_f16_bf16_f32() {
    let s = f64_sample();
    let inputs = s.clone();
    let src = bytes64(&s);
    let want32 = u32s(&read(fixture("convert/f64_sample_to_f32.bin")));
    let scalar: Vec<u32> = s
        .iter()
        .map(|&b| convert::f64_to_f32(f64::from_bits(b)).to_bits())
        .collect();
    check("f64_to_f32 scalar", &inputs, &scalar, &want32);
    let mut dec = vec![0f32; s.len()];
    convert::decode_f32(DType::F64, &src, &mut dec).unwrap();
    let dec: Vec<u32> = dec.iter().map(|x| x.to_bits()).collect();
    check("decode_f32 F64", &inputs, &dec, &want32);
    check_bytes(
        "convert F64->F32",
        DType::F64,
        &src,
        DType::F32,
        &bytes32(&want32),
        &inputs,
    );

    let want16 = u16s(&read(fixture("convert/f64_sample_to_f16.bin")));
    let scalar: Vec<u16> = s
        .iter()
        .map(|&b| convert::f64_to_f16(f64::from_bits(b)))
        .collect();
    check("f64_to_f16 scalar", &inputs, &scalar, &want16);
    check_bytes(
        "convert F64->F16",
        DType::F64,
        &src,
        DType::F16,
        &bytes16(&want16),
        &inputs,
    );

    let wantb = u16s(&read(fixture("convert/f64_sample_to_bf16.bin")));
    let scalar: Vec<u16> = s
        .iter()
        .map(|&b| convert::f64_to_bf16(f64::from_bits(b)))
        .collect();
    check("f64_to_bf16 scalar", &inputs, &scalar, &wantb);
    check_bytes(
        "convert F64->BF16",
        DType::F64,
        &src,
        DType::BF16,
        &bytes16(&wantb),
        &inputs,
    );
}

#[test]
fn double_rounding_is_pytorchs() {
    // 1 + 2^-11 + 2^-40: one rounding gives 1 + 2^-10 (0x3C01), PyTorch (through f32) gives 1.0.
    let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    assert_eq!(convert::f64_to_f16(x), 0x3C00);
}

#[test]
fn length_errors_do_not_panic() {
    let mut out = [0f32; 3];
    assert!(convert::decode_f32(DType::BF16, &[0u8; 5], &mut out).is_err());
    assert!(convert::decode_f32(DType::I64, &[0u8; 24], &mut out).is_err());
    let mut dst = [0u8; 7];
    assert!(convert::encode_f32(DType::F16, &out, &mut dst).is_err());
    assert!(convert::convert_bytes(DType::BF16, &[0u8; 3], DType::F32, &mut [0u8; 6]).is_err());
    assert!(convert::convert_bytes(DType::BF16, &[0u8; 4], DType::F32, &mut [0u8; 6]).is_err());
    assert!(convert::convert_bytes(DType::I64, &[0u8; 8], DType::F32, &mut [0u8; 4]).is_err());
    let mut same = [0u8; 8];
    convert::convert_bytes(DType::I64, &[1u8; 8], DType::I64, &mut same).unwrap();
    assert_eq!(same, [1u8; 8]);
}
