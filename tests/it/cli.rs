//! The command line: results on disk, and bad input rejected with exit status 2.

use crate::common;

use std::path::Path;

use common::{numasim, rejected, scratch};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

const SMALL: &str = r#"
[run]
duration_ms = 300

[[process]]
name = "app"

[[process.vma]]
name = "buf"
size_mib = 8

[[process.thread]]
vma = "buf"
"#;

/// The metrics every run reports, from the model's definitions of them (the tiering, remedy
/// and userfaultfd ones come only with their scenarios).
fn always_reported() -> Vec<String> {
    use sim_core::stats::summary::{LOCALITY, PER_SCAN_PASS, PER_SCAN_PASS_GROUP, THROUGHPUT, TOUCHERS, TOUCHES};
    use sim_core::stats::{HintFaultsBySource, Ksm, KvmStat, Numasim, SecondaryMmuChurn, Stale, VmStat, Young};
    let groups: [(&str, &[&str]); 11] = [
        (VmStat::GROUP, VmStat::NAMES),
        (Numasim::GROUP, Numasim::NAMES),
        (HintFaultsBySource::GROUP, HintFaultsBySource::NAMES),
        (LOCALITY, &TOUCHERS),
        (TOUCHES, &TOUCHERS),
        (Stale::GROUP, Stale::NAMES),
        (Ksm::GROUP, Ksm::NAMES),
        (Young::GROUP, Young::NAMES),
        (SecondaryMmuChurn::GROUP, SecondaryMmuChurn::NAMES),
        (KvmStat::GROUP, KvmStat::NAMES),
        (PER_SCAN_PASS_GROUP, &PER_SCAN_PASS),
    ];
    let named = groups.into_iter().flat_map(|(g, names)| names.iter().map(move |n| format!("{g}.{n}")));
    named.chain([format!("{}.{}", THROUGHPUT.0, THROUGHPUT.1)]).collect()
}

