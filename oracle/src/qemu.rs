//! Booting the guest: qemu-system-x86_64 with the scenario's NUMA topology, the kernel
//! console on ttyS0, the guest's frames on ttyS1 and its trace on ttyS2 (three files), under
//! a timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{KernelSpec, OracleError};

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
    /// SLIT rows; None for 10 local, 20 remote.
    pub distance: Option<Vec<Vec<u32>>>,
    /// More kernel command line (the tracepoints to enable at boot).
    pub cmdline: String,
}

/// What a boot left behind.
pub struct Boot {
    pub console: PathBuf,
    pub data: PathBuf,
    /// What the guest wrote to ttyS2 (the kernel's trace, when it recorded one).
    pub trace: PathBuf,
    pub wall: Duration,
    pub timed_out: bool,
}

/// qemu-system-x86_64 from PATH.
pub fn qemu_binary() -> Result<PathBuf, OracleError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| OracleError::Input(format!("qemu-system-x86_64 is not installed: run `{INSTALL_QEMU}`")))
}

/// Boots `kernel` with `initrd` on `m` and waits for QEMU to exit (the guest powers off) or
/// for `timeout`, after which QEMU is killed.
pub fn boot(
    qemu: &Path,
    kernel: &KernelSpec,
    initrd: &Path,
    m: &Machine,
    accel: Accel,
    dir: &Path,
    timeout: Duration,
) -> Result<Boot, OracleError> {
    let console = dir.join("console.log");
    let data = dir.join(".frames.jsonl");
    let trace = dir.join(".trace.raw");
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", accel.arg(), "-machine", "q35", "-cpu", "max", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-smp")
        .arg(format!("{},sockets={},cores={},threads=1", m.nodes * m.cpus_per_node, m.nodes, m.cpus_per_node))
        .arg("-m")
        .arg(format!("{}M", m.mib_per_node * u64::from(m.nodes)))
        .args(topology_args(m))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", data.display()))
        .arg("-serial")
        .arg(format!("file:{}", trace.display()))
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
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
    let mut child =
        cmd.spawn().map_err(|e| OracleError::Input(format!("{}: {e}: run `{INSTALL_QEMU}`", qemu.display())))?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| OracleError::Io(format!("waiting for QEMU: {e}")))? {
            if !status.success() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
                return Err(OracleError::Guest {
                    message: format!("QEMU exited with {status}: {}", err.trim()),
                    console_tail: console_tail(&console),
                });
            }
            return Ok(Boot { console, data, trace, wall: start.elapsed(), timed_out: false });
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Boot { console, data, trace, wall: start.elapsed(), timed_out: true });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `-object memory-backend-ram`, `-numa node` per node (CPUs numbered node by node) and
/// `-numa dist` per pair of nodes.
fn topology_args(m: &Machine) -> Vec<String> {
    let mut args = Vec::new();
    for n in 0..m.nodes {
        let first = n * m.cpus_per_node;
        args.push("-object".into());
        args.push(format!("memory-backend-ram,id=m{n},size={}M", m.mib_per_node));
        args.push("-numa".into());
        args.push(format!("node,nodeid={n},cpus={first}-{},memdev=m{n}", first + m.cpus_per_node - 1));
    }
    for src in 0..m.nodes {
        for dst in 0..m.nodes {
            if src != dst {
                let val = m.distance.as_ref().map_or(20, |d| d[src as usize][dst as usize]);
                args.push("-numa".into());
                args.push(format!("dist,src={src},dst={dst},val={val}"));
            }
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
            cmdline: String::new(),
        };
        let args = topology_args(&m).join(" ");
        assert_eq!(
            args,
            "-object memory-backend-ram,id=m0,size=512M -numa node,nodeid=0,cpus=0-1,memdev=m0 \
             -object memory-backend-ram,id=m1,size=512M -numa node,nodeid=1,cpus=2-3,memdev=m1 \
             -numa dist,src=0,dst=1,val=31 -numa dist,src=1,dst=0,val=31"
        );
    }
}
