//! NUMA balancing mechanisms, driven directly through the kernel functions.

use bevy_ecs::entity::Entity;
use sim_core::config::{Config, MachineConfig};
use sim_core::kernel::{Faulter, Kernel, Sysctl};
use sim_core::mm::memory::do_numa_page;
use sim_core::mm::numa_balancing::task_numa_work;
use sim_core::mm::{CPUPID_UNSET, Mm, PTE_PROTNONE, PageIdx, Pages, cpu_pid_to_cpupid};
use sim_core::sched::TaskNuma;
use sim_core::sched::numa::should_numa_migrate_memory;
use sim_core::sim::Sim;
use sim_core::stats::{Counters, Source};

/// A 2-node machine (4 CPUs each, 64 MiB each) with one process and a 4096-page VMA
/// populated on node 0.
fn machine() -> (Sim, Entity, PageIdx) {
    let config =
        Config { machine: MachineConfig { memory_per_node_mib: 64, ..Default::default() }, ..Default::default() };
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("app");
    let vma = sim.add_vma(mm, "buf", 4096);
    sim.populate(mm, vma, 0);
    let base = sim.world.get::<Mm>(mm).unwrap().vmas[vma].base;
    (sim, mm, base)
}

fn task(sim: &Sim, mm: Entity, pid: u32) -> TaskNuma {
    TaskNuma::new(pid, mm, sim.world.resource::<Sysctl>())
}

fn faulter(cpu: u32, pid: u32, task: Option<&mut TaskNuma>) -> Faulter<'_> {
    Faulter { cpu, nid: (cpu / 4) as u8, pid, task, source: Source::Cpu, now: 0, runtime: 0 }
}

#[test]
fn early_in_life_first_and_private_faults_migrate() {
    let (mut sim, mm, page) = machine();
    let mut p = task(&sim, mm, 7);
    sim.with_kernel(|k| {
        assert!(should_numa_migrate_memory(k, &faulter(5, 7, Some(&mut p)), page, 1, 0), "first fault");
        assert_eq!(k.pages.last_cpupid(page), cpu_pid_to_cpupid(5, 7));
        assert!(should_numa_migrate_memory(k, &faulter(5, 7, Some(&mut p)), page, 1, 0), "private fault");
    });
}

#[test]
fn the_two_stage_filter_needs_two_faults_from_the_same_node() {
    let (mut sim, mm, page) = machine();
    // A settled task: it has a preferred node and has seen more than four scan passes.
    let mut p = task(&sim, mm, 7);
    p.numa_preferred_nid = Some(1);
    p.numa_scan_seq = 5;
    sim.with_kernel(|k: &mut Kernel| {
        // The last fault came from another task on node 0: refuse, but remember this one.
        *k.pages.last_cpupid_mut(page) = cpu_pid_to_cpupid(1, 9);
        assert!(!should_numa_migrate_memory(k, &faulter(5, 7, Some(&mut p)), page, 1, 0));
        // Now the previous fault was ours on node 1: a private fault, migrate.
        assert!(should_numa_migrate_memory(k, &faulter(6, 7, Some(&mut p)), page, 1, 0));
        // A shared fault whose predecessor was on the same node, no numa group: migrate.
        *k.pages.last_cpupid_mut(page) = cpu_pid_to_cpupid(4, 9);
        assert!(should_numa_migrate_memory(k, &faulter(5, 7, Some(&mut p)), page, 1, 0));
        // The same shared fault with the predecessor on node 0: refuse.
        *k.pages.last_cpupid_mut(page) = cpu_pid_to_cpupid(0, 9);
        assert!(!should_numa_migrate_memory(k, &faulter(5, 7, Some(&mut p)), page, 1, 0));
        // A settled task's first fault on a page (unset cpupid) passes the early rule no more,
        // but an unset cpupid is not from another node either: migrate.
        *k.pages.last_cpupid_mut(page) = CPUPID_UNSET;
        assert!(should_numa_migrate_memory(k, &faulter(5, 7, Some(&mut p)), page, 1, 0));
    });
}

