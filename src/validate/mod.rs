//! `numasim validate`: a scenario in the sim under a real kernel's rules and on that kernel
//! under QEMU (the `oracle` crate), side by side: a table per kernel in the compare-kernels
//! layout (metric | sim | kernel | ratio | within tolerance), overlaid time series,
//! report.md and validate.json. Tolerances come from the case's `[validate]` section.

mod calibrate;
mod compare;
mod fault_pace;
mod guest_sampler;
mod guest_vmas;
mod ksmd_pace;
mod migrate_pace;
mod pte_scan_cost;
mod report;
pub mod shard;
mod uffd_pace;
mod vcpu_pace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sim_core::config::{Config, KernelConfig, Source, ToleranceConfig, load};
use sim_core::sim::PAGES_PER_MIB;
use sim_core::stats::Counters;
use sim_core::stats::summary::{Span, metrics};
use workloads::validation;

use crate::Failure;
use crate::kernel_cmd::{failure, kernel_label as label};
use crate::output::write_atomic;
use calibrate::Matched;
use compare::{Row, Side};
use fault_pace::FaultPace;
use ksmd_pace::KsmdPace;
use migrate_pace::MigratePace;
use pte_scan_cost::PteScanCost;
use uffd_pace::UffdPace;
use vcpu_pace::VcpuPace;

pub struct Args {
    /// A validation case, a built-in scenario or a path; None with `all`.
    pub scenario: Option<String>,
    pub all: bool,
    pub kernels: Vec<String>,
    pub set: Vec<String>,
    pub out: Option<PathBuf>,
    /// Reuse kernel runs already in the output directory (same config, same release).
    pub reuse: bool,
    /// Also trace: the kernel's tracepoints and the sim's events, side by side.
    pub trace: bool,
    /// Kernel runs per case and kernel (at least 1).
    pub repeat: u32,
    /// How often a boot that hung or stalled is tried again.
    pub retries: u32,
    /// A second copy of report.md, headed by the host and kernels (`--report`).
    pub report: Option<PathBuf>,
    /// `I/N`: only the I-th of N interleaved slices of the (case, kernel) pairs.
    pub shard: Option<String>,
    /// False when merging shards: every kernel run must be there to reuse.
    pub boot: bool,
}

/// How each case runs.
#[derive(Clone, Copy)]
struct Flags {
    reuse: bool,
    trace: bool,
    repeat: u32,
    retries: u32,
    boot: bool,
}

/// One case on one kernel.
#[derive(Serialize)]
pub struct Outcome {
    pub kernel: String,
    pub release: String,
    /// Relative to the validation directory.
    pub dir: String,
    pub accel: String,
    pub boot_s: f64,
    /// Host seconds of the QEMU run.
    pub kernel_wall_s: f64,
    /// How busy the host was during it (None for a run recorded before the oracle measured it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<oracle::host_load::HostLoad>,
    /// The `--set` overrides that put the sim under this kernel's rules.
    pub sim_rules: Vec<String>,
    pub calibration: Vec<Matched>,
    /// ksmd's pace on the kernel and the costs the sim got from it.
    pub ksmd: Option<KsmdPace>,
    /// The device's pace while its hint faults migrate pages, and the migration cost the sim
    /// got from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultPace>,
    /// The guest's time per touch, hinting fault and page migration, which the sim got.
    pub migration: Option<MigratePace>,
    /// The vCPUs' time per migrated page, and the migration cost the sim got from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<VcpuPace>,
    /// The guest's CPU time per PTE of a change_protection() walk, which the sim got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pte_scan: Option<PteScanCost>,
    /// The guest's round trip of a sync RWP fault, and the handler latency the sim got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uffd: Option<UffdPace>,
    /// Empty VMAs the sim got for the guest process's other mappings (thread stacks, ...).
    pub guest_vmas: usize,
    pub rows: Vec<Row>,
    pub agree: bool,
    /// Why the kernel run failed (then there are no rows).
    pub error: Option<String>,
    /// Every kernel run, when the case ran more than once (`--repeat`); the fields above
    /// are the first run's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_runs: Vec<RunRecord>,
    /// Boots that failed and were tried again (the guest hung or its kernel stalled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retried: Vec<Retried>,
}

