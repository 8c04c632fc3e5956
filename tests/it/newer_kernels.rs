//! The newer kernels of Debian's trixie-backports and sid on the oracle: 7.3 boots a short
//! numa02, a release the suites do not hold is refused listing those they do, and a gupdev
//! scenario is refused when the kernel's compiler is missing. Boots QEMU and fetches from the
//! archive: only with NUMASIM_ORACLE=1, and skipped (saying why) without QEMU or the package.

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

#[test]
fn a_gupdev_scenario_without_the_kernels_compiler_is_refused_naming_it() {
    if !can_boot_7_3() {
        return;
    }
    let on_path = |t: &str| std::env::split_paths(&std::env::var_os("PATH").unwrap()).any(|d| d.join(t).is_file());
    if on_path("x86_64-linux-gnu-gcc-14") {
        eprintln!("skipping: this host has gcc-14, so gupdev builds for 7.3");
        return;
    }
    let err = rejected(&["kernel", "default", "--kernel", "7.3"]);
    assert!(err.contains("x86_64-linux-gnu-gcc-14") && err.contains("gupdev"), "{err}");
}
