//! Sim against kernel, metric by metric: the values of both result directories, the derived
//! per-scan-pass figures, the tolerance of each judged metric, and the compare-kernels table.

use std::fmt::Write as _;
use std::path::Path;

use results::Summary;
use results::Table;
use serde::Serialize;
use sim_core::config::ToleranceConfig;
use sim_core::sched::fair::{DOMAIN_FIELDS, Idle, LB_FIELDS};

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
        Self::with_series(dir, &Table::read(&dir.join(results::TIMESERIES))?)
    }

    /// The side in `dir`, whose timeseries.csv the caller has read already.
    pub fn with_series(dir: &Path, series: &Table) -> Result<Self, String> {
        let summary = Summary::read(dir)?;
        let values = summary.values().into_iter().filter(|(k, _)| !META.contains(&k.as_str())).collect();
        Ok(Self { values, not_measured: summary.not_measured, placement: final_placement(series) })
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
    /// Leaves a stand-in process's threads out, as the kernel side never counts them: their
    /// `thread.<process>/...` rows go and their moves leave `sched.nr_migrations`.
    pub fn leave_out_process(&mut self, process: &str) {
        let prefix = format!("thread.{process}/");
        let moves: f64 = self
            .values
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(".nr_migrations"))
            .map(|(_, v)| v)
            .sum();
        self.values.retain(|(k, _)| !k.starts_with(&prefix));
        if let Some((_, total)) = self.values.iter_mut().find(|(k, _)| k == "sched.nr_migrations") {
            *total -= moves;
        }
    }

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
const DERIVED: [Derived; 9] = [
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
        name: "per_pass.secondary_mmu.entries_zapped",
        numerator: "secondary_mmu.entries_zapped",
        denominator: Denominator::Metric("derived.scan_passes"),
    },
    Derived {
        name: "per_pass.secondary_mmu.entries_refilled",
        numerator: "secondary_mmu.entries_refilled",
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
/// placement, a derived figure or a scheduler name both sides write per thread or domain.
pub fn is_known(metric: &str, sim_names: &[String]) -> bool {
    sim_names.iter().any(|n| n == metric)
        || DERIVED.iter().any(|d| d.name == metric)
        || (metric.starts_with("final.node.") && metric.ends_with(".used_pages"))
        || is_sched_name(metric)
}

/// The load balancer's names, which depend on the scenario's threads and the kernel's domains
/// and so are missing from a default run's names: `sched.nr_migrations`,
/// `thread.<thread>.nr_migrations`, `thread.<thread>.node<n>_share`,
/// `schedstat.<domain>.<lb field>.<idle type>` and `schedstat.<domain>.<field>`.
fn is_sched_name(metric: &str) -> bool {
    if metric == "sched.nr_migrations" {
        return true;
    }
    if let Some(rest) = metric.strip_prefix("thread.") {
        let Some((thread, field)) = rest.rsplit_once('.') else { return false };
        let share = field.strip_prefix("node").and_then(|f| f.strip_suffix("_share"));
        return !thread.is_empty() && (field == "nr_migrations" || share.is_some_and(|n| n.parse::<u32>().is_ok()));
    }
    let Some(rest) = metric.strip_prefix("schedstat.") else { return false };
    let parts: Vec<&str> = rest.split('.').collect();
    match parts[..] {
        [domain, field, itype] => {
            !domain.is_empty() && LB_FIELDS.contains(&field) && Idle::ALL.iter().any(|i| i.name() == itype)
        }
        [domain, field] => !domain.is_empty() && DOMAIN_FIELDS.contains(&field),
        _ => false,
    }
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
    /// The kernel's value; over repeated runs (`--repeat`), their mean.
    pub kernel: Cell,
    /// sim / kernel; 1 when both are 0, infinite (null in JSON) when only the kernel's is.
    pub ratio: Option<f64>,
    pub tolerance: Option<ToleranceConfig>,
    pub verdict: Verdict,
    /// Each kernel run's value, when the case ran more than once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_runs: Vec<Cell>,
    /// The min–max of `kernel_runs`, when every run has a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_spread: Option<Spread>,
}

/// The kernel's least and greatest value of a metric over its runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub max: f64,
}

/// A metric over the kernel's runs: their mean and min–max when every run has a value, else
/// the first run's lack of one (a metric one run cannot measure is not measured).
pub fn over_runs(cells: &[Cell]) -> (Cell, Option<Spread>) {
    let values: Option<Vec<f64>> = cells.iter().map(|c| if let Cell::Value(v) = c { Some(*v) } else { None }).collect();
    match values {
        Some(v) if !v.is_empty() => {
            let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            (Cell::Value(v.iter().sum::<f64>() / v.len() as f64), Some(Spread { min, max }))
        }
        _ => (cells.iter().copied().find(|c| !matches!(c, Cell::Value(_))).unwrap_or(Cell::Missing), None),
    }
}

