//! mprotect() and munmap() as workload actions (mm/mprotect.c, mm/mmap.c).
//!
//! Simplified: both act on a whole VMA (no VMA splitting).

use bevy_ecs::prelude::*;

use super::ksm::ksm_unmap;
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range, update_stale_gauge};
use super::{PG_KSM, PTE_PROTNONE, PTE_ZERO, PageIdx, Pte};
use crate::config::Syscall;
use crate::engine::{Event, Nanos};
use crate::kernel::Kernel;
use crate::machine::NUMA_NO_NODE;

/// A scheduled system call on a VMA.
#[derive(Clone, Debug)]
pub struct Action {
    pub syscall: Syscall,
    pub mm: Entity,
    pub vma: usize,
    /// How long an mprotect(PROT_NONE) lasts (0: for good) and its period (0: once).
    pub protect: Nanos,
    pub period: Nanos,
}

/// The workload's scheduled system calls, indexed by [`Event::Action`].
#[derive(Resource, Debug, Default)]
pub struct Actions(pub Vec<Action>);

/// Handler of [`Event::Action`]: make the call, schedule the next toggle, and recount the
/// stale secondary mappings (only these calls can create them).
pub fn run_action(In(i): In<u32>, mut k: Kernel, actions: Res<Actions>) {
    let a = &actions.0[i as usize];
    let now = k.now();
    let pid = k.mm(a.mm).pid;
    k.trace_current(0, pid, now);
    match a.syscall {
        Syscall::Munmap => do_munmap(&mut k, a.mm, a.vma),
        Syscall::Mprotect => {
            if k.mm(a.mm).vmas[a.vma].accessible {
                mprotect_vma(&mut k, a.mm, a.vma, false);
                if a.protect > 0 {
                    k.queue.schedule(now + a.protect, Event::Action(i));
                }
            } else {
                mprotect_vma(&mut k, a.mm, a.vma, true);
                if a.period > 0 {
                    k.queue.schedule(now + a.period - a.protect, Event::Action(i));
                }
            }
        }
    }
    update_stale_gauge(&mut k);
}

/// Models mprotect() → change_protection() over a whole VMA: to PROT_NONE
/// (`accessible = false`) or back to read/write. A NUMA-hinting PTE and a PROT_NONE PTE
/// are the same bits (_PAGE_PROTNONE), so making a hinting PTE PROT_NONE changes nothing;
/// change_pmd_range() still notifies for the whole range, which a `smart` notifier filters.
pub fn mprotect_vma(k: &mut Kernel, mm: Entity, vma: usize, accessible: bool) {
    let (base, len) = {
        let mut m = k.mm(mm);
        let v = &mut m.vmas[vma];
        if v.unmapped || v.accessible == accessible {
            return;
        }
        v.accessible = accessible;
        (v.base, v.pages)
    };
    let mut changed: Vec<PageIdx> = Vec::new();
    let runs: Vec<_> = k.pages.runs(base, len).collect();
    for (page, n, i) in runs {
        let pte = k.pages.slots.pte_mut(i);
        if pte.nid == NUMA_NO_NODE {
            continue;
        }
        if (pte.flags & PTE_PROTNONE != 0) == accessible {
            changed.extend(page..page + n as PageIdx);
        }
        if accessible {
            pte.flags &= !PTE_PROTNONE;
        } else {
            pte.flags |= PTE_PROTNONE;
        }
    }
    invalidate_range(k, mm, base, len, MmuNotifyEvent::ProtectionVma, |p| changed.binary_search(&p).is_ok());
}

/// Models munmap() of a whole VMA: the pages are unmapped and freed (a pinned page's frame
/// lives on with its pin), and secondary MMUs are invalidated (MMU_NOTIFY_UNMAP).
pub fn do_munmap(k: &mut Kernel, mm: Entity, vma: usize) {
    let (base, len) = {
        let mut m = k.mm(mm);
        let v = &mut m.vmas[vma];
        if v.unmapped {
            return;
        }
        v.unmapped = true;
        v.accessible = false;
        (v.base, v.pages)
    };
    let was_present: Vec<bool> = (base..base + len as PageIdx).map(|p| k.pages.present(p)).collect();
    invalidate_range(k, mm, base, len, MmuNotifyEvent::Unmap, |p| was_present[(p - base) as usize]);
    let mut freed = 0;
    let runs: Vec<_> = k.pages.runs(base, len).collect();
    for (page, n, i) in runs {
        let Pte { nid, flags } = k.pages.slots.pte(i);
        if nid == NUMA_NO_NODE {
            continue;
        }
        let zero_page = flags & PTE_ZERO != 0;
        if flags & PG_KSM != 0 {
            // A KSM frame goes with its last mapping.
            ksm_unmap(k, page);
        } else if !zero_page && k.pages.slots.pins[i] == 0 {
            k.pgdat(nid).free_pages += n;
        }
        *k.pages.slots.pte_mut(i) = Pte { nid: NUMA_NO_NODE, flags: 0 };
        freed += if zero_page { 0 } else { n };
    }
    k.mm(mm).rss -= freed;
}
