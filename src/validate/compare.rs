//! Sim against kernel, metric by metric: the values of both result directories, the derived
//! per-scan-pass figures, the tolerance of each judged metric, and the compare-kernels table.

use std::fmt::Write as _;
use std::path::Path;

use plots::data::{Table, read_summary};
use serde::Serialize;
use sim_core::config::ToleranceConfig;

/// One side's value of a metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell {
    Value(f64),
    /// The side cannot measure it (a kernel's `not_measured`, or a figure derived from one).
    NotMeasured,
    /// A ratio whose denominator is 0 on this side.
    Undefined,
    /// Neither present nor declared not measured: the result directory lacks it.
    Missing,
}

impl Cell {
    fn text(self) -> String {
        match self {
            Cell::Value(v) => fmt(v),
            Cell::NotMeasured => "not measured".into(),
            Cell::Undefined => "undefined".into(),
            Cell::Missing => "missing".into(),
        }
    }
}

impl Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Value(v) => s.serialize_f64(*v),
            other => s.serialize_str(&other.text()),
        }
    }
}

/// The metrics of one result directory (a `numasim run` or an oracle run: same contract).
#[derive(Clone, Debug, Default)]
pub struct Side {
    values: Vec<(String, f64)>,
    not_measured: Vec<String>,
    /// The last time-series row's `node.<n>.used_pages` gauges.
    placement: Vec<(String, f64)>,
}

/// Summary fields that describe the run, not the workload.
const META: [&str; 4] = ["seed", "sim_time_ns", "events", "wall_s"];

impl Side {
    pub fn read(dir: &Path) -> Result<Self, String> {
        Self::with_series(dir, &Table::read(&dir.join("timeseries.csv"))?)
    }

