//! The result contract: `summary.json` and the metric names shared with `timeseries.csv`,
//! `results.csv` and the plots.

use std::borrow::Cow;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::{
    Counters, HintFaultsBySource, HintFaultsByTier, Ksm, KvmStat, Numasim, SecondaryMmuChurn, Stale, TierStat, UffdRwp,
    VmStat, Young,
};
use crate::engine::{NSEC_PER_SEC, Nanos};

/// One metric value: a count, or a ratio/rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Count(u64),
    Real(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Count(n) => n as f64,
            Value::Real(x) => x,
        }
    }
}

/// Named groups of named values, in a fixed order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Groups(pub Vec<(&'static str, Group)>);

/// One group's named values (names built at run time for per-thread and per-domain ones).
pub type Group = Vec<(Cow<'static, str>, Value)>;

impl Groups {
    /// The value of `group.name`.
    pub fn get(&self, dotted: &str) -> Option<Value> {
        let (group, name) = dotted.split_once('.')?;
        let (_, values) = self.0.iter().find(|(g, _)| *g == group)?;
        values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// `group.name` → value, in order.
    pub fn flatten(&self) -> Vec<(String, Value)> {
        self.0.iter().flat_map(|(g, vals)| vals.iter().map(move |(n, v)| (format!("{g}.{n}"), *v))).collect()
    }
}

impl Serialize for Groups {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Inner<'a>(&'a [(Cow<'static, str>, Value)]);
        impl Serialize for Inner<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (g, vals) in &self.0 {
            m.serialize_entry(g, &Inner(vals))?;
        }
        m.end()
    }
}

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

fn ratio(part: u64, all: u64) -> Value {
    Value::Real(if all == 0 { 0.0 } else { part as f64 / all as f64 })
}

/// The metric groups of `c` (totals of a run, or the deltas of one interval) over `span_ns`.
pub fn metrics(c: &Counters, span_ns: Nanos, span: Span) -> Groups {
    let t = &c.touches;
    let stale = match span {
        Span::Run => counts(Stale::NAMES, c.stale.values()),
        Span::Interval => named(vec![
            ("mappings", Value::Count(c.stale_mappings)),
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
    let mut groups = Groups(vec![
        ("vmstat", vmstat),
        ("numasim", numasim),
        ("hint_faults_by_source", counts(HintFaultsBySource::NAMES, c.hint_faults_by_source.values())),
        (
            "locality",
            named(vec![
                ("cpu", ratio(t.cpu_local, t.cpu)),
                ("kvm", ratio(t.kvm_local, t.kvm)),
                ("device", ratio(t.device_local, t.device)),
            ]),
        ),
        (
            "touches",
            named(vec![("cpu", Value::Count(t.cpu)), ("kvm", Value::Count(t.kvm)), ("device", Value::Count(t.device))]),
        ),
        ("stale", stale),
        ("ksm", counts(Ksm::NAMES, c.ksm.values())),
        ("young", counts(Young::NAMES, c.young.values())),
        ("secondary_mmu", counts(SecondaryMmuChurn::NAMES, c.secondary_mmu.values())),
        ("kvm", counts(KvmStat::NAMES, c.kvm.values())),
        ("per_scan_pass", per_scan_pass(&c.secondary_mmu)),
        ("throughput", named(vec![("touches_per_s", Value::Real(per_s))])),
    ]);
    if c.tiered {
        groups.0.insert(3, ("hint_faults_by_tier", counts(HintFaultsByTier::NAMES, c.hint_faults_by_tier.values())));
    }
    groups
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

/// `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    /// `kernel.version`.
    pub kernel_version: String,
    /// The GUP era in effect (the version's, or `kernel.gup_policy`'s override).
    pub gup_policy: String,
    pub notifier: String,
    pub sim_time_ns: u64,
    pub events: u64,
    /// Wall-clock seconds the run took (the one field that differs between identical runs).
    pub wall_s: f64,
    /// The trace file, when the run was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::trace::TraceSummary>,
    #[serde(flatten)]
    pub metrics: Groups,
}
