//! The kernel oracle: a numasim scenario run on a real Linux kernel under QEMU, written as
//! numasim's result contract (summary.json, timeseries.csv, config.toml) plus guest.json.
//!
//! The host resolves the config into a [`guest::Plan`], packs it with the static guest
//! program (and brd.ko) into an initramfs, boots the kernel on the scenario's NUMA topology,
//! and turns the samples the guest streams over ttyS1 into result files.

pub mod guest_bin;
pub mod gupdev;
pub mod initramfs;
pub mod kernel;
pub mod plan;
pub mod qemu;
pub mod results;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest::{Frame, Plan, Sample};
pub use guest::{RAMDISK_KIB, TraceInfo, TracePlan};
pub use kernel::{KernelSpec, cache_dir, resolve_kernel};
pub use qemu::Accel;
use sim_core::config::Config;

/// Guest memory per node beyond the scenario's VMAs: the kernel, page tables, the initramfs.
const HEADROOM_MIB: u64 = 256;

#[derive(Clone, Debug, PartialEq)]
pub enum OracleError {
    /// Bad input or a missing part (QEMU, a kernel image): exit status 2; the message says
    /// what to install or change.
    Input(String),
    /// The guest failed: a panic, a hang (timeout), an error it reported.
    Guest { message: String, console_tail: String },
    /// The host could not read or write a file.
    Io(String),
}

impl fmt::Display for OracleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OracleError::Input(m) | OracleError::Io(m) => write!(f, "{m}"),
            OracleError::Guest { message, console_tail } => {
                write!(f, "{message}\n--- last lines of the guest console ---\n{console_tail}")
            }
        }
    }
}

impl std::error::Error for OracleError {}

/// A finished kernel run.
#[derive(Clone, Debug)]
pub struct KernelRun {
    pub dir: PathBuf,
    pub release: String,
    pub accel: Accel,
    /// Seconds from QEMU's start to the guest's /init (the kernel's uptime then).
    pub boot_s: f64,
    /// Host seconds the whole boot took.
    pub wall_s: f64,
    /// Guest milliseconds the workload ran.
    pub elapsed_ms: u64,
    /// Touches per second of guest time, per thread.
    pub touch_rates: std::collections::BTreeMap<String, f64>,
    /// The kernel's trace, when one was asked for.
    pub trace: Option<KernelTrace>,
}

/// What tracefs recorded: its `trace` file as text and what the guest said of it.
#[derive(Clone, Debug)]
pub struct KernelTrace {
    pub info: TraceInfo,
    pub text: String,
}

/// Whether `cfg` can run on the oracle at all (its plan, and a guest this host can hold),
/// said before any kernel is fetched or booted.
pub fn preflight(cfg: &Config) -> Result<(), OracleError> {
    plan::plan_of(cfg)?;
    machine_of(cfg).map(|_| ())
}

/// Runs `cfg` on kernel `k` and writes the result contract into `out`.
pub fn run_on_kernel(cfg: &Config, k: &KernelSpec, out: &Path) -> Result<KernelRun, OracleError> {
    run_traced(cfg, k, out, None)
}

