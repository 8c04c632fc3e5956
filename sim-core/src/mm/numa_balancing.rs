//! The NUMA scanner: task_tick_numa() and task_numa_work() (kernel/sched/fair.c) and
//! change_prot_numa() (mm/mprotect.c with MM_CP_PROT_NUMA).

use bevy_ecs::entity::Entity;

use super::backing::{Backing, make_pte_protnone, pte_protnone_in};
use super::huge_memory::{change_huge_pmd, split_huge_pmd};
use super::mmu_notifier::invalidate_prot_numa;
use super::{HPAGE_PMD_NR, Mm, PAGE_SHIFT, PG_KSM, PTE_ZERO, PageIdx, Pmd, Pte, Vma, VmaNumab, hash_32};
use crate::engine::{NSEC_PER_MSEC, Nanos};
use crate::kernel::Kernel;
use crate::machine::{NUMA_NO_NODE, Nid};
use crate::sched::TICK_NSEC;
use crate::sched::numa::{TaskNuma, group_of, task_scan_max, task_scan_start};
use crate::sched::promotion::{folio_use_access_time, folio_xchg_access_time, jiffies_msecs};
use crate::trace::Event;
use crate::trace::events::{NumabSkip, TaskIds};
use crate::trace_event;
use crate::version::VmaScanFilter;

/// Models the stagger init_numa_balancing() (kernel/sched/fair.c, 6.1 and 6.12) gives a
/// CLONE_VM thread, cloned while the mm has `mm_users` users: `min(task_scan_max(),
/// period * mm_users * NSEC_PER_MSEC) + 2 ticks`. The kernel compares milliseconds with
/// nanoseconds there, so the first term wins and the stagger is a few ticks; modelled as
/// written. It matters because it is non-zero: task_tick_numa() applies task_scan_start()
/// only to a task whose node_stamp is 0, so a clone keeps `numa_scan_period = scan_delay`
/// until its own hinting faults adapt it.
pub fn clone_node_stamp(k: &Kernel, p: &TaskNuma, rss: u64, mm_users: u32) -> Nanos {
    let max_ms = task_scan_max(&k.sysctl, rss, None);
    let delay = max_ms.min(p.numa_scan_period * u64::from(mm_users) * NSEC_PER_MSEC);
    delay + 2 * TICK_NSEC
}

/// Models task_tick_numa(): driven by the task's own runtime, once per scan period; returns
/// whether task_numa_work() should run on return to user space. Never for an mm opted out
/// of NUMA balancing (`kernel.no_numa_balancing_processes`, proposed).
pub fn task_tick_numa(k: &mut Kernel, p: &mut TaskNuma, runtime: Nanos, now: Nanos) -> bool {
    let period = p.numa_scan_period * NSEC_PER_MSEC;
    if runtime <= p.node_stamp + period || k.mm(p.mm).no_numa_balancing {
        return false;
    }
    if p.node_stamp == 0 {
        let rss = k.mms.get(p.mm).expect("tasks point at live mms").rss;
        p.numa_scan_period = task_scan_start(&k.sysctl, rss, group_of(p, &k.mms));
    }
    p.node_stamp += period;
    now >= k.mm(p.mm).numa_next_scan
}

/// Models reset_ptenuma_scan().
fn reset_ptenuma_scan(mm: &mut Mm) {
    mm.numa_scan_seq += 1;
    mm.numa_scan_offset = 0;
}

