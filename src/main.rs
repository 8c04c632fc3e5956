//! numasim: the command-line front end. The simulator lives in `sim-core`, the scenarios in
//! `workloads`, the charts in `plots`; this binary parses arguments, runs, and writes files.

mod batch;
mod bench;
mod compare;
mod kernel_cmd;
mod output;
mod sweep;
mod trace;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use results::manifest;
use sim_core::config::{ConfigError, GupPolicy, KernelVersion, to_toml};
use workloads::catalogue;

#[derive(Parser)]
#[command(name = "numasim", version, about = "Deterministic simulator of NUMA balancing and GUP policies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario and write its summary, time series and resolved config.
    Run {
        /// A built-in scenario, a validation case (configs/validate) or a path to a .toml file.
        #[arg(default_value = "default")]
        scenario: String,
        /// Override a config key, e.g. --set kernel.gup_policy=explicit (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output directory (default: out/<scenario>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        trace: trace::TraceArgs,
        /// Check the model's invariants after every event (slow; stops at the first broken one).
        #[arg(long)]
        check_invariants: bool,
    },
    /// Run a scenario under each GUP era, kernel version or NUMA balancing remedy (and several seeds); print
    /// the table, write plots and report.md.
    Compare {
        #[arg(default_value = "default")]
        scenario: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// GUP eras to compare on the scenario's kernel, in column order.
        #[arg(long, value_delimiter = ',', default_value = "implicit,implicit-all,implicit-force,explicit", value_parser = parse_policy)]
        policies: Vec<GupPolicy>,
        /// Kernel versions to compare instead, one column each (e.g. 6.1,6.4,6.5,6.12).
        #[arg(long, value_delimiter = ',', value_parser = parse_version, conflicts_with = "policies")]
        kernels: Vec<KernelVersion>,
        /// NUMA balancing remedies to compare instead, one column each: off, on, skip-pinned,
        /// range-numa, vma-opt-out, process-opt-out.
        #[arg(long, value_delimiter = ',', value_parser = parse_remedy, conflicts_with_all = ["policies", "kernels"])]
        remedies: Vec<compare::Remedy>,
        /// Seeds per policy (run.seed, run.seed + 1, ...).
        #[arg(long, default_value_t = 1)]
        seeds: u32,
        /// Runs in parallel (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Output directory (default: out/compare-<scenario>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the model's invariants after every event of every run.
        #[arg(long)]
        check_invariants: bool,
        /// Also show the metrics that are 0 in every run (hidden by default).
        #[arg(long)]
        show_zero: bool,
    },
    /// Run a parameter sweep (all of it, or one shard).
    Sweep {
        file: PathBuf,
        #[arg(long)]
        jobs: Option<usize>,
        /// Run only the I-th of N interleaved slices, e.g. --shard 3/16.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Output directory (default: out/sweep-<name>, or .../shard-I-of-N).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Check the model's invariants after every event of every run.
        #[arg(long)]
        check_invariants: bool,
    },
    /// Join the shard directories of one sweep, or of one validation (`validate --shard`).
    Merge {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Merge even if runs of the sweep are missing (they are listed).
        #[arg(long)]
        partial: bool,
    },
    /// Run a scenario on a real Linux kernel under QEMU (Debian's 6.1, 6.12, 6.18, 7.3, ..., or a bzImage)
    /// and write the same result files as `run`.
    Kernel {
        /// A built-in scenario, a validation case (configs/validate) or a path to a .toml file.
        scenario: String,
        /// `6.1`, `6.12`, a series or release of Debian's trixie-backports and sid (`6.18`, `7.3`,
        /// `7.2.13`) or the path of a bzImage.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output directory (default: out/<scenario>-kernel-<kernel>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The kernel tracepoints of the trace options, recorded through tracefs in the guest.
        #[command(flatten)]
        trace: trace::TraceArgs,
        /// Boot again this many times when the guest hangs (timeout) or its console shows a
        /// kernel panic, an RCU stall or a soft lockup.
        #[arg(long, default_value_t = oracle::DEFAULT_RETRIES)]
        retries: u32,
    },
    /// Run a scenario in the sim under a real kernel's rules and on that kernel (QEMU), and
    /// compare: a table per kernel, overlaid plots, report.md. Exit status 3: a disagreement.
    Validate {
        /// A validation case (configs/validate), a built-in scenario or a .toml path.
        scenario: Option<String>,
        /// Every case of the validation catalogue.
        #[arg(long, conflicts_with = "scenario")]
        all: bool,
        /// Kernels: 6.1, 6.12 (Debian 12's images) or a bzImage path, comma-separated.
        #[arg(long = "kernel", value_delimiter = ',', default_value = "6.1,6.12")]
        kernels: Vec<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output directory (default: out/validate-<scenario>, or out/validate-all).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Reuse the kernel runs already in the output directory when their config and
        /// release match (re-check the sim after a model change without booting).
        #[arg(long)]
        reuse: bool,
        /// Also record the kernels' sched and migrate NUMA tracepoints and the sim's:
        /// `kernel/trace.txt`, `sim/trace.txt` and their `trace-diff.txt` per kernel.
        #[arg(long)]
        trace: bool,
        /// Boot each case this many times per kernel (`kernel/`, `kernel-2/`, ...) and judge
        /// the sim against the runs' min–max widened by each tolerance.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Boot again this many times when the guest hangs (timeout) or its console shows a
        /// kernel panic, an RCU stall or a soft lockup.
        #[arg(long, default_value_t = oracle::DEFAULT_RETRIES)]
        retries: u32,
        /// Also write the report to FILE, headed by the date, the host (CPU model, cores), the
        /// accelerator and the kernel releases (e.g. docs/VALIDATION.md).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Run only the I-th of N interleaved slices of the (case, kernel) pairs, e.g.
        /// --shard 3/16, into out/validate-all/shard-I-of-N; `numasim merge` joins them.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// Draw the plots of a run, a comparison or a sweep again from its result files.
    Plot { dir: PathBuf },
    /// Validate a scenario and print the resolved config.
    Check {
        scenario: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List the built-in scenarios.
    Scenarios,
    /// Compare two ftrace text traces (numasim's or a real kernel's): events per kind.
    TraceDiff { a: PathBuf, b: PathBuf },
    /// Class each CPU change (`sched_migrate_task`) of the threads whose comm starts with
    /// PREFIX by what the thread was doing: waiting behind another task, running, waking,
    /// or NUMA placement. Reads an ftrace text trace with sched_switch, numasim's
    /// (`run --trace-events 'sched:*,sched:sched_switch'`) or a kernel's.
    TraceMoves {
        trace: PathBuf,
        /// The threads to class, by comm prefix (e.g. `numa02/`).
        #[arg(long)]
        comm: String,
    },
    /// Draw a per-CPU timeline (PNG and SVG) of a Chrome JSON trace: what Perfetto's CPU
    /// tracks show, without the UI.
    TraceTimeline {
        trace: PathBuf,
        /// Output path without extension (default: the trace's, with `-timeline`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure simulator speed and memory at machine scales, beside a raw-loop ceiling.
    Bench {
        /// Machine scales to time, in order (small: 2 nodes x 32 GiB; large: 8 nodes x 32
        /// CPUs x 64 GiB with a 256 GiB buffer; big-vm: the `big-vm` scenario, 1470 GiB).
        #[arg(long, value_delimiter = ',', default_value = "small")]
        scale: Vec<bench::Scale>,
        /// Also time each scale with THP always.
        #[arg(long)]
        thp: bool,
        /// Also time each scale with every trace event recorded, and writing the trace.
        #[arg(long)]
        trace: bool,
        /// Also time each scale without load balancing (`kernel.load_balance = false`): what
        /// the balancer costs, in all and per load_balance() pass.
        #[arg(long)]
        balance: bool,
        /// Also time a sweep (independent runs of `default`) on one thread and on two.
        #[arg(long)]
        sweep: bool,
    },
}

fn parse_policy(s: &str) -> Result<GupPolicy, String> {
    GupPolicy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
        let names: Vec<_> = GupPolicy::ALL.iter().map(|p| p.name()).collect();
        format!("unknown policy `{s}` ({})", names.join(", "))
    })
}

