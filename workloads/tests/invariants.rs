//! Every built-in scenario under every GUP era passes the invariant checks after every event.
//!
//! CI runs one seed of each for `NUMASIM_INVARIANT_MS` (default 100) simulated ms; the full
//! check, 20 seeds of the whole run, is
//! `NUMASIM_INVARIANT_SEEDS=20 NUMASIM_INVARIANT_MS=0 cargo test --release --test invariants`.

mod common;

use common::*;
use sim_core::config::GupPolicy;
use sim_core::debug_vm::Violation;
use sim_core::sim::SimError;
use workloads::catalogue::BUILTIN;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn every_scenario_under_every_gup_era_keeps_the_invariants() {
    let seeds = env("NUMASIM_INVARIANT_SEEDS", 1);
    let ms = env("NUMASIM_INVARIANT_MS", 100);
    let mut runs = Vec::new();
    for (name, _) in BUILTIN {
        for policy in GupPolicy::ALL {
            for seed in 1..=seeds {
                runs.push((*name, policy, seed));
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(runs.len());
    let failures: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<_> = runs.chunks(runs.len().div_ceil(threads)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for &(name, policy, seed) in chunk {
                        let mut set = vec![format!("kernel.gup_policy={}", policy.name()), format!("run.seed={seed}")];
                        if ms > 0 {
                            set.push(format!("run.duration_ms={ms}"));
                            set.push(format!("run.sample_ms={}", ms.min(100)));
                        }
                        let set: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
                        let mut sim = workloads::build(&scenario(name, &set));
                        sim.set_check_invariants(true);
                        if let Err(e) = sim.run() {
                            failed.push(format!("{name}, {}, seed {seed}: {e}", policy.name()));
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("no run panics")).collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} runs ({} seeds, {} ms each) kept every invariant", runs.len(), seeds, ms);
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
}
