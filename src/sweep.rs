//! `numasim sweep` and `numasim merge`: parameter studies, on one machine or split into
//! shards across many (a Slurm array, say), joined again by `merge`.
//!
//! A sweep directory holds `sweep.json` (the manifest: every run's parameters and a
//! fingerprint of the whole sweep), `runs/NNNN/` (each run's config, summary and time
//! series) and `results.csv` (one row per run, built from the run folders). Because rows are
//! built from the run folders in run order, the results do not depend on `--jobs`, on the
//! shard split, or on which runs were reused from an earlier invocation.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use results::{Summary, manifest};
use serde::{Deserialize, Serialize};
use sim_core::config::{Config, ConfigError, to_toml};
use workloads::catalogue;

use crate::Failure;
use crate::batch::{Job, run_all};
use crate::output::write_atomic;

/// A sweep file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    /// A built-in scenario or a path (relative to the sweep file).
    base: String,
    /// Axes: dotted config key → the values to try. Crossed, first axis slowest.
    #[serde(default)]
    sweep: toml::Table,
    /// Fixed overrides for every run.
    #[serde(default)]
    set: toml::Table,
}

/// One run of a sweep: its index and its value on each axis.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunPoint {
    pub index: usize,
    pub values: Vec<String>,
}

/// `sweep.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub sweep: String,
    /// Hash of every run's resolved config: shards of one sweep share it.
    pub fingerprint: String,
    pub axes: Vec<String>,
    pub runs: Vec<RunPoint>,
    /// `I/N` for a shard, absent for a whole or merged sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Runs of the whole sweep (absent in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_runs: Option<usize>,
}

pub struct Args {
    pub file: PathBuf,
    pub jobs: usize,
    pub shard: Option<String>,
    pub out: Option<PathBuf>,
    pub check_invariants: bool,
}

fn input(origin: &Path, line: Option<usize>, key: &str, message: impl Into<String>) -> Failure {
    Failure::Input(
        ConfigError { origin: origin.display().to_string(), line, key: key.to_string(), message: message.into() }
            .to_string(),
    )
}

/// Parses `I/N` (1-based).
pub(crate) fn parse_shard(s: &str) -> Result<(usize, usize), Failure> {
    let bad = || Failure::Input(format!("--shard {s}: expected I/N with 1 <= I <= N, e.g. 3/16"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// A TOML value as an override string and as a label.
fn render_value(v: &toml::Value) -> (String, String) {
    let label = match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (v.to_string(), label)
}

/// A sweep expanded: its name, its axes, and every run's point and resolved config.
struct Plan {
    name: String,
    axes: Vec<String>,
    runs: Vec<(RunPoint, Config)>,
}

/// Reads and checks a sweep file and expands it to resolved configs, before any run.
fn plan(file: &Path) -> Result<Plan, Failure> {
    let text = fs::read_to_string(file).map_err(|e| input(file, None, "", format!("cannot read the file: {e}")))?;
    let sweep: SweepFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| sim_core::config::line_of(&text, s.start));
        input(file, line, "", e.message().trim())
    })?;
    let line_of = |key: &str| sim_core::config::locate_key(&text, &[key]);
    let base_arg = if catalogue::BUILTIN.iter().any(|(n, _)| *n == sweep.base) {
        sweep.base.clone()
    } else {
        file.parent().unwrap_or(Path::new(".")).join(&sweep.base).to_string_lossy().into_owned()
    };
    let fixed: Vec<String> = sweep.set.iter().map(|(k, v)| format!("{k}={}", render_value(v).0)).collect();
    catalogue::resolve(&base_arg, &fixed).map_err(|e| {
        let dotted = dotted_key(&e.key);
        match sweep.set.keys().find(|k| **k == dotted) {
            Some(key) => {
                input(file, sim_core::config::locate_key(&text, &["set", key]), &format!("set.\"{key}\""), e.message)
            }
            None => input(file, line_of("base"), "base", e.to_string()),
        }
    })?;

    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (key, values) in &sweep.sweep {
        let at = format!("sweep.\"{key}\"");
        let line = sim_core::config::locate_key(&text, &["sweep", key]);
        let toml::Value::Array(values) = values else {
            return Err(input(file, line, &at, "an axis is an array of values"));
        };
        if values.is_empty() {
            return Err(input(file, line, &at, "an axis needs at least one value"));
        }
        axes.push((key.clone(), values.clone()));
    }
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    let mut runs = Vec::with_capacity(total);
    for index in 0..total {
        let mut rest = index;
        let mut overrides = fixed.clone();
        let mut labels = Vec::new();
        // The first axis varies slowest.
        let mut picks = vec![0; axes.len()];
        for (a, (_, values)) in axes.iter().enumerate().rev() {
            picks[a] = rest % values.len();
            rest /= values.len();
        }
        for ((key, values), &pick) in axes.iter().zip(&picks) {
            let (text, label) = render_value(&values[pick]);
            overrides.push(format!("{key}={text}"));
            labels.push(label);
        }
        let config = catalogue::resolve(&base_arg, &overrides).map_err(|e| {
            let (key, line) = match axis_of(&axes, &e.key) {
                Some(key) => (format!("sweep.\"{key}\""), sim_core::config::locate_key(&text, &["sweep", key])),
                None => (e.key.clone(), None),
            };
            let point: Vec<String> = axes.iter().zip(&labels).map(|((k, _), v)| format!("{k}={v}")).collect();
            input(file, line, &key, format!("in the run with {}: {}", point.join(", "), e.message))
        })?;
        runs.push((RunPoint { index, values: labels }, config));
    }
    let name = file.file_stem().map_or("sweep".into(), |s| s.to_string_lossy().into_owned());
    Ok(Plan { name, axes: axes.into_iter().map(|(k, _)| k).collect(), runs })
}

