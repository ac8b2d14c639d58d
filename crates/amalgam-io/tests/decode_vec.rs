//! `decode_f32_vec` (the merge hot path) agrees with the checked scalar conversion on every
//! F16 and BF16 bit pattern, whose agreement with PyTorch the conversion fixtures establish.

use amalgam_io::{convert, DType};

#[test]
fn every_f16_and_bf16_pattern() {
    let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let f16 = convert::decode_f32_vec(DType::F16, &bytes).unwrap();
    let bf16 = convert::decode_f32_vec(DType::BF16, &bytes).unwrap();
    for h in 0..=u16::MAX {
        let i = h as usize;
        assert_eq!(
            f16[i].to_bits(),
            convert::f16_to_f32(h).to_bits(),
            "f16 {h:#06x}"
        );
        assert_eq!(
            bf16[i].to_bits(),
            convert::bf16_to_f32(h).to_bits(),
            "bf16 {h:#06x}"
        );
    }
    // Unaligned input takes the fallback path and agrees too.
    let unaligned = &[&[0u8][..], &bytes[..]].concat()[1..];
    let f16u = convert::decode_f32_vec(DType::F16, unaligned).unwrap();
    assert_eq!(f16u.len(), f16.len());
    assert!(f16u
        .iter()
        .zip(&f16)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}
