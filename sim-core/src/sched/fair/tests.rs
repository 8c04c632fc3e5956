//! Single balancing passes on small machines, against what the kernel's code decides for
//! the same run queues (worked out by hand from 6.1.192 and 6.12.117).

use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemState;

use super::{Idle, LoadBalance, balance, select_task_rq_fair};
use crate::config::{Config, KernelConfig, KernelVersion, MachineConfig};
use crate::engine::{EventQueue, NSEC_PER_MSEC, RngStream};
use crate::kernel::Kernel;
use crate::mm::PageIdx;
use crate::sched::{
    AccessPattern, Affinity, Periodic, RunSchedule, SchedAvg, Task, TaskNuma, ThreadSpec, enqueue_task,
};
use crate::sim::Sim;
use crate::trace::TraceOptions;
use crate::trace::events::{Event as TraceEvent, Kind, TpVersion};

struct Nowhere;

impl AccessPattern for Nowhere {
    fn fill(&mut self, _: &mut RngStream, out: &mut [u32]) {
        out.fill(0);
    }
}

/// A machine of `nodes` × `cpus_per_node`, without NUMA balancing, with `threads` (CPU,
/// allowed CPUs) that start at 0.
fn threads_on(
    version: KernelVersion,
    nodes: u32,
    cpus_per_node: u32,
    threads: &[(u32, Option<Vec<u32>>)],
) -> (Sim, Vec<Entity>) {
    let config = Config {
        machine: MachineConfig { nodes, cpus_per_node, memory_per_node_mib: 16, ..Default::default() },
        kernel: KernelConfig { version, numa_balancing: false.into(), ..Default::default() },
        run: crate::config::RunConfig { duration_ms: 200, ..Default::default() },
        ..Default::default()
    };
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("app");
    let vma = sim.add_vma(mm, "buf", 16);
    let base = sim.vma_base(mm, vma);
    let tasks: Vec<Entity> = threads
        .iter()
        .enumerate()
        .map(|(i, (cpu, cpus))| {
            let spec = idle_spec(format!("app/t/{i}"), *cpu, Affinity(cpus.clone()), (base, 16), None);
            sim.add_thread(mm, spec)
        })
        .collect();
    (sim, tasks)
}

/// A thread that touches its `range` (first page, length) with no think time, starting at 0.
fn idle_spec(
    name: String,
    cpu: u32,
    affinity: Affinity,
    range: (PageIdx, u64),
    schedule: Option<RunSchedule>,
) -> ThreadSpec {
    let (base, len) = range;
    ThreadSpec {
        name,
        cpu,
        affinity,
        base,
        len,
        pattern: Box::new(Nowhere),
        touch_lines: 1,
        think_ns: 0,
        write_fraction: 0.0,
        start: 0,
        stop: None,
        ept: None,
        schedule,
    }
}

/// [`threads_on`], the threads queued on their CPUs at 1 s without running the events,
/// every thread last run 1 s ago (cache cold), with the PELT averages of having shared its
/// CPU round robin, 1 ms each, since 0 ([`settled_avg`]).
fn machine(
    version: KernelVersion,
    nodes: u32,
    cpus_per_node: u32,
    threads: &[(u32, Option<Vec<u32>>)],
) -> (Sim, Vec<Entity>) {
    let (mut sim, tasks) = threads_on(version, nodes, cpus_per_node, threads);
    sim.world.resource_mut::<EventQueue>().advance_to(SETTLED_MS * NSEC_PER_MSEC);
    for (i, (&e, (cpu, _))) in tasks.iter().zip(threads).enumerate() {
        sim.with_kernel(|k| enqueue_task(k, e, *cpu));
        let sharing: Vec<usize> = (0..threads.len()).filter(|&j| threads[j].0 == *cpu).collect();
        let place = sharing.iter().position(|&j| j == i).unwrap();
        sim.world.get_mut::<Task>(e).unwrap().avg = settled_avg(place, sharing.len());
    }
    (sim, tasks)
}

const SETTLED_MS: u64 = 1000;