/// sim / kernel, with 0/0 = 1 (they agree) and x/0 = infinity.
pub fn ratio(sim: Cell, kernel: Cell) -> Option<f64> {
    match (sim, kernel) {
        (Cell::Value(s), Cell::Value(0.0)) => Some(if s == 0.0 { 1.0 } else { f64::INFINITY }),
        (Cell::Value(s), Cell::Value(k)) => Some(s / k),
        _ => None,
    }
}

/// Against the kernel's runs: within when `min - (abs + rel * |min|) <= sim <= max + (abs +
/// rel * |max|)`, the runs' spread widened by the tolerance at each end; with one run that is
/// |sim - kernel| <= abs + rel * |kernel|.
pub fn judge(sim: Cell, kernel_runs: &[Cell], tol: Option<&ToleranceConfig>) -> Verdict {
    let Some(t) = tol else { return Verdict::NotJudged };
    let margin = |k: f64| t.abs + t.rel * k.abs();
    match (sim, over_runs(kernel_runs).1) {
        (Cell::Value(s), Some(r)) if s >= r.min - margin(r.min) && s <= r.max + margin(r.max) => Verdict::Within,
        (Cell::Value(_), Some(_)) => Verdict::Outside,
        _ => Verdict::CannotJudge,
    }
}

/// Every metric of the sim's summary, the final placement and the derived figures, in that
/// order, judged against the kernel's runs (one or more); `pages` is the scenario's memory in
/// pages.
pub fn rows(sim: &Side, kernels: &[Side], tolerances: &[ToleranceConfig], pages: u64) -> Vec<Row> {
    let mut names: Vec<String> = sim.values.iter().map(|(k, _)| k.clone()).collect();
    names.extend(sim.placement.iter().chain(kernels.iter().flat_map(|k| &k.placement)).map(|(k, _)| k.clone()));
    names.extend(DERIVED.iter().map(|d| d.name.to_string()));
    names.extend(tolerances.iter().map(|t| t.metric.clone()));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let repeated = kernels.len() > 1;
    names
        .into_iter()
        .map(|metric| {
            let s = sim.cell(&metric, pages);
            let runs: Vec<Cell> = kernels.iter().map(|k| k.cell(&metric, pages)).collect();
            let (k, spread) = over_runs(&runs);
            let tolerance = tolerances.iter().find(|t| t.metric == metric).cloned();
            let verdict = judge(s, &runs, tolerance.as_ref());
            let (kernel_runs, kernel_spread) = if repeated { (runs, spread) } else { (Vec::new(), None) };
            Row { metric, sim: s, kernel: k, ratio: ratio(s, k), tolerance, verdict, kernel_runs, kernel_spread }
        })
        .collect()
}

/// Whether no judged metric is outside its tolerance.
pub fn agree(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.verdict != Verdict::Outside)
}

/// The compare-kernels table: metric | sim | kernel | ratio | within tolerance; over
/// repeated kernel runs the kernel column is their mean, followed by their min–max.
pub fn table(rows: &[Row], kernel_label: &str) -> String {
    let width = rows.iter().map(|r| r.metric.len()).max().unwrap_or(6).max(6);
    let runs = rows.iter().map(|r| r.kernel_runs.len()).max().unwrap_or(0);
    let (kernel_head, spread_head) = if runs > 1 {
        (format!("{kernel_label} mean"), format!(" {:>27}", format!("{kernel_label} min–max ({runs} runs)")))
    } else {
        (kernel_label.to_string(), String::new())
    };
    let mut out = format!(
        "{:width$} {:>16} {:>16}{spread_head} {:>9}  within tolerance\n",
        "metric",
        "sim",
        truncate(&kernel_head, 16),
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
        let spread = match (runs > 1, r.kernel_spread) {
            (false, _) => String::new(),
            (true, Some(sp)) => format!(" {:>27}", spread_text(sp)),
            (true, None) => format!(" {:>27}", "-"),
        };
        let _ = writeln!(
            out,
            "{:width$} {:>16} {:>16}{spread} {ratio:>9}  {verdict}",
            r.metric,
            r.sim.text(),
            r.kernel.text()
        );
    }
    out
}

