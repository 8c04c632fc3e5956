//! Invariant checks of the memory model, in the spirit of mm/debug_vm.c's VM_BUG_ON(): what
//! the kernel guarantees after every operation, recounted from the page state and compared
//! with the bookkeeping the model keeps incrementally. [`crate::sim::Sim::run`] calls
//! [`check_vm`] after every event when `--check-invariants` asks for it; otherwise nothing
//! here runs, so the touch path pays nothing.
//!
//! Each check is named; a violation says which, when (the event's time) and where (page or
//! node), which is what a bug report needs.

use std::fmt;

use bevy_ecs::prelude::*;

use crate::engine::{EventQueue, Nanos};
use crate::machine::{NUMA_NO_NODE, PgData, Topology};
use crate::mm::ksm::KsmFrames;
use crate::mm::mmu_notifier::{SPTE_VALID, SPTE_WRITABLE, SecondaryMmu, SmmuKind};
use crate::mm::{Mm, PG_KSM, PTE_COW, PTE_ZERO, PageIdx, Pages, Pte, ZERO_PAGE_NID};
use crate::stats::Counters;

/// A broken invariant: its name, when, and the page or node it was found on.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub invariant: &'static str,
    pub time: Nanos,
    pub page: Option<PageIdx>,
    pub node: Option<u32>,
    pub detail: String,
    /// The event after which the check ran (filled in by the event loop).
    pub after: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant `{}` violated at t = {} ns", self.invariant, self.time)?;
        if let Some(event) = &self.after {
            write!(f, " (after event {event})")?;
        }
        if let Some(page) = self.page {
            write!(f, ", page {page}")?;
        }
        if let Some(node) = self.node {
            write!(f, ", node {node}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl std::error::Error for Violation {}

impl Violation {
    fn new(invariant: &'static str, time: Nanos, detail: String) -> Self {
        Self { invariant, time, page: None, node: None, detail, after: None }
    }

    fn at_page(mut self, page: PageIdx) -> Self {
        self.page = Some(page);
        self
    }

    fn on_node(mut self, node: u32) -> Self {
        self.node = Some(node);
        self
    }
}

/// What a check needs to read: the page arrays, nodes, address spaces, secondary MMUs and
/// counters, all read-only.
type World<'w, 's> = (
    Res<'w, Pages>,
    Res<'w, Topology>,
    Res<'w, Counters>,
    Res<'w, EventQueue>,
    Query<'w, 's, &'static PgData>,
    Query<'w, 's, &'static Mm>,
    Query<'w, 's, &'static SecondaryMmu>,
    Res<'w, KsmFrames>,
);

/// Buffers kept between checks, so a check allocates nothing.
#[derive(Default)]
pub struct Scratch {
    /// Pins each page's pinning devices hold.
    held: Vec<u32>,
    /// The KSM frame (named by its first page) each KSM page maps, and the frame's node.
    ksm: Vec<(PageIdx, u8)>,
}

/// Runs every check; the first violation found is returned.
pub fn check_vm(
    (pages, topo, counters, queue, pgdat, mms, smmus, ksm_frames): World,
    mut scratch: Local<Scratch>,
) -> Result<(), Violation> {
    let now = queue.now();
    let frames = count_frames(&pages, &mms, &smmus, topo.nr_nodes, (&ksm_frames, &mut scratch.ksm), now)?;
    for node in pgdat.iter() {
        let nid = u32::from(node.nid);
        let used = frames[nid as usize];
        if node.free_pages > node.present_pages || node.present_pages - node.free_pages != used {
            let detail = format!(
                "free {} + used {used} != present {} (used recounted from the page state)",
                node.free_pages, node.present_pages
            );
            return Err(Violation::new("node_page_conservation", now, detail).on_node(nid));
        }
    }
    check_pins(&pages, &smmus, &mut scratch.held, now)?;
    if let Some(s) = pages.slots.settled_claim_broken() {
        let detail = format!("slot {s}'s block is settled, but its PTE is {:?}", pages.slots.pte(s));
        return Err(Violation::new("settled_block", now, detail));
    }
    check_secondary(&pages, &mms, &smmus, &counters, now)?;
    check_counters(&counters, now)
}

/// Frames in use per node, recounted from the page state: each present page's own frame,
/// one frame per KSM frame its sharers map, and frames a
/// long-term pin keeps after munmap() removed their PTEs. On the way: get_mm_rss() equals an
/// mm's present pages, an unmapped VMA has none, and every present page is on a node. The
/// counts are plain byte comparisons over the PTE array, which the compiler vectorises.
fn count_frames(
    pages: &Pages,
    mms: &Query<&Mm>,
    smmus: &Query<&SecondaryMmu>,
    nr_nodes: u32,
    ksm: (&KsmFrames, &mut Vec<(PageIdx, u8)>),
    now: Nanos,
) -> Result<Vec<u64>, Violation> {
    let all = pages.len() as u64;
    for m in mms.iter() {
        let mut present = 0;
        for v in &m.vmas {
            let c = Census::of(pages, v.base, v.pages);
            // The shared zero page is mapped without a folio of its own: no frame, no RSS.
            let here = v.pages - c.by_nid[NUMA_NO_NODE as usize] - c.zero;
            if v.unmapped && here > 0 {
                let detail = format!("{here} pages of munmap()ed VMA `{}` of mm `{}` are present", v.name, m.name);
                return Err(Violation::new("unmapped_vma_empty", now, detail));
            }
            present += here;
        }
        if present != m.rss {
            let detail = format!("mm `{}` has rss {} but {present} present pages", m.name, m.rss);
            return Err(Violation::new("mm_rss", now, detail));
        }
    }
    let census = Census::of(pages, 0, all);
    let mut frames: Vec<u64> = census.by_nid[..nr_nodes as usize].to_vec();
    if frames.iter().sum::<u64>() + census.by_nid[NUMA_NO_NODE as usize] != all {
        let bad = pages.runs(0, all).find(|&(_, _, s)| {
            let nid = pages.slots.pte(s).nid;
            nid != NUMA_NO_NODE && u32::from(nid) >= nr_nodes
        });
        let (page, _, s) = bad.unwrap_or((0, 0, pages.slot(0)));
        let detail = format!("a present page on node {} of a {nr_nodes}-node machine", pages.slots.pte(s).nid);
        return Err(Violation::new("page_on_valid_node", now, detail).at_page(page));
    }
    frames[ZERO_PAGE_NID as usize] -= census.zero;
    if census.flags & PG_KSM != 0 {
        count_ksm_frames(pages, &mut frames, ksm, now)?;
    }
    for s in smmus.iter().filter(|s| s.kind == SmmuKind::LongtermPin) {
        for (i, &e) in s.entries.iter().enumerate() {
            if e & SPTE_VALID != 0
                && !pages.present(s.base + i as PageIdx)
                && let Some(f) = frames.get_mut(SecondaryMmu::entry_nid(e) as usize)
            {
                *f += 1;
            }
        }
    }
    Ok(frames)
}

/// One pass over `n` pages from `first`: pages per node (NUMA_NO_NODE: not present) and
/// zero-page mappings and every flag set on some page, a compact chunk's pages counted
/// together. The checks run after every
/// event, so the passes over the page state are most of their cost.
struct Census {
    by_nid: [u64; 256],
    zero: u64,
    flags: u8,
}

impl Census {
    fn of(pages: &Pages, first: PageIdx, n: u64) -> Self {
        let mut c = Census { by_nid: [0; 256], zero: 0, flags: 0 };
        for (slots, each) in pages.spans(first, n) {
            c.add(pages.slots.ptes(slots), each);
        }
        c
    }

    /// Counts `ptes`, each standing for `each` pages. Memory is mostly in long runs on one
    /// node: a run of 64 on one node is one addition, not 64 that each wait for the last
    /// (the histogram's store-to-load chain was most of a check's time). The folds have no
    /// early exit, so the compiler vectorises them.
    fn add(&mut self, ptes: &[Pte], each: u64) {
        for run in ptes.chunks(64) {
            let nid = run[0].nid;
            if run.iter().fold(true, |same, p| same & (p.nid == nid)) {
                self.by_nid[nid as usize] += run.len() as u64 * each;
            } else {
                for p in run {
                    self.by_nid[p.nid as usize] += each;
                }
            }
            self.zero += run.iter().map(|p| u64::from(p.flags & PTE_ZERO != 0)).sum::<u64>() * each;
            self.flags |= run.iter().fold(0, |f, p| f | p.flags);
        }
    }
}

/// Replaces the KSM pages' count in `frames` by one per KSM frame: the pages sharing a KSM
/// page map one frame. Every KSM page must be on ksmd's books, with the mapping count the
/// books give its frame.
fn count_ksm_frames(
    pages: &Pages,
    frames: &mut [u64],
    (books, ksm): (&KsmFrames, &mut Vec<(PageIdx, u8)>),
    now: Nanos,
) -> Result<(), Violation> {
    ksm.clear();
    let ksm_pages = pages.runs(0, pages.len() as u64).filter(|&(_, _, s)| pages.slots.pte(s).flags & PG_KSM != 0);
    for (page, _, s) in ksm_pages {
        let pte = pages.slots.pte(s);
        if pte.nid == NUMA_NO_NODE {
            let detail = "a page flagged PageKsm() has no frame".into();
            return Err(Violation::new("ksm_page_present", now, detail).at_page(page));
        }
        let Some(kpage) = books.frame_of(page) else {
            let detail = "a page flagged PageKsm() maps no KSM frame ksmd knows".into();
            return Err(Violation::new("ksm_frame_known", now, detail).at_page(page));
        };
        frames[pte.nid as usize] -= 1;
        ksm.push((kpage, pte.nid));
    }
    ksm.sort_unstable();
    let mut at = 0;
    while at < ksm.len() {
        let (kpage, nid) = ksm[at];
        let n = ksm[at..].iter().take_while(|&&(p, _)| p == kpage).count();
        if books.mappers(kpage) != n as u32 {
            let detail = format!("{n} pages map this KSM frame, ksmd counts {}", books.mappers(kpage));
            return Err(Violation::new("ksm_frame_mappers", now, detail).at_page(kpage));
        }
        frames[nid as usize] += 1;
        at += n;
    }
    Ok(())
}

/// FOLL_PIN pins: every page's pin count equals the long-term pinning MMUs mapping it.
fn check_pins(pages: &Pages, smmus: &Query<&SecondaryMmu>, held: &mut Vec<u32>, now: Nanos) -> Result<(), Violation> {
    let pinning = smmus.iter().any(|s| s.kind == SmmuKind::LongtermPin);
    // Folded per 64 without an early exit, so the test is vectorised.
    if !pinning && pages.slots.pins.chunks(64).all(|c| c.iter().fold(0, |a, &p| a | p) == 0) {
        return Ok(());
    }
    held.clear();
    held.resize(pages.len(), 0);
    for s in smmus.iter().filter(|s| s.kind == SmmuKind::LongtermPin) {
        for (i, &e) in s.entries.iter().enumerate() {
            if e & SPTE_VALID != 0 {
                held[(s.base + i as PageIdx) as usize] += 1;
            }
        }
    }
    let pins = |p: usize| pages.slots.pins[pages.slot(p as PageIdx)];
    match held.iter().enumerate().position(|(p, &h)| u32::from(pins(p)) != h) {
        None => Ok(()),
        Some(p) => {
            let detail = format!("{} pins, but pinning devices hold {}", pins(p), held[p]);
            Err(Violation::new("pin_count", now, detail).at_page(p as PageIdx))
        }
    }
}

/// Secondary MMUs: an entry of a notifier-kept table maps a present page of its mm or is
/// counted stale, and the `stale.mappings` gauge equals a recount; no entry gives write
/// access to a KSM page or the zero page (both are write-protected everywhere).
fn check_secondary(
    pages: &Pages,
    mms: &Query<&Mm>,
    smmus: &Query<&SecondaryMmu>,
    counters: &Counters,
    now: Nanos,
) -> Result<(), Violation> {
    let mut stale = 0;
    for s in smmus.iter() {
        let vmas = mms.get(s.mm).map_or(&[][..], |m| &m.vmas[..]);
        // VMAs are in page order: one cursor finds each entry's VMA (vma_is_accessible()).
        let mut vi = 0;
        for (i, &e) in s.entries.iter().enumerate() {
            if e & SPTE_VALID == 0 {
                continue;
            }
            let page = s.base + i as PageIdx;
            while vi < vmas.len() && u64::from(vmas[vi].base) + vmas[vi].pages <= u64::from(page) {
                vi += 1;
            }
            let granted = vmas.get(vi).is_some_and(|v| v.base <= page && !v.unmapped && v.accessible);
            let is_stale = s.is_stale(i, granted, pages);
            if s.kind == SmmuKind::Notifier && is_stale {
                stale += 1;
            }
            let cow = pages.pte(page).flags & PTE_COW;
            if !is_stale && e & SPTE_WRITABLE != 0 && cow != 0 {
                let (invariant, what) = if cow & PG_KSM != 0 {
                    ("ksm_write_protected", "a KSM page")
                } else {
                    ("zero_page_write_protected", "the zero page")
                };
                let detail = format!("secondary MMU `{}` maps {what} writable", s.name);
                return Err(Violation::new(invariant, now, detail).at_page(page));
            }
        }
    }
    if stale != counters.stale_mappings {
        let detail = format!("the stale.mappings gauge says {} but {stale} entries are stale", counters.stale_mappings);
        return Err(Violation::new("stale_gauge", now, detail));
    }
    Ok(())
}

/// Counter relations the kernel's accounting guarantees.
fn check_counters(c: &Counters, now: Nanos) -> Result<(), Violation> {
    let v = &c.vmstat;
    let by_source = &c.hint_faults_by_source;
    let t = &c.touches;
    let sourced = by_source.cpu + by_source.kvm + by_source.device + by_source.follow_page;
    let at_most = |invariant, (small, small_name), (big, big_name): (u64, &str)| {
        if small <= big {
            Ok(())
        } else {
            Err(Violation::new(invariant, now, format!("{small_name} {small} > {big_name} {big}")))
        }
    };
    let hint_faults = (v.numa_hint_faults, "numa_hint_faults");
    at_most("hint_faults_local_le_total", (v.numa_hint_faults_local, "numa_hint_faults_local"), hint_faults)?;
    at_most("hint_faults_by_source_sum", (sourced, "hint_faults_by_source (sum)"), hint_faults)?;
    at_most("hint_faults_by_source_sum", hint_faults, (sourced, "hint_faults_by_source (sum)"))?;
    at_most(
        "pages_migrated_le_success",
        (v.numa_pages_migrated, "numa_pages_migrated"),
        (v.pgmigrate_success, "pgmigrate_success"),
    )?;
    at_most("touches_local_le_total", (t.cpu_local, "touches.cpu_local"), (t.cpu, "touches.cpu"))?;
    at_most("touches_local_le_total", (t.kvm_local, "touches.kvm_local"), (t.kvm, "touches.kvm"))?;
    at_most("touches_local_le_total", (t.device_local, "touches.device_local"), (t.device, "touches.device"))
}