/// The PELT averages at [`SETTLED_MS`] of the `place`-th of `n` threads running round robin
/// on one CPU in 1 ms turns since 0: load and runnable near 1024, util near 1024 / n.
fn settled_avg(place: usize, n: usize) -> SchedAvg {
    let mut avg = SchedAvg::new_task(0, 0, 0);
    for ms in 1..=SETTLED_MS {
        avg.update(ms * NSEC_PER_MSEC, true, (ms as usize - 1) % n == place);
    }
    avg
}

/// One load_balance() of `cpu`'s domain `name`: the threads it moved.
fn pass(sim: &mut Sim, cpu: u32, name: &str, idle: Idle) -> u64 {
    let mut state =
        SystemState::<(Kernel, ResMut<LoadBalance>, Query<(&mut Task, &mut TaskNuma)>)>::new(&mut sim.world);
    let (mut k, mut lb, mut tasks) = state.get_mut(&mut sim.world).expect("the balancer's resources exist");
    let lvl = lb.domains[cpu as usize].iter().position(|d| d.sd.name == name).expect("the domain exists");
    let (moved, _) = balance::load_balance(&mut k, &mut lb, &mut tasks, cpu, lvl, idle);
    state.apply(&mut sim.world);
    moved
}

fn cpu_of(sim: &Sim, e: Entity) -> u32 {
    sim.world.get::<Task>(e).unwrap().cpu
}

fn stats(sim: &Sim, name: &str) -> super::DomainStats {
    sim.world.resource::<LoadBalance>().stats[name].clone()
}

/// Marks every thread as having run 0.1 ms ago: cache hot (sysctl_sched_migration_cost is
/// 0.5 ms).
fn make_hot(sim: &mut Sim, tasks: &[Entity]) {
    let now = sim.world.resource::<EventQueue>().now();
    for &e in tasks {
        sim.world.get_mut::<Task>(e).unwrap().exec_start = now - NSEC_PER_MSEC / 10;
    }
}

/// 2 × 2, three threads on node 0 (two on CPU 0): node 0 is overloaded (3 > 2), so an idle
/// CPU of node 1 pulls by utilization (migrate_util, 2048 of spare capacity) and stops
/// when CPU 0 has one thread left.
#[test]
fn an_overloaded_node_sheds_a_thread_to_an_idle_node() {
    let (mut sim, t) = machine(KernelVersion::V6_12, 2, 2, &[(0, None), (0, None), (1, None)]);
    assert_eq!(pass(&mut sim, 2, "NUMA", Idle::Idle), 1);
    assert_eq!(cpu_of(&sim, t[0]), 2, "the least recently run thread of CPU 0 moves");
    assert_eq!((cpu_of(&sim, t[1]), cpu_of(&sim, t[2])), (0, 1));
    let s = stats(&sim, "NUMA");
    assert_eq!((s.lb_count[0], s.lb_gained[0], s.lb_imbalance[0]), (1, 1, 2048));
    assert_eq!(sim.world.get::<Task>(t[0]).unwrap().nr_migrations, 1);
}

/// 2 × 4, threads on node 0 only. Two: calculate_imbalance() finds 2 (prefer sibling) and
/// adjust_numa_imbalance() (the same in 6.1.192 and 6.12.117) lets it be, since node 1
/// would run 1 ≤ imb_numa_nr = 1: balanced. Three: 3 is past NUMA_IMBALANCE_MIN, one moves.
#[test]
fn the_numa_allowance_keeps_a_pair_together_but_not_three() {
    for v in [KernelVersion::V6_1, KernelVersion::V6_12] {
        let (mut sim, t) = machine(v, 2, 4, &[(0, None), (0, None)]);
        assert_eq!(pass(&mut sim, 4, "NUMA", Idle::Idle), 0, "{v:?}");
        assert_eq!(stats(&sim, "NUMA").lb_nobusyg[0], 1, "{v:?}");
        assert!(t.iter().all(|&e| cpu_of(&sim, e) == 0));
        let (mut sim, t) = machine(v, 2, 4, &[(0, None), (0, None), (1, None)]);
        assert_eq!(pass(&mut sim, 4, "NUMA", Idle::Idle), 1, "{v:?}");
        assert_eq!(cpu_of(&sim, t[0]), 4, "{v:?}");
    }
}

