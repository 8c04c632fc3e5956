//! `run --trace FILE`: choosing what to record and writing the trace file; and
//! `trace-diff`, which compares two ftrace text traces event kind by event kind.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use sim_core::config::{Config, KernelVersion};
use sim_core::trace::chrome::write_chrome;
use sim_core::trace::kernel::{KernelTrace, guest_meta};
use sim_core::trace::output::{Written, write_ftrace};
use sim_core::trace::parse::{Counts, count_events};
use sim_core::trace::{Kind, TpVersion, Trace, TraceOptions, TraceSummary, parse_events};
use sim_core::version::Rules;

use crate::Failure;

/// The trace options of `run`.
#[derive(Args, Debug, Default)]
pub struct TraceArgs {
    /// Record the run's events into FILE: ftrace text as `trace-cmd report` prints it, or
    /// Chrome JSON for Perfetto when FILE ends in .json.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Events to record: comma-separated `system:event` patterns with `*` globs, e.g.
    /// `sched:*,migrate:mm_migrate_pages,numasim:*` (default: all).
    #[arg(long, value_name = "LIST", requires = "trace")]
    pub trace_events: Option<String>,
    /// Stop recording when the trace file would pass this many MiB (default 256).
    #[arg(long, value_name = "MIB", requires = "trace")]
    pub trace_max_mib: Option<u64>,
    /// The trace format (default: by FILE's extension).
    #[arg(long, value_enum, requires = "trace")]
    pub trace_format: Option<Format>,
    /// The kernel whose tracepoint formats to print: 6.1, 6.12 or 7.3 (default: that of
    /// kernel.version: 6.1's before 6.7, 7.3's from 6.16).
    #[arg(long, value_name = "VERSION", requires = "trace")]
    pub trace_kernel: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// ftrace text (`trace-cmd report`).
    Ftrace,
    /// Chrome JSON trace events (Perfetto, chrome://tracing).
    Json,
}

/// A validated trace request.
pub struct Request {
    pub file: PathBuf,
    pub format: Format,
    pub options: TraceOptions,
}

const DEFAULT_MAX_MIB: u64 = 256;

/// The tracepoint formats of `kernel.version` (its rules in `sim_core::version`).
pub fn formats_of(v: KernelVersion) -> TpVersion {
    TpVersion::of(&Rules::of(v, None))
}

/// Checks the trace options before anything runs; `None` when not tracing.
pub fn request(a: &TraceArgs, kernel: KernelVersion) -> Result<Option<Request>, Failure> {
    let Some(file) = a.trace.clone() else { return Ok(None) };
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = match (a.trace_format, ext) {
        (Some(f), _) => f,
        (None, "json") => Format::Json,
        (None, "dat") => {
            return Err(Failure::Input(format!(
                "--trace {}: .dat is trace-cmd's binary format, which numasim does not write; \
                 use a .txt file (ftrace text) or .json (Perfetto), or --trace-format",
                file.display()
            )));
        }
        (None, _) => Format::Ftrace,
    };
    let (kinds, events) = match &a.trace_events {
        Some(spec) => (parse_events(spec).map_err(Failure::Input)?, spec.clone()),
        None => (Kind::ALL.iter().copied().filter(|k| !k.named_only()).collect(), "*:*".to_string()),
    };
    let version = match a.trace_kernel.as_deref() {
        None => formats_of(kernel),
        Some(v) => TpVersion::ALL
            .into_iter()
            .find(|t| t.name() == v)
            .ok_or_else(|| Failure::Input(format!("--trace-kernel `{v}`: unknown kernel (6.1, 6.12 or 7.3)")))?,
    };
    let mib = a.trace_max_mib.unwrap_or(DEFAULT_MAX_MIB);
    if mib == 0 {
        return Err(Failure::Input("--trace-max-mib 0: the bound must be at least 1 MiB".into()));
    }
    if kinds.iter().all(|k| !version.has(*k)) {
        return Err(Failure::Input(format!("--trace-events `{events}`: Linux {} has none of these", version.name())));
    }
    let options = TraceOptions { kinds, events, version, max_bytes: mib << 20 };
    Ok(Some(Request { file, format, options }))
}

/// Writes the sim's trace (see [`write_with`]).
pub fn write(req: &Request, trace: &Trace) -> Result<TraceSummary, Failure> {
    write_with(req, |format, w| match format {
        Format::Ftrace => write_ftrace(trace, w),
        Format::Json => write_chrome(trace, w),
    })
}

/// Writes a real kernel's trace in the same formats.
fn write_kernel(req: &Request, trace: &KernelTrace) -> Result<TraceSummary, Failure> {
    write_with(req, |format, w| match format {
        Format::Ftrace => trace.write_ftrace(w),
        Format::Json => trace.write_chrome(w),
    })
}

