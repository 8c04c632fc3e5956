//! No child outlives numasim, and a stop leaves no scratch file. Every program the oracle
//! starts (QEMU, apt-get, dpkg-deb, make, cargo) runs in a process group of its own that dies
//! when numasim dies, however it dies: QEMU by its death signal (`PR_SET_PDEATHSIG`, SIGKILL);
//! the others, which start programs of their own, under a shell whose death signal (SIGTERM)
//! makes it kill its whole group (a death signal reaches only the process that set it, not
//! make's compilers or apt's download methods). SIGINT and SIGTERM, once
//! [`install`]ed, wake a watcher thread that kills every such group, removes the registered
//! scratch paths, says what it stopped and exits with 128 + the signal (130, 143).
//!
//! The death signal comes when the thread that started the child ends, not the process: the
//! oracle starts and waits for its children on one thread.
//!
//! The watcher takes the registry's lock and never gives it back: the main thread then blocks
//! at its next registration, so it can neither create a scratch file the watcher has already
//! swept nor report a child the watcher killed as a failure of its own.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What is running and what is scratch, right now.
#[derive(Default)]
struct Registry {
    /// Children by pid (each leads its own process group), with what they are doing.
    children: Vec<(u32, String)>,
    scratch: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { children: Vec::new(), scratch: Vec::new() });

/// The write end of the pipe the signal handler wakes the watcher through.
static WAKE: AtomicI32 = AtomicI32::new(-1);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Catches SIGINT and SIGTERM for the rest of the process (a signal ignored on entry, as in a
/// `nohup` or a shell's background job, stays ignored). Idempotent.
pub fn install() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if WAKE.load(Ordering::SeqCst) >= 0 || unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    // SAFETY: both descriptors were just opened and are owned here alone.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    WAKE.store(fds[1], Ordering::SeqCst);
    std::thread::Builder::new().name("numasim-stop".into()).spawn(move || watch(read)).expect("a thread starts");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe; the sigaction
        // structs are plain data initialised here.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old);
            if old.sa_sigaction == libc::SIG_IGN {
                continue;
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            new.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(sig, &new, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: write(2) on a pipe descriptor is async-signal-safe; a failed write is harmless
    // (the watcher is already awake).
    unsafe {
        libc::write(WAKE.load(Ordering::SeqCst), (&byte as *const u8).cast(), 1);
    }
}

fn watch(read: OwnedFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
    let sig = libc::c_int::from(byte);
    let reg = registry();
    let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
    eprintln!("numasim: {name}: {}", stop_all(&reg));
    std::process::exit(128 + sig);
}

/// Kills every registered child's group, waits (briefly) for them to go, removes the scratch
/// paths, and says what it did.
fn stop_all(reg: &Registry) -> String {
    for (pid, _) in &reg.children {
        // SAFETY: a signal to a process group this process created.
        unsafe {
            libc::kill(-(*pid as libc::pid_t), libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while reg.children.iter().any(|(pid, _)| group_alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let removed: Vec<String> = reg.scratch.iter().filter(|p| remove_path(p)).map(|p| p.display().to_string()).collect();
    let mut said: Vec<String> = reg.children.iter().map(|(pid, what)| format!("killed {what} (pid {pid})")).collect();
    if !removed.is_empty() {
        said.push(format!("removed {}", removed.join(", ")));
    }
    if said.is_empty() {
        said.push("nothing was running".into());
    }
    said.join("; ")
}

/// Whether a process of group `pgid` still runs. A zombie does not count: the main thread
/// reaps the leader, and what it started went to init, which may never reap them.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).any(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
    })
}

/// Removes a file or a directory tree; true when something was there.
fn remove_path(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).is_ok(),
        Ok(_) => std::fs::remove_file(p).is_ok(),
        Err(_) => false,
    }
}

/// A scratch file or directory: registered before it is created, removed when dropped or
/// when numasim is stopped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(path: PathBuf) -> Scratch {
        registry().scratch.push(path.clone());
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_path(&self.0);
        let mut reg = registry();
        if let Some(i) = reg.scratch.iter().position(|p| *p == self.0) {
            reg.scratch.remove(i);
        }
    }
}

/// A running child in its own process group, doing `what`; unregistered once reaped.
pub struct Running {
    child: Child,
}

impl Running {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            forget(self.child.id());
        }
        Ok(status)
    }

    /// Kills the child's whole group and reaps it.
    pub fn kill(mut self) -> io::Result<ExitStatus> {
        // SAFETY: a signal to the group this child leads.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let status = self.child.wait();
        forget(self.child.id());
        status
    }

    pub fn stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }
}

