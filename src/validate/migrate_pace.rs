//! Matching the cost of NUMA hinting faults and page migrations to the guest's. A hinting
//! fault traps into the kernel (do_numa_page()); one that migrates runs
//! migrate_misplaced_folio() in the faulting thread, which unmaps the page (try_to_migrate():
//! a TLB flush of the other CPUs), copies it and maps the copy. Under TCG each costs the
//! faulting thread far more guest time than the model's `kernel.hint_fault_cost_ns` (1.5 µs)
//! and `kernel.migrate_cost_ns` (8 µs) say, and while a pass's protnone pages are being
//! faulted back the workers crawl (numa01 on 6.12.117: 20–50 k touches per second against
//! 800 k once the faults stop). A thread on the far node, which migrates on most of its
//! faults, then takes far fewer of them than the threads near the memory (a page faults only
//! for its first toucher): most faults are local and fewer pages move.
//!
//! The kernel's time series has, per thread and interval, its touches, minor faults (with
//! the VMAs populated before the start, its hinting faults) and numa_pages_migrated. A thread
//! busy for the whole interval spent it as touches × a + faults × c + migrations × b; a
//! least-squares fit over every interval of a block's threads gives a, c and b. The sim gets
//! c as `hint_fault_cost_ns`, b as `migrate_cost_ns` and 1 / a as the block's touch rate
//! (from which the think time is set). A block that migrated too few pages for b to show
//! in its time is fitted on touches and faults alone, and the sim keeps its
//! `migrate_cost_ns`: the daemon of gupdev-kvm-memfd-daemon on 6.12.118 migrated one page
//! in 120 thread-intervals, and the three-term fit put 209 ms on it, which the sim then
//! charged to every page the vCPUs pulled.

use std::collections::BTreeMap;

use results::Table;
use serde::Serialize;
use sim_core::config::Config;

/// Fewest hinting faults over the fitted intervals: below it the faults' time is lost in the
/// noise of the touch rates.
const MIN_FAULTS: f64 = 4096.0;

/// Fewest migrated pages over the fitted intervals for their cost to be fitted. A migration
/// costs the guest several faults' time (6.12.118, hugetlbfs-unscanned: 669 µs against
/// 35 µs), so a quarter of [`MIN_FAULTS`] still puts as much time on migrations as
/// [`MIN_FAULTS`] faults take.
pub(super) const MIN_MIGRATED: f64 = MIN_FAULTS / 4.0;

/// The guest's time per touch, per hinting fault and per migrated page, for one block.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigratePace {
    /// `process/block`.
    pub block: String,
    /// Guest nanoseconds per touch, faults aside.
    pub touch_ns: f64,
    /// Guest nanoseconds per hinting fault, migration aside: the sim's `hint_fault_cost_ns`.
    pub fault_ns: f64,
    /// Guest nanoseconds per migrated page beyond its fault: the sim's `migrate_cost_ns`;
    /// `None` when the block migrated fewer than [`MIN_MIGRATED`] pages.
    pub migration_ns: Option<f64>,
    /// Thread-intervals the fit used.
    pub intervals: usize,
}

/// One thread's interval: touches, hinting faults, pages migrated, seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Work {
    touches: f64,
    faults: f64,
    migrated: f64,
    seconds: f64,
}

/// The fit for the first block of CPU threads whose intervals have at least [`MIN_FAULTS`]
/// faults, from the kernel's timeseries.csv (`kernel.task.<thread>.touches`, `.minflt`,
/// `.numa_pages_migrated`); `None` when the series lacks the columns (runs before they were
/// recorded), nothing faulted, or a cost comes out negative.
pub fn measure(t: &Table, config: &Config) -> Option<MigratePace> {
    let time = t.time_s();
    let blocks = config.process.iter().flat_map(|p| p.thread.iter().map(move |b| format!("{}/{}", p.name, b.name)));
    blocks
        .filter_map(|block| {
            let work = block_work(t, &time, &block);
            (work.iter().map(|w| w.faults).sum::<f64>() >= MIN_FAULTS).then_some((block, work))
        })
        .find_map(|(block, work)| {
            let with_migrations = work.iter().map(|w| w.migrated).sum::<f64>() >= MIN_MIGRATED;
            let costs = fit(&work, with_migrations)?;
            Some(MigratePace {
                block,
                touch_ns: costs[0] * 1e9,
                fault_ns: costs[1] * 1e9,
                migration_ns: costs.get(2).map(|b| b * 1e9),
                intervals: work.len(),
            })
        })
}

