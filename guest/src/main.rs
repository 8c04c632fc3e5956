//! numasim-guest: the initramfs's /init. Mounts the kernel's file systems, applies the plan's
//! sysctls, forks the workload's processes and GUP callers, samples the kernel's counters
//! every `sample_ms` onto the data serial port (one JSON [`Frame`] per line) and powers off.

#[allow(dead_code)]
mod gupdev;
mod pattern;
mod pte_walk;
mod remote;
mod sample;
mod shared;
mod smmu;
mod sys;
mod tiers;
mod topology;
mod tracefs;
mod uffd;
mod workload;

use std::io::Write;
use std::sync::atomic::Ordering;

use guest::{Frame, Plan};
use shared::Shared;
use sys::Result;

/// How long the workload's processes may take to set up (populate their VMAs).
const SETUP_TIMEOUT_NS: u64 = 600 * 1_000_000_000;

fn main() {
    let mut port = match DataPort::open() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("numasim-guest: {e}");
            sys::poweroff()
        }
    };
    if let Err(message) = run(&mut port) {
        eprintln!("numasim-guest: {message}");
        port.send(&Frame::Error { message });
    }
    sys::drain(&port.0);
    sys::poweroff()
}

fn run(port: &mut DataPort) -> Result<()> {
    mount_all()?;
    port.send(&Frame::Hello { release: release(), uptime_s: uptime_s() });
    let text = std::fs::read_to_string(guest::PLAN_PATH).map_err(|e| format!("{}: {e}", guest::PLAN_PATH))?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", guest::PLAN_PATH))?;
    // The workload's threads borrow the plan for the life of the process.
    let plan: &'static Plan = Box::leak(Box::new(plan));
    if plan.probe {
        port.send(&Frame::Done { elapsed_ms: 0 });
        return Ok(());
    }
    write_files(&plan.writes)?;
    // A kernel with brd built in takes its size from the command line instead.
    if let Some(kib) = plan.brd_kib.filter(|_| std::path::Path::new(guest::BRD_PATH).is_file()) {
        sys::load_module(guest::BRD_PATH, &format!("rd_nr=1 rd_size={kib}"))?;
    }
    if plan.memory_nodes > 0 {
        let tiers = tiers::node_tiers();
        if let Err(message) = tiers::check_lower(&tiers, plan.nodes, plan.memory_nodes) {
            port.send(&Frame::Unsupported { message });
            return Ok(());
        }
    }
    if let Err(message) = smmu::load_module(plan) {
        port.send(&Frame::Unsupported { message });
        return Ok(());
    }
    let pte_walk = pte_walk::time_pte_walk(plan)?;
    workload::create_memfds(plan)?;
    let shared = Shared::map()?;
    let setup_start = sys::now_ns();
    let children = spawn_children(shared, plan)?;
    wait_ready(shared, plan, setup_start)?;
    let mut trace = plan.trace.as_ref().map(tracefs::prepare).transpose()?;
    let cpus = plan.nodes * plan.cpus_per_node;
    let pids: Vec<(String, i32)> = plan
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), shared.procs[i].pid.load(Ordering::Relaxed)))
        .collect();
    port.send(&Frame::Files { when: "start".into(), files: topology::at_start(cpus, &pids) });
    port.send(&Frame::Started { setup_ms: (sys::now_ns() - setup_start) / 1_000_000, pte_walk: Some(pte_walk) });
    let result = sample_run(port, shared, plan, trace.is_some());
    if let Some(info) = trace.as_mut() {
        tracefs::stop(info, plan.nodes * plan.cpus_per_node)?;
    }
    shared.stop_run();
    for _ in 0..children {
        sys::wait_child();
    }
    let (elapsed_ms, go) = result?;
    port.send(&Frame::Files { when: "end".into(), files: topology::at_end() });
    if !plan.smmus.is_empty() {
        check_unpinned()?;
    }
    if let Some(mut info) = trace {
        (info.go_ns, info.processes, info.threads) = (go, process_ids(shared, plan), thread_ids(shared, plan));
        let mut trace_port = sys::open_serial(guest::TRACE_PORT, 66)?;
        port.send(&Frame::Trace(tracefs::ship(info, &mut trace_port)?));
    }
    port.send(&Frame::Done { elapsed_ms });
    Ok(())
}