/// Models vma_is_accessed(): has this task faulted in the VMA recently? v6.4–v6.6 let every
/// VMA through in the mm's first two passes and then asked the pid windows; v6.7 counts the
/// passes from the VMA's first scan and lets a partly scanned VMA finish; v6.11 rescans a
/// VMA nobody scanned for nr_threads passes (6.12.117 has all three).
/// A scan already past the VMA's start completes it whatever the pids say (v6.7+ traces
/// that as ignore_pid_inactive).
fn vma_is_accessed(filter: VmaScanFilter, mm: &Mm, vma: &Vma, pid: u32) -> Accessed {
    let numab = vma.numab.as_ref().expect("initialised before the check");
    let pids_hit = (numab.pids_active[0] | numab.pids_active[1]) & (1 << hash_32(pid, 6)) != 0;
    let yes = |accessed: bool| if accessed { Accessed::Yes } else { Accessed::No };
    if filter == VmaScanFilter::Accessed {
        return yes(mm.numa_scan_seq < 2 || pids_hit);
    }
    if mm.numa_scan_seq.wrapping_sub(numab.start_scan_seq) < 2 || pids_hit {
        return Accessed::Yes;
    }
    if mm.numa_scan_offset > vma.start {
        return Accessed::PastOffset;
    }
    yes(mm.numa_scan_seq > numab.prev_scan_seq.wrapping_add(mm.nr_threads))
}

/// What vma_is_accessed() found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accessed {
    Yes,
    PastOffset,
    No,
}

/// Rotates the VMA's pid windows every VMA_PID_RESET_PERIOD (4 × scan_delay).
fn reset_pids_active(numab: &mut VmaNumab, seq: u32, now: Nanos, scan_delay: Nanos) {
    if seq != 0 && now > numab.pids_active_reset {
        numab.pids_active_reset += 4 * scan_delay;
        numab.pids_active = [numab.pids_active[1], 0];
    }
}

/// What the VMA walk decided for one VMA before scanning it; a skip says why, as
/// sched_skip_vma_numa does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VmaVerdict {
    Scan,
    /// Scan, though the task did not access the VMA: the scan had started inside it.
    ScanIgnoringPid,
    Skip(NumabSkip),
    /// Already scanned in this sequence: move the offset past it.
    Done,
    /// Not accessed by this task recently; a later pass may force the scan.
    PidInactive,
    /// Not a VMA of the process at all (guest_memfd memory): passed over untraced.
    Absent,
}

/// The per-VMA checks of task_numa_work() ahead of the PTE walk, as the kernel version's
/// [`VmaScanFilter`] has them.
fn vma_verdict(
    filter: VmaScanFilter,
    mm: &mut Mm,
    vi: usize,
    pid: u32,
    now: Nanos,
    scan_delay: Nanos,
    forced: bool,
) -> VmaVerdict {
    let seq = mm.numa_scan_seq;
    let vma = &mut mm.vmas[vi];
    if vma.no_numa_balancing {
        // Where the proposal puts it: with the VMAs vma_migratable() refuses.
        return VmaVerdict::Skip(NumabSkip::Unsuitable);
    }
    // hugetlbfs (is_vm_hugetlb_page()) and VMAs with an mbind() policy (vma_policy_mof()
    // false) come first; guest_memfd memory is not in the address space the walk sees.
    match vma.backing {
        Backing::GuestMemfd => return VmaVerdict::Absent,
        Backing::Hugetlbfs => return VmaVerdict::Skip(NumabSkip::Unsuitable),
        Backing::Anon | Backing::Memfd if vma.mempolicy.is_some() => return VmaVerdict::Skip(NumabSkip::Unsuitable),
        Backing::Anon | Backing::Memfd => {}
    }
    // Inaccessible VMAs are skipped to avoid confusing PROT_NONE with NUMA hinting PTEs.
    if !vma.accessible {
        return VmaVerdict::Skip(NumabSkip::Inaccessible);
    }
    if filter == VmaScanFilter::None {
        return VmaVerdict::Scan;
    }
    let numab = vma.numab.get_or_insert_with(|| VmaNumab {
        next_scan: now + scan_delay,
        pids_active_reset: now + scan_delay + 4 * scan_delay,
        pids_active: [0; 2],
        start_scan_seq: seq,
        prev_scan_seq: seq.wrapping_sub(1),
    });
    if seq != 0 && now < numab.next_scan {
        return VmaVerdict::Skip(NumabSkip::ScanDelay);
    }
    if filter == VmaScanFilter::Accessed {
        // v6.4 asks about access first and rotates the windows only for VMAs it scans.
        if vma_is_accessed(filter, mm, &mm.vmas[vi], pid) == Accessed::No {
            return VmaVerdict::Skip(NumabSkip::PidInactive);
        }
        let numab = mm.vmas[vi].numab.as_mut().expect("initialised above");
        reset_pids_active(numab, seq, now, scan_delay);
        return VmaVerdict::Scan;
    }
    reset_pids_active(numab, seq, now, scan_delay);
    if numab.prev_scan_seq == seq {
        return VmaVerdict::Done;
    }
    if forced {
        return VmaVerdict::Scan;
    }
    match vma_is_accessed(filter, mm, &mm.vmas[vi], pid) {
        Accessed::Yes => VmaVerdict::Scan,
        Accessed::PastOffset => VmaVerdict::ScanIgnoringPid,
        Accessed::No => VmaVerdict::PidInactive,
    }
}

