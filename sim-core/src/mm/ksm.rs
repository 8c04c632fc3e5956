//! Kernel samepage merging (mm/ksm.c): ksmd scans mergeable VMAs and merges pages of
//! identical content into write-protected KSM pages.
//!
//! Follows 6.12.117 and 6.1.192, with the version differences in [`Rules`]: how
//! scan_get_next_rmap_item() finds pages (a page-table walk, or follow_page()) and whether
//! follow_page() refuses protnone PTEs (v6.2–v6.4's gup_can_follow_protnone(), which
//! 6.1.192 carries) and where the checksum test sits. Simplified: a page's checksum is its
//! content class; ksmd's own CPU time is not charged to any CPU.

use std::collections::HashMap;

use bevy_ecs::prelude::*;

use super::gup::{Followed, follow_page};
use super::huge_memory::split_huge_pmd_of;
use super::memory::free_page_node;
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range, update_stale_gauge};
use super::{PG_KSM, PTE_PROTNONE, PTE_ZERO, PageIdx, Pte, RMAP_CHECKSUMMED};
use crate::config::KsmConfig;
use crate::engine::{Event, NSEC_PER_MSEC};
use crate::kernel::Kernel;
use crate::machine::Nid;
use crate::trace::events::KsmTree;
use crate::trace::{Event as TraceEvent, KSMD_PID};
use crate::trace_event;

/// ksmd's state: the mergeable VMAs, its cursor and the two trees.
#[derive(Resource, Debug, Default)]
pub struct Ksmd {
    pub pages_to_scan: u32,
    pub sleep_millisecs: u64,
    scan_cost_ns: u64,
    merge_cost_ns: u64,
    /// VMAs registered by madvise(MADV_MERGEABLE), in registration order.
    pub vmas: Vec<(Entity, usize)>,
    /// Position: index into `vmas` and the page offset within that VMA (ksm_scan).
    cursor: (usize, u64),
    /// /sys/kernel/mm/ksm/merge_across_nodes: one tree for all nodes, or one per node.
    pub merge_across_nodes: bool,
    stable: HashMap<TreeKey, PageIdx>,
    /// The unstable tree: an rbtree ordered by page content in the kernel, here a sorted
    /// vector searched the way a balanced tree is (see [`unstable_tree_search_insert`]).
    unstable: Vec<(TreeKey, UnstableItem)>,
    /// The smart scan's state of each page's rmap_item, made on its first visit.
    ages: HashMap<PageIdx, RmapAge>,
}

/// `ksm_rmap_item`'s `age` (scans since it was made, saturating) and `remaining_skips`.
/// Simplified: an rmap_item lives as long as the run (the kernel frees it when its page is
/// gone from the VMA).
#[derive(Clone, Copy, Debug, Default)]
struct RmapAge {
    age: u8,
    remaining_skips: u8,
}

/// Models skip_age() (mm/ksm.c, 6.12.118): how many scans to skip a page of this age.
fn skip_age(age: u8) -> u8 {
    match age {
        0..=3 => 1,
        4..=5 => 2,
        6..=8 => 4,
        _ => 8,
    }
}

/// Models should_skip_rmap_item() (mm/ksm.c, 6.12.118; v6.7's smart scan, on by default):
/// a page that is not yet KSM and has been visited three times is skipped for 1, 2, 4, then 8
/// scans between visits, without using a `pages_to_scan` slot.
fn should_skip_rmap_item(k: &Kernel, ksmd: &mut Ksmd, page: PageIdx) -> bool {
    k.rules.ksm_smart_scan && k.pages.pte(page).flags & PG_KSM == 0 && ksmd.ages.entry(page).or_default().visit()
}

impl RmapAge {
    /// One visit of a page that is not KSM: whether the smart scan skips it.
    fn visit(&mut self) -> bool {
        let item = self;
        let age = item.age;
        item.age = age.saturating_add(1);
        if age < 3 {
            return false;
        }
        if item.remaining_skips == 0 {
            item.remaining_skips = skip_age(age);
            return false;
        }
        item.remaining_skips -= 1;
        true
    }
}

/// The frames KSM pages share: which frame each KSM-mapped page maps and how many pages map
/// each (the KSM folio's mapcount). A KSM frame is freed with its last mapping, when the last
/// sharer has broken COW or been unmapped.
#[derive(Resource, Debug, Default)]
pub struct KsmFrames {
    frame_of: HashMap<PageIdx, PageIdx>,
    mappers: HashMap<PageIdx, u32>,
}

impl KsmFrames {
    /// The KSM frame (named by the page that became the KSM page) `page` maps.
    pub fn frame_of(&self, page: PageIdx) -> Option<PageIdx> {
        self.frame_of.get(&page).copied()
    }