/// Threads pinned to CPU 0 never leave it; LBF_ALL_PINNED doubles the interval.
#[test]
fn affinity_is_respected() {
    let pinned = Some(vec![0]);
    let (mut sim, t) = machine(KernelVersion::V6_12, 2, 1, &[(0, pinned.clone()), (0, pinned.clone())]);
    for _ in 0..8 {
        assert_eq!(pass(&mut sim, 1, "NUMA", Idle::Idle), 0);
    }
    assert!(t.iter().all(|&e| cpu_of(&sim, e) == 0));
    assert_eq!(stats(&sim, "NUMA").lb_balanced[0], 8);
    let lb = sim.world.resource::<LoadBalance>();
    assert!(lb.state[1][0].balance_interval > lb.domains[1][0].sd.min_interval);
    // Unpin one and it goes.
    let (mut sim, t) = machine(KernelVersion::V6_12, 2, 1, &[(0, pinned), (0, None)]);
    assert_eq!(pass(&mut sim, 1, "NUMA", Idle::Idle), 1);
    assert_eq!((cpu_of(&sim, t[0]), cpu_of(&sim, t[1])), (0, 1));
}

/// 2 × 1, CPU 0 runs two threads, CPU 1 one: a busy balance from CPU 1 computes a load
/// imbalance of about 512, which a thread's load (about 1024) fits once shifted by
/// nr_balance_failed ≥ 1. Cold
/// threads move on the second pass; hot ones only once nr_balance_failed (3) exceeds
/// cache_nice_tries (2), on the fourth, counted in lb_hot_gained.
#[test]
fn cache_hot_threads_stay_until_balancing_failed_cache_nice_tries_times() {
    let (mut sim, _) = machine(KernelVersion::V6_12, 2, 1, &[(0, None), (0, None), (1, None)]);
    assert_eq!(pass(&mut sim, 1, "NUMA", Idle::NotIdle), 0);
    assert_eq!(pass(&mut sim, 1, "NUMA", Idle::NotIdle), 1);
    assert_eq!(stats(&sim, "NUMA").lb_hot_gained[1], 0);
    let (mut sim, t) = machine(KernelVersion::V6_12, 2, 1, &[(0, None), (0, None), (1, None)]);
    for round in 0..3 {
        make_hot(&mut sim, &t);
        assert_eq!(pass(&mut sim, 1, "NUMA", Idle::NotIdle), 0, "round {round}");
    }
    make_hot(&mut sim, &t);
    assert_eq!(pass(&mut sim, 1, "NUMA", Idle::NotIdle), 1);
    let s = stats(&sim, "NUMA");
    assert_eq!((s.lb_failed[1], s.lb_gained[1], s.lb_hot_gained[1]), (3, 1, 1));
}

/// migrate_degrades_locality(): of two threads on CPU 0, the one preferring node 0 stays
/// (CPU 0 runs more threads than prefer it) and the other goes; a thread preferring the
/// destination goes first.
#[test]
fn a_thread_stays_on_its_preferred_node() {
    for (preferred, mover) in [(0, 1), (1, 0)] {
        let (mut sim, t) = machine(KernelVersion::V6_12, 2, 1, &[(0, None), (0, None), (1, None)]);
        sim.world.resource_mut::<crate::kernel::Sysctl>().0.numa_balancing = true.into();
        {
            let mut p = sim.world.get_mut::<TaskNuma>(t[0]).unwrap();
            p.numa_preferred_nid = Some(preferred);
            p.numa_faults = vec![1; 16];
        }
        // Two passes: the first fails (the load imbalance is about 512), the second moves.
        pass(&mut sim, 1, "NUMA", Idle::NotIdle);
        assert_eq!(pass(&mut sim, 1, "NUMA", Idle::NotIdle), 1);
        assert_eq!(cpu_of(&sim, t[mover]), 1, "preferred node {preferred}");
        assert_eq!(cpu_of(&sim, t[1 - mover]), 0, "preferred node {preferred}");
    }
}