/// The sched_skip_vma_numa tracepoint for VMA `vi` of `mm`.
fn trace_skip_vma(k: &mut Kernel, mm: Entity, vi: usize, reason: NumabSkip) {
    trace_event!(k, {
        let m = k.mms.get(mm).expect("scanned mms are live");
        let v = &m.vmas[vi];
        let numa_scan_offset = m.numa_scan_offset << PAGE_SHIFT;
        Event::SchedSkipVmaNuma {
            numa_scan_offset,
            vm_start: v.start << PAGE_SHIFT,
            vm_end: v.end() << PAGE_SHIFT,
            reason,
        }
    });
}

/// Models task_numa_work(): scan up to `numa_balancing_scan_size_mb` of populated memory
/// (and 8x that of address space) from where the last scan stopped, making PTEs protnone.
/// Returns the CPU time the scan took (charged to the task).
pub fn task_numa_work(k: &mut Kernel, p: &mut TaskNuma, pid: u32, cpu_nid: Nid, now: Nanos) -> Nanos {
    let mm_e = p.mm;
    // 6.16+: "Memory is pinned to only one NUMA node via cpuset.mems, naturally no page can
    // be migrated." Before the scan is claimed, so numa_next_scan and node_stamp stay.
    let (tgid, mems_allowed) = (k.mm(mm_e).pid, k.mm(mm_e).mems_allowed);
    if k.rules.cpuset_single_node_skip && mems_allowed.count_ones() == 1 {
        let ngid = if p.in_group { k.mm(p.group_home()).pid } else { pid };
        let task = TaskIds { pid, tgid, ngid };
        trace_event!(k, Event::SchedSkipCpusetNuma { task, mems_allowed });
        return 0;
    }
    let scan_delay = k.sysctl.scan_delay();
    let filter = k.rules.vma_filter;
    let (pte_cost, flush_cost) = (k.sysctl.0.pte_scan_cost_ns, k.sysctl.0.tlb_flush_cost_ns);
    let mut pages = k.sysctl.scan_size_pages() as i64;
    let mut virtpages = pages * 8;
    {
        let mut mm = k.mm(mm_e);
        if now < mm.numa_next_scan {
            return 0;
        }
        mm.numa_next_scan = now + p.numa_scan_period * NSEC_PER_MSEC;
    }
    k.counters.secondary_mmu.scan_passes += 1;
    // Delay this task enough that another task of this mm will likely win next time.
    p.node_stamp += 2 * TICK_NSEC;

    // change_pte_range() leaves pages alone that already sit where a single-threaded
    // process runs.
    let target_node = (k.mm(mm_e).nr_threads == 1).then_some(cpu_nid);
    let scan_start = k.mm(mm_e).numa_scan_offset;
    let mut walked = 0u64;
    let mut pte_updates = 0u64;
    let mut entries_written = 0u64;
    let mut flushes = 0u64;
    let mut forced = false;
    let mut pids_skipped = false;
    loop {
        let mut start = k.mm(mm_e).numa_scan_offset;
        let first = k.mm(mm_e).vmas.iter().position(|v| v.end() > start);
        let mut vi = first.unwrap_or_else(|| {
            reset_ptenuma_scan(&mut k.mm(mm_e));
            start = 0;
            0
        });
        let nr_vmas = k.mm(mm_e).vmas.len();
        let mut stopped = false;
        while vi < nr_vmas {
            // vma_policy_mof() without the task-policy fallback: a memfd (shmem) VMA has no
            // shared policy, so it is unsuitable.
            let verdict = if !k.rules.shmem_mof_fallback && k.mm(mm_e).vmas[vi].backing == Backing::Memfd {
                VmaVerdict::Skip(NumabSkip::Unsuitable)
            } else {
                vma_verdict(filter, &mut k.mm(mm_e), vi, pid, now, scan_delay, forced)
            };
            match verdict {
                VmaVerdict::Skip(reason) => {
                    trace_skip_vma(k, mm_e, vi, reason);
                    vi += 1;
                    continue;
                }
                VmaVerdict::Done => {
                    let mut mm = k.mm(mm_e);
                    mm.numa_scan_offset = mm.vmas[vi].end();
                    trace_skip_vma(k, mm_e, vi, NumabSkip::SeqCompleted);
                    vi += 1;
                    continue;
                }
                VmaVerdict::PidInactive => {
                    pids_skipped = true;
                    trace_skip_vma(k, mm_e, vi, NumabSkip::PidInactive);
                    vi += 1;
                    continue;
                }
                VmaVerdict::Absent => {
                    vi += 1;
                    continue;
                }
                VmaVerdict::ScanIgnoringPid => trace_skip_vma(k, mm_e, vi, NumabSkip::IgnorePid),
                VmaVerdict::Scan => {}
            }
            let vma = k.mm(mm_e).vmas[vi].clone();
            loop {
                start = start.max(vma.start);
                let end = (start + pages as u64).next_multiple_of(HPAGE_PMD_NR).min(vma.end());
                let changed = change_prot_numa(k, mm_e, &vma, start, end, target_node);
                walked += end - start;
                pte_updates += changed.pte_updates;
                entries_written += changed.entries_written;
                // tlb_finish_mmu() flushes only a range tlb_flush_pte_range() gathered: a
                // call that changed no entry flushes nothing (mm/mmu_gather.c, 6.12.118).
                flushes += u64::from(changed.entries_written > 0);
                if changed.pte_updates > 0 {
                    pages -= (end - start) as i64;
                }
                virtpages -= (end - start) as i64;
                start = end;
                if pages <= 0 || virtpages <= 0 {
                    stopped = true;
                    break;
                }
                if end == vma.end() {
                    break;
                }
            }
            if stopped {
                break;
            }
            let mut mm = k.mm(mm_e);
            let seq = mm.numa_scan_seq;
            if let Some(numab) = mm.vmas[vi].numab.as_mut() {
                numab.prev_scan_seq = seq;
            }
            if forced {
                // Only force a scan within one VMA at a time.
                stopped = true;
                break;
            }
            vi += 1;
        }
        if !stopped && !forced && pids_skipped {
            forced = true;
            continue;
        }
        let mut mm = k.mm(mm_e);
        if stopped {
            mm.numa_scan_offset = start;
        } else {
            reset_ptenuma_scan(&mut mm);
        }
        break;
    }
    trace_event!(k, {
        let m = k.mms.get(mm_e).expect("scanned mms are live");
        let (start, end) = (scan_start << PAGE_SHIFT, m.numa_scan_offset << PAGE_SHIFT);
        Event::TaskNumaWork { start, end, scanned: walked, pte_updates, seq: m.numa_scan_seq }
    });
    // What the walk costs is the entries it writes and a TLB flush per change_prot_numa()
    // call that wrote one: change_pmd_range() (mm/mprotect.c, 6.1 and 6.12) skips a none PMD
    // and changes a huge one at once; tlb_finish_mmu() ends each call. Simplified: a PTE it
    // passes over without writing (none, protnone, pinned, already local) costs nothing.
    let cost = entries_written * pte_cost + flushes * flush_cost;
    // Tasks must run 32x as long elsewhere as they spent scanning (3% overhead cap).
    p.node_stamp += 32 * runtime_accounted_during(cost);
    cost
}

