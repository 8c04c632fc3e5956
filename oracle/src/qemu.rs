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
    /// SLIT rows; None for 10 local, 20 remote.
    pub distance: Option<Vec<Vec<u32>>>,
    /// More kernel command line (the tracepoints to enable at boot).
    pub cmdline: String,
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
    let finished = |timed_out| Boot {
        console: console.clone(),
        data: contents(&data),
        trace: contents(&trace),
        wall: start.elapsed(),
        timed_out,
    };
    loop {
        if let Some(status) = child.try_wait().map_err(|e| OracleError::Io(format!("waiting for QEMU: {e}")))? {
            if !status.success() {
                let mut err = String::new();
                let _ = child.stderr().map(|mut s| s.read_to_string(&mut err));
                return Err(OracleError::Guest {
                    message: format!("QEMU exited with {status}: {}", err.trim()),
                    console_tail: console_tail(&console),
                });
            }
            return Ok(finished(false));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            return Ok(finished(true));
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
