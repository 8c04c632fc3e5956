//! mprotect(), munmap() and UFFDIO_RWPROTECT as workload actions (mm/mprotect.c, mm/mmap.c,
//! mm/userfaultfd.c).
//!
//! Simplified: mprotect() and munmap() act on a whole VMA (the config splits VMAs where their
//! ranges need it).

use bevy_ecs::prelude::*;

use super::ksm::ksm_unmap;
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range, update_stale_gauge};
use super::userfaultfd::mrwprotect_range;
use super::{CPUPID_UNSET, PG_KSM, PTE_PROTNONE, PTE_UFFD, PTE_ZERO, PageIdx, Pte};
use crate::config::Syscall;
use crate::engine::{Event, Nanos};
use crate::kernel::{Faulter, Kernel};
use crate::machine::NUMA_NO_NODE;
use crate::sched::TaskNuma;
use crate::sched::numa::{TNF_FAULT_LOCAL, task_numa_fault};
use crate::stats::Source;
use crate::trace::Event as TraceEvent;
use crate::trace_event;

/// A scheduled system call on a VMA.
#[derive(Clone, Debug)]
pub struct Action {
    pub syscall: Syscall,
    pub mm: Entity,
    pub vma: usize,
    /// The range UFFDIO_RWPROTECT covers: its first global page and its length.
    pub first: PageIdx,
    pub pages: u64,
    /// How long an mprotect(PROT_NONE) or an RWP arming lasts (0: for good) and its period
    /// (0: once).
    pub protect: Nanos,
    pub period: Nanos,
    /// UFFDIO_RWPROTECT: the last call armed the range.
    pub armed: bool,
    /// The process's main thread is idle (`main_thread = "idle"`): it wakes to make the call.
    pub idle_main: bool,
}

/// The workload's scheduled system calls, indexed by [`Event::Action`], and the NUMA state
/// of the idle main threads that make them.
#[derive(Resource, Debug, Default)]
pub struct Actions {
    pub list: Vec<Action>,
    pub main_threads: Vec<WakingMain>,
}

/// An idle main thread that wakes only to make its process's actions.
#[derive(Debug)]
pub struct WakingMain {
    pub numa: TaskNuma,
    /// mm->numa_scan_seq when it last ran.
    seen_seq: u32,
}

impl WakingMain {
    pub fn new(numa: TaskNuma) -> Self {
        Self { numa, seen_seq: 0 }
    }
}

/// Handler of [`Event::Action`]: wake the caller, make the call, schedule the next toggle,
/// and recount the stale secondary mappings (only these calls can create them).
pub fn run_action(In(i): In<u32>, mut k: Kernel, mut actions: ResMut<Actions>) {
    let Actions { list, main_threads } = &mut *actions;
    let a = &mut list[i as usize];
    let now = k.now();
    let pid = k.mm(a.mm).pid;
    k.trace_current(0, pid, now);
    if a.idle_main
        && let Some(main) = main_threads.iter_mut().find(|m| m.numa.mm == a.mm)
    {
        wake_main_thread(&mut k, main, now);
    }
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
        Syscall::UffdioRwprotect => uffdio_rwprotect(&mut k, a, i, now),
    }
    update_stale_gauge(&mut k);
}

/// An `uffdio-rwprotect` action: a tracker arms its range (UFFDIO_RWPROTECT_MODE_RWP) and,
/// with `protect`, resolves the whole range that much later; with `period` it arms again
/// every period, as a working-set sampler does.
fn uffdio_rwprotect(k: &mut Kernel, a: &mut Action, i: u32, now: Nanos) {
    let arm = a.protect == 0 || !a.armed;
    mrwprotect_range(k, a.mm, a.first, a.pages, arm);
    a.armed = arm;
    let next = match (arm, a.protect, a.period) {
        (true, 0, period) => period,
        (true, protect, _) => protect,
        (false, _, 0) => 0,
        (false, protect, period) => period - protect,
    };
    if next > 0 {
        k.queue.schedule(now + next, Event::Action(i));
    }
}

/// Models the idle main thread waking to make an action's system call: back in user space
/// it touches its stack, and a scan pass since it last ran left that page protnone, so it
/// takes one NUMA hinting fault, do_numa_page() → task_numa_fault() in its own name
/// (mm/memory.c, kernel/sched/fair.c, 6.1.192 and 6.12.117). Its first task_numa_placement()
/// finds no locality yet, so update_task_scan_period() doubles its period and sets
/// mm->numa_next_scan that far ahead: in mprotect-toggle the kernels' second pass comes at
/// 5 s (the wake at 2.5 s + 2 × 1 s, the 6.12 trace shows the main thread faulting then)
/// where a sim without the wake scanned at 3.1 s. Simplified: the stack is one private page
/// on the node of CPU 0, where the call runs, outside the scenario's memory (its PTE update
/// is not counted), and the wake costs no time.
fn wake_main_thread(k: &mut Kernel, main: &mut WakingMain, now: Nanos) {
    let seq = k.mm(main.numa.mm).numa_scan_seq;
    if seq == main.seen_seq {
        return;
    }
    main.seen_seq = seq;
    let nid = k.topo.cpu_to_node(0);
    let f = Faulter { cpu: 0, nid, pid: main.numa.pid, task: None, source: Source::Cpu, now, runtime: 0 };
    k.counters.vmstat.numa_hint_faults += 1;
    k.counters.vmstat.numa_hint_faults_local += 1;
    k.counters.hint_fault(Source::Cpu);
    trace_event!(
        k,
        f,
        TraceEvent::HintFault {
            addr: STACK_ADDR,
            page_nid: nid,
            nid,
            source: Source::Cpu,
            nr_pages: 1,
            local: true,
            migrated: false,
            migrate_fail: false,
        }
    );
    task_numa_fault(k, &mut main.numa, &f, CPUPID_UNSET, nid, 1, TNF_FAULT_LOCAL);
}

/// The main thread's stack page in traces: below x86-64's usual user stack top.
const STACK_ADDR: u64 = 0x7fff_ffff_e000;

/// Models mprotect() → change_protection() over a whole VMA: to PROT_NONE
/// (`accessible = false`) or back to read/write. A NUMA-hinting PTE and a PROT_NONE PTE
/// are the same bits (_PAGE_PROTNONE), so making a hinting PTE PROT_NONE changes nothing;
/// change_pmd_range() still notifies for the whole range, which a `smart` notifier filters.
/// An RWP-armed PTE stays PAGE_NONE with its marker (change_present_ptes(), 7.3).
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
        if accessible && pte.flags & PTE_UFFD != 0 {
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
        } else if !zero_page && k.pages.slots.pins(i) == 0 {
            k.pgdat(nid).free_pages += n;
        }
        *k.pages.slots.pte_mut(i) = Pte { nid: NUMA_NO_NODE, flags: 0 };
        freed += if zero_page { 0 } else { n };
    }
    k.mm(mm).rss -= freed;
}