    /// How many pages map the KSM frame of `kpage`.
    pub fn mappers(&self, kpage: PageIdx) -> u32 {
        self.mappers.get(&kpage).copied().unwrap_or(0)
    }
}

/// `page` now maps the KSM frame of `kpage` (itself, for the page that became the KSM page).
fn ksm_map(k: &mut Kernel, page: PageIdx, kpage: PageIdx) {
    k.ksm_frames.frame_of.insert(page, kpage);
    *k.ksm_frames.mappers.entry(kpage).or_insert(0) += 1;
}

/// `page` stops mapping its KSM frame (COW or unmap): the frame is freed with its last
/// mapping (folio_put() of the KSM folio).
pub fn ksm_unmap(k: &mut Kernel, page: PageIdx) {
    let Some(kpage) = k.ksm_frames.frame_of.remove(&page) else { return };
    let left = k.ksm_frames.mappers.get_mut(&kpage).map(|n| {
        *n -= 1;
        *n
    });
    if left == Some(0) {
        k.ksm_frames.mappers.remove(&kpage);
        let nid = k.pages.pte(page).nid;
        free_page_node(k, nid);
    }
}

/// A tree slot: the node whose tree it is in (0 with merge_across_nodes), the content, and
/// for a unique page (content 0) the page itself, which orders unique pages among
/// themselves the way memcmp_pages() of distinct contents would, arbitrarily but fixed.
type TreeKey = (Nid, u16, PageIdx);

/// An unstable-tree rmap_item: the page and the mm that maps it.
#[derive(Clone, Copy, Debug)]
struct UnstableItem {
    page: PageIdx,
    mm: Entity,
}

impl Ksmd {
    pub fn new(c: &KsmConfig) -> Self {
        Self {
            pages_to_scan: c.pages_to_scan,
            sleep_millisecs: c.sleep_millisecs,
            merge_across_nodes: c.merge_across_nodes,
            scan_cost_ns: c.scan_cost_ns,
            merge_cost_ns: c.merge_cost_ns,
            ..Default::default()
        }
    }

    /// The tree slot of `page` with `content` on node `nid` (get_kpfn_nid() picks the tree).
    fn key(&self, page: PageIdx, content: u16, nid: Nid) -> TreeKey {
        (if self.merge_across_nodes { 0 } else { nid }, content, if content == 0 { page } else { 0 })
    }
}

/// A page scan_get_next_rmap_item() returned.
struct Scanned {
    mm: Entity,
    page: PageIdx,
    accessible: bool,
}

/// Handler of [`Event::Ksmd`]: one ksm_do_scan() of `pages_to_scan` pages, then sleep.
/// Models ksm_scan_thread() (6.1, 6.12): the sleep starts when the batch is done, so
/// ksmd's own time per batch lengthens its period.
pub fn ksmd_wake(mut k: Kernel, mut ksmd: ResMut<Ksmd>) {
    let now = k.now();
    k.trace_current(0, KSMD_PID, now);
    let merged_before = k.counters.ksm.pages_merged;
    let mut scanned = 0;
    if !ksmd.vmas.is_empty() {
        for _ in 0..ksmd.pages_to_scan {
            let Some(item) = scan_get_next_rmap_item(&mut k, &mut ksmd) else {
                break;
            };
            cmp_and_merge_page(&mut k, &mut ksmd, &item);
            scanned += 1;
        }
        // Merging replaces PTEs and notifies: that may drop stale entries of a PROT_NONE
        // mergeable range.
        if k.counters.stale_mappings > 0 {
            update_stale_gauge(&mut k);
        }
    }
    let merged = k.counters.ksm.pages_merged - merged_before;
    let busy = scanned * ksmd.scan_cost_ns + merged * ksmd.merge_cost_ns;
    k.queue.schedule_in(busy + ksmd.sleep_millisecs * NSEC_PER_MSEC, Event::Ksmd);
}

