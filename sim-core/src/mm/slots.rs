//! The state behind each slot of [`Pages`](super::Pages) (struct page + the PTE that maps
//! it), struct-of-arrays, and the settled blocks that let most touches skip it.
//!
//! A touch of a page that is mapped, young, accessible and not copy-on-write reads nothing
//! but the page's node, and in a long run most pages are in that state most of the time.
//! Slots are grouped in blocks of 512; a block whose pages all are, on one node, is
//! *settled*, and its node is kept in one byte per block (a 256 GiB buffer's blocks take
//! 128 KiB, which stays in the CPU's L2), so a touch there does not read the PTE array: a
//! cache miss per touch on a large machine. Writing a PTE unsettles its block; a block is
//! checked again after enough touches found it unsettled. What a touch sees is the same
//! either way: settling changes the speed, never a result.

use super::{PTE_COW, PTE_PROTNONE, PTE_YOUNG, Pte};
use crate::engine::hugepages::reserve_exact_huge;
use crate::engine::prefetch;
use crate::machine::{NUMA_NO_NODE, Nid};

const BLOCK_SHIFT: u32 = 9;
const BLOCK: usize = 1 << BLOCK_SHIFT;
/// `unsettled` holds the touches counted since the block's last check in its low bits and
/// the check's back-off in the top three: a block is checked after `32 << backoff` touches,
/// and a failed check doubles that (up to 4096), so a block that cannot settle (its pages on
/// two nodes) costs one 1 KiB pass per 4096 touches.
const COUNT_BITS: u32 = 13;
const COUNT_MASK: u16 = (1 << COUNT_BITS) - 1;
const FIRST_CHECK_SHIFT: u16 = 5;
const BACKOFF_MAX: u16 = 7;
/// A block's `settled` byte: unsettled, and not written since the invariant checker last
/// looked ([`Slots::take_changes`]). 0 is unsettled and written (or new) since; `1 + nid`
/// is settled. Only `--check-invariants` ever stores it, and a touch reads it as unsettled,
/// so it changes nothing a run does.
const SEEN: u8 = u8::MAX;

#[derive(Default, Debug)]
pub struct Slots {
    /// Written only through [`Slots::pte_mut`] and [`Slots::ptes_mut`], which unsettle.
    pte: Vec<Pte>,
    /// `folio_last_cpupid()`: who took the last hinting fault on the page.
    pub last_cpupid: Vec<u32>,
    /// FOLL_PIN pins held (`folio_maybe_dma_pinned()` when nonzero), saturating. Written
    /// only through [`Slots::pins_mut`].
    pins: Vec<u8>,
    /// Calls of [`Slots::pins_mut`]: while it stays, no pin count changed.
    pin_writes: u64,
    /// Extra references beyond mappings and pins (FOLL_GET), saturating.
    pub refs: Vec<u8>,
    /// Frame generation: bumped when the page moves to a new frame, so a secondary MMU entry
    /// can tell it still points at the old one. Written only through [`Slots::new_frame`].
    frame_gen: Vec<u16>,
    /// Content class, for KSM: pages with equal nonzero content are identical.
    pub content: Vec<u16>,
    /// Per block of 512 slots: 1 + the node its pages are all settled on, or 0 (or
    /// [`SEEN`]) when unsettled.
    settled: Vec<u8>,
    /// Per block: touches that found it unsettled since its last check, and the back-off.
    unsettled: Vec<u16>,
}

/// One slot's state, by value.
#[derive(Clone, Copy)]
pub(super) struct SlotState {
    pub pte: Pte,
    pub last_cpupid: u32,
    pub pins: u8,
    pub refs: u8,
    pub frame_gen: u16,
    pub content: u16,
}

/// A page never touched.
pub(super) const UNTOUCHED: SlotState = SlotState {
    pte: Pte { nid: NUMA_NO_NODE, flags: 0 },
    last_cpupid: super::CPUPID_UNSET,
    pins: 0,
    refs: 0,
    frame_gen: 0,
    content: 0,
};

/// The node a block's `settled` byte says its pages are settled on, if it says so.
#[inline]
fn settled_on(mark: u8) -> Option<Nid> {
    let nid = mark.wrapping_sub(1);
    (nid < SEEN - 1).then_some(nid)
}

/// Whether a touch of a page with this PTE only reads its node: no fault (mapped, not
/// protnone), no copy (not KSM or the zero page) and no accessed bit to set.
#[inline]
fn touch_reads_only_nid(pte: Pte) -> bool {
    pte.nid != NUMA_NO_NODE && pte.flags & PTE_YOUNG != 0 && pte.flags & (PTE_PROTNONE | PTE_COW) == 0
}

impl Slots {
    pub(super) fn len(&self) -> usize {
        self.pte.len()
    }