fn hint_fault(sim: &mut Sim, mm: Entity, page: PageIdx, p: Option<&mut TaskNuma>) -> (u8, Counters) {
    sim.with_kernel(|k| {
        k.pages.pte_mut(page).flags |= PTE_PROTNONE;
        let mut f = faulter(5, 7, p);
        do_numa_page(k, mm, 0, page, &mut f);
        assert_eq!(k.pages.pte(page).flags & PTE_PROTNONE, 0, "the PTE is restored");
        (k.pages.pte(page).nid, k.counters.clone())
    })
}

#[test]
fn a_misplaced_page_migrates_to_the_faulting_node() {
    let (mut sim, mm, page) = machine();
    let mut p = task(&sim, mm, 7);
    let (nid, c) = hint_fault(&mut sim, mm, page, Some(&mut p));
    assert_eq!(nid, 1);
    assert_eq!(c.vmstat.numa_hint_faults, 1);
    assert_eq!(c.vmstat.numa_hint_faults_local, 0);
    assert_eq!((c.vmstat.numa_pages_migrated, c.vmstat.pgmigrate_success, c.vmstat.pgmigrate_fail), (1, 1, 0));
    assert_eq!(p.numa_pages_migrated, 1);
    assert_eq!(p.numa_faults_locality, [1, 0, 0], "a remote fault, no failure");
}

#[test]
fn pinned_or_extra_referenced_pages_fail_to_migrate() {
    for field in ["pins", "refs"] {
        let (mut sim, mm, page) = machine();
        {
            let mut pages = sim.world.resource_mut::<Pages>();
            match field {
                "pins" => *pages.pins_mut(page) = 1,
                _ => *pages.refs_mut(page) = 1,
            }
        }
        let mut p = task(&sim, mm, 7);
        let (nid, c) = hint_fault(&mut sim, mm, page, Some(&mut p));
        assert_eq!(nid, 0, "{field}: the page stays");
        assert_eq!((c.vmstat.pgmigrate_fail, c.vmstat.pgmigrate_success), (1, 0), "{field}");
        assert_eq!(p.numa_faults_locality[2], 1, "{field}: TNF_MIGRATE_FAIL is accounted");
    }
}

#[test]
fn a_target_node_below_its_watermark_refuses_the_page() {
    let (mut sim, mm, page) = machine();
    sim.with_kernel(|k| {
        let mut node1 = k.pgdat(1);
        node1.free_pages = node1.wmark.high;
    });
    let mut p = task(&sim, mm, 7);
    let (nid, c) = hint_fault(&mut sim, mm, page, Some(&mut p));
    assert_eq!(nid, 0);
    // The kernel gives up in migrate_misplaced_folio_prepare(): no pgmigrate_fail.
    assert_eq!((c.vmstat.pgmigrate_fail, c.vmstat.numa_pages_migrated), (0, 0));
    assert_eq!(p.numa_faults_locality[2], 1);
}

#[test]
fn a_kernel_thread_fault_migrates_but_keeps_no_statistics() {
    let (mut sim, mm, page) = machine();
    let (nid, c) = hint_fault(&mut sim, mm, page, None);
    assert_eq!(nid, 1);
    assert_eq!((c.vmstat.numa_hint_faults, c.vmstat.numa_pages_migrated), (1, 1));
}

