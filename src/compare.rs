//! `numasim compare`: one scenario under several kernel versions, GUP eras or NUMA balancing
//! remedies (and seeds), side by side, in the habit of mmtests' compare-kernels.sh: a row per metric, a column per
//! kernel, the mean and spread over seeds and the change against the first column.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plots::data::{get, mean_sd};
use results::Summary;
use sim_core::config::{Config, GupPolicy, KernelVersion, NumaBalancing};
use workloads::catalogue;

use crate::Failure;
use crate::batch::{Job, run_all};
use crate::output::write_atomic;

pub struct Args {
    pub scenario: String,
    /// Keep the rows that are 0 in every run.
    pub show_zero: bool,
    pub set: Vec<String>,
    pub columns: Vec<Column>,
    pub seeds: u32,
    pub jobs: usize,
    pub out: Option<PathBuf>,
    pub check_invariants: bool,
}

/// What one column of the comparison varies.
#[derive(Clone, Copy, Debug)]
pub enum Column {
    /// Every rule of a kernel version (`kernel.version`, no GUP override).
    Kernel(KernelVersion),
    /// The scenario's kernel with the GUP era of another (`kernel.gup_policy`).
    Policy(GupPolicy),
    /// The scenario's kernel with NUMA balancing off, on, or on with one remedy.
    Remedy(Remedy),
}

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::Kernel(v) => v.name(),
            Column::Policy(p) => p.name(),
            Column::Remedy(r) => r.name(),
        }
    }

    fn apply(self, config: &mut Config) {
        match self {
            Column::Kernel(v) => {
                config.kernel.version = v;
                config.kernel.gup_policy = None;
            }
            Column::Policy(p) => config.kernel.gup_policy = Some(p),
            Column::Remedy(r) => r.apply(config),
        }
    }

    /// The command-line flag that reproduces a list of such columns.
    fn flag(columns: &[Column]) -> &'static str {
        match columns.first() {
            Some(Column::Kernel(_)) => "--kernels",
            Some(Column::Remedy(_)) => "--remedies",
            _ => "--policies",
        }
    }
}

/// What a `--remedies` column runs: NUMA balancing off, on as the scenario has it, or on
/// with one of the `[kernel]` what-if knobs that spare secondary MMUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    Off,
    On,
    /// `kernel.prot_numa_skip_pinned`.
    SkipPinned,
    /// `kernel.mmu_notifier_range_numa`.
    RangeNuma,
    /// `kernel.no_numa_balancing_vmas`: every VMA a vm's EPT or a device maps.
    VmaOptOut,
    /// `kernel.no_numa_balancing_processes`: every vm, and every process a device maps.
    ProcessOptOut,
}

impl Remedy {
    pub const ALL: [Remedy; 6] =
        [Remedy::Off, Remedy::On, Remedy::SkipPinned, Remedy::RangeNuma, Remedy::VmaOptOut, Remedy::ProcessOptOut];

    pub fn name(self) -> &'static str {
        match self {
            Remedy::Off => "off",
            Remedy::On => "on",
            Remedy::SkipPinned => "skip-pinned",
            Remedy::RangeNuma => "range-numa",
            Remedy::VmaOptOut => "vma-opt-out",
            Remedy::ProcessOptOut => "process-opt-out",
        }
    }

    fn apply(self, config: &mut Config) {
        let k = &mut config.kernel;
        if self == Remedy::Off {
            k.numa_balancing = NumaBalancing::DISABLED;
        } else if !k.numa_balancing.enabled() {
            k.numa_balancing = NumaBalancing::NORMAL;
        }
        let mapped = config.vm.iter().map(|vm| (vm.name.clone(), "ram".to_string()));
        let mapped: Vec<(String, String)> =
            mapped.chain(config.device.iter().map(|d| (d.process.clone(), d.vma.clone()))).collect();
        match self {
            Remedy::Off | Remedy::On => {}
            Remedy::SkipPinned => k.prot_numa_skip_pinned = true,
            Remedy::RangeNuma => k.mmu_notifier_range_numa = true,
            Remedy::VmaOptOut => k.no_numa_balancing_vmas = unique(mapped.iter().map(|(p, v)| format!("{p}/{v}"))),
            Remedy::ProcessOptOut => k.no_numa_balancing_processes = unique(mapped.into_iter().map(|(p, _)| p)),
        }
    }
}

