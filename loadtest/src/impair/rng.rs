//! The impairment's one source of randomness: SplitMix64, written out here so
//! a seed means the same draws whatever version of `rand` the workspace
//! resolves (its `SmallRng` promises no stable stream), which is what lets a
//! run be replayed from the seed it printed.

/// SplitMix64 (Steele, Lea and Flood, 2014): 64 bits of state, one add and
/// a mix per draw; statistically sound for loss and jitter draws, and
/// trivially reproducible.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose draws are a pure function of `seed`.
    pub(crate) const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in `[0, 1)`, from the top 53 bits (an f64's mantissa).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A seed for an independent stream, derived from this generator's
    /// seed and a `label` (so the two directions of a proxy differ).
    pub(crate) fn derive(seed: u64, label: u64) -> u64 {
        Self::new(seed ^ label.wrapping_mul(0xd6e8_feb8_6659_fd93)).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_the_published_splitmix64() {
        // First outputs for seed 0 from the reference implementation.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn unit_draws_stay_in_range_and_average_a_half() {
        let mut rng = SplitMix64::new(42);
        let n = 100_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let x = rng.unit();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        let mean = sum / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