#[test]
fn the_scanner_skips_pinned_pages_and_counts_pte_updates() {
    let (mut sim, mm, base) = machine();
    let pinned: Vec<usize> = (0..4096).step_by(7).map(|i| base as usize + i).collect();
    {
        let mut pages = sim.world.resource_mut::<Pages>();
        for &i in &pinned {
            *pages.pins_mut(i as PageIdx) = 1;
        }
    }
    // Two threads use the mm, so pages on the scanning CPU's node are not exempt.
    sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 2;
    let mut p = task(&sim, mm, 7);
    let now = 2_000_000_000;
    let cost = sim.with_kernel(|k| task_numa_work(k, &mut p, 7, 0, now));
    let pages = sim.world.resource::<Pages>();
    let protnone = |i: usize| pages.pte(i as PageIdx).flags & PTE_PROTNONE != 0;
    assert!(pinned.iter().all(|&i| !protnone(i)), "a pinned page in a private mapping is never made protnone");
    let updated = (base as usize..base as usize + 4096).filter(|&i| protnone(i)).count();
    assert_eq!(updated, 4096 - pinned.len());
    assert_eq!(cost, updated as u64 * 10, "each PTE written costs pte_scan_cost_ns, a skipped one nothing");
    assert_eq!(sim.world.resource::<Counters>().vmstat.numa_pte_updates, updated as u64);
    let mm = sim.world.get::<Mm>(mm).unwrap();
    assert_eq!(mm.numa_scan_seq, 1, "the scan reached the end and wrapped");
    assert_eq!(mm.numa_next_scan, now + 1000 * 1_000_000, "next scan one period later");
}

#[test]
fn a_single_threaded_process_keeps_pages_already_on_its_node() {
    let (mut sim, mm, base) = machine();
    sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 1;
    let mut p = task(&sim, mm, 7);
    sim.with_kernel(|k| task_numa_work(k, &mut p, 7, 0, 2_000_000_000));
    let pages = sim.world.resource::<Pages>();
    assert!((base as usize..base as usize + 4096).all(|i| pages.pte(i as PageIdx).flags & PTE_PROTNONE == 0));
}

/// mpol_misplaced() in mm/mempolicy.c (6.1.192, 6.12.117): for the default
/// MPOL_PREFERRED policy of the faulting node, `if (node_isset(curnid, pol->nodes)) goto out;`
/// returns before should_numa_migrate_memory(), so a local fault leaves last_cpupid alone.
#[test]
fn a_local_hinting_fault_does_not_record_its_cpupid() {
    let (mut sim, mm, page) = machine();
    let mut p = task(&sim, mm, 7);
    sim.with_kernel(|k| {
        *k.pages.last_cpupid_mut(page) = cpu_pid_to_cpupid(6, 9);
        k.pages.pte_mut(page).flags |= PTE_PROTNONE;
        do_numa_page(k, mm, 0, page, &mut faulter(1, 7, Some(&mut p)));
        assert_eq!(k.pages.last_cpupid(page), cpu_pid_to_cpupid(6, 9), "local: untouched");
        assert_eq!(k.counters.vmstat.numa_hint_faults_local, 1);
        k.pages.pte_mut(page).flags |= PTE_PROTNONE;
        do_numa_page(k, mm, 0, page, &mut faulter(5, 7, Some(&mut p)));
        assert_eq!(k.pages.last_cpupid(page), cpu_pid_to_cpupid(5, 7), "remote: recorded");
    });
}

/// migrate_folio_unmap() in mm/migrate.c (6.12.117): try_to_migrate() clears the mapping,
/// and so the secondary MMUs' entries, before folio_migrate_mapping() finds the pinned
/// folio's refcount wrong; the migration fails but the device must refault.
#[test]
fn a_failed_migration_still_invalidates_secondary_mmus() {
    use sim_core::mm::mmu_notifier::{SPTE_VALID, SecondaryMmu, SmmuKind};
    let (mut sim, mm, page) = machine();
    let smmu = sim.add_secondary_mmu("dev", mm, page, 1, SmmuKind::Notifier);
    sim.with_kernel(|k| {
        let Kernel { smmus, pages, .. } = k;
        smmus.get_mut(smmu).unwrap().map(page, pages, false);
        *k.pages.pins_mut(page) = 1;
    });
    let mut p = task(&sim, mm, 7);
    let (nid, c) = hint_fault(&mut sim, mm, page, Some(&mut p));
    assert_eq!((nid, c.vmstat.pgmigrate_fail), (0, 1));
    assert_eq!(sim.world.get::<SecondaryMmu>(smmu).unwrap().entry(page) & SPTE_VALID, 0);
}

