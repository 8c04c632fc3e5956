//! The touch patterns: which page a thread touches next, and its think time between
//! touches.

use crate::sys::now_ns;

/// A small fast generator (splitmix64) for the touch patterns.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The next page offset of a pattern over `len` pages (`pos` is the sequential cursor).
pub fn next_page(pattern: guest::Pattern, len: u64, pos: &mut u64, rng: &mut Rng) -> u64 {
    match pattern {
        guest::Pattern::Uniform => rng.below(len),
        guest::Pattern::Sequential => {
            let p = *pos % len.max(1);
            *pos = p + 1;
            p
        }
        guest::Pattern::HotCold { hot_pages, hot_probability } => {
            if hot_pages >= len || rng.chance(hot_probability) {
                rng.below(hot_pages.min(len))
            } else {
                hot_pages + rng.below(len - hot_pages)
            }
        }
    }
}

/// Spins for `ns` of guest time (a thread's think time between touches).
pub fn spin_ns(ns: u64) {
    if ns > 0 {
        let end = now_ns() + ns;
        while now_ns() < end {
            std::hint::spin_loop();
        }
    }
}