/// How much of a scan lasting `cost` reaches `p->se.sum_exec_runtime` before task_numa_work()
/// reads it again, which is what the kernel charges 32× (fair.c, 6.1.192 and 6.12.118:
/// `if (unlikely(p->se.sum_exec_runtime != runtime)) p->node_stamp += 32 * diff;`).
/// update_curr() moves the runtime at the tick; the work runs on return to user right after
/// the tick that queued it, so only the ticks that land inside the scan count: none for a
/// scan shorter than TICK_NSEC. Simplified: the update_curr() of a wake-up enqueued on this
/// CPU, or of the walk's cond_resched(), during the scan is not modelled.
pub fn runtime_accounted_during(cost: Nanos) -> Nanos {
    cost - cost % TICK_NSEC
}

/// Models change_prot_numa() → change_pte_range() with MM_CP_PROT_NUMA over virtual pages
/// `start..end` of `vma`: make present PTEs protnone, skipping what the kernel skips, and
/// notify secondary MMUs for the range (change_pmd_range() calls
/// mmu_notifier_invalidate_range_start() unconditionally). A THP is changed at its PMD
/// (change_pmd_range() → change_huge_pmd()) when the range covers it whole, and split first
/// when it covers part of it.
pub fn change_prot_numa(
    k: &mut Kernel,
    mm: Entity,
    vma: &Vma,
    start: u64,
    end: u64,
    target_node: Option<Nid>,
) -> ProtNumaChange {
    let mut updated: Vec<PageIdx> = Vec::new();
    let mut huge_pmds = 0u64;
    let vi = k.mm(mm).vma_of_page(vma.base).expect("the scanned VMA is mapped");
    // change_pte_range() picks a target node only for private VMAs (`!(vma->vm_flags &
    // VM_SHARED)`), and tests pins of a shared mapping's folios only from 6.19 (or with the
    // what-if).
    let shared = vma.backing == Backing::Memfd;
    let target_node = target_node.filter(|_| !shared);
    let skip_pinned = !shared || k.rules.prot_numa_pinned_shared || k.sysctl.0.prot_numa_skip_pinned;
    let mut vpn = start;
    while vpn < end {
        // The 4 KiB PTEs up to the next block (all of the range in a VMA without THPs).
        let block = vma.pmd_block(vpn);
        let segment_end = block.map_or(end, |b| (vma.start + (b as u64 + 1) * HPAGE_PMD_NR).min(end));
        if let Some(b) = block
            && matches!(k.mm(mm).vmas[vi].pmds[b], Pmd::Huge | Pmd::HugeZero)
        {
            let first = vma.start + b as u64 * HPAGE_PMD_NR;
            if first >= start && first + HPAGE_PMD_NR <= end {
                if change_huge_pmd(k, mm, vi, b, target_node) > 0 {
                    updated.extend(vma.page(first)..vma.page(first) + HPAGE_PMD_NR as PageIdx);
                    huge_pmds += 1;
                }
                vpn = segment_end;
                continue;
            }
            split_huge_pmd(k, mm, vi, b);
        }
        // 6.1.192's change_pte_range() skips a PTE-mapped THP's pages: `page_count(page) != 1`.
        let pte_mapped = block.is_some_and(|b| k.mm(mm).vmas[vi].pmds[b] == Pmd::PteMapped);
        if !pte_mapped || k.rules.pte_mapped_thp_numa {
            // folio_maybe_dma_pinned() asks a large folio's _pincount: one pinned page of a
            // PTE-mapped THP keeps all its PTEs (6.12.118 change_pte_range(), 7.3.4
            // folio_can_map_prot_numa()).
            let thp = block.filter(|_| pte_mapped).map(|b| k.pages.chunk_slots(vma.block_page(b)));
            for v in vpn..segment_end {
                let page = vma.page(v);
                let i = k.pages.slot(page);
                let folio = thp.clone().unwrap_or(i..i + 1);
                change_pte(k, (mm, vma), (page, folio), (target_node, skip_pinned), &mut updated);
            }
        }
        vpn = segment_end;
    }
    k.counters.vmstat.numa_pte_updates += updated.len() as u64;
    // Only this mm's page table changed, so only its secondary MMUs are told, a memfd's
    // other mappers' not (change_pmd_range() notifies `vma->vm_mm`).
    invalidate_prot_numa(k, mm, vma.page(start), end - start, |p| updated.binary_search(&p).is_ok());
    let pte_updates = updated.len() as u64;
    ProtNumaChange { pte_updates, entries_written: pte_updates - huge_pmds * HPAGE_PMD_NR + huge_pmds }
}

