//! Randomness for the rest of weir.
//!
//! Everything random outside the seam comes from here: seeded generators for
//! code that must replay (the simulated disk's crash choices, test workloads),
//! and the simulator-aware entropy source for the rest. `madsim::rand` is the
//! simulation's seeded generator under `--cfg madsim` and the OS's otherwise.

use madsim::rand::Rng as _;

/// A small, fast, seeded generator (SplitMix64). Deterministic across builds
/// and platforms, which is all the seam needs: not for cryptography.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound`; `bound` must be positive.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "SeededRng::below(0)");
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

/// A fresh random u64: the simulation's seeded stream under madsim, OS
/// entropy otherwise. Use it to seed a [`SeededRng`].
pub fn random_u64() -> u64 {
    madsim::rand::thread_rng().gen()
}
