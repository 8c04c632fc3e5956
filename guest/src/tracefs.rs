//! Recording the plan's tracepoints through tracefs (Documentation/trace/ftrace.rst) and
//! shipping the `trace` file to the host over its own serial port.
//!
//! The ring buffer does not overwrite (options/overwrite 0): a full CPU buffer keeps the
//! start of the run and counts what it drops, so the host can say up to when the trace is
//! complete. The clock is `mono`, CLOCK_MONOTONIC, so the host can put the workload's start
//! at time zero.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use guest::{FNV_OFFSET, TraceInfo, TracePlan, fnv1a};

use crate::sys::{self, Result};

const TRACING: &str = "/sys/kernel/tracing";

fn write(file: &str, value: &str) -> Result<()> {
    let path = format!("{TRACING}/{file}");
    std::fs::write(&path, value).map_err(|e| format!("writing `{value}` to {path}: {e}"))
}

/// Enables the plan's events that this kernel has, with an empty buffer, tracing still off.
/// Returns what was enabled, what is absent and each enabled event's format.
pub fn prepare(plan: &TracePlan) -> Result<TraceInfo> {
    write("tracing_on", "0")?;
    write("trace_clock", "mono")?;
    write("options/overwrite", "0")?;
    write("buffer_size_kb", &plan.buffer_kb_per_cpu.to_string())?;
    write("trace", "")?;
    let mut info = TraceInfo::default();
    for event in &plan.events {
        let dir = format!("{TRACING}/events/{event}");
        if !std::path::Path::new(&dir).is_dir() {
            info.absent.push(event.clone());
            continue;
        }
        write(&format!("events/{event}/enable"), "1")?;
        let format = std::fs::read_to_string(format!("{dir}/format")).map_err(|e| format!("{dir}/format: {e}"))?;
        info.formats.insert(event.clone(), format);
        info.enabled.push(event.clone());
    }
    Ok(info)
}

/// Starts recording; returns the trace clock's time then.
pub fn start() -> Result<u64> {
    write("tracing_on", "1")?;
    Ok(sys::now_ns())
}

/// Stops recording and reads what each CPU dropped.
pub fn stop(info: &mut TraceInfo, nr_cpus: u32) -> Result<()> {
    write("tracing_on", "0")?;
    info.dropped_per_cpu = (0..nr_cpus).map(dropped_events).collect();
    Ok(())
}

/// Copies the `trace` file to `port`, waiting until the port has sent it all.
pub fn ship(mut info: TraceInfo, port: &mut std::fs::File) -> Result<TraceInfo> {
    let path = format!("{TRACING}/trace");
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut bytes, mut fnv) = (0u64, FNV_OFFSET);
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
        if n == 0 {
            break;
        }
        port.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", guest::TRACE_PORT))?;
        fnv = fnv1a(fnv, &buf[..n]);
        bytes += n as u64;
    }
    sys::drain(port);
    (info.bytes, info.fnv) = (bytes, fnv);
    Ok(info)
}

/// `dropped events` plus `overrun` of per_cpu/cpuN/stats (0 when the file is unreadable).
fn dropped_events(cpu: u32) -> u64 {
    let stats = std::fs::read_to_string(format!("{TRACING}/per_cpu/cpu{cpu}/stats")).unwrap_or_default();
    let fields: BTreeMap<&str, u64> = stats
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim(), v.trim().parse().ok()?)))
        .collect();
    fields.get("dropped events").unwrap_or(&0) + fields.get("overrun").unwrap_or(&0)
}
