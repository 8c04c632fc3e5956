//! Matching the cost of a NUMA page migration to the guest's. A hinting fault that migrates
//! runs migrate_misplaced_folio() in the faulting thread: it unmaps the page
//! (try_to_migrate(), which flushes the other CPUs' TLBs), copies it and maps the copy. Under
//! TCG a cross-vCPU TLB flush stops every vCPU, so one migration costs the faulting thread
//! hundreds of microseconds of guest time (session 3's numa01 and numa02 runs: 0.2–0.9 ms),
//! where the model's `kernel.migrate_cost_ns` is 8 µs. That time is what makes a thread on
//! the far node take few hinting faults while it pulls pages: the threads near the memory
//! take most faults, locally, and fewer pages move.
//!
//! The guest's last sample gives each thread's touches and numa_pages_migrated (its `sched`
//! file), and guest.json its touch rate, hence its active time. Within a block of identical
//! threads, time = touches × per-touch time + migrations × per-migration time; a least-squares
//! fit over the block's threads gives both when their migrations differ (some threads pull
//! pages, others do not). The sim then gets the per-migration time as `migrate_cost_ns` (less
//! the hinting fault it already charges) and the per-touch time as the block's touch rate.

use std::collections::BTreeMap;

use serde::Serialize;
use sim_core::config::Config;

/// Fewest pages between the block's most and least migrating threads for a fit: below it the
/// migrations' time is lost in the noise of the touch rates.
const MIN_SPREAD: f64 = 1024.0;

/// The per-touch and per-migration time of one block's guest threads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigratePace {
    /// `process/block`.
    pub block: String,
    /// Guest nanoseconds per touch, migrations aside.
    pub touch_ns: f64,
    /// Guest nanoseconds per migrated page, beyond the touch that faulted.
    pub migration_ns: f64,
    /// The sim's `kernel.migrate_cost_ns` from it.
    pub migrate_cost_ns: u64,
}

/// One guest thread's work: touches, pages it migrated, seconds it ran.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Work {
    touches: f64,
    migrated: f64,
    active_s: f64,
}

/// The fit for the block whose threads' migrations differ most, from guest.json (its last
/// sample's threads and `touch_rate_per_s`); `None` when no block's threads differ by
/// [`MIN_SPREAD`] pages or the fit is not positive.
pub fn measure(guest: &serde_json::Value, config: &Config) -> Option<MigratePace> {
    let rates: BTreeMap<String, f64> = serde_json::from_value(guest["touch_rate_per_s"].clone()).ok()?;
    let threads = guest["final_sample"]["threads"].as_array()?;
    let work = |name: &str| -> Option<Work> {
        let t = threads.iter().find(|t| t["name"] == name)?;
        let rate = *rates.get(name).filter(|r| r.is_finite() && **r > 0.0)?;
        let touches = t["touches"].as_f64()?;
        let migrated = t["sched"]["numa_pages_migrated"].as_f64()?;
        Some(Work { touches, migrated, active_s: touches / rate })
    };
    let blocks = config.process.iter().flat_map(|p| p.thread.iter().map(move |t| format!("{}/{}", p.name, t.name)));
    blocks
        .filter_map(|block| {
            let prefix = format!("{block}/");
            let mine: Vec<Work> = threads
                .iter()
                .filter_map(|t| t["name"].as_str())
                .filter(|n| n.starts_with(&prefix))
                .filter_map(work)
                .collect();
            let spread = mine.iter().map(|w| w.migrated).fold(0.0, f64::max)
                - mine.iter().map(|w| w.migrated).fold(f64::INFINITY, f64::min);
            let (touch_s, migration_s) = fit(&mine).filter(|_| spread >= MIN_SPREAD)?;
            let fault_ns = config.kernel.hint_fault_cost_ns as f64;
            let (touch_ns, migration_ns) = (touch_s * 1e9, migration_s * 1e9);
            let migrate_cost_ns = (migration_ns - fault_ns).max(0.0).round() as u64;
            Some((spread, MigratePace { block, touch_ns, migration_ns, migrate_cost_ns }))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, pace)| pace)
}

