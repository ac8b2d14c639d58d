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
    /// Why: DARE draws one word per element of every tensor on one thread (the stream is
    /// sequential), so this loop bounds it. A draw compares integers (see [`below_threshold`])
    /// and 64 of them are tempered, compared and packed in vector registers at once.
    pub fn fill_bernoulli_bits(&mut self, p: f32, n: usize, out: &mut [u64]) {
        bernoulli_words(self, below_threshold(p), n, out);
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
    #[inline(always)]
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

/// The `t` for which `u < p` is `(word & 0xff_ffff) < t`, where `u` is the word's
/// [`unit_f32`]: `u = k·2⁻²⁴` for the integer `k`, and `k·2⁻²⁴ < p` iff `k < ⌈p·2²⁴⌉` (`p·2²⁴` is
/// exact in f32). NaN compares false, as `u < NaN` does; `p` above 1 saturates (every draw
/// succeeds, as it would in f32).
fn below_threshold(p: f32) -> u32 {
    let scaled = (p as f64 * 16_777_216.0).ceil();
    if scaled.is_nan() || scaled <= 0.0 {
        0
    } else {
        scaled.min(16_777_216.0) as u32
    }
}

/// [`Mt19937::fill_bernoulli_bits`] with the threshold of [`below_threshold`], compiled for the
/// widest vectors the CPU has: a 64-word group inside the state block is tempered, compared and
/// packed without a branch; a group across a twist goes word by word.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn bernoulli_words(g: &mut Mt19937, t: u32, n: usize, out: &mut [u64]) {
    for (w, word) in out.iter_mut().enumerate() {
        let len = n.saturating_sub(w * 64).min(64);
        if len == 0 {
            *word = 0;
            continue;
        }
        if g.idx >= 624 {
            g.twist();
        }
        let group = g.mt.get(g.idx..g.idx + 64).filter(|_| len == 64);
        *word = match group {
            Some(words) => {
                let mut bits = 0u64;
                for (b, &y) in words.iter().enumerate() {
                    bits |= (((temper(y) & 0x00ff_ffff) < t) as u64) << b;
                }
                g.idx += 64;
                bits
            }
            None => (0..len).fold(0u64, |acc, b| {
                acc | ((((g.next_u32()) & 0x00ff_ffff) < t) as u64) << b
            }),
        };
    }
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

    /// The integer threshold decides every 24-bit key as the float comparison `u < p` does, at
    /// the keys next to the threshold (where rounding it the wrong way would show) and at both
    /// ends, for random probabilities, subnormal ones, 0, 1, above 1 and NaN.
    #[test]
    fn threshold_matches_the_float_comparison() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut ps: Vec<f32> = (0..20_000)
            .map(|_| (xorshift64(&mut s) >> 40) as f32 / 16_777_216.0 + 1e-9)
            .collect();
        ps.extend([
            0.0,
            1.0,
            1.5,
            1e-9,
            1e-40,
            0.5,
            0.1,
            0.6601562,
            f32::NAN,
            -0.0,
        ]);
        for p in ps {
            let t = below_threshold(p);
            for k in [0, 1, t.saturating_sub(1), t, t + 1, 0x00ff_ffff] {
                let k = k.min(0x00ff_ffff);
                assert_eq!(k < t, unit_f32(k) < p, "p {p:e} key {k} threshold {t}");
            }
        }
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
            (11, 5000, 1.0),
            (5, 2000, 1e-9),
            (9, 4000, 0.1),
            (13, 700, 0.6601562),
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