/// One of a case's repeated kernel runs.
#[derive(Serialize)]
pub struct RunRecord {
    /// Relative to the validation directory.
    pub dir: String,
    pub boot_s: f64,
    pub kernel_wall_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<oracle::host_load::HostLoad>,
    /// Taken from an earlier validation (`--reuse`).
    pub reused: bool,
}

/// A failed boot of kernel run `run` that was tried again.
#[derive(Serialize)]
pub struct Retried {
    pub run: u32,
    pub attempt: u32,
    pub reason: String,
    /// Its console, relative to the validation directory.
    pub console: String,
}

#[derive(Serialize)]
pub struct CaseResult {
    pub case: String,
    pub description: String,
    pub outcomes: Vec<Outcome>,
}

/// The manifest: every case, kernel and row.
#[derive(Serialize)]
pub struct Manifest {
    pub command: String,
    /// What ran, so that `numasim merge` can judge a sharded validation whole.
    pub request: shard::Request,
    /// `I/N` for a shard (`--shard`), absent for a whole or merged validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// (case, kernel) pairs `--all` skipped: the kernel cannot run the case.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<(String, String)>,
    pub kernels: Vec<String>,
    /// Kernel runs per case and kernel, when more than one.
    #[serde(skip_serializing_if = "is_one")]
    pub repeat: u32,
    pub wall_s: f64,
    pub cases: Vec<CaseResult>,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// What the exit status reports after every case ran.
pub enum Verdict {
    Agree,
    Disagree,
    Failed,
}

pub fn run(args: Args) -> Result<Verdict, Failure> {
    let names: Vec<String> = match (&args.scenario, args.all) {
        (Some(_), true) => return Err(Failure::Input("give a scenario or --all, not both".into())),
        (None, false) => return Err(Failure::Input("validate needs a scenario or --all".into())),
        (Some(s), false) => vec![s.clone()],
        (None, true) => validation::CASES.iter().map(|(n, _)| n.to_string()).collect(),
    };
    let configs = names.iter().map(|n| resolve_case(n, &args.set)).collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.report {
        check_report_path(file)?;
    }
    let kernels = args
        .kernels
        .iter()
        .map(|k| oracle::resolve_kernel(k).map(|spec| (k.clone(), spec)).map_err(failure))
        .collect::<Result<Vec<_>, _>>()?;
    for note in kernels.iter().filter_map(|(_, spec)| spec.rules_note()) {
        eprintln!("sim rules: {note}");
    }
    // `--all` runs each case on the kernels that can run it (a CPU-less node's case skips 6.1);
    // a case named alone is refused on such a kernel, before anything boots.
    let mut skipped = Vec::new();
    for (config, (arg, spec)) in configs.iter().flat_map(|c| kernels.iter().map(move |k| (c, k))) {
        match oracle::check_release(config, spec.release(), spec.sim_version()) {
            Err(e) if args.all => {
                eprintln!("{} on {arg}: skipped: {e}", config.name);
                skipped.push((config.name.clone(), arg.clone()));
            }
            checked => checked.map_err(failure)?,
        }
    }
    let shard = args.shard.as_deref().map(shard::Shard::parse).transpose()?;
    let root = args.out.clone().unwrap_or_else(|| {
        let whole = PathBuf::from("out").join(if args.all {
            "validate-all".to_string()
        } else {
            format!("validate-{}", configs[0].name)
        });
        shard.map_or_else(|| whole.clone(), |s| whole.join(s.dir_name()))
    });
    let start = Instant::now();
    let mut cases = Vec::new();
    for (c, (name, config)) in names.iter().zip(&configs).enumerate() {
        let case_dir = if args.all { root.join(&config.name) } else { root.clone() };
        let mut outcomes = Vec::new();
        for (k, (arg, spec)) in kernels.iter().enumerate() {
            if shard.is_some_and(|s| !s.keeps(c * kernels.len() + k))
                || skipped.contains(&(config.name.clone(), arg.clone()))
            {
                continue;
            }
            let rel = case_dir.strip_prefix(&root).unwrap_or(Path::new("")).join(label(arg));
            let flags = Flags {
                reuse: args.reuse,
                trace: args.trace,
                repeat: args.repeat,
                retries: args.retries,
                boot: args.boot,
            };
            let outcome = run_one(name, config, &args.set, arg, spec, &root, &rel, flags)?;
            print_outcome(&config.name, &outcome);
            outcomes.push(outcome);
        }
        if !outcomes.is_empty() {
            cases.push(CaseResult { case: config.name.clone(), description: config.description.clone(), outcomes });
        }
    }
    let manifest = Manifest {
        command: report::command_line(&args.scenario, args.all, &args.kernels, &args.set, args.repeat)
            + &shard.map(|s| format!(" --shard {}", s.label())).unwrap_or_default(),
        request: shard::Request {
            scenario: args.scenario.clone(),
            all: args.all,
            kernels: args.kernels.clone(),
            set: args.set.clone(),
            repeat: args.repeat,
            trace: args.trace,
        },
        shard: shard.map(|s| s.label()),
        skipped,
        kernels: args.kernels.clone(),
        repeat: args.repeat,
        wall_s: start.elapsed().as_secs_f64(),
        cases,
    };
    write_manifest(&root, &manifest)?;
    println!("report: {}", root.join("report.md").display());
    if let Some(file) = &args.report {
        write_report_file(file, &manifest)?;
        println!("report: {}", file.display());
    }
    let outcomes = || manifest.cases.iter().flat_map(|c| &c.outcomes);
    Ok(if outcomes().any(|o| o.error.is_some()) {
        Verdict::Failed
    } else if outcomes().all(|o| o.agree) {
        Verdict::Agree
    } else {
        Verdict::Disagree
    })
}

/// A case resolved and its tolerances checked, before anything boots.
fn resolve_case(name: &str, set: &[String]) -> Result<Config, Failure> {
    let config = validation::resolve(name, set)?;
    let names = sim_metric_names();
    for (i, t) in tolerances(&config).iter().enumerate() {
        if !compare::is_known(&t.metric, &names) {
            return Err(Failure::Input(format!(
                "{name}: key `validate.tolerance[{i}].metric`: no metric `{}` (a summary name such as \
                 vmstat.numa_hint_faults, final.node.<n>.used_pages, or a derived one: see docs/ORACLE.md)",
                t.metric
            )));
        }
    }
    Ok(config)
}

/// The model's summary names, a tiered run's, an RWP-registered run's and a shmem THP run's
/// included (their counters are reported on such runs only).
fn sim_metric_names() -> Vec<String> {
    let tiered = Counters { tiered: true, uffd_rwp_registered: true, file_thp_reported: true, ..Counters::default() };
    metrics(&tiered, 1, Span::Run).flatten().into_iter().map(|(n, _)| n).collect()
}

fn tolerances(config: &Config) -> &[ToleranceConfig] {
    config.validate.as_ref().map_or(&[], |v| &v.tolerance)
}

/// The kernel runs (`repeat` of them; with `--reuse`, earlier ones of the same config), then
/// the sim under that kernel's rules at the guest's touch rate (the mean over the runs), then
/// the comparison against the runs' spread. A guest failure is recorded in the outcome (the
/// other cases still run); bad input and I/O errors end the whole validation. With
/// `--trace`, `kernel/trace.txt`, `sim/trace.txt` and their `trace-diff.txt` sit beside the
/// two runs (`kernel-<i>/trace.txt` and `trace-diff-<i>.txt` for the later kernel runs).
#[allow(clippy::too_many_arguments)]
fn run_one(
    name: &str,
    config: &Config,
    set: &[String],
    arg: &str,
    spec: &oracle::KernelSpec,
    root: &Path,
    rel: &Path,
    flags: Flags,
) -> Result<Outcome, Failure> {
    let dir = root.join(rel);
    let sim_dir = dir.join("sim");
    let mut outcome = Outcome {
        kernel: arg.to_string(),
        release: spec.release().to_string(),
        dir: rel.display().to_string(),
        accel: String::new(),
        boot_s: 0.0,
        kernel_wall_s: 0.0,
        host: None,
        sim_rules: spec.sim_overrides(),
        calibration: Vec::new(),
        ksmd: None,
        faults: None,
        migration: None,
        vcpus: None,
        pte_scan: None,
        uffd: None,
        guest_vmas: 0,
        rows: Vec::new(),
        agree: false,
        error: None,
        kernel_runs: Vec::new(),
        retried: Vec::new(),
    };
    let mut facts = Vec::new();
    for run in 1..=flags.repeat {
        let kernel_dir = dir.join(kernel_run_dir(run));
        let result = kernel_side(config, arg, spec, &kernel_dir, flags)?;
        // A run that failed for good says each attempt's failure in its error.
        let retried = result.as_ref().map_or(Vec::new(), |f| f.retried.clone());
        outcome.retried.extend(retried.into_iter().map(|r| Retried {
            run,
            attempt: r.attempt,
            reason: r.reason,
            console: rel.join(kernel_run_dir(run)).join(r.console).display().to_string(),
        }));
        match result {
            Ok(f) => facts.push((kernel_dir, f)),
            Err(e) => {
                outcome.error = Some(if flags.repeat > 1 { format!("kernel run {run}: {e}") } else { e });
                return Ok(outcome);
            }
        }
    }
    let first = &facts[0].1;
    (outcome.release, outcome.accel, outcome.boot_s, outcome.kernel_wall_s, outcome.host) =
        (first.release.clone(), first.accel.clone(), first.boot_s, first.wall_s, first.host);
    if flags.repeat > 1 {
        outcome.kernel_runs = facts
            .iter()
            .map(|(d, f)| RunRecord {
                dir: d.strip_prefix(root).unwrap_or(d).display().to_string(),
                boot_s: f.boot_s,
                kernel_wall_s: f.wall_s,
                host: f.host,
                reused: f.reused,
            })
            .collect();
    }
    let io = |e: String| Failure::Io(e);
    let first_series = results::Table::read(&facts[0].0.join(results::TIMESERIES)).map_err(io)?;
    let mut kernels = vec![Side::with_series(&facts[0].0, &first_series).map_err(io)?];
    for (d, _) in &facts[1..] {
        kernels.push(Side::read(d).map_err(io)?);
    }
    let mut sim = sim_config(name, set, spec)?;
    let guests =
        facts.iter().map(|(d, _)| read_json(&d.join(results::GUEST))).collect::<Result<Vec<_>, _>>().map_err(io)?;
    outcome.guest_vmas = guest_vmas::add(&mut sim, &guests[0]);
    let mut series = vec![first_series.clone()];
    for (d, _) in &facts[1..] {
        series.push(results::Table::read(&d.join(results::TIMESERIES)).map_err(io)?);
    }
    let runs: Vec<_> = guests.iter().zip(&series).collect();
    let sampler = guest_sampler::add(&mut sim, &runs);
    match sampler {
        Some(guest_sampler::StandIn::Even { run_us }) => {
            eprintln!("validate {}: the guest's sampler runs {run_us} us every {} ms", config.name, sim.run.sample_ms)
        }
        Some(guest_sampler::StandIn::Replay { run, samples, cpu_ms, node }) => eprintln!(
            "validate {}: the guest's sampler replays kernel run {}'s {samples} samples ({cpu_ms} ms of CPU time){}",
            config.name,
            run + 1,
            node.map_or(String::new(), |n| format!(", starting on node {n} as it did"))
        ),
        None => {}
    }
    outcome.pte_scan = pte_scan_cost::measure(&guests);
    if let Some(cost) = &outcome.pte_scan {
        pte_scan_cost::apply(&mut sim, cost);
    }
    let run_rates: Vec<&BTreeMap<String, f64>> = facts.iter().map(|(_, f)| &f.touch_rates).collect();
    let mut rates = calibrate::mean_rates(&run_rates);
    outcome.migration = migrate_pace::measure(&first_series, &sim);
    if let Some(pace) = &outcome.migration {
        migrate_pace::apply(&mut sim, pace, &mut rates);
    }
    // Unless the CPU threads' fit gave the migration cost.
    let migration_fitted = outcome.migration.as_ref().is_some_and(|m| m.migration_ns.is_some());
    outcome.vcpus = (!migration_fitted).then(|| vcpu_pace::measure(&first_series, &sim)).flatten();
    if let Some(pace) = &outcome.vcpus {
        vcpu_pace::apply(&mut sim, pace);
    }
    outcome.calibration = calibrate::match_touch_rate(&mut sim, &rates);
    outcome.ksmd = ksmd_pace::measure(&first_series, &sim);
    if let Some(pace) = &outcome.ksmd {
        ksmd_pace::apply(&mut sim, pace);
    }
    // The CPU threads' fit, when there is one, gave the migration cost already.
    outcome.faults = outcome.migration.is_none().then(|| fault_pace::measure(&first_series, &sim)).flatten();
    if let Some(pace) = &outcome.faults {
        fault_pace::apply(&mut sim, pace);
    }
    // After the fault paces: the trap they calibrated comes off the measured round trip.
    outcome.uffd = uffd_pace::measure(&guests, &sim);
    if let Some(pace) = &outcome.uffd {
        uffd_pace::apply(&mut sim, pace);
    }
    let mut side = run_sim(&sim, &sim_dir)?;
    let shortfall = |m: &str| {
        let runs: Vec<compare::Cell> = kernels.iter().map(|k| k.cell(m, 0)).collect();
        match (side.cell(m, 0), compare::over_runs(&runs).0) {
            (compare::Cell::Value(s), compare::Cell::Value(k)) if k > 0.0 => Some(s / k),
            _ => None,
        }
    };
    let short = calibrate::Shortfall {
        cpu: shortfall("touches.cpu"),
        device: shortfall("touches.device"),
        kvm: shortfall("touches.kvm"),
    };
    if calibrate::refine(&mut sim, &mut outcome.calibration, short) {
        side = run_sim(&sim, &sim_dir)?;
    }
    if sampler.is_some() {
        side.leave_out_process(guest_sampler::PROCESS);
    }
    if flags.trace {
        trace_sim(&sim, spec, &sim_dir)?;
        for (run, (kernel_dir, _)) in (1..).zip(&facts) {
            let table = crate::trace::diff_table(&sim_dir.join("trace.txt"), &kernel_dir.join("trace.txt"))?;
            let file = if run == 1 { "trace-diff.txt".to_string() } else { format!("trace-diff-{run}.txt") };
            write_atomic(&dir, &file, table.as_bytes())
                .map_err(|e| Failure::Io(format!("{}: {e}", dir.join(&file).display())))?;
            print!("{table}");
        }
    }
    outcome.rows = compare::rows(&side, &kernels, tolerances(config), pages(config));
    outcome.agree = compare::agree(&outcome.rows);
    let title = format!("{}: sim vs {}", config.name, first.release);
    let mut runs = vec![("sim".to_string(), sim_dir)];
    for (run, (kernel_dir, f)) in (1..).zip(&facts) {
        let label =
            if flags.repeat > 1 { format!("kernel {} run {run}", f.release) } else { format!("kernel {}", f.release) };
        runs.push((label, kernel_dir.clone()));
    }
    plots::render_overlay(&dir, "overlay", &title, &runs).map_err(io)?;
    Ok(outcome)
}

/// Where kernel run `run` of a case lives: `kernel/` for the first (as with one run),
/// `kernel-<run>/` for the others.
fn kernel_run_dir(run: u32) -> String {
    if run == 1 { "kernel".into() } else { format!("kernel-{run}") }
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The trace options of validate: the kernels' NUMA tracepoints (and the sim's) in ftrace text.
fn trace_request(file: PathBuf, spec: &oracle::KernelSpec) -> Result<crate::trace::Request, Failure> {
    let args = crate::trace::TraceArgs {
        trace: Some(file),
        trace_events: Some("sched:*,migrate:*".into()),
        ..Default::default()
    };
    Ok(crate::trace::request(&args, spec.sim_version())?.expect("a trace file was given"))
}

/// The calibrated sim run once more, traced, into `dir/trace.txt`.
fn trace_sim(config: &Config, spec: &oracle::KernelSpec, dir: &Path) -> Result<(), Failure> {
    let req = trace_request(dir.join("trace.txt"), spec)?;
    let mut sim = workloads::build(config);
    sim.enable_trace(req.options.clone());
    let out = sim.run().map_err(|e| Failure::Sim(format!("{}: {e}", dir.display())))?;
    crate::trace::write(&req, out.trace.as_ref().expect("tracing was on")).map(|_| ())
}

fn run_sim(config: &Config, dir: &Path) -> Result<Side, Failure> {
    let job = crate::batch::Job { dir: dir.to_path_buf(), config: config.clone() };
    crate::batch::run_one(&job, false)?;
    Side::read(dir).map_err(Failure::Io)
}

/// What validate needs of a kernel run.
struct KernelFacts {
    release: String,
    accel: String,
    boot_s: f64,
    wall_s: f64,
    host: Option<oracle::host_load::HostLoad>,
    touch_rates: BTreeMap<String, f64>,
    /// Failed boots before this run (the oracle's retries).
    retried: Vec<oracle::Retry>,
    /// Taken from an earlier validation.
    reused: bool,
}

/// Boots the kernel, or reuses `dir` when asked to and it holds a complete run of exactly
/// this config. The inner error is a guest failure (console tail included).
fn kernel_side(
    config: &Config,
    arg: &str,
    spec: &oracle::KernelSpec,
    dir: &Path,
    flags: Flags,
) -> Result<Result<KernelFacts, String>, Failure> {
    let traced = !flags.trace || dir.join("trace.txt").is_file();
    if flags.reuse
        && traced
        && let Some(facts) = earlier_run(config, spec, dir)?
    {
        eprintln!("validate {}: reusing the {} run in {}", config.name, arg, dir.display());
        return Ok(Ok(facts));
    }
    if !flags.boot {
        return Err(Failure::Input(format!(
            "{}: no kernel run of {} on {arg} to reuse (merge the shard that ran it, or run it)",
            dir.display(),
            config.name
        )));
    }
    eprintln!("validate {}: booting {} ({}) into {}", config.name, arg, spec.release(), dir.display());
    // An earlier run's trace must not pass for this one's.
    for stale in ["trace.txt", "trace-formats.txt"] {
        match std::fs::remove_file(dir.join(stale)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Failure::Io(format!("{}: {e}", dir.join(stale).display())));
            }
            _ => {}
        }
    }
    let req = if flags.trace { Some(trace_request(dir.join("trace.txt"), spec)?) } else { None };
    let plan = req.as_ref().map(|r| crate::trace::tracefs_plan(r, config)).transpose()?;
    match oracle::run_traced(config, spec, dir, plan, flags.retries) {
        Ok(run) => {
            if let (Some(req), Some(t)) = (&req, &run.trace) {
                crate::trace::write_kernel_run(req, t, config, &run)?;
            }
            Ok(Ok(KernelFacts {
                release: run.release,
                accel: run.accel.name().to_string(),
                boot_s: run.boot_s,
                wall_s: run.wall_s,
                host: Some(run.host),
                touch_rates: run.touch_rates,
                retried: run.retried,
                reused: false,
            }))
        }
        Err(oracle::OracleError::Guest { message, console_tail }) => Ok(Err(format!("{message}\n{console_tail}"))),
        Err(e) => Err(failure(e)),
    }
}