/// Models scan_get_next_rmap_item(): the next page ksmd can look at. Absent pages (and,
/// where follow_page() finds pages and refuses protnone PTEs, protnone pages) are passed
/// over inside the loop, so they do not use up `pages_to_scan`. Returns `None` at the end
/// of a full pass, which ends the wake-up (ksm_do_scan() returns); the next pass starts
/// with an empty unstable tree (ksm_scan.seqnr).
fn scan_get_next_rmap_item(k: &mut Kernel, ksmd: &mut Ksmd) -> Option<Scanned> {
    loop {
        let (vi, off) = ksmd.cursor;
        if vi >= ksmd.vmas.len() {
            ksmd.cursor = (0, 0);
            ksmd.unstable.clear();
            return None;
        }
        let (mm, vma) = ksmd.vmas[vi];
        let (accessible, unmapped, base, len) = {
            let v = &k.mm(mm).vmas[vma];
            (v.accessible, v.unmapped, v.base, v.pages)
        };
        if unmapped || off >= len {
            ksmd.cursor = (vi + 1, 0);
            continue;
        }
        ksmd.cursor = (vi, off + 1);
        let page = base + off as PageIdx;
        // vm_normal_page() has no page for the zero page: the walk passes over it.
        if !k.pages.present(page) || k.pages.pte(page).flags & PTE_ZERO != 0 {
            continue;
        }
        // ksm_next_page_pmd_entry() takes any present anonymous page, protnone or not.
        if !k.rules.ksm_scan_walks && follow_page(k, page, accessible) == Followed::Protnone {
            k.counters.ksm.skipped_protnone += 1;
            trace_event!(k, TraceEvent::KsmSkip { addr: k.page_addr(mm, page) });
            continue;
        }
        if should_skip_rmap_item(k, ksmd, page) {
            k.counters.ksm.pages_skipped += 1;
            continue;
        }
        return Some(Scanned { mm, page, accessible });
    }
}

/// Models cmp_and_merge_page(): look the page up in the stable tree, then in the unstable
/// tree, once its checksum has held still since ksmd's last visit (before the stable tree
/// search on 6.12, before the unstable one on 6.1).
fn cmp_and_merge_page(k: &mut Kernel, ksmd: &mut Ksmd, item: &Scanned) {
    let (page, i) = (item.page, k.pages.slot(item.page));
    let content = k.pages.slots.content[i];
    // KSM pages are merged already; pinned pages cannot be write-protected
    // (write_protect_page() refuses a raised page_count).
    if k.pages.slots.pte(i).flags & PG_KSM != 0 || k.pages.slots.pins(i) > 0 {
        return;
    }
    let checksum_first = k.rules.ksm_checksum_first;
    if checksum_first && checksum_changed(k, page) {
        return;
    }
    let nid = k.pages.slots.pte(i).nid;
    let key = ksmd.key(page, content, nid);
    // A unique page finds no twin, but it goes into the unstable tree like any other, where
    // it lengthens every later search path.
    if content != 0
        && let Some(&kpage) = ksmd.stable.get(&key)
        && is_twin(k, ksmd, page, kpage)
        && k.pages.pte(kpage).flags & PG_KSM != 0
    {
        write_protect_page(k, item.mm, page);
        trace_ksm_merge(k, item.mm, page, kpage, KsmTree::Stable);
        replace_page(k, item.mm, item.accessible, page, kpage);
        return;
    }
    if !checksum_first && checksum_changed(k, page) {
        return;
    }
    let Some(tree) = unstable_tree_search_insert(k, ksmd, key, UnstableItem { page, mm: item.mm }) else {
        return;
    };
    // try_to_merge_two_pages(): the page being scanned becomes the KSM page in place and the
    // tree page is replaced by it.
    write_protect_page(k, item.mm, page);
    let i = k.pages.slot_mut(page);
    k.pages.slots.pte_mut(i).flags |= PG_KSM;
    ksm_map(k, page, page);
    ksmd.stable.insert(key, page);
    let tree_accessible = k.mm(tree.mm).page_accessible(tree.page);
    trace_ksm_merge(k, tree.mm, tree.page, page, KsmTree::Unstable);
    replace_page(k, tree.mm, tree_accessible, tree.page, page);
}

/// Models the `rmap_item->oldchecksum != calc_checksum(page)` test: a page whose content
/// ksmd has not seen yet is "volatile" this visit, and its checksum is recorded.
fn checksum_changed(k: &mut Kernel, page: PageIdx) -> bool {
    let flags = &mut k.pages.pte_mut(page).flags;
    let changed = *flags & RMAP_CHECKSUMMED == 0;
    *flags |= RMAP_CHECKSUMMED;
    changed
}

/// numasim_ksm_merge: `page` of `mm` is about to share KSM page `kpage`, a twin found in `tree`.
fn trace_ksm_merge(k: &mut Kernel, mm: Entity, page: PageIdx, kpage: PageIdx, tree: KsmTree) {
    trace_event!(k, {
        let (nid, kpage_nid) = (k.pages.pte(page).nid, k.pages.pte(kpage).nid);
        TraceEvent::KsmMerge { addr: k.page_addr(mm, page), nid, kpage_nid, tree }
    });
}