/// update_scan_period() in kernel/sched/fair.c (6.1.192, 6.12.117), called from
/// migrate_task_rq_fair(): a task that leaves its preferred node scans at the start rate
/// again; one that moves to its preferred node keeps its period.
#[test]
fn moving_off_the_preferred_node_resets_the_scan_period() {
    use sim_core::sched::numa::{task_scan_start, update_scan_period};
    let (mut sim, mm, _) = machine();
    let mut p = task(&sim, mm, 7);
    p.numa_faults = vec![1; 8];
    p.numa_scan_seq = 3;
    p.numa_preferred_nid = Some(0);
    p.numa_scan_period = 9000;
    sim.with_kernel(|k| {
        update_scan_period(k, &mut p, 5, 1);
        assert_eq!(p.numa_scan_period, 9000, "to the preferred node");
        update_scan_period(k, &mut p, 1, 5);
        let rss = k.mm(mm).rss;
        assert_eq!(p.numa_scan_period, task_scan_start(&k.sysctl, rss, None), "off the preferred node");
    });
}

/// Populating a VMA larger than its node falls back along the zonelist page by page, as
/// do_anonymous_page() write faults do: the bulk path gives every page the node and every
/// node the free count the faults one at a time give, under every watermark.
#[test]
fn populate_spills_to_other_nodes_as_faults_one_at_a_time_do() {
    let config = Config {
        machine: MachineConfig { nodes: 4, memory_per_node_mib: 16, ..Default::default() },
        ..Default::default()
    };
    let build = || {
        let mut sim = Sim::new(&config);
        let mm = sim.add_process("app");
        let small = sim.add_vma(mm, "small", 1000);
        let big = sim.add_vma(mm, "big", 15_300);
        (sim, mm, [small, big])
    };
    let (mut bulk, mm, vmas) = build();
    bulk.populate(mm, vmas[0], 2);
    bulk.populate(mm, vmas[1], 2);
    let (mut one, mm1, _) = build();
    one.with_kernel(|k| {
        for (vma, pages) in [(0, 1000), (1, 15_300)] {
            let base = k.mm(mm1).vmas[vma].base;
            for p in 0..pages {
                sim_core::mm::memory::do_anonymous_page(k, mm1, vma, base + p, 2, true);
            }
        }
    });
    let state = |sim: &mut Sim, mm: Entity| {
        let pages = sim.world.resource::<Pages>();
        let nids: Vec<u8> = (0..pages.len() as PageIdx).map(|p| pages.pte(p).nid).collect();
        let free: Vec<u64> = sim.with_kernel(|k| (0..4).map(|n| k.pgdat(n).free_pages).collect());
        (nids, free, sim.world.get::<Mm>(mm).unwrap().rss)
    };
    let (nids, free, rss) = state(&mut bulk, mm);
    assert_eq!((nids.clone(), free.clone(), rss), state(&mut one, mm1));
    let wmark_min: Vec<u64> = bulk.with_kernel(|k| (0..4).map(|n| k.pgdat(n).wmark.min).collect());
    assert!(
        free.iter().zip(&wmark_min).all(|(f, m)| f <= m),
        "every node was taken down to min: {free:?} {wmark_min:?}"
    );
    assert!(free.iter().zip(&wmark_min).any(|(f, m)| f < m), "the last pass went below min: {free:?}");
}

