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