/// `names` without repeats, in first-seen order.
fn unique(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The manifest `numasim plot` reads to redraw a comparison.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub scenario: String,
    /// Policy → run directories (relative to the comparison directory).
    pub groups: Vec<(String, Vec<String>)>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let base = catalogue::resolve(&args.scenario, &args.set)?;
    if args.seeds == 0 {
        return Err(Failure::Input("--seeds must be at least 1".into()));
    }
    let dir = args.out.unwrap_or_else(|| PathBuf::from("out").join(format!("compare-{}", base.name)));
    let mut jobs = Vec::new();
    let mut groups = Vec::new();
    for &column in &args.columns {
        let mut runs = Vec::new();
        for i in 0..u64::from(args.seeds) {
            let mut config: Config = base.clone();
            column.apply(&mut config);
            refuse_invalid_column(&config, column, &args.columns)?;
            config.run.seed = base.run.seed + i;
            let rel = format!("{}/seed-{}", column.name(), config.run.seed);
            jobs.push(Job { dir: dir.join(&rel), config });
            runs.push(rel);
        }
        groups.push((column.name().to_string(), runs));
    }
    run_all(&jobs, args.jobs, &format!("compare {}", base.name), args.check_invariants)?;
    let manifest = Manifest { scenario: base.name.clone(), groups };
    let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", dir.display()));
    let json = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    write_atomic(&dir, results::manifest::COMPARE, json.as_bytes()).map_err(io)?;
    let table = table(&dir, &manifest, args.show_zero).map_err(Failure::Io)?;
    print!("{table}");
    let plots = draw(&dir, &manifest).map_err(Failure::Io)?;
    let report = report(&base, &args.set, &args.columns, args.seeds, &table, &plots);
    write_atomic(&dir, "report.md", report.as_bytes()).map_err(io)?;
    println!("report: {}", dir.join("report.md").display());
    Ok(())
}

/// A column can give the scenario a kernel it cannot run on (a 7.3-only userfaultfd RWP
/// tracker under `--kernels 6.12`): refuse it as `check` would, naming the column.
fn refuse_invalid_column(config: &Config, column: Column, columns: &[Column]) -> Result<(), Failure> {
    sim_core::config::validate(config).map_err(|(key, message)| {
        Failure::Input(format!("{} {}: {key}: {message}", Column::flag(columns), column.name()))
    })
}

/// Redraws a comparison's plots from its manifest.
pub fn draw(dir: &Path, manifest: &Manifest) -> Result<Vec<PathBuf>, String> {
    let groups: Vec<(String, Vec<PathBuf>)> =
        manifest.groups.iter().map(|(l, runs)| (l.clone(), runs.iter().map(|r| dir.join(r)).collect())).collect();
    plots::render_comparison(dir, &groups)
}

/// The compare-kernels table of a comparison's runs (see [`format_table`]).
pub fn table(dir: &Path, manifest: &Manifest, show_zero: bool) -> Result<String, String> {
    let mut columns = Vec::new();
    for (label, runs) in &manifest.groups {
        let summaries =
            runs.iter().map(|r| Summary::read(&dir.join(r)).map(|s| s.values())).collect::<Result<_, _>>()?;
        columns.push((label.clone(), summaries));
    }
    Ok(format_table(&columns, show_zero))
}

/// One column: its label and the summaries of its seeds.
type Runs = (String, Vec<Vec<(String, f64)>>);

/// Seeds from which a change outside both columns' spread is marked [`SIGNIFICANT`].
const MARK_FROM_SEEDS: usize = 3;
/// The marker of a change larger than the sum of both columns' standard deviations.
const SIGNIFICANT: char = '*';

