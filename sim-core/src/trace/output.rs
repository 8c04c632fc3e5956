//! Writing a trace within its size bound (kernel/trace/trace_output.c prints the kernel's),
//! and the ftrace text format: lines as `trace-cmd report` prints them,
//!
//! ```text
//!  numa02/worker/1-1003  [001]     2.004512: sched_move_numa:      pid=1003 tgid=1001 ...
//! ```
//!
//! comm (15 characters at most, TASK_COMM_LEN) and pid, CPU, time in seconds rounded to the
//! microsecond, the event name padded to 20 characters, then the fields as TP_printk prints
//! them. Time is simulated time since the start of the run, always printed with a decimal
//! point (libtraceevent prints a bare microsecond count below one second). Lines starting
//! with `#` are numasim's notes: what ran, and at the end whether the trace is complete.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::{Record, Trace};
use crate::engine::Nanos;

/// Room kept for the closing note, so the note always fits in the bound.
const TRAILER_RESERVE: u64 = 512;

/// What a writer put in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub events: u64,
    pub bytes: u64,
    /// Set when the trace is not complete: events from this time on are missing.
    pub truncated: Option<Truncation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub at: Nanos,
    /// Events recorded or seen after `at` that the file does not hold.
    pub missing: u64,
    pub bytes_bound: u64,
}

impl Truncation {
    /// One sentence for the file, the summary and the terminal.
    pub fn describe(&self) -> String {
        format!(
            "trace stopped at {} s: the size bound ({} bytes) was reached; {} later events are not in the trace",
            seconds(self.at),
            self.bytes_bound,
            self.missing
        )
    }
}

/// `sec.usec`, rounded to the microsecond as trace-cmd does.
pub fn seconds(ns: Nanos) -> String {
    let us = (ns + 500) / 1000;
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// What a writer writes from: records in time order, up to when they are complete, and the
/// file's size bound.
pub(crate) struct Source<'a, R> {
    pub records: &'a [R],
    pub ts: fn(&R) -> Nanos,
    /// Recording stopped at this time, missing this many events from then on.
    pub stopped: Option<(Nanos, u64)>,
    pub max_bytes: u64,
}

/// Writes `header`, then one `line` per record in time order while the bound allows, then
/// the `trailer` for what was written. Records from the time recording stopped on are left
/// out: the file is a complete prefix of the run in time.
pub(crate) fn write_bounded<R>(
    src: &Source<'_, R>,
    w: &mut dyn Write,
    header: &str,
    mut line: impl FnMut(&R, &mut String),
    trailer: impl FnOnce(&Written) -> String,
) -> io::Result<Written> {
    let bound = src.max_bytes;
    let limit = bound.saturating_sub(TRAILER_RESERVE);
    let mut bytes = header.len() as u64;
    w.write_all(header.as_bytes())?;
    let records = src.records;
    let (cut, dropped) = src.stopped.unwrap_or((Nanos::MAX, 0));
    let mut buf = String::new();
    let mut written = 0;
    let mut truncated = None;
    for (i, r) in records.iter().enumerate() {
        let ts = (src.ts)(r);
        if ts >= cut {
            let missing = (records.len() - i) as u64 + dropped;
            truncated = Some(Truncation { at: cut, missing, bytes_bound: bound });
            break;
        }
        buf.clear();
        line(r, &mut buf);
        if bytes + buf.len() as u64 > limit {
            let missing = (records.len() - i) as u64 + dropped;
            truncated = Some(Truncation { at: ts, missing, bytes_bound: bound });
            break;
        }
        w.write_all(buf.as_bytes())?;
        bytes += buf.len() as u64;
        written += 1;
    }
    if truncated.is_none() && cut != Nanos::MAX {
        truncated = Some(Truncation { at: cut, missing: dropped, bytes_bound: bound });
    }
    let mut done = Written { events: written, bytes, truncated };
    let end = trailer(&done);
    w.write_all(end.as_bytes())?;
    done.bytes += end.len() as u64;
    Ok(done)
}

impl Trace {
    pub(crate) fn source(&self) -> Source<'_, Record> {
        Source { records: self.records(), ts: |r| r.ts, stopped: self.stopped(), max_bytes: self.options.max_bytes }
    }
}

/// The first lines of a text trace: what ran, whose formats, which events, how many CPUs.
pub(crate) fn ftrace_header(title: &str, version: super::TpVersion, events: &str, nr_cpus: u32) -> String {
    format!(
        "# numasim trace: {title}\n# tracepoint formats of Linux {}; events: {events}\ncpus={nr_cpus}\n",
        version.name()
    )
}

/// Writes the trace as `trace-cmd report` text.
pub fn write_ftrace(trace: &Trace, w: &mut dyn Write) -> io::Result<Written> {
    let o = &trace.options;
    let header = ftrace_header(&trace.meta.title, o.version, &o.events, trace.meta.nr_cpus);
    write_bounded(&trace.source(), w, &header, |r, out| ftrace_line(trace, r, out), ftrace_trailer)
}

pub(crate) fn ftrace_trailer(w: &Written) -> String {
    match &w.truncated {
        Some(t) => format!("# numasim: {}\n", t.describe()),
        None => format!("# numasim: end of trace, {} events\n", w.events),
    }
}

/// One event as `trace-cmd report` prints it.
pub fn ftrace_line(trace: &Trace, r: &Record, out: &mut String) {
    line_start(out, trace.meta.comm(r.pid), r.pid, r.cpu, r.ts, r.event.kind().name());
    for (i, (key, value)) in r.event.fields(trace.options.version, &trace.meta).into_iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        // A field without a key is TP_printk's literal text (sched_switch's `==>`).
        let _ = if key.is_empty() { write!(out, "{sep}{value}") } else { write!(out, "{sep}{key}={value}") };
    }
    out.push('\n');
}

/// A line up to its fields: comm (15 characters at most), pid, CPU, time and the event name
/// padded to 20 characters.
pub(crate) fn line_start(out: &mut String, comm: &str, pid: u32, cpu: u32, ts: Nanos, name: &str) {
    let comm: String = comm.chars().take(15).collect();
    let pad = 20usize.saturating_sub(name.len());
    let _ = write!(out, "{comm:>16}-{pid:<5} [{cpu:03}] {:>12}: {name}: {:pad$}", seconds(ts), "");
}