/// A finished run of the same config on the same kernel release, from its guest.json. A run
/// whose result files changed since it wrote them is bad input; one from before the
/// checksums were written boots again.
fn earlier_run(config: &Config, spec: &oracle::KernelSpec, dir: &Path) -> Result<Option<KernelFacts>, Failure> {
    if !dir.join(results::SUMMARY).is_file() {
        return Ok(None);
    }
    match oracle::checksums::verify(dir) {
        Ok(true) => Ok(same_run(config, spec, dir)),
        Ok(false) => {
            eprintln!("validate: {} has no {}: booting again", dir.display(), results::CHECKSUMS);
            Ok(None)
        }
        Err(e) => Err(Failure::Input(format!(
            "--reuse: {e}: delete {} (validate boots it again) or run without --reuse",
            dir.display()
        ))),
    }
}

fn same_run(config: &Config, spec: &oracle::KernelSpec, dir: &Path) -> Option<KernelFacts> {
    // Parsed, so that a run written before a key was added (with its default) still counts;
    // tolerances are not part of what ran, nor is the model's kernel.version (the release
    // booted, compared below, is).
    let text = std::fs::read_to_string(dir.join(results::CONFIG)).ok()?;
    let earlier = load(&Source { origin: dir.display().to_string(), text }, &[]).ok()?;
    let what_ran =
        |c: Config| Config { validate: None, kernel: KernelConfig { version: config.kernel.version, ..c.kernel }, ..c };
    let same = what_ran(earlier) == what_ran(config.clone());
    let guest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(results::GUEST)).ok()?).ok()?;
    let release = guest["release"].as_str()?.to_string();
    if !same || release != spec.release() || !dir.join(results::SUMMARY).is_file() {
        return None;
    }
    Some(KernelFacts {
        release,
        accel: guest["accel"].as_str().unwrap_or_default().to_string(),
        boot_s: guest["boot_s"].as_f64().unwrap_or(f64::NAN),
        wall_s: guest["qemu_wall_s"].as_f64().unwrap_or(f64::NAN),
        host: serde_json::from_value(guest["host_load"].clone()).ok(),
        touch_rates: serde_json::from_value(guest["touch_rate_per_s"].clone()).ok()?,
        retried: serde_json::from_value(guest["retried"].clone()).unwrap_or_default(),
        reused: true,
    })
}

