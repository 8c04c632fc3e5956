//! Matching the cost of a vCPU's migrating EPT refill to the guest's. A refill of a
//! protnone page faults it through GUP (do_numa_page() → migrate_misplaced_folio(),
//! MIGRATE_ASYNC), whose try_to_migrate() clears the page's PTE in every mm that maps it and
//! try_to_unmap_flush() IPIs each such mm's CPUs (mm/rmap.c, 6.12.118). Under TCG that flush
//! waits for the other vCPU threads to get the host, and far longer when another process
//! maps the page on busy CPUs: gupdev-kvm-memfd's vCPUs took 0.12–0.20 ms of guest time per
//! migration, gupdev-kvm-memfd-daemon's, whose daemon maps the same memfd, 2.3–4.7 ms. The
//! guest's vCPUs also share one gupdev device, whose `ioctl_lock` lets one run at a time.
//!
//! Per vCPU thread, the kernel's time series gives touches and numa_pages_migrated per
//! interval. The time per touch comes from the intervals before the vCPUs' first migration
//! in which a thread touched; every thread's time from the vCPUs' first migration to their
//! last, waits for the lock included, less its touches' time, divided by the migrations,
//! gives the guest time per migrated page. The sim's vCPUs share no lock, so each is charged
//! that time, the wait included: the block then migrates at the guest's pace. Simplified:
//! the time goes to `kernel.migrate_cost_ns`, which every migration pays, whoever maps the
//! page.

use results::Table;
use serde::Serialize;
use sim_core::config::Config;

use super::migrate_pace::MIN_MIGRATED;

/// The vCPUs' guest time per touch and per migrated page, and the migration cost the sim
/// gets from them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VcpuPace {
    /// `vm/vcpus`.
    pub block: String,
    /// Guest nanoseconds per touch before the vCPUs' first migration, in rows with touches.
    pub touch_ns: f64,
    /// Guest nanoseconds per migrated page, the refill's fault and the lock's wait included.
    pub migration_ns: f64,
    /// Pages the vCPU threads migrated.
    pub migrated: f64,
    /// What the sim gets as `kernel.migrate_cost_ns`: `migration_ns` less the model's
    /// `kvm.ept_violation_cost_ns` and `kernel.hint_fault_cost_ns`.
    pub migrate_cost_ns: u64,
}

/// The vCPU threads' touches and seconds before the block's first migration, and their
/// touches, seconds and migrations from its first to its last.
#[derive(Default)]
struct Sums {
    quiet_touches: f64,
    quiet_seconds: f64,
    touches: f64,
    seconds: f64,
    migrated: f64,
}

/// The vCPUs' pace in `t` (the kernel's timeseries.csv) for `config`, whose cost
/// parameters are already the ones the sim gets; `None` unless the scenario has exactly one
/// VM honouring NUMA hinting faults, its threads migrated at least [`MIN_MIGRATED`] pages
/// and touched before their first, and a migration took longer than the model already
/// charges.
pub fn measure(t: &Table, config: &Config) -> Option<VcpuPace> {
    let [vm] = config.vm.as_slice() else {
        return None;
    };
    if !config.kvm.honor_numa_fault {
        return None;
    }
    let block = format!("{}/{}", vm.name, vm.vcpus.name);
    let time = t.time_s();
    let threads: Vec<(Vec<f64>, Vec<f64>)> = (0..vm.vcpus.count)
        .filter_map(|i| {
            let col = |k: &str| t.column(&format!("kernel.task.{block}/{i}.{k}"));
            Some((col("touches")?, col("numa_pages_migrated")?))
        })
        .collect();
    let rows = threads.iter().fold(time.len(), |n, (a, b)| n.min(a.len()).min(b.len()));
    let moved = |r: &usize| threads.iter().any(|(_, m)| m[*r] > 0.0);
    let (first, last) = ((0..rows).find(moved)?, (0..rows).rev().find(moved)?);
    let seconds = |r: usize| time[r] - if r == 0 { 0.0 } else { time[r - 1] };
    let mut s = Sums::default();
    for (touches, migrated) in &threads {
        // A row without a touch before the first migration is a wait, not a touch's time.
        for r in (0..first).filter(|&r| touches[r] > 0.0) {
            s.quiet_touches += touches[r];
            s.quiet_seconds += seconds(r);
        }
        for r in first..=last {
            s.touches += touches[r];
            s.seconds += seconds(r);
            s.migrated += migrated[r];
        }
    }
    if s.migrated < MIN_MIGRATED || s.quiet_touches <= 0.0 {
        return None;
    }
    let touch_ns = s.quiet_seconds * 1e9 / s.quiet_touches;
    let migration_ns = (s.seconds * 1e9 - s.touches * touch_ns) / s.migrated;
    let charged = (config.kvm.ept_violation_cost_ns + config.kernel.hint_fault_cost_ns) as f64;
    (migration_ns > charged).then(|| VcpuPace {
        block,
        touch_ns,
        migration_ns,
        migrated: s.migrated,
        migrate_cost_ns: (migration_ns - charged).round() as u64,
    })
}

