//! What the packet fuzz tests share: their seed and case count, fixed for
//! CI and widened by `FUZZ_SEED` / `FUZZ_CASES` (`cargo xtask bench` runs
//! them ten times longer with a fresh seed), and how a valid frame is
//! mutated.

use rand::{Rng, rngs::SmallRng};

/// `FUZZ_SEED`, else `default` (each test file has its own).
pub fn seed(default: u64) -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `FUZZ_CASES`, else `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `frame` changed one of four ways: a few bits flipped anywhere, cut
/// short, a few random bytes over its headers (from the Ethernet type to
/// `headers_end`), or grown with junk so that lengths in headers disagree.
pub fn mutate(rng: &mut SmallRng, frame: &[u8], headers_end: usize) -> Vec<u8> {
    let mut p = frame.to_vec();
    match rng.random_range(0..4) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => p.truncate(rng.random_range(0..p.len())),
        2 => {
            let start = rng.random_range(12..p.len().min(headers_end));
            for b in p.iter_mut().skip(start).take(rng.random_range(1..=4)) {
                *b = rng.random();
            }
        }
        _ => p.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
    }
    p
}
