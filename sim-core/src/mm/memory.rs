//! Page faults (mm/memory.c): first-touch allocation and the NUMA hinting fault.

use bevy_ecs::entity::Entity;

use super::backing::{
    Backing, alloc_node, hugetlb_fault, mappers, migrated_ptes_rebuilt, page_mappers, pte_protnone_in, restore_pte,
};
use super::huge_memory::{
    do_huge_pmd_anonymous_page, do_huge_pmd_numa_page, do_pte_mapped_thp_numa_page, split_huge_pmd,
};
use super::ksm::ksm_unmap;
use super::migrate::{migrate_misplaced_folio, trace_migrate_pages};
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range};
use super::shmem::shmem_fault_huge;
use super::userfaultfd::do_uffd_rwp;
use super::{
    CPUPID_UNSET, PG_KSM, PTE_COW, PTE_PROTNONE, PTE_UFFD, PTE_YOUNG, PTE_ZERO, PageIdx, Pmd, Pte, RMAP_CHECKSUMMED,
    ZERO_PAGE_NID,
};
use crate::engine::Nanos;
use crate::kernel::{Faulter, Kernel};
use crate::machine::{NUMA_NO_NODE, Nid, PgData};
use crate::sched::numa::{
    TNF_FAULT_LOCAL, TNF_MIGRATE_FAIL, TNF_MIGRATED, TNF_SHARED, should_numa_migrate_memory, task_numa_fault,
};
use crate::sched::promotion::folio_use_access_time;
use crate::trace::Event;
use crate::trace_event;

/// The watermarks get_page_from_freelist() tries in turn: low (the fast path), min (the
/// slow path), then any free page (standing in for reclaim, which is not modelled).
const WATERMARKS: [fn(&PgData) -> u64; 3] = [|p| p.wmark.low, |p| p.wmark.min, |_| 0];

/// Allocates one page frame, preferring `nid` and falling back along its zonelist, as
/// get_page_from_freelist() does: first to the nearest node above its low watermark, then
/// (the slow path) above its min watermark. Simplified: no kswapd or reclaim, so when every
/// node is below min the nearest with any free page gives it, as reclaim would have.
pub fn alloc_page_node(k: &mut Kernel, nid: Nid) -> Option<Nid> {
    let mut got = None;
    take_frames(k, nid, 1, |node, _| got = Some(node));
    got
}

/// Takes `n` frames as `n` calls of [`alloc_page_node`] would, one pass per watermark (free
/// pages only fall meanwhile, so a node passed over is never come back to), calling
/// `give(node, count)` for each node that gave some, in order. False if memory ran out.
fn take_frames(k: &mut Kernel, nid: Nid, mut n: u64, mut give: impl FnMut(Nid, u64)) -> bool {
    for mark in WATERMARKS {
        for i in 0..k.topo.nr_nodes as usize {
            let node = k.topo.zonelist(nid)[i];
            let mut pgdat = k.pgdat(node);
            let take = n.min(pgdat.free_pages.saturating_sub(mark(&pgdat)));
            if take > 0 {
                pgdat.free_pages -= take;
                give(node, take);
                n -= take;
            }
            if n == 0 {
                return true;
            }
        }
    }
    false
}

/// Write-faults every missing page of `pages` from `base` (a VMA without THP) from a CPU on
/// node `nid`, as a memset or MAP_POPULATE's populate_vma_page_range() does: what
/// do_anonymous_page() does for each, for all of them at once.
pub fn populate_range(k: &mut Kernel, mm: Entity, base: PageIdx, pages: u64, nid: Nid) {
    let range = || (0..pages).map(|p| base + p as PageIdx);
    let missing = range().filter(|&p| !k.pages.present(p)).count() as u64;
    let mut given = Vec::new();
    let enough = take_frames(k, nid, missing, |node, n| given.push((node, n)));
    assert!(enough, "config validation keeps all VMAs within memory");
    let mut frames = given.into_iter().flat_map(|(node, n)| std::iter::repeat_n(node, n as usize));
    for page in range() {
        if !k.pages.present(page) {
            let pte = k.pages.pte_mut(page);
            pte.nid = frames.next().expect("a frame per missing page");
            pte.flags |= PTE_YOUNG;
        }
    }
    for m in page_mappers(k, mm, base) {
        k.mm(m).rss += missing;
    }
}

