//! Per-actor random streams.
//!
//! Every actor draws from its own ChaCha8 stream whose key is derived from the run seed and the
//! actor's stable name ("thread:app/3", "device:nic"). Adding an actor therefore never shifts
//! the numbers another actor sees, and iteration order never matters.

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic random stream owned by one actor.
#[derive(Clone, Debug)]
pub struct RngStream(ChaCha8Rng);

/// The stream of actor `name` in a run with `seed`.
pub fn stream(seed: u64, name: &str) -> RngStream {
    let mut key = [0u8; 32];
    let mut h = splitmix64(seed ^ 0x6e75_6d61_7369_6d00);
    for chunk in key.chunks_mut(8) {
        for b in name.bytes() {
            h = splitmix64(h ^ u64::from(b));
        }
        h = splitmix64(h);
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    RngStream(ChaCha8Rng::from_seed(key))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl RngStream {
    /// A uniform value in `0..n` (`n > 0`), by Lemire's multiply-shift: one draw, no loop,
    /// stable across platforms, which is what determinism needs. Ranges that fit 32 bits
    /// (every page range up to 16 TiB) take a 32-bit draw, half the ChaCha output of a
    /// 64-bit one; a value's probability is then off by at most n / 2^32 of itself.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= u64::from(u32::MAX) {
            below_from(self.0.next_u32(), n)
        } else {
            ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }

    /// What `out.len()` calls of [`RngStream::below`]`(n)` give (`0 < n ≤ u32::MAX`), with
    /// the stream's words drawn in one go and the multiplies vectorised.
    pub fn below_each(&mut self, n: u32, out: &mut [u32]) {
        self.words(out);
        for x in out {
            *x = below_from(*x, u64::from(n)) as u32;
        }
    }

    /// True with probability `p` (0..=1), from 53 random bits.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        chance_from(self.0.next_u64(), p)
    }

    /// The stream's next `out.len()` 32-bit words, in the order draws take them: a
    /// [`RngStream::below`] of a range that fits 32 bits takes one ([`below_from`]), a
    /// [`RngStream::chance`] two, the first its low half ([`chance_from`]).
    pub fn words(&mut self, out: &mut [u32]) {
        self.0.fill(out);
    }
}

/// [`RngStream::below`]`(n)` of the word it draws (`n ≤ u32::MAX`).
#[inline]
pub fn below_from(word: u32, n: u64) -> u64 {
    (u64::from(word) * n) >> 32
}

/// [`RngStream::chance`]`(p)` of the 64 bits it draws.
#[inline]
pub fn chance_from(bits: u64, p: f64) -> bool {
    ((bits >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |seed, name| {
            let mut s = stream(seed, name);
            (0..4).map(|_| s.below(1 << 40)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, "thread:a/0"), draw(7, "thread:a/0"));
        assert_ne!(draw(7, "thread:a/0"), draw(7, "thread:a/1"));
        assert_ne!(draw(7, "thread:a/0"), draw(8, "thread:a/0"));
    }

    /// The batch draws the words one-at-a-time draws would, whatever came before (a 64-bit
    /// draw, a batch ending inside ChaCha's block) and after.
    #[test]
    fn below_each_gives_the_values_of_below_one_at_a_time() {
        for (n, len) in [(1u32, 5usize), (1000, 1), (1 << 20, 1024), (u32::MAX, 333), (7, 4099)] {
            let (mut one, mut batch) = (stream(3, "t"), stream(3, "t"));
            let mut out = vec![0; len];
            for _ in 0..3 {
                let _ = (one.chance(0.5), batch.chance(0.5));
                let want: Vec<u32> = (0..len).map(|_| one.below(u64::from(n)) as u32).collect();
                batch.below_each(n, &mut out);
                assert_eq!(out, want, "n = {n}, len = {len}");
            }
            assert_eq!(one.below(1 << 40), batch.below(1 << 40), "the streams stay in step");
        }
    }

    #[test]
    fn below_stays_in_range() {
        let mut s = stream(1, "x");
        assert!((0..10_000).all(|_| s.below(3) < 3));
    }
}
