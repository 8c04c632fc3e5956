//! The kernel oracle: a numasim scenario run on a real Linux kernel under QEMU, written as
//! numasim's result contract (the `results` crate's files) plus guest.json.
//!
//! The host resolves the config into a [`guest::Plan`], packs it with the static guest
//! program (and brd.ko) into an initramfs, boots the kernel on the scenario's NUMA topology,
//! and turns the samples the guest streams over ttyS1 into result files.

pub mod apt;
pub mod buildroot;
pub mod cache_lock;
pub mod checksums;
pub mod damage;
pub mod guest_bin;
pub mod gupdev;
pub mod host_load;
pub mod initramfs;
pub mod kernel;
pub mod kinds;
pub mod newer;
pub mod plan;
pub mod qemu;
pub mod results;
pub mod schedstat;
pub mod stop;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::results as contract;
use guest::{Frame, Plan, Sample};
pub use guest::{PteWalk, RAMDISK_KIB, TASKS_FILE, TraceInfo, TracePlan};
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
    /// The failed attempts before this run (see [`run_traced`]).
    pub retried: Vec<Retry>,
    /// How busy the host was while QEMU ran.
    pub host: host_load::HostLoad,
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

/// What the scenario needs of the release itself, said before anything boots. Userfaultfd
/// RWP is new in 7.3, and an older kernel's UFFDIO_API refuses UFFD_FEATURE_RWP (EINVAL, as
/// 6.12.118's guest console shows). A CPU-less node is a lower tier only where the kernel
/// takes its abstract distance from HMAT (mt_perf_to_adistance(), v6.7): 6.1.192 booted
/// under QEMU's HMAT put it in DRAM's tier, so there is nothing to promote or demote.
/// `version` is the model's row for `release`.
pub fn check_release(cfg: &Config, release: &str, version: sim_core::config::KernelVersion) -> Result<(), OracleError> {
    let rules = sim_core::version::Rules::of(version, None);
    if !cfg.userfaultfd.is_empty() && !rules.uffd_rwp {
        return Err(OracleError::Input(format!(
            "kernel {release}: the scenario's [[userfaultfd]] needs userfaultfd RWP, new in 7.3; this release's \
             UFFDIO_API refuses UFFD_FEATURE_RWP"
        )));
    }
    if !cfg.machine.memory_node.is_empty() && !rules.hmat_adistance {
        return Err(OracleError::Input(format!(
            "kernel {release}: machine.memory_node needs a kernel that tiers a CPU-less node by its HMAT \
             performance (mt_perf_to_adistance(), 6.7 on); this release puts it in DRAM's tier: use 6.12 or 7.3"
        )));
    }
    if !plan::plan_of(cfg)?.smmus.is_empty() {
        kernel::headers_held(release).map_err(|e| OracleError::Input(format!("kernel {release}: {e}")))?;
    }
    Ok(())
}

/// Runs `cfg` on kernel `k` and writes the result contract into `out`, with
/// [`DEFAULT_RETRIES`] retries of a guest that hung or whose kernel stalled.
pub fn run_on_kernel(cfg: &Config, k: &KernelSpec, out: &Path) -> Result<KernelRun, OracleError> {
    run_traced(cfg, k, out, None, DEFAULT_RETRIES)
}

/// How many times a failed boot is tried again by default when the failure looks like the
/// host's doing (see [`retry_reason`]).
pub const DEFAULT_RETRIES: u32 = 1;

/// A failed attempt that was tried again, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Retry {
    /// 1 for the first boot.
    pub attempt: u32,
    /// What went wrong, and what the console showed.
    pub reason: String,
    /// The failed attempt's console, kept beside the results.
    pub console: String,
}