/// Returns a frame to node `nid`'s free lists.
pub fn free_page_node(k: &mut Kernel, nid: Nid) {
    k.pgdat(nid).free_pages += 1;
}

/// A user access the VMA does not allow (VM_FAULT_SIGSEGV): no VMA, or a PROT_NONE one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sigsegv;

/// Models the user page fault path, lock_vma_under_rcu() + access_error() + handle_mm_fault()
/// for an anonymous private VMA: a missing page is allocated (do_anonymous_page()), a
/// protnone PTE in an accessible VMA takes the hinting fault (do_numa_page()), and a write
/// to a KSM page breaks COW (do_wp_page()). Returns the CPU time the fault cost.
pub fn handle_mm_fault(
    k: &mut Kernel,
    mm: Entity,
    page: PageIdx,
    write: bool,
    f: &mut Faulter,
) -> Result<Nanos, Sigsegv> {
    let m = k.mms.get(mm).expect("faulting tasks have a live mm");
    let vma = m.vma_of_page(page).filter(|&v| m.vmas[v].accessible).ok_or(Sigsegv)?;
    Ok(handle_pte_fault(k, mm, vma, page, write, f))
}

/// Models handle_pte_fault() for page `page` of VMA `vma`: a missing page is allocated
/// (do_anonymous_page()), a protnone PTE in an accessible VMA takes the RWP fault when it
/// carries the uffd marker (do_uffd_rwp(), 7.3) and the hinting fault otherwise
/// (do_numa_page()), a write to a KSM page or the zero page copies it (do_wp_page()). User
/// faults and GUP's faultin_page() both come here, with FAULT_FLAG_ALLOW_RETRY (GUP callers
/// without it stop at [`super::userfaultfd::userfault_sigbus`] first). Returns the time the
/// fault cost.
pub fn handle_pte_fault(k: &mut Kernel, mm: Entity, vma: usize, page: PageIdx, write: bool, f: &mut Faulter) -> Nanos {
    let flags = k.pages.pte(page).flags;
    if !k.pages.present(page) {
        match k.mm(mm).vmas[vma].backing {
            Backing::Anon => do_anonymous_page(k, mm, vma, page, f.nid, write),
            Backing::Hugetlbfs => {
                let v = k.mm(mm).vmas[vma].clone();
                let mapped = hugetlb_fault(k, &v, page, v.hugetlb, f.nid);
                assert!(mapped, "the boot-time pool holds every hugetlbfs VMA's pages");
            }
            Backing::Memfd | Backing::GuestMemfd => shmem_fault(k, mm, vma, page, f.nid),
        }
        k.sysctl.0.hint_fault_cost_ns
    } else if flags & PTE_PROTNONE != 0 && !own_pte_protnone(k, mm, vma, page) {
        // Another mapper of the memfd made its own PTE or PMD protnone; this mm's is accessible.
        mark_young(k, mm, vma, page);
        0
    } else if flags & PTE_PROTNONE != 0 && k.mm(mm).vmas[vma].accessible {
        let rwp = k.mm(mm).vmas[vma].uffd_rwp.filter(|_| flags & PTE_UFFD != 0);
        if let Some(mode) = rwp {
            do_uffd_rwp(k, mm, page, mode)
        } else if let Some(b) = huge_block(k, mm, vma, page, Pmd::Huge) {
            do_huge_pmd_numa_page(k, mm, vma, b, f)
        } else if let Some(b) = huge_block(k, mm, vma, page, Pmd::PteMapped) {
            do_pte_mapped_thp_numa_page(k, mm, vma, b, page, f)
        } else {
            do_numa_page(k, mm, vma, page, f)
        }
    } else if write && flags & PTE_COW != 0 {
        // do_huge_pmd_wp_page() on the huge zero page: split the PMD, then copy 4 KiB.
        if let Some(b) = huge_block(k, mm, vma, page, Pmd::HugeZero) {
            split_huge_pmd(k, mm, vma, b);
        }
        do_wp_page(k, mm, page, f.nid);
        k.sysctl.0.hint_fault_cost_ns
    } else {
        0
    }
}