/// A row per metric, a column per kernel or GUP era: the mean over seeds, `±sd` (sample
/// standard deviation) when there are two seeds or more, and the change against the first
/// column. With [`MARK_FROM_SEEDS`] seeds or more a change is marked [`SIGNIFICANT`] when
/// |mean - first mean| > sd + first sd (compare-kernels marks such rows; this is its
/// spread rule, not a statistical test). Rows that are 0 in every run are left out unless
/// `show_zero`; a last line says how many.
pub fn format_table(columns: &[Runs], show_zero: bool) -> String {
    let Some((base_label, first)) = columns.first() else { return String::new() };
    let Some(first_run) = first.first() else { return String::new() };
    let skip = ["seed", "sim_time_ns", "events", "wall_s"];
    let metrics: Vec<&String> = first_run.iter().map(|(k, _)| k).filter(|k| !skip.contains(&k.as_str())).collect();
    let values =
        |runs: &[Vec<(String, f64)>], m: &str| runs.iter().map(|s| get(s, m).unwrap_or(0.0)).collect::<Vec<_>>();
    let all_zero = |m: &str| columns.iter().all(|(_, runs)| values(runs, m).iter().all(|v| *v == 0.0));
    let (shown, hidden): (Vec<&String>, Vec<&String>) = metrics.iter().partition(|m| show_zero || !all_zero(m));
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let header: Vec<String> = columns.iter().map(|(label, _)| label.clone()).collect();
    let sub: Vec<String> = columns
        .iter()
        .map(|(label, runs)| {
            let vs = if label == base_label { "self" } else { base_label.as_str() };
            let stat = if runs.len() > 1 { "mean ±sd" } else { "value" };
            format!("{stat} of {} (vs {vs})", runs.len())
        })
        .collect();
    for m in &shown {
        let base = mean_sd(&values(first, m));
        let cells = columns.iter().map(|(_, runs)| cell(base, mean_sd(&values(runs, m)), runs.len())).collect();
        rows.push((m.to_string(), cells));
    }
    let name_width = metrics.iter().map(|m| m.len()).max().unwrap_or(10).max(10);
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| rows.iter().map(|(_, cells)| cells[c].len()).chain([header[c].len(), sub[c].len()]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (name, cells) in [(String::new(), header), (String::new(), sub)].into_iter().chain(rows) {
        let _ = write!(out, "{name:name_width$}");
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(out, " {cell:>w$}");
        }
        out.push('\n');
    }
    if !hidden.is_empty() {
        let _ = writeln!(out, "({} rows that are 0 in every run not shown: --show-zero shows them)", hidden.len());
    }
    out
}

/// `mean ±sd (change)` against the first column's `(mean, sd)`; no `±sd` from one seed.
fn cell(base: (f64, f64), (mean, sd): (f64, f64), seeds: usize) -> String {
    let change = if base.0 != 0.0 {
        format!("{:>+7.2}%", (mean - base.0) / base.0.abs() * 100.0)
    } else if mean == 0.0 {
        format!("{:>+7.2}%", 0.0)
    } else {
        "     new".to_string()
    };
    // The marker's place is kept blank in unmarked cells only where a mark can appear.
    let mark = if seeds < MARK_FROM_SEEDS {
        String::new()
    } else if (mean - base.0).abs() > sd + base.1 {
        SIGNIFICANT.to_string()
    } else {
        " ".to_string()
    };
    if seeds > 1 {
        format!("{:>14} ±{:>7} ({change}){mark}", fmt(mean), fmt(sd))
    } else {
        format!("{:>14} ({change}){mark}", fmt(mean))
    }
}

fn fmt(v: f64) -> String {
    if v.abs() < 10.0 && v.fract() != 0.0 { format!("{v:.4}") } else { format!("{v:.2}") }
}