/// Every interval of every thread `block/i` the series has columns for. Row r covers the
/// time since row r - 1 (the first, since the start).
fn block_work(t: &Table, time: &[f64], block: &str) -> Vec<Work> {
    let threads = t.header.iter().filter_map(|h| h.strip_prefix("kernel.task.")?.strip_suffix(".minflt"));
    let mine: Vec<&str> = threads.filter(|n| n.rsplit_once('/').is_some_and(|(b, _)| b == block)).collect();
    let mut out = Vec::new();
    for name in mine {
        let col = |k: &str| t.column(&format!("kernel.task.{name}.{k}"));
        let (Some(touches), Some(faults), Some(migrated)) = (col("touches"), col("minflt"), col("numa_pages_migrated"))
        else {
            continue;
        };
        for (r, &end) in time.iter().enumerate() {
            let w = Work {
                touches: touches[r],
                faults: faults[r],
                migrated: migrated[r],
                seconds: end - if r == 0 { 0.0 } else { time[r - 1] },
            };
            if [w.touches, w.faults, w.migrated, w.seconds].iter().all(|v| v.is_finite() && *v >= 0.0)
                && w.touches > 0.0
            {
                out.push(w);
            }
        }
    }
    out
}

/// Least squares of seconds = touches × a + faults × c (+ migrated × b when
/// `with_migrations`); `None` unless every cost is positive. The normal equations are solved
/// by Gaussian elimination.
fn fit(work: &[Work], with_migrations: bool) -> Option<Vec<f64>> {
    let n = if with_migrations { 3 } else { 2 };
    let x = |w: &Work| [w.touches, w.faults, w.migrated];
    // The augmented normal equations [XᵀX | Xᵀy].
    let mut m = vec![vec![0.0; n + 1]; n];
    for w in work {
        let xi = x(w);
        for i in 0..n {
            m[i][n] += xi[i] * w.seconds;
            for j in 0..n {
                m[i][j] += xi[i] * xi[j];
            }
        }
    }
    let scale = (0..n).map(|i| m[i][i]).fold(0.0, f64::max);
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() <= f64::EPSILON * scale {
            return None;
        }
        m.swap(col, pivot);
        let (upper, lower) = m.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower.iter_mut() {
            let f = row[col] / pivot_row[col];
            for (r, p) in row.iter_mut().zip(pivot_row).skip(col) {
                *r -= f * p;
            }
        }
    }
    let mut costs = vec![0.0; n];
    for i in (0..n).rev() {
        let rest: f64 = (i + 1..n).map(|k| m[i][k] * costs[k]).sum();
        costs[i] = (m[i][n] - rest) / m[i][i];
    }
    costs.iter().all(|&c| c > 0.0).then_some(costs)
}

