//! The trace as Chrome JSON trace events, which the Perfetto UI (ui.perfetto.dev) and
//! chrome://tracing open.
//!
//! Tracks: one per CPU, grouped by node ("node N" processes), holding a slice per run of a
//! task; one per thread (vCPUs included) in its process, holding a slice per stay on a node
//! ("node N") and the thread's events; one per device driver worker under "devices"; ksmd and
//! the stale-mapping counter under "kernel". A thread moving between nodes shows as its
//! slice jumping between node groups, and as a new "node N" slice on its own track.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::events::{Event, Field};
use super::output::{Written, write_bounded};
use super::{PidKind, Record, TpVersion, Trace, TraceMeta};
use crate::engine::Nanos;

/// Pseudo-process ids of the track groups that are not processes.
const NODE_PID_BASE: u32 = 1_000_000;
const DEVICES_PID: u32 = 2_000_000;
const KERNEL_PID: u32 = 2_000_001;
/// Thread ids of the CPU tracks (kept apart from every task's pid).
const CPU_TID_BASE: u32 = 3_000_000;

/// Writes the trace as a Chrome JSON object `{"traceEvents": [...], ...}`.
pub fn write_chrome(trace: &Trace, w: &mut dyn Write) -> io::Result<Written> {
    let header = metadata(&trace.meta, trace.options.version, &trace.options.events);
    let last = trace.records().last().map_or(0, |r| r.ts);
    write_bounded(&trace.source(), w, &header, |r, out| event_json(trace, r, out), |done| trailer(last, done))
}

/// `"name"` with JSON escapes.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Microseconds with nanosecond decimals, the unit of Chrome trace `ts` and `dur`.
fn us(ns: Nanos) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

/// The (pid, tid) of the track a task's events go to.
pub(crate) fn track(meta: &TraceMeta, pid: u32) -> (u32, u32) {
    match meta.comms.get(&pid).map(|(_, k)| k) {
        Some(PidKind::Thread { tgid, .. }) => (*tgid, pid),
        Some(PidKind::Process) => (pid, pid),
        Some(PidKind::DeviceWorker) => (DEVICES_PID, pid),
        Some(PidKind::Kthread) | None => (KERNEL_PID, pid),
    }
}

fn meta_event(out: &mut String, pid: u32, tid: Option<u32>, name: &str, value: &str) {
    let tid = tid.map_or(String::new(), |t| format!(",\"tid\":{t}"));
    let _ = writeln!(
        out,
        "{{\"ph\":\"M\",\"pid\":{pid}{tid},\"name\":\"{name}\",\"args\":{{\"name\":{}}}}},",
        json_str(value)
    );
}

fn sort_index(out: &mut String, pid: u32, index: u32) {
    let _ = writeln!(
        out,
        "{{\"ph\":\"M\",\"pid\":{pid},\"name\":\"process_sort_index\",\"args\":{{\"sort_index\":{index}}}}},"
    );
}

/// Names of every process, thread and CPU track, nodes first.
pub(crate) fn metadata(m: &TraceMeta, version: TpVersion, events: &str) -> String {
    let mut out = format!(
        "{{\"displayTimeUnit\":\"ns\",\n\"metadata\":{{\"numasim\":{},\"tracepoint_formats\":\"Linux {}\",\"events\":{}}},\n\"traceEvents\":[\n",
        json_str(&m.title),
        version.name(),
        json_str(events)
    );
    let nodes = m.nr_cpus.div_ceil(m.cpus_per_node.max(1));
    for nid in 0..nodes {
        meta_event(&mut out, NODE_PID_BASE + nid, None, "process_name", &format!("node {nid}"));
        sort_index(&mut out, NODE_PID_BASE + nid, nid);
    }
    for cpu in 0..m.nr_cpus {
        let nid = cpu / m.cpus_per_node.max(1);
        meta_event(&mut out, NODE_PID_BASE + nid, Some(CPU_TID_BASE + cpu), "thread_name", &format!("CPU {cpu}"));
    }
    meta_event(&mut out, DEVICES_PID, None, "process_name", "devices");
    meta_event(&mut out, KERNEL_PID, None, "process_name", "kernel");
    for (pid, (comm, kind)) in &m.comms {
        if *kind == PidKind::Process {
            meta_event(&mut out, *pid, None, "process_name", comm);
            sort_index(&mut out, *pid, 100 + pid);
        }
        let (p, t) = track(m, *pid);
        let name = if *kind == PidKind::Process { "main" } else { comm.as_str() };
        meta_event(&mut out, p, Some(t), "thread_name", name);
    }
    out
}