/// [`run_on_kernel`], recording `trace`'s tracepoints through tracefs while the workload runs.
pub fn run_traced(
    cfg: &Config,
    k: &KernelSpec,
    out: &Path,
    trace: Option<TracePlan>,
) -> Result<KernelRun, OracleError> {
    let mut plan = plan::plan_of(cfg)?;
    let mut machine = machine_of(cfg)?;
    machine.cmdline = trace.as_ref().map_or(String::new(), trace_cmdline);
    plan.trace = trace;
    // Before anything boots: a kernel the module cannot be built for is bad input.
    let gupdev = if plan.smmus.is_empty() { None } else { Some(gupdev::module_for(k)?) };
    let qemu = qemu::qemu_binary()?;
    let guest = guest_bin::guest_binary()?;
    let io = |p: &Path, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    match std::fs::remove_file(out.join("summary.json")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(out, e)),
        _ => {}
    }
    let initrd = write_initramfs(out, &guest, &plan, k, gupdev.as_deref())?;
    let accel = choose_accel(&qemu, k, &guest)?;
    let timeout = run_timeout(cfg);
    let boot = qemu::boot(&qemu, k, &initrd, &machine, accel, out, timeout)?;
    let _ = std::fs::remove_file(&initrd);
    let frames = read_frames(&boot.data);
    let _ = std::fs::remove_file(&boot.data);
    if let Some(Frame::Unsupported { message }) = frames.iter().find(|f| matches!(f, Frame::Unsupported { .. })) {
        return Err(OracleError::Input(format!("kernel {}: {message}", k.release())));
    }
    let guest_err = |message: String| OracleError::Guest {
        message: if boot.timed_out {
            format!("the guest did not finish within {} s (QEMU was killed): {message}", timeout.as_secs())
        } else {
            message
        },
        console_tail: qemu::console_tail(&boot.console),
    };
    let outcome = collect(&frames).map_err(guest_err)?;
    let trace = match (&plan.trace, &outcome.trace) {
        (Some(_), None) => return Err(guest_err("the guest sent no trace".into())),
        (Some(_), Some(info)) => Some(read_trace(&boot.trace, info).map_err(guest_err)?),
        (None, _) => None,
    };
    let _ = std::fs::remove_file(&boot.trace);
    let run = KernelRun {
        dir: out.to_path_buf(),
        release: outcome.release.clone(),
        accel,
        boot_s: outcome.boot_s,
        wall_s: boot.wall.as_secs_f64(),
        elapsed_ms: outcome.elapsed_ms,
        touch_rates: results::touch_rates(&plan, &outcome.samples),
        trace,
    };
    write_results(cfg, k, &plan, &outcome, &run)?;
    Ok(run)
}

/// What the guest reported.
struct Outcome {
    release: String,
    boot_s: f64,
    setup_ms: u64,
    elapsed_ms: u64,
    samples: Vec<Sample>,
    trace: Option<TraceInfo>,
    /// [`Frame::Files`] by `when`.
    files: BTreeMap<String, BTreeMap<String, String>>,
}

/// The frames of a finished guest run, or what went wrong.
fn collect(frames: &[Frame]) -> Result<Outcome, String> {
    let mut o = Outcome {
        release: String::new(),
        boot_s: 0.0,
        setup_ms: 0,
        elapsed_ms: 0,
        samples: Vec::new(),
        trace: None,
        files: BTreeMap::new(),
    };
    let mut done = false;
    for f in frames {
        match f {
            Frame::Hello { release, uptime_s } => (o.release, o.boot_s) = (release.clone(), *uptime_s),
            Frame::Started { setup_ms } => o.setup_ms = *setup_ms,
            Frame::Sample(s) => o.samples.push(s.clone()),
            Frame::Trace(info) => o.trace = Some(info.clone()),
            Frame::Files { when, files } => {
                o.files.insert(when.clone(), files.clone());
            }
            Frame::Error { message } | Frame::Unsupported { message } => {
                return Err(format!("the guest reported: {message}"));
            }
            Frame::Done { elapsed_ms } => (done, o.elapsed_ms) = (true, *elapsed_ms),
        }
    }
    if o.release.is_empty() {
        return Err("the guest's /init never started (kernel panic or hang before init)".into());
    }
    if !done || o.samples.len() < 2 {
        return Err(format!("the guest stopped after {} samples without finishing", o.samples.len()));
    }
    Ok(o)
}

/// The kernel command line that enables `t`'s tracepoints while the kernel boots, with one
/// CPU up. Enabling them later, from the guest, patches their static keys while the other
/// vCPUs run, and under MTTCG a vCPU can then hit a stale int3 ("Oops: int3" in
/// ttwu_do_activate() on 6.12.117); the guest only clears the buffer and switches it on.
fn trace_cmdline(t: &TracePlan) -> String {
    let events: Vec<String> = t.events.iter().map(|e| e.replacen('/', ":", 1)).collect();
    format!(
        " trace_event={} trace_buf_size={}K trace_clock=mono trace_options=nooverwrite",
        events.join(","),
        t.buffer_kb_per_cpu
    )
}

