//! Transparent huge pages (mm/huge_memory.c): THP faults, PMD-level NUMA hinting, THP
//! migration and PMD splits.
//!
//! A THP's 512 subpages share one slot of [`super::Pages`] (the chunk is compact; it is
//! expanded into 512 equal slots when one subpage needs state of its own), so every 4 KiB
//! path (a CPU touch, GUP, the secondary MMUs, aging) sees the THP's node and PTE bits
//! without a check of its own; what is PMD-wide — one hinting fault, one 512-page migration,
//! one PMD update — happens here, at the block, on every slot of the chunk. Simplified: a
//! node has a free 2 MiB block while it has 512 free pages above its low watermark (no
//! fragmentation, no compaction, no khugepaged collapse, PMD-sized THPs only).

use bevy_ecs::entity::Entity;

use super::backing::{make_pmd_protnone, pte_protnone_in, restore_pmd};
use super::memory::{numa_fault_done, numa_migrate_check, numa_migrate_folio, vm_page_prot};
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range};
use super::numa_balancing::{folio_can_map_prot_numa, prot_numa_tier_check};
use super::{HPAGE_PMD_NR, PTE_PROTNONE, PTE_YOUNG, PTE_ZERO, PageIdx, Pmd, ZERO_PAGE_NID};
use crate::engine::Nanos;
use crate::kernel::{Faulter, Kernel};
use crate::machine::{Nid, PgData};

/// Models alloc_pages_mpol() (6.12.118; vma_alloc_folio() in 6.1.192) for a PMD-order
/// folio under the default local policy: first `__GFP_THISNODE | __GFP_NORETRY` on `nid`
/// (the fast path at the low watermark, then the slow path's min), and only for a
/// VM_HUGEPAGE VMA, whose vma_thp_gfp_mask() carries `__GFP_DIRECT_RECLAIM` under the default
/// defrag setting (`madvise`), again along the zonelist, so a full node gives a remote THP.
/// Returns the node. Simplified: a node has a free 2 MiB block while 512 pages are free above
/// the watermark (no fragmentation), and the retry's reclaim and compaction are not modelled.
pub(super) fn alloc_thp(k: &mut Kernel, nid: Nid, vm_hugepage: bool) -> Option<Nid> {
    let fits = |k: &mut Kernel, node: Nid, mark: fn(&PgData) -> u64| {
        let pgdat = k.pgdat(node);
        pgdat.free_pages >= mark(&pgdat) + HPAGE_PMD_NR
    };
    let marks: [fn(&PgData) -> u64; 2] = [|p| p.wmark.low, |p| p.wmark.min];
    if marks.iter().any(|&mark| fits(k, nid, mark)) {
        return Some(nid);
    }
    if !vm_hugepage {
        return None;
    }
    let zonelist = k.topo.zonelist(nid).to_vec();
    marks.iter().find_map(|&mark| zonelist.iter().copied().find(|&node| fits(k, node, mark)))
}

/// The slots holding block `b` of VMA `vma` of `mm` (one when the chunk is compact).
fn block_slots(k: &mut Kernel, mm: Entity, vma: usize, b: usize) -> std::ops::Range<usize> {
    let first = k.mm(mm).vmas[vma].block_page(b);
    k.pages.chunk_slots(first)
}

fn set_pmd(k: &mut Kernel, mm: Entity, vma: usize, b: usize, pmd: Pmd) {
    k.mm(mm).vmas[vma].pmds[b] = pmd;
}

/// Models do_huge_pmd_anonymous_page() for the first fault in an empty 2 MiB block: a read
/// maps the huge zero page (transparent_hugepage/use_zero_page, on by default); a write
/// allocates a THP on the faulting node, or for a VM_HUGEPAGE VMA on the nearest node with
/// room ([`alloc_thp`]). Returns false when the fault falls back to 4 KiB pages
/// (thp_fault_fallback).
pub fn do_huge_pmd_anonymous_page(k: &mut Kernel, mm: Entity, vma: usize, b: usize, nid: Nid, write: bool) -> bool {
    let range = block_slots(k, mm, vma, b);
    let prot = vm_page_prot(k.mm(mm).vmas[vma].accessible);
    if !write {
        for i in range {
            let pte = k.pages.slots.pte_mut(i);
            pte.nid = ZERO_PAGE_NID;
            pte.flags |= PTE_ZERO | prot;
        }
        set_pmd(k, mm, vma, b, Pmd::HugeZero);
        return true;
    }
    let vm_hugepage = k.mm(mm).vmas[vma].vm_hugepage;
    let Some(got) = alloc_thp(k, nid, vm_hugepage) else {
        k.counters.vmstat.thp_fault_fallback += 1;
        set_pmd(k, mm, vma, b, Pmd::Table);
        return false;
    };
    k.pgdat(got).free_pages -= HPAGE_PMD_NR;
    for i in range {
        let pte = k.pages.slots.pte_mut(i);
        pte.nid = got;
        pte.flags |= prot;
    }
    k.mm(mm).rss += HPAGE_PMD_NR;
    k.counters.vmstat.thp_fault_alloc += 1;
    set_pmd(k, mm, vma, b, Pmd::Huge);
    true
}