/// A whole run: four threads started on CPU 0 of a 2 × 2 machine end on four CPUs, moved by
/// newidle, nohz idle and periodic balancing, each move counted once and traced once.
#[test]
fn threads_started_on_one_cpu_spread_over_the_machine() {
    let (mut sim, t) = threads_on(KernelVersion::V6_12, 2, 2, &[(0, None), (0, None), (0, None), (0, None)]);
    let kinds = vec![Kind::SchedMigrateTask];
    sim.enable_trace(TraceOptions {
        kinds,
        events: "sched:sched_migrate_task".into(),
        version: TpVersion::V6_12,
        max_bytes: 1 << 20,
    });
    let out = sim.run().unwrap();
    let mut cpus: Vec<u32> = t.iter().map(|&e| cpu_of(&sim, e)).collect();
    cpus.sort_unstable();
    assert_eq!(cpus, [0, 1, 2, 3]);
    let moves: u64 = t.iter().map(|&e| sim.world.get::<Task>(e).unwrap().nr_migrations).sum();
    assert!(moves >= 3, "{moves}");
    assert_eq!(out.summary.metrics.get("sched.nr_migrations").unwrap().as_f64(), moves as f64);
    let traced: Vec<(u32, i32, i32)> = out
        .trace
        .unwrap()
        .records()
        .iter()
        .filter_map(|r| match r.event {
            TraceEvent::SchedMigrateTask { pid, orig_cpu, dest_cpu } => Some((pid, orig_cpu, dest_cpu)),
            _ => None,
        })
        .collect();
    assert_eq!(traced.len() as u64, moves, "one sched_migrate_task per move");
    assert!(traced.iter().all(|&(_, from, to)| from != to));
    let lb = sim.world.resource::<LoadBalance>();
    let gained = |name: &str| lb.stats[name].lb_gained.iter().sum::<u64>() + lb.stats[name].alb_pushed;
    assert_eq!(gained("MC") + gained("NUMA"), moves);
}

/// `kernel.load_balance` is on by default, takes a boolean, and a misspelling names it.
#[test]
fn the_load_balance_key_is_checked() {
    use crate::config::{Source, load};
    let src = |text: &str| Source { origin: "t.toml".into(), text: text.into() };
    assert!(load(&src(""), &[]).unwrap().kernel.load_balance);
    assert!(!load(&src("[kernel]\nload_balance = false\n"), &[]).unwrap().kernel.load_balance);
    let e = load(&src("[kernel]\nload_balance = 1\n"), &[]).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("kernel.load_balance", Some(2)), "{e}");
    let e = load(&src(""), &["kernel.load_balanc=true".into()]).unwrap_err();
    assert!(e.message.contains("did you mean `load_balance`"), "{e}");
}

/// 3 × 4, nodes 0 and 1 fully busy (one thread per CPU), node 2 idle. CPU 8's NUMA balance
/// wants 2 threads (adjust_numa_imbalance() lets 4 through), but each busy CPU runs one, so
/// detach_tasks() finds nothing; the fifth failure (> cache_nice_tries + 2) starts an
/// active balance. Which node it pushes from is where the versions differ:
/// update_sd_pick_busiest() keeps the first of equal fully busy groups in 6.1.192 (node 0)
/// and takes the last in 6.12.117 (node 1, groups running from CPU 8 round).
#[test]
fn equal_fully_busy_groups_pick_the_first_in_6_1_and_the_last_in_6_12() {
    for (v, pushed) in [(KernelVersion::V6_1, 0), (KernelVersion::V6_12, 4)] {
        let threads: Vec<(u32, Option<Vec<u32>>)> = (0..8).map(|c| (c, None)).collect();
        let (mut sim, t) = machine(v, 3, 4, &threads);
        for _ in 0..5 {
            assert_eq!(pass(&mut sim, 8, "NUMA", Idle::Idle), 0, "{v:?}");
        }
        let moved: Vec<usize> = (0..8).filter(|&i| cpu_of(&sim, t[i]) == 8).collect();
        assert_eq!(moved, [pushed], "{v:?}");
        let s = stats(&sim, "NUMA");
        assert_eq!((s.lb_failed[0], s.alb_count, s.alb_pushed), (5, 1, 1), "{v:?}");
    }
}

