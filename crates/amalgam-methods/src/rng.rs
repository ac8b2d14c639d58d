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
        let y = self.mt[self.idx];
        self.idx += 1;
        temper(y)
    }

    /// The next `out.len()` outputs of [`Mt19937::next_f32_unit`], in order.
    ///
    /// Why: a whole state block is tempered and scaled in one loop without the per-word
    /// "is the block used up" branch, which the compiler vectorises; DARE and DELLA draw one
    /// word per element of every tensor, on one thread, so this loop bounds them.
    pub fn fill_f32_unit(&mut self, out: &mut [f32]) {
        let mut rest = out;
        while !rest.is_empty() {
            if self.idx >= 624 {
                self.twist();
            }
            let take = (624 - self.idx).min(rest.len());
            let (head, tail) = rest.split_at_mut(take);
            for (o, &y) in head.iter_mut().zip(&self.mt[self.idx..self.idx + take]) {
                *o = unit_f32(temper(y));
            }
            self.idx += take;
            rest = tail;
        }
    }

    /// `out.len()` words of 64 Bernoulli draws ([`Mt19937::bernoulli`]) packed into bits,
    /// element `64·w + b` in bit `b` of `out[w]`; only the first `n` bits are drawn (the rest
    /// stay zero).
    ///
    /// Why: the same per-block loop as [`Mt19937::fill_f32_unit`]; a tensor's mask is drawn
    /// in 64-element groups through a small buffer, not one branchy call per element.
    pub fn fill_bernoulli_bits(&mut self, p: f32, n: usize, out: &mut [u64]) {
        let mut u = [0f32; 64];
        for (w, word) in out.iter_mut().enumerate() {
            let len = n.saturating_sub(w * 64).min(64);
            if len == 0 {
                *word = 0;
                continue;
            }
            self.fill_f32_unit(&mut u[..len]);
            *word = u[..len]
                .iter()
                .enumerate()
                .fold(0u64, |acc, (b, &x)| acc | (((x < p) as u64) << b));
        }
    }

    /// A float uniform in `[0, 1)` as PyTorch's `uniform_real_distribution<float>` draws it:
    /// the low 24 bits of one 32-bit word, times 2⁻²⁴ (exact in f32).
    #[inline]
    pub fn next_f32_unit(&mut self) -> f32 {
        unit_f32(self.next_u32())
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

/// MT19937's output tempering of one state word.
#[inline(always)]
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c_5680;
    y ^= (y << 15) & 0xefc6_0000;
    y ^= y >> 18;
    y
}

/// The low 24 bits of a word as a float in `[0, 1)` (exact in f32).
#[inline(always)]
fn unit_f32(y: u32) -> f32 {
    (y & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
}

/// One step of Marsaglia's xorshift64 on `s`, returning the new state: the tests' cheap source of
/// varied data (tie-heavy keys, rows with NaN), not a stream any method draws from.
#[cfg(test)]
pub(crate) fn xorshift64(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
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

    /// The block fills give the per-word calls' values, across block boundaries and with
    /// partial 64-bit groups (the reference is the per-word path, itself checked above).
    #[test]
    fn block_fills_match_the_per_word_draws() {
        for (seed, n, p) in [
            (0u64, 3000usize, 0.5f32),
            (7, 624, 0.3),
            (42, 1, 0.9),
            (3, 1300, 0.0),
        ] {
            let mut a = Mt19937::new(seed);
            let mut b = Mt19937::new(seed);
            // Start mid-block so the first fill is a partial one.
            for _ in 0..(seed as usize * 37) % 624 {
                a.next_u32();
                b.next_u32();
            }
            let mut u = vec![0f32; n];
            a.fill_f32_unit(&mut u);
            let want: Vec<f32> = (0..n).map(|_| b.next_f32_unit()).collect();
            assert_eq!(u, want);
            let mut bits = vec![0u64; n.div_ceil(64) + 1];
            a.fill_bernoulli_bits(p, n, &mut bits);
            for i in 0..bits.len() * 64 {
                let want = i < n && b.bernoulli(p);
                assert_eq!(
                    bits[i / 64] >> (i % 64) & 1 == 1,
                    want,
                    "seed {seed} element {i}"
                );
            }
            assert_eq!(a.next_u32(), b.next_u32());
        }
    }
}
