//! The CPU time of the NUMA scanner's PTE walk on the kernel's machine. task_numa_work()
//! (kernel/sched/fair.c, 6.1 and 6.12) charges the scanning task 32 times what its scan took
//! (`p->node_stamp += 32 * diff`), so the walk's cost delays the task's next scan: on hardware
//! a PTE takes some nanoseconds, the model's default `kernel.pte_scan_cost_ns`, and the charge
//! is negligible; under TCG a walk of the GUP cases' 4352 PTEs takes tens of milliseconds and
//! the kernels' second scan pass comes a second or more after the sim's. The guest times
//! mprotect(PROT_READ) and back over populated PTEs before the workload starts (guest.json's
//! `pte_walk`: two change_protection() walks per round trip); the sim gets the CPU time per PTE.

use serde::Serialize;
use sim_core::config::Config;

/// The walk's cost over the kernel runs that timed one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PteScanCost {
    /// CPU nanoseconds per PTE walked in each kernel run whose guest timed the walk (TCG
    /// spreads them: 4–15 µs in three runs of gup-o-direct-read-into on 6.12).
    pub per_run: Vec<f64>,
    /// Their mean.
    pub ns_per_pte: f64,
    /// Their mean wall nanoseconds per PTE walked.
    pub wall_ns_per_pte: f64,
    /// What the sim gets as `kernel.pte_scan_cost_ns` (at least 1).
    pub pte_scan_cost_ns: u64,
}

/// Walks per round trip: mprotect(PROT_READ) and mprotect(PROT_READ | PROT_WRITE).
const WALKS_PER_ROUND_TRIP: f64 = 2.0;

/// The mean cost per PTE over the runs' guest.json files; `None` when no run has a timed walk
/// (a guest from before the timing, or a walk of no pages).
pub fn measure(guests: &[serde_json::Value]) -> Option<PteScanCost> {
    let walks: Vec<oracle::PteWalk> = guests
        .iter()
        .filter_map(|g| serde_json::from_value::<oracle::PteWalk>(g["pte_walk"].clone()).ok())
        .filter(|w| w.pages > 0)
        .collect();
    if walks.is_empty() {
        return None;
    }
    let per_pte = |ns: fn(&oracle::PteWalk) -> u64| {
        walks.iter().map(move |w| ns(w) as f64 / (WALKS_PER_ROUND_TRIP * w.pages as f64))
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let per_run: Vec<f64> = per_pte(|w| w.cpu_ns).collect();
    let ns_per_pte = mean(&per_run);
    Some(PteScanCost {
        per_run,
        ns_per_pte,
        wall_ns_per_pte: mean(&per_pte(|w| w.wall_ns).collect::<Vec<_>>()),
        pte_scan_cost_ns: (ns_per_pte.round() as u64).max(1),
    })
}

/// Gives the sim the measured cost per PTE.
pub fn apply(config: &mut Config, cost: &PteScanCost) {
    config.kernel.pte_scan_cost_ns = cost.pte_scan_cost_ns;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(pages: u64, cpu_ns: u64, wall_ns: u64) -> serde_json::Value {
        serde_json::json!({
            "release": "6.12.117+deb12-amd64",
            "pte_walk": { "pages": pages, "busy_cpus": 3, "round_trips": 5, "cpu_ns": cpu_ns, "wall_ns": wall_ns },
        })
    }

    #[test]
    fn the_cost_per_pte_is_the_round_trip_over_two_walks_averaged_over_the_runs() {
        // 2048 pages: 20.48 ms per round trip is 5 us per PTE, 40.96 ms is 10 us.
        let runs = [guest(2048, 20_480_000, 30_720_000), guest(2048, 40_960_000, 40_960_000)];
        let c = measure(&runs).unwrap();
        assert_eq!(c.per_run, [5000.0, 10000.0]);
        assert!((c.ns_per_pte - 7500.0).abs() < 1e-9, "{c:?}");
        assert!((c.wall_ns_per_pte - 8750.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.pte_scan_cost_ns, 7500);
        let mut sim = workloads::validation::resolve("gup-o-direct-read-into", &[]).unwrap();
        assert_eq!(sim.kernel.pte_scan_cost_ns, 10, "the hardware default before the fit");
        apply(&mut sim, &c);
        assert_eq!(sim.kernel.pte_scan_cost_ns, 7500);
    }

    #[test]
    fn runs_without_a_timed_walk_give_nothing_and_do_not_count() {
        let old = serde_json::json!({ "release": "6.1.0-57-amd64", "setup_ms": 300 });
        assert_eq!(measure(std::slice::from_ref(&old)), None);
        assert_eq!(measure(&[guest(0, 1000, 1000)]), None, "no pages walked");
        let c = measure(&[old, guest(1000, 2000, 2000)]).unwrap();
        assert_eq!((c.per_run.len(), c.pte_scan_cost_ns), (1, 1));
        assert_eq!(measure(&[guest(4096, 100, 100)]).unwrap().pte_scan_cost_ns, 1, "never below 1 ns");
    }
}