/// Whether `mm`'s own PTE for `page` of its VMA `vma` is protnone (see [`pte_protnone_in`]).
fn own_pte_protnone(k: &Kernel, mm: Entity, vma: usize, page: PageIdx) -> bool {
    let m = k.mms.get(mm).expect("faulting tasks have a live mm");
    pte_protnone_in(k, mm, m.vmas[vma].memfd, page)
}

/// The access sets the accessed bit: a PMD-mapped THP's for all its subpages at once (its
/// chunk stays compact).
fn mark_young(k: &mut Kernel, mm: Entity, vma: usize, page: PageIdx) {
    if huge_block(k, mm, vma, page, Pmd::Huge).is_some() {
        for i in k.pages.chunk_slots(page) {
            k.pages.slots.pte_mut(i).flags |= PTE_YOUNG;
        }
    } else {
        k.pages.pte_mut(page).flags |= PTE_YOUNG;
    }
}

/// The PMD block of VMA `vma` holding `page`, when that block is in state `pmd`.
fn huge_block(k: &mut Kernel, mm: Entity, vma: usize, page: PageIdx, pmd: Pmd) -> Option<usize> {
    let m = k.mm(mm);
    let v = &m.vmas[vma];
    v.pmd_block(v.start + u64::from(page - v.base)).filter(|&b| v.pmds[b] == pmd)
}

/// Models do_anonymous_page() (mm/memory.c, 6.1.192 and 6.12.117): "Use the zero-page for
/// reads" — a read maps the shared zero page, which has no folio, costs no RSS and is never
/// made protnone; a write gets a fresh zeroed page on the faulting CPU's node (the default
/// local mempolicy). Both are mapped young, with the VMA's protection. In an empty block of a THP-eligible VMA,
/// __handle_mm_fault() tries a THP first (do_huge_pmd_anonymous_page()).
pub fn do_anonymous_page(k: &mut Kernel, mm: Entity, vma: usize, page: PageIdx, nid: Nid, write: bool) {
    if let Some(b) = huge_block(k, mm, vma, page, Pmd::None)
        && do_huge_pmd_anonymous_page(k, mm, vma, b, nid, write)
    {
        return;
    }
    let prot = vm_page_prot(k.mm(mm).vmas[vma].accessible);
    let i = k.pages.slot_mut(page);
    let slots = &mut k.pages.slots;
    if !write {
        let pte = slots.pte_mut(i);
        pte.nid = ZERO_PAGE_NID;
        pte.flags |= PTE_ZERO | prot;
        return;
    }
    let want = alloc_node(k, &k.mms.get(mm).expect("faulting tasks have a live mm").vmas[vma], page, nid);
    let got = alloc_page_node(k, want).expect("config validation keeps all VMAs within memory");
    let slots = &mut k.pages.slots;
    let pte = slots.pte_mut(i);
    pte.nid = got;
    pte.flags |= prot;
    k.mm(mm).rss += 1;
}

/// Models shmem_fault() → shmem_get_folio_gfp() for a page not yet in the file (and
/// kvm_gmem_get_folio() for guest_memfd): a read allocates too (shmem maps no zero page), on
/// the node the VMA's policy gives or the faulting CPU's; a memfd's empty 2 MiB block may get
/// a THP first (`shmem.rs`). Every mm mapping the memfd counts
/// the page in its RSS (MM_SHMEMPAGES); guest_memfd pages are in none.
pub fn shmem_fault(k: &mut Kernel, mm: Entity, vma: usize, page: PageIdx, nid: Nid) {
    if let Some(b) = huge_block(k, mm, vma, page, Pmd::None)
        && shmem_fault_huge(k, mm, vma, b, nid)
    {
        return;
    }
    let v = k.mm(mm).vmas[vma].clone();
    let want = alloc_node(k, &v, page, nid);
    let got = alloc_page_node(k, want).expect("config validation keeps all VMAs within memory");
    let pte = k.pages.pte_mut(page);
    pte.nid = got;
    pte.flags |= vm_page_prot(v.accessible);
    if v.backing.in_rss() {
        for m in mappers(k, mm, &v) {
            k.mm(m).rss += 1;
        }
    }
}

