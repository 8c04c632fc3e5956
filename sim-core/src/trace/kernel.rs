//! A real kernel's trace (tracefs's `trace` file, recorded by the oracle's guest) written in
//! the same two formats as numasim's own: `trace-cmd report` text and Chrome JSON.
//!
//! The kernel's lines keep their fields verbatim (they are TP_printk's output, which is what
//! `trace-cmd report` prints too); only the columns around them are laid out as numasim lays
//! out its own, with time since the workload's start.

use std::io::{self, Write};

use super::chrome::{instant, json_str, metadata, track, trailer};
use super::output::{Source, Written, ftrace_header, ftrace_trailer, line_start, write_bounded};
use super::parse::{field_pairs, numeric_fields, parse_line};
use super::{Kind, PidKind, TpVersion, TraceMeta};
use crate::engine::Nanos;

/// One event line of the kernel's trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLine {
    /// Since the workload's start (events in the moment before it print at 0).
    pub ts: Nanos,
    pub cpu: u32,
    pub pid: u32,
    pub comm: String,
    pub event: String,
    pub fields: String,
}

/// The kernel's trace, ready to write.
#[derive(Clone, Debug)]
pub struct KernelTrace {
    pub lines: Vec<KernelLine>,
    pub meta: TraceMeta,
    pub version: TpVersion,
    /// The events asked for, for the header.
    pub events: String,
    /// A CPU's ring buffer filled: its events from this time on are missing, this many.
    pub stopped: Option<(Nanos, u64)>,
    pub max_bytes: u64,
}

impl KernelTrace {
    /// Reads tracefs `text` whose clock read `go_ns` at the workload's start; `dropped_per_cpu`
    /// is what each CPU's full buffer dropped. A CPU that dropped events is complete only up to
    /// its last recorded event, so the whole trace is complete up to the earliest of those.
    pub fn from_tracefs(text: &str, go_ns: u64, dropped_per_cpu: &[u64], meta: TraceMeta) -> Self {
        let mut lines: Vec<KernelLine> = text
            .lines()
            .filter_map(parse_line)
            .map(|l| KernelLine {
                ts: l.ts.saturating_sub(go_ns),
                cpu: l.cpu,
                pid: l.pid,
                comm: l.comm.to_string(),
                event: l.event.to_string(),
                fields: l.fields.to_string(),
            })
            .collect();
        lines.sort_by_key(|l| l.ts);
        let last_on = |cpu: usize| lines.iter().rev().find(|l| l.cpu as usize == cpu).map_or(0, |l| l.ts);
        let full: Vec<usize> = (0..dropped_per_cpu.len()).filter(|&c| dropped_per_cpu[c] > 0).collect();
        let stopped = full.iter().map(|&c| last_on(c)).min().map(|at| (at + 1, dropped_per_cpu.iter().sum()));
        Self { lines, meta, version: TpVersion::default(), events: String::new(), stopped, max_bytes: u64::MAX }
    }

    fn source(&self) -> Source<'_, KernelLine> {
        Source { records: &self.lines, ts: |l| l.ts, stopped: self.stopped, max_bytes: self.max_bytes }
    }

    /// Writes the trace as `trace-cmd report` text.
    pub fn write_ftrace(&self, w: &mut dyn Write) -> io::Result<Written> {
        let header = ftrace_header(&self.meta.title, self.version, &self.events, self.meta.nr_cpus);
        let line = |l: &KernelLine, out: &mut String| {
            line_start(out, &l.comm, l.pid, l.cpu, l.ts, &l.event);
            out.push_str(&l.fields);
            out.push('\n');
        };
        write_bounded(&self.source(), w, &header, line, ftrace_trailer)
    }

    /// Writes the trace as Chrome JSON: each event an instant on its task's track, tasks in
    /// their processes as the guest named them.
    pub fn write_chrome(&self, w: &mut dyn Write) -> io::Result<Written> {
        let header = metadata(&self.meta, self.version, &self.events);
        let last = self.lines.last().map_or(0, |l| l.ts);
        let line = |l: &KernelLine, out: &mut String| {
            let cat = Kind::ALL.iter().find(|k| k.name() == l.event).map_or("kernel", |k| k.system());
            instant(out, track(&self.meta, l.pid), l.ts, cat, &l.event, |out| args_json(&l.fields, out));
        };
        write_bounded(&self.source(), w, &header, line, |done| trailer(last, done))
    }
}