/// Whether `other` holds the same content as `page`, on the same node without
/// merge_across_nodes.
fn is_twin(k: &Kernel, ksmd: &Ksmd, page: PageIdx, other: PageIdx) -> bool {
    let (i, o) = (k.pages.slot(page), k.pages.slot(other));
    let slots = &k.pages.slots;
    other != page
        && slots.content[i] != 0
        && k.pages.has_folio(other)
        && slots.content[o] == slots.content[i]
        && (ksmd.merge_across_nodes || slots.pte(o).nid == slots.pte(i).nid)
}

/// Models unstable_tree_search_insert(): walk the tree towards `key`, reading every page on
/// the way with get_mergeable_page(). A tree page that cannot be read ends the search with
/// neither a match nor an insertion: on kernels whose follow_page() refuses protnone PTEs
/// (6.1.192, v6.2–v6.4) that is any protnone page on the path. Returns the matching tree
/// item, removed from the tree; otherwise inserts `item`. The path is the one a balanced
/// binary tree over the sorted keys takes (the midpoints of a binary search). Pages arrive
/// in scan order, so a unique page is inserted at the end of its block and the vector
/// moves only the (few) content-class entries behind it.
fn unstable_tree_search_insert(
    k: &mut Kernel,
    ksmd: &mut Ksmd,
    key: TreeKey,
    item: UnstableItem,
) -> Option<UnstableItem> {
    let tree = &ksmd.unstable;
    // The node's own tree: the slice of entries with this key's node.
    let (mut lo, mut hi) = (tree.partition_point(|(t, _)| t.0 < key.0), tree.partition_point(|(t, _)| t.0 <= key.0));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (tree_key, tree_item) = tree[mid];
        let readable = get_mergeable_page(k, tree_item);
        if !readable {
            if k.pages.present(tree_item.page) {
                k.counters.ksm.skipped_protnone += 1;
                trace_event!(k, TraceEvent::KsmSkip { addr: k.page_addr(tree_item.mm, tree_item.page) });
            }
            return None;
        }
        match tree_key.cmp(&key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal if is_twin(k, ksmd, item.page, tree_item.page) => {
                ksmd.unstable.remove(mid);
                return Some(tree_item);
            }
            // The tree page changed (its content or node) since it went in: the kernel
            // compares contents, so it is not a match; keep the page out of the tree.
            std::cmp::Ordering::Equal => return None,
        }
    }
    ksmd.unstable.insert(lo, (key, item));
    None
}

/// Models get_mergeable_page(): can ksmd read the tree page? 6.12 looks it up with
/// folio_walk_start(), which takes any present page; 6.1.192 and earlier with
/// follow_page(FOLL_GET), which refuses protnone PTEs in v6.2–v6.4's rule.
fn get_mergeable_page(k: &mut Kernel, item: UnstableItem) -> bool {
    let mm = k.mm(item.mm);
    let Some(vi) = mm.vma_of_page(item.page) else {
        return false;
    };
    let accessible = mm.vmas[vi].accessible;
    match follow_page(k, item.page, accessible) {
        Followed::None => false,
        Followed::Protnone => k.rules.ksm_lookup_walks,
        Followed::Page => true,
    }
}

/// Models write_protect_page(): the page's PTE loses its write bit (a protnone PTE stays
/// protnone) inside an MMU_NOTIFY_CLEAR invalidation of its address.
fn write_protect_page(k: &mut Kernel, mm: Entity, page: PageIdx) {
    split_huge_pmd_of(k, mm, page);
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
}

/// Models replace_page(): map the KSM page `kpage` in place of `page`'s own frame with
/// `mk_pte(kpage, vma->vm_page_prot)` — PROT_NONE in a PROT_NONE VMA, an ordinary
/// (not protnone, not young) PTE otherwise — under an MMU_NOTIFY_CLEAR invalidation.
fn replace_page(k: &mut Kernel, mm: Entity, vma_accessible: bool, page: PageIdx, kpage: PageIdx) {
    split_huge_pmd_of(k, mm, page);
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
    let old = k.pages.pte(page).nid;
    free_page_node(k, old);
    let (i, kpage_nid) = (k.pages.slot_mut(page), k.pages.pte(kpage).nid);
    let slots = &mut k.pages.slots;
    *slots.new_frame(i) = Pte { nid: kpage_nid, flags: PG_KSM | if vma_accessible { 0 } else { PTE_PROTNONE } };
    ksm_map(k, page, kpage);
    k.counters.ksm.pages_merged += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// should_skip_rmap_item() and skip_age() of 6.12.118: three visits, then skips of 1, 2,
    /// 4 and 8 scans between the visits that are let through.
    #[test]
    fn the_smart_scan_skips_a_page_for_longer_and_longer() {
        let mut item = RmapAge::default();
        let skipped: String = (0..24).map(|_| if item.visit() { 's' } else { '.' }).collect();
        assert_eq!(skipped, "....s.ss.ssss.ssssssss.s");
    }
}
