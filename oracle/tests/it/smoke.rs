//! The oracle end to end on the real kernels: a short numa02 and one GUP path on Debian's 6.1
//! and 6.12 under QEMU. Slow (a boot each) and needs QEMU and the images, so it runs only with
//! `NUMASIM_ORACLE=1` (CI sets it: `NUMASIM_ORACLE=1 cargo test -p oracle --test it smoke:: --
//! --test-threads=1`); otherwise, or when QEMU or an image is missing, it says why and skips.

use std::path::PathBuf;

use oracle::{KernelSpec, OracleError};
use serde_json::Value;
use sim_core::config::{Config, Source, load};

/// numa02's shape with the placement pinned (the scheduler's choice varies run to run): a
/// buffer first touched on node 0 whose private slices belong to threads bound to node 1,
/// beside one whose threads stay on node 0.
const NUMA02: &str = r#"
name = "numa02-smoke"
[run]
duration_ms = 5000
sample_ms = 500
[machine]
nodes = 2
cpus_per_node = 2
[[process]]
name = "numa02"
[[process.vma]]
name = "remote"
size_mib = 32
populate_node = 0
[[process.vma]]
name = "local"
size_mib = 32
populate_node = 0
[[process.thread]]
count = 2
cpus = [2, 3]
vma = "remote"
slice = "private"
[[process.thread]]
count = 2
cpus = [0, 1]
vma = "local"
slice = "private"
"#;

/// process_vm_readv from node 1 on a buffer its owner keeps on node 0, scanned fast.
const PROCESS_VM_READ: &str = r#"
name = "gup-process-vm-smoke"
[run]
duration_ms = 3000
sample_ms = 500
[machine]
nodes = 2
cpus_per_node = 2
[kernel]
numa_balancing_scan_delay_ms = 0
numa_balancing_scan_period_min_ms = 100
[[process]]
name = "app"
[[process.vma]]
name = "buffer"
size_mib = 16
populate_node = 0
[[process.thread]]
count = 2
cpus = [0, 1]
vma = "buffer"
think_ns = 200000
[[device]]
name = "reader"
node = 1
process = "app"
vma = "buffer"
access = "read"
"#;

fn config(text: &str) -> Config {
    load(&Source { origin: "smoke".into(), text: text.into() }, &[]).expect("the smoke configs are valid")
}

/// The kernel, or None (with the reason printed) when this test should not run here.
fn kernel(arg: &str) -> Option<KernelSpec> {
    if std::env::var("NUMASIM_ORACLE").as_deref() != Ok("1") {
        eprintln!("skipping the oracle smoke test: set NUMASIM_ORACLE=1 to boot real kernels under QEMU");
        return None;
    }
    if let Err(e) = oracle::qemu::qemu_binary() {
        eprintln!("skipping the oracle smoke test: {e}");
        return None;
    }
    match oracle::resolve_kernel(arg) {
        Ok(k) => Some(k),
        Err(OracleError::Input(e)) => {
            eprintln!("skipping the oracle smoke test on {arg}: {e}");
            None
        }
        Err(e) => panic!("resolving kernel {arg}: {e}"),
    }
}

fn run(cfg: &Config, k: &KernelSpec) -> (Value, String) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{}", cfg.name, k.release()));
    let started = std::time::Instant::now();
    let run = oracle::run_on_kernel(cfg, k, &dir).unwrap_or_else(|e| panic!("{} on {}: {e}", cfg.name, k.release()));
    eprintln!(
        "{} on {}: {:.1} s wall ({} accel, boot {:.1} s)",
        cfg.name,
        k.release(),
        started.elapsed().as_secs_f64(),
        run.accel.name(),
        run.boot_s
    );
    let summary = std::fs::read_to_string(dir.join(results::SUMMARY)).expect("run_on_kernel writes a summary");
    let csv = std::fs::read_to_string(dir.join("timeseries.csv")).expect("and timeseries.csv");
    (serde_json::from_str(&summary).expect("the summary is JSON"), csv)
}

fn count(s: &Value, group: &str, name: &str) -> u64 {
    s[group][name].as_u64().unwrap_or_else(|| panic!("{group}.{name} missing from the summary"))
}

/// numa02: the buffer of the threads on node 1 moves there, the other stays; the sim's
/// contract holds.
fn numa02(k: &KernelSpec) {
    let (s, csv) = run(&config(NUMA02), k);
    assert_eq!(s["source"], k.release());
    assert!(s.get("stale").is_none() && s.get("locality").is_none(), "unmeasured groups must be absent: {s}");
    let not_measured: Vec<&str> = s["not_measured"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(not_measured.contains(&"stale.accesses") && not_measured.contains(&"locality.cpu"));
    let faults = count(&s, "vmstat", "numa_hint_faults");
    let migrated = count(&s, "vmstat", "numa_pages_migrated");
    eprintln!("numa02 on {}: {faults} hint faults, {migrated} pages migrated", k.release());
    assert!(faults >= 8192, "numa02 on {}: {faults} hint faults", k.release());
    assert!((4096..=12288).contains(&migrated), "numa02 on {}: {migrated} pages migrated", k.release());
    assert!(count(&s, "touches", "cpu") > 0);
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let at = |name: &str| -> u64 {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
        last[i].parse().unwrap()
    };
    // numa_maps accounts for every page but those mid-migration at the sample (a migration
    // entry has no node yet): a handful at most.
    let placed = at("node.0.used_pages") + at("node.1.used_pages");
    assert!((16384 - 64..=16384).contains(&placed), "numa_maps accounts for {placed} of 16384 pages");
    assert!(at("kernel.vma.numa02/remote.node.1.pages") >= 4096, "numa02 on {}: {csv}", k.release());
    assert_eq!(at("kernel.vma.numa02/local.node.0.pages"), 8192, "the node-0 threads' buffer stays");
}

/// process_vm_readv honors NUMA hinting faults on 6.1.192 (the v6.2 rule) and not on 6.12
/// ("mm/gup: don't implicitly set FOLL_HONOR_NUMA_FAULT").
fn process_vm_read(k: &KernelSpec, honors: bool) {
    let (s, _) = run(&config(PROCESS_VM_READ), k);
    let migrated = count(&s, "vmstat", "numa_pages_migrated");
    eprintln!("process_vm_readv on {}: {migrated} pages migrated", k.release());
    assert!(count(&s, "touches", "device") > 0, "the GUP caller made no calls");
    if honors {
        assert!(migrated >= 1024, "process_vm_readv on {}: only {migrated} pages migrated", k.release());
    } else {
        assert!(migrated < 256, "process_vm_readv on {}: {migrated} pages migrated", k.release());
    }
}

#[test]
fn debian_6_1_numa02_and_process_vm_readv() {
    if let Some(k) = kernel("6.1") {
        numa02(&k);
        process_vm_read(&k, true);
    }
}

#[test]
fn debian_6_12_numa02_and_process_vm_readv() {
    if let Some(k) = kernel("6.12") {
        numa02(&k);
        process_vm_read(&k, false);
    }
}