/// The `key=value` fields as a JSON object: numbers as numbers, the rest as strings.
fn args_json(fields: &str, out: &mut String) {
    out.push('{');
    let numbers: std::collections::BTreeMap<&str, i64> = numeric_fields(fields).collect();
    for (i, (k, v)) in field_pairs(fields).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(k));
        out.push(':');
        match numbers.get(k) {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str(&json_str(v)),
        }
    }
    out.push('}');
}

/// Names for a kernel trace's tasks: the guest's processes and threads (their pids in the
/// guest), everything else a kernel thread.
pub fn guest_meta(
    processes: &[(u32, String)],
    threads: &[(u32, u32, String)],
    nr_cpus: u32,
    cpus_per_node: u32,
    title: String,
) -> TraceMeta {
    let mut meta = TraceMeta { nr_cpus, cpus_per_node, title, ..TraceMeta::default() };
    for (pid, name) in processes {
        meta.comms.insert(*pid, (name.clone(), PidKind::Process));
    }
    for (tid, pid, name) in threads.iter().filter(|(tid, pid, _)| tid != pid) {
        meta.comms.insert(*tid, (name.clone(), PidKind::Thread { tgid: *pid, vcpu: false }));
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEFS: &str = "\
# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
 numa02/worker/1-211     [002] d..2.   105.250000: sched_move_numa: pid=211 tgid=209 ngid=0 src_cpu=2 src_nid=1 dst_cpu=0 dst_nid=0
 numa02/worker/0-210     [000] .....   100.500001: mm_migrate_pages: nr_succeeded=1 nr_failed=0 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced
 numa02/worker/0-210     [000] .....   106.000000: mm_migrate_pages: nr_succeeded=1 nr_failed=0 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced
";

    fn trace(dropped: &[u64]) -> KernelTrace {
        let meta = guest_meta(
            &[(209, "numa02".into())],
            &[(210, 209, "numa02/worker/0".into()), (211, 209, "numa02/worker/1".into())],
            4,
            2,
            "numa02 on 6.12".into(),
        );
        KernelTrace::from_tracefs(TRACEFS, 100_000_000_000, dropped, meta)
    }

    #[test]
    fn tracefs_lines_print_as_trace_cmd_report_with_time_since_the_start() {
        let mut out = Vec::new();
        let written = trace(&[0; 4]).write_ftrace(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[3],
            " numa02/worker/0-210   [000]     0.500001: mm_migrate_pages:     nr_succeeded=1 nr_failed=0 nr_thp_succeeded=0 \
             nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced"
        );
        assert_eq!(
            lines[4],
            " numa02/worker/1-211   [002]     5.250000: sched_move_numa:      pid=211 tgid=209 ngid=0 src_cpu=2 src_nid=1 dst_cpu=0 dst_nid=0"
        );
        assert_eq!(written.events, 3);
        assert!(written.truncated.is_none());
    }

    #[test]
    fn a_cpu_whose_buffer_filled_cuts_the_trace_after_its_last_event() {
        let mut out = Vec::new();
        let written = trace(&[7, 0, 0, 0]).write_ftrace(&mut out).unwrap();
        let t = written.truncated.expect("incomplete");
        // CPU 0's last event is at 6.0 s: events up to it are in, 7 were dropped.
        assert_eq!((written.events, t.at, t.missing), (3, 6_000_000_001, 7));
        assert!(String::from_utf8(out).unwrap().contains("# numasim: trace stopped at 6.000000 s"));
    }

    #[test]
    fn the_json_puts_each_event_on_its_threads_track_with_numeric_args() {
        let mut out = Vec::new();
        trace(&[0; 4]).write_chrome(&mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let events = v["traceEvents"].as_array().unwrap();
        let moved = events.iter().find(|e| e["name"] == "sched_move_numa").unwrap();
        assert_eq!((moved["pid"].as_u64(), moved["tid"].as_u64()), (Some(209), Some(211)));
        assert_eq!(moved["cat"], "sched");
        assert_eq!(moved["args"]["dst_nid"], 0);
        assert_eq!(moved["ts"].as_f64(), Some(5_250_000.0));
        let migrate = events.iter().find(|e| e["name"] == "mm_migrate_pages").unwrap();
        assert_eq!(migrate["args"]["reason"], "numa_misplaced");
        assert_eq!(v["numasim_complete"], true);
    }
}
