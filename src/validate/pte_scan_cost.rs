//! The CPU time of the NUMA scanner's walk on the kernel's machine. task_numa_work()
//! (kernel/sched/fair.c, 6.1 and 6.12) charges the scanning task 32 times what its scan took
//! (`p->node_stamp += 32 * diff`), so the walk's cost delays the task's next scan: on hardware
//! a walk takes microseconds and the charge is negligible; under TCG 6.12's walk over
//! gup-o-direct-read-into's memory took 95–160 ms, about 8 ms for each populated VMA (the TLB
//! flush tlb_finish_mmu() makes after each change_prot_numa() call waits for the other vCPUs)
//! and about 1 µs per PTE. The guest times mprotect(PROT_READ) and back over 2048 populated
//! PTEs and over one before the workload starts (guest.json's `pte_walk`: two
//! change_protection() walks and flushes per round trip); the sim gets the difference per
//! PTE as `kernel.pte_scan_cost_ns` and the one page's time per call as
//! `kernel.tlb_flush_cost_ns`.

use oracle::PteWalk;
use serde::Serialize;
use sim_core::config::Config;

/// The walk's cost over the kernel runs that timed one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PteScanCost {
    /// Each kernel run's fit (TCG spreads them: the large walk took 2–15 µs per PTE across
    /// boots of 6.1.192 and 6.12.117, 2026-12-01).
    pub per_run: Vec<RunCost>,
    /// Their mean CPU nanoseconds per PTE.
    pub ns_per_pte: f64,
    /// Their mean CPU nanoseconds per call (None when no run timed the one-page walk).
    pub ns_per_call: Option<f64>,
    /// What the sim gets as `kernel.pte_scan_cost_ns` (at least 1).
    pub pte_scan_cost_ns: u64,
    /// What the sim gets as `kernel.tlb_flush_cost_ns`, when measured.
    pub tlb_flush_cost_ns: Option<u64>,
}

/// One run's walk costs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunCost {
    pub ns_per_pte: f64,
    /// None from a guest that timed only the large walk (then its PTEs carry the calls too).
    pub ns_per_call: Option<f64>,
}

/// Calls (walks and flushes) per round trip: mprotect(PROT_READ) and mprotect(PROT_READ |
/// PROT_WRITE).
const CALLS_PER_ROUND_TRIP: f64 = 2.0;

