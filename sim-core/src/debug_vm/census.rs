//! The page census the checks hold the bookkeeping against: pages per node, absent pages,
//! zero-page and KSM mappings, counted from the PTEs.
//!
//! Recounting every page after every event was nearly all of a checked run's time (numa01:
//! half a millisecond per event, 120 times the event itself), and most events change few
//! PTEs. So the counts are kept per 2 MiB chunk of pages, and a check recounts only the
//! chunks whose PTEs may have changed since the last one: a chunk whose slots moved (a THP
//! split, a grow of the last chunk), or whose slots' blocks [`Slots::take_changes`] reports.
//! The kept counts are only as good as that report, so [`ChunkCensus::verify`] recounts
//! everything from scratch and compares, which the checker does at a run's start and end and
//! every [`super::FULL_EVERY`] checks.

use crate::machine::NUMA_NO_NODE;
use crate::mm::{CHUNK, PG_KSM, PTE_ZERO, PageIdx, Pages, Pte, Slots};

/// One pass over `n` pages from `first`: pages per node (NUMA_NO_NODE: not present),
/// zero-page and KSM mappings, a compact chunk's pages counted together.
pub(super) struct Census {
    pub by_nid: [u64; 256],
    pub zero: u64,
    pub ksm: u64,
    /// Pages counted.
    pages: u64,
}

impl Census {
    pub fn of(pages: &Pages, first: PageIdx, n: u64) -> Self {
        let mut c = Census { by_nid: [0; 256], zero: 0, ksm: 0, pages: n };
        for (slots, each) in pages.spans(first, n) {
            c.add(pages.slots.ptes(slots), each);
        }
        c
    }

    /// Counts `ptes`, each standing for `each` pages. Memory is mostly in long runs on one
    /// node without zero-page or KSM mappings: such a run of 64 is one pass and one
    /// addition, not 64 that each wait for the last (the histogram's store-to-load chain was
    /// most of a recount's time). The folds have no early exit, so the compiler vectorises
    /// them.
    fn add(&mut self, ptes: &[Pte], each: u64) {
        let has = |p: &Pte, flag: u8| u64::from(p.flags & flag != 0);
        for run in ptes.chunks(64) {
            let nid = run[0].nid;
            let (same, flags) = run.iter().fold((true, 0), |(same, f), p| (same & (p.nid == nid), f | p.flags));
            if same {
                self.by_nid[nid as usize] += run.len() as u64 * each;
            } else {
                for p in run {
                    self.by_nid[p.nid as usize] += each;
                }
            }
            if flags & (PTE_ZERO | PG_KSM) != 0 {
                self.zero += run.iter().map(|p| has(p, PTE_ZERO)).sum::<u64>() * each;
                self.ksm += run.iter().map(|p| has(p, PG_KSM)).sum::<u64>() * each;
            }
        }
    }

    /// The counts, with the pages on no node of an `nr_nodes`-node machine folded into one.
    fn totals(&self, nr_nodes: usize) -> Totals {
        let by_nid = self.by_nid[..nr_nodes].to_vec();
        let absent = self.by_nid[NUMA_NO_NODE as usize];
        let off_node = self.pages - absent - by_nid.iter().sum::<u64>();
        Totals { by_nid, absent, zero: self.zero, ksm: self.ksm, off_node, ksm_print: 0 }
    }
}

/// A sum over the KSM pages of `n` pages from `first` of a mix of each page's number and
/// node: while it and ksmd's books stay the same, so does what the KSM check finds.
fn ksm_print(pages: &Pages, first: PageIdx, n: u64) -> u64 {
    let ksm = pages.runs(first, n).filter(|&(_, _, s)| pages.slots.pte(s).flags & PG_KSM != 0);
    ksm.fold(0u64, |sum, (page, _, s)| {
        let key = (u64::from(page) << 8 | u64::from(pages.slots.pte(s).nid)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        sum.wrapping_add(key ^ key >> 29)
    })
}

/// Page counts over a range of pages.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Totals {
    /// Present pages per node.
    pub by_nid: Vec<u64>,
    /// Pages without a frame (never touched, or unmapped).
    pub absent: u64,
    /// Pages mapping the shared zero page.
    pub zero: u64,
    /// Pages flagged PageKsm().
    pub ksm: u64,
    /// Present pages whose node the machine does not have.
    pub off_node: u64,
    /// A fingerprint of which pages are KSM pages on which node ([`ksm_print`]).
    pub ksm_print: u64,
}

