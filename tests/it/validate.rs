//! `numasim validate`: the catalogue checks, bad input exits 2 before anything boots, and
//! (where QEMU and a kernel image are present) one case end to end on a real kernel.

use std::path::Path;

use crate::common;

use common::{numasim, oracle_missing, rejected, s, scratch};

/// Runs `numasim validate ARGS --out DIR`, which must end in a verdict (0: every judged row
/// within tolerance; 3: a disagreement, which is a result too); its stdout and exit status.
fn validated(args: &[&str], dir: &Path) -> (String, Option<i32>) {
    let out = numasim(&[&["validate"], args, &["--out", s(dir)]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code();
    assert!(matches!(code, Some(0 | 3)), "exit {code:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (stdout, code)
}

/// A JSON file of a validation directory.
fn read_json(dir: &Path, f: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
}

#[test]
fn every_case_of_the_catalogue_passes_check() {
    let mut files: Vec<_> = std::fs::read_dir("configs/validate").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 13, "{files:?}");
    for f in files {
        let out = numasim(&["check", s(&f)]);
        assert!(out.status.success(), "{}: {}", f.display(), String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("[[validate.tolerance]]"), "{}", f.display());
    }
}

#[test]
fn bad_input_exits_2_before_anything_boots() {
    let dir = scratch("validate-bad");
    let out = dir.join("v");
    assert!(rejected(&["validate"]).contains("needs a scenario or --all"));
    rejected(&["validate", "numa02", "--all"]);
    let e = rejected(&["validate", "numa02", "--set", "validate.tolerance.0.metric=vmstat.nope", "--out", s(&out)]);
    assert!(e.contains("validate.tolerance[0].metric"), "{e}");
    let e = rejected(&["validate", "numa02", "--set", "validate.tolerance.0.reason=", "--out", s(&out)]);
    assert!(e.contains("validate.tolerance[0].reason"), "{e}");
    let e = rejected(&["validate", "numa02", "--kernel", "5.0", "--out", s(&out)]);
    assert!(e.contains("--kernel `5.0`"), "{e}");
    let e = rejected(&["validate", "numa02", "--repeat", "0", "--out", s(&out)]);
    assert!(e.contains("--repeat"), "{e}");
    let e = rejected(&["validate", "numa02", "--report", s(&dir.join("no-dir/r.md")), "--out", s(&out)]);
    assert!(e.contains("--report"), "{e}");
    assert!(!out.exists(), "nothing is written on bad input");
}

/// userfaultfd RWP is new in 7.3: `kernel` and `validate` refuse a scenario that registers it
/// on 6.12 before anything boots (the image must be resolvable to know its release).
#[test]
fn a_userfaultfd_scenario_is_refused_on_a_kernel_without_rwp() {
    if let Some(why) = oracle_missing("6.12") {
        eprintln!("skipping: {why}");
        return;
    }
    let out = scratch("uffd-6.12").join("v");
    for cmd in ["kernel", "validate"] {
        let e = rejected(&[cmd, "uffd-rwp-procmem", "--kernel", "6.12", "--out", s(&out)]);
        assert!(e.contains("[[userfaultfd]]") && e.contains("new in 7.3"), "{cmd}: {e}");
    }
    assert!(!out.exists(), "nothing is written");
}

/// The RWP case is 7.3's only: `--all` on 6.12 skips it and says why before anything boots
/// (the shard of as many as there are cases that holds the case's pair runs nothing else).
#[test]
fn validate_all_skips_the_rwp_case_on_a_kernel_without_rwp() {
    if let Some(why) = oracle_missing("6.12") {
        eprintln!("skipping: {why}");
        return;
    }
    let cases = workloads::validation::CASES;
    let at = cases.iter().position(|(n, _)| *n == "uffd-rwp-proc-mem").expect("the case is in the catalogue");
    let dir = scratch("uffd-all-6.12");
    let shard = format!("{}/{}", at + 1, cases.len());
    let out = numasim(&["validate", "--all", "--kernel", "6.12", "--shard", &shard, "--out", s(&dir)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("uffd-rwp-proc-mem on 6.12: skipped:") && stderr.contains("new in 7.3"), "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("validate.json")).unwrap()).unwrap();
    assert!(manifest["skipped"].as_array().unwrap().contains(&serde_json::json!(["uffd-rwp-proc-mem", "6.12"])));
    assert_eq!(manifest["cases"].as_array().map(Vec::len), Some(0), "nothing booted");
}

/// The RWP case on the real 7.3: the guest times the handler's round trips, validate gives
/// the sim their mean as `handler_latency_us`, and the reader's failed reads are the kernel
/// column of `numasim.uffd_rwp_gup_efaults`.
#[test]
fn the_rwp_case_on_7_3_fits_the_handler_latency_and_counts_the_readers_efaults() {
    if common::skips_real_boot("userfaultfd RWP validate", "7.3") {
        return;
    }
    let dir = scratch("validate-uffd-7.3");
    validated(&["uffd-rwp-proc-mem", "--kernel", "7.3"], &dir);
    let read = |f: &str| read_json(&dir, f);
    let last = &read(&format!("7.3/kernel/{}", results::GUEST))["final_sample"];
    assert!(last["uffd_rwp_waits"].as_u64().unwrap() > 0, "{last}");
    let pace = &read("validate.json")["cases"][0]["outcomes"][0]["uffd"];
    let latency = pace["handler_latency_us"].as_u64().unwrap();
    assert!(latency > 20, "TCG's round trip is far above the scenario's 20 us: {pace}");
    assert!(
        std::fs::read_to_string(dir.join("7.3/sim").join(results::CONFIG))
            .unwrap()
            .contains(&format!("handler_latency_us = {latency}"))
    );
    let summary = read(&format!("7.3/kernel/{}", results::SUMMARY));
    assert!(summary["numasim"]["uffd_rwp_gup_efaults"].as_u64().is_some(), "{summary}");
}

#[test]
fn one_gup_case_end_to_end_on_a_real_kernel() {
    if let Some(why) = oracle_missing("6.12") {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = scratch("validate-oracle");
    let (stdout, code) = validated(&["gup-process-vm-readv", "--kernel", "6.12", "--trace"], &dir);
    assert!(stdout.contains("metric") && stdout.contains("within tolerance"), "{stdout}");
    let manifest = read_json(&dir, "validate.json");
    let outcome = &manifest["cases"][0]["outcomes"][0];
    assert!(outcome["error"].is_null(), "{outcome}");
    let rows = outcome["rows"].as_array().unwrap();
    let row = |m: &str| rows.iter().find(|r| r["metric"] == m).unwrap_or_else(|| panic!("no row {m}"));
    assert!(row("vmstat.numa_pte_updates")["kernel"].as_f64().unwrap() > 0.0, "the kernel scanned");
    assert_eq!(row("stale.accesses")["kernel"], "not measured");
    assert_eq!(outcome["agree"].as_bool(), Some(code == Some(0)));
    let summaries = ["6.12/sim", "6.12/kernel"].map(|side| format!("{side}/{}", results::SUMMARY));
    for f in ["report.md", "6.12/overlay.png"].into_iter().chain(summaries.iter().map(String::as_str)) {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // --trace: both traces complete, and their trace-diff beside them.
    for f in ["6.12/sim/trace.txt", "6.12/kernel/trace.txt"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(text.lines().last().unwrap().starts_with("# numasim: end of trace"), "{f}");
    }
    let table = std::fs::read_to_string(dir.join("6.12/trace-diff.txt")).unwrap();
    assert!(
        table.starts_with("event") && table.contains("sim/trace.txt") && table.contains("kernel/trace.txt"),
        "{table}"
    );
}

/// A CPU-less node is a lower tier only on kernels with HMAT's abstract distance (6.7 on):
/// `validate` refuses it on 6.1 before anything boots, and `--all` skips that pair.
#[test]
fn a_cpu_less_node_is_refused_on_6_1_before_anything_boots() {
    if let Some(why) = oracle_missing("6.1") {
        eprintln!("skipping: {why}");
        return;
    }
    let out = scratch("tiering-6.1").join("v");
    let e = rejected(&["validate", "tiering-promote", "--kernel", "6.1", "--out", s(&out)]);
    assert!(e.contains("machine.memory_node") && e.contains("DRAM's tier"), "{e}");
    assert!(!out.exists(), "nothing is written");
}

/// The tiering case on a real kernel: QEMU's HMAT puts the CPU-less node in a lower tier,
/// the guest reports it and the promotion counters; a node HMAT puts in DRAM's tier (110 ns
/// against 100: abstract distance 633, memory_tier4) is refused with exit status 2.
#[test]
fn the_tiering_case_on_a_real_kernel_reports_tiers_and_promotions() {
    if let Some(why) = oracle_missing("6.12") {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = scratch("validate-tiering");
    validated(&["tiering-promote", "--kernel", "6.12"], &dir);
    let read = |f: &str| read_json(&dir, f);
    let guest = read(&format!("6.12/kernel/{}", results::GUEST));
    let tiers = guest["memory_tiers"].as_object().unwrap();
    let tier_of = |node: &str| tiers.iter().find(|(_, list)| list.as_str() == Some(node)).map(|(t, _)| t.clone());
    assert_eq!(tier_of("0").as_deref(), Some("memory_tier4"), "{tiers:?}");
    assert!(tier_of("1").is_some_and(|t| t != "memory_tier4"), "{tiers:?}");
    let summary = read(&format!("6.12/kernel/{}", results::SUMMARY));
    assert!(summary["vmstat"]["pgpromote_success"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["hint_faults_by_tier"]["toptier"], 0);
    let e = rejected(&[
        "validate",
        "tiering-promote",
        "--kernel",
        "6.12",
        "--set",
        "machine.memory_node.0.latency_ns=110",
        "--out",
        s(&dir.join("dram")),
    ]);
    assert!(e.contains("CPU-less node 1 in memory_tier4"), "{e}");
}