/// The trace the guest wrote to ttyS2, checked against the length and hash it announced,
/// decompressed.
fn read_trace(path: &Path, info: &TraceInfo) -> Result<KernelTrace, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 != info.bytes || guest::fnv1a(guest::FNV_OFFSET, &bytes) != info.fnv {
        return Err(format!(
            "the trace arrived damaged: {} bytes of {} (or a different checksum)",
            bytes.len(),
            info.bytes
        ));
    }
    let text = miniz_oxide::inflate::decompress_to_vec_zlib(&bytes)
        .map_err(|e| format!("the trace does not decompress: {e}"))?;
    let text = String::from_utf8(text).map_err(|e| format!("the trace is not UTF-8 text: {e}"))?;
    Ok(KernelTrace { info: info.clone(), text })
}

/// Frames from the data port's file; a torn last line (QEMU killed mid-write) is dropped.
fn read_frames(path: &Path) -> Vec<Frame> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l.trim()).ok()).collect()
}

/// The scenario's machine with headroom: each node can hold every VMA (migration may gather
/// them on one node) but never more than the scenario's node size, plus [`HEADROOM_MIB`].
/// Refused when it would not fit in the host's available memory.
fn machine_of(cfg: &Config) -> Result<qemu::Machine, OracleError> {
    let m = &cfg.machine;
    let vmas: u64 = cfg.process.iter().flat_map(|p| p.vma.iter()).map(|v| v.size_mib).sum();
    let mib_per_node = m.memory_per_node_mib.min(vmas.max(1)) + HEADROOM_MIB;
    let total = mib_per_node * u64::from(m.nodes);
    let available = host_available_mib();
    if total > available * 3 / 4 {
        return Err(OracleError::Input(format!(
            "the guest needs {total} MiB ({} nodes of {mib_per_node} MiB) but the host has {available} MiB \
             available: make the scenario's VMAs or machine.memory_per_node_mib smaller",
            m.nodes
        )));
    }
    if m.nodes * m.cpus_per_node > 64 {
        return Err(OracleError::Input(format!(
            "machine: {} CPUs is more than the oracle boots under TCG (64)",
            m.nodes * m.cpus_per_node
        )));
    }
    Ok(qemu::Machine {
        nodes: m.nodes,
        cpus_per_node: m.cpus_per_node,
        mib_per_node,
        distance: m.distance.clone(),
        cmdline: String::new(),
    })
}

fn host_available_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Boot, setup and the workload under TCG, with a margin: a guest past it is hung.
/// `NUMASIM_KERNEL_TIMEOUT_S` overrides it.
fn run_timeout(cfg: &Config) -> Duration {
    if let Some(s) = std::env::var("NUMASIM_KERNEL_TIMEOUT_S").ok().and_then(|v| v.parse().ok()) {
        return Duration::from_secs(s);
    }
    let vmas: u64 = cfg.process.iter().flat_map(|p| p.vma.iter()).map(|v| v.size_mib).sum();
    Duration::from_secs(90 + cfg.run.duration_ms * 2 / 1000 + vmas / 16)
}

