//! Helpers for the command-line tests.
#![allow(dead_code)]

pub mod fake;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn numasim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_numasim")).args(args).output().expect("numasim runs")
}

/// Runs `args` and expects success.
pub fn ok(args: &[&str]) -> Output {
    let out = numasim(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `args`, expects exit status 2 and returns stderr.
pub fn rejected(args: &[&str]) -> String {
    let out = numasim(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "args {args:?}: stderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("numasim-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Why the oracle cannot run `kernel` here (no QEMU on PATH, a kernel it cannot resolve or
/// fetch), if it cannot: tests that boot say so in one line and skip.
pub fn oracle_missing(kernel: &str) -> Option<String> {
    if let Err(e) = oracle::qemu::qemu_binary() {
        return Some(e.to_string());
    }
    oracle::resolve_kernel(kernel).err().map(|e| format!("kernel {kernel}: {e}"))
}

/// Whether the test `what` skips its real boot of `kernel`: it boots only with
/// NUMASIM_ORACLE=1 and when the oracle can run that kernel here, and says why it skips.
pub fn skips_real_boot(what: &str, kernel: &str) -> bool {
    if std::env::var("NUMASIM_ORACLE").as_deref() != Ok("1") {
        eprintln!("skipping the {what} test: set NUMASIM_ORACLE=1 to boot real kernels under QEMU");
        return true;
    }
    if let Some(why) = oracle_missing(kernel) {
        eprintln!("skipping the {what} test: {why}");
        return true;
    }
    false
}

/// Alive and not a zombie.
pub fn running(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|st| st != "Z" && st != "X")
}

/// The running QEMU processes (real or a stand-in) whose command line names `dir` (their
/// console file is there).
pub fn qemu_naming(dir: &Path) -> Vec<i32> {
    let needle = s(dir).as_bytes().to_vec();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let names = |n: &[u8]| cmdline.windows(n.len()).any(|w| w == n);
            running(*pid) && names(b"qemu-system") && names(&needle)
        })
        .collect()
}

/// Gives `cmd` the default SIGINT and SIGTERM: a shell starts a background job with SIGINT
/// ignored, and numasim, as any Unix tool, leaves an ignored signal ignored; the tests that
/// stop numasim with them must not depend on how the suite was started.
pub fn stoppable(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        })
    }
}