    /// The side in `dir`, whose timeseries.csv the caller has read already.
    pub fn with_series(dir: &Path, series: &Table) -> Result<Self, String> {
        let path = dir.join("summary.json");
        let values = read_summary(&path)?.into_iter().filter(|(k, _)| !META.contains(&k.as_str())).collect();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let not_measured = json["not_measured"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        Ok(Self { values, not_measured, placement: final_placement(series) })
    }

    #[cfg(test)]
    pub fn from_parts(values: &[(&str, f64)], not_measured: &[&str]) -> Self {
        Self {
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            not_measured: not_measured.iter().map(|s| s.to_string()).collect(),
            placement: Vec::new(),
        }
    }

    fn raw(&self, metric: &str) -> Cell {
        if let Some((_, v)) = self.values.iter().chain(&self.placement).find(|(k, _)| k == metric) {
            Cell::Value(*v)
        } else if self.not_measured.iter().any(|m| m == metric) {
            Cell::NotMeasured
        } else {
            Cell::Missing
        }
    }

    /// The value of a result name, a final placement or a derived figure (see [`DERIVED`]).
    pub fn cell(&self, metric: &str, pages: u64) -> Cell {
        match DERIVED.iter().find(|d| d.name == metric) {
            Some(d) => {
                let num = self.cell(d.numerator, pages);
                let den = match d.denominator {
                    Denominator::Metric(m) => self.cell(m, pages),
                    Denominator::Pages => Cell::Value(pages as f64),
                };
                divide(num, den)
            }
            None => self.raw(metric),
        }
    }
}

fn final_placement(t: &Table) -> Vec<(String, f64)> {
    let nodes = t.header.iter().filter(|h| h.starts_with("node.") && h.ends_with(".used_pages"));
    nodes.filter_map(|h| Some((format!("final.{h}"), *t.column(h)?.last()?))).filter(|(_, v)| v.is_finite()).collect()
}

fn divide(num: Cell, den: Cell) -> Cell {
    match (num, den) {
        (Cell::Value(_), Cell::Value(0.0)) => Cell::Undefined,
        (Cell::Value(n), Cell::Value(d)) => Cell::Value(n / d),
        (Cell::NotMeasured, _) | (_, Cell::NotMeasured) => Cell::NotMeasured,
        (Cell::Missing, _) | (_, Cell::Missing) => Cell::Missing,
        _ => Cell::Undefined,
    }
}

enum Denominator {
    Metric(&'static str),
    /// Pages of the scenario's memory (every VMA and VM).
    Pages,
}

/// A figure computed from a side's results, the same way on both sides.
struct Derived {
    name: &'static str,
    numerator: &'static str,
    denominator: Denominator,
}

/// Per-scan-pass and per-fault figures: independent of how fast TCG runs the guest.
/// A scan pass is `numa_pte_updates` / the scenario's pages: PTEs made protnone in
/// units of the whole memory once.
const DERIVED: [Derived; 7] = [
    Derived { name: "derived.scan_passes", numerator: "vmstat.numa_pte_updates", denominator: Denominator::Pages },
    Derived {
        name: "per_pass.numa_hint_faults",
        numerator: "vmstat.numa_hint_faults",
        denominator: Denominator::Metric("derived.scan_passes"),
    },
    Derived {
        name: "per_pass.hint_faults_by_source.device",
        numerator: "hint_faults_by_source.device",
        denominator: Denominator::Metric("derived.scan_passes"),
    },
    Derived {
        name: "per_pass.hint_faults_by_source.kvm",
        numerator: "hint_faults_by_source.kvm",
        denominator: Denominator::Metric("derived.scan_passes"),
    },
    Derived {
        name: "per_pass.numa_pages_migrated",
        numerator: "vmstat.numa_pages_migrated",
        denominator: Denominator::Metric("derived.scan_passes"),
    },
    Derived {
        name: "derived.local_fault_share",
        numerator: "vmstat.numa_hint_faults_local",
        denominator: Denominator::Metric("vmstat.numa_hint_faults"),
    },
    Derived {
        name: "derived.migrated_per_fault",
        numerator: "vmstat.numa_pages_migrated",
        denominator: Denominator::Metric("vmstat.numa_hint_faults"),
    },
];

/// Whether a metric name is one validate can compare: a result name of the sim, a final
/// placement or a derived figure.
pub fn is_known(metric: &str, sim_names: &[String]) -> bool {
    sim_names.iter().any(|n| n == metric)
        || DERIVED.iter().any(|d| d.name == metric)
        || (metric.starts_with("final.node.") && metric.ends_with(".used_pages"))
}

/// The verdict on one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Within,
    Outside,
    /// No tolerance for this metric: shown, not judged.
    NotJudged,
    /// A tolerance, but a side has no value (not measured, undefined, missing).
    CannotJudge,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub metric: String,
    pub sim: Cell,
    pub kernel: Cell,
    /// sim / kernel; 1 when both are 0, infinite (null in JSON) when only the kernel's is.
    pub ratio: Option<f64>,
    pub tolerance: Option<ToleranceConfig>,
    pub verdict: Verdict,
}

/// sim / kernel, with 0/0 = 1 (they agree) and x/0 = infinity.
pub fn ratio(sim: Cell, kernel: Cell) -> Option<f64> {
    match (sim, kernel) {
        (Cell::Value(s), Cell::Value(0.0)) => Some(if s == 0.0 { 1.0 } else { f64::INFINITY }),
        (Cell::Value(s), Cell::Value(k)) => Some(s / k),
        _ => None,
    }
}

/// |sim - kernel| <= abs + rel * |kernel|.
pub fn judge(sim: Cell, kernel: Cell, tol: Option<&ToleranceConfig>) -> Verdict {
    let Some(t) = tol else { return Verdict::NotJudged };
    match (sim, kernel) {
        (Cell::Value(s), Cell::Value(k)) if (s - k).abs() <= t.abs + t.rel * k.abs() => Verdict::Within,
        (Cell::Value(_), Cell::Value(_)) => Verdict::Outside,
        _ => Verdict::CannotJudge,
    }
}

/// Every metric of the sim's summary, the final placement and the derived figures, in that
/// order; `pages` is the scenario's memory in pages.
pub fn rows(sim: &Side, kernel: &Side, tolerances: &[ToleranceConfig], pages: u64) -> Vec<Row> {
    let mut names: Vec<String> = sim.values.iter().map(|(k, _)| k.clone()).collect();
    names.extend(sim.placement.iter().chain(&kernel.placement).map(|(k, _)| k.clone()));
    names.extend(DERIVED.iter().map(|d| d.name.to_string()));
    names.extend(tolerances.iter().map(|t| t.metric.clone()));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
        .into_iter()
        .map(|metric| {
            let (s, k) = (sim.cell(&metric, pages), kernel.cell(&metric, pages));
            let tolerance = tolerances.iter().find(|t| t.metric == metric).cloned();
            let verdict = judge(s, k, tolerance.as_ref());
            Row { metric, sim: s, kernel: k, ratio: ratio(s, k), tolerance, verdict }
        })
        .collect()
}

/// Whether no judged metric is outside its tolerance.
pub fn agree(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.verdict != Verdict::Outside)
}

