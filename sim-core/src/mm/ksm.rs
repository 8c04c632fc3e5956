//! Kernel samepage merging (mm/ksm.c): ksmd scans mergeable VMAs with follow_page() and
//! merges pages of identical content into write-protected KSM pages.
//!
//! Simplified: a page merges the first time ksmd sees a twin (the kernel waits for its
//! checksum to hold still over one pass); ksmd's own CPU time is not charged to any CPU;
//! a stable KSM frame stays allocated while its first page lives.

use std::collections::HashMap;

use bevy_ecs::prelude::*;

use super::gup::{Followed, follow_page};
use super::memory::{alloc_page_node, free_page_node};
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range, update_stale_gauge};
use super::{PG_KSM, PTE_PROTNONE, PTE_YOUNG, PageIdx};
use crate::engine::{Event, NSEC_PER_MSEC};
use crate::kernel::Kernel;
use crate::machine::Nid;
use crate::trace::events::KsmTree;
use crate::trace::{Event as TraceEvent, KSMD_PID};
use crate::trace_event;

/// ksmd's state: the mergeable VMAs, its cursor and the two trees (by content).
#[derive(Resource, Debug, Default)]
pub struct Ksmd {
    pub pages_to_scan: u32,
    pub sleep_millisecs: u64,
    /// VMAs registered by madvise(MADV_MERGEABLE), in registration order.
    pub vmas: Vec<(Entity, usize)>,
    /// Position: index into `vmas` and the page offset within that VMA.
    cursor: (usize, u64),
    /// /sys/kernel/mm/ksm/merge_across_nodes: one tree for all nodes, or one per node.
    pub merge_across_nodes: bool,
    stable: HashMap<TreeKey, PageIdx>,
    unstable: HashMap<TreeKey, PageIdx>,
}

/// A tree slot: page content and, without merge_across_nodes, the node whose tree it is in.
type TreeKey = (u16, Nid);

impl Ksmd {
    pub fn new(pages_to_scan: u32, sleep_millisecs: u64, merge_across_nodes: bool) -> Self {
        Self { pages_to_scan, sleep_millisecs, merge_across_nodes, ..Default::default() }
    }

    /// The tree a page of `content` on node `nid` goes to (get_kpfn_nid()).
    fn key(&self, content: u16, nid: Nid) -> TreeKey {
        (content, if self.merge_across_nodes { 0 } else { nid })
    }
}

/// Handler of [`Event::Ksmd`]: one ksm_do_scan() of `pages_to_scan` pages, then sleep.
pub fn ksmd_wake(mut k: Kernel, mut ksmd: ResMut<Ksmd>) {
    let now = k.now();
    k.trace_current(0, KSMD_PID, now);
    if !ksmd.vmas.is_empty() {
        for _ in 0..ksmd.pages_to_scan {
            let (vi, off) = ksmd.cursor;
            let (mm, vma) = ksmd.vmas[vi];
            let (accessible, unmapped, base, len) = {
                let v = &k.mm(mm).vmas[vma];
                (v.accessible, v.unmapped, v.base, v.pages)
            };
            if !unmapped {
                cmp_and_merge_page(&mut k, &mut ksmd, mm, accessible, base + off as PageIdx);
            }
            ksmd.cursor = if off + 1 < len && !unmapped {
                (vi, off + 1)
            } else if vi + 1 < ksmd.vmas.len() {
                (vi + 1, 0)
            } else {
                // A full pass: the unstable tree is rebuilt from scratch (ksm_scan.seqnr).
                ksmd.unstable.clear();
                (0, 0)
            };
        }
        // Merging replaces PTEs and notifies: that may drop stale entries of a PROT_NONE
        // mergeable range (follow_page() follows into inaccessible VMAs).
        if k.counters.stale_mappings > 0 {
            update_stale_gauge(&mut k);
        }
    }
    let sleep = ksmd.sleep_millisecs * NSEC_PER_MSEC;
    k.queue.schedule_in(sleep, Event::Ksmd);
}

