//! Every built-in scenario under every kernel version (which covers every GUP era: 6.1
//! implicit, 6.1-debian12 and 6.4 implicit-all, 6.5 implicit-force, 6.6 and 6.12 explicit),
//! with THP on under the oldest and the newest, and with the remedy knobs that keep pinned
//! THPs and secondary-MMU entries, passes the invariant checks after every event; a scenario
//! mapping a memfd runs with shmem THPs (`kernel.shmem_enabled`) too.
//!
//! CI runs one seed of each for `NUMASIM_INVARIANT_MS` (default 100) simulated ms; the full
//! check, 20 seeds of the whole run, is
//! `NUMASIM_INVARIANT_SEEDS=20 NUMASIM_INVARIANT_MS=0 cargo test --release -p workloads --test it invariants::`.
//! The checks keep their counts between events and recount what changed (a whole numa01 run
//! takes ~6 CPU s with them, 2 without); `NUMASIM_INVARIANT_SHRINK=N` divides every VMA and
//! guest memory size by N (down to 2 MiB) so that the whole matrix fits a smaller machine.

use crate::common;

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use common::*;
use sim_core::config::{Config, KernelVersion};
use sim_core::debug_vm::Violation;
use sim_core::sim::SimError;
use workloads::catalogue::BUILTIN;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A kernel setting of the matrix: version, THP, and what-if knobs.
type Kernel = (KernelVersion, &'static str, &'static [&'static str]);

/// The remedies that change what secondary MMUs see (the opt-outs only scan less).
const REMEDIES: &[&str] = &["kernel.prot_numa_skip_pinned=true", "kernel.mmu_notifier_range_numa=true"];

/// The kernel settings of the matrix: every version, then THP always on 6.1 and 6.12, and
/// 6.12 with THP and the remedies.
fn kernels() -> Vec<Kernel> {
    let versions = KernelVersion::ALL.into_iter().map(|v| (v, "never", &[][..]));
    let thp = [(KernelVersion::V6_1, "always", &[][..]), (KernelVersion::V6_12, "always", &[][..])];
    versions.chain(thp).chain([(KernelVersion::V6_12, "always", REMEDIES)]).collect()
}

/// Shmem THPs for memfd memory, alone and with the remedies.
const SHMEM_THP: &[&str] = &["kernel.shmem_enabled=always"];
const SHMEM_THP_REMEDIES: &[&str] =
    &["kernel.shmem_enabled=always", "kernel.prot_numa_skip_pinned=true", "kernel.mmu_notifier_range_numa=true"];

/// The memfd THP settings of the matrix: 6.1 (never scanned), 6.12 and 7.3 (scanned; pinned
/// shared folios left from 6.19), and 6.12 with the remedies.
fn shmem_thp_kernels() -> [Kernel; 4] {
    [
        (KernelVersion::V6_1, "never", SHMEM_THP),
        (KernelVersion::V6_12, "never", SHMEM_THP),
        (KernelVersion::V7_3, "never", SHMEM_THP),
        (KernelVersion::V6_12, "always", SHMEM_THP_REMEDIES),
    ]
}

/// Whether scenario `name` maps memfd memory.
fn maps_memfd(name: &str) -> bool {
    let c = workloads::catalogue::resolve(name, &[]).expect("built-in scenarios resolve");
    let vmas = c.process.iter().flat_map(|p| p.vma.iter().map(|v| v.backing));
    vmas.chain(c.vm.iter().map(|v| v.backing)).any(|b| b == sim_core::config::Backing::Memfd)
}

/// The kernel settings of the matrix `name` accepts; a scenario that needs 7.3 (userfaultfd
/// RWP) runs under 7.3 with THP never and always, and one that maps a memfd runs with shmem
/// THPs too.
fn kernels_of(name: &str) -> Vec<Kernel> {
    let accepts = |&(v, thp, knobs): &Kernel| {
        let mut set = vec![format!("kernel.version={}", v.name()), format!("kernel.transparent_hugepage={thp}")];
        set.extend(knobs.iter().map(|k| k.to_string()));
        workloads::catalogue::resolve(name, &set).is_ok()
    };
    let all = kernels();
    let mut accepted: Vec<_> = all.iter().copied().filter(accepts).collect();
    if accepted.len() < all.len() {
        accepted.extend([(KernelVersion::V7_3, "always", &[][..])].into_iter().filter(accepts));
    }
    if maps_memfd(name) {
        accepted.extend(shmem_thp_kernels().into_iter().filter(accepts));
    }
    accepted
}

/// Divides every VMA and guest memory size by `by`, keeping at least one THP (2 MiB).
fn shrink(c: &mut Config, by: u64) {
    let small = |mib: u64| (mib / by).max(2) & !1;
    for v in c.process.iter_mut().flat_map(|p| p.vma.iter_mut()) {
        v.size_mib = small(v.size_mib);
    }
    for vm in &mut c.vm {
        vm.memory_mib = small(vm.memory_mib);
    }
}

/// One run of the matrix, with invariant checks on; the error says which run and what broke.
fn check_one(name: &str, (version, thp, knobs): Kernel, seed: u64, ms: u64, by: u64) -> Result<(), String> {
    let mut set = vec![
        format!("kernel.version={}", version.name()),
        format!("kernel.transparent_hugepage={thp}"),
        format!("run.seed={seed}"),
    ];
    set.extend(knobs.iter().map(|k| k.to_string()));
    if ms > 0 {
        set.push(format!("run.duration_ms={ms}"));
        set.push(format!("run.sample_ms={}", ms.min(100)));
    }
    let set: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
    let mut c = scenario(name, &set);
    if by > 1 {
        shrink(&mut c, by);
        sim_core::config::validate(&c).map_err(|(key, e)| format!("{name} shrunk by {by}: {key}: {e}"))?;
    }
    let mut sim = workloads::build(&c);
    sim.set_check_invariants(true);
    let what = || format!("{name}, kernel {}, THP {thp}, {knobs:?}, seed {seed}", version.name());
    match sim.run() {
        Ok(out) if out.summary.sim_time_ns == c.run.duration_ms * 1_000_000 => Ok(()),
        Ok(out) => Err(format!("{}: simulated {} ns of {} ms", what(), out.summary.sim_time_ns, c.run.duration_ms)),
        Err(e) => Err(format!("{}: {e}", what())),
    }
}

#[test]
fn every_scenario_under_every_kernel_keeps_the_invariants() {
    let seeds = env("NUMASIM_INVARIANT_SEEDS", 1);
    let ms = env("NUMASIM_INVARIANT_MS", 100);
    let by = env("NUMASIM_INVARIANT_SHRINK", 1);
    // A comma-separated list of scenarios runs only those.
    let only = std::env::var("NUMASIM_INVARIANT_SCENARIOS").unwrap_or_default();
    let picked = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let mut runs = Vec::new();
    for (name, _) in BUILTIN.iter().filter(|(name, _)| picked(name)) {
        for kernel in kernels_of(name) {
            for seed in 1..=seeds {
                runs.push((*name, kernel, seed));
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(runs.len());
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    while let Some(&(name, kernel, seed)) = runs.get(next.fetch_add(1, Relaxed)) {
                        if let Err(e) = check_one(name, kernel, seed, ms, by) {
                            eprintln!("invariants: {e}");
                            failed.push(e);
                        }
                        let n = done.fetch_add(1, Relaxed) + 1;
                        if n % 50 == 0 {
                            eprintln!(
                                "invariants: {n} of {} runs, {:.0} s",
                                runs.len(),
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("no run panics")).collect()
    });
    assert!(failures.is_empty(), "{} of {} runs failed:\n{}", failures.len(), runs.len(), failures.join("\n"));
    eprintln!("{} runs ({} seeds, {} ms each, sizes / {by}) kept every invariant", runs.len(), seeds, ms);
}

/// big-vm's starting state at kvm-memfd's size (an EPT mapping all the guest memory, a scan
/// pass starting half-way) keeps every invariant through the scans' zaps and refills.
#[test]
fn a_populated_ept_and_a_scan_offset_keep_the_invariants() {
    const BIG_VM_START: &[&str] = &["vm.0.populate_ept=true", "vm.0.numa_scan_offset_mib=128"];
    for seed in 1..=env("NUMASIM_INVARIANT_SEEDS", 2) {
        check_one("kvm-memfd", (KernelVersion::V6_12, "never", BIG_VM_START), seed, 2500, 1).unwrap();
    }
}

/// Breaks one piece of bookkeeping by hand and expects the check to name it.
fn broken(set: &[&str], break_it: impl FnOnce(&mut sim_core::sim::Sim)) -> Violation {
    let mut sim = workloads::build(&scenario("pinned-device", set));
    sim.set_check_invariants(true);
    break_it(&mut sim);
    match sim.run() {
        Err(SimError::Invariant(v)) => v,
        other => panic!("expected a violation, got {:?}", other.map(|o| o.summary.events)),
    }
}

#[test]
fn a_broken_invariant_stops_the_run_with_its_name_time_and_place() {
    let short = ["run.duration_ms=200"];
    let v = broken(&short, |sim| sim.with_kernel(|k| k.pgdat(1).free_pages -= 1));
    assert_eq!((v.invariant, v.node), ("node_page_conservation", Some(1)), "{v}");

    let v = broken(&short, |sim| {
        sim.with_kernel(|k| {
            let page = (0..k.pages.len() as u32).find(|&p| k.pages.present(p)).expect("a populated page");
            *k.pages.pins_mut(page) += 1;
        })
    });
    assert_eq!(v.invariant, "pin_count", "{v}");
    assert!(v.page.is_some() && v.to_string().contains("pin_count"), "{v}");

    let v = broken(&short, |sim| sim.with_kernel(|k| k.counters.vmstat.numa_hint_faults_local += 1));
    assert_eq!(v.invariant, "hint_faults_local_le_total", "{v}");

    let v = broken(&short, |sim| sim.with_kernel(|k| k.counters.stale_mappings += 1));
    assert_eq!(v.invariant, "stale_gauge", "{v}");

    let v = broken(&short, |sim| {
        sim.with_kernel(|k| {
            let page = (0..k.pages.len() as u32).find(|&p| k.pages.present(p)).expect("a populated page");
            k.pages.pte_mut(page).nid = 7;
        })
    });
    assert_eq!(v.invariant, "page_on_valid_node", "{v}");

    let v = broken(&short, |sim| sim.with_kernel(|k| k.counters.secondary_mmu.entries_zapped += 1));
    assert_eq!(v.invariant, "secondary_zaps_refills", "{v}");

    let v = broken(&short, |sim| sim.with_kernel(|k| k.counters.kvm.remote_tlb_flush += 1));
    assert_eq!(v.invariant, "kvm_flushes_le_requests", "{v}");

    // pinned-device registers no userfaultfd: a uffd marker there is a bug.
    let v = broken(&short, |sim| {
        sim.with_kernel(|k| {
            let page = (0..k.pages.len() as u32).find(|&p| k.pages.present(p)).expect("a populated page");
            k.pages.pte_mut(page).flags |= sim_core::mm::PTE_UFFD | sim_core::mm::PTE_PROTNONE;
        })
    });
    assert_eq!(v.invariant, "uffd_rwp_marker", "{v}");
}

/// The engine's last line of defence: events that keep coming at one instant (here ksmd
/// wake-ups queued by hand, more than the guard allows) stop the run with the event's kind
/// instead of hanging it. Validation keeps every config from getting here (a zero quantum or
/// period is refused), so the events are injected.
#[test]
fn a_run_whose_time_stops_is_stopped_naming_the_event_kind() {
    let mut sim = workloads::build(&scenario("numa02", &["run.duration_ms=100"]));
    sim.with_kernel(|k| {
        for _ in 0..=sim_core::sim::STALL_EVENTS {
            k.queue.schedule(5, sim_core::engine::Event::Ksmd);
        }
    });
    match sim.run().err() {
        Some(SimError::Stalled { time, events, kind }) => {
            assert_eq!((time, kind), (5, "Ksmd"));
            assert!(events > sim_core::sim::STALL_EVENTS, "{events}");
        }
        other => panic!("expected a stall, got {other:?}"),
    }
}

/// The checks mark in the page state what they have counted ([`sim_core::mm::Slots::take_changes`]):
/// a checked run's results are an unchecked run's, bit for bit, in the time series too.
#[test]
fn checking_the_invariants_changes_no_result() {
    for name in ["default", "ksm-protnone", "numa01"] {
        let c = scenario(name, &["run.duration_ms=1500", "run.sample_ms=100"]);
        let plain = workloads::build(&c).run().expect("the run ends");
        let mut sim = workloads::build(&c);
        sim.set_check_invariants(true);
        let checked = sim.run().expect("the checked run keeps every invariant");
        let json = |s: &sim_core::stats::summary::Summary| {
            let mut v = serde_json::to_value(s).expect("a summary serialises");
            v.as_object_mut().expect("an object").remove("wall_s");
            v
        };
        assert_eq!(json(&plain.summary), json(&checked.summary), "{name}");
        assert_eq!(plain.recorder.rows, checked.recorder.rows, "{name}");
    }
}

/// The RWP scenario through three armings, sync and async, with every invariant checked
/// (the matrix's 100 ms end before the first arming at 1.5 s): markers stay in the
/// registered VMA, and checking changes no result.
#[test]
fn the_rwp_scenario_keeps_the_invariants_through_its_armings() {
    for mode in ["false", "true"] {
        let set = ["run.duration_ms=3600", "vm.0.memory_mib=32", &format!("userfaultfd.0.rwp_async={mode}")];
        let c = scenario("uffd-rwp", &set);
        let plain = workloads::build(&c).run().expect("the run ends");
        let mut sim = workloads::build(&c);
        sim.set_check_invariants(true);
        let checked = sim.run().unwrap_or_else(|e| panic!("async {mode}: {e}"));
        assert_eq!(plain.recorder.rows, checked.recorder.rows, "async {mode}");
        let m = |name: &str| checked.summary.metrics.get(name).map(|v| v.as_f64()).unwrap_or(-1.0);
        assert!(m("numasim.uffd_rwp_faults") > 0.0, "async {mode}");
        assert!(m("numasim.uffd_rwp_gup_faults") > 0.0, "async {mode}");
        let efaults = m("numasim.uffd_rwp_gup_efaults");
        assert_eq!(efaults > 0.0, mode == "false", "async {mode}: /proc/PID/mem gets -EFAULT only in sync mode");
    }
}