/// A thread of the machine's process, not queued, last run on `cpu`, which runs `run_us`
/// every `period_ms` when `periodic`.
fn sleeper(sim: &mut Sim, of: Entity, cpu: u32, periodic: Option<Periodic>) -> Entity {
    let mm = sim.world.get::<Task>(of).unwrap().mm;
    let (base, len) = if periodic.is_some() { (0, 0) } else { (sim.vma_base(mm, 0), 16) };
    let schedule = periodic.map(RunSchedule::Periodic);
    sim.add_thread(mm, idle_spec("app/sleeper/0".into(), cpu, Affinity(None), (base, len), schedule))
}

/// select_task_rq_fair() for `wakee`, last on `prev`, woken from `waker`.
fn wake_cpu(sim: &mut Sim, wakee: Entity, prev: u32, waker: u32) -> u32 {
    let mut state = SystemState::<(Kernel, ResMut<LoadBalance>, Query<&Task>)>::new(&mut sim.world);
    let (k, mut lb, tasks) = state.get_mut(&mut sim.world).expect("the balancer's resources exist");
    select_task_rq_fair(&k, &mut lb, tasks.get(wakee).unwrap(), prev, waker)
}

/// select_idle_sibling(): a thread woken on its busy CPU 0 goes to CPU 1, idle in the same
/// LLC (node 0); with node 0 full it stays on CPU 0 although node 1 is idle, and a remote
/// wake of it counts once in ttwu_wake_remote of the lowest domain spanning both CPUs.
#[test]
fn a_wakee_takes_an_idle_cpu_of_its_llc_and_no_other() {
    for v in [KernelVersion::V6_1, KernelVersion::V6_12] {
        let (mut sim, t) = machine(v, 2, 2, &[(0, None)]);
        let w = sleeper(&mut sim, t[0], 0, None);
        assert_eq!(wake_cpu(&mut sim, w, 0, 0), 1, "{v:?}");
        let (mut sim, t) = machine(v, 2, 2, &[(0, None), (1, None)]);
        let w = sleeper(&mut sim, t[0], 0, None);
        assert_eq!(wake_cpu(&mut sim, w, 0, 0), 0, "{v:?}");
        let mut lb = sim.world.resource_mut::<LoadBalance>();
        super::ttwu_stat(&mut lb, 0, 1);
        super::ttwu_stat(&mut lb, 0, 0);
        assert_eq!((lb.stats["MC"].ttwu_wake_remote, lb.stats["NUMA"].ttwu_wake_remote), (1, 0), "{v:?}");
    }
}

/// wake_affine() from CPU 1 for a thread last on CPU 0, node 0 full: WA_WEIGHT pulls it to
/// the waker when (1 + 1) × 100 < load(prev) × 108 (MC's imbalance_pct 117): with two
/// threads on CPU 0 (200 < 216) yes, counted in ttwu_move_affine; with one (200 ≥ 108) no.
#[test]
fn wake_affine_pulls_to_the_waker_only_when_prev_is_heavier() {
    let (mut sim, t) = machine(KernelVersion::V6_12, 2, 2, &[(0, None), (0, None), (1, None)]);
    let w = sleeper(&mut sim, t[0], 0, None);
    assert_eq!(wake_cpu(&mut sim, w, 0, 1), 1);
    assert_eq!(stats(&sim, "MC").ttwu_move_affine, 1);
    let (mut sim, t) = machine(KernelVersion::V6_12, 2, 2, &[(0, None), (1, None)]);
    let w = sleeper(&mut sim, t[0], 0, None);
    assert_eq!(wake_cpu(&mut sim, w, 0, 1), 0);
    assert_eq!(stats(&sim, "MC").ttwu_move_affine, 0);
}

