//! MT19937, as PyTorch's CPU generator uses it (seeded like `torch.manual_seed`).
//!
//! SKELETON: filled in with the random methods.

/// The Mersenne Twister state.
#[derive(Debug, Clone)]
pub struct Mt19937 {
    mt: Box<[u32; 624]>,
    idx: usize,
}

impl Mt19937 {
    /// Seeds with the standard `init_genrand(seed & 0xffffffff)`.
    pub fn new(seed: u64) -> Self {
        let mut mt = Box::new([0u32; 624]);
        mt[0] = seed as u32;
        for i in 1..624 {
            mt[i] = 1812433253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: 624 }
    }

    /// Next raw 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.idx >= 624 {
            self.twist();
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[i] = v;
        }
        self.idx = 0;
    }
}