/// (pid, name) of each process slot, for naming a trace's tasks.
fn process_ids(shared: &Shared, plan: &Plan) -> Vec<(u32, String)> {
    let names = plan.processes.iter().map(|p| p.name.clone()).chain(plan.remote_callers.iter().map(|c| c.name.clone()));
    names.enumerate().map(|(i, n)| (shared.procs[i].pid.load(Ordering::Relaxed) as u32, n)).collect()
}

/// (tid, pid, name) of each thread slot.
fn thread_ids(shared: &Shared, plan: &Plan) -> Vec<(u32, u32, String)> {
    let slot = |i: usize| &shared.threads[i];
    let ids = |i: usize| (slot(i).tid.load(Ordering::Relaxed) as u32, slot(i).pid.load(Ordering::Relaxed) as u32);
    plan.slot_names().into_iter().enumerate().map(|(i, n)| (ids(i).0, ids(i).1, n)).collect()
}

/// Once every device is closed, gupdev holds no page and every FOLL_PIN was released
/// (vmstat's pin counters are per-CPU: stat_refresh folds them first).
fn check_unpinned() -> Result<()> {
    let held = smmu::held_pages()?;
    if held != 0 {
        return Err(format!("gupdev still holds {held} pages after every device was closed"));
    }
    std::fs::write("/proc/sys/vm/stat_refresh", "1").map_err(|e| format!("/proc/sys/vm/stat_refresh: {e}"))?;
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    let get = |k: &str| vmstat.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse::<u64>().ok());
    match (get("nr_foll_pin_acquired"), get("nr_foll_pin_released")) {
        (Some(a), Some(r)) if a != r => Err(format!("FOLL_PIN pins acquired {a} != released {r} after the run")),
        _ => Ok(()),
    }
}

fn write_files(writes: &[(String, String)]) -> Result<()> {
    for (path, value) in writes {
        std::fs::write(path, value).map_err(|e| format!("writing `{value}` to {path}: {e}"))?;
    }
    Ok(())
}

fn mount_all() -> Result<()> {
    sys::mount("proc", "/proc", "proc")?;
    sys::mount("sysfs", "/sys", "sysfs")?;
    sys::mount("devtmpfs", "/dev", "devtmpfs")?;
    sys::mount("debugfs", "/sys/kernel/debug", "debugfs")?;
    sys::mount("tracefs", "/sys/kernel/tracing", "tracefs")
}

/// Forks the GUP callers first, then the workload processes: no process is forked from one
/// that has a workload buffer. Returns how many children there are.
fn spawn_children(shared: &'static Shared, plan: &'static Plan) -> Result<usize> {
    let cpu_threads: usize = plan.processes.iter().map(|p| p.threads.len()).sum();
    for ci in 0..plan.remote_callers.len() {
        fork_child(shared, plan.processes.len() + ci, || remote::run_remote(shared, plan, ci, cpu_threads + ci))?;
    }
    let mut first_slot = 0;
    for pi in 0..plan.processes.len() {
        fork_child(shared, pi, || workload::run_process(shared, plan, pi, first_slot))?;
        first_slot += plan.processes[pi].threads.len();
    }
    Ok(plan.processes.len() + plan.remote_callers.len())
}

/// Forks a child that runs `body` and exits; a failure marks slot `proc_slot` failed.
fn fork_child(shared: &Shared, proc_slot: usize, body: impl FnOnce() -> Result<()>) -> Result<()> {
    if sys::fork()? == 0 {
        let code = match body() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("numasim-guest: {e}");
                shared.procs[proc_slot].state.store(shared::FAILED, Ordering::Release);
                1
            }
        };
        sys::exit_process(code)
    }
    Ok(())
}

