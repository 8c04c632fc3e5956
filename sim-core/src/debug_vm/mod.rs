//! Invariant checks of the memory model, in the spirit of mm/debug_vm.c's VM_BUG_ON(): what
//! the kernel guarantees after every operation, recounted from the page state and compared
//! with the bookkeeping the model keeps incrementally. [`crate::sim::Sim::run`] calls
//! [`check_vm`] after every event when `--check-invariants` asks for it; otherwise nothing
//! here runs, so the touch path pays nothing. The page census is kept incrementally
//! ([`census`]) and recounted from scratch at a run's start and end and every
//! [`FULL_EVERY`] checks.
//!
//! Each check is named; a violation says which, when (the event's time) and where (page or
//! node), which is what a bug report needs.

mod census;
mod secondary;

use std::collections::HashMap;
use std::fmt;

use bevy_ecs::prelude::*;

use crate::engine::{EventQueue, Nanos};
use crate::machine::{NUMA_NO_NODE, PgData, Topology};
use crate::mm::backing::MemKinds;
use crate::mm::ksm::KsmFrames;
use crate::mm::mmu_notifier::{SPTE_VALID, SecondaryMmu, SmmuKind};
use crate::mm::{Mm, PG_KSM, PTE_PROTNONE, PTE_UFFD, PageIdx, Pages, ZERO_PAGE_NID};
use crate::stats::Counters;
use census::ChunkCensus;

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

/// Checks between two full recounts of the page census.
pub const FULL_EVERY: u64 = 1024;

