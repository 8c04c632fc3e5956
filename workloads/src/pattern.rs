//! Access patterns: which pages of its range a thread or device touches next.

use sim_core::config::PatternKind;
use sim_core::engine::RngStream;
use sim_core::engine::rng::{below_from, chance_from};
use sim_core::sched::AccessPattern;

/// Every page of the range equally likely.
pub struct Uniform {
    len: u64,
}

impl AccessPattern for Uniform {
    fn fill(&mut self, rng: &mut RngStream, out: &mut [u32]) {
        rng.below_each(u32::try_from(self.len).expect("page ranges are PageIdx (u32) sized"), out);
    }
}

/// Pages in address order, wrapping around (a streaming kernel like STREAM or memset).
pub struct Sequential {
    len: u64,
    pos: u64,
}

impl AccessPattern for Sequential {
    fn fill(&mut self, _: &mut RngStream, out: &mut [u32]) {
        for o in out {
            *o = self.pos as u32;
            self.pos = (self.pos + 1) % self.len;
        }
    }
}

/// A hot head of the range gets most touches, the cold rest the others.
pub struct HotCold {
    len: u64,
    hot: u64,
    p_hot: f64,
    /// The random words of one fill, kept so that a fill allocates nothing.
    words: Vec<u32>,
}

impl AccessPattern for HotCold {
    /// Each touch is a chance() (two words) and a below() (one): the fill draws all the
    /// words at once and spends three per touch, the values one-at-a-time draws give.
    fn fill(&mut self, rng: &mut RngStream, out: &mut [u32]) {
        let (len, hot) = (self.len, self.hot);
        if hot == len {
            return rng.below_each(u32::try_from(len).expect("page ranges are PageIdx (u32) sized"), out);
        }
        self.words.resize(3 * out.len(), 0);
        rng.words(&mut self.words);
        for (o, w) in out.iter_mut().zip(self.words.chunks_exact(3)) {
            let bits = u64::from(w[0]) | u64::from(w[1]) << 32;
            *o = if chance_from(bits, self.p_hot) { below_from(w[2], hot) } else { hot + below_from(w[2], len - hot) }
                as u32;
        }
    }
}

/// The pattern `kind` over a range of `len` pages.
pub fn build(kind: PatternKind, len: u64, hot_fraction: f64, hot_probability: f64) -> Box<dyn AccessPattern> {
    assert!(len > 0, "patterns need a non-empty range");
    match kind {
        PatternKind::Uniform => Box::new(Uniform { len }),
        PatternKind::Sequential => Box::new(Sequential { len, pos: 0 }),
        PatternKind::HotCold => {
            Box::new(HotCold { len, hot: hot_pages(len, hot_fraction), p_hot: hot_probability, words: Vec::new() })
        }
    }
}

/// The hot head of a hot-cold range of `len` pages: at least one page, at most all.
pub fn hot_pages(len: u64, hot_fraction: f64) -> u64 {
    ((len as f64 * hot_fraction).ceil() as u64).clamp(1, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::engine::stream;

    fn draw(kind: PatternKind, len: u64) -> Vec<u32> {
        let mut p = build(kind, len, 0.1, 0.9);
        let mut out = vec![0; 10_000];
        p.fill(&mut stream(3, "t"), &mut out);
        out
    }

    #[test]
    fn patterns_stay_in_range_and_have_their_shape() {
        let u = draw(PatternKind::Uniform, 100);
        assert!(u.iter().all(|&o| o < 100));
        let s = draw(PatternKind::Sequential, 7);
        assert_eq!(&s[..9], &[0, 1, 2, 3, 4, 5, 6, 0, 1]);
        let h = draw(PatternKind::HotCold, 1000);
        let hot = h.iter().filter(|&&o| o < 100).count() as f64 / h.len() as f64;
        assert!((0.88..0.93).contains(&hot), "hot share {hot}");
        assert!(h.iter().all(|&o| o < 1000));
    }

    /// The batched fill gives what one chance() and one below() per touch give, whatever
    /// came before in the stream (a batch ending inside ChaCha's block, an odd word) and
    /// leaves the stream where they would.
    #[test]
    fn hot_cold_fill_gives_the_values_of_draws_one_at_a_time() {
        for (len, batch) in [(1000u64, 1usize), (1000, 333), (1 << 20, 4096), (7, 5), (u64::from(u32::MAX), 100)] {
            let mut p = build(PatternKind::HotCold, len, 0.1, 0.9);
            let (mut one, mut batched) = (stream(5, "t"), stream(5, "t"));
            let hot = hot_pages(len, 0.1);
            let mut out = vec![0; batch];
            for round in 0..4 {
                if round % 2 == 1 {
                    let _ = (one.below(3), batched.below(3));
                }
                let want: Vec<u32> = (0..batch)
                    .map(|_| if one.chance(0.9) { one.below(hot) } else { hot + one.below(len - hot) } as u32)
                    .collect();
                p.fill(&mut batched, &mut out);
                assert_eq!(out, want, "len {len}, batch {batch}, round {round}");
            }
            assert_eq!(one.below(1 << 40), batched.below(1 << 40), "the streams stay in step");
        }
    }
}