/// The case under the kernel's rules: the oracle's `sim_overrides()` (its mapping of a
/// kernel's source to the model's era, kept there in one place) after the user's `--set`.
fn sim_config(name: &str, set: &[String], spec: &oracle::KernelSpec) -> Result<Config, Failure> {
    let mut overrides = set.to_vec();
    overrides.extend(spec.sim_overrides());
    Ok(validation::resolve(name, &overrides)?)
}

/// Pages of the scenario's memory, the unit of a scan pass.
fn pages(config: &Config) -> u64 {
    let vmas: u64 = config.process.iter().flat_map(|p| &p.vma).map(|v| v.size_mib).sum();
    let vms: u64 = config.vm.iter().map(|v| v.memory_mib).sum();
    (vmas + vms) * PAGES_PER_MIB
}

fn print_outcome(case: &str, o: &Outcome) {
    match &o.error {
        Some(e) => println!("\n{case} on {} ({}): the kernel run failed:\n{e}", o.kernel, o.release),
        None => {
            println!("\n{case} on {} ({}, {}):", o.kernel, o.release, if o.agree { "agrees" } else { "DISAGREES" });
            print!("{}", compare::table(&o.rows, &label(&o.kernel)));
        }
    }
}

fn write_manifest(root: &Path, manifest: &Manifest) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", root.display()));
    std::fs::create_dir_all(root).map_err(io)?;
    let json = serde_json::to_string_pretty(manifest).expect("a manifest serializes");
    write_atomic(root, results::manifest::VALIDATE, (json + "\n").as_bytes()).map_err(io)?;
    write_atomic(root, "report.md", report::markdown(manifest).as_bytes()).map_err(io)
}