    pub(super) fn capacity(&self) -> usize {
        self.pte.capacity()
    }

    /// Everything slot `s` holds.
    pub(super) fn get(&self, s: usize) -> SlotState {
        SlotState {
            pte: self.pte[s],
            last_cpupid: self.last_cpupid[s],
            pins: self.pins[s],
            refs: self.refs[s],
            frame_gen: self.frame_gen[s],
            content: self.content[s],
        }
    }

    /// Makes room for `n` more slots, exactly (no doubling of large arrays).
    /// The new memory is advised for the host's huge pages before it is written, so that a
    /// random touch does not also walk the host's page table.
    pub(super) fn reserve_exact(&mut self, n: usize) {
        reserve_exact_huge(&mut self.pte, n);
        reserve_exact_huge(&mut self.last_cpupid, n);
        reserve_exact_huge(&mut self.pins, n);
        reserve_exact_huge(&mut self.refs, n);
        reserve_exact_huge(&mut self.frame_gen, n);
        reserve_exact_huge(&mut self.content, n);
        let blocks = (self.len() + n).div_ceil(BLOCK);
        self.settled.reserve_exact(blocks.saturating_sub(self.settled.len()));
        self.unsettled.reserve_exact(blocks.saturating_sub(self.unsettled.len()));
    }

    /// Appends `n` slots holding `st`.
    pub(super) fn push(&mut self, n: usize, st: SlotState) {
        if let Some(last) = self.settled.get_mut(self.pte.len() >> BLOCK_SHIFT) {
            *last = 0;
        }
        let len = self.len() + n;
        self.pte.resize(len, st.pte);
        self.last_cpupid.resize(len, st.last_cpupid);
        self.pins.resize(len, st.pins);
        self.refs.resize(len, st.refs);
        self.frame_gen.resize(len, st.frame_gen);
        self.content.resize(len, st.content);
        self.settled.resize(len.div_ceil(BLOCK), 0);
        self.unsettled.resize(len.div_ceil(BLOCK), 0);
    }

    pub(super) fn bytes(&self) -> usize {
        fn b<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        b(&self.pte)
            + b(&self.last_cpupid)
            + b(&self.pins)
            + b(&self.refs)
            + b(&self.frame_gen)
            + b(&self.content)
            + b(&self.settled)
            + b(&self.unsettled)
    }

    /// Slot `s`'s PTE.
    #[inline]
    pub fn pte(&self, s: usize) -> Pte {
        self.pte[s]
    }

    /// The PTEs of `slots`, to read.
    #[inline]
    pub fn ptes(&self, slots: std::ops::Range<usize>) -> &[Pte] {
        &self.pte[slots]
    }

    /// Slot `s`'s PTE, to change it: its block is no longer settled.
    #[inline]
    pub fn pte_mut(&mut self, s: usize) -> &mut Pte {
        self.settled[s >> BLOCK_SHIFT] = 0;
        &mut self.pte[s]
    }

    /// Slot `s` moves to a new frame (migration, a copy on write, a KSM merge): its frame
    /// generation is bumped, and its PTE is returned to change.
    #[inline]
    pub fn new_frame(&mut self, s: usize) -> &mut Pte {
        self.frame_gen[s] = self.frame_gen[s].wrapping_add(1);
        self.pte_mut(s)
    }

    /// Slot `s`'s FOLL_PIN pins.
    #[inline]
    pub fn pins(&self, s: usize) -> u8 {
        self.pins[s]
    }

    /// Every slot's pins, to read.
    pub fn all_pins(&self) -> &[u8] {
        &self.pins
    }

    /// Slot `s`'s pins, to change.
    pub fn pins_mut(&mut self, s: usize) -> &mut u8 {
        self.pin_writes += 1;
        &mut self.pins[s]
    }

    /// How many times a pin count was written, for the invariant checker.
    pub fn pin_writes(&self) -> u64 {
        self.pin_writes
    }

    /// Slot `s`'s frame generation.
    #[inline]
    pub fn frame_gen(&self, s: usize) -> u16 {
        self.frame_gen[s]
    }

    /// The frame generations of `slots`.
    #[inline]
    pub fn frame_gens(&self, slots: std::ops::Range<usize>) -> &[u16] {
        &self.frame_gen[slots]
    }

    /// Starts loading slot `s`'s frame generation into the cache.
    #[inline]
    pub fn prefetch_frame_gen(&self, s: usize) {
        prefetch(&self.frame_gen, s);
    }

    /// Every slot's PTE, to change them all: no block stays settled.
    pub fn ptes_mut(&mut self) -> &mut [Pte] {
        self.settled.fill(0);
        &mut self.pte
    }

    /// Starts loading slot `s`'s PTE into the cache.
    #[inline]
    pub fn prefetch_pte(&self, s: usize) {
        prefetch(&self.pte, s);
    }