fn forget(pid: u32) {
    let mut reg = registry();
    reg.children.retain(|(p, _)| *p != pid);
}

/// Starts `cmd` in a process group of its own, killed (SIGKILL) when numasim dies; `keep` are
/// descriptors it inherits (as `/dev/fd/N`). For a program that starts none of its own.
pub fn spawn(cmd: &mut Command, what: &str, keep: &[RawFd]) -> io::Result<Running> {
    spawn_with(cmd, what, keep, libc::SIGKILL)
}

/// The shell [`output`] runs a program under: on its death signal it kills its whole group.
const REAPER: &str = "trap 'kill -KILL 0' TERM; \"$@\" & wait $!";

fn under_reaper(cmd: &Command) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c").arg(REAPER).arg("sh").arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => sh.env(key, v),
            None => sh.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        sh.current_dir(dir);
    }
    sh
}

/// Whether `cmd`'s program exists: a path, or a name on the PATH it runs with.
fn findable(cmd: &Command) -> bool {
    let program = Path::new(cmd.get_program());
    if program.components().count() > 1 {
        return program.is_file();
    }
    let path = cmd.get_envs().find(|(key, _)| *key == "PATH").and_then(|(_, v)| v.map(|v| v.to_os_string()));
    let path = path.or_else(|| std::env::var_os("PATH")).unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(program).is_file())
}

fn spawn_with(cmd: &mut Command, what: &str, keep: &[RawFd], death: libc::c_int) -> io::Result<Running> {
    let parent = std::process::id() as libc::pid_t;
    let keep = keep.to_vec();
    // SAFETY: between fork and exec the closure calls only async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, death) != 0 {
                return Err(io::Error::last_os_error());
            }
            // numasim died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            for &fd in &keep {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            Ok(())
        });
    }
    // Registered under the lock it is started under: a stop either comes before the start
    // (and the main thread blocks here) or finds the child.
    let mut reg = registry();
    let child = cmd.spawn()?;
    reg.children.push((child.id(), what.to_string()));
    Ok(Running { child })
}

/// [`Command::output`] of `cmd` in a process group of its own, under a shell that kills the
/// group when numasim dies (stdin from /dev/null).
pub fn output(cmd: &mut Command, what: &str) -> io::Result<Output> {
    let running = start_reaped(cmd, what, true)?;
    let pid = running.child.id();
    let out = running.child.wait_with_output();
    forget(pid);
    out
}

/// [`output`] for a program whose output is of no use: only its exit status.
pub fn status(cmd: &mut Command, what: &str) -> io::Result<ExitStatus> {
    let mut running = start_reaped(cmd, what, false)?;
    let status = running.child.wait();
    forget(running.child.id());
    status
}

/// `cmd` under the reaping shell, its stdout and stderr piped when `capture`, else discarded.
fn start_reaped(cmd: &Command, what: &str, capture: bool) -> io::Result<Running> {
    if !findable(cmd) {
        // What Command::output says of a program that is not there, not the shell's 127.
        return Err(io::Error::new(io::ErrorKind::NotFound, "No such file or directory (os error 2)"));
    }
    let mut sh = under_reaper(cmd);
    let out = || if capture { Stdio::piped() } else { Stdio::null() };
    sh.stdin(Stdio::null()).stdout(out()).stderr(out());
    spawn_with(&mut sh, what, &[], libc::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_path_is_gone_once_dropped_and_no_longer_registered() {
        let dir = std::env::temp_dir().join(format!("oracle-scratch-{}", std::process::id()));
        {
            let s = Scratch::new(dir.clone());
            std::fs::create_dir_all(s.path().join("sub")).unwrap();
            std::fs::write(s.path().join("sub/f"), "x").unwrap();
            assert!(registry().scratch.contains(&dir));
        }
        assert!(!dir.exists());
        assert!(!registry().scratch.contains(&dir));
    }

    #[test]
    fn a_child_leads_its_own_process_group_and_is_forgotten_once_reaped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let running = spawn(&mut cmd, "sleep", &[]).unwrap();
        let pid = running.child.id() as libc::pid_t;
        // SAFETY: getpgid on a child of this process.
        assert_eq!(unsafe { libc::getpgid(pid) }, pid);
        assert!(registry().children.iter().any(|(p, _)| *p as libc::pid_t == pid));
        let status = running.kill().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(!registry().children.iter().any(|(p, _)| *p as libc::pid_t == pid));
    }
}
