//! The newer kernels of Debian's trixie-backports and sid on the oracle: 7.3 boots a short
//! numa02, a release the suites do not hold is refused listing those they do, and a gupdev
//! scenario runs with a module built by the kernel's own compiler. Boots QEMU and fetches from
//! the archive: only with NUMASIM_ORACLE=1, and skipped (saying why) without QEMU or the package.

use crate::common;

use common::{numasim, oracle_missing, rejected, s, scratch};

/// Whether the 7.3 tests can run here; prints why not.
fn can_boot_7_3() -> bool {
    if std::env::var("NUMASIM_ORACLE").as_deref() != Ok("1") {
        eprintln!("skipping: set NUMASIM_ORACLE=1 to fetch and boot Debian's 7.3 under QEMU");
        return false;
    }
    match oracle_missing("7.3") {
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
        None => true,
    }
}

#[test]
fn kernel_7_3_boots_numa02_under_its_own_rules_and_says_so() {
    if !can_boot_7_3() {
        return;
    }
    let dir = scratch("newer-7.3");
    let started = std::time::Instant::now();
    let out = numasim(&[
        "kernel",
        "numa02",
        "--kernel",
        "7.3",
        "--set",
        "run.duration_ms=2000",
        "--set",
        "machine.cpus_per_node=2",
        "--out",
        s(&dir),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    eprintln!("numa02 on 7.3: {:.1} s wall", started.elapsed().as_secs_f64());
    assert!(err.contains("sim rules: kernel.version 7.3.") && err.contains("the `7.3` row"), "{err}");
    let guest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("guest.json")).unwrap()).unwrap();
    let release = guest["release"].as_str().unwrap();
    assert!(release.starts_with("7.3.") && release.ends_with("-amd64"), "{release}");
    let version = release.split('+').next().unwrap();
    assert!(guest["sim_rules_note"].as_str().is_some_and(|n| n.contains(version)), "{}", guest["sim_rules_note"]);
    assert!(guest["final_sample"]["vmstat"]["numa_hint_faults"].as_u64().is_some_and(|n| n > 0), "{guest}");
}

#[test]
fn a_release_the_suites_do_not_hold_is_refused_listing_those_they_do() {
    if !can_boot_7_3() {
        return;
    }
    let err = rejected(&["kernel", "numa02", "--kernel", "7.3.999"]);
    assert!(err.contains("--kernel `7.3.999`") && err.contains("trixie-backports"), "{err}");
    assert!(err.contains("7.3.4+deb13-amd64") || err.contains("7.3."), "{err}");
}

/// 7.3.4 was built with trixie's gcc-14, which a Debian 12 host lacks: the module is built in
/// the kernel cache's build root with that compiler, loads, and its driver follows the
/// protnone PTEs without FOLL_HONOR_NUMA_FAULT, as on 6.12.
#[test]
fn a_gupdev_scenario_runs_on_7_3_with_a_module_built_by_the_kernels_compiler() {
    if !can_boot_7_3() {
        return;
    }
    let k = oracle::resolve_kernel("7.3").unwrap();
    let cc = k.compiler.clone().expect("Debian's config names its compiler");
    if let Err(e) = oracle::kernel::headers_tree(k.release()) {
        eprintln!("skipping: the headers of {}: {e}", k.release());
        return;
    }
    let dir = scratch("newer-7.3-gupdev");
    let started = std::time::Instant::now();
    let out = numasim(&["validate", "gupdev-device-gup", "--kernel", "7.3", "--out", s(&dir)]);
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("apt-get update") && err.contains("failed") {
        eprintln!("skipping: the archive cannot be reached for the build root: {err}");
        return;
    }
    assert!(matches!(out.status.code(), Some(0 | 3)), "{err}");
    eprintln!("gupdev-device-gup on 7.3: {:.1} s wall", started.elapsed().as_secs_f64());
    let ko = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gupdev").join(k.release()).join("gupdev.ko");
    let comment = format!("GCC: {}", cc.text.split_once(' ').unwrap().1);
    let bytes = std::fs::read(&ko).unwrap();
    assert!(bytes.windows(comment.len()).any(|w| w == comment.as_bytes()), "{} lacks `{comment}`", ko.display());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("validate.json")).unwrap()).unwrap();
    let outcome = &manifest["cases"][0]["outcomes"][0];
    assert!(outcome["error"].is_null(), "{outcome}");
    let kernel = |metric: &str| {
        let rows = outcome["rows"].as_array().unwrap();
        rows.iter().find(|r| r["metric"] == metric).and_then(|r| r["kernel"].as_f64()).unwrap()
    };
    assert!(kernel("touches.device") >= 4096.0, "the device swept its buffer: {outcome}");
    assert!(kernel("hint_faults_by_source.device") <= 16.0, "7.3 follows protnone PTEs without the flag: {outcome}");
}

/// 7.2.13 (sid) was built with sid's gcc-16, which trixie does not hold: its build root comes
/// from sid, and the module it builds names that compiler. Builds only; boots nothing.
#[test]
fn gupdev_builds_for_7_2_13_in_a_root_of_sids_gcc_16() {
    if !can_boot_7_3() {
        return;
    }
    let k = match oracle::resolve_kernel("7.2.13") {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skipping: 7.2.13: {e}");
            return;
        }
    };
    let cc = k.compiler.clone().expect("Debian's config names its compiler");
    if let Err(e) = oracle::kernel::headers_tree(k.release()) {
        eprintln!("skipping: the headers of {}: {e}", k.release());
        return;
    }
    let started = std::time::Instant::now();
    let ko = oracle::gupdev::module_for(&k).unwrap();
    eprintln!("gupdev for {} with {}: {:.1} s", k.release(), cc.text, started.elapsed().as_secs_f64());
    let comment = format!("GCC: {}", cc.text.split_once(' ').unwrap().1);
    let bytes = std::fs::read(&ko).unwrap();
    assert!(bytes.windows(comment.len()).any(|w| w == comment.as_bytes()), "{} lacks `{comment}`", ko.display());
}
