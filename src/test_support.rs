//! Deterministic test data shared by the unit tests, the integration tests, the fuzz targets
//! and the benchmarks (through `ml_dash::testing`): one seedable generator, no `rand` crate.

/// xorshift64: a small, seedable, deterministic generator.
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`; small and zero seeds are spread so that every seed gives a
    /// different, non-degenerate stream.
    pub fn new(seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        if s == 0 {
            s = 1; // 0 is a fixed point of xorshift
        }
        let mut r = XorShift(s);
        for _ in 0..4 {
            r.next_u64();
        }
        r
    }

    /// A generator that starts exactly at `state` (not spread; 0 is replaced by 1), for data
    /// that golden values were computed from.
    pub fn from_state(state: u64) -> Self {
        XorShift(state.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// Uniform float in `[0, 1)` with 24 bits of precision.
    pub fn unit_f32(&mut self) -> f32 {
        let bits = u32::try_from(self.next_u64() >> 40).expect("24 bits fit in u32");
        // 24 bits are exact in an f32 mantissa.
        #[allow(clippy::cast_precision_loss)]
        let f = bits as f32 / (1u32 << 24) as f32;
        f
    }

    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// `len` pseudo-random (incompressible) bytes from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}