/// What the guest records for `req`: the request's kernel tracepoints, in a ring buffer of
/// a quarter of the size bound (at most 64 MiB) over the CPUs: a binary record is about a
/// quarter of its text line.
pub fn tracefs_plan(req: &Request, config: &Config) -> Result<oracle::TracePlan, Failure> {
    let cpus = u64::from(config.machine.nodes * config.machine.cpus_per_node).max(1);
    let total_kib = (req.options.max_bytes / 4).min(64 << 20) >> 10;
    let events = tracefs_events(req)?;
    let filters = events.iter().filter(|e| *e == SCHED_SWITCH).map(|e| (e.clone(), own_tasks(config))).collect();
    Ok(oracle::TracePlan { events, buffer_kb_per_cpu: (total_kib / cpus).max(64), filters })
}

const SCHED_SWITCH: &str = "sched/sched_switch";

/// sched_switch's filter: a switch from or to one of the scenario's threads, whose comms
/// start with their process's name (the kernel keeps 15 bytes of a comm).
fn own_tasks(config: &Config) -> String {
    let names = config.process.iter().map(|p| &p.name).chain(config.vm.iter().map(|v| &v.name));
    let globs: Vec<String> = names
        .map(|n| n.chars().take(15).collect::<String>())
        .flat_map(|n| [format!("prev_comm ~ \"{n}*\""), format!("next_comm ~ \"{n}*\"")])
        .collect();
    globs.join(" || ")
}

/// Writes a kernel run's trace, and its tracepoints' tracefs formats as trace-formats.txt
/// beside its results.
pub fn write_kernel_run(
    req: &Request,
    t: &oracle::KernelTrace,
    config: &Config,
    run: &oracle::KernelRun,
) -> Result<TraceSummary, Failure> {
    let m = &config.machine;
    let title = format!(
        "{} on Linux {} (kernel oracle, {}), seed {}",
        config.name,
        run.release,
        run.accel.name(),
        config.run.seed
    );
    let meta = guest_meta(&t.info.processes, &t.info.threads, m.nodes * m.cpus_per_node, m.cpus_per_node, title);
    let mut kt = KernelTrace::from_tracefs(&t.text, t.info.go_ns, &t.info.dropped_per_cpu, meta);
    (kt.version, kt.events, kt.max_bytes) = (req.options.version, req.options.events.clone(), req.options.max_bytes);
    let mut formats = String::new();
    for (event, format) in &t.info.formats {
        formats.push_str(&format!("# events/{event}/format\n{format}\n"));
    }
    for event in &t.info.absent {
        formats.push_str(&format!("# events/{event}: this kernel does not have it\n"));
        eprintln!("trace: Linux {} has no {event} tracepoint", run.release);
    }
    let path = run.dir.join("trace-formats.txt");
    fs::write(&path, formats).map_err(|e| Failure::Io(format!("{}: {e}", path.display())))?;
    write_kernel(req, &kt)
}

/// One line for the terminal about a written trace.
pub fn print_written(t: &TraceSummary) {
    match &t.stopped {
        Some(why) => println!("trace: {} ({} events, incomplete: {why})", t.file, t.events),
        None => println!("trace: {} ({} events)", t.file, t.events),
    }
}

/// The tracefs event directories (`system/event`) of the request's kernel tracepoints:
/// numasim's own events have no kernel counterpart.
fn tracefs_events(req: &Request) -> Result<Vec<String>, Failure> {
    let events: Vec<String> = req
        .options
        .kinds
        .iter()
        .filter(|k| k.system() != "numasim")
        .map(|k| format!("{}/{}", k.system(), k.name()))
        .collect();
    if events.is_empty() {
        return Err(Failure::Input(format!(
            "--trace-events `{}`: none of these is a kernel tracepoint (numasim:* events are the simulator's own)",
            req.options.events
        )));
    }
    Ok(events)
}

/// Writes a trace under a temporary name and renames it into place, so a trace file that
/// exists was written to its end (its last line says whether the trace is complete).
fn write_with(
    req: &Request,
    body: impl FnOnce(Format, &mut dyn std::io::Write) -> std::io::Result<Written>,
) -> Result<TraceSummary, Failure> {
    let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", req.file.display()));
    let dir = req.file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let name = req.file.file_name().and_then(|n| n.to_str()).unwrap_or("trace");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut w = BufWriter::new(fs::File::create(&tmp).map_err(io)?);
    let written: Written = body(req.format, &mut w).map_err(io)?;
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    fs::rename(&tmp, &req.file).map_err(io)?;
    Ok(TraceSummary {
        file: req.file.display().to_string(),
        format: match req.format {
            Format::Ftrace => "ftrace".into(),
            Format::Json => "chrome-json".into(),
        },
        kernel: req.options.version.name().into(),
        events: written.events,
        bytes: written.bytes,
        complete: written.truncated.is_none(),
        stopped: written.truncated.map(|t| t.describe()),
    })
}

/// `numasim trace-diff A B`: events per kind (and sums of `nr_*` fields) in two ftrace text
/// traces, side by side.
pub fn diff(a: &Path, b: &Path) -> Result<(), Failure> {
    print!("{}", diff_table(a, b)?);
    Ok(())
}

