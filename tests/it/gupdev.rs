//! The gupdev module inside the real kernels, through `numasim validate`:
//! a driver's read GUP without FOLL_HONOR_NUMA_FAULT follows protnone PTEs on 6.12 and takes
//! the hinting faults on Debian's 6.1.192; a KVM-like vCPU GUP with the flag takes them on
//! 6.12; a smart notifier leaves stale mappings after mprotect(PROT_NONE) on 6.12. Needs QEMU,
//! the kernel images and their linux-headers packages (`oracle/gupdev/ci.sh` installs them);
//! without them it says why and skips. About 3 minutes under TCG.

use crate::common;

use common::{numasim, oracle_missing, s, scratch};
use serde_json::Value;

/// Why gupdev cannot run on `kernel` here, if it cannot.
fn missing(kernel: &str) -> Option<String> {
    if let Some(why) = oracle_missing(kernel) {
        return Some(why);
    }
    let k = oracle::resolve_kernel(kernel).ok()?;
    oracle::kernel::headers_tree(k.release()).err().map(|e| format!("headers of {}: {e}", k.release()))
}

/// Runs one validate case and returns each kernel's outcome from validate.json.
fn validate(case: &str, kernels: &str) -> Vec<Value> {
    let dir = scratch(&format!("gupdev-{case}"));
    let out = numasim(&["validate", case, "--kernel", kernels, "--out", s(&dir)]);
    let code = out.status.code();
    // 0: within tolerance; 3: a disagreement, which is a result too (the table says which).
    assert!(
        matches!(code, Some(0 | 3)),
        "{case}: exit {code:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("validate.json")).unwrap()).unwrap();
    let outcomes = manifest["cases"][0]["outcomes"].as_array().unwrap().clone();
    for o in &outcomes {
        assert!(o["error"].is_null(), "{case}: {o}");
    }
    outcomes
}

/// The kernel's value of `metric` in an outcome's rows.
fn kernel(outcome: &Value, metric: &str) -> f64 {
    let rows = outcome["rows"].as_array().unwrap();
    let row = rows.iter().find(|r| r["metric"] == metric).unwrap_or_else(|| panic!("no row {metric}"));
    row["kernel"].as_f64().unwrap_or_else(|| panic!("{metric}: {}", row["kernel"]))
}

const BUFFER_PAGES: f64 = 4096.0;
/// A faulting GUP takes at least this many of the buffer's faults even when a loaded host
/// slows the guest's vCPUs (a kernel-thread map with migrations is slow under TCG: one run
/// had faulted 2497 pages when its window closed), against at most 16 for a following one.
const FAULTING: f64 = BUFFER_PAGES / 4.0;

#[test]
fn gupdev_gup_flags_and_notifier_modes_behave_as_on_each_kernel() {
    if let Some(why) = missing("6.1").or_else(|| missing("6.12")) {
        eprintln!("skipped: {why}");
        return;
    }
    let device = validate("gupdev-device-gup", "6.1,6.12");
    let (on_6_1, on_6_12) = (&device[0], &device[1]);
    // 6.1.192: gup_can_follow_protnone() is `flags & FOLL_FORCE`, so the driver's read GUP
    // faults every protnone page of the buffer and pulls it to the device's node.
    assert!(kernel(on_6_1, "hint_faults_by_source.device") >= FAULTING, "{on_6_1}");
    assert!(kernel(on_6_1, "vmstat.numa_pages_migrated") >= FAULTING, "{on_6_1}");
    // 6.12: without FOLL_HONOR_NUMA_FAULT the same GUP follows the protnone PTEs.
    assert!(kernel(on_6_12, "hint_faults_by_source.device") <= 16.0, "{on_6_12}");
    assert!(kernel(on_6_12, "vmstat.numa_pages_migrated") <= 64.0, "{on_6_12}");
    assert!(kernel(on_6_12, "touches.device") >= BUFFER_PAGES, "the device swept the buffer: {on_6_12}");

    let kvm = validate("gupdev-kvm-honor", "6.12");
    assert!(kernel(&kvm[0], "hint_faults_by_source.kvm") >= FAULTING, "{}", kvm[0]);

    let smart = validate("gupdev-mprotect-smart", "6.12");
    assert!(kernel(&smart[0], "stale.mappings_max") >= FAULTING, "{}", smart[0]);
    assert!(kernel(&smart[0], "stale.accesses") > 0.0, "{}", smart[0]);
}