/// The bits a first touch maps with: do_anonymous_page() and do_huge_pmd_anonymous_page()
/// (6.1.192, 6.12.118) build the entry from `vma->vm_page_prot`, which is PAGE_NONE in a
/// PROT_NONE VMA, so a FOLL_FORCE GUP's first touch there (ptrace, /proc/PID/mem) maps a
/// protnone entry that CPUs still cannot use.
pub fn vm_page_prot(accessible: bool) -> u8 {
    if accessible { PTE_YOUNG } else { PTE_YOUNG | PTE_PROTNONE }
}

/// Models do_wp_page() → wp_page_copy() for a write through a read-only PTE of a private
/// mapping: the KSM page (counted as the kernel's `cow_ksm` event; the copy's content is
/// then its own) or the shared zero page is replaced by a fresh frame on `nid`, under an
/// MMU notifier invalidation of the address.
pub fn do_wp_page(k: &mut Kernel, mm: Entity, page: PageIdx, nid: Nid) {
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
    let got = alloc_page_node(k, nid).expect("config validation keeps all VMAs within memory");
    let i = k.pages.slot_mut(page);
    let old = k.pages.slots.pte(i).flags;
    if old & PG_KSM != 0 {
        trace_event!(k, Event::KsmCow { addr: k.page_addr(mm, page), nid: got });
        ksm_unmap(k, page);
    }
    let slots = &mut k.pages.slots;
    // A KSM page's copy has new content: ksmd's checksum of it is gone.
    let checksummed = if old & PG_KSM != 0 { RMAP_CHECKSUMMED } else { 0 };
    *slots.new_frame(i) = Pte { nid: got, flags: (old & !PTE_COW & !checksummed) | PTE_YOUNG };
    if old & PG_KSM != 0 {
        slots.content[i] = 0;
        k.counters.vmstat.cow_ksm += 1;
    } else {
        k.mm(mm).rss += 1;
    }
}

/// What numasim_hint_fault records of a hinting fault at `page` (a THP's head for a PMD
/// fault) with task_numa_fault() `flags`.
pub fn hint_fault_event(
    k: &Kernel,
    mm: Entity,
    page: PageIdx,
    page_nid: Nid,
    f: &Faulter,
    pages: u64,
    flags: u32,
) -> Event {
    Event::HintFault {
        addr: k.page_addr(mm, page),
        page_nid,
        nid: f.nid,
        source: f.source,
        nr_pages: pages as u32,
        local: flags & TNF_FAULT_LOCAL != 0,
        migrated: flags & TNF_MIGRATED != 0,
        migrate_fail: flags & TNF_MIGRATE_FAIL != 0,
    }
}

/// A hinting fault in progress: what numa_migrate_check() found and what came of it.
pub struct NumaFault {
    pub page_nid: Nid,
    /// The node the folio ends on.
    pub nid: Nid,
    pub flags: u32,
    pub last_cpupid: u32,
    pub migrate: bool,
}

/// Models numa_migrate_check() (mm/memory.c, 6.12.117; inline in do_numa_page() in 6.1):
/// count the fault, mark it local, read the folio's last_cpupid and ask mpol_misplaced()
/// (mm/mempolicy.c, 6.1.192 and 6.12.117): the default policy is preferred_node_policy[this
/// node], MPOL_PREFERRED with MPOL_F_MOF | MPOL_F_MORON; a page already on the faulting CPU's
/// node leaves at `if (node_isset(curnid, pol->nodes)) goto out;`, before
/// should_numa_migrate_memory(), so only remote faults record their CPU+pid in last_cpupid
/// and pass the two-stage filter. `head` is the page, or a THP's first subpage, of a folio
/// of `nr` pages. In memory-tiering mode a slow-tier folio's last_cpupid holds an access
/// time, so task_numa_fault() gets an unset one.
pub fn numa_migrate_check(
    k: &mut Kernel,
    mm: Entity,
    vma: usize,
    head: PageIdx,
    nr: u64,
    f: &Faulter,
    may_migrate: bool,
) -> NumaFault {
    let page_nid = k.pages.pte(head).nid;
    debug_assert_ne!(page_nid, NUMA_NO_NODE);
    k.mm(mm).vmas[vma].set_access_pid_bit(f.pid);
    k.counters.vmstat.numa_hint_faults += 1;
    k.counters.hint_fault(f.source);
    let toptier = k.tiers.node_is_toptier(page_nid);
    k.counters.hint_fault_tier(toptier);
    let mut flags = shared_fault_flag(k, mm, vma);
    if page_nid == f.nid {
        k.counters.vmstat.numa_hint_faults_local += 1;
        flags |= TNF_FAULT_LOCAL;
    }
    let last_cpupid =
        if folio_use_access_time(k, page_nid) { CPUPID_UNSET } else { k.pages.slots.last_cpupid[k.pages.slot(head)] };
    let migrate = page_nid != f.nid && may_migrate && should_numa_migrate_memory(k, f, head, nr, page_nid);
    NumaFault { page_nid, nid: page_nid, flags, last_cpupid, migrate }
}

