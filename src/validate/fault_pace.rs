//! Matching the cost of a GUP caller's migrating hint faults to the guest's. A hinting fault
//! that migrates a page (do_numa_page() → migrate_misplaced_page() in 6.1,
//! migrate_misplaced_folio() in 6.12: isolate, copy, remap, flush the other CPUs' TLBs) takes the
//! faulting thread a few microseconds on hardware, the model's `kernel.migrate_cost_ns`.
//! Under TCG it takes far longer (each TLB shootdown waits for the other vCPU threads to
//! run): mprotect-toggle's process_vm_readv caller on 6.1.192 made 6000 calls a second while
//! nearly every call migrated a page and 22000 while none faulted, about 140 µs per
//! migration, and so reached half the pages in a scan pass that the sim's caller reached.
//! The kernel's time series show it: the device's guest time per touch in sample intervals
//! where most touches migrated a page, against intervals without a hint fault.

use results::Table;
use serde::Serialize;
use sim_core::config::Config;

/// The device's pace with and without migrations, and the migration cost that gives the sim
/// the same pace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultPace {
    /// Guest nanoseconds per device touch in intervals without a hint fault.
    pub quiet_ns_per_touch: f64,
    /// Guest nanoseconds per device touch in intervals where most touches migrated a page.
    pub migrating_ns_per_touch: f64,
    /// Pages migrated per device touch in those intervals.
    pub migrated_per_touch: f64,
    /// What the sim gets as `kernel.migrate_cost_ns`: the extra time per migration less the
    /// model's `kernel.hint_fault_cost_ns`.
    pub migrate_cost_ns: u64,
}

/// An interval counts as migrating when at least this many pages moved per device touch.
const MIGRATING: f64 = 0.5;

/// Intervals of each kind needed for a measurement.
const MIN_INTERVALS: usize = 3;

/// The pace of the kernel's GUP caller in `t` (the kernel's timeseries.csv) for `config`;
/// `None` unless the scenario has exactly one device (`touches.device` is then its own) and
/// the series has enough migrating and quiet intervals, or when migrating was not slower.
pub fn measure(t: &Table, config: &Config) -> Option<FaultPace> {
    if config.device.len() != 1 {
        return None;
    }
    let time = t.time_s();
    let (touches, faults, migrated) =
        (t.column("touches.device")?, t.column("vmstat.numa_hint_faults")?, t.column("vmstat.numa_pages_migrated")?);
    let (mut quiet, mut migrating) = (Sums::default(), Sums::default());
    for i in 1..time.len() {
        let (dt, d, m) = (time[i] - time[i - 1], touches[i], migrated[i]);
        if !(dt > 0.0 && d > 0.0) {
            continue;
        }
        if faults[i] == 0.0 {
            quiet.add(dt, d, m);
        } else if m >= MIGRATING * d {
            migrating.add(dt, d, m);
        }
    }
    if quiet.intervals < MIN_INTERVALS || migrating.intervals < MIN_INTERVALS {
        return None;
    }
    let (tq, tm) = (quiet.seconds * 1e9 / quiet.touches, migrating.seconds * 1e9 / migrating.touches);
    let per_migration = (tm - tq) * migrating.touches / migrating.migrated;
    let extra = per_migration - config.kernel.hint_fault_cost_ns as f64;
    (extra > 0.0).then(|| FaultPace {
        quiet_ns_per_touch: tq,
        migrating_ns_per_touch: tm,
        migrated_per_touch: migrating.migrated / migrating.touches,
        migrate_cost_ns: extra.round() as u64,
    })
}

/// Gives the sim the measured migration cost.
pub fn apply(config: &mut Config, pace: &FaultPace) {
    config.kernel.migrate_cost_ns = pace.migrate_cost_ns;
}

#[derive(Default)]
struct Sums {
    intervals: usize,
    seconds: f64,
    touches: f64,
    migrated: f64,
}

impl Sums {
    fn add(&mut self, dt: f64, touches: f64, migrated: f64) {
        self.intervals += 1;
        self.seconds += dt;
        self.touches += touches;
        self.migrated += migrated;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rows: &[(f64, f64, f64, f64)]) -> Table {
        let header = ["time_ms", "touches.device", "vmstat.numa_hint_faults", "vmstat.numa_pages_migrated"];
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: rows.iter().map(|(t, d, f, m)| [t, d, f, m].iter().map(|v| v.to_string()).collect()).collect(),
        }
    }

    fn case() -> Config {
        workloads::validation::resolve("mprotect-toggle", &[]).unwrap()
    }

    #[test]
    fn the_extra_time_per_migration_becomes_the_migration_cost() {
        // 100 ms intervals: 2200 touches when quiet (45 us each); 600 touches and 500
        // migrations when migrating (166.7 us each): (166.7 - 45.5) * 600 / 500 = 145.5 us.
        let mut rows = vec![(0.0, 0.0, 0.0, 0.0)];
        for i in 1..=4 {
            rows.push((i as f64 * 100.0, 2200.0, 0.0, 0.0));
        }
        for i in 5..=8 {
            rows.push((i as f64 * 100.0, 600.0, 520.0, 500.0));
        }
        // A scan interval with few migrations per touch counts as neither.
        rows.push((900.0, 2000.0, 300.0, 10.0));
        let c = case();
        let p = measure(&series(&rows), &c).unwrap();
        assert!((p.quiet_ns_per_touch - 1e8 / 2200.0).abs() < 1e-6, "{p:?}");
        assert!((p.migrating_ns_per_touch - 1e8 / 600.0).abs() < 1e-6, "{p:?}");
        let expected = (1e8 / 600.0 - 1e8 / 2200.0) * 600.0 / 500.0 - c.kernel.hint_fault_cost_ns as f64;
        assert_eq!(p.migrate_cost_ns, expected.round() as u64);
        let mut sim = c.clone();
        apply(&mut sim, &p);
        assert_eq!(sim.kernel.migrate_cost_ns, p.migrate_cost_ns);
    }

    #[test]
    fn no_pace_without_enough_intervals_of_each_kind_or_a_single_device() {
        let quiet_only: Vec<_> = (0..10).map(|i| (i as f64 * 100.0, 2000.0, 0.0, 0.0)).collect();
        assert_eq!(measure(&series(&quiet_only), &case()), None);
        let mut both = quiet_only.clone();
        both.extend((10..14).map(|i| (i as f64 * 100.0, 600.0, 500.0, 500.0)));
        assert!(measure(&series(&both), &case()).is_some());
        let cpu_only = workloads::validation::resolve("numa02", &[]).unwrap();
        assert_eq!(measure(&series(&both), &cpu_only), None);
        // Migrating no slower than quiet gives nothing to add.
        let mut fast = quiet_only;
        fast.extend((10..14).map(|i| (i as f64 * 100.0, 2000.0, 1500.0, 1500.0)));
        assert_eq!(measure(&series(&fast), &case()), None);
    }
}
