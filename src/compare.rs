//! `numasim compare`: one scenario under several kernel versions or GUP eras (and seeds), side
//! by side, in the habit of mmtests' compare-kernels.sh: a row per metric, a column per
//! kernel, the mean and spread over seeds and the change against the first column.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plots::data::{get, mean_sd, read_summary};
use sim_core::config::{Config, GupPolicy, KernelVersion};
use workloads::catalogue;

use crate::Failure;
use crate::batch::{Job, run_all};
use crate::output::write_atomic;

pub struct Args {
    pub scenario: String,
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
}

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::Kernel(v) => v.name(),
            Column::Policy(p) => p.name(),
        }
    }

    fn apply(self, config: &mut Config) {
        match self {
            Column::Kernel(v) => {
                config.kernel.version = v;
                config.kernel.gup_policy = None;
            }
            Column::Policy(p) => config.kernel.gup_policy = Some(p),
        }
    }

    /// The command-line flag that reproduces a list of such columns.
    fn flag(columns: &[Column]) -> &'static str {
        match columns.first() {
            Some(Column::Kernel(_)) => "--kernels",
            _ => "--policies",
        }
    }
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
    write_atomic(&dir, "compare.json", json.as_bytes()).map_err(io)?;
    let table = table(&dir, &manifest).map_err(Failure::Io)?;
    print!("{table}");
    let plots = draw(&dir, &manifest).map_err(Failure::Io)?;
    let report = report(&base, &args.set, &args.columns, args.seeds, &table, &plots);
    write_atomic(&dir, "report.md", report.as_bytes()).map_err(io)?;
    println!("report: {}", dir.join("report.md").display());
    Ok(())
}

/// Redraws a comparison's plots from its manifest.
pub fn draw(dir: &Path, manifest: &Manifest) -> Result<Vec<PathBuf>, String> {
    let groups: Vec<(String, Vec<PathBuf>)> =
        manifest.groups.iter().map(|(l, runs)| (l.clone(), runs.iter().map(|r| dir.join(r)).collect())).collect();
    plots::render_comparison(dir, &groups)
}

/// The compare-kernels table.
pub fn table(dir: &Path, manifest: &Manifest) -> Result<String, String> {
    let mut columns = Vec::new();
    for (label, runs) in &manifest.groups {
        let summaries =
            runs.iter().map(|r| read_summary(&dir.join(r).join("summary.json"))).collect::<Result<Vec<_>, _>>()?;
        columns.push((label.clone(), summaries));
    }
    let Some((_, first)) = columns.first() else { return Ok(String::new()) };
    let skip = ["seed", "sim_time_ns", "events", "wall_s"];
    let metrics: Vec<String> =
        first[0].iter().map(|(k, _)| k).filter(|k| !skip.contains(&k.as_str())).cloned().collect();
    let width = metrics.iter().map(|m| m.len()).max().unwrap_or(10).max(10);
    let mut out = String::new();
    let _ = write!(out, "{:width$}", "");
    for (label, _) in &columns {
        let _ = write!(out, " {label:>32}");
    }
    out.push('\n');
    let _ = write!(out, "{:width$}", "");
    for (label, s) in &columns {
        let _ = write!(
            out,
            " {:>32}",
            format!(
                "mean ±sd of {} (vs {})",
                s.len(),
                if label == &columns[0].0 { "self" } else { columns[0].0.as_str() }
            )
        );
    }
    out.push('\n');
    for m in &metrics {
        let _ = write!(out, "{m:width$}");
        let values = |s: &[Vec<(String, f64)>]| s.iter().map(|s| get(s, m).unwrap_or(0.0)).collect::<Vec<_>>();
        let base = mean_sd(&values(&columns[0].1)).0;
        for (_, summaries) in &columns {
            let (mean, sd) = mean_sd(&values(summaries));
            let change = if base != 0.0 {
                format!("{:>+7.2}%", (mean - base) / base.abs() * 100.0)
            } else if mean == 0.0 {
                format!("{:>+7.2}%", 0.0)
            } else {
                "     new".to_string()
            };
            let _ = write!(out, " {:>14} ±{:>7} ({change})", fmt(mean), fmt(sd));
        }
        out.push('\n');
    }
    Ok(out)
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
        "## Results\n\nOne column per kernel version or GUP era; mean ± standard deviation over {seeds} seed(s), and the change against the first column.\n\n```\n{table}```\n"
    );
    let _ = writeln!(r, "## Plots\n");
    for p in plots.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        let name = p.file_name().expect("plots have names").to_string_lossy();
        let _ = writeln!(r, "![{name}]({name})\n");
    }
    r
}