/// [`run_on_kernel`], recording `trace`'s tracepoints through tracefs while the workload
/// runs, and booting again up to `retries` times when the guest hung (timeout) or its
/// console shows a kernel panic, an RCU stall or a soft lockup: under TCG on a loaded host
/// these come from vCPU threads starved of host time (numa02 on 6.12.117 once stalled for
/// 182 s), not from the scenario. Each failed attempt's console is kept as
/// `console.attempt-<n>.log` and listed in guest.json's `retried`. Before the first boot
/// every result file of an earlier run in `out` is removed (the summary first), and a
/// failed attempt writes none, so a directory with a summary holds one complete run.
pub fn run_traced(
    cfg: &Config,
    k: &KernelSpec,
    out: &Path,
    trace: Option<TracePlan>,
    retries: u32,
) -> Result<KernelRun, OracleError> {
    let io = |p: &Path, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    clear_results(out)?;
    let mut retried: Vec<Retry> = Vec::new();
    loop {
        let attempt = retried.len() as u32 + 1;
        match run_attempt(cfg, k, out, trace.clone(), &retried) {
            Err(OracleError::Guest { message, console_tail }) => {
                let console = out.join("console.log");
                let text =
                    std::fs::read(&console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let reason = retry_reason(&message, &text).filter(|_| retried.len() < retries as usize);
                let Some(reason) = reason else {
                    return Err(OracleError::Guest {
                        message: after_retries(&retried, attempt, &message),
                        console_tail,
                    });
                };
                let kept = format!("console.attempt-{attempt}.log");
                std::fs::rename(&console, out.join(&kept)).map_err(|e| io(&console, e))?;
                eprintln!("kernel {}: attempt {attempt} failed ({reason}); booting again", k.release());
                retried.push(Retry { attempt, reason, console: kept });
            }
            other => return other,
        }
    }
}

/// A last failure's message, after the attempts that were tried again.
fn after_retries(retried: &[Retry], attempt: u32, message: &str) -> String {
    if retried.is_empty() {
        return message.to_string();
    }
    let earlier: String = retried.iter().map(|r| format!("attempt {} failed: {}; ", r.attempt, r.reason)).collect();
    format!("{earlier}attempt {attempt} failed too: {message}")
}

/// Removes an earlier run's result files and kept consoles from `out`, the summary first.
pub fn clear_results(out: &Path) -> Result<(), OracleError> {
    contract::clear(out).map_err(|e| OracleError::Io(e.to_string()))?;
    let entries = std::fs::read_dir(out).map_err(|e| OracleError::Io(format!("{}: {e}", out.display())))?;
    let consoles: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("console.attempt-")))
        .collect();
    for path in consoles {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(OracleError::Io(format!("{}: {e}", path.display())));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why a failed boot deserves another: the guest hung (QEMU was killed at the timeout) or
/// the console shows the kernel starved or dead. None for a failure the scenario or the
/// guest program caused (it would fail again).
pub fn retry_reason(message: &str, console: &str) -> Option<String> {
    const SIGNS: [(&str, &str); 4] = [
        ("Kernel panic", "a kernel panic"),
        ("detected stall", "an RCU stall"),
        ("soft lockup", "a soft lockup"),
        ("hard LOCKUP", "a hard lockup"),
    ];
    // The guest's own error comes first (init's exit then panics the kernel): it would recur.
    if message.starts_with(GUEST_REPORTED) {
        return None;
    }
    let seen: Vec<&str> = SIGNS.iter().filter(|(sign, _)| console.contains(sign)).map(|(_, what)| *what).collect();
    let hung = message.starts_with(TIMED_OUT);
    match (hung, seen.is_empty()) {
        (false, true) => None,
        (true, true) => Some("the guest hung (timeout)".into()),
        (true, false) => Some(format!("the guest hung (timeout); the console shows {}", seen.join(", "))),
        (false, false) => Some(format!("the console shows {}", seen.join(", "))),
    }
}

/// How a guest failure after QEMU was killed at the timeout begins.
const TIMED_OUT: &str = "the guest did not finish within";

/// How an error the guest program reported begins.
const GUEST_REPORTED: &str = "the guest reported:";

/// One boot of `cfg` into `out`; `retried` are the failed attempts before it (for guest.json).
fn run_attempt(
    cfg: &Config,
    k: &KernelSpec,
    out: &Path,
    trace: Option<TracePlan>,
    retried: &[Retry],
) -> Result<KernelRun, OracleError> {
    let mut plan = plan::plan_of(cfg)?;
    let mut machine = machine_of(cfg)?;
    machine.cmdline = kinds::boot_args(cfg) + &trace.as_ref().map_or(String::new(), trace_cmdline);
    plan.trace = trace;
    // A missing QEMU is found before the module's headers are fetched and it is built; a
    // kernel the module cannot be built for is bad input before anything boots.
    let qemu = qemu::qemu_binary()?;
    let gupdev = if plan.smmus.is_empty() { None } else { Some(gupdev::module_for(k)?) };
    let guest = guest_bin::guest_binary()?;
    let initrd = initramfs_of(&guest, &plan, k, gupdev.as_deref())?;
    let accel = choose_accel(&qemu, k, &guest)?;
    let timeout = run_timeout(cfg);
    let boot = qemu::boot(&qemu, k, &initrd, &machine, accel, out, timeout)?;
    let (outcome, trace) = guest_outcome(k, &plan, &read_frames(&boot.data), &boot, timeout)?;
    let run = KernelRun {
        dir: out.to_path_buf(),
        release: outcome.release.clone(),
        accel,
        boot_s: outcome.boot_s,
        wall_s: boot.wall.as_secs_f64(),
        elapsed_ms: outcome.elapsed_ms,
        touch_rates: results::touch_rates(&plan, &outcome.samples),
        trace,
        retried: retried.to_vec(),
        host: boot.host,
    };
    write_results(cfg, k, &plan, &outcome, &run)?;
    Ok(run)
}

/// What a finished boot's guest reported (and its trace), or what went wrong.
fn guest_outcome(
    k: &KernelSpec,
    plan: &Plan,
    frames: &[Frame],
    boot: &qemu::Boot,
    timeout: Duration,
) -> Result<(Outcome, Option<KernelTrace>), OracleError> {
    if let Some(Frame::Unsupported { message }) = frames.iter().find(|f| matches!(f, Frame::Unsupported { .. })) {
        return Err(OracleError::Input(format!("kernel {}: {message}", k.release())));
    }
    let guest_err = |message: String| OracleError::Guest {
        message: if boot.timed_out {
            format!("{TIMED_OUT} {} s (QEMU was killed): {message}", timeout.as_secs())
        } else {
            message
        },
        console_tail: qemu::console_tail(&boot.console),
    };
    let outcome = collect(frames).map_err(guest_err)?;
    let trace = match (&plan.trace, &outcome.trace) {
        (Some(_), None) => return Err(guest_err("the guest sent no trace".into())),
        (Some(_), Some(info)) => Some(read_trace(&boot.trace, info).map_err(guest_err)?),
        (None, _) => None,
    };
    Ok((outcome, trace))
}

/// What the guest reported.
struct Outcome {
    release: String,
    boot_s: f64,
    setup_ms: u64,
    pte_walk: Option<PteWalk>,
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
        pte_walk: None,
        elapsed_ms: 0,
        samples: Vec::new(),
        trace: None,
        files: BTreeMap::new(),
    };
    let mut done = false;
    for f in frames {
        match f {
            Frame::Hello { release, uptime_s } => (o.release, o.boot_s) = (release.clone(), *uptime_s),
            Frame::Started { setup_ms, pte_walk } => (o.setup_ms, o.pte_walk) = (*setup_ms, pte_walk.clone()),
            Frame::Sample(s) => o.samples.push(s.clone()),
            Frame::Trace(info) => o.trace = Some(info.clone()),
            Frame::Files { when, files } => {
                o.files.insert(when.clone(), files.clone());
            }
            Frame::Error { message } | Frame::Unsupported { message } => {
                return Err(format!("{GUEST_REPORTED} {message}"));
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
fn read_trace(bytes: &[u8], info: &TraceInfo) -> Result<KernelTrace, String> {
    if bytes.len() as u64 != info.bytes || guest::fnv1a(guest::FNV_OFFSET, bytes) != info.fnv {
        return Err(format!(
            "the trace arrived damaged: {} bytes of {} (or a different checksum)",
            bytes.len(),
            info.bytes
        ));
    }
    let text = miniz_oxide::inflate::decompress_to_vec_zlib(bytes)
        .map_err(|e| format!("the trace does not decompress: {e}"))?;
    let text = String::from_utf8(text).map_err(|e| format!("the trace is not UTF-8 text: {e}"))?;
    Ok(KernelTrace { info: info.clone(), text })
}

/// Frames from what the data port received; a torn last line (QEMU killed mid-write) is dropped.
fn read_frames(bytes: &[u8]) -> Vec<Frame> {
    String::from_utf8_lossy(bytes).lines().filter_map(|l| serde_json::from_str(l.trim()).ok()).collect()
}

/// The scenario's machine with headroom: each node can hold every VMA (migration may gather
/// them on one node) but never more than the scenario's node size, plus [`HEADROOM_MIB`].
/// Refused when it would not fit in the host's available memory.
fn machine_of(cfg: &Config) -> Result<qemu::Machine, OracleError> {
    let m = &cfg.machine;
    if let Some(i) = m.memory_node.iter().position(|n| n.abstract_distance.is_some()) {
        return Err(OracleError::Input(format!(
            "machine.memory_node[{i}].abstract_distance: the oracle's kernel computes a CPU-less node's abstract \
             distance from the HMAT latency QEMU reports (latency_ns); no driver types it"
        )));
    }
    let vmas: u64 = cfg.process.iter().flat_map(|p| p.vma.iter()).map(|v| v.size_mib).sum();
    let node_mib = |node_mib: u64| node_mib.min(vmas.max(1)) + HEADROOM_MIB;
    let mib_per_node = node_mib(m.memory_per_node_mib);
    let memory_nodes: Vec<qemu::MemoryNode> = m
        .memory_node
        .iter()
        .map(|n| qemu::MemoryNode { mib: node_mib(n.memory_mib), latency_ns: n.latency_ns })
        .collect();
    let total = mib_per_node * u64::from(m.nodes) + memory_nodes.iter().map(|n| n.mib).sum::<u64>();
    let available = host_available_mib();
    if total > available * 3 / 4 {
        return Err(OracleError::Input(format!(
            "the guest needs {total} MiB ({} nodes of {mib_per_node} MiB and {} CPU-less) but the host has \
             {available} MiB available: make the scenario's VMAs or machine.memory_per_node_mib smaller",
            m.nodes,
            memory_nodes.len()
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
        memory_nodes,
        local_latency_ns: m.local_latency_ns,
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

/// The guest's initramfs, as a memory file QEMU reads.
fn initramfs_of(
    guest: &Path,
    plan: &Plan,
    k: &KernelSpec,
    gupdev: Option<&Path>,
) -> Result<std::fs::File, OracleError> {
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
    qemu::memory_file("numasim-initramfs", &initramfs::newc(&dirs, &files))
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
    let entry = format!("accel-{}", k.release());
    let _lock = cache_lock::lock_entry(&cache_dir(), &entry)?;
    let cache = cache_dir().join(entry);
    if let Ok(answer) = std::fs::read_to_string(&cache) {
        return Ok(if answer.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg });
    }
    let accel = if probe_kvm(qemu, k, guest)? { Accel::Kvm } else { Accel::Tcg };
    let _ = std::fs::write(&cache, accel.name());
    Ok(accel)
}

/// Boots the probe plan under KVM with a short timeout: true when the guest said hello and done.
fn probe_kvm(qemu: &Path, k: &KernelSpec, guest: &Path) -> Result<bool, OracleError> {
    let dir = stop::Scratch::new(std::env::temp_dir().join(format!("numasim-kvm-probe-{}", std::process::id())));
    let dir = dir.path();
    std::fs::create_dir_all(dir).map_err(|e| OracleError::Io(format!("{}: {e}", dir.display())))?;
    let plan = Plan { probe: true, nodes: 1, cpus_per_node: 1, ..Plan::default() };
    let initrd = initramfs_of(guest, &plan, k, None)?;
    let m = qemu::Machine {
        nodes: 1,
        cpus_per_node: 1,
        mib_per_node: HEADROOM_MIB,
        distance: None,
        memory_nodes: Vec::new(),
        local_latency_ns: 100,
        cmdline: String::new(),
    };
    let ok = qemu::boot(qemu, k, &initrd, &m, Accel::Kvm, dir, Duration::from_secs(20))
        .map(|b| !b.timed_out && read_frames(&b.data).iter().any(|f| matches!(f, Frame::Done { .. })))
        .unwrap_or(false);
    Ok(ok)
}

fn write_results(cfg: &Config, k: &KernelSpec, plan: &Plan, o: &Outcome, run: &KernelRun) -> Result<(), OracleError> {
    let config = sim_core::config::to_toml(cfg);
    let series = results::timeseries(plan, &o.samples);
    let info = results::RunInfo {
        scenario: &cfg.name,
        seed: cfg.run.seed,
        release: &o.release,
        sim_version: k.sim_version().name(),
        gup_policy: sim_core::version::Rules::of(k.sim_version(), None).gup.name(),
        notifier: cfg.kernel.notifier.name(),
        aging: cfg.aging.enabled,
        numa_balancing: cfg.kernel.numa_balancing.mode(),
        wall_s: run.wall_s,
    };
    // What a sched-domain fixture (tests/fixtures/sched-domains) holds, read from `files`.
    let domains = o.files.get("start").and_then(|f| schedstat::kernel_domains(f, plan.nodes * plan.cpus_per_node).ok());
    let guest_json = serde_json::json!({
        "release": o.release,
        "kernel_image": k.image,
        "sim_version": k.sim_version().name(),
        "sim_overrides": k.sim_overrides(),
        "sim_rules_note": k.rules_note(),
        "accel": run.accel.name(),
        "boot_s": o.boot_s,
        "setup_ms": o.setup_ms,
        "pte_walk": o.pte_walk,
        "elapsed_ms": o.elapsed_ms,
        "qemu_wall_s": run.wall_s,
        "host_load": run.host,
        "samples": o.samples.len(),
        "trace": o.trace.as_ref().map(|t| serde_json::json!({
            "enabled": t.enabled,
            "absent": t.absent,
            "dropped_per_cpu": t.dropped_per_cpu,
            "compressed_bytes": t.bytes,
            "ship_ms": t.ship_ms,
        })),
        "touch_rate_per_s": run.touch_rates,
        "cpu_share": results::cpu_shares(plan, &o.samples),
        "retried": run.retried,
        "final_sample": o.samples.last(),
        "files": o.files,
        "sched_domains": domains,
        "memory_tiers": o.files.get("start").map(memory_tiers),
    });
    let guest_text = serde_json::to_string_pretty(&guest_json).expect("json") + "\n";
    let summary = results::summary(&info, plan, &o.samples, &o.files)
        .map_err(|m| OracleError::Input(format!("kernel {}: {m}", o.release)))?;
    let summary = summary.to_text();
    let files: [(&str, &[u8]); 4] = [
        (contract::CONFIG, config.as_bytes()),
        (contract::TIMESERIES, series.as_bytes()),
        (contract::GUEST, guest_text.as_bytes()),
        (contract::SUMMARY, summary.as_bytes()),
    ];
    let sums = checksums::text(&files);
    let written = [files[0], files[1], files[2], (contract::CHECKSUMS, sums.as_bytes())];
    write_run_files(&run.dir, &written, summary.as_bytes())
}

/// Each memory tier's node list as the guest read it at the start (`memory_tier4`: `0`).
fn memory_tiers(files: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let tier = |path: &str| {
        let rest = path.strip_prefix(guest::MEMORY_TIERING_DIR)?.strip_prefix('/')?;
        Some(rest.strip_suffix("/nodelist")?.to_string())
    };
    files.iter().filter_map(|(path, list)| Some((tier(path)?, list.clone()))).collect()
}

/// A kernel run's files through the contract's one writer; a temporary file is removed also
/// on a SIGINT or SIGTERM.
fn write_run_files(dir: &Path, files: &[(&str, &[u8])], summary: &[u8]) -> Result<(), OracleError> {
    contract::write_run(dir, files, summary, stop::Scratch::new).map_err(|e| OracleError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console of numa02 on 6.12.117 that stalled under TCG (2026-12-01; its first lines).
    const RCU_STALL: &str = "[   23.236289] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
        [   23.236289] rcu: \t2-...!: (0 ticks this GP) idle=6178/0/0x0 softirq=17/17 fqs=0 (false positive?)\n";

    /// A CPU-less node boots under HMAT; a typed one cannot be realised and is refused
    /// before anything boots, naming the key.
    #[test]
    fn a_cpu_less_node_boots_with_its_latency_and_a_typed_one_is_refused() {
        let cfg = workloads::catalogue::resolve("tiering", &[]).expect("built-in");
        let m = machine_of(&cfg).expect("the host holds the tiering scenario");
        assert_eq!(m.memory_nodes, [qemu::MemoryNode { mib: 288 + HEADROOM_MIB, latency_ns: 250 }]);
        let typed = ["machine.memory_node.0.abstract_distance=640".to_string()];
        let cfg = workloads::catalogue::resolve("tiering", &typed).expect("built-in");
        let err = preflight(&cfg).unwrap_err().to_string();
        assert!(err.contains("machine.memory_node[0].abstract_distance"), "{err}");
    }

    #[test]
    fn guest_json_names_each_tier_and_its_nodes() {
        let files = BTreeMap::from([
            (format!("{}/memory_tier4/nodelist", guest::MEMORY_TIERING_DIR), "0".to_string()),
            (format!("{}/memory_tier11/nodelist", guest::MEMORY_TIERING_DIR), "1".to_string()),
            ("/proc/schedstat".to_string(), "version 15".to_string()),
        ]);
        let tiers: Vec<_> = memory_tiers(&files).into_iter().collect();
        assert_eq!(tiers, [("memory_tier11".into(), "1".into()), ("memory_tier4".into(), "0".into())]);
    }

    #[test]
    fn a_cpu_less_node_needs_a_release_with_hmat_tiers() {
        use sim_core::config::KernelVersion;
        let cfg = workloads::catalogue::resolve("tiering", &[]).expect("built-in");
        assert!(check_release(&cfg, "6.12.118+deb12-amd64", KernelVersion::V6_12).is_ok());
        assert!(check_release(&cfg, "7.3.4+deb13-amd64", KernelVersion::V7_3).is_ok());
        let e = check_release(&cfg, "6.1.0-57-amd64", KernelVersion::V6_1Debian12).unwrap_err().to_string();
        assert!(e.contains("6.1.0-57") && e.contains("machine.memory_node"), "{e}");
    }

    #[test]
    fn userfaultfd_rwp_needs_a_7_3_release() {
        use sim_core::config::KernelVersion;
        let src = sim_core::config::Source {
            origin: "test".into(),
            text: include_str!("../../configs/uffd-rwp-procmem.toml").into(),
        };
        let cfg = sim_core::config::load(&src, &[]).unwrap();
        assert!(check_release(&cfg, "7.3.4+deb13-amd64", KernelVersion::V7_3).is_ok());
        let e = check_release(&cfg, "6.12.118+deb12-amd64", KernelVersion::V6_12).unwrap_err().to_string();
        assert!(e.contains("6.12.118") && e.contains("new in 7.3"), "{e}");
        let plain = Config { userfaultfd: Vec::new(), action: Vec::new(), ..cfg };
        assert!(check_release(&plain, "6.12.118+deb12-amd64", KernelVersion::V6_12).is_ok());
    }

    #[test]
    fn a_hang_or_a_stalled_kernel_is_worth_a_retry_and_a_guest_error_is_not() {
        let hung = "the guest did not finish within 182 s (QEMU was killed): the guest stopped after 19 samples";
        let why = retry_reason(hung, RCU_STALL).unwrap();
        assert!(why.contains("timeout") && why.contains("RCU stall"), "{why}");
        assert_eq!(retry_reason(hung, "[ 1.0] Run /init as init process\n").unwrap(), "the guest hung (timeout)");
        let panic = "[ 3.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\n";
        let why = retry_reason("the guest stopped after 3 samples without finishing", panic).unwrap();
        assert!(why.contains("kernel panic") && !why.contains("timeout"), "{why}");
        let reported = "the guest reported: mmap(67108864 bytes): Cannot allocate memory";
        assert_eq!(retry_reason(reported, ""), None);
        assert_eq!(retry_reason(reported, panic), None, "init's exit after its error panics the kernel");
        assert_eq!(retry_reason("the guest's /init never started", "[ 0.5] Linux version 6.12\n"), None);
    }

    #[test]
    fn clearing_a_run_directory_removes_every_result_and_kept_console_but_nothing_else() {
        let dir = std::env::temp_dir().join(format!("numasim-oracle-clear-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kept = ["console.log", "trace.txt", "notes.md"];
        for f in contract::RUN_FILES.iter().chain(&["console.attempt-1.log", "console.attempt-2.log"]).chain(&kept) {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        clear_results(&dir).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["console.log", "notes.md", "trace.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kernel_run_that_cannot_be_written_leaves_no_temporary_file_and_no_summary() {
        let dir = std::env::temp_dir().join(format!("numasim-oracle-unwritable-{}", std::process::id()));
        // A non-empty directory where guest.json goes: its temporary file is written, the
        // rename fails.
        std::fs::create_dir_all(dir.join(contract::GUEST).join("x")).unwrap();
        std::fs::write(dir.join(contract::SUMMARY), "an earlier run").unwrap();
        let files: [(&str, &[u8]); 3] =
            [(contract::CONFIG, b"c"), (contract::TIMESERIES, b"t"), (contract::GUEST, b"g")];
        let err = write_run_files(&dir, &files, b"s").unwrap_err().to_string();
        assert!(err.contains(contract::GUEST), "{err}");
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [contract::CONFIG, contract::GUEST, contract::TIMESERIES]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_last_failure_says_what_each_earlier_attempt_died_of() {
        let r = Retry { attempt: 1, reason: "the console shows an RCU stall".into(), console: "c".into() };
        let m = after_retries(&[r], 2, "the guest stopped after 3 samples without finishing");
        assert_eq!(
            m,
            "attempt 1 failed: the console shows an RCU stall; attempt 2 failed too: the guest stopped after 3 \
             samples without finishing"
        );
        assert_eq!(after_retries(&[], 1, "boom"), "boom");
    }

    #[test]
    fn the_started_frame_brings_the_timed_pte_walk_and_an_older_guests_frame_none() {
        let walk = PteWalk {
            pages: 2048,
            busy_cpus: 3,
            round_trips: 5,
            cpu_ns: 40_000_000,
            wall_ns: 41_000_000,
            one_page_cpu_ns: Some(16_000_000),
            one_page_wall_ns: Some(16_500_000),
        };
        let frames = |started: Frame| {
            vec![
                Frame::Hello { release: "6.12.117+deb12-amd64".into(), uptime_s: 4.0 },
                started,
                Frame::Sample(Sample::default()),
                Frame::Sample(Sample::default()),
                Frame::Done { elapsed_ms: 8000 },
            ]
        };
        let o = collect(&frames(Frame::Started { setup_ms: 300, pte_walk: Some(walk.clone()) })).unwrap();
        assert_eq!((o.setup_ms, o.pte_walk), (300, Some(walk)));
        let older: Frame = serde_json::from_str(r#"{"Started":{"setup_ms":250}}"#).unwrap();
        let o = collect(&frames(older)).unwrap();
        assert_eq!((o.setup_ms, o.pte_walk), (250, None));
    }
}