/// Least squares of active_s = touches × a + migrated × b; `None` unless both are positive.
fn fit(work: &[Work]) -> Option<(f64, f64)> {
    let sum = |f: &dyn Fn(&Work) -> f64| work.iter().map(f).sum::<f64>();
    let (xx, xm, mm) =
        (sum(&|w| w.touches * w.touches), sum(&|w| w.touches * w.migrated), sum(&|w| w.migrated * w.migrated));
    let (xt, mt) = (sum(&|w| w.touches * w.active_s), sum(&|w| w.migrated * w.active_s));
    let det = xx * mm - xm * xm;
    if work.len() < 2 || det <= 0.0 {
        return None;
    }
    let (a, b) = ((xt * mm - mt * xm) / det, (xx * mt - xm * xt) / det);
    (a > 0.0 && b > 0.0).then_some((a, b))
}

/// Gives the sim the migration cost and, for the block's threads, the touch rate without
/// migrations (what [`super::calibrate::match_touch_rate`] sets the think time from).
pub fn apply(config: &mut Config, pace: &MigratePace, rates: &mut BTreeMap<String, f64>) {
    config.kernel.migrate_cost_ns = pace.migrate_cost_ns;
    let prefix = format!("{}/", pace.block);
    for (_, rate) in rates.iter_mut().filter(|(n, _)| n.starts_with(&prefix)) {
        *rate = 1e9 / pace.touch_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(threads: &[(u64, u64, f64)]) -> serde_json::Value {
        let name = |i: usize| format!("numa01/worker/{i}");
        let rates: serde_json::Map<String, serde_json::Value> =
            threads.iter().enumerate().map(|(i, t)| (name(i), (t.0 as f64 / t.2).into())).collect();
        let ts: Vec<serde_json::Value> = threads
            .iter()
            .enumerate()
            .map(|(i, t)| serde_json::json!({"name": name(i), "touches": t.0, "sched": {"numa_pages_migrated": t.1}}))
            .collect();
        serde_json::json!({"touch_rate_per_s": rates, "final_sample": {"threads": ts}})
    }

    /// Threads that ran 30 s at 40 µs per touch plus 500 µs per migration: the fit finds both,
    /// and the sim's cost leaves out the hinting fault it charges anyway.
    #[test]
    fn the_fit_recovers_per_touch_and_per_migration_time() {
        let c = workloads::validation::resolve("numa01", &[]).unwrap();
        let threads: Vec<(u64, u64, f64)> =
            [0u64, 5000, 30_000, 34_000].iter().map(|&m| ((30e6 - m as f64 * 500.0) as u64 / 40, m, 30.0)).collect();
        let pace = measure(&guest(&threads), &c).expect("a fit");
        assert_eq!(pace.block, "numa01/worker");
        assert!((pace.touch_ns - 40_000.0).abs() < 1.0, "{pace:?}");
        assert!((pace.migration_ns - 500_000.0).abs() < 10.0, "{pace:?}");
        assert_eq!(pace.migrate_cost_ns, 500_000 - c.kernel.hint_fault_cost_ns);
        let mut rates = BTreeMap::from([("numa01/worker/0".to_string(), 1.0), ("other/x/0".to_string(), 2.0)]);
        let mut c = c;
        apply(&mut c, &pace, &mut rates);
        assert_eq!(c.kernel.migrate_cost_ns, pace.migrate_cost_ns);
        assert!((rates["numa01/worker/0"] - 25_000.0).abs() < 1e-3 && rates["other/x/0"] == 2.0, "{rates:?}");
    }

    /// Threads that migrated about equally give no fit (their time cannot be split), nor
    /// does a block whose extra migrations cost nothing.
    #[test]
    fn no_fit_without_a_spread_of_migrations_or_with_a_free_one() {
        let c = workloads::validation::resolve("numa01", &[]).unwrap();
        let even = [(750_000, 100, 30.0), (740_000, 600, 30.0), (760_000, 0, 30.0)];
        assert_eq!(measure(&guest(&even), &c), None);
        let free = [(750_000, 0, 30.0), (750_000, 20_000, 30.0)];
        assert_eq!(measure(&guest(&free), &c), None);
    }
}