/// The compare-kernels table: metric | sim | kernel | ratio | within tolerance.
pub fn table(rows: &[Row], kernel_label: &str) -> String {
    let width = rows.iter().map(|r| r.metric.len()).max().unwrap_or(6).max(6);
    let mut out = format!(
        "{:width$} {:>16} {:>16} {:>9}  within tolerance\n",
        "metric",
        "sim",
        truncate(kernel_label, 16),
        "ratio"
    );
    for r in rows {
        let ratio = match r.ratio {
            Some(x) if x.is_infinite() => "inf".to_string(),
            Some(x) => format!("{x:.3}"),
            None => "-".to_string(),
        };
        let verdict = match (r.verdict, &r.tolerance) {
            (Verdict::Within, Some(t)) => format!("yes ({})", bound(t)),
            (Verdict::Outside, Some(t)) => format!("NO ({})", bound(t)),
            (Verdict::CannotJudge, Some(t)) => format!("cannot judge ({})", bound(t)),
            _ => "-".to_string(),
        };
        let _ = writeln!(out, "{:width$} {:>16} {:>16} {ratio:>9}  {verdict}", r.metric, r.sim.text(), r.kernel.text());
    }
    out
}

fn bound(t: &ToleranceConfig) -> String {
    match (t.abs, t.rel) {
        (a, 0.0) => format!("±{}", fmt(a)),
        (0.0, r) => format!("±{}%", fmt(r * 100.0)),
        (a, r) => format!("±{} +{}%", fmt(a), fmt(r * 100.0)),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.4}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(metric: &str, abs: f64, rel: f64) -> ToleranceConfig {
        ToleranceConfig { metric: metric.into(), abs, rel, reason: "test".into() }
    }

    #[test]
    fn within_means_abs_plus_rel_of_the_kernel_value() {
        let t = tol("m", 10.0, 0.1);
        assert_eq!(judge(Cell::Value(120.0), Cell::Value(100.0), Some(&t)), Verdict::Within);
        assert_eq!(judge(Cell::Value(79.0), Cell::Value(100.0), Some(&t)), Verdict::Outside);
        assert_eq!(judge(Cell::Value(16384.0), Cell::Value(1.0), Some(&tol("m", 64.0, 0.0))), Verdict::Outside);
        assert_eq!(judge(Cell::Value(5.0), Cell::Value(100.0), None), Verdict::NotJudged);
    }

    #[test]
    fn a_zero_base_gives_one_when_both_are_zero_and_infinity_otherwise() {
        assert_eq!(ratio(Cell::Value(0.0), Cell::Value(0.0)), Some(1.0));
        assert_eq!(ratio(Cell::Value(3.0), Cell::Value(0.0)), Some(f64::INFINITY));
        assert_eq!(ratio(Cell::Value(3.0), Cell::Value(6.0)), Some(0.5));
        assert_eq!(ratio(Cell::Value(3.0), Cell::NotMeasured), None);
        // Within an absolute tolerance a 0 base still agrees.
        assert_eq!(judge(Cell::Value(3.0), Cell::Value(0.0), Some(&tol("m", 5.0, 0.0))), Verdict::Within);
    }

    #[test]
    fn a_metric_the_kernel_cannot_measure_is_shown_as_such_never_as_zero() {
        let sim = Side::from_parts(&[("stale.accesses", 7.0), ("vmstat.numa_hint_faults", 10.0)], &[]);
        let kernel = Side::from_parts(&[("vmstat.numa_hint_faults", 10.0)], &["stale.accesses"]);
        let rows = rows(&sim, &kernel, &[tol("stale.accesses", 0.0, 0.0)], 1);
        let stale = rows.iter().find(|r| r.metric == "stale.accesses").unwrap();
        assert_eq!(stale.kernel, Cell::NotMeasured);
        assert_eq!(stale.verdict, Verdict::CannotJudge);
        assert_eq!(stale.ratio, None);
        assert!(agree(&rows), "an unmeasurable metric is no disagreement");
        let text = table(&rows, "6.12");
        let line = text.lines().find(|l| l.starts_with("stale.accesses")).unwrap();
        assert!(line.contains("not measured") && line.contains("cannot judge"), "{line}");
    }

    #[test]
    fn a_metric_absent_and_undeclared_is_missing_and_derived_ones_follow_their_inputs() {
        let sim = Side::from_parts(
            &[
                ("vmstat.numa_pte_updates", 200.0),
                ("vmstat.numa_hint_faults", 50.0),
                ("vmstat.numa_pages_migrated", 0.0),
                ("hint_faults_by_source.device", 30.0),
            ],
            &["hint_faults_by_source.kvm"],
        );
        let kernel = Side::from_parts(&[("vmstat.numa_hint_faults", 0.0)], &["vmstat.numa_pte_updates"]);
        assert_eq!(sim.cell("derived.scan_passes", 100), Cell::Value(2.0));
        assert_eq!(sim.cell("per_pass.numa_hint_faults", 100), Cell::Value(25.0));
        assert_eq!(sim.cell("per_pass.hint_faults_by_source.device", 100), Cell::Value(15.0));
        assert_eq!(sim.cell("per_pass.hint_faults_by_source.kvm", 100), Cell::NotMeasured);
        assert_eq!(sim.cell("derived.migrated_per_fault", 100), Cell::Value(0.0));
        assert_eq!(kernel.cell("vmstat.numa_pages_migrated", 100), Cell::Missing);
        assert_eq!(kernel.cell("per_pass.numa_hint_faults", 100), Cell::NotMeasured);
        assert_eq!(kernel.cell("derived.local_fault_share", 100), Cell::Missing);
        let k2 = Side::from_parts(&[("vmstat.numa_hint_faults", 0.0), ("vmstat.numa_hint_faults_local", 0.0)], &[]);
        assert_eq!(k2.cell("derived.local_fault_share", 100), Cell::Undefined);
    }

    #[test]
    fn one_metric_outside_its_tolerance_is_a_disagreement_and_says_no() {
        let sim =
            Side::from_parts(&[("vmstat.numa_hint_faults", 16384.0), ("vmstat.numa_pages_migrated", 16384.0)], &[]);
        let kernel =
            Side::from_parts(&[("vmstat.numa_hint_faults", 1.0), ("vmstat.numa_pages_migrated", 16380.0)], &[]);
        let tols = [tol("vmstat.numa_hint_faults", 64.0, 0.0), tol("vmstat.numa_pages_migrated", 64.0, 0.0)];
        let rows = rows(&sim, &kernel, &tols, 16384);
        assert!(!agree(&rows));
        let text = table(&rows, "6.12.117");
        assert!(text.lines().any(|l| l.starts_with("vmstat.numa_hint_faults ") && l.contains("NO (±64)")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("vmstat.numa_pages_migrated") && l.contains("yes (±64)")), "{text}");
    }
}