fn wait_ready(shared: &Shared, plan: &Plan, since: u64) -> Result<()> {
    let n = plan.processes.len() + plan.remote_callers.len();
    loop {
        check_failed(shared, n)?;
        if shared.procs[..n].iter().all(|p| p.state.load(Ordering::Acquire) == shared::READY) {
            return Ok(());
        }
        if sys::now_ns() - since > SETUP_TIMEOUT_NS {
            return Err("the workload's processes did not finish setting up".into());
        }
        sys::sleep_ns(2_000_000);
    }
}

fn check_failed(shared: &Shared, n: usize) -> Result<()> {
    match shared.procs[..n].iter().position(|p| p.state.load(Ordering::Acquire) == shared::FAILED) {
        Some(i) => Err(format!("process slot {i} failed (its message is on the console)")),
        None => Ok(()),
    }
}

/// Starts the workload (and tracing) and samples at 0, sample_ms, 2 * sample_ms, ... and at
/// the duration, where the run ends. A sample can take longer than the period (numa_maps of
/// a large buffer under TCG takes hundreds of milliseconds): the deadlines it overran are
/// skipped, so the run lasts its duration, not a fixed number of samples. Returns the guest
/// time the workload ran and CLOCK_MONOTONIC at its start.
fn sample_run(port: &mut DataPort, shared: &Shared, plan: &Plan, tracing: bool) -> Result<(u64, u64)> {
    let names = plan.slot_names();
    let n = plan.processes.len() + plan.remote_callers.len();
    let mut sampler = sample::Sampler::default();
    let baseline = sampler.take(plan, shared, &names, 0.0, false);
    if tracing {
        tracefs::start()?;
    }
    write_files(&plan.start_writes)?;
    let go = sys::now_ns();
    port.send(&Frame::Sample(baseline));
    shared.go_ns.store(go, Ordering::Release);
    let (period, end) = (plan.sample_ms * 1_000_000, go + plan.duration_ms * 1_000_000);
    let mut deadline = (go + period).min(end);
    loop {
        sys::sleep_until(deadline);
        let t = sys::now_ns();
        port.send(&Frame::Sample(sampler.take(plan, shared, &names, (t - go) as f64 / 1e6, deadline == end)));
        check_failed(shared, n)?;
        if deadline == end {
            return Ok(((t - go) / 1_000_000, go));
        }
        deadline = next_deadline(go, period, sys::now_ns()).min(end);
    }
}

/// The first sampling deadline (go + k * period) after `now`.
fn next_deadline(go: u64, period: u64, now: u64) -> u64 {
    go + ((now - go) / period + 1) * period
}

fn release() -> String {
    // SAFETY: utsname is plain data and uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid out-pointer.
    unsafe { libc::uname(&mut u) };
    let bytes: Vec<u8> = u.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn uptime_s() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    text.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

/// The second serial port, in raw mode: only frames go there, never kernel messages.
struct DataPort(std::fs::File);

impl DataPort {
    fn open() -> Result<Self> {
        sys::open_serial(guest::DATA_PORT, 65).map(Self)
    }

    /// Writes one frame as one line (a failed write cannot be reported anywhere else).
    fn send(&mut self, frame: &Frame) {
        let mut line = serde_json::to_string(frame).expect("frames serialize");
        line.push('\n');
        let _ = self.0.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::next_deadline;

    #[test]
    fn a_slow_sample_skips_the_deadlines_it_overran() {
        assert_eq!(next_deadline(1_000, 100, 1_000), 1_100);
        assert_eq!(next_deadline(1_000, 100, 1_099), 1_100);
        assert_eq!(next_deadline(1_000, 100, 1_100), 1_200, "a deadline met exactly is done");
        assert_eq!(next_deadline(1_000, 100, 1_450), 1_500, "three periods overrun: three deadlines skipped");
    }
}