/// Gives the sim the fault cost, the migration cost when it was fitted and, for the block's
/// threads, the touch rate without them (what [`super::calibrate::match_touch_rate`] sets the
/// think time from).
pub fn apply(config: &mut Config, pace: &MigratePace, rates: &mut BTreeMap<String, f64>) {
    config.kernel.hint_fault_cost_ns = pace.fault_ns.round() as u64;
    if let Some(b) = pace.migration_ns {
        config.kernel.migrate_cost_ns = b.round() as u64;
    }
    let prefix = format!("{}/", pace.block);
    for (_, rate) in rates.iter_mut().filter(|(n, _)| n.starts_with(&prefix)) {
        *rate = 1e9 / pace.touch_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel time series of two threads over `rows` 100 ms intervals: (touches, faults,
    /// migrated) per thread and interval.
    fn series(rows: &[[(f64, f64, f64); 2]]) -> Table {
        let rows: Vec<_> = rows.iter().map(|ts| ts.map(|(t, f, m)| [t, f, m])).collect();
        super::super::thread_series("numa01/worker", ["touches", "minflt", "numa_pages_migrated"], &rows)
    }

    /// Intervals whose 100 ms went to 5 µs touches, 60 µs faults and 400 µs migrations in
    /// varying mixes: the fit recovers the three costs, and the sim gets them.
    #[test]
    fn the_fit_recovers_the_cost_of_touches_faults_and_migrations() {
        let mix = |faults: f64, migrated: f64| ((0.1 - faults * 60e-6 - migrated * 400e-6) / 5e-6, faults, migrated);
        let rows: Vec<[(f64, f64, f64); 2]> = (0..20)
            .map(|r| {
                let f = f64::from(r % 5) * 200.0;
                [mix(f, f * 0.1), mix(f * 0.5, f * f64::from(r % 3) * 0.05)]
            })
            .collect();
        let mut c = workloads::validation::resolve("numa01", &[]).unwrap();
        let pace = measure(&series(&rows), &c).expect("a fit");
        assert_eq!((pace.block.as_str(), pace.intervals), ("numa01/worker", 40));
        for (got, want) in [(pace.touch_ns, 5e3), (pace.fault_ns, 60e3), (pace.migration_ns.unwrap(), 400e3)] {
            assert!((got - want).abs() < want * 1e-6, "{pace:?}");
        }
        let mut rates = BTreeMap::from([("numa01/worker/0".to_string(), 1.0), ("other/x/0".to_string(), 2.0)]);
        apply(&mut c, &pace, &mut rates);
        assert_eq!((c.kernel.hint_fault_cost_ns, c.kernel.migrate_cost_ns), (60_000, 400_000));
        assert!((rates["numa01/worker/0"] - 200_000.0).abs() < 1e-3 && rates["other/x/0"] == 2.0, "{rates:?}");
    }

    /// A block that faults often but migrates one page, in an interval that also lost 20 ms
    /// to something else, as gupdev-kvm-memfd-daemon's daemon on 6.12.118: the migration
    /// cost is not fitted (a three-term fit puts the 20 ms on that page), the fault cost is,
    /// and the sim keeps its migration cost.
    #[test]
    fn a_block_that_hardly_migrates_gets_no_migration_cost() {
        let mix = |faults: f64, lost: f64| ((0.1 - lost - faults * 60e-6) / 5e-6, faults, 0.0);
        let mut rows: Vec<[(f64, f64, f64); 2]> =
            (0..20).map(|r| [mix(f64::from(r % 5) * 200.0, 0.0), mix(f64::from(r % 4) * 150.0, 0.0)]).collect();
        rows[7][0] = mix(400.0, 0.02);
        rows[7][0].2 = 1.0;
        let mut c = workloads::validation::resolve("numa01", &[]).unwrap();
        let pace = measure(&series(&rows), &c).expect("a fit of touches and faults");
        assert_eq!(pace.migration_ns, None, "{pace:?}");
        assert!((pace.fault_ns - 60e3).abs() < 6e3 && (pace.touch_ns - 5e3).abs() < 500.0, "{pace:?}");
        let kept = c.kernel.migrate_cost_ns;
        apply(&mut c, &pace, &mut BTreeMap::new());
        assert_eq!((c.kernel.hint_fault_cost_ns, c.kernel.migrate_cost_ns), (pace.fault_ns.round() as u64, kept));
    }

    /// Without the per-thread columns (a run recorded before them), with too few faults, or
    /// with faults that cost nothing, there is no fit.
    #[test]
    fn no_fit_without_columns_faults_or_a_positive_cost() {
        let c = workloads::validation::resolve("numa01", &[]).unwrap();
        let old =
            Table { header: vec!["time_ms".into(), "touches.cpu".into()], rows: vec![vec!["100".into(), "5".into()]] };
        assert_eq!(measure(&old, &c), None);
        let few: Vec<[(f64, f64, f64); 2]> = (0..10).map(|_| [(2e4, 10.0, 1.0), (2e4, 5.0, 0.0)]).collect();
        assert_eq!(measure(&series(&few), &c), None);
        let free: Vec<[(f64, f64, f64); 2]> =
            (0..10).map(|r| [(2e4, f64::from(r) * 300.0, f64::from(r % 3) * 10.0), (2e4, 1000.0, 0.0)]).collect();
        assert_eq!(measure(&series(&free), &c), None);
    }
}
