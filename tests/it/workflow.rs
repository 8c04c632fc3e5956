//! compare, sweep, merge and plot, end to end through the binary.

use crate::common;

use std::path::{Path, PathBuf};

use common::{numasim, ok, s, scratch};

const SWEEP: &str = r#"
base = "mprotect-hazard"

[sweep]
"kernel.gup_policy" = ["implicit", "explicit"]
"kernel.notifier" = ["unconditional", "smart"]
"run.seed" = [1, 2]

[set]
"run.duration_ms" = 1500
"#;

/// results.csv without its wall-clock column.
fn rows(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let wall = header.iter().position(|h| *h == "wall_s").expect("a wall_s column");
    std::iter::once(header.join(","))
        .chain(lines.map(|l| {
            l.split(',').enumerate().filter(|(i, _)| *i != wall).map(|(_, c)| c).collect::<Vec<_>>().join(",")
        }))
        .collect()
}

#[test]
fn a_sweep_is_independent_of_jobs_and_shards_and_resumes() {
    let dir = scratch("sweep");
    let file = dir.join("study.toml");
    std::fs::write(&file, SWEEP).unwrap();
    let one = dir.join("one");
    let two = dir.join("two");
    ok(&["sweep", s(&file), "--jobs", "1", "--out", s(&one)]);
    ok(&["sweep", s(&file), "--jobs", "2", "--out", s(&two)]);
    let whole = rows(&one);
    assert_eq!(whole.len(), 1 + 8, "2 x 2 x 2 runs");
    assert!(whole[0].starts_with("run,kernel.gup_policy,kernel.notifier,run.seed,"), "{}", whole[0]);
    assert!(whole[0].contains(",vmstat.numa_hint_faults,") && whole[0].contains(",stale.accesses,"));
    assert!(whole[1].starts_with("0,implicit,unconditional,1,"), "{}", whole[1]);
    assert!(whole[8].starts_with("7,explicit,smart,2,"), "{}", whole[8]);
    assert_eq!(whole, rows(&two), "--jobs 1 and --jobs 2 agree");

    let shards: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("shard-{i}"))).collect();
    for (i, shard) in shards.iter().enumerate() {
        ok(&["sweep", s(&file), "--shard", &format!("{}/3", i + 1), "--jobs", "1", "--out", s(shard)]);
    }
    assert_eq!(rows(&shards[0]).len(), 1 + 3, "runs 0, 3, 6");
    let merged = dir.join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(|p| s(p)));
    args.extend(["--out", s(&merged)]);
    ok(&args);
    assert_eq!(rows(&merged), whole, "three shards merged give the whole sweep");

    // Run again: every run is complete and reused, so even wall_s is unchanged.
    let before = std::fs::read_to_string(one.join("results.csv")).unwrap();
    let out = ok(&["sweep", s(&file), "--jobs", "2", "--out", s(&one)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("8 of 8 runs already complete"));
    assert_eq!(std::fs::read_to_string(one.join("results.csv")).unwrap(), before);
    // The sweep plots exist, and `plot` redraws them.
    assert!(
        one.join("sweep-hint_faults_by_source-device.png").is_file()
            && one.join("sweep-hint_faults_by_source-device.svg").is_file()
    );
    std::fs::remove_file(one.join("sweep-hint_faults_by_source-device.png")).unwrap();
    ok(&["plot", s(&one)]);
    assert!(one.join("sweep-hint_faults_by_source-device.png").is_file());
}

#[test]
fn merge_refuses_shards_of_different_sweeps() {
    let dir = scratch("merge");
    let a = dir.join("a.toml");
    let b = dir.join("b.toml");
    std::fs::write(&a, SWEEP).unwrap();
    std::fs::write(&b, SWEEP.replace("1500", "1000")).unwrap();
    ok(&["sweep", s(&a), "--shard", "1/2", "--out", s(&dir.join("sa"))]);
    ok(&["sweep", s(&b), "--shard", "2/2", "--out", s(&dir.join("sb"))]);
    let out = numasim(&["merge", s(&dir.join("sa")), s(&dir.join("sb")), "--out", s(&dir.join("m"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different sweep"));
}

#[test]
fn bad_sweep_files_are_rejected_before_any_run() {
    let dir = scratch("bad");
    for (name, text, expect) in [
        ("axis", SWEEP.replace("\"kernel.notifier\"", "\"kernel.notifer\""), "kernel.notifer"),
        ("empty", SWEEP.replace("[\"unconditional\", \"smart\"]", "[]"), "at least one value"),
        ("type", SWEEP.replace("[1, 2]", "[1, \"two\"]"), "run.seed"),
        ("top", format!("bse = 1\n{SWEEP}"), "bse"),
        ("value", SWEEP.replace("\"smart\"]", "\"clever\"]"), "clever"),
        ("set", SWEEP.replace("\"run.duration_ms\" = 1500", "\"run.duration_ms\" = -1"), "set.\"run.duration_ms\""),
    ] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, &text).unwrap();
        let out_dir = dir.join(name);
        let out = numasim(&["sweep", s(&file), "--out", s(&out_dir)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(expect), "{name}: {err}");
        assert!(!out_dir.exists(), "{name}: nothing ran");
    }
    let file = dir.join("axis.toml");
    let err = String::from_utf8_lossy(&numasim(&["sweep", s(&file)]).stderr).into_owned();
    assert!(err.contains("line 6") && err.contains("did you mean `notifier`"), "{err}");
}

#[test]
fn compare_prints_the_table_and_writes_a_report_with_plots() {
    let dir = scratch("compare");
    let out_dir = dir.join("cmp");
    let out = ok(&[
        "compare",
        "device-gup",
        "--set",
        "run.duration_ms=3000",
        "--policies",
        "implicit,explicit",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "--out",
        s(&out_dir),
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap();
    assert!(header.contains("implicit") && header.contains("explicit") && !header.contains("implicit-all"));
    let row = table.lines().find(|l| l.starts_with("hint_faults_by_source.device")).expect("a device row");
    assert!(row.contains("-100.00%"), "explicit takes no device faults: {row}");
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(report.contains("## What to look at") && report.contains("hint_faults_by_source.device"));
    let pngs: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    assert!(pngs.len() >= 3, "{pngs:?}");
    for png in &pngs {
        assert!(png.with_extension("svg").is_file());
        let name = png.file_name().unwrap().to_string_lossy();
        assert!(report.contains(&format!("]({name})")), "report links {name}");
    }
    for run in ["implicit/seed-1", "implicit/seed-2", "explicit/seed-1", "explicit/seed-2"] {
        assert!(out_dir.join(run).join(results::SUMMARY).is_file(), "{run}");
    }
    ok(&["plot", s(&out_dir)]);
}
