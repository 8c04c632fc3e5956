//! Regression tests, one per class of bad input or failure: values whose
//! conversion overflows or that would stop time, a run too big for memory, names that
//! would break a CSV, keys nested too deep, incomplete sweep folders and shard sets, I/O
//! failures and a closed stdout. Each through the binary, with its exit status.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{numasim, ok, s, scratch};

/// Runs `args`, expects exit status `code` and returns stderr.
fn exits(code: i32, args: &[&str]) -> String {
    let out = numasim(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "args {args:?}: stderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

const SMALL: &str = r#"
[run]
duration_ms = 200

[[process]]
name = "app"

[[process.vma]]
name = "buf"
size_mib = 4

[[process.thread]]
vma = "buf"
"#;

fn small(dir: &Path) -> String {
    let p = dir.join("small.toml");
    std::fs::write(&p, SMALL).unwrap();
    s(&p).to_string()
}

#[test]
fn conversions_that_overflow_or_stop_time_name_their_key_and_line() {
    let dir = scratch("overflow");
    let cfg = small(&dir);
    let cases: &[(&str, &str)] = &[
        ("run.duration_ms=18446744073709", "key `run.duration_ms`"),
        ("machine.memory_per_node_mib=32667085205123067", "key `machine.memory_per_node_mib`"),
        ("kernel.quantum_us=300000", "key `kernel.quantum_us`: 300000 us is longer than the run"),
        ("process.0.vma.0.size_mib=17000000", "key `process[0].vma[0].size_mib`"),
        ("process.0.thread.0.count_per_cpu=4294967295", "key `process[0].thread[0].count_per_cpu`"),
        ("machine.local_latency_ns=9223372036854775807", "key `machine.local_latency_ns`"),
        ("process.0.thread.0.think_ns=9223372036854775807", "key `process[0].thread[0].think_ns`"),
        ("process.0.thread.0.start_ms=9223372036854775807", "key `process[0].thread[0].start_ms`"),
        ("process.0.vma.0.content_classes=70000", "key `process[0].vma[0].content_classes`"),
        ("kernel.numa_balancing_scan_size_mb=4294967296", "key `kernel.numa_balancing_scan_size_mb`"),
        ("kernel.pte_scan_cost_ns=1000000000000", "key `kernel.pte_scan_cost_ns`"),
        ("kernel.tlb_flush_cost_ns=1492542294811756862", "key `kernel.tlb_flush_cost_ns`"),
        ("kernel.numa_balancing_scan_delay_ms=4294967296", "does not fit the kernel's unsigned int"),
        ("ksm.pages_to_scan=4294967295", "key `ksm.pages_to_scan`"),
        ("ksm.sleep_millisecs=0", "key `ksm.sleep_millisecs`"),
        ("process.0.thread.0.hot_fraction=nan", "key `process[0].thread[0].hot_fraction`"),
        // Zeros that would stop time or divide by zero.
        ("kernel.numa_balancing_scan_size_mb=0", "key `kernel.numa_balancing_scan_size_mb`: must be at least 1"),
        ("kernel.quantum_us=0", "key `kernel.quantum_us`: must be at least 1"),
        ("run.sample_ms=0", "key `run.sample_ms`"),
        ("aging.interval_ms=0", "key `aging.interval_ms`: must be at least 1"),
        ("kernel.numa_balancing_scan_period_min_ms=0", "key `kernel.numa_balancing_scan_period_min_ms`"),
    ];
    for (set, want) in cases {
        let err = exits(2, &["check", &cfg, "--set", set]);
        assert!(err.contains(want), "--set {set}: {err}");
    }
    // A key written in the file is reported with its line.
    let err = exits(2, &["check", &cfg, "--set", "run.duration_ms=18446744073709"]);
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn a_run_bigger_than_the_memory_budget_is_refused_with_the_estimate() {
    let dir = scratch("budget");
    let cfg = small(&dir);
    let err = exits(2, &["run", &cfg, "--set", "run.max_memory_gib=0.00001", "--out", s(&dir.join("out"))]);
    assert!(err.contains("key `run.max_memory_gib`") && err.contains("MiB of simulator memory"), "{err}");
    assert!(!dir.join("out").exists(), "nothing is written before the refusal");
    let err = exits(2, &["check", &cfg, "--set", "run.max_memory_gib=-1"]);
    assert!(err.contains("must be a positive number"), "{err}");
    // 15 TiB of simulated pages is 49 GiB of page state.
    let huge = ["--set", "machine.memory_per_node_mib=15728640", "--set", "process.0.vma.0.size_mib=15728640"];
    let check: Vec<&str> = ["check", cfg.as_str()].into_iter().chain(huge).collect();
    if sim_core::limits::machine_memory_bytes().is_some_and(|m| m < 49 << 30) {
        let err = exits(2, &check);
        assert!(err.contains("GiB of simulator memory") && err.contains("available"), "{err}");
    }
    let allowed: Vec<&str> = check.iter().copied().chain(["--set", "run.max_memory_gib=64"]).collect();
    ok(&allowed);
}

#[test]
fn names_that_would_break_a_csv_are_refused() {
    let dir = scratch("names");
    let cfg = small(&dir);
    for (set, key) in [
        ("process.0.name=\"a,b\"", "process[0].name"),
        ("process.0.thread.0.name=\"x\\\"y\"", "process[0].thread[0].name"),
        ("process.0.vma.0.name=\"a\\nb\"", "process[0].vma[0].name"),
    ] {
        let err = exits(2, &["check", &cfg, "--set", set]);
        assert!(err.contains(key) && err.contains("may not contain"), "{set}: {err}");
    }
}

#[test]
fn malformed_set_keys_are_errors_not_crashes() {
    let dir = scratch("keys");
    let cfg = small(&dir);
    let deep = format!("run.{}=1", vec!["a"; 20_000].join("."));
    let err = exits(2, &["check", &cfg, "--set", &deep]);
    assert!(err.contains("config keys have at most 16"), "{}", &err[..err.len().min(300)]);
    let err = exits(2, &["check", &cfg, "--set", "run..seed=1"]);
    assert!(err.contains("key part is empty"), "{err}");
}

/// `kernel.version` takes a row or a release; `check` says whose rules an unread release
/// takes; what is not a release numasim can place is refused naming the key.
#[test]
fn kernel_versions_are_releases_and_bad_ones_name_the_key() {
    let dir = scratch("versions");
    let cfg = small(&dir);
    let out = numasim(&["check", &cfg, "--set", "kernel.version=6.12.118"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("version = \"6.12.118\""), "{text}");
    let out = numasim(&["check", &cfg, "--set", "kernel.version=6.9.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("# kernel.version 6.9.2: not read; between `6.6`"), "{text}");
    for bad in ["6.12.x", "5.15", "9.1"] {
        let err = exits(2, &["check", &cfg, "--set", &format!("kernel.version={bad}")]);
        assert!(err.contains("kernel.version"), "{err}");
    }
}

#[test]
fn a_cpuset_node_outside_the_machine_names_its_key() {
    let dir = scratch("cpuset");
    let cfg = small(&dir);
    let err = exits(2, &["check", &cfg, "--set", "process.0.cpuset_mems=[5]"]);
    assert!(err.contains("process[0].cpuset_mems"), "{err}");
}

const SWEEP: &str = r#"
base = "small.toml"
[sweep]
"run.seed" = [1, 2, 3]
"#;

#[test]
fn sweeps_redo_incomplete_runs_and_merge_refuses_incomplete_or_doubled_shards() {
    let dir = scratch("integrity");
    small(&dir);
    let file = dir.join("sweep.toml");
    std::fs::write(&file, SWEEP).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&["sweep", s(&file), "--shard", "1/2", "--out", s(&a)]);
    ok(&["sweep", s(&file), "--shard", "2/2", "--out", s(&b)]);

    // A truncated summary is redone, and said so.
    let summary = a.join("runs/0000").join(results::SUMMARY);
    let text = std::fs::read_to_string(&summary).unwrap();
    std::fs::write(&summary, &text[..text.len() / 2]).unwrap();
    let out = ok(&["sweep", s(&file), "--shard", "1/2", "--out", s(&a)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("runs/0000 is incomplete ({} unreadable", results::SUMMARY))
            && err.contains("running it again"),
        "{err}"
    );
    let redone: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(redone["sim_time_ns"].is_u64(), "the run was redone: {redone}");

    let m = dir.join("m");
    let err = exits(2, &["merge", s(&a), "--out", s(&m)]);
    assert!(err.contains("miss 1 run(s) of the sweep: 0001") && err.contains("--partial"), "{err}");
    assert!(!m.join("results.csv").exists());
    let err = exits(2, &["merge", s(&a), s(&a), s(&b), "--out", s(&m)]);
    assert!(err.contains("is given twice"), "{err}");
    let copy = dir.join("a-copy");
    std::fs::create_dir_all(copy.join("runs")).unwrap();
    std::fs::copy(a.join("sweep.json"), copy.join("sweep.json")).unwrap();
    let err = exits(2, &["merge", s(&a), s(&copy), s(&b), "--out", s(&m)]);
    assert!(err.contains("are the same shard (1/2)"), "{err}");

    let out = ok(&["merge", s(&a), "--partial", "--out", s(&m)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("partial merge: 1 run(s) missing: 0001"));
    assert_eq!(std::fs::read_to_string(m.join("results.csv")).unwrap().lines().count(), 1 + 2);
    ok(&["merge", s(&a), s(&b), "--out", s(&m)]);
    assert_eq!(std::fs::read_to_string(m.join("results.csv")).unwrap().lines().count(), 1 + 3);
}

/// Splits one CSV line into fields, honouring double quotes (RFC 4180).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => field.push(chars.next().unwrap()),
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[test]
fn a_swept_value_with_commas_is_quoted_in_results_csv() {
    let dir = scratch("csv");
    small(&dir);
    let file = dir.join("sweep.toml");
    let sweep = "base = \"small.toml\"\n[sweep]\n\"machine.distance\" = [[[10, 20], [20, 10]], [[10, 30], [30, 10]]]\n";
    std::fs::write(&file, sweep).unwrap();
    let out = dir.join("out");
    ok(&["sweep", s(&file), "--out", s(&out)]);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let header = csv_fields(lines[0]);
    assert_eq!(&header[..2], ["run", "machine.distance"], "{}", lines[0]);
    assert_eq!(lines.len(), 3, "{csv}");
    for (i, line) in lines[1..].iter().enumerate() {
        let row = csv_fields(line);
        assert_eq!(row.len(), header.len(), "row {i} splits into as many fields as the header: {line}");
        assert!(row[1].starts_with("[[10, ") && row[1].contains("], ["), "{line}");
    }
}

#[test]
fn io_failures_exit_1_naming_the_path_and_leave_no_complete_looking_file() {
    let dir = scratch("io");
    let cfg = small(&dir);
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    let err = exits(1, &["run", &cfg, "--out", s(&file)]);
    assert!(err.contains(s(&file)), "{err}");

    // A full disk: a 64 KiB tmpfs, where mounting one is allowed.
    let tiny = dir.join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs", s(&tiny)]).output();
    if !mounted.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping the full-disk case: cannot mount a tmpfs here");
        return;
    }
    let out = tiny.join("out");
    let err = exits(1, &["run", &cfg, "--set", "run.duration_ms=20000", "--set", "run.sample_ms=1", "--out", s(&out)]);
    let _ = Command::new("umount").arg(s(&tiny)).output();
    assert!(err.contains("No space left on device") && err.contains(s(&out)), "{err}");
}

#[test]
fn the_result_files_left_by_a_full_disk_are_never_a_summary() {
    // write_run() writes the summary last and every file through a temporary name: after a
    // failure at any point the directory has no summary, so sweeps redo it. Simulated
    // here by a directory where the summary cannot be created (a directory in its place).
    let dir = scratch("nosummary");
    let cfg = small(&dir);
    let out = dir.join("out");
    std::fs::create_dir_all(out.join(results::SUMMARY)).unwrap();
    exits(1, &["run", &cfg, "--out", s(&out)]);
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|f| f.ends_with(".tmp")), "temporary files left: {left:?}");
}

#[test]
fn a_result_file_that_cannot_be_renamed_into_place_leaves_no_temporary_file_and_no_summary() {
    // The series' temporary file is written, and its rename onto a non-empty directory fails.
    let dir = scratch("norename");
    let cfg = small(&dir);
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("timeseries.csv/x")).unwrap();
    std::fs::write(out.join(results::SUMMARY), "an earlier run").unwrap();
    let err = exits(1, &["run", &cfg, "--out", s(&out)]);
    assert!(err.contains("timeseries.csv"), "{err}");
    let mut left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["config.toml", "timeseries.csv"]);
}

#[test]
fn a_damaged_comparison_manifest_is_refused_naming_the_file() {
    let dir = scratch("badcompare");
    std::fs::write(dir.join("compare.json"), "{\"groups\": [").unwrap();
    let err = exits(2, &["plot", s(&dir)]);
    assert!(err.contains(s(&dir.join("compare.json"))) && err.contains("not a comparison manifest"), "{err}");
}

#[test]
fn a_closed_stdout_ends_the_program_without_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_numasim"))
        .args(["check", "default"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn check_invariants_runs_clean_on_a_built_in_scenario() {
    let dir = scratch("inv");
    let out =
        ok(&["run", "pinned-device", "--check-invariants", "--set", "run.duration_ms=300", "--out", s(&dir.join("r"))]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("pinned-device"));
}
