//! The round trip of a sync userfaultfd RWP fault on the kernel's machine. A thread that
//! touches an armed PTE enters handle_userfault() (mm/userfaultfd.c, 7.3), which queues the
//! message, wakes the handler's poll() and sleeps; the handler reads the message and its
//! UFFDIO_RWPROTECT over the page wakes the thread, which retries the fault. On hardware that
//! is microseconds; under TCG it took about 1.7 ms (uffd-rwp-procmem on 7.3.4, 2026-12-06),
//! two vCPU switches and four system calls. The guest times each access that the handler
//! resolved (guest.json's final sample: `uffd_rwp_waits` and `uffd_rwp_wait_ns`); the sim gets
//! the mean, less the trap it charges on top (`kernel.hint_fault_cost_ns`), as every sync
//! `[[userfaultfd]]`'s `handler_latency_us`.

use serde::Serialize;
use sim_core::config::Config;

/// The measured round trip and the latency the sim got from it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UffdPace {
    /// Each kernel run's mean round trip in nanoseconds (runs that timed no fault left out).
    pub per_run_ns: Vec<f64>,
    /// Faults timed over all runs.
    pub waits: u64,
    /// The runs' mean.
    pub round_trip_ns: f64,
    /// What every sync `[[userfaultfd]]` of the sim gets (at least 1, as the config requires).
    pub handler_latency_us: u64,
}

/// The round trip over the runs' guest.json files; `None` when the config has no sync RWP
/// registration or no run timed a fault (an older guest, or no fault before the stop).
pub fn measure(guests: &[serde_json::Value], config: &Config) -> Option<UffdPace> {
    if !config.userfaultfd.iter().any(|u| !u.rwp_async) {
        return None;
    }
    let timed = |g: &serde_json::Value| {
        let s = &g["final_sample"];
        Some((s["uffd_rwp_waits"].as_u64()?, s["uffd_rwp_wait_ns"].as_u64()?)).filter(|(n, _)| *n > 0)
    };
    let runs: Vec<(u64, u64)> = guests.iter().filter_map(timed).collect();
    if runs.is_empty() {
        return None;
    }
    let per_run_ns: Vec<f64> = runs.iter().map(|&(n, ns)| ns as f64 / n as f64).collect();
    let round_trip_ns = per_run_ns.iter().sum::<f64>() / per_run_ns.len() as f64;
    let wait_ns = round_trip_ns - config.kernel.hint_fault_cost_ns as f64;
    Some(UffdPace {
        waits: runs.iter().map(|(n, _)| n).sum(),
        handler_latency_us: ((wait_ns / 1e3).round() as u64).max(1),
        per_run_ns,
        round_trip_ns,
    })
}

/// Gives every sync registration the measured latency.
pub fn apply(config: &mut Config, pace: &UffdPace) {
    for u in config.userfaultfd.iter_mut().filter(|u| !u.rwp_async) {
        u.handler_latency_us = pace.handler_latency_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(waits: u64, wait_ns: u64) -> serde_json::Value {
        serde_json::json!({ "release": "7.3.4+deb13-amd64", "final_sample": { "uffd_rwp_waits": waits, "uffd_rwp_wait_ns": wait_ns } })
    }

    fn case() -> Config {
        workloads::validation::resolve("uffd-rwp-procmem", &[]).unwrap()
    }

    /// Two runs at 1.6 and 1.8 ms a fault: 1.7 ms, less the 1.5 µs trap, is 1699 µs for the
    /// handler; a run that timed nothing does not pull the mean down.
    #[test]
    fn the_mean_round_trip_less_the_trap_is_the_handlers_latency() {
        let mut c = case();
        assert_eq!((c.userfaultfd[0].handler_latency_us, c.kernel.hint_fault_cost_ns), (20, 1500));
        let runs = [guest(1000, 1_600_000_000), guest(500, 900_000_000), guest(0, 0)];
        let pace = measure(&runs, &c).unwrap();
        assert_eq!(pace.per_run_ns, [1_600_000.0, 1_800_000.0]);
        assert_eq!((pace.waits, pace.round_trip_ns, pace.handler_latency_us), (1500, 1_700_000.0, 1699));
        apply(&mut c, &pace);
        assert_eq!(c.userfaultfd[0].handler_latency_us, 1699);
    }

    /// A calibrated trap is what comes off: 60 µs of it leaves 40 µs of a 100 µs round trip;
    /// a round trip shorter than the trap leaves the least latency the config accepts.
    #[test]
    fn the_trap_the_sim_charges_is_not_counted_twice() {
        let mut c = case();
        c.kernel.hint_fault_cost_ns = 60_000;
        assert_eq!(measure(&[guest(10, 1_000_000)], &c).unwrap().handler_latency_us, 40);
        assert_eq!(measure(&[guest(10, 100_000)], &c).unwrap().handler_latency_us, 1);
    }

    #[test]
    fn nothing_to_fit_without_a_handler_or_a_timed_fault() {
        let old = serde_json::json!({ "release": "7.3.4+deb13-amd64", "final_sample": { "uffd_rwp_faults": 5 } });
        assert_eq!(measure(&[old, guest(0, 0)], &case()), None);
        let mut async_mode = case();
        async_mode.userfaultfd[0].rwp_async = true;
        assert_eq!(measure(&[guest(10, 1_000_000)], &async_mode), None);
        let plain = workloads::validation::resolve("numa02", &[]).unwrap();
        assert_eq!(measure(&[guest(10, 1_000_000)], &plain), None);
    }
}