/// Models cmp_and_merge_page(): look the page up with follow_page(), then in the stable
/// tree, then in the unstable tree.
fn cmp_and_merge_page(k: &mut Kernel, ksmd: &mut Ksmd, mm: Entity, accessible: bool, page: PageIdx) {
    let i = page as usize;
    match follow_page(k, page, accessible) {
        Followed::None => return,
        Followed::Protnone => {
            k.counters.ksm.skipped_protnone += 1;
            trace_event!(k, TraceEvent::KsmSkip { addr: k.page_addr(mm, page) });
            return;
        }
        Followed::Page => {}
    }
    let content = k.pages.content[i];
    // Unique pages never match; KSM pages are merged already; pinned pages cannot be
    // write-protected (write_protect_page() refuses maybe-pinned folios).
    if content == 0 || k.pages.pte[i].flags & PG_KSM != 0 || k.pages.pins[i] > 0 {
        return;
    }
    let nid = k.pages.pte[i].nid;
    let key = ksmd.key(content, nid);
    let across = ksmd.merge_across_nodes;
    let is_twin = |k: &Kernel, other: PageIdx| {
        let o = other as usize;
        other != page
            && k.pages.present(other)
            && k.pages.content[o] == content
            && (across || k.pages.pte[o].nid == nid)
    };
    if let Some(&stable) = ksmd.stable.get(&key)
        && is_twin(k, stable)
        && k.pages.pte[stable as usize].flags & PG_KSM != 0
    {
        merge_into(k, mm, page, stable, KsmTree::Stable);
        return;
    }
    match ksmd.unstable.get(&key) {
        Some(&other)
            if is_twin(k, other)
                && k.pages.pte[other as usize].flags & PG_KSM == 0
                && k.pages.pins[other as usize] == 0 =>
        {
            ksmd.unstable.remove(&key);
            // The tree page becomes the stable KSM page; this one shares it.
            k.pages.pte[other as usize].flags = (k.pages.pte[other as usize].flags & !PTE_PROTNONE) | PG_KSM;
            ksmd.stable.insert(key, other);
            merge_into(k, mm, page, other, KsmTree::Unstable);
        }
        _ => {
            ksmd.unstable.insert(key, page);
        }
    }
}

/// Models try_to_merge_one_page() + replace_page(): map the stable frame in place of the
/// page's own, write-protected (secondary MMUs are invalidated: the PTE changes).
fn merge_into(k: &mut Kernel, mm: Entity, page: PageIdx, stable: PageIdx, tree: KsmTree) {
    let (i, s) = (page as usize, stable as usize);
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
    let old = k.pages.pte[i].nid;
    let kpage_nid = k.pages.pte[s].nid;
    trace_event!(k, TraceEvent::KsmMerge { addr: k.page_addr(mm, page), nid: old, kpage_nid, tree });
    free_page_node(k, old);
    k.pages.pte[i].nid = k.pages.pte[s].nid;
    k.pages.frame_gen[i] = k.pages.frame_gen[i].wrapping_add(1);
    k.pages.pte[i].flags = (k.pages.pte[i].flags & !PTE_PROTNONE) | PG_KSM | PTE_YOUNG;
    k.pages.mapcount[s] = k.pages.mapcount[s].saturating_add(1);
    k.pages.mapcount[i] = k.pages.mapcount[s];
    k.counters.ksm.pages_merged += 1;
}

/// Models do_wp_page() on a KSM page: a write breaks COW and the page gets a private copy
/// on `nid` (counted as the kernel's `cow_ksm` event). Its content is then its own.
pub fn break_ksm_cow(k: &mut Kernel, mm: Entity, page: PageIdx, nid: Nid) {
    let i = page as usize;
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
    trace_event!(k, TraceEvent::KsmCow { addr: k.page_addr(mm, page), nid });
    let got = alloc_page_node(k, nid).expect("COW of a KSM page finds a free frame");
    k.pages.pte[i].nid = got;
    k.pages.frame_gen[i] = k.pages.frame_gen[i].wrapping_add(1);
    k.pages.pte[i].flags &= !PG_KSM;
    k.pages.mapcount[i] = 1;
    k.pages.content[i] = 0;
    k.counters.vmstat.cow_ksm += 1;
}