/// An error's key as `--set` spells it: serde writes `a.b[0].c` for `a.b.0.c`.
fn dotted_key(key: &str) -> String {
    key.replace('[', ".").replace(']', "")
}

/// The axis an override error is about.
fn axis_of<'a>(axes: &'a [(String, Vec<toml::Value>)], key: &str) -> Option<&'a str> {
    let dotted = dotted_key(key);
    axes.iter().map(|(k, _)| k.as_str()).find(|k| *k == dotted)
}

/// FNV-1a over every run's resolved config: equal for every shard of one sweep.
fn fingerprint(runs: &[(RunPoint, Config)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, c) in runs {
        for b in to_toml(c).bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn run_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join("runs").join(format!("{index:04}"))
}

/// What a run folder holds.
enum Folder {
    /// Nothing: the run has not started.
    Empty,
    /// A readable summary and time series of this very config: the run need not run again.
    Complete,
    /// Something, but not a complete run of this config (the reason).
    Incomplete(String),
}

/// Looks at a run folder: a run is complete when its config is this one, its time series
/// is there and its summary parses as a summary.
fn folder_state(dir: &Path, config: &Config) -> Folder {
    if !dir.exists() {
        return Folder::Empty;
    }
    match fs::read_to_string(dir.join(results::CONFIG)) {
        Err(_) if !dir.join(results::SUMMARY).exists() => return Folder::Empty,
        Err(e) => return Folder::Incomplete(format!("{} unreadable: {e}", results::CONFIG)),
        Ok(t) if t != to_toml(config) => {
            return Folder::Incomplete(format!("{} is of another config", results::CONFIG));
        }
        Ok(_) => {}
    }
    if !dir.join(results::TIMESERIES).is_file() {
        return Folder::Incomplete(format!("{} is missing", results::TIMESERIES));
    }
    match readable_summary(dir) {
        Ok(()) => Folder::Complete,
        Err(e) => Folder::Incomplete(format!("{} unreadable: {e}", results::SUMMARY)),
    }
}

/// A summary in `dir` that parses and holds a run's fields.
fn readable_summary(dir: &Path) -> Result<(), String> {
    Summary::read(dir).map(|_| ())
}

pub fn run(args: Args) -> Result<(), Failure> {
    let Plan { name, axes, runs } = plan(&args.file)?;
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let dir = args.out.unwrap_or_else(|| {
        let base = PathBuf::from("out").join(format!("sweep-{name}"));
        match shard {
            Some((i, n)) => base.join(format!("shard-{i}-of-{n}")),
            None => base,
        }
    });
    let mine: Vec<&(RunPoint, Config)> =
        runs.iter().filter(|(p, _)| shard.is_none_or(|(i, n)| p.index % n == i - 1)).collect();
    let mut jobs: Vec<Job> = Vec::new();
    for (p, c) in &mine {
        let job = Job { dir: run_dir(&dir, p.index), config: c.clone() };
        match folder_state(&job.dir, &job.config) {
            Folder::Complete => continue,
            Folder::Incomplete(why) => {
                eprintln!("sweep {name}: {} is incomplete ({why}): running it again", job.dir.display())
            }
            Folder::Empty => {}
        }
        jobs.push(job);
    }
    let reused = mine.len() - jobs.len();
    if reused > 0 {
        eprintln!("sweep {name}: {reused} of {} runs already complete, skipped", mine.len());
    }
    run_all(&jobs, args.jobs, &format!("sweep {name}"), args.check_invariants)?;
    let manifest = Manifest {
        sweep: name,
        fingerprint: fingerprint(&runs),
        axes,
        runs: mine.iter().map(|(p, _)| p.clone()).collect(),
        shard: shard.map(|(i, n)| format!("{i}/{n}")),
        total_runs: Some(runs.len()),
    };
    finish(&dir, &manifest)?;
    println!("{} runs; results in {}", manifest.runs.len(), dir.join("results.csv").display());
    Ok(())
}

/// Writes `sweep.json`, `results.csv` and the sweep plots.
fn finish(dir: &Path, manifest: &Manifest) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(io)?;
    let json = serde_json::to_string_pretty(manifest).expect("a manifest serializes");
    write_atomic(dir, manifest::SWEEP, json.as_bytes()).map_err(io)?;
    let csv = results_csv(dir, manifest).map_err(Failure::Io)?;
    write_atomic(dir, "results.csv", csv.as_bytes()).map_err(io)?;
    plots::render_sweep(dir, &manifest.axes).map_err(Failure::Io)?;
    Ok(())
}