/// The mean costs over the runs' guest.json files; `None` when no run has a timed walk (a
/// guest from before the timing, or a walk of no pages).
pub fn measure(guests: &[serde_json::Value]) -> Option<PteScanCost> {
    let per_run: Vec<RunCost> = guests
        .iter()
        .filter_map(|g| serde_json::from_value::<PteWalk>(g["pte_walk"].clone()).ok())
        .filter_map(|w| fit(&w))
        .collect();
    if per_run.is_empty() {
        return None;
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let ns_per_pte = mean(per_run.iter().map(|r| r.ns_per_pte).collect()).expect("one run at least");
    let ns_per_call = mean(per_run.iter().filter_map(|r| r.ns_per_call).collect());
    Some(PteScanCost {
        pte_scan_cost_ns: (ns_per_pte.round() as u64).max(1),
        tlb_flush_cost_ns: ns_per_call.map(|c| c.round() as u64),
        per_run,
        ns_per_pte,
        ns_per_call,
    })
}

/// One run's costs: the one-page round trip is two calls; what the large one took beyond it
/// is its other pages' PTEs (none when it took no longer).
fn fit(w: &PteWalk) -> Option<RunCost> {
    let per_pte = |ns: f64, pages: u64| ns.max(0.0) / (CALLS_PER_ROUND_TRIP * pages as f64);
    match w.one_page_cpu_ns {
        _ if w.pages == 0 => None,
        Some(one) if w.pages > 1 => Some(RunCost {
            ns_per_pte: per_pte(w.cpu_ns as f64 - one as f64, w.pages - 1),
            ns_per_call: Some(one as f64 / CALLS_PER_ROUND_TRIP),
        }),
        _ => Some(RunCost { ns_per_pte: per_pte(w.cpu_ns as f64, w.pages), ns_per_call: None }),
    }
}

/// Gives the sim the measured costs.
pub fn apply(config: &mut Config, cost: &PteScanCost) {
    config.kernel.pte_scan_cost_ns = cost.pte_scan_cost_ns;
    if let Some(flush) = cost.tlb_flush_cost_ns {
        config.kernel.tlb_flush_cost_ns = flush;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(pages: u64, cpu_ns: u64, one_page_cpu_ns: Option<u64>) -> serde_json::Value {
        let mut walk = serde_json::json!({ "pages": pages, "busy_cpus": 3, "round_trips": 5, "cpu_ns": cpu_ns, "wall_ns": cpu_ns });
        if let Some(one) = one_page_cpu_ns {
            walk["one_page_cpu_ns"] = one.into();
            walk["one_page_wall_ns"] = one.into();
        }
        serde_json::json!({ "release": "6.12.117+deb12-amd64", "pte_walk": walk })
    }

    #[test]
    fn the_one_page_round_trip_is_two_calls_and_the_rest_is_the_other_ptes() {
        // 2048 pages: 16 ms for the flushes (8 ms a call) and 2 * 2047 PTEs at 1 us, then at
        // 3 us; the means are 2 us per PTE and 8.5 ms per call.
        let runs = [
            guest(2048, 16_000_000 + 2 * 2047 * 1000, Some(16_000_000)),
            guest(2048, 18_000_000 + 2 * 2047 * 3000, Some(18_000_000)),
        ];
        let c = measure(&runs).unwrap();
        assert_eq!(c.per_run[0], RunCost { ns_per_pte: 1000.0, ns_per_call: Some(8_000_000.0) });
        assert!((c.ns_per_pte - 2000.0).abs() < 1e-6, "{c:?}");
        assert_eq!((c.pte_scan_cost_ns, c.tlb_flush_cost_ns), (2000, Some(8_500_000)));
        let mut sim = workloads::validation::resolve("gup-o-direct-read-into", &[]).unwrap();
        assert_eq!((sim.kernel.pte_scan_cost_ns, sim.kernel.tlb_flush_cost_ns), (10, 0), "the hardware defaults");
        apply(&mut sim, &c);
        assert_eq!((sim.kernel.pte_scan_cost_ns, sim.kernel.tlb_flush_cost_ns), (2000, 8_500_000));
    }

    #[test]
    fn a_guest_with_only_the_large_walk_gives_its_time_per_pte_and_no_flush() {
        // 20.48 ms per round trip over 2048 pages is 5 us per PTE.
        let c = measure(&[guest(2048, 20_480_000, None)]).unwrap();
        assert_eq!((c.pte_scan_cost_ns, c.tlb_flush_cost_ns), (5000, None));
        let mut sim = workloads::validation::resolve("gup-o-direct-read-into", &[]).unwrap();
        apply(&mut sim, &c);
        assert_eq!((sim.kernel.pte_scan_cost_ns, sim.kernel.tlb_flush_cost_ns), (5000, 0));
        // Mixed runs: the flush from the run that has it.
        let c = measure(&[guest(2048, 20_480_000, None), guest(2048, 16_000_000, Some(16_000_000))]).unwrap();
        assert_eq!((c.pte_scan_cost_ns, c.tlb_flush_cost_ns), (2500, Some(8_000_000)), "{c:?}");
    }

    #[test]
    fn runs_without_a_timed_walk_give_nothing_and_do_not_count() {
        let old = serde_json::json!({ "release": "6.1.0-57-amd64", "setup_ms": 300 });
        assert_eq!(measure(std::slice::from_ref(&old)), None);
        assert_eq!(measure(&[guest(0, 1000, Some(500))]), None, "no pages walked");
        let c = measure(&[old, guest(1000, 2000, None)]).unwrap();
        assert_eq!((c.per_run.len(), c.pte_scan_cost_ns), (1, 1));
        assert_eq!(measure(&[guest(4096, 100, Some(200))]).unwrap().pte_scan_cost_ns, 1, "never below 1 ns");
    }
}