fn write_initramfs(
    dir: &Path,
    guest: &Path,
    plan: &Plan,
    k: &KernelSpec,
    gupdev: Option<&Path>,
) -> Result<PathBuf, OracleError> {
    let init = std::fs::read(guest).map_err(|e| OracleError::Io(format!("{}: {e}", guest.display())))?;
    let plan_json = serde_json::to_vec(plan).expect("plans serialize");
    let brd = match (plan.brd_kib, &k.brd) {
        (Some(_), Some(path)) => {
            Some(std::fs::read(path).map_err(|e| OracleError::Io(format!("{}: {e}", path.display())))?)
        }
        _ => None,
    };
    let mut files: Vec<(&str, u32, &[u8])> = vec![("init", 0o755, &init), ("plan.json", 0o644, &plan_json)];
    if let Some(b) = &brd {
        files.push(("brd.ko", 0o644, b));
    }
    let gupdev = gupdev
        .map(|ko| std::fs::read(ko).map_err(|e| OracleError::Io(format!("{}: {e}", ko.display()))))
        .transpose()?;
    if let Some(g) = &gupdev {
        files.push(("gupdev.ko", 0o644, g));
    }
    let dirs = ["dev", "proc", "sys", "tmp"];
    let path = dir.join(".initramfs.cpio");
    std::fs::write(&path, initramfs::newc(&dirs, &files))
        .map_err(|e| OracleError::Io(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// KVM when it boots this kernel, else TCG. `/dev/kvm` exists on machines where KVM does not
/// work (it hangs or stops with an internal error), so a short probe boot decides, once per
/// kernel release; the answer is cached in the kernel cache. `NUMASIM_ACCEL=tcg|kvm` skips it.
pub fn choose_accel(qemu: &Path, k: &KernelSpec, guest: &Path) -> Result<Accel, OracleError> {
    match std::env::var("NUMASIM_ACCEL").as_deref() {
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok("kvm") => return Ok(Accel::Kvm),
        _ => {}
    }
    let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !usable {
        return Ok(Accel::Tcg);
    }
    let cache = cache_dir().join(format!("accel-{}", k.release()));
    if let Ok(answer) = std::fs::read_to_string(&cache) {
        return Ok(if answer.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg });
    }
    let accel = if probe_kvm(qemu, k, guest)? { Accel::Kvm } else { Accel::Tcg };
    let _ = std::fs::create_dir_all(cache_dir());
    let _ = std::fs::write(&cache, accel.name());
    Ok(accel)
}

/// Boots the probe plan under KVM with a short timeout: true when the guest said hello and done.
fn probe_kvm(qemu: &Path, k: &KernelSpec, guest: &Path) -> Result<bool, OracleError> {
    let dir = std::env::temp_dir().join(format!("numasim-kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| OracleError::Io(format!("{}: {e}", dir.display())))?;
    let plan = Plan { probe: true, nodes: 1, cpus_per_node: 1, ..Plan::default() };
    let initrd = write_initramfs(&dir, guest, &plan, k, None)?;
    let m = qemu::Machine {
        nodes: 1,
        cpus_per_node: 1,
        mib_per_node: HEADROOM_MIB,
        distance: None,
        cmdline: String::new(),
    };
    let ok = qemu::boot(qemu, k, &initrd, &m, Accel::Kvm, &dir, Duration::from_secs(20))
        .map(|b| !b.timed_out && read_frames(&b.data).iter().any(|f| matches!(f, Frame::Done { .. })))
        .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

fn write_results(cfg: &Config, k: &KernelSpec, plan: &Plan, o: &Outcome, run: &KernelRun) -> Result<(), OracleError> {
    let dir = &run.dir;
    let write = |name: &str, data: &[u8]| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
            .map_err(|e| OracleError::Io(format!("{}: {e}", dir.join(name).display())))
    };
    write("config.toml", sim_core::config::to_toml(cfg).as_bytes())?;
    write("timeseries.csv", results::timeseries(plan, &o.samples).as_bytes())?;
    let info = results::RunInfo {
        scenario: &cfg.name,
        seed: cfg.run.seed,
        release: &o.release,
        sim_version: k.sim_version().name(),
        gup_policy: sim_core::version::Rules::of(k.sim_version(), None).gup.name(),
        notifier: cfg.kernel.notifier.name(),
        aging: cfg.aging.enabled,
        wall_s: run.wall_s,
    };
    let guest_json = serde_json::json!({
        "release": o.release,
        "kernel_image": k.image,
        "sim_version": k.sim_version().name(),
        "sim_overrides": k.sim_overrides(),
        "accel": run.accel.name(),
        "boot_s": o.boot_s,
        "setup_ms": o.setup_ms,
        "elapsed_ms": o.elapsed_ms,
        "qemu_wall_s": run.wall_s,
        "samples": o.samples.len(),
        "trace": o.trace.as_ref().map(|t| serde_json::json!({
            "enabled": t.enabled,
            "absent": t.absent,
            "dropped_per_cpu": t.dropped_per_cpu,
            "compressed_bytes": t.bytes,
            "ship_ms": t.ship_ms,
        })),
        "touch_rate_per_s": run.touch_rates,
        "final_sample": o.samples.last(),
        "files": o.files,
    });
    write("guest.json", (serde_json::to_string_pretty(&guest_json).expect("json") + "\n").as_bytes())?;
    let summary = results::summary(&info, plan, &o.samples);
    write("summary.json", (serde_json::to_string_pretty(&summary).expect("json") + "\n").as_bytes())
}
