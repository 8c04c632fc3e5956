//! Recording the plan's tracepoints through tracefs (Documentation/trace/ftrace.rst,
//! enabled at boot by the kernel command line) and
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

/// Checks that the plan's events this kernel has are on (the kernel command line enabled
/// them at boot: enabling them now would patch code under running vCPUs), and empties the
/// buffer with tracing off. Returns what is enabled, what is absent and each one's format.
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
        let enable = std::fs::read_to_string(format!("{dir}/enable")).unwrap_or_default();
        if enable.trim() != "1" {
            return Err(format!("{dir}/enable is `{}`: the boot command line did not enable it", enable.trim()));
        }
        for (_, filter) in plan.filters.iter().filter(|(e, _)| e == event) {
            std::fs::write(format!("{dir}/filter"), filter).map_err(|e| format!("{dir}/filter `{filter}`: {e}"))?;
        }
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

/// Copies the `trace` file to `port`, zlib-compressed (a trace is far larger than the serial
/// port is fast, and its lines repeat), waiting until the port has sent it all.
pub fn ship(mut info: TraceInfo, port: &mut std::fs::File) -> Result<TraceInfo> {
    let path = format!("{TRACING}/trace");
    let mut text = Vec::new();
    std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut text)).map_err(|e| format!("{path}: {e}"))?;
    let packed = miniz_oxide::deflate::compress_to_vec_zlib(&text, 6);
    eprintln!("numasim-guest: sending the trace: {} bytes, {} compressed", text.len(), packed.len());
    drop(text);
    let start = sys::now_ns();
    port.write_all(&packed).map_err(|e| format!("{}: {e}", guest::TRACE_PORT))?;
    sys::drain(port);
    info.ship_ms = (sys::now_ns() - start) / 1_000_000;
    (info.bytes, info.fnv) = (packed.len() as u64, fnv1a(FNV_OFFSET, &packed));
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