/// `numasim trace-moves`: the moves of the `comm` threads in the trace at `path`, by cause.
pub fn moves(path: &Path, comm: &str) -> Result<(), Failure> {
    if comm.is_empty() {
        return Err(Failure::Input("--comm: give the threads' comm prefix, e.g. `numa02/`".into()));
    }
    let text = fs::read_to_string(path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))?;
    let m = sim_core::trace::moves::classify(&text, comm);
    if m.total == 0 && m.sched_switches == 0 && count_events(&text).events.is_empty() {
        return Err(Failure::Input(format!(
            "{}: no ftrace events (expected `trace-cmd report` or tracefs `trace` text)",
            path.display()
        )));
    }
    print!("{}", sim_core::trace::moves::render(&m, comm));
    Ok(())
}

/// The trace-diff table of `a` and `b`, then whether the events both hold print the same fields.
pub fn diff_table(a: &Path, b: &Path) -> Result<String, Failure> {
    use std::fmt::Write as _;
    let (ca, cb) = (read_counts(a)?, read_counts(b)?);
    let mut rows: Vec<&String> = ca.events.keys().chain(cb.events.keys()).collect();
    rows.sort();
    rows.dedup();
    let mut sums: Vec<&String> = ca.sums.keys().chain(cb.sums.keys()).collect();
    sums.sort();
    sums.dedup();
    let name = |p: &Path| p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().into_owned());
    // Two files of one name (validate's sim/trace.txt, kernel/trace.txt) are told apart by their directory.
    let label = |p: &Path| match p.parent().and_then(|d| d.file_name()) {
        Some(d) if name(a) == name(b) => format!("{}/{}", d.to_string_lossy(), name(p)),
        _ => name(p),
    };
    let mut out = String::new();
    let _ = writeln!(out, "{:44} {:>14} {:>14} {:>14}", "event", label(a), label(b), "B - A");
    let mut line = |name: &str, x: i64, y: i64| {
        let _ = writeln!(out, "{name:44} {x:>14} {y:>14} {:>+14}", y - x);
    };
    for r in rows {
        line(r, count(&ca.events, r), count(&cb.events, r));
    }
    for s in sums {
        line(s, ca.sums.get(s).copied().unwrap_or(0), cb.sums.get(s).copied().unwrap_or(0));
    }
    for (event, keys) in &ca.keys {
        let _ = match cb.keys.get(event) {
            Some(other) if other == keys => writeln!(out, "fields of {event}: the same in both"),
            Some(other) => writeln!(out, "fields of {event} differ: {} vs {}", keys.join(","), other.join(",")),
            None => Ok(()),
        };
    }
    for (p, c) in [(a, &ca), (b, &cb)] {
        if c.unparsed > 0 {
            eprintln!("{}: {} lines were not ftrace events and were ignored", p.display(), c.unparsed);
        }
    }
    Ok(out)
}

fn count(m: &std::collections::BTreeMap<String, u64>, k: &str) -> i64 {
    m.get(k).map_or(0, |&n| n as i64)
}

fn read_counts(p: &Path) -> Result<Counts, Failure> {
    let text = fs::read_to_string(p).map_err(|e| Failure::Input(format!("{}: {e}", p.display())))?;
    let c = count_events(&text);
    if c.events.is_empty() && c.unparsed > 0 {
        return Err(Failure::Input(format!(
            "{}: no ftrace events in {} lines (expected `trace-cmd report` or tracefs `trace` text)",
            p.display(),
            c.unparsed
        )));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sched:sched_switch`, named, goes to the kernel filtered to the scenario's own tasks;
    /// `sched:*` leaves it out.
    #[test]
    fn sched_switch_is_asked_for_by_name_and_kept_to_the_scenarios_tasks() {
        let config = workloads::catalogue::resolve("kvm-guest", &[]).unwrap();
        let args = |events: &str| TraceArgs {
            trace: Some(PathBuf::from("t.txt")),
            trace_events: Some(events.into()),
            ..Default::default()
        };
        let plan =
            |events: &str| tracefs_plan(&request(&args(events), KernelVersion::V6_12).unwrap().unwrap(), &config);
        let named = plan("sched:sched_switch,sched:sched_migrate_task").unwrap();
        assert!(named.events.iter().any(|e| e == SCHED_SWITCH), "{:?}", named.events);
        let [(event, filter)] = named.filters.as_slice() else { panic!("{:?}", named.filters) };
        assert_eq!(event, SCHED_SWITCH);
        for p in config.process.iter().map(|p| &p.name).chain(config.vm.iter().map(|v| &v.name)) {
            assert!(filter.contains(&format!("prev_comm ~ \"{p}*\"")), "{filter}");
        }
        let wildcard = plan("sched:*").unwrap();
        assert!(!wildcard.events.iter().any(|e| e == SCHED_SWITCH) && wildcard.filters.is_empty());
    }
}