    /// The node a touch of slot `s` reads, when its block is settled: then the touch would
    /// find the page mapped, young, accessible and not copy-on-write, and change nothing.
    #[inline]
    pub fn settled_nid(&self, s: usize) -> Option<Nid> {
        settled_on(self.settled[s >> BLOCK_SHIFT])
    }

    /// Counts a touch that found slot `s`'s block unsettled; enough of them check the block.
    #[inline]
    pub fn note_unsettled_touch(&mut self, s: usize) {
        let b = s >> BLOCK_SHIFT;
        let u = self.unsettled[b] + 1;
        let backoff = u >> COUNT_BITS;
        if u & COUNT_MASK >= 1 << (FIRST_CHECK_SHIFT + backoff) {
            self.check_block(b, backoff);
        } else {
            self.unsettled[b] = u;
        }
    }

    /// Checks the blocks holding `slots` now, as enough unsettled touches would.
    pub fn settle(&mut self, slots: std::ops::Range<usize>) {
        for b in slots.start >> BLOCK_SHIFT..slots.end.div_ceil(BLOCK) {
            if settled_on(self.settled[b]).is_none() {
                self.check_block(b, self.unsettled[b] >> COUNT_BITS);
            }
        }
    }

    /// Settles block `b` if a touch of any of its pages would only read one node.
    #[cold]
    fn check_block(&mut self, b: usize, backoff: u16) {
        let ptes = &self.pte[b * BLOCK..((b + 1) * BLOCK).min(self.pte.len())];
        let nid = ptes[0].nid;
        if ptes.iter().all(|&p| p.nid == nid && touch_reads_only_nid(p)) {
            self.settled[b] = nid + 1;
            self.unsettled[b] = 0;
        } else {
            self.unsettled[b] = (backoff + 1).min(BACKOFF_MAX) << COUNT_BITS;
        }
    }

    /// The first slot of a settled block among `blocks` that a touch would not find as its
    /// block claims, if any: for the invariant check.
    pub fn settled_claim_broken(&self, blocks: impl IntoIterator<Item = usize>) -> Option<usize> {
        blocks.into_iter().find_map(|b| {
            let nid = settled_on(self.settled[b])?;
            let ptes = &self.pte[b * BLOCK..((b + 1) * BLOCK).min(self.pte.len())];
            // The fold has no early exit, so it is vectorised; the search runs only on a
            // broken block.
            let holds = ptes.iter().fold(true, |ok, &p| ok & (p.nid == nid) & touch_reads_only_nid(p));
            if holds { None } else { ptes.iter().position(|&p| p.nid != nid || !touch_reads_only_nid(p)) }
                .map(|i| b * BLOCK + i)
        })
    }

    /// Blocks of 512 slots.
    pub fn blocks(&self) -> usize {
        self.settled.len()
    }

    /// The block holding slot `s`.
    pub fn block_of(s: usize) -> usize {
        s >> BLOCK_SHIFT
    }

