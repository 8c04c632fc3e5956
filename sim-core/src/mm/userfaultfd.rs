//! userfaultfd read-write protection, RWP (7.3): UFFDIO_REGISTER_MODE_RWP and
//! UFFDIO_RWPROTECT (mm/userfaultfd.c), do_uffd_rwp() (mm/memory.c), change_pte_range() with
//! MM_CP_UFFD_RWP (mm/mprotect.c), read in 7.3.4.
//!
//! RWP is a second user of protnone PTEs. UFFDIO_RWPROTECT makes the present PTEs of a
//! VM_UFFD_RWP VMA PAGE_NONE with `_PAGE_UFFD` ([`PTE_UFFD`]) on top, so the next access, by
//! a CPU or through GUP, takes the RWP fault instead of do_numa_page(): handle_pte_fault()
//! tells the two apart by the marker alone. A VMM's working-set or dirty tracker arms a range
//! and its handler thread learns of each access and resolves the page (sync mode); with
//! UFFD_FEATURE_RWP_ASYNC the kernel resolves it itself and nobody is told.
//!
//! Simplified:
//! - Only 4 KiB mappings: a THP-eligible VMA cannot register (do_huge_pmd_uffd_rwp() and the
//!   PMD paths are not modelled).
//! - The handler thread is not scheduled: it takes no CPU and answers every fault
//!   `latency` after it, however many are waiting.
//! - A thread waiting for the handler is charged the wait as its own time; it does not sleep.
//! - The handler's resolve lands at the fault, not `latency` later.
//! - Anonymous private memory only: no fork(), mremap(), swap or UFFDIO_MOVE, which keep or
//!   re-arm the marker in the kernel. A migrated page (kswapd's demotion) keeps its marker
//!   and PAGE_NONE, as remove_migration_pte() restores them; the migration entry a racing
//!   access would wait on is not modelled.

use bevy_ecs::entity::Entity;

use super::mmu_notifier::{MmuNotifyEvent, invalidate_range};
use super::{PTE_PROTNONE, PTE_UFFD, PTE_YOUNG, PageIdx, Vma};
use crate::engine::Nanos;
use crate::kernel::Kernel;

/// How the faults of a VM_UFFD_RWP VMA are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwpMode {
    /// handle_userfault(): the faulting thread waits for the handler thread's
    /// UFFDIO_RWPROTECT without UFFDIO_RWPROTECT_MODE_RWP over the page, `latency` after the
    /// fault.
    Sync { latency: Nanos },
    /// UFFD_FEATURE_RWP_ASYNC: do_uffd_rwp() restores vm_page_prot and drops the marker.
    Async,
}

/// Both bits of an armed PTE.
const ARMED: u8 = PTE_PROTNONE | PTE_UFFD;

/// Models userfaultfd_pte_rwp(): the marker on a PTE of a VM_UFFD_RWP VMA.
pub fn userfaultfd_pte_rwp(vma: &Vma, pte_flags: u8) -> bool {
    vma.uffd_rwp.is_some() && pte_flags & PTE_UFFD != 0
}

/// Whether a fault on a PTE with `pte_flags` in `vma` ends in handle_userfault()'s
/// VM_FAULT_SIGBUS: a sync RWP fault without FAULT_FLAG_ALLOW_RETRY, which faultin_page()
/// sets only for FOLL_UNLOCKABLE. get_user_pages_remote() with a NULL `locked`, as
/// /proc/PID/mem's access_remote_vm() calls it, thus gets -EFAULT instead of waiting.
pub fn userfault_sigbus(vma: &Vma, pte_flags: u8, allow_retry: bool) -> bool {
    !allow_retry && matches!(vma.uffd_rwp, Some(RwpMode::Sync { .. })) && userfaultfd_pte_rwp(vma, pte_flags)
}

/// Models mrwprotect_range() → change_protection() with MM_CP_UFFD_RWP (`enable`) or
/// MM_CP_UFFD_RWP_RESOLVE over pages `first..first + pages` of `mm`, which may span several
/// VMAs of one registered region. Arming makes every present PTE PAGE_NONE with the marker
/// (change_pte_range() skips only PTEs already armed, and no NUMA filter applies); resolving
/// drops the marker and applies vm_page_prot, which is PAGE_NONE only in a PROT_NONE VMA.
/// Either way a pending NUMA hint of an accessible VMA (protnone without the marker) is
/// rewritten and its hinting fault never comes (`numasim.uffd_rwp_hints_lost`). Missing PTEs
/// stay missing: RWP installs no pte markers. Secondary MMUs hear of the range
/// (MMU_NOTIFY_PROTECTION_VMA).
pub fn mrwprotect_range(k: &mut Kernel, mm: Entity, first: PageIdx, pages: u64, enable: bool) {
    let end = u64::from(first) + pages;
    let spans: Vec<(PageIdx, PageIdx, bool)> = k
        .mm(mm)
        .vmas
        .iter()
        .filter(|v| !v.unmapped && u64::from(v.base) < end && u64::from(v.base) + v.pages > u64::from(first))
        .map(|v| (v.base.max(first), (u64::from(v.base) + v.pages).min(end) as PageIdx, v.accessible))
        .collect();
    let mut changed = Vec::new();
    for (lo, hi, accessible) in spans {
        for page in lo..hi {
            if !k.pages.present(page) {
                continue;
            }
            let old = k.pages.pte(page).flags;
            if accessible && old & ARMED == PTE_PROTNONE {
                k.counters.uffd_rwp.uffd_rwp_hints_lost += 1;
            }
            let new = match (enable, accessible) {
                (true, _) => old | ARMED,
                (false, true) => old & !ARMED,
                (false, false) => old & !PTE_UFFD,
            };
            if new != old {
                k.pages.pte_mut(page).flags = new;
                changed.push(page);
            }
        }
    }
    invalidate_range(k, mm, first, pages, MmuNotifyEvent::ProtectionVma, |p| changed.binary_search(&p).is_ok());
}

/// Models do_uffd_rwp() for an access to an armed `page` of VMA `mode` registered it with:
/// in sync mode handle_userfault() queues a message and the handler thread resolves the page
/// with UFFDIO_RWPROTECT (as a tracker does once it has recorded the access), which wakes
/// the faulting thread; in async mode the kernel restores vm_page_prot and drops the marker
/// itself. The access then proceeds and sets the accessed bit. Returns the fault's time: the
/// trap (`kernel.hint_fault_cost_ns`, the same entry and return as a hinting fault), plus the
/// handler's latency in sync mode.
pub fn do_uffd_rwp(k: &mut Kernel, mm: Entity, page: PageIdx, mode: RwpMode) -> Nanos {
    k.counters.uffd_rwp.uffd_rwp_faults += 1;
    let trap = k.sysctl.0.hint_fault_cost_ns;
    let wait = match mode {
        RwpMode::Sync { latency } => {
            mrwprotect_range(k, mm, page, 1, false);
            latency
        }
        RwpMode::Async => {
            k.pages.pte_mut(page).flags &= !ARMED;
            0
        }
    };
    k.pages.pte_mut(page).flags |= PTE_YOUNG;
    trap + wait
}
