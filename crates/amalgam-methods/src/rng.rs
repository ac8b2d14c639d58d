//! MT19937, as PyTorch's CPU generator uses it (seeded like `torch.manual_seed`).
//!
//! `--random-seed N` makes mergekit call `torch.manual_seed(N)`, after which every random draw on
//! CPU comes from one MT19937 stream. Reproducing that stream (and the exact way each
//! distribution turns a 32-bit word into a sample) is what makes DARE and DELLA outputs
//! bit-identical to mergekit's.

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
    #[inline]
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

    /// A float uniform in `[0, 1)` as PyTorch's `uniform_real_distribution<float>` draws it:
    /// the low 24 bits of one 32-bit word, times 2⁻²⁴ (exact in f32).
    #[inline]
    pub fn next_f32_unit(&mut self) -> f32 {
        let r = self.next_u32() & 0x00ff_ffff;
        r as f32 * (1.0 / 16_777_216.0)
    }

    /// One Bernoulli draw as `torch.bernoulli` makes it on CPU for a tensor of probabilities:
    /// one 32-bit word per element, success iff `u < p`, where `p` is the probability as stored
    /// in the probability tensor's dtype (so a bf16 `0.66` is `0.66015625`) and widened to f32.
    #[inline]
    pub fn bernoulli(&mut self, p: f32) -> bool {
        self.next_f32_unit() < p
    }

    /// The state update, in place and in index order as the reference does it (for `i >= 227`
    /// the `i + 397` word is already the new one, and the last step reads the new `mt[0]`),
    /// with the index wrap-around split into three loops instead of a modulo per word.
    fn twist(&mut self) {
        const N: usize = 624;
        const M: usize = 397;
        #[inline(always)]
        fn step(cur: u32, next: u32, far: u32) -> u32 {
            let y = (cur & 0x8000_0000) | (next & 0x7fff_ffff);
            far ^ (y >> 1) ^ (if y & 1 != 0 { 0x9908_b0df } else { 0 })
        }
        let mt = &mut *self.mt;
        for i in 0..N - M {
            mt[i] = step(mt[i], mt[i + 1], mt[i + M]);
        }
        for i in N - M..N - 1 {
            mt[i] = step(mt[i], mt[i + 1], mt[i + M - N]);
        }
        mt[N - 1] = step(mt[N - 1], mt[0], mt[M - 1]);
        self.idx = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference MT19937's 10,000th output for the default seed 5489 (C++11
    /// `std::mt19937`, [rand.predef]), and its first output.
    #[test]
    fn matches_the_standard_engine() {
        let mut g = Mt19937::new(5489);
        assert_eq!(g.next_u32(), 3_499_211_612);
        for _ in 1..9_999 {
            g.next_u32();
        }
        assert_eq!(g.next_u32(), 4_123_659_995);
    }
}