fn args_json(trace: &Trace, e: &Event, out: &mut String) {
    out.push('{');
    let fields = e.fields(trace.options.version, &trace.meta).into_iter().filter(|(key, _)| !key.is_empty());
    for (i, (key, value)) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = match value {
            Field::I(v) => write!(out, "\"{key}\":{v}"),
            Field::U(v) => write!(out, "\"{key}\":{v}"),
            other => write!(out, "\"{key}\":{}", json_str(&other.to_string())),
        };
    }
    out.push('}');
}

/// One record as trace events: a run is a slice on its CPU's track and one on the task's
/// own; the stale-mapping gauge is a counter; everything else an instant on the task's track.
fn event_json(trace: &Trace, r: &Record, out: &mut String) {
    let (pid, tid) = track(&trace.meta, r.pid);
    let ts = us(r.ts);
    match r.event {
        Event::TaskRun { nid, dur } => {
            let comm = json_str(trace.meta.comm(r.pid));
            let node = NODE_PID_BASE + u32::from(nid);
            let cpu_tid = CPU_TID_BASE + r.cpu;
            let dur = us(dur);
            let _ = writeln!(
                out,
                "{{\"ph\":\"X\",\"pid\":{node},\"tid\":{cpu_tid},\"ts\":{ts},\"dur\":{dur},\"name\":{comm},\"args\":{{\"pid\":{}}}}},",
                r.pid
            );
            let _ = writeln!(
                out,
                "{{\"ph\":\"X\",\"pid\":{pid},\"tid\":{tid},\"ts\":{ts},\"dur\":{dur},\"name\":\"node {nid}\",\"args\":{{\"cpu\":{}}}}},",
                r.cpu
            );
        }
        Event::StaleMappings { stale } => {
            let _ = writeln!(
                out,
                "{{\"ph\":\"C\",\"pid\":{KERNEL_PID},\"ts\":{ts},\"name\":\"stale mappings\",\"args\":{{\"stale\":{stale}}}}},"
            );
        }
        e => {
            let kind = e.kind();
            instant(out, (pid, tid), r.ts, kind.system(), kind.name(), |out| args_json(trace, &e, out));
        }
    }
}

/// An instant event on track `(pid, tid)`; `args` writes its args object.
pub(crate) fn instant(
    out: &mut String,
    (pid, tid): (u32, u32),
    ts: Nanos,
    cat: &str,
    name: &str,
    args: impl FnOnce(&mut String),
) {
    let _ = write!(
        out,
        "{{\"ph\":\"i\",\"s\":\"t\",\"pid\":{pid},\"tid\":{tid},\"ts\":{},\"cat\":{},\"name\":{},\"args\":",
        us(ts),
        json_str(cat),
        json_str(name)
    );
    args(out);
    out.push_str("},\n");
}

/// Closes the array with a last event saying whether the trace is complete (visible in the
/// UI at the end of the kernel track), then the object.
pub(crate) fn trailer(last: Nanos, done: &Written) -> String {
    let (at, note) = match &done.truncated {
        Some(t) => (t.at, t.describe()),
        None => (last, format!("end of trace, {} events", done.events)),
    };
    format!(
        "{{\"ph\":\"i\",\"s\":\"g\",\"pid\":{KERNEL_PID},\"tid\":{KERNEL_PID},\"ts\":{},\"name\":{},\"args\":{{}}}}\n],\n\"numasim_complete\":{}}}\n",
        us(at),
        json_str(&format!("numasim: {note}")),
        done.truncated.is_none()
    )
}