/// `results.csv`: `run`, the swept parameters, then every number of the run's summary.
fn results_csv(dir: &Path, manifest: &Manifest) -> Result<String, String> {
    let mut out = String::new();
    let mut header: Option<Vec<String>> = None;
    for p in &manifest.runs {
        let summary = Summary::read(&run_dir(dir, p.index))?;
        let cells: Vec<(String, String)> = summary.numbers().into_iter().map(|(k, n)| (k, n.to_string())).collect();
        if header.is_none() {
            let mut h = vec!["run".to_string()];
            h.extend(manifest.axes.iter().cloned());
            h.extend(cells.iter().map(|(k, _)| k.clone()));
            let _ = writeln!(out, "{}", h.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
            header = Some(h);
        }
        let mut row = vec![p.index.to_string()];
        row.extend(p.values.iter().cloned());
        row.extend(cells.into_iter().map(|(_, v)| v));
        let _ = writeln!(out, "{}", row.iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Reads a sweep directory's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, Failure> {
    manifest::read(dir, manifest::SWEEP, "a sweep manifest").map_err(Failure::Input)
}

/// `numasim merge`: joins shard directories of one sweep into `out`. Refuses shards of
/// different sweeps, a shard given twice, and, unless `partial`, a set that misses runs.
pub fn merge(dirs: &[PathBuf], out: &Path, partial: bool) -> Result<(), Failure> {
    let manifests = dirs.iter().map(|d| read_manifest(d)).collect::<Result<Vec<_>, _>>()?;
    let Some(first) = manifests.first() else {
        return Err(Failure::Input("merge needs at least one directory".into()));
    };
    for (i, (d, m)) in dirs.iter().zip(&manifests).enumerate() {
        if m.fingerprint != first.fingerprint || m.axes != first.axes {
            return Err(Failure::Input(format!(
                "{} is a shard of a different sweep than {} (fingerprint {} vs {})",
                d.display(),
                dirs[0].display(),
                m.fingerprint,
                first.fingerprint
            )));
        }
        let same = |e: &PathBuf| fs::canonicalize(e).ok().zip(fs::canonicalize(d).ok()).is_some_and(|(a, b)| a == b);
        if let Some(twin) = dirs[..i].iter().find(|e| same(e)) {
            return Err(Failure::Input(format!("{} is given twice (as {})", d.display(), twin.display())));
        }
        if let Some((twin, _)) = dirs[..i].iter().zip(&manifests).find(|(_, o)| o.shard.is_some() && o.shard == m.shard)
        {
            return Err(Failure::Input(format!(
                "{} and {} are the same shard ({}) of the sweep",
                twin.display(),
                d.display(),
                m.shard.as_deref().unwrap_or_default()
            )));
        }
    }
    let mut sources: Vec<(RunPoint, PathBuf)> = Vec::new();
    for (d, m) in dirs.iter().zip(&manifests) {
        for p in &m.runs {
            let readable = readable_summary(&run_dir(d, p.index)).is_ok();
            if readable && sources.iter().all(|(r, _)| r.index != p.index) {
                sources.push((p.clone(), run_dir(d, p.index)));
            }
        }
    }
    sources.sort_by_key(|(r, _)| r.index);
    let missing = missing_runs(&manifests, &sources);
    if !missing.is_empty() && !partial {
        return Err(Failure::Input(format!(
            "the shards miss {} run(s) of the sweep: {}; run the missing shards, or merge with --partial",
            missing.len(),
            list_runs(&missing)
        )));
    }
    let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", out.display()));
    for (p, from) in &sources {
        let to = run_dir(out, p.index);
        if *from != to {
            fs::create_dir_all(&to).map_err(io)?;
            for f in [results::CONFIG, results::TIMESERIES, results::SUMMARY] {
                fs::copy(from.join(f), to.join(f))
                    .map_err(|e| Failure::Io(format!("{}: {e}", from.join(f).display())))?;
            }
        }
    }
    let manifest = Manifest {
        sweep: first.sweep.clone(),
        fingerprint: first.fingerprint.clone(),
        axes: first.axes.clone(),
        runs: sources.into_iter().map(|(r, _)| r).collect(),
        shard: None,
        total_runs: first.total_runs,
    };
    finish(out, &manifest)?;
    if !missing.is_empty() {
        eprintln!("partial merge: {} run(s) missing: {}", missing.len(), list_runs(&missing));
    }
    println!("merged {} runs from {} directories into {}", manifest.runs.len(), dirs.len(), out.display());
    Ok(())
}

/// Runs of the sweep no shard holds complete: by the recorded run count or, for older
/// manifests, by the runs the shards' `I/N` slices should hold.
fn missing_runs(manifests: &[Manifest], found: &[(RunPoint, PathBuf)]) -> Vec<usize> {
    let total = manifests.iter().find_map(|m| m.total_runs);
    let expected: Vec<usize> = match total {
        Some(total) => (0..total).collect(),
        None => manifests.iter().flat_map(|m| m.runs.iter().map(|r| r.index)).collect(),
    };
    let mut missing: Vec<usize> = expected.into_iter().filter(|i| found.iter().all(|(r, _)| r.index != *i)).collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// Run indices as the run folders name them, at most ten.
fn list_runs(runs: &[usize]) -> String {
    let mut shown: Vec<String> = runs.iter().take(10).map(|i| format!("{i:04}")).collect();
    if runs.len() > 10 {
        shown.push(format!("and {} more", runs.len() - 10));
    }
    shown.join(", ")
}