/// Models __split_huge_pmd(): the block's PMD becomes a table of 512 PTEs with the same
/// bits (a huge zero page becomes 512 zero-page PTEs), counted in thp_split_pmd; each
/// subpage gets a slot of its own, and a THP stays one folio (`Pmd::PteMapped`).
pub fn split_huge_pmd(k: &mut Kernel, mm: Entity, vma: usize, b: usize) {
    let pmd = k.mm(mm).vmas[vma].pmds[b];
    if matches!(pmd, Pmd::Huge | Pmd::HugeZero) {
        let first = k.mm(mm).vmas[vma].block_page(b);
        // MMU_NOTIFY_CLEAR over the PMD: the huge mapping secondary MMUs mirror is gone.
        invalidate_range(k, mm, first, HPAGE_PMD_NR, MmuNotifyEvent::Clear, |_| true);
        set_pmd(k, mm, vma, b, if pmd == Pmd::Huge { Pmd::PteMapped } else { Pmd::Table });
        k.pages.expand(first);
        k.counters.vmstat.thp_split_pmd += 1;
    }
}

/// The VMA and PMD block of `page` in `mm`, when THPs may map it.
fn block_of(k: &mut Kernel, mm: Entity, page: PageIdx) -> Option<(usize, usize)> {
    let m = k.mm(mm);
    let vi = m.vma_of_page(page)?;
    let v = &m.vmas[vi];
    v.pmd_block(v.start + u64::from(page - v.base)).map(|b| (vi, b))
}

/// Splits the THP or huge zero page mapping `page` into 4 KiB folios: KSM's
/// try_to_merge_one_page() calls split_huge_page() before it merges a subpage.
pub fn split_huge_pmd_of(k: &mut Kernel, mm: Entity, page: PageIdx) {
    if let Some((vi, b)) = block_of(k, mm, page) {
        split_huge_pmd(k, mm, vi, b);
        set_pmd(k, mm, vi, b, Pmd::Table);
    }
}

/// The PMD block of `page` when a PTE-mapped THP holds it.
pub fn pte_mapped_block(k: &mut Kernel, mm: Entity, page: PageIdx) -> Option<usize> {
    let (vi, b) = block_of(k, mm, page)?;
    (k.mm(mm).vmas[vi].pmds[b] == Pmd::PteMapped).then_some(b)
}

/// Models do_numa_page() on a page of a PTE-mapped THP. 6.12.118
/// ([`crate::version::Rules::pte_mapped_thp_numa`]): one hinting fault for the whole folio
/// (`nr_pages = folio_nr_pages()`), the folio's last_cpupid, a 512-page migration, then
/// numa_rebuild_large_mapping() makes every protnone PTE of the folio accessible and young,
/// and task_numa_fault() gets 512 pages. 6.1.192: `if (PageCompound(page)) goto out_map;`,
/// only this PTE restored, nothing counted.
pub fn do_pte_mapped_thp_numa_page(
    k: &mut Kernel,
    mm: Entity,
    vma: usize,
    b: usize,
    page: PageIdx,
    f: &mut Faulter,
) -> Nanos {
    if !k.rules.pte_mapped_thp_numa {
        let pte = k.pages.pte_mut(page);
        pte.flags = (pte.flags & !PTE_PROTNONE) | PTE_YOUNG;
        return 0;
    }
    let head = k.mm(mm).vmas[vma].block_page(b);
    let mut fault = numa_migrate_check(k, mm, vma, head, HPAGE_PMD_NR, f, true);
    let cost = k.sysctl.0.hint_fault_cost_ns + numa_migrate_folio(k, mm, head, HPAGE_PMD_NR, f, &mut fault);
    for i in block_slots(k, mm, vma, b) {
        let pte = k.pages.slots.pte_mut(i);
        if pte.flags & PTE_PROTNONE != 0 {
            pte.flags = (pte.flags & !PTE_PROTNONE) | PTE_YOUNG;
        }
    }
    numa_fault_done(k, mm, head, HPAGE_PMD_NR, f, &fault);
    cost
}