/// Runs a 2 × 2 machine with two busy threads on node 0 and, when `sleeps`, a thread that
/// runs 5 ms every 20 ms from CPU 0. Returns the busy threads' migrations and the run's
/// summary metrics.
fn busy_node_with_sleeper(version: KernelVersion, sleeps: bool) -> (u64, Vec<(String, f64)>) {
    let (mut sim, t) = threads_on(version, 2, 2, &[(0, None), (1, None)]);
    if sleeps {
        sleeper(&mut sim, t[0], 0, Some(Periodic { period: 20 * NSEC_PER_MSEC, run: 5 * NSEC_PER_MSEC }));
    }
    let out = sim.run().unwrap();
    let moves = t.iter().map(|&e| sim.world.get::<Task>(e).unwrap().nr_migrations).sum();
    let metrics = out.summary.metrics.flatten().into_iter().map(|(k, v)| (k, v.as_f64())).collect();
    (moves, metrics)
}

/// Two busy threads on node 0 stay there (adjust_numa_imbalance() allows the pair). A
/// periodic sleeper wakes onto node 0, with no idle CPU there: under CFS (6.1) it preempts
/// the busy thread; under EEVDF (6.12) it runs once the busy thread's slice is served, and
/// its 5 ms outlast its own slice. Either way the busy thread waits (not running, cold) and
/// an idle CPU of node 1 pulls it.
#[test]
fn a_sleeper_waking_on_a_full_node_gets_a_waiting_thread_pulled_to_an_idle_node() {
    for v in [KernelVersion::V6_1, KernelVersion::V6_12] {
        assert_eq!(busy_node_with_sleeper(v, false).0, 0, "{v:?}");
        let (moves, metrics) = busy_node_with_sleeper(v, true);
        assert!(moves >= 1, "{v:?}: {moves}");
        let get = |name: &str| metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap();
        let on_node1 = get("thread.app/t/0.node1_share") + get("thread.app/t/1.node1_share");
        assert!(on_node1 > 0.0, "{v:?}: {on_node1}");
    }
}

/// The same run with a sleeper twice gives identical results.
#[test]
fn runs_with_a_sleeper_are_deterministic() {
    let strip = |m: Vec<(String, f64)>| m.into_iter().filter(|(k, _)| k != "wall_s").collect::<Vec<_>>();
    let run = || strip(busy_node_with_sleeper(KernelVersion::V6_1, true).1);
    assert_eq!(run(), run());
}

/// `period_ms` and `run_us` come together, the run fits the period, and a misspelling names
/// the key.
#[test]
fn the_period_keys_are_checked() {
    use crate::config::{Source, load};
    let base = "[[process]]\nname = \"p\"\n[[process.thread]]\n";
    let src = |text: &str| Source { origin: "t.toml".into(), text: format!("{base}{text}") };
    let c = load(&src("period_ms = 100\nrun_us = 500\n"), &[]).unwrap();
    assert_eq!((c.process[0].thread[0].period_ms, c.process[0].thread[0].run_us), (Some(100), Some(500)));
    let e = load(&src("period_ms = 100\n"), &[]).unwrap_err();
    assert_eq!(e.key, "process[0].thread[0].run_us", "{e}");
    let e = load(&src("period_ms = 1\nrun_us = 1000\n"), &[]).unwrap_err();
    assert_eq!(e.key, "process[0].thread[0].run_us", "{e}");
    let e = load(&src("run_us = 5\n"), &[]).unwrap_err();
    assert_eq!(e.key, "process[0].thread[0].period_ms", "{e}");
    let e = load(&src("period_m = 100\nrun_us = 5\n"), &[]).unwrap_err();
    assert!(e.message.contains("period_ms"), "{e}");
    assert!(load(&src("vma = \"\"\n"), &[]).is_err(), "a thread that never sleeps needs its VMA");
}

/// A recorded sleeper beside a busy thread, with idle CPUs to run on, runs exactly its
/// bursts' CPU time, the burst due while one ran included; a burst after the run's end
/// never comes.
#[test]
fn a_recorded_sleeper_runs_its_bursts_and_no_more() {
    let (mut sim, t) = threads_on(KernelVersion::V6_12, 2, 2, &[(0, None)]);
    let mm = sim.world.get::<Task>(t[0]).unwrap().mm;
    let ms = NSEC_PER_MSEC;
    let bursts = vec![(10 * ms, 5 * ms), (12 * ms, 3 * ms), (100 * ms, 2 * ms), (500 * ms, 7 * ms)];
    let mut spec = idle_spec("app/replay/0".into(), 0, Affinity(None), (0, 0), Some(RunSchedule::recorded(bursts)));
    spec.start = 10 * ms;
    let r = sim.add_thread(mm, spec);
    sim.run().unwrap();
    assert_eq!(sim.world.get::<Task>(r).unwrap().sum_exec_runtime, 10 * ms);
}