/// The idle main thread that makes a process's mprotect() calls wakes for each and touches
/// its stack: after a scan pass that is one hinting fault in its name, and its first
/// placement (no locality yet) doubles its period and puts mm->numa_next_scan 2 s past the
/// call, as update_task_scan_period() does in 6.1 and 6.12. A main thread that is a
/// configured thread (`first`) runs anyway and takes no extra fault.
#[test]
fn an_idle_main_thread_woken_by_an_action_after_a_scan_delays_the_next_scan() {
    use sim_core::config::Syscall;
    use sim_core::engine::NSEC_PER_MSEC;
    use sim_core::mm::mprotect::Action;
    let run = |idle_main: bool, seq: u32| {
        let (mut sim, mm, _) = machine();
        sim.world.get_mut::<Mm>(mm).unwrap().numa_scan_seq = seq;
        let action = |vma| Action {
            syscall: Syscall::Mprotect,
            mm,
            vma,
            first: 0,
            pages: 0,
            protect: 200 * NSEC_PER_MSEC,
            period: 0,
            armed: false,
            idle_main,
        };
        sim.add_action(action(0), 2500 * NSEC_PER_MSEC);
        sim.run().unwrap();
        let next = sim.world.get::<Mm>(mm).unwrap().numa_next_scan;
        let vmstat = &sim.world.resource::<Counters>().vmstat;
        (next, vmstat.numa_hint_faults, vmstat.numa_hint_faults_local)
    };
    let scan_delay = 1000 * NSEC_PER_MSEC;
    // Two wakes (PROT_NONE at 2.5 s, back at 2.7 s) in one pass: one fault, from the first.
    assert_eq!(run(true, 1), (2500 * NSEC_PER_MSEC + 2 * scan_delay, 1, 1));
    assert_eq!(run(true, 0), (scan_delay, 0, 0), "before any pass the stack is not protnone");
    assert_eq!(run(false, 1), (scan_delay, 0, 0));
}

/// task_numa_work() (kernel/sched/fair.c, 6.12): the walk costs each PTE written and one TLB
/// flush per change_prot_numa() call that wrote one (tlb_finish_mmu() flushes only what
/// tlb_flush_pte_range() gathered: the untouched VMA's call flushes nothing); the task's
/// node_stamp moves by 2 ticks and by 32 times the runtime the ticks inside the scan
/// accounted (`32 * diff` of sum_exec_runtime, 6.1.192 and 6.12.118).
#[test]
fn the_walk_costs_each_pte_written_and_a_flush_per_call_that_wrote_one() {
    let (mut sim, mm, _) = machine();
    sim.add_vma(mm, "untouched", 512);
    sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 2;
    {
        let mut sysctl = sim.world.resource_mut::<Sysctl>();
        (sysctl.0.pte_scan_cost_ns, sysctl.0.tlb_flush_cost_ns) = (1000, 8_000_000);
    }
    let mut p = task(&sim, mm, 7);
    let cost = sim.with_kernel(|k| task_numa_work(k, &mut p, 7, 0, 2_000_000_000));
    assert_eq!(sim.world.resource::<Counters>().vmstat.numa_pte_updates, 4096);
    assert_eq!(cost, 4096 * 1000 + 8_000_000);
    // 12.096 ms of walk: three HZ=250 ticks land in it and account 12 ms.
    assert_eq!(p.node_stamp, 2 * 4_000_000 + 32 * 12_000_000);
}

/// task_numa_work() (kernel/sched/fair.c, 6.1.192 and 6.12.118) charges `32 * diff` only
/// `if (unlikely(p->se.sum_exec_runtime != runtime))`: a walk shorter than the 4 ms tick,
/// which starts right after the tick that queued it, leaves the runtime where it was.
#[test]
fn a_scan_shorter_than_a_tick_is_not_charged_32_times() {
    let (mut sim, mm, _) = machine();
    sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 2;
    sim.world.resource_mut::<Sysctl>().0.pte_scan_cost_ns = 10;
    let mut p = task(&sim, mm, 7);
    let cost = sim.with_kernel(|k| task_numa_work(k, &mut p, 7, 0, 2_000_000_000));
    assert_eq!(cost, 4096 * 10, "the walk took 41 us");
    assert_eq!(p.node_stamp, 2 * 4_000_000, "only the stagger of two ticks");
}