/// What a check needs to read: the page arrays, nodes, address spaces, secondary MMUs and
/// counters. The page state is written only to mark what the census has counted
/// ([`crate::mm::Slots::take_changes`]), which no run can tell.
type World<'w, 's> = (
    ResMut<'w, Pages>,
    Res<'w, Topology>,
    Res<'w, Counters>,
    Res<'w, EventQueue>,
    Query<'w, 's, &'static PgData>,
    Query<'w, 's, &'static Mm>,
    Query<'w, 's, &'static SecondaryMmu>,
    Query<'w, 's, (Entity, &'static SecondaryMmu)>,
    Res<'w, KsmFrames>,
    Res<'w, MemKinds>,
);

/// Buffers kept between checks, so a check allocates nothing.
#[derive(Default)]
pub struct Scratch {
    /// Pins each page's pinning devices hold.
    held: Vec<u32>,
    /// The KSM frame (named by its first page) each KSM page maps, and the frame's node.
    ksm: Vec<(PageIdx, u8)>,
    /// What KSM sharing changes in each node's frame count (a frame per KSM frame, not per
    /// page mapping it), kept while neither ksmd's books nor a chunk with KSM pages change.
    ksm_shift: Vec<i64>,
    census: ChunkCensus,
    tables: HashMap<Entity, secondary::TableCache>,
    /// Pin counts and pinning tables written as of the last pin check: while neither moves,
    /// neither do the pins.
    pin_writes: (u64, u64),
    /// Checks since the last full recount.
    checks: u64,
}

/// Runs every check; the first violation found is returned. `full`: recount the whole page
/// census and verify every settled block, not only what changed (also done every
/// [`FULL_EVERY`] checks).
pub fn check_vm(
    In(full): In<bool>,
    (mut pages, topo, counters, queue, pgdat, mms, smmus, smmu_ids, ksm_frames, kinds): World,
    mut scratch: Local<Scratch>,
) -> Result<(), Violation> {
    let now = queue.now();
    let scratch = &mut *scratch;
    scratch.census.update(&mut pages, topo.nr_nodes as usize);
    scratch.checks += 1;
    let full = full || scratch.checks >= FULL_EVERY;
    if full {
        scratch.checks = 0;
        if let Some(detail) = scratch.census.verify(&pages) {
            return Err(Violation::new("incremental_census", now, detail));
        }
    }
    let books = (&*ksm_frames, ksm_frames.is_changed() || full);
    let frames = count_frames(&pages, &mms, &smmus, topo.nr_nodes, (books, &mut *scratch), now)?;
    for node in pgdat.iter() {
        let nid = u32::from(node.nid);
        // Free huge pages of the boot-time pool are out of the free lists too.
        let used = frames[nid as usize] + kinds.pool.free_pages(node.nid);
        if node.free_pages > node.present_pages || node.present_pages - node.free_pages != used {
            let detail = format!(
                "free {} + used {used} != present {} (used recounted from the page state)",
                node.free_pages, node.present_pages
            );
            return Err(Violation::new("node_page_conservation", now, detail).on_node(nid));
        }
    }
    let pin_writes = (pages.slots.pin_writes(), pin_table_writes(&smmus));
    if full || pin_writes != scratch.pin_writes {
        check_pins(&pages, &smmus, &mut scratch.held, now)?;
        scratch.pin_writes = pin_writes;
    }
    let settled = if full {
        pages.slots.settled_claim_broken(0..pages.slots.blocks())
    } else {
        pages.slots.settled_claim_broken(scratch.census.settled.iter().copied())
    };
    if let Some(s) = settled {
        let detail = format!("slot {s}'s block is settled, but its PTE is {:?}", pages.slots.pte(s));
        return Err(Violation::new("settled_block", now, detail));
    }
    if full {
        check_uffd_markers(&pages, &mms, now)?;
        check_memfd_protnone(&pages, &kinds, now)?;
    }
    let smmu_pages = (&*pages, &scratch.census, full);
    secondary::check_secondary(smmu_pages, (&mms, &smmu_ids), &mut scratch.tables, &counters, now)?;
    check_counters(&counters, now)
}

/// `_PAGE_UFFD` marks RWP-armed PTEs only (7.3): a PTE with the marker lies in a
/// VM_UFFD_RWP VMA and is PAGE_NONE (change_present_ptes() restores PAGE_NONE under it).
fn check_uffd_markers(pages: &Pages, mms: &Query<&Mm>, now: Nanos) -> Result<(), Violation> {
    for m in mms.iter() {
        for v in m.vmas.iter().filter(|v| !v.unmapped) {
            let bad = pages.runs(v.base, v.pages).find(|&(_, _, s)| {
                let flags = pages.slots.pte(s).flags;
                flags & PTE_UFFD != 0 && (v.uffd_rwp.is_none() || flags & PTE_PROTNONE == 0)
            });
            if let Some((page, _, s)) = bad {
                let detail = format!(
                    "PTE {:?} of VMA `{}` of mm `{}` (RWP {}) carries the uffd marker",
                    pages.slots.pte(s),
                    v.name,
                    m.name,
                    if v.uffd_rwp.is_some() { "registered" } else { "not registered" }
                );
                return Err(Violation::new("uffd_rwp_marker", now, detail).at_page(page));
            }
        }
    }
    Ok(())
}

/// A memfd page's shared PTE_PROTNONE, which the touch path reads, is set exactly when some
/// mapper's own PTE is protnone.
fn check_memfd_protnone(pages: &Pages, kinds: &MemKinds, now: Nanos) -> Result<(), Violation> {
    for (id, memfd) in kinds.memfds.iter().enumerate() {
        let bad =
            (0..memfd.pages()).map(|i| memfd.base + i as PageIdx).find(|&p| pages.protnone(p) != memfd.any_protnone(p));
        if let Some(page) = bad {
            let detail = format!(
                "memfd {id}: the shared PTE says protnone = {}, its mappers' own PTEs {}",
                pages.protnone(page),
                memfd.any_protnone(page)
            );
            return Err(Violation::new("memfd_protnone", now, detail).at_page(page));
        }
    }
    Ok(())
}

/// Frames in use per node, from the page census: each present page's own frame,
/// one frame per KSM frame its sharers map, and frames a
/// long-term pin keeps after munmap() removed their PTEs. On the way: get_mm_rss() equals an
/// mm's present pages, an unmapped VMA has none, and every present page is on a node.
fn count_frames(
    pages: &Pages,
    mms: &Query<&Mm>,
    smmus: &Query<&SecondaryMmu>,
    nr_nodes: u32,
    ((books, books_changed), scratch): ((&KsmFrames, bool), &mut Scratch),
    now: Nanos,
) -> Result<Vec<u64>, Violation> {
    let census = &scratch.census;
    for m in mms.iter() {
        let mut present = 0;
        for v in &m.vmas {
            // The shared zero page is mapped without a folio of its own: no frame, no RSS.
            let here = census.with_folio(pages, v.base, v.pages);
            if v.unmapped && here > 0 {
                let detail = format!("{here} pages of munmap()ed VMA `{}` of mm `{}` are present", v.name, m.name);
                return Err(Violation::new("unmapped_vma_empty", now, detail));
            }
            if v.backing.in_rss() {
                present += here;
            }
        }
        if present != m.rss {
            let detail = format!("mm `{}` has rss {} but {present} present pages", m.name, m.rss);
            return Err(Violation::new("mm_rss", now, detail));
        }
    }
    let totals = census.totals();
    if totals.off_node > 0 {
        let all = pages.len() as u64;
        let bad = pages.runs(0, all).find(|&(_, _, s)| {
            let nid = pages.slots.pte(s).nid;
            nid != NUMA_NO_NODE && u32::from(nid) >= nr_nodes
        });
        let (page, _, s) = bad.unwrap_or((0, 0, pages.slot(0)));
        let detail = format!("a present page on node {} of a {nr_nodes}-node machine", pages.slots.pte(s).nid);
        return Err(Violation::new("page_on_valid_node", now, detail).at_page(page));
    }
    let mut frames = totals.by_nid.clone();
    frames[ZERO_PAGE_NID as usize] -= totals.zero;
    if books_changed || census.ksm_changed || scratch.ksm_shift.len() != frames.len() {
        let before = frames.clone();
        if totals.ksm > 0 {
            let ksm_pages = census.ksm_chunks().flat_map(|(first, n)| pages.runs(first, n));
            count_ksm_frames(pages, ksm_pages, &mut frames, (books, &mut scratch.ksm), now)?;
        }
        scratch.ksm_shift = frames.iter().zip(&before).map(|(&with, &without)| with as i64 - without as i64).collect();
    } else {
        for (f, &d) in frames.iter_mut().zip(&scratch.ksm_shift) {
            *f = f.wrapping_add_signed(d);
        }
    }
    for s in smmus.iter().filter(|s| s.kind == SmmuKind::LongtermPin) {
        for (i, &e) in s.entries().iter().enumerate() {
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

/// Replaces the KSM pages' count in `frames` by one per KSM frame: the pages sharing a KSM
/// page map one frame. Every KSM page must be on ksmd's books, with the mapping count the
/// books give its frame.
fn count_ksm_frames(
    pages: &Pages,
    candidates: impl Iterator<Item = (PageIdx, u64, usize)>,
    frames: &mut [u64],
    (books, ksm): (&KsmFrames, &mut Vec<(PageIdx, u8)>),
    now: Nanos,
) -> Result<(), Violation> {
    ksm.clear();
    for (page, _, s) in candidates.filter(|&(_, _, s)| pages.slots.pte(s).flags & PG_KSM != 0) {
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

/// A sum of the maps and zaps of the long-term pinning tables.
fn pin_table_writes(smmus: &Query<&SecondaryMmu>) -> u64 {
    let pinning = smmus.iter().filter(|s| s.kind == SmmuKind::LongtermPin);
    pinning.flat_map(|s| s.writes()).fold(0, |sum, &w| sum.wrapping_add(u64::from(w)))
}

/// FOLL_PIN pins: every page's pin count equals the long-term pinning MMUs mapping it.
fn check_pins(pages: &Pages, smmus: &Query<&SecondaryMmu>, held: &mut Vec<u32>, now: Nanos) -> Result<(), Violation> {
    let pinning = smmus.iter().any(|s| s.kind == SmmuKind::LongtermPin);
    // Folded per 64 without an early exit, so the test is vectorised.
    if !pinning && pages.slots.all_pins().chunks(64).all(|c| c.iter().fold(0, |a, &p| a | p) == 0) {
        return Ok(());
    }
    held.clear();
    held.resize(pages.len(), 0);
    for s in smmus.iter().filter(|s| s.kind == SmmuKind::LongtermPin) {
        for (i, &e) in s.entries().iter().enumerate() {
            if e & SPTE_VALID != 0 {
                held[(s.base + i as PageIdx) as usize] += 1;
            }
        }
    }
    let pins = |p: usize| pages.pins(p as PageIdx);
    match held.iter().enumerate().position(|(p, &h)| u32::from(pins(p)) != h) {
        None => Ok(()),
        Some(p) => {
            let detail = format!("{} pins, but pinning devices hold {}", pins(p), held[p]);
            Err(Violation::new("pin_count", now, detail).at_page(p as PageIdx))
        }
    }
}

/// Counter relations the kernel's accounting guarantees.
fn check_counters(c: &Counters, now: Nanos) -> Result<(), Violation> {
    let v = &c.vmstat;
    let by_source = &c.hint_faults_by_source;
    let t = &c.touches;
    let sourced = by_source.cpu + by_source.kvm + by_source.device + by_source.follow_page;
    let hint_faults = (v.numa_hint_faults, "numa_hint_faults");
    at_most(now, "hint_faults_local_le_total", (v.numa_hint_faults_local, "numa_hint_faults_local"), hint_faults)?;
    at_most(now, "hint_faults_by_source_sum", (sourced, "hint_faults_by_source (sum)"), hint_faults)?;
    at_most(now, "hint_faults_by_source_sum", hint_faults, (sourced, "hint_faults_by_source (sum)"))?;
    at_most(
        now,
        "pages_migrated_le_success",
        (v.numa_pages_migrated, "numa_pages_migrated"),
        (v.pgmigrate_success, "pgmigrate_success"),
    )?;
    at_most(now, "touches_local_le_total", (t.cpu_local, "touches.cpu_local"), (t.cpu, "touches.cpu"))?;
    at_most(now, "touches_local_le_total", (t.kvm_local, "touches.kvm_local"), (t.kvm, "touches.kvm"))?;
    at_most(now, "touches_local_le_total", (t.device_local, "touches.device_local"), (t.device, "touches.device"))?;
    check_churn(c, now)
}

/// The churn counters' relations: a refill needs a zap, a flush an invalidation that zapped,
/// a KVM flush request a traced invalidation, KVM's flushes its requests, and a counted
/// `remote_tlb_flush` at least one IPI.
fn check_churn(c: &Counters, now: Nanos) -> Result<(), Violation> {
    let (s, kvm) = (&c.secondary_mmu, &c.kvm);
    let invalidations = (s.invalidations(), "secondary_mmu invalidations (sum)");
    let flushes = (s.tlb_flushes, "secondary_mmu.tlb_flushes");
    at_most(now, "refills_le_zaps", (s.entries_refilled, "entries_refilled"), (s.entries_zapped, "entries_zapped"))?;
    at_most(now, "flushes_le_invalidations", flushes, invalidations)?;
    at_most(now, "flushes_le_zaps", flushes, (s.entries_zapped, "secondary_mmu.entries_zapped"))?;
    at_most(
        now,
        "range_numa_kept_le_protection_vma",
        (s.range_numa_kept, "range_numa_kept"),
        (s.invalidate_protection_vma, "invalidate_protection_vma"),
    )?;
    let requests = (kvm.remote_tlb_flush_requests, "kvm.remote_tlb_flush_requests");
    at_most(now, "kvm_flush_requests_le_flushes", requests, flushes)?;
    at_most(now, "kvm_flush_requests_le_unmaps", requests, (kvm.kvm_unmap_hva_range, "kvm.kvm_unmap_hva_range"))?;
    at_most(now, "kvm_flushes_le_requests", (kvm.remote_tlb_flush, "kvm.remote_tlb_flush"), requests)?;
    at_most(now, "kvm_flushes_le_ipis", (kvm.remote_tlb_flush, "kvm.remote_tlb_flush"), (s.flush_ipis, "flush_ipis"))
}

/// Invariant `invariant` holds when `small` is at most `big` (each a count and its name).
fn at_most(
    now: Nanos,
    invariant: &'static str,
    (small, small_name): (u64, &str),
    (big, big_name): (u64, &str),
) -> Result<(), Violation> {
    if small <= big {
        Ok(())
    } else {
        Err(Violation::new(invariant, now, format!("{small_name} {small} > {big_name} {big}")))
    }
}