/// `bursts` stands alone, in time order, from the thread's start; an overflowing time is
/// named.
#[test]
fn the_burst_keys_are_checked() {
    use crate::config::{Source, load};
    let base = "[[process]]\nname = \"p\"\n[[process.thread]]\n";
    let src = |text: &str| Source { origin: "t.toml".into(), text: format!("{base}{text}") };
    let c = load(&src("bursts = [[5, 100], [5, 20], [90, 1]]\n"), &[]).unwrap();
    assert_eq!(c.process[0].thread[0].bursts, [[5, 100], [5, 20], [90, 1]]);
    let key = |text: &str| load(&src(text), &[]).unwrap_err().key;
    assert_eq!(key("bursts = [[5, 100]]\nperiod_ms = 10\nrun_us = 5\n"), "process[0].thread[0].bursts");
    assert_eq!(key("bursts = [[5, 100]]\nstart_ms = 3\n"), "process[0].thread[0].start_ms");
    assert_eq!(key("bursts = [[5, 100], [4, 10]]\n"), "process[0].thread[0].bursts[1]");
    assert_eq!(key("bursts = [[5, 0]]\n"), "process[0].thread[0].bursts[0]");
    assert_eq!(key("bursts = [[9223372036854775807, 1]]\n"), "process[0].thread[0].bursts[0]");
}

/// sched_switch on each CPU chains (every switch's prev is the last one's next, starting
/// from the idle task), a periodic sleeper leaves its CPU asleep (`S`) and a busy thread
/// only runnable (`R`), and the threads' switch-ins account for every thread that ran.
#[test]
fn sched_switch_chains_per_cpu_and_says_who_slept() {
    use crate::trace::events::PrevState;
    let (mut sim, t) = threads_on(KernelVersion::V6_12, 2, 2, &[(0, None), (1, None)]);
    let s = sleeper(&mut sim, t[0], 0, Some(Periodic { period: 20 * NSEC_PER_MSEC, run: 5 * NSEC_PER_MSEC }));
    let sleeper_pid = sim.world.get::<Task>(s).unwrap().pid;
    sim.enable_trace(TraceOptions {
        kinds: vec![Kind::SchedSwitch],
        events: "sched:sched_switch".into(),
        version: TpVersion::V6_12,
        max_bytes: 1 << 24,
    });
    let out = sim.run().unwrap();
    let mut last = std::collections::BTreeMap::new();
    let mut ran = std::collections::BTreeSet::new();
    let mut sleeps = 0;
    let trace = out.trace.unwrap();
    for r in trace.records() {
        let TraceEvent::SchedSwitch { cpu, prev_pid, prev_state, next_pid } = r.event else { continue };
        assert_eq!(r.cpu, cpu);
        assert_eq!(last.insert(cpu, next_pid).unwrap_or(0), prev_pid, "CPU {cpu} at {}", r.ts);
        assert_ne!(prev_pid, next_pid);
        ran.insert(next_pid);
        if prev_pid == sleeper_pid {
            assert_ne!(prev_state, PrevState::Dead);
            sleeps += u64::from(prev_state == PrevState::Sleeping);
        } else {
            assert_eq!(prev_state, PrevState::Runnable, "pid {prev_pid} never sleeps");
        }
    }
    let pids: Vec<u32> = t.iter().chain([&s]).map(|&e| sim.world.get::<Task>(e).unwrap().pid).collect();
    assert!(pids.iter().all(|p| ran.contains(p)), "{ran:?} {pids:?}");
    assert!(sleeps >= 5, "the sleeper sleeps every period: {sleeps}");
}