    /// For the invariant checker's incremental counts: sets `changed[b]` for every block
    /// whose PTEs may differ from what they were at the last call, and lists in `settled`
    /// the blocks settled since. `last` keeps each block's byte between calls. A block is
    /// unchanged when nothing wrote it (its byte is still [`SEEN`]), or when it was settled
    /// on one node then and is now: its PTEs may have been written and settled again in
    /// between, but every page is then present on that node and neither KSM nor the zero
    /// page either way, which is all the checker counts.
    pub fn take_changes(&mut self, last: &mut Vec<u8>, changed: &mut Vec<bool>, settled: &mut Vec<usize>) {
        last.resize(self.settled.len(), 0);
        changed.clear();
        settled.clear();
        for (b, (mark, was)) in self.settled.iter_mut().zip(last.iter_mut()).enumerate() {
            changed.push(*mark == 0 || *mark != *was);
            if *mark == 0 {
                *mark = SEEN;
            } else if *mark != *was && *mark != SEEN {
                settled.push(b);
            }
            *was = *mark;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn young_on(nid: Nid) -> Pte {
        Pte { nid, flags: PTE_YOUNG }
    }

    fn slots(n: usize) -> Slots {
        let mut s = Slots::default();
        s.reserve_exact(n);
        s.push(n, UNTOUCHED);
        s
    }

    fn touch_until_checked(s: &mut Slots, slot: usize) {
        for _ in 0..1 << FIRST_CHECK_SHIFT {
            s.note_unsettled_touch(slot);
        }
    }

    #[test]
    fn a_block_settles_once_every_page_is_young_on_one_node_and_a_write_unsettles_it() {
        let mut s = slots(2 * BLOCK + 10);
        for p in s.ptes_mut() {
            *p = young_on(1);
        }
        assert_eq!(s.settled_nid(5), None, "nothing settles before a check");
        touch_until_checked(&mut s, 5);
        assert_eq!(s.settled_nid(BLOCK - 1), Some(1));
        assert_eq!(s.settled_nid(BLOCK), None, "blocks settle one at a time");
        s.pte_mut(7).flags |= PTE_PROTNONE;
        assert_eq!(s.settled_nid(0), None);
        assert_eq!(s.settled_claim_broken(0..s.blocks()), None);
        touch_until_checked(&mut s, 2 * BLOCK + 3);
        assert_eq!(s.settled_nid(2 * BLOCK + 9), Some(1), "a partly used last block settles too");
        s.push(1, UNTOUCHED);
        assert_eq!(s.settled_nid(2 * BLOCK), None, "a new untouched slot unsettles its block");
        s.settle(BLOCK..BLOCK + 1);
        assert_eq!(s.settled_nid(BLOCK), Some(1), "settle() checks at once");
        s.pte[BLOCK + 3].flags = 0;
        assert_eq!(s.settled_claim_broken(0..s.blocks()), Some(BLOCK + 3), "a write past pte_mut() is found");
    }

    #[test]
    fn take_changes_reports_written_new_and_newly_settled_blocks_once() {
        let (mut last, mut changed, mut settled) = (Vec::new(), Vec::new(), Vec::new());
        let mut s = slots(3 * BLOCK);
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!(changed, [true; 3], "every block is new at the first call");
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!(changed, [false; 3], "nothing written since");
        assert_eq!(s.settled_nid(0), None, "a block the checker has seen is still unsettled");
        *s.pte_mut(BLOCK + 1) = young_on(0);
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!(changed, [false, true, false]);
        for p in s.ptes_mut() {
            *p = young_on(1);
        }
        s.take_changes(&mut last, &mut changed, &mut settled);
        touch_until_checked(&mut s, 0);
        assert_eq!(s.settled_nid(0), Some(1), "a seen block settles as any other");
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!((&changed[..], &settled[..]), (&[true, false, false][..], &[0][..]));
        s.pte_mut(3).flags |= PTE_PROTNONE;
        s.pte_mut(3).flags &= !PTE_PROTNONE;
        s.settle(0..1);
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!(changed, [false; 3], "settled again on the same node: nothing the checker counts changed");
        for i in 0..BLOCK {
            *s.pte_mut(i) = young_on(0);
        }
        s.settle(0..1);
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!((&changed[..], &settled[..]), (&[true, false, false][..], &[0][..]), "settled on another node");
        s.push(1, UNTOUCHED);
        s.take_changes(&mut last, &mut changed, &mut settled);
        assert_eq!(changed, [false, false, false, true], "a new slot's block");
    }

    #[test]
    fn a_block_that_cannot_settle_is_checked_ever_less_often() {
        let mut s = slots(BLOCK);
        for (i, p) in s.ptes_mut().iter_mut().enumerate() {
            *p = young_on((i % 2) as Nid);
        }
        let mut checks = 0;
        let mut last = 0;
        for _ in 0..20_000 {
            s.note_unsettled_touch(0);
            let backoff = s.unsettled[0] >> COUNT_BITS;
            checks += u32::from(backoff != last);
            last = backoff;
        }
        assert_eq!(s.settled_nid(0), None, "pages on two nodes never settle");
        assert_eq!(checks, u32::from(BACKOFF_MAX), "each failed check backs off, up to the maximum");
        *s.pte_mut(0) = young_on(0);
        for i in (1..BLOCK).step_by(2) {
            *s.pte_mut(i) = young_on(0);
        }
        for _ in 0..1 << (FIRST_CHECK_SHIFT + BACKOFF_MAX) {
            s.note_unsettled_touch(0);
        }
        assert_eq!(s.settled_nid(0), Some(0), "a block checked at the longest back-off still settles");
    }

    #[test]
    fn protnone_copy_on_write_old_and_missing_pages_keep_a_block_unsettled() {
        for flags in [PTE_PROTNONE | PTE_YOUNG, super::super::PG_KSM | PTE_YOUNG, super::super::PTE_ZERO | PTE_YOUNG, 0]
        {
            let mut s = slots(BLOCK);
            for p in s.ptes_mut() {
                *p = young_on(0);
            }
            s.pte_mut(100).flags = flags;
            touch_until_checked(&mut s, 0);
            assert_eq!(s.settled_nid(0), None, "flags {flags:#x}");
        }
        let mut s = slots(BLOCK);
        for p in s.ptes_mut().iter_mut().skip(1) {
            *p = young_on(0);
        }
        touch_until_checked(&mut s, 0);
        assert_eq!(s.settled_nid(0), None, "an untouched page keeps its block unsettled");
    }
}
