//! Booting the guest: qemu-system-x86_64 with the scenario's NUMA topology, the kernel
//! console on ttyS0, the guest's frames on ttyS1 and its trace on ttyS2, under a timeout.
//! Only the console is a file in the run directory: the initramfs, the frames and the trace
//! are memory files (memfd) QEMU reaches as `/dev/fd/N`, so nothing of them is left behind
//! whatever ends numasim, SIGKILL included.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{KernelSpec, OracleError, stop};

/// The apt-get line that installs QEMU.
pub const INSTALL_QEMU: &str = "apt-get install -y --no-install-recommends qemu-system-x86";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Multi-threaded TCG: one host thread per vCPU.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=multi",
        }
    }
}

/// The machine to boot.
pub struct Machine {
    pub nodes: u32,
    pub cpus_per_node: u32,
    pub mib_per_node: u64,
    /// SLIT rows over every node, CPU-less ones included; None for 10 local, 20 remote.
    pub distance: Option<Vec<Vec<u32>>>,
    /// Nodes with memory and no CPUs, numbered after the CPU nodes; any makes the machine
    /// report HMAT (`-machine hmat=on`).
    pub memory_nodes: Vec<MemoryNode>,
    /// HMAT's access latency from a CPU node to its own memory.
    pub local_latency_ns: u64,
    /// More kernel command line (the tracepoints to enable at boot).
    pub cmdline: String,
}

/// A CPU-less node as QEMU builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNode {
    pub mib: u64,
    /// HMAT's access latency to it from every CPU node.
    pub latency_ns: u64,
}

/// The access bandwidth HMAT reports for every initiator and target. Equal everywhere, so
/// mt_perf_to_adistance() (mm/memory-tiers.c) weighs latency alone, as the model does;
/// without any bandwidth entry it returns -EINVAL and the node stays in DRAM's tier.
const HMAT_BANDWIDTH: &str = "10G";

impl Machine {
    fn cpus(&self) -> u32 {
        self.nodes * self.cpus_per_node
    }

    fn total_mib(&self) -> u64 {
        self.mib_per_node * u64::from(self.nodes) + self.memory_nodes.iter().map(|n| n.mib).sum::<u64>()
    }

    fn machine_arg(&self) -> &'static str {
        if self.memory_nodes.is_empty() { "q35" } else { "q35,hmat=on" }
    }
}

/// What a boot left behind.
pub struct Boot {
    pub console: PathBuf,
    /// What the guest wrote to ttyS1 (its frames).
    pub data: Vec<u8>,
    /// What the guest wrote to ttyS2 (the kernel's trace, when it recorded one).
    pub trace: Vec<u8>,
    pub wall: Duration,
    pub timed_out: bool,
    /// How busy the host was meanwhile.
    pub host: crate::host_load::HostLoad,
}

/// qemu-system-x86_64 from PATH.
pub fn qemu_binary() -> Result<PathBuf, OracleError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| OracleError::Input(format!("qemu-system-x86_64 is not installed: run `{INSTALL_QEMU}`")))
}

/// An anonymous file in memory holding `contents`, named `name` in /proc.
pub fn memory_file(name: &str, contents: &[u8]) -> Result<File, OracleError> {
    let io = |e: std::io::Error| OracleError::Io(format!("a memory file for {name}: {e}"));
    let cname = std::ffi::CString::new(name).expect("names have no NUL");
    // SAFETY: memfd_create takes a NUL-terminated name; the descriptor it returns is owned here.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(contents).map_err(io)?;
    Ok(file)
}

/// Everything written to a memory file, from its start.
fn contents(mut file: &File) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = file.rewind().and_then(|_| file.read_to_end(&mut bytes));
    bytes
}

fn fd_path(file: &File) -> String {
    format!("/dev/fd/{}", file.as_raw_fd())
}

