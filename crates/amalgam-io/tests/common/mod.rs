//! Helpers shared by the integration tests: fixture paths and the input-sample generators that
//! mirror `tests/fixtures/make_fixtures.py` (the outputs they are compared with come from there).
#![allow(dead_code)]

use std::path::PathBuf;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The workspace's `tests/fixtures/<rel>` (the seed-lerp reference outputs).
pub fn workspace_fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

pub fn read(path: impl Into<PathBuf>) -> Vec<u8> {
    let path = path.into();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Mirror of `f32_sample()` in make_fixtures.py.
pub fn f32_sample() -> Vec<u32> {
    let mut out = Vec::with_capacity(1 << 18);
    let mut state = 1u64;
    for se in 0u32..512 {
        let sign = se >> 8;
        let exp = se & 0xFF;
        let shifts: Vec<u32> = (13..25).chain([16]).collect();
        for s in shifts {
            let half = 1u32 << (s - 1);
            let lows = [0, 1, half - 1, half, half + 1, (1u32 << s) - 1];
            for variant in 0..2 {
                let hi = if variant == 0 {
                    (splitmix64(&mut state) & 0x7F_FFFF) as u32
                } else {
                    0x7F_FFFF
                };
                for lsb in 0..2u32 {
                    for &low in &lows {
                        let kept = ((hi as u64 >> (s + 1)) << (s + 1)) as u32;
                        let mant = (kept | ((lsb as u64) << s) as u32 | low) & 0x7F_FFFF;
                        out.push((sign << 31) | (exp << 23) | mant);
                    }
                }
            }
        }
        for _ in 0..200 {
            let r = splitmix64(&mut state);
            out.push((sign << 31) | (exp << 23) | (r & 0x7F_FFFF) as u32);
        }
    }
    assert_eq!(out.len(), 1 << 18);
    out
}

const F64_SPECIALS: [u64; 16] = [
    0x0000000000000000,
    0x8000000000000000,
    0x7FF0000000000000,
    0xFFF0000000000000,
    0x7FF8000000000000,
    0xFFF8000000000000,
    0x7FF0000000000001,
    0x7FFFFFFFFFFFFFFF,
    0x7FF4000000000000,
    0x7FF0020000000000,
    0xFFF0000020000000,
    0x0000000000000001,
    0x000FFFFFFFFFFFFF,
    0x0010000000000000,
    0x7FEFFFFFFFFFFFFF,
    0x3FF0000000000000,
];

/// Mirror of `f64_sample()` in make_fixtures.py.
pub fn f64_sample() -> Vec<u64> {
    let lows: [u64; 16] = [
        0,
        1,
        1 << 28,
        (1 << 28) + 1,
        (1 << 29) - 1,
        1 << 41,
        (1 << 41) + 1,
        (1 << 41) + (1 << 28),
        (1 << 41) - 1,
        1 << 44,
        (1 << 44) + 1,
        (1 << 44) + (1 << 28),
        (1 << 44) - 1,
        (1 << 42) - 1,
        (1 << 45) - 1,
        1 << 29,
    ];
    let mut out = F64_SPECIALS.to_vec();
    let mut state = 7u64;
    let mut k = 0u64;
    while out.len() < 65536 {
        let r = splitmix64(&mut state);
        let r2 = splitmix64(&mut state);
        let exp = match k % 4 {
            0 => 1023 + (r % 300) - 170,
            1 => r % 2048,
            2 => 1023 - 30 + (r % 50),
            _ => 1023 - 150 + (r % 278),
        };
        let mut mant = r2 & ((1 << 52) - 1);
        if k % 8 >= 4 {
            mant = ((mant >> 45) << 45) | lows[((r2 >> 60) & 15) as usize];
        }
        let sign = (r >> 63) & 1;
        out.push((sign << 63) | (exp << 52) | mant);
        k += 1;
    }
    out
}