/// `--report FILE`: its directory and file name, refused before anything runs when unusable.
fn check_report_path(file: &Path) -> Result<(&Path, String), Failure> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match file.file_name() {
        Some(name) if dir.is_dir() => Ok((dir, name.to_string_lossy().into_owned())),
        _ => Err(Failure::Input(format!("--report {}: not a file in an existing directory", file.display()))),
    }
}

fn write_report_file(file: &Path, manifest: &Manifest) -> Result<(), Failure> {
    let (dir, name) = check_report_path(file)?;
    let text = report::with_header(manifest, &report::Host::this_machine());
    write_atomic(dir, &name, text.as_bytes()).map_err(|e| Failure::Io(format!("{}: {e}", file.display())))
}

/// A kernel time series of 100 ms rows for `block`'s threads, as the oracle writes one:
/// `rows[r][thread][f]` is `fields[f]` of thread `thread` in row `r`, in the column
/// `kernel.task.<block>/<thread>.<field>`, the fields' columns one after the other.
#[cfg(test)]
fn thread_series<const F: usize, const T: usize>(
    block: &str,
    fields: [&str; F],
    rows: &[[[f64; F]; T]],
) -> results::Table {
    let mut header = vec!["time_ms".to_string()];
    for k in fields {
        header.extend((0..T).map(|i| format!("kernel.task.{block}/{i}.{k}")));
    }
    let rows = rows
        .iter()
        .enumerate()
        .map(|(r, ts)| {
            let mut row = vec![format!("{}", (r + 1) * 100)];
            for f in 0..F {
                row.extend(ts.iter().map(|t| t[f].to_string()));
            }
            row
        })
        .collect();
    results::Table { header, rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sim runs of one case: the same seed agrees everywhere, bit for bit; a model
    /// change shows up as a disagreement in the judged rows.
    #[test]
    fn sim_against_sim_agrees_with_itself_and_a_different_gup_rule_disagrees() {
        let root = std::env::temp_dir().join(format!("numasim-validate-{}", std::process::id()));
        let run_into = |name: &str, set: &[String]| {
            let config = validation::resolve("gup-process-vm-readv", set).unwrap();
            let dir = root.join(name);
            crate::output::write_run(&dir, &config, &workloads::build(&config).run().unwrap()).unwrap();
            Side::read(&dir).unwrap()
        };
        let config = resolve_case("gup-process-vm-readv", &[]).unwrap();
        let old = run_into("old", &["kernel.gup_policy=implicit-all".to_string()]);
        let again = run_into("again", &["kernel.gup_policy=implicit-all".to_string()]);
        let new = run_into("new", &["kernel.gup_policy=explicit".to_string()]);
        let same = compare::rows(&old, &[again], tolerances(&config), pages(&config));
        assert!(compare::agree(&same));
        assert!(same.iter().all(|r| r.ratio == Some(1.0)), "{}", compare::table(&same, "again"));
        let judged = same.iter().filter(|r| r.verdict == compare::Verdict::Within).count();
        assert_eq!(judged, tolerances(&config).len());
        let differ = compare::rows(&new, &[old], tolerances(&config), pages(&config));
        assert!(!compare::agree(&differ), "{}", compare::table(&differ, "old"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tolerance_on_an_unknown_metric_is_bad_input_naming_the_key() {
        let Err(Failure::Input(m)) =
            resolve_case("numa02", &["validate.tolerance.0.metric=vmstat.numa_hint_fault".to_string()])
        else {
            panic!("accepted");
        };
        assert!(m.contains("validate.tolerance[0].metric") && m.contains("vmstat.numa_hint_fault"), "{m}");
    }

    #[test]
    fn scan_passes_count_the_scenarios_memory() {
        let c = resolve_case("gup-cpu-read-remote", &[]).unwrap();
        assert_eq!(pages(&c), 17 * 256);
    }

    /// Every case resolves with its tolerances known, the load balancer's rows included.
    #[test]
    fn every_case_resolves_with_known_metrics() {
        for (name, _) in validation::CASES {
            resolve_case(name, &[]).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    /// The kernel's task moves, as 6.1's and 6.12's sched_migrate_task prints them
    /// (include/trace/events/sched.h), count in a trace's tallies like the sim's events.
    #[test]
    fn the_kernels_task_moves_count_from_its_trace() {
        let line = |pid: u32, from: u32, to: u32| {
            format!(
                "  overload-{pid}  [00{to}] d..2.  12.34567{pid}: sched_migrate_task: comm=overload pid={pid} \
                 prio=120 orig_cpu={from} dest_cpu={to}"
            )
        };
        let text = format!("# tracer: nop\n{}\n{}\n", line(7, 0, 2), line(8, 1, 3));
        let c = sim_core::trace::parse::count_events(&text);
        assert_eq!((c.events["sched_migrate_task"], c.unparsed), (2, 0));
        assert_eq!(c.keys["sched_migrate_task"], ["comm", "pid", "prio", "orig_cpu", "dest_cpu"]);
    }
}
