//! The metric groups of a run's summary (the type is the result contract's) and the metric
//! names shared with `timeseries.csv`, `results.csv` and the plots.

use std::borrow::Cow;

pub use results::{Group, Groups, Summary, Value};

use super::{
    Counters, FileThpStat, HintFaultsBySource, HintFaultsByTier, Ksm, KvmStat, Numasim, SecondaryMmuChurn, Stale,
    TierStat, UffdRwp, VmStat, Young,
};
use crate::engine::{NSEC_PER_SEC, Nanos};

/// Whether metrics describe a whole run or one interval of the time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Run,
    Interval,
}

fn counts(names: &'static [&'static str], values: Vec<u64>) -> Vec<(Cow<'static, str>, Value)> {
    names.iter().map(|&n| Cow::Borrowed(n)).zip(values.into_iter().map(Value::Count)).collect()
}

/// Static names with their values.
fn named(values: Vec<(&'static str, Value)>) -> Vec<(Cow<'static, str>, Value)> {
    values.into_iter().map(|(n, v)| (Cow::Borrowed(n), v)).collect()
}

/// One value per toucher, named by [`TOUCHERS`].
fn by_toucher(values: [Value; 3]) -> Group {
    TOUCHERS.iter().map(|&n| Cow::Borrowed(n)).zip(values).collect()
}

fn ratio(part: u64, all: u64) -> Value {
    Value::Real(if all == 0 { 0.0 } else { part as f64 / all as f64 })
}

/// A metric as `(group, name)`; [`crate::metric!`] names one by its counter.
pub type Metric = (&'static str, &'static str);

/// The share of each toucher's touches that were node-local.
pub const LOCALITY: &str = "locality";
/// Touches by toucher.
pub const TOUCHES: &str = "touches";
/// Who touches memory, as [`LOCALITY`] and [`TOUCHES`] name them, in order.
pub const TOUCHERS: [&str; 3] = ["cpu", "kvm", "device"];
/// The `touches_per_s` of the run or interval.
pub const THROUGHPUT: Metric = ("throughput", "touches_per_s");
/// Stale secondary-MMU entries at the end of an interval (the gauge behind `stale.*`).
pub const STALE_MAPPINGS: Metric = (Stale::GROUP, "mappings");
/// Thread moves between CPUs (`se.nr_migrations` summed over threads).
pub const SCHED_NR_MIGRATIONS: Metric = ("sched", "nr_migrations");
/// The `per_scan_pass` group.
pub const PER_SCAN_PASS_GROUP: &str = "per_scan_pass";
/// Per-thread figures, named by [`thread_nr_migrations`] and [`thread_node_share`].
pub const THREAD: &str = "thread";
/// The load balancer's counters per sched domain, as /proc/schedstat names them.
pub const SCHEDSTAT: &str = "schedstat";

/// A thread's moves between CPUs, in [`THREAD`].
pub fn thread_nr_migrations(thread: &str) -> String {
    format!("{thread}.nr_migrations")
}

/// The share of a thread's runtime on node `nid`'s CPUs, in [`THREAD`].
pub fn thread_node_share(thread: &str, nid: usize) -> String {
    format!("{thread}.node{nid}_share")
}

/// The metric groups of `c` (totals of a run, or the deltas of one interval) over `span_ns`.
pub fn metrics(c: &Counters, span_ns: Nanos, span: Span) -> Groups {
    let t = &c.touches;
    let stale = match span {
        Span::Run => counts(Stale::NAMES, c.stale.values()),
        Span::Interval => named(vec![
            (STALE_MAPPINGS.1, Value::Count(c.stale_mappings)),
            ("mapping_ns", Value::Count(c.stale.mapping_ns)),
            ("accesses", Value::Count(c.stale.accesses)),
        ]),
    };
    let mut numasim = counts(Numasim::NAMES, c.numasim.values());
    if c.uffd_rwp_registered {
        numasim.extend(counts(UffdRwp::NAMES, c.uffd_rwp.values()));
    }
    let all = t.cpu + t.kvm + t.device;
    let per_s = if span_ns == 0 { 0.0 } else { all as f64 * NSEC_PER_SEC as f64 / span_ns as f64 };
    let mut vmstat = counts(VmStat::NAMES, c.vmstat.values());
    if c.tiered {
        vmstat.extend(counts(TierStat::NAMES, c.tierstat.values()));
    }
    if c.file_thp_reported {
        vmstat.extend(counts(FileThpStat::NAMES, c.file_thp.values()));
    }
    let mut groups = vec![
        (VmStat::GROUP, vmstat),
        (Numasim::GROUP, numasim),
        (HintFaultsBySource::GROUP, counts(HintFaultsBySource::NAMES, c.hint_faults_by_source.values())),
        (LOCALITY, by_toucher([ratio(t.cpu_local, t.cpu), ratio(t.kvm_local, t.kvm), ratio(t.device_local, t.device)])),
        (TOUCHES, by_toucher([t.cpu, t.kvm, t.device].map(Value::Count))),
        (Stale::GROUP, stale),
        (Ksm::GROUP, counts(Ksm::NAMES, c.ksm.values())),
        (Young::GROUP, counts(Young::NAMES, c.young.values())),
        (SecondaryMmuChurn::GROUP, counts(SecondaryMmuChurn::NAMES, c.secondary_mmu.values())),
        (KvmStat::GROUP, counts(KvmStat::NAMES, c.kvm.values())),
        (PER_SCAN_PASS_GROUP, per_scan_pass(&c.secondary_mmu)),
        (THROUGHPUT.0, named(vec![(THROUGHPUT.1, Value::Real(per_s))])),
    ];
    if c.tiered {
        groups.insert(3, (HintFaultsByTier::GROUP, counts(HintFaultsByTier::NAMES, c.hint_faults_by_tier.values())));
    }
    Groups(groups.into_iter().map(|(g, values)| (Cow::Borrowed(g), values)).collect())
}

/// The `per_scan_pass` metrics.
pub const PER_SCAN_PASS: [&str; 5] =
    ["invalidations", "entries_zapped", "entries_refilled", "tlb_flushes", "flush_ipis"];

/// The churn each NUMA scan pass caused, on average (0 without a pass), in the order of
/// [`PER_SCAN_PASS`].
fn per_scan_pass(c: &SecondaryMmuChurn) -> Vec<(Cow<'static, str>, Value)> {
    let counts = [c.invalidations(), c.entries_zapped, c.entries_refilled, c.tlb_flushes, c.flush_ipis];
    PER_SCAN_PASS.iter().zip(counts).map(|(&n, count)| (Cow::Borrowed(n), ratio(count, c.scan_passes))).collect()
}