/// Gives the sim the measured migration cost.
pub fn apply(config: &mut Config, pace: &VcpuPace) {
    config.kernel.migrate_cost_ns = pace.migrate_cost_ns;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series of 100 ms rows for `gupdev-kvm-memfd`'s two vCPUs: (touches, migrated) per
    /// thread and row.
    fn series(rows: &[[(f64, f64); 2]]) -> Table {
        let rows: Vec<_> = rows.iter().map(|ts| ts.map(|(t, m)| [t, m])).collect();
        super::super::thread_series("vm/vcpu", ["touches", "numa_pages_migrated"], &rows)
    }

    /// Two vCPUs touching every 50 µs, then taking turns (one migrates 50 pages in a row at
    /// 2 ms each, the other waits), then touching again: each is charged 4 ms a page, the
    /// wait included, less what the model already charges a refill.
    #[test]
    fn a_vcpu_is_charged_its_wall_time_per_migration_waits_included() {
        let mut rows = vec![[(2000.0, 0.0); 2]; 5];
        for r in 0..22 {
            let turn = [(0.0, 50.0), (0.0, 0.0)];
            rows.push(if r % 2 == 0 { turn } else { [turn[1], turn[0]] });
        }
        rows.extend(vec![[(2000.0, 0.0); 2]; 5]);
        let mut c = workloads::validation::resolve("gupdev-kvm-memfd", &[]).unwrap();
        let p = measure(&series(&rows), &c).expect("a pace");
        assert_eq!((p.block.as_str(), p.migrated), ("vm/vcpu", 1100.0));
        assert!((p.touch_ns - 50e3).abs() < 1e-6, "{p:?}");
        // Both threads over the 22 rows of migrations: 4.4 s for 1100 pages.
        assert!((p.migration_ns - 4e6).abs() < 1e-3, "{p:?}");
        let charged = c.kvm.ept_violation_cost_ns + c.kernel.hint_fault_cost_ns;
        assert_eq!(p.migrate_cost_ns, (p.migration_ns - charged as f64).round() as u64);
        apply(&mut c, &p);
        assert_eq!(c.kernel.migrate_cost_ns, p.migrate_cost_ns);
    }

    /// No pace without a VM that honours hinting faults, with too few migrations, or without
    /// touches before them.
    #[test]
    fn no_pace_without_an_honouring_vm_enough_migrations_or_a_quiet_start() {
        let quiet = [(2000.0, 0.0); 2];
        let busy = [(100.0, 600.0); 2];
        let enough: Vec<_> = [quiet; 3].into_iter().chain([busy; 3]).collect();
        let c = workloads::validation::resolve("gupdev-kvm-memfd", &[]).unwrap();
        assert!(measure(&series(&enough), &c).is_some());
        let few: Vec<_> = [quiet; 3].into_iter().chain([[(100.0, 100.0); 2]; 3]).collect();
        assert_eq!(measure(&series(&few), &c), None);
        assert_eq!(measure(&series(&[busy; 6]), &c), None);
        let mut no_honor = c.clone();
        no_honor.kvm.honor_numa_fault = false;
        assert_eq!(measure(&series(&enough), &no_honor), None);
        let cpu_only = workloads::validation::resolve("numa02", &[]).unwrap();
        assert_eq!(measure(&series(&enough), &cpu_only), None);
    }
}