impl Totals {
    fn apply(&mut self, c: &Totals, add: bool) {
        let f = |t: &mut u64, v: u64| *t = if add { *t + v } else { *t - v };
        for (t, &v) in self.by_nid.iter_mut().zip(&c.by_nid) {
            f(t, v);
        }
        f(&mut self.absent, c.absent);
        f(&mut self.zero, c.zero);
        f(&mut self.ksm, c.ksm);
        f(&mut self.off_node, c.off_node);
        self.ksm_print =
            if add { self.ksm_print.wrapping_add(c.ksm_print) } else { self.ksm_print.wrapping_sub(c.ksm_print) };
    }
}

/// What a chunk's counts were taken over: its slots and pages then.
#[derive(Clone, Copy, Default, PartialEq)]
struct Key {
    first_slot: usize,
    slots: usize,
    pages: usize,
}

/// The census kept per chunk between checks, and its sum.
#[derive(Default)]
pub(super) struct ChunkCensus {
    nr_nodes: usize,
    keys: Vec<Key>,
    counts: Vec<Totals>,
    totals: Totals,
    /// [`Slots::take_changes`]'s state and answers.
    marks: Vec<u8>,
    changed: Vec<bool>,
    /// Blocks settled since the last update, whose claim the checker verifies.
    pub settled: Vec<usize>,
    /// Per chunk: whether the last update recounted it (its PTEs or frames may have changed).
    pub recounted: Vec<bool>,
    /// Whether the last update found a chunk's KSM pages changed (which, or on which node).
    pub ksm_changed: bool,
}

impl ChunkCensus {
    /// Brings the counts up to date with the PTEs: recounts the chunks that may have changed.
    pub fn update(&mut self, pages: &mut Pages, nr_nodes: usize) {
        if self.nr_nodes != nr_nodes {
            *self =
                Self { nr_nodes, totals: Totals { by_nid: vec![0; nr_nodes], ..Totals::default() }, ..Self::default() };
        }
        pages.slots.take_changes(&mut self.marks, &mut self.changed, &mut self.settled);
        self.keys.resize(pages.chunks(), Key::default());
        self.counts.resize(pages.chunks(), Totals { by_nid: vec![0; nr_nodes], ..Totals::default() });
        self.ksm_changed = false;
        self.recounted.clear();
        self.recounted.resize(pages.chunks(), false);
        for c in 0..pages.chunks() {
            let first = c * CHUNK;
            let slots = pages.chunk_slots(first as PageIdx);
            let key = Key { first_slot: slots.start, slots: slots.len(), pages: (pages.len() - first).min(CHUNK) };
            let blocks = Slots::block_of(slots.start)..=Slots::block_of(slots.end - 1);
            if key != self.keys[c] || self.changed.get(blocks).is_none_or(|b| b.contains(&true)) {
                self.recount(pages, c, key);
            }
        }
    }

    fn recount(&mut self, pages: &Pages, c: usize, key: Key) {
        let (first, n) = ((c * CHUNK) as PageIdx, key.pages as u64);
        let mut fresh = Census::of(pages, first, n).totals(self.nr_nodes);
        if fresh.ksm > 0 {
            fresh.ksm_print = ksm_print(pages, first, n);
        }
        let was = &self.counts[c];
        self.ksm_changed |= (was.ksm, was.ksm_print) != (fresh.ksm, fresh.ksm_print);
        self.totals.apply(&self.counts[c], false);
        self.totals.apply(&fresh, true);
        self.counts[c] = fresh;
        self.keys[c] = key;
        self.recounted[c] = true;
    }