/// `numasim check`: the resolved config, headed by a comment on whose rules an unread
/// `kernel.version` takes.
fn check(c: &sim_core::config::Config) {
    if let Some(note) = c.kernel.version.note() {
        println!("# {note}");
    }
    print!("{}", to_toml(c));
}

fn parse_remedy(s: &str) -> Result<compare::Remedy, String> {
    compare::Remedy::ALL.into_iter().find(|r| r.name() == s).ok_or_else(|| {
        let names: Vec<_> = compare::Remedy::ALL.iter().map(|r| r.name()).collect();
        format!("unknown remedy `{s}` ({})", names.join(", "))
    })
}

fn parse_version(s: &str) -> Result<KernelVersion, String> {
    s.parse()
}

/// What went wrong, and which exit status says so.
#[derive(Debug)]
pub enum Failure {
    /// Bad input from the user: exit status 2.
    Input(String),
    /// The run could not write its results: exit status 1.
    Io(String),
    /// `validate` found the sim and a kernel outside a tolerance: exit status 3.
    Disagreement(String),
    /// The simulation stopped: time stopped advancing or an invariant broke (a bug in the
    /// simulator, never in the input): exit status 4.
    Sim(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Input(e.to_string())
    }
}

fn main() -> ExitCode {
    // Output piped into `head` ends with SIGPIPE, as for any Unix tool, not with a panic
    // when println! finds the pipe closed. Rust starts programs with SIGPIPE ignored.
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Kernel { .. } | Command::Validate { .. }) {
        // SIGINT and SIGTERM stop the children (QEMU, the builds) and remove their scratch
        // files before numasim exits with 130 or 143.
        oracle::stop::install();
    }
    let result = match cli.command {
        Command::Run { scenario, set, out, trace, check_invariants } => {
            run(&scenario, &set, out, &trace, check_invariants)
        }
        Command::TraceDiff { a, b } => trace::diff(&a, &b),
        Command::TraceMoves { trace, comm } => trace::moves(&trace, &comm),
        Command::TraceTimeline { trace, out } => {
            let base = out.unwrap_or_else(|| {
                let stem = trace.file_stem().map_or("trace".into(), |s| s.to_string_lossy().into_owned());
                trace.with_file_name(format!("{stem}-timeline"))
            });
            plots::render_timeline(&trace, &base).map_err(Failure::Input).map(|files| {
                for f in files {
                    println!("{}", f.display());
                }
            })
        }
        Command::Compare {
            scenario,
            set,
            policies,
            kernels,
            remedies,
            seeds,
            jobs,
            out,
            check_invariants,
            show_zero,
        } => compare::run(compare::Args {
            scenario,
            show_zero,
            set,
            columns: if !remedies.is_empty() {
                remedies.into_iter().map(compare::Column::Remedy).collect()
            } else if !kernels.is_empty() {
                kernels.into_iter().map(compare::Column::Kernel).collect()
            } else {
                policies.into_iter().map(compare::Column::Policy).collect()
            },
            seeds,
            jobs: jobs.unwrap_or_else(batch::default_jobs),
            out,
            check_invariants,
        }),
        Command::Sweep { file, jobs, shard, out, check_invariants } => sweep::run(sweep::Args {
            file,
            jobs: jobs.unwrap_or_else(batch::default_jobs),
            shard,
            out,
            check_invariants,
        }),
        Command::Merge { partial: true, dirs, .. } if dirs[0].join(results::manifest::VALIDATE).is_file() => {
            Err(Failure::Input("--partial: validate shards merge whole (run the missing shards)".into()))
        }
        Command::Merge { dirs, out, .. } if dirs[0].join(results::manifest::VALIDATE).is_file() => {
            validate::shard::merge(&dirs, &out).and_then(verdict)
        }
        Command::Merge { dirs, out, partial } => sweep::merge(&dirs, &out, partial),
        Command::Kernel { scenario, kernel, set, out, trace, retries } => {
            kernel_cmd::run(&scenario, &kernel, &set, out, &trace, retries)
        }
        Command::Validate { scenario, all, kernels, set, out, reuse, trace, repeat, retries, report, shard } => {
            let args = validate::Args {
                scenario,
                all,
                kernels,
                set,
                out,
                reuse,
                trace,
                repeat,
                retries,
                report,
                shard,
                boot: true,
            };
            validate::run(args).and_then(verdict)
        }
        Command::Plot { dir } => plot(&dir),
        Command::Check { scenario, set } => {
            workloads::validation::resolve_scenario(&scenario, &set).map(|c| check(&c)).map_err(Failure::from)
        }
        Command::Scenarios => {
            for (name, _) in catalogue::BUILTIN.iter().chain(catalogue::LARGE) {
                let c = catalogue::resolve(name, &[]).expect("built-in scenarios are valid");
                println!("{name:20} {}", c.description);
            }
            Ok(())
        }
        Command::Bench { scale, thp, trace, balance, sweep } => {
            bench::run(&scale, thp, trace, balance);
            if sweep {
                bench::sweep();
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Io(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Disagreement(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(3)
        }
        Err(Failure::Sim(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(4)
        }
    }
}

/// validate's verdict as the exit status: 3 for a disagreement, 1 for a failed kernel run.
fn verdict(v: validate::Verdict) -> Result<(), Failure> {
    match v {
        validate::Verdict::Agree => Ok(()),
        validate::Verdict::Disagree => {
            Err(Failure::Disagreement("the sim and a kernel disagree (see the tables)".into()))
        }
        validate::Verdict::Failed => Err(Failure::Io("a kernel run failed (see above)".into())),
    }
}

fn run(
    scenario: &str,
    set: &[String],
    out: Option<PathBuf>,
    trace: &trace::TraceArgs,
    check: bool,
) -> Result<(), Failure> {
    let config = workloads::validation::resolve_scenario(scenario, set)?;
    let request = trace::request(trace, config.kernel.version)?;
    let dir = out.unwrap_or_else(|| PathBuf::from("out").join(&config.name));
    let mut sim = workloads::build(&config);
    if let Some(req) = &request {
        sim.enable_trace(req.options.clone());
    }
    sim.set_check_invariants(check);
    let mut result = sim.run().map_err(|e| Failure::Sim(format!("{}: {e}", dir.display())))?;
    if let (Some(req), Some(t)) = (&request, &result.trace) {
        result.summary.trace = Some(trace::write(req, t)?);
    }
    output::write_run(&dir, &config, &result).map_err(|e| Failure::Io(format!("{}: {e}", dir.display())))?;
    plots::render_run(&dir).map_err(Failure::Io)?;
    output::print_brief(&dir, &result);
    Ok(())
}

/// Redraws the plots of a result directory, whatever made it.
fn plot(dir: &std::path::Path) -> Result<(), Failure> {
    let files = if dir.join(manifest::COMPARE).is_file() {
        let manifest: compare::Manifest =
            manifest::read(dir, manifest::COMPARE, "a comparison manifest").map_err(Failure::Input)?;
        compare::draw(dir, &manifest)
    } else if dir.join(manifest::SWEEP).is_file() {
        let manifest = sweep::read_manifest(dir)?;
        plots::render_sweep(dir, &manifest.axes)
    } else if dir.join(results::SUMMARY).is_file() {
        plots::render_run(dir)
    } else {
        return Err(Failure::Input(format!(
            "{}: no {}, {} or {}: not a numasim result directory",
            dir.display(),
            results::SUMMARY,
            manifest::COMPARE,
            manifest::SWEEP
        )));
    }
    .map_err(Failure::Io)?;
    if files.is_empty() {
        eprintln!("{}: nothing to plot (no metric varies across the runs)", dir.display());
    }
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