/// `min–max` of a spread.
pub fn spread_text(s: Spread) -> String {
    format!("{}–{}", fmt(s.min), fmt(s.max))
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

    /// A stand-in's moves leave the total and its rows go; the scenario's stay.
    #[test]
    fn a_stand_in_process_is_left_out_of_the_task_moves() {
        let values = [
            ("sched.nr_migrations", 12.0),
            ("thread.init/sampler/0.nr_migrations", 5.0),
            ("thread.init/sampler/0.node1_share", 0.5),
            ("thread.app/w/0.nr_migrations", 7.0),
        ];
        let mut side = Side {
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            not_measured: Vec::new(),
            placement: Vec::new(),
        };
        side.leave_out_process("init");
        let keys: Vec<(&str, f64)> = side.values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(keys, [("sched.nr_migrations", 7.0), ("thread.app/w/0.nr_migrations", 7.0)]);
    }

    #[test]
    fn the_load_balancers_names_are_known_by_their_shape() {
        for m in [
            "sched.nr_migrations",
            "thread.p/w/0.nr_migrations",
            "thread.owner/owner/1.node1_share",
            "schedstat.NUMA.lb_count.newidle",
            "schedstat.MC.ttwu_move_affine",
        ] {
            assert!(is_known(m, &[]), "{m}");
        }
        for m in [
            "sched.nr_moves",
            "thread.p/w/0.nodeX_share",
            "thread..nr_migrations",
            "schedstat.MC.lb_count.sleeping",
            "schedstat.MC.sbe_count",
            "schedstat.MC",
        ] {
            assert!(!is_known(m, &[]), "{m}");
        }
    }

    #[test]
    fn within_means_abs_plus_rel_of_the_kernel_value() {
        let t = tol("m", 10.0, 0.1);
        assert_eq!(judge(Cell::Value(120.0), &[Cell::Value(100.0)], Some(&t)), Verdict::Within);
        assert_eq!(judge(Cell::Value(79.0), &[Cell::Value(100.0)], Some(&t)), Verdict::Outside);
        assert_eq!(judge(Cell::Value(16384.0), &[Cell::Value(1.0)], Some(&tol("m", 64.0, 0.0))), Verdict::Outside);
        assert_eq!(judge(Cell::Value(5.0), &[Cell::Value(100.0)], None), Verdict::NotJudged);
    }

    #[test]
    fn a_zero_base_gives_one_when_both_are_zero_and_infinity_otherwise() {
        assert_eq!(ratio(Cell::Value(0.0), Cell::Value(0.0)), Some(1.0));
        assert_eq!(ratio(Cell::Value(3.0), Cell::Value(0.0)), Some(f64::INFINITY));
        assert_eq!(ratio(Cell::Value(3.0), Cell::Value(6.0)), Some(0.5));
        assert_eq!(ratio(Cell::Value(3.0), Cell::NotMeasured), None);
        // Within an absolute tolerance a 0 base still agrees.
        assert_eq!(judge(Cell::Value(3.0), &[Cell::Value(0.0)], Some(&tol("m", 5.0, 0.0))), Verdict::Within);
    }

    #[test]
    fn a_metric_the_kernel_cannot_measure_is_shown_as_such_never_as_zero() {
        let sim = Side::from_parts(&[("stale.accesses", 7.0), ("vmstat.numa_hint_faults", 10.0)], &[]);
        let kernel = Side::from_parts(&[("vmstat.numa_hint_faults", 10.0)], &["stale.accesses"]);
        let rows = rows(&sim, &[kernel], &[tol("stale.accesses", 0.0, 0.0)], 1);
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
        let rows = rows(&sim, &[kernel], &tols, 16384);
        assert!(!agree(&rows));
        let text = table(&rows, "6.12.117");
        assert!(text.lines().any(|l| l.starts_with("vmstat.numa_hint_faults ") && l.contains("NO (±64)")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("vmstat.numa_pages_migrated") && l.contains("yes (±64)")), "{text}");
    }

    #[test]
    fn over_repeated_runs_the_sim_is_judged_against_their_spread_widened_by_the_tolerance() {
        // mprotect-toggle's migrations on 6.1: kernel runs 7763 and 9000, tolerance 128 + 5 %.
        let t = tol("vmstat.numa_pages_migrated", 128.0, 0.05);
        let runs = [Cell::Value(7763.0), Cell::Value(9000.0)];
        // Up to 9000 + 128 + 450 and down to 7763 - 128 - 388.2.
        assert_eq!(judge(Cell::Value(9578.0), &runs, Some(&t)), Verdict::Within);
        assert_eq!(judge(Cell::Value(9579.0), &runs, Some(&t)), Verdict::Outside);
        assert_eq!(judge(Cell::Value(7247.0), &runs, Some(&t)), Verdict::Within);
        assert_eq!(judge(Cell::Value(7246.0), &runs, Some(&t)), Verdict::Outside);
        // Between the runs is within even with no tolerance at all.
        assert_eq!(judge(Cell::Value(8500.0), &runs, Some(&tol("m", 0.0, 0.0))), Verdict::Within);
        assert_eq!(judge(Cell::Value(15368.0), &runs, Some(&t)), Verdict::Outside);
        // A run that could not measure it leaves nothing to judge against.
        assert_eq!(judge(Cell::Value(8500.0), &[runs[0], Cell::NotMeasured], Some(&t)), Verdict::CannotJudge);
    }

    #[test]
    fn one_run_judges_exactly_as_abs_plus_rel_of_its_value() {
        let t = tol("m", 64.0, 0.10);
        for k in [0.0f64, 1.0, 400.0, 3158.0, -20.0] {
            for s in [0.0, 256.0, 399.0, 3000.0, 3537.0, 3538.0, 9952.0, -100.0] {
                let old = (s - k).abs() <= t.abs + t.rel * k.abs();
                let expected = if old { Verdict::Within } else { Verdict::Outside };
                assert_eq!(judge(Cell::Value(s), &[Cell::Value(k)], Some(&t)), expected, "sim {s} kernel {k}");
            }
        }
    }

    #[test]
    fn the_kernel_column_is_the_runs_mean_and_not_measured_wins_over_values() {
        let (mean, spread) = over_runs(&[Cell::Value(256.0), Cell::Value(400.0), Cell::Value(300.0)]);
        assert_eq!(mean, Cell::Value(956.0 / 3.0));
        assert_eq!(spread, Some(Spread { min: 256.0, max: 400.0 }));
        assert_eq!(over_runs(&[Cell::Value(1.0), Cell::NotMeasured]), (Cell::NotMeasured, None));
        assert_eq!(over_runs(&[Cell::Undefined, Cell::Value(1.0)]), (Cell::Undefined, None));
        assert_eq!(over_runs(&[]), (Cell::Missing, None));
    }

    #[test]
    fn repeated_runs_add_their_values_and_spread_to_rows_json_and_table_and_one_run_adds_nothing() {
        let sim = Side::from_parts(&[("vmstat.numa_pages_migrated", 15368.0)], &[]);
        let k1 = Side::from_parts(&[("vmstat.numa_pages_migrated", 7763.0)], &[]);
        let k2 = Side::from_parts(&[("vmstat.numa_pages_migrated", 9000.0)], &[]);
        let tols = [tol("vmstat.numa_pages_migrated", 128.0, 0.05)];
        let find = |rows: &[Row]| rows.iter().find(|r| r.metric == "vmstat.numa_pages_migrated").unwrap().clone();
        let two = rows(&sim, &[k1.clone(), k2], &tols, 16640);
        let row = find(&two);
        assert_eq!(row.kernel, Cell::Value(8381.5));
        assert_eq!(row.kernel_runs, [Cell::Value(7763.0), Cell::Value(9000.0)]);
        assert_eq!(row.kernel_spread, Some(Spread { min: 7763.0, max: 9000.0 }));
        assert_eq!(row.ratio, Some(15368.0 / 8381.5));
        assert_eq!(row.verdict, Verdict::Outside);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["kernel_runs"], serde_json::json!([7763.0, 9000.0]));
        assert_eq!(json["kernel_spread"], serde_json::json!({"min": 7763.0, "max": 9000.0}));
        let text = table(&two, "6.1");
        let head = text.lines().next().unwrap();
        assert!(head.contains("6.1 mean") && head.contains("6.1 min–max (2 runs)"), "{head}");
        let line = text.lines().find(|l| l.starts_with("vmstat.numa_pages_migrated")).unwrap();
        assert!(line.contains("8381.5000") && line.contains("7763–9000") && line.contains("NO"), "{line}");

        let one = rows(&sim, &[k1], &tols, 16640);
        let json = serde_json::to_value(find(&one)).unwrap();
        assert!(json.get("kernel_runs").is_none() && json.get("kernel_spread").is_none(), "{json}");
        let head = table(&one, "6.1").lines().next().unwrap().to_string();
        assert!(!head.contains("min–max") && head.trim_end().ends_with("6.1     ratio  within tolerance"), "{head}");
    }
}