/// TNF_SHARED for a fault in a MAP_SHARED VMA on a folio another mm maps too
/// (do_numa_page(): `page_mapcount(page) > 1` in 6.1.192, folio_likely_mapped_shared() in
/// 6.12.117, folio_maybe_mapped_shared() in 7.3.4, each with `vma->vm_flags & VM_SHARED`).
/// A memfd's mappers all map its present pages (see `backing.rs`).
fn shared_fault_flag(k: &mut Kernel, mm: Entity, vma: usize) -> u32 {
    let m = k.mm(mm);
    let v = &m.vmas[vma];
    let shared = v.memfd.is_some_and(|id| k.kinds.memfds[id as usize].mappers.len() > 1);
    if shared { TNF_SHARED } else { 0 }
}

/// Moves the folio of `nr` pages at `head` toward the faulting CPU's node when
/// numa_migrate_check() asked for it (migrate_misplaced_folio()); returns the copy's CPU time.
pub fn numa_migrate_folio(
    k: &mut Kernel,
    mm: Entity,
    head: PageIdx,
    nr: u64,
    f: &Faulter,
    fault: &mut NumaFault,
) -> Nanos {
    if !fault.migrate {
        return 0;
    }
    // The destination folio is allocated for the faulting task (current): a task of the mm
    // under its cpuset, a kernel thread (no mm, a device's worker) under the root cpuset.
    let mems_allowed = if f.task.is_some() { k.mm(mm).mems_allowed } else { u64::MAX };
    let result = migrate_misplaced_folio(k, mm, head, nr, f.nid, mems_allowed);
    trace_migrate_pages(k, f, nr, result);
    match result {
        Ok(()) => {
            migrated_ptes_rebuilt(k, mm, head, nr);
            fault.nid = f.nid;
            fault.flags |= TNF_MIGRATED;
            k.sysctl.0.migrate_cost_ns * nr
        }
        Err(_) => {
            fault.flags |= TNF_MIGRATE_FAIL;
            0
        }
    }
}

/// The end of a hinting fault, once the PTEs are accessible again: trace it and account it
/// to the task (task_numa_fault(last_cpupid, nid, nr, flags)).
pub fn numa_fault_done(k: &mut Kernel, mm: Entity, head: PageIdx, nr: u64, f: &mut Faulter, fault: &NumaFault) {
    trace_event!(k, f, hint_fault_event(k, mm, head, fault.page_nid, f, nr, fault.flags));
    if let Some(task) = f.task.take() {
        task_numa_fault(k, task, f, fault.last_cpupid, fault.nid, nr, fault.flags);
        f.task = Some(task);
    }
}

/// Models do_numa_page() in mm/memory.c: numa_migrate_check(), a migration toward the
/// faulting CPU's node, the PTE restored, and the fault accounted to the task. Simplified: a
/// KSM page (write_protect_page() keeps a protnone PTE protnone) is not migrated, since
/// every sharer would have to be remapped; the kernel moves it by rmap.
pub fn do_numa_page(k: &mut Kernel, mm: Entity, vma: usize, page: PageIdx, f: &mut Faulter) -> Nanos {
    let ksm = k.pages.pte(page).flags & PG_KSM != 0;
    let mut fault = numa_migrate_check(k, mm, vma, page, 1, f, !ksm);
    let cost = k.sysctl.0.hint_fault_cost_ns + numa_migrate_folio(k, mm, page, 1, f, &mut fault);
    // The PTE is made accessible again (numa_rebuild_single_mapping(), or the new PTE after
    // migration); the access that faulted sets the accessed bit.
    let memfd = k.mm(mm).vmas[vma].memfd;
    restore_pte(k, mm, memfd, page);
    numa_fault_done(k, mm, page, 1, f, &fault);
    cost
}