#[test]
fn run_writes_the_three_result_files() {
    let dir = scratch("run");
    let cfg = write(&dir, "small.toml", SMALL);
    let out_dir = dir.join("out");
    let out = numasim(&["run", &cfg, "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in [results::SUMMARY, "timeseries.csv", "config.toml", "locality.png", "locality.svg", "totals.png"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join(results::SUMMARY)).unwrap()).unwrap();
    assert_eq!(summary["scenario"], "small");
    for key in always_reported() {
        let (group, name) = key.split_once('.').unwrap();
        assert!(summary[group][name].is_number(), "the summary lacks {key}");
    }
    let csv = std::fs::read_to_string(out_dir.join("timeseries.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("time_ms,vmstat.numa_pte_updates,"), "{header}");
    assert!(header.contains(",stale.mappings,"), "{header}");
    assert_eq!(csv.lines().count(), 1 + 3, "three 100 ms intervals");
}

#[test]
fn the_written_config_reproduces_the_run() {
    let dir = scratch("repro");
    let first = dir.join("first");
    let again = dir.join("again");
    let out = numasim(&[
        "run",
        "default",
        "--set",
        "run.duration_ms=1500",
        "--set",
        "run.seed=9",
        "--out",
        first.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let cfg = first.join("config.toml");
    let out = numasim(&["run", cfg.to_str().unwrap(), "--out", again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&first, "timeseries.csv"), read(&again, "timeseries.csv"));
    assert_eq!(read(&first, "config.toml"), read(&again, "config.toml"));
    let strip = |s: String| s.lines().filter(|l| !l.contains("\"wall_s\"")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(read(&first, results::SUMMARY)), strip(read(&again, results::SUMMARY)));
}

#[test]
fn check_prints_the_resolved_config_and_scenarios_lists_the_catalogue() {
    let out = numasim(&["check", "numa02", "--set", "machine.nodes=4"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nodes = 4"), "{text}");
    assert!(text.contains("numa_balancing_scan_period_min_ms = 1000"), "defaults are filled in: {text}");
    let out = numasim(&["scenarios"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "default",
        "numa01",
        "numa01-threadlocal",
        "numa02",
        "kvm-guest",
        "device-gup",
        "mprotect-hazard",
        "ksm-protnone",
        "pinned-device",
        "memfd-shared",
        "kvm-memfd",
        "hugetlbfs",
        "kvm-guest-memfd",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing from {text}");
    }
}

#[test]
fn guest_memfd_before_6_18_is_refused_naming_the_key() {
    let err = rejected(&["check", "kvm-guest-memfd", "--set", "kernel.version=6.12"]);
    assert!(err.contains("vm[0].backing") && err.contains("6.18"), "{err}");
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_a_suggestion() {
    let dir = scratch("typo");
    let cfg = write(&dir, "typo.toml", "[run]\nseed = 3\n\n[machine]\nnodez = 2\n");
    let err = rejected(&["check", &cfg]);
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("nodez"), "{err}");
    assert!(err.contains("did you mean `nodes`"), "{err}");
}

#[test]
fn an_unknown_set_key_is_rejected_with_a_suggestion() {
    let err = rejected(&["check", "numa02", "--set", "kernel.numa_balancing_scan_dely_ms=5"]);
    assert!(err.contains("--set"), "{err}");
    assert!(err.contains("numa_balancing_scan_delay_ms"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_rejected() {
    let dir = scratch("type");
    let cfg = write(&dir, "type.toml", "[machine]\nnodes = \"two\"\n");
    let err = rejected(&["check", &cfg]);
    assert!(err.contains("line 2") && err.contains("machine.nodes"), "{err}");
    let err = rejected(&["check", "numa02", "--set", "kernel.gup_policy=explict"]);
    assert!(err.contains("did you mean `explicit`"), "{err}");
}

#[test]
fn out_of_range_values_are_rejected() {
    let err = rejected(&["check", "numa02", "--set", "machine.nodes=0"]);
    assert!(err.contains("machine.nodes") && err.contains("1 to 64"), "{err}");
    let err = rejected(&["check", "numa02", "--set", "machine.nodes=65"]);
    assert!(err.contains("machine.nodes"), "{err}");

    let dir = scratch("range");
    let neg = write(&dir, "neg.toml", &SMALL.replace("size_mib = 8", "size_mib = -8"));
    let err = rejected(&["check", &neg]);
    assert!(err.contains("line 10") && err.contains("size_mib"), "{err}");

    let shape = write(&dir, "shape.toml", "[machine]\nnodes = 2\ndistance = [[10, 20], [20, 10], [20, 20]]\n");
    let err = rejected(&["check", &shape]);
    assert!(err.contains("line 3") && err.contains("machine.distance") && err.contains("2 rows of 2"), "{err}");

    let cpu = write(&dir, "cpu.toml", &format!("{SMALL}cpus = [3, 99]\n"));
    let err = rejected(&["check", &cpu]);
    assert!(err.contains("process[0].thread[0].cpus") && err.contains("CPU 99 does not exist"), "{err}");
    assert!(err.contains("line 14"), "{err}");

    let node = write(&dir, "node.toml", &SMALL.replace("size_mib = 8", "size_mib = 8\npopulate_node = 7"));
    let err = rejected(&["check", &node]);
    assert!(err.contains("populate_node") && err.contains("node 7 does not exist"), "{err}");

    let vma = write(&dir, "vma.toml", &SMALL.replace("vma = \"buf\"", "vma = \"bfu\""));
    let err = rejected(&["check", &vma]);
    assert!(err.contains("did you mean `buf`"), "{err}");
}

#[test]
fn a_missing_file_or_scenario_is_rejected_and_leaves_no_results() {
    let dir = scratch("missing");
    let out_dir = dir.join("out");
    let err = rejected(&["run", "no/such/file.toml", "--out", out_dir.to_str().unwrap()]);
    assert!(err.contains("no/such/file.toml") && err.contains("cannot read"), "{err}");
    assert!(!out_dir.join(results::SUMMARY).exists());
    let err = rejected(&["run", "numa2"]);
    assert!(err.contains("did you mean `numa02`"), "{err}");
    let bad = write(&dir, "bad.toml", "[machine]\nnodes = 0\n");
    rejected(&["run", &bad, "--out", out_dir.to_str().unwrap()]);
    assert!(!out_dir.exists(), "a rejected run writes nothing");
}

#[test]
fn an_action_range_outside_its_vma_is_rejected() {
    let err = rejected(&["check", "mprotect-hazard", "--set", "action.0.offset_mib=60", "--set", "action.0.len_mib=8"]);
    assert!(err.contains("action[0].len_mib") && err.contains("64 MiB"), "{err}");
    let err = rejected(&["check", "mprotect-hazard", "--set", "action.0.offset_mib=64"]);
    assert!(err.contains("action[0].offset_mib"), "{err}");
}

/// userfaultfd RWP exists from 7.3 on, needs a registration before UFFDIO_RWPROTECT, and is
/// modelled over 4 KiB pages only: each refusal names its key and line, with exit status 2.
#[test]
fn userfaultfd_rwp_keys_are_refused_where_they_cannot_apply() {
    let err = rejected(&["check", "uffd-rwp", "--set", "kernel.version=6.12"]);
    assert!(err.contains("userfaultfd[0].mode") && err.contains("new in 7.3") && err.contains("6.12"), "{err}");
    assert!(err.contains("line 27"), "{err}");
    let err = rejected(&[
        "check",
        "uffd-rwp",
        "--set",
        "vm.0.hugepage=madvise",
        "--set",
        "kernel.transparent_hugepage=always",
    ]);
    assert!(err.contains("userfaultfd[0].vma") && err.contains("THP"), "{err}");
    let dir = scratch("uffd");
    let unregistered = format!(
        "{SMALL}\n[kernel]\nversion = \"7.3\"\n\n[[action]]\nsyscall = \"uffdio-rwprotect\"\nprocess = \"app\"\nvma = \"buf\"\n"
    );
    let cfg = write(&dir, "unregistered.toml", &unregistered);
    let err = rejected(&["check", &cfg]);
    assert!(err.contains("action[0].vma") && err.contains("-ENOENT") && err.contains("line 21"), "{err}");
}

#[test]
fn set_reaches_nested_tables_inside_arrays() {
    let out = common::ok(&["check", "kvm-guest", "--set", "vm.0.vcpus.count=3", "--set", "vm.0.vcpus.cpus=[4,5]"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("count = 3") && text.contains("cpus = [4, 5]"), "{text}");
    let err = rejected(&["check", "kvm-guest", "--set", "device.0.access=write"]);
    assert!(err.contains("no `device` entries"), "{err}");
    let err = rejected(&["check", "numa02", "--set", "process.0.thread.3.node=1"]);
    assert!(err.contains("index 3 is out of range"), "{err}");
}

#[test]
fn numa_balancing_takes_the_sysctl_values() {
    let out = common::ok(&["check", "numa02", "--set", "kernel.numa_balancing=0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("numa_balancing = false"));
    let out = common::ok(&["check", "numa02", "--set", "kernel.numa_balancing=3"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("numa_balancing = 3"));
    let err = rejected(&["check", "numa02", "--set", "kernel.numa_balancing=4"]);
    assert!(err.contains("kernel.numa_balancing") && err.contains("0 to 3"), "{err}");
}

#[test]
fn a_rerun_into_the_same_directory_leaves_no_figure_of_the_old_run() {
    let dir = scratch("rerun");
    let out_dir = dir.join("out");
    let out = out_dir.to_str().unwrap();
    common::ok(&[
        "run",
        "mprotect-hazard",
        "--set",
        "kernel.gup_policy=explicit",
        "--set",
        "run.duration_ms=4000",
        "--out",
        out,
    ]);
    assert!(out_dir.join("stale.png").is_file());
    common::ok(&["run", "numa02", "--set", "run.duration_ms=1000", "--out", out]);
    assert!(!out_dir.join("stale.png").exists() && !out_dir.join("stale.svg").exists());
}

/// The compare table through the binary: one seed prints no spread, rows that are 0 in every
/// run are hidden (and counted) unless --show-zero.
#[test]
fn compare_hides_zero_rows_and_has_no_spread_from_one_seed() {
    let dir = scratch("compare-format");
    let cfg = write(&dir, "small.toml", SMALL);
    let run = |extra: &[&str]| {
        let out_dir = dir.join(format!("cmp{}", extra.len()));
        let args =
            [&["compare", &cfg, "--policies", "implicit,explicit", "--out", out_dir.to_str().unwrap()], extra].concat();
        let out = numasim(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let default = run(&[]);
    let rows = |t: &str| t.lines().filter(|l| l.contains('%')).count();
    assert!(!default.contains('±') && default.contains("value of 1"), "{default}");
    assert!(default.contains("rows that are 0 in every run not shown"), "{default}");
    let all = run(&["--show-zero"]);
    assert!(rows(&all) > rows(&default) && !all.contains("not shown"), "{all}");
    assert!(all.lines().any(|l| l.contains("0.00") && l.matches("+0.00%").count() == 2), "a zero row: {all}");
}

/// A guest on the node its memory is not on, for the remedy columns.
const GUEST: &str = r#"
[run]
duration_ms = 1500
[[vm]]
name = "guest"
memory_mib = 32
populate_node = 0
[vm.vcpus]
count = 2
node = 1
"#;

/// `compare --remedies`: a column per remedy with the churn rows; an unknown remedy, or an
/// opt-out naming a VMA the scenario does not have, is bad input.
#[test]
fn compare_takes_remedies_as_columns() {
    let dir = scratch("compare-remedies");
    let cfg = write(&dir, "guest.toml", GUEST);
    let out_dir = dir.join("cmp");
    let remedies = "off,on,range-numa,process-opt-out";
    let out = common::ok(&["compare", &cfg, "--remedies", remedies, "--out", out_dir.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.contains("secondary_mmu.entries_zapped")), "{table}");
    assert!(["off", "on", "range-numa", "process-opt-out"].iter().all(|c| out_dir.join(c).join("seed-1").is_dir()));
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains(&format!("--remedies {remedies}")), "{report}");
    let e = rejected(&["compare", &cfg, "--remedies", "off,skip-pined"]);
    assert!(e.contains("skip-pinned"), "{e}");
    let e = rejected(&["run", &cfg, "--set", "kernel.no_numa_balancing_vmas=[\"guest/rom\"]"]);
    assert!(e.contains("kernel.no_numa_balancing_vmas[0]") && e.contains("ram"), "{e}");
}

/// A `--kernels` column the scenario cannot run on (an RWP tracker before 7.3) is refused
/// before any run, naming the column and the key, as `check` would refuse the config.
#[test]
fn compare_refuses_a_kernel_column_the_scenario_cannot_run_on() {
    let out_dir = scratch("compare-era").join("cmp");
    let e = rejected(&["compare", "uffd-rwp", "--kernels", "7.3,6.12", "--out", out_dir.to_str().unwrap()]);
    assert!(e.contains("--kernels 6.12") && e.contains("userfaultfd[0].mode") && e.contains("7.3"), "{e}");
    assert!(!out_dir.exists(), "nothing is written for a refused comparison");
}

/// `run` takes a validation case by name, as `validate` does.
#[test]
fn run_takes_a_validation_case_by_name() {
    let out_dir = scratch("run-case").join("out");
    let out =
        numasim(&["run", "gup-proc-mem-read", "--set", "run.duration_ms=200", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join(results::SUMMARY)).unwrap()).unwrap();
    assert_eq!(summary["scenario"], "gup-proc-mem-read");
}
