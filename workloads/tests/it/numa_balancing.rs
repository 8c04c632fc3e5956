//! Automatic NUMA balancing on the autonumabench scenarios.

use crate::common;

use common::*;

#[test]
fn numa02_converges_on_two_and_four_nodes() {
    for nodes in ["machine.nodes=2", "machine.nodes=4"] {
        let (_, on) = run(&scenario("numa02", &[nodes]));
        let (_, off) = run(&scenario("numa02", &[nodes, "kernel.numa_balancing=false"]));
        let (l_on, l_off) = (tail_locality(&on, "cpu"), tail_locality(&off, "cpu"));
        assert!(l_on >= 0.85, "{nodes}: locality {l_on}");
        assert!(l_on >= l_off + 0.25, "{nodes}: {l_on} vs {l_off} without balancing");
        assert!(metric(&on, "vmstat.numa_pages_migrated") > 0.0);
        assert_eq!(metric(&off, "vmstat.numa_hint_faults"), 0.0);
        assert_eq!(metric(&off, "vmstat.numa_pte_updates"), 0.0);
        assert!(
            metric(&on, "throughput.touches_per_s") > metric(&off, "throughput.touches_per_s"),
            "{nodes}: local memory is faster"
        );
    }
}

#[test]
fn a_shared_buffer_stays_less_local_than_private_slices() {
    let (_, numa01) = run(&scenario("numa01", &[]));
    let (_, threadlocal) = run(&scenario("numa01-threadlocal", &[]));
    let (_, numa02) = run(&scenario("numa02", &[]));
    let (shared, local, private) =
        (tail_locality(&numa01, "cpu"), tail_locality(&threadlocal, "cpu"), tail_locality(&numa02, "cpu"));
    assert!(shared < private - 0.2, "numa01 {shared} vs numa02 {private}");
    assert!(local >= shared, "threadlocal {local} vs numa01 {shared}");
    // Shared pages bounce less than they fault: the two-stage filter holds most back.
    let faults = metric(&numa01, "vmstat.numa_hint_faults");
    assert!(metric(&numa01, "vmstat.numa_pages_migrated") < faults / 4.0);
}

#[test]
fn the_scan_period_grows_once_memory_is_local() {
    // After convergence every fault is local and private, so update_task_scan_period()
    // stretches each thread's period from task_scan_start() (500 ms for this RSS) upward.
    let c = scenario("numa02", &[]);
    let mut sim = workloads::build(&c);
    sim.run().unwrap_or_else(|e| panic!("{e}"));
    let mut q = sim.world.query::<&sim_core::sched::TaskNuma>();
    let periods: Vec<u64> = q.iter(&sim.world).map(|p| p.numa_scan_period).collect();
    assert_eq!(periods.len(), 8);
    assert!(periods.iter().all(|&p| p > 500), "{periods:?}");
    assert!(periods.iter().any(|&p| p >= 2000), "{periods:?}");
}

#[test]
fn threads_move_to_the_node_holding_their_memory() {
    // All memory sits on node 0 and cannot move (node 1 has no free memory), while the
    // threads start on node 1 and node 0 has idle CPUs: task placement pulls them over. The
    // second move leaves node 0 two threads ahead, which adjust_numa_imbalance() allows a
    // lightly loaded node of 16 CPUs: build_sched_domains() (kernel/sched/topology.c,
    // 6.1.192 and 6.12.117) sets imb_numa_nr = span_weight >> 3 = 2.
    let mut sim = workloads::build(&config(PULLED, &[]));
    sim.with_kernel(|k| k.pgdat(1).free_pages = 0);
    let out = sim.run().expect("the run reaches its end");
    assert_eq!(metric(&out, "numasim.numa_task_migrated"), 2.0, "both threads moved");
    assert_eq!(metric(&out, "vmstat.numa_pages_migrated"), 0.0);
    let nid = column(&out, "task.app/worker/0.nid");
    assert_eq!((nid.first(), nid.last()), (Some(&1.0), Some(&0.0)));
    assert!(tail_locality(&out, "cpu") > 0.99);

    // With 8 CPUs a node, imb_numa_nr is 1 (12.5%): the second thread must stay behind.
    let mut sim = workloads::build(&config(PULLED, &["machine.cpus_per_node=8"]));
    sim.with_kernel(|k| k.pgdat(1).free_pages = 0);
    let out = sim.run().expect("the run reaches its end");
    assert_eq!(metric(&out, "numasim.numa_task_migrated"), 1.0);
}

#[test]
fn threads_whose_memory_sits_on_each_others_node_swap() {
    // One CPU per node, both busy, and no free memory to migrate pages into: the only way to
    // local memory is task_numa_migrate() swapping a thread of `a` with one of `b`.
    let mut sim = workloads::build(&config(CROSSED, &[]));
    sim.with_kernel(|k| {
        k.pgdat(0).free_pages = 0;
        k.pgdat(1).free_pages = 0;
    });
    let out = sim.run().expect("the run reaches its end");
    assert!(metric(&out, "numasim.numa_task_swapped") >= 2.0, "swaps move two threads each");
    assert_eq!(metric(&out, "numasim.numa_task_migrated"), 0.0, "no idle CPU to move to");
    assert_eq!(metric(&out, "vmstat.numa_pages_migrated"), 0.0);
    assert!(tail_locality(&out, "cpu") > 0.99, "{}", tail_locality(&out, "cpu"));
    assert_eq!(column(&out, "task.a/worker/0.nid").last(), Some(&1.0));
    assert_eq!(column(&out, "task.b/worker/0.nid").last(), Some(&0.0));
}

#[test]
fn configured_threads_are_clones_of_an_idle_main_thread_unless_it_works() {
    // init_numa_balancing() staggers every CLONE_VM thread (node_stamp > 0), and only a task
    // with node_stamp 0 gets task_scan_start() at its first tick; the guest, like pthreads
    // benchmarks, runs every configured thread as a clone of a waiting main thread.
    let stamps = |main: &str| {
        let mut sim = workloads::build(&scenario("numa02", &[&format!("process.0.main_thread={main}")]));
        let mm = sim.world.query::<&sim_core::mm::Mm>().single(&sim.world).map(|m| (m.pid, m.nr_threads)).unwrap();
        let mut q = sim.world.query::<&sim_core::sched::TaskNuma>();
        let tasks: Vec<(u32, u64)> = q.iter(&sim.world).map(|p| (p.pid, p.node_stamp)).collect();
        (mm, tasks)
    };
    let ((tgid, users), tasks) = stamps("idle");
    assert_eq!(users, tasks.len() as u32 + 1, "the idle main thread counts in mm_users");
    assert!(tasks.iter().all(|&(pid, stamp)| stamp > 0 && pid != tgid), "{tasks:?}");
    let ((tgid, users), tasks) = stamps("first");
    assert_eq!(users, tasks.len() as u32);
    let unstaggered: Vec<_> = tasks.iter().filter(|&&(_, stamp)| stamp == 0).collect();
    assert_eq!(unstaggered, [&(tgid, 0)], "only the main thread, with the process's pid");
}