fn report(base: &Config, set: &[String], columns: &[Column], seeds: u32, table: &str, plots: &[PathBuf]) -> String {
    let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
    let mut r = format!("# numasim compare: {}\n\n{}\n\n", base.name, base.description);
    let sets: String = set.iter().map(|s| format!(" --set {s}")).collect();
    let _ = writeln!(
        r,
        "Reproduce with `numasim compare {}{sets} {} {} --seeds {seeds}`.\n",
        base.name,
        Column::flag(columns),
        names.join(",")
    );
    let guide = catalogue::guide(&base.name);
    if !guide.is_empty() {
        let _ = writeln!(r, "## What to look at\n\n{guide}\n");
    }
    let _ = writeln!(
        r,
        "## Results\n\nOne column per kernel version, GUP era or remedy; the mean over {seeds} seed(s) (± sample standard deviation from 2 seeds), and the change against the first column; from {MARK_FROM_SEEDS} seeds `{SIGNIFICANT}` marks a change larger than both columns' standard deviations added.\n\n```\n{table}```\n"
    );
    let _ = writeln!(r, "## Plots\n");
    for p in plots.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        let name = p.file_name().expect("plots have names").to_string_lossy();
        let _ = writeln!(r, "![{name}]({name})\n");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A column `label` whose seeds have `faults` (one value per seed) and a `zero` metric.
    fn column(label: &str, faults: &[f64]) -> Runs {
        let runs = faults.iter().map(|&f| vec![("faults".to_string(), f), ("zero".to_string(), 0.0)]).collect();
        (label.to_string(), runs)
    }

    fn row<'a>(table: &'a str, metric: &str) -> Option<&'a str> {
        table.lines().find(|l| l.split_whitespace().next() == Some(metric))
    }

    #[test]
    fn rows_that_are_zero_everywhere_are_hidden_unless_asked_for() {
        let cols = [column("a", &[1.0, 2.0]), column("b", &[3.0, 4.0])];
        let hidden = format_table(&cols, false);
        assert!(row(&hidden, "zero").is_none() && row(&hidden, "faults").is_some(), "{hidden}");
        assert!(hidden.contains("1 rows that are 0 in every run not shown"), "{hidden}");
        let shown = format_table(&cols, true);
        assert!(row(&shown, "zero").is_some() && !shown.contains("not shown"), "{shown}");
        // Zero in one column only is a row.
        let partly = format_table(&[column("a", &[0.0]), column("b", &[5.0])], false);
        assert!(row(&partly, "faults").unwrap().contains("new"), "{partly}");
    }

    #[test]
    fn one_seed_has_no_spread_column() {
        let one = format_table(&[column("a", &[10.0]), column("b", &[15.0])], false);
        assert!(!one.contains('±') && one.contains("value of 1"), "{one}");
        assert!(row(&one, "faults").unwrap().contains("+50.00%"), "{one}");
        let two = format_table(&[column("a", &[10.0, 12.0]), column("b", &[15.0, 17.0])], false);
        assert!(row(&two, "faults").unwrap().contains('±') && two.contains("mean ±sd of 2"), "{two}");
    }

    /// a: mean 10, sd 1; b: mean 13, sd 1 (3 > 1 + 1: marked); c: mean 11.5, sd 1 (1.5 is not).
    #[test]
    fn from_three_seeds_a_change_outside_both_spreads_is_marked() {
        let cols =
            [column("a", &[9.0, 10.0, 11.0]), column("b", &[12.0, 13.0, 14.0]), column("c", &[10.5, 11.5, 12.5])];
        let t = format_table(&cols, false);
        let cells: Vec<&str> = row(&t, "faults").unwrap().split(')').collect();
        assert!(!cells[0].ends_with('*') && !cells[1].starts_with('*'), "the first column is never marked: {t}");
        assert!(cells[2].starts_with('*'), "b is marked: {t}");
        assert!(!cells[3].starts_with('*'), "c is within the spread: {t}");
        // The same means from two seeds are never marked.
        let two = format_table(&[column("a", &[9.0, 11.0]), column("b", &[13.0, 13.0])], false);
        assert!(!two.contains('*'), "{two}");
    }
}