/// The pages of the THP that maps `page`, if one does (a PMD-mapped folio).
pub fn thp_pages_of(k: &mut Kernel, mm: Entity, page: PageIdx) -> Option<std::ops::Range<PageIdx>> {
    let (vi, b) = block_of(k, mm, page)?;
    let v = &k.mm(mm).vmas[vi];
    (v.pmds[b] == Pmd::Huge).then(|| v.block_page(b)..v.block_page(b) + HPAGE_PMD_NR as PageIdx)
}

/// Models change_huge_pmd() with MM_CP_PROT_NUMA: the THP's PMD becomes protnone, unless it
/// maps the huge zero page or is protnone already. Up to 6.18, unlike 4 KiB PTEs, pinned THPs
/// and THPs on a single-threaded task's node (`target_node`) are not skipped (6.1.192 and
/// 6.12.118 alike); from 6.19 (7.2.13, 7.3.4) it asks folio_can_map_prot_numa() as
/// change_pte_range() does ([`crate::version::Rules::thp_prot_numa_filter`]). The what-if
/// `kernel.prot_numa_skip_pinned` skips a pinned THP in any release. A memfd's THP is
/// changed in this mm's PMD only (its `pmd_protnone()` is this mapper's), and from 6.19 its
/// pins are tested as a shared 4 KiB folio's are ([`crate::version::Rules::prot_numa_pinned_shared`]).
/// Returns the subpages updated: 512 (one numa_huge_pte_updates, 512 numa_pte_updates) or 0.
pub fn change_huge_pmd(k: &mut Kernel, mm: Entity, vma: usize, b: usize, target_node: Option<Nid>) -> u64 {
    let v = &k.mm(mm).vmas[vma];
    if v.pmds[b] != Pmd::Huge {
        return 0;
    }
    let (head, memfd) = (v.block_page(b), v.memfd);
    let range = block_slots(k, mm, vma, b);
    if pte_protnone_in(k, mm, memfd, head) {
        return 0;
    }
    let skip_pinned = memfd.is_none() || k.rules.prot_numa_pinned_shared;
    if k.rules.thp_prot_numa_filter
        && !folio_can_map_prot_numa(k, (range.start, range.clone()), (target_node, skip_pinned))
    {
        return 0;
    }
    if !prot_numa_tier_check(k, range.clone())
        || (k.sysctl.0.prot_numa_skip_pinned && range.clone().any(|i| k.pages.slots.pins(i) > 0))
    {
        return 0;
    }
    make_pmd_protnone(k, mm, memfd, head);
    k.counters.vmstat.numa_huge_pte_updates += 1;
    HPAGE_PMD_NR
}

/// Models do_huge_pmd_numa_page() (mm/huge_memory.c, 6.12.117): one hinting fault for the
/// whole THP, the two-stage filter on the folio's last_cpupid, a 512-page migration through
/// migrate_misplaced_folio(), the PMD made accessible again, and task_numa_fault() with
/// HPAGE_PMD_NR pages. A memfd THP another mm maps gets TNF_SHARED from numa_migrate_check()
/// (6.12.118: folio_likely_mapped_shared() and VM_SHARED; 6.1.192's do_huge_pmd_numa_page()
/// never sets it, but 6.1 never scans a memfd VMA); it migrates as an anonymous THP does
/// (shmem is swap-backed, not file LRU, so neither the VM_EXEC nor the dirty refusal of
/// migrate_misplaced_folio_prepare() applies, whatever the mapcount).
pub fn do_huge_pmd_numa_page(k: &mut Kernel, mm: Entity, vma: usize, b: usize, f: &mut Faulter) -> Nanos {
    let head = k.mm(mm).vmas[vma].block_page(b);
    let mut fault = numa_migrate_check(k, mm, vma, head, HPAGE_PMD_NR, f, true);
    let cost = k.sysctl.0.hint_fault_cost_ns + numa_migrate_folio(k, mm, head, HPAGE_PMD_NR, f, &mut fault);
    let memfd = k.mm(mm).vmas[vma].memfd;
    restore_pmd(k, mm, memfd, head);
    numa_fault_done(k, mm, head, HPAGE_PMD_NR, f, &fault);
    cost
}