/// What change_prot_numa() changed over a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtNumaChange {
    /// PTEs made protnone, HPAGE_PMD_NR for a huge PMD (as numa_pte_updates counts them).
    pub pte_updates: u64,
    /// Page-table entries written: each 4 KiB PTE, and a huge PMD once.
    pub entries_written: u64,
}

/// change_pte_range() with MM_CP_PROT_NUMA for one 4 KiB PTE of `mm`'s VMA `vma`, mapping
/// `page` of the folio in slots `folio`. `skip`: the single-threaded target node and whether
/// pinned folios are left.
fn change_pte(
    k: &mut Kernel,
    (mm, vma): (Entity, &Vma),
    (page, folio): (PageIdx, std::ops::Range<usize>),
    skip: (Option<Nid>, bool),
    updated: &mut Vec<PageIdx>,
) {
    let i = k.pages.slot(page);
    if pte_protnone_in(k, mm, vma.memfd, page)
        || !folio_can_map_prot_numa(k, (i, folio), skip)
        || !prot_numa_tier_check(k, i..i + 1)
    {
        return;
    }
    make_pte_protnone(k, mm, vma.memfd, page);
    updated.push(page);
}

/// The memory-tiering end of the scanner's folio tests (change_pte_range() in 6.12.118,
/// folio_can_map_prot_numa() in 7.3.4): without NUMA_BALANCING_NORMAL a top-tier folio is
/// left alone; a slow-tier folio in memory-tiering mode gets the scan time as its access
/// time (folio_xchg_access_time()), which its next hinting fault measures from.
pub fn prot_numa_tier_check(k: &mut Kernel, slots: std::ops::Range<usize>) -> bool {
    let nid = k.pages.slots.pte(slots.start).nid;
    if !k.sysctl.0.numa_balancing.normal() && k.tiers.node_is_toptier(nid) {
        return false;
    }
    if folio_use_access_time(k, nid) {
        let time = jiffies_msecs(k.now());
        for s in slots {
            folio_xchg_access_time(k, s, time);
        }
    }
    true
}

/// Models the folio tests change_pte_range() makes (6.1.192, 6.12.118 inline; 7.2.13 and
/// 7.3.4 as folio_can_map_prot_numa() in mm/mempolicy.c, which change_huge_pmd() calls too
/// from 6.19) for the page at slot `page`, of the folio in slots `folio`: no folio (absent,
/// or the zero page), KSM, possibly DMA-pinned (`skip_pinned`: a private mapping, or any
/// from 6.19; a pin on any page of the folio counts), or already on the node a
/// single-threaded process runs on (`target_node`) → leave it. Private folios mapped by
/// several mms are skipped too, but the model has none: there is no fork, an anonymous page
/// is mapped by the mm that faulted it, and KSM pages are left.
pub fn folio_can_map_prot_numa(
    k: &Kernel,
    (page, folio): (usize, std::ops::Range<usize>),
    (target_node, skip_pinned): (Option<Nid>, bool),
) -> bool {
    let pages = &k.pages.slots;
    let Pte { nid, flags } = pages.pte(page);
    if nid == NUMA_NO_NODE || flags & (PG_KSM | PTE_ZERO) != 0 {
        return false;
    }
    !(skip_pinned && folio.into_iter().any(|i| pages.pins(i) > 0)) && target_node != Some(nid)
}