/// Boots `kernel` with `initrd` on `m` and waits for QEMU to exit (the guest powers off) or
/// for `timeout`, after which QEMU is killed.
pub fn boot(
    qemu: &Path,
    kernel: &KernelSpec,
    initrd: &File,
    m: &Machine,
    accel: Accel,
    dir: &Path,
    timeout: Duration,
) -> Result<Boot, OracleError> {
    let console = dir.join("console.log");
    let data = memory_file("numasim-frames", b"")?;
    let trace = memory_file("numasim-trace", b"")?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", accel.arg(), "-machine", m.machine_arg(), "-cpu", "max", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-smp")
        .arg(format!("{},sockets={},cores={},threads=1", m.cpus(), m.nodes, m.cpus_per_node))
        .arg("-m")
        .arg(format!("{}M", m.total_mib()))
        .args(topology_args(m))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", fd_path(&data)))
        .arg("-serial")
        .arg(format!("file:{}", fd_path(&trace)))
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(fd_path(initrd))
        .arg("-append")
        // schedstats from boot (setup_schedstats()): switching the sched_schedstats sysctl
        // at run time patches a static key while the other vCPUs run, which oopsed 6.12
        // under MTTCG (int3 in try_to_wake_up()), as trace events enabled at run time did.
        // sched_verbose: 6.12, unlike 6.1, shows the sched domains in debugfs (sched/domains/cpuN)
        // only with it (update_sched_domain_debugfs()); it changes no scheduling decision.
        .arg(format!(
            "console=ttyS0 panic=-1 rdinit=/init loglevel=4 schedstats=enable sched_verbose brd.rd_nr=1 \
             brd.rd_size={}{}",
            crate::RAMDISK_KIB,
            m.cmdline
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let what = format!("QEMU (kernel {}, into {})", kernel.release(), dir.display());
    let fds = [initrd.as_raw_fd(), data.as_raw_fd(), trace.as_raw_fd()];
    let mut child = stop::spawn(&mut cmd, &what, &fds)
        .map_err(|e| OracleError::Input(format!("{}: {e}: run `{INSTALL_QEMU}`", qemu.display())))?;
    let mut meter = crate::host_load::Meter::start(child.id());
    let finished = |timed_out, meter: &crate::host_load::Meter| Boot {
        console: console.clone(),
        data: contents(&data),
        trace: contents(&trace),
        wall: start.elapsed(),
        timed_out,
        host: meter.finish(),
    };
    loop {
        meter.sample();
        if let Some(status) = child.try_wait().map_err(|e| OracleError::Io(format!("waiting for QEMU: {e}")))? {
            if !status.success() {
                let mut err = String::new();
                let _ = child.stderr().map(|mut s| s.read_to_string(&mut err));
                return Err(OracleError::Guest {
                    message: format!("QEMU exited with {status}: {}", err.trim()),
                    console_tail: console_tail(&console),
                });
            }
            return Ok(finished(false, &meter));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            return Ok(finished(true, &meter));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `-object memory-backend-ram`, `-numa node` per node (CPUs numbered node by node, CPU-less
/// nodes after them), `-numa dist` per pair of nodes and, with CPU-less nodes, HMAT's
/// latency and bandwidth from every CPU node to every node.
fn topology_args(m: &Machine) -> Vec<String> {
    let hmat = !m.memory_nodes.is_empty();
    let mut args = Vec::new();
    let node = |args: &mut Vec<String>, n: u32, mib: u64, cpus: String, initiator: &str| {
        args.extend(["-object".into(), format!("memory-backend-ram,id=m{n},size={mib}M")]);
        args.extend(["-numa".into(), format!("node,nodeid={n}{cpus},memdev=m{n}{initiator}")]);
    };
    for n in 0..m.nodes {
        let first = n * m.cpus_per_node;
        // QEMU wants every node's initiator named under HMAT, a CPU node's being itself.
        let initiator = if hmat { format!(",initiator={n}") } else { String::new() };
        let cpus = format!(",cpus={first}-{}", first + m.cpus_per_node - 1);
        node(&mut args, n, m.mib_per_node, cpus, &initiator);
    }
    for (i, mem) in m.memory_nodes.iter().enumerate() {
        node(&mut args, m.nodes + i as u32, mem.mib, String::new(), ",initiator=0");
    }
    let all = m.nodes + m.memory_nodes.len() as u32;
    for src in 0..all {
        for dst in (0..all).filter(|&d| d != src) {
            let val = m.distance.as_ref().map_or(20, |d| d[src as usize][dst as usize]);
            args.extend(["-numa".into(), format!("dist,src={src},dst={dst},val={val}")]);
        }
    }
    if hmat {
        args.extend(hmat_args(m, all));
    }
    args
}

/// `-numa hmat-lb` entries, initiator by initiator: a CPU node's own memory at
/// `local_latency_ns`, another CPU node's at the SLIT's multiple of it (as the model charges
/// it), a CPU-less node's at its latency from any CPU node; one bandwidth everywhere.
fn hmat_args(m: &Machine, all: u32) -> Vec<String> {
    let mut args = Vec::new();
    for initiator in 0..m.nodes {
        for target in 0..all {
            let latency = match target.checked_sub(m.nodes) {
                Some(i) => m.memory_nodes[i as usize].latency_ns,
                None if target == initiator => m.local_latency_ns,
                None => {
                    let d = m.distance.as_ref().map_or(20, |d| d[initiator as usize][target as usize]);
                    m.local_latency_ns * u64::from(d) / 10
                }
            };
            let lb = format!("hmat-lb,initiator={initiator},target={target},hierarchy=memory");
            args.extend(["-numa".into(), format!("{lb},data-type=access-latency,latency={latency}")]);
            args.extend(["-numa".into(), format!("{lb},data-type=access-bandwidth,bandwidth={HMAT_BANDWIDTH}")]);
        }
    }
    args
}

/// The last lines of the kernel console, to show what went wrong.
pub fn console_tail(console: &Path) -> String {
    let text = std::fs::read(console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_gives_each_node_its_cpus_memory_and_distances() {
        let m = Machine {
            nodes: 2,
            cpus_per_node: 2,
            mib_per_node: 512,
            distance: Some(vec![vec![10, 31], vec![31, 10]]),
            memory_nodes: Vec::new(),
            local_latency_ns: 100,
            cmdline: String::new(),
        };
        assert_eq!(m.machine_arg(), "q35");
        let args = topology_args(&m).join(" ");
        assert_eq!(
            args,
            "-object memory-backend-ram,id=m0,size=512M -numa node,nodeid=0,cpus=0-1,memdev=m0 \
             -object memory-backend-ram,id=m1,size=512M -numa node,nodeid=1,cpus=2-3,memdev=m1 \
             -numa dist,src=0,dst=1,val=31 -numa dist,src=1,dst=0,val=31"
        );
    }

    /// A CPU-less node: its own memory backend with node 0 as initiator, HMAT switched on,
    /// and latency and bandwidth entries from the CPU node to both nodes, as the boots by
    /// hand in docs/ORACLE.md put node 1 in memory_tier11.
    #[test]
    fn a_cpu_less_node_gets_hmat_latency_and_bandwidth_from_every_cpu_node() {
        let m = Machine {
            nodes: 1,
            cpus_per_node: 2,
            mib_per_node: 320,
            distance: None,
            memory_nodes: vec![MemoryNode { mib: 512, latency_ns: 250 }],
            local_latency_ns: 100,
            cmdline: String::new(),
        };
        assert_eq!((m.machine_arg(), m.total_mib()), ("q35,hmat=on", 832));
        let args = topology_args(&m).join(" ");
        assert_eq!(
            args,
            "-object memory-backend-ram,id=m0,size=320M -numa node,nodeid=0,cpus=0-1,memdev=m0,initiator=0 \
             -object memory-backend-ram,id=m1,size=512M -numa node,nodeid=1,memdev=m1,initiator=0 \
             -numa dist,src=0,dst=1,val=20 -numa dist,src=1,dst=0,val=20 \
             -numa hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-latency,latency=100 \
             -numa hmat-lb,initiator=0,target=0,hierarchy=memory,data-type=access-bandwidth,bandwidth=10G \
             -numa hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-latency,latency=250 \
             -numa hmat-lb,initiator=0,target=1,hierarchy=memory,data-type=access-bandwidth,bandwidth=10G"
        );
    }
}