    /// The counts over every page.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Pages of `first..first + n` that have a folio of their own: present, not the zero
    /// page. Whole chunks from the kept counts, the ends counted.
    pub fn with_folio(&self, pages: &Pages, first: PageIdx, n: u64) -> u64 {
        let (start, end) = (first as usize, first as usize + n as usize);
        let (whole_from, whole_to) = (start.next_multiple_of(CHUNK), end / CHUNK * CHUNK);
        let counted = |from: usize, to: usize| {
            let t = Census::of(pages, from as PageIdx, (to - from) as u64).totals(self.nr_nodes);
            (to - from) as u64 - t.absent - t.zero
        };
        if whole_from >= whole_to {
            return counted(start, end);
        }
        let whole: u64 = self.counts[whole_from / CHUNK..whole_to / CHUNK]
            .iter()
            .zip(&self.keys[whole_from / CHUNK..])
            .map(|(t, k)| k.pages as u64 - t.absent - t.zero)
            .sum();
        counted(start, whole_from) + whole + counted(whole_to, end)
    }

    /// The page ranges of the chunks holding KSM pages.
    pub fn ksm_chunks(&self) -> impl Iterator<Item = (PageIdx, u64)> + '_ {
        let chunks = self.counts.iter().zip(&self.keys).enumerate();
        chunks.filter(|(_, (t, _))| t.ksm > 0).map(|(c, (_, k))| ((c * CHUNK) as PageIdx, k.pages as u64))
    }

    /// Recounts every page and compares with the kept counts: what differs, if anything.
    pub fn verify(&self, pages: &Pages) -> Option<String> {
        let mut fresh = Census::of(pages, 0, pages.len() as u64).totals(self.nr_nodes);
        if fresh.ksm > 0 {
            fresh.ksm_print = ksm_print(pages, 0, pages.len() as u64);
        }
        (fresh != self.totals).then(|| format!("kept counts {:?}, recounted {fresh:?}", self.totals))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::{PTE_YOUNG, Pte};

    /// Random PTE writes on a page array with THP-compact and 4 KiB chunks, blocks settling
    /// now and then: after each round the kept counts equal a recount, per range as in total.
    #[test]
    fn kept_counts_follow_every_write_through_the_funnels() {
        let mut pages = Pages::default();
        pages.grow(3 * CHUNK as u64 + 100, false);
        pages.grow(4 * CHUNK as u64, true);
        for page in 0..2 * CHUNK as PageIdx {
            *pages.pte_mut(page) = Pte { nid: 0, flags: PTE_YOUNG };
        }
        let (mut census, mut x, mut settled_seen) = (ChunkCensus::default(), 12345u64, false);
        let mut next = |n: usize| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as usize % n
        };
        for round in 0..40 {
            for _ in 0..next(50) {
                let page = next(pages.len()) as PageIdx;
                let flags = [PTE_YOUNG, PTE_YOUNG, PG_KSM, PTE_ZERO, 0][next(5)];
                let nid = [0, 1, NUMA_NO_NODE][next(3)];
                if next(8) == 0 {
                    let s = pages.chunk_slots(page).start;
                    *pages.slots.pte_mut(s) = Pte { nid, flags };
                } else {
                    *pages.pte_mut(page) = Pte { nid, flags };
                }
            }
            if round % 3 == 0 {
                let all = pages.len() as u64;
                pages.settle(0, all);
            }
            census.update(&mut pages, 2);
            settled_seen |= !census.settled.is_empty();
            assert_eq!(census.verify(&pages), None, "round {round}");
            let (first, n) = (next(pages.len()) as PageIdx, next(3 * CHUNK) as u64);
            let n = n.min((pages.len() - first as usize) as u64);
            let t = Census::of(&pages, first, n).totals(2);
            assert_eq!(census.with_folio(&pages, first, n), n - t.absent - t.zero, "round {round}");
        }
        assert!(census.totals().ksm > 0 && census.totals().by_nid.iter().all(|&n| n > 0));
        assert!(settled_seen, "the test settles blocks");
        census.update(&mut pages, 2);
        assert!(census.recounted.iter().all(|&r| !r), "nothing written: nothing recounted");
    }
}
