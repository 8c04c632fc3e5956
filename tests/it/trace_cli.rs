//! `run --trace` and `trace-diff` on the command line.

use crate::common;

use common::{numasim, ok, s, scratch};

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(results::SUMMARY)).unwrap()).unwrap()
}

#[test]
fn a_trace_past_its_bound_stops_and_says_so_in_the_file_and_the_summary() {
    let dir = scratch("trace-bound");
    let file = dir.join("default.txt");
    let out = ok(&[
        "run",
        "default",
        "--set",
        "run.duration_ms=2000",
        "--out",
        s(&dir.join("out")),
        "--trace",
        s(&file),
        "--trace-max-mib",
        "1",
    ]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.len() <= 1 << 20, "{} bytes", text.len());
    assert!(text.lines().last().unwrap().starts_with("# numasim: trace stopped at "));
    let t = &summary(&dir.join("out"))["trace"];
    assert_eq!(t["complete"], false);
    assert_eq!(t["format"], "ftrace");
    assert_eq!(t["bytes"].as_u64(), Some(text.len() as u64));
    assert!(t["stopped"].as_str().unwrap().contains("size bound"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("incomplete"));
    assert!(!dir.join(".default.txt.tmp").exists());
}

#[test]
fn a_json_trace_is_chrome_trace_events_for_perfetto() {
    let dir = scratch("trace-json");
    let file = dir.join("t.json");
    ok(&["run", "numa02", "--set", "run.duration_ms=1500", "--out", s(&dir.join("out")), "--trace", s(&file)]);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["numasim_complete"], true);
    let events = v["traceEvents"].as_array().unwrap();
    let named = |n: &str| events.iter().filter(|e| e["name"] == n).count();
    assert!(named("numasim_hint_fault") > 0);
    // A CPU track per CPU, named, under its node.
    let cpu_tracks = events
        .iter()
        .filter(|e| e["name"] == "thread_name" && e["args"]["name"].as_str().unwrap().starts_with("CPU "))
        .count();
    assert_eq!(cpu_tracks, 8);
    assert!(events.iter().any(|e| e["ph"] == "X" && e["name"] == "node 0"), "threads' node slices");
    assert_eq!(summary(&dir.join("out"))["trace"]["format"], "chrome-json");
}

#[test]
fn bad_trace_options_are_rejected_before_anything_runs() {
    let dir = scratch("trace-bad");
    let out_dir = dir.join("out");
    let cases: &[(&[&str], &str)] = &[
        (&["--trace", "t.txt", "--trace-events", "sched:sched_wakeup"], "matches no event"),
        (&["--trace", "t.dat"], "binary format"),
        (&["--trace", "t.txt", "--trace-kernel", "5.4"], "--trace-kernel"),
        (&["--trace", "t.txt", "--trace-max-mib", "0"], "--trace-max-mib"),
        (&["--trace-events", "sched:*"], "--trace"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["run", "numa02", "--out", s(&out_dir)];
        args.extend_from_slice(extra);
        let o = numasim(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!out_dir.join(results::SUMMARY).exists(), "{extra:?} ran");
    }
}

#[test]
fn trace_diff_compares_event_counts_per_kind() {
    let dir = scratch("trace-diff");
    let run = |policy: &str| {
        let file = dir.join(format!("{policy}.txt"));
        let set = format!("kernel.gup_policy={policy}");
        ok(&[
            "run",
            "device-gup",
            "--set",
            "run.duration_ms=2000",
            "--set",
            &set,
            "--out",
            s(&dir.join(policy)),
            "--trace",
            s(&file),
        ]);
        file
    };
    let (a, b) = (run("implicit"), run("explicit"));
    let out = String::from_utf8(ok(&["trace-diff", s(&a), s(&b)]).stdout).unwrap();
    let row = |name: &str| {
        out.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{out}")).to_string()
    };
    let cols = |name: &str| -> Vec<i64> { row(name).split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect() };
    let faults = cols("numasim_hint_fault");
    assert!(faults[0] > faults[1], "explicit: the device follows protnone PTEs: {out}");
    assert_eq!(faults[2], faults[1] - faults[0]);
    assert!(cols("mm_migrate_pages.nr_succeeded")[0] > 0, "{out}");

    // A real kernel's tracefs text reads as well.
    let kernel = dir.join("kernel.txt");
    std::fs::write(&kernel, "# tracer: nop\n#\n            a.out-4242    [003] d..2.  1234.567890: mm_migrate_pages: nr_succeeded=1 nr_failed=0 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced\n").unwrap();
    let out = String::from_utf8(ok(&["trace-diff", s(&a), s(&kernel)]).stdout).unwrap();
    assert!(
        out.lines().any(|l| l.starts_with("mm_migrate_pages.nr_succeeded") && l.split_whitespace().nth(2) == Some("1")),
        "{out}"
    );

    let junk = dir.join("junk.txt");
    std::fs::write(&junk, "not a trace\n").unwrap();
    assert_eq!(numasim(&["trace-diff", s(&a), s(&junk)]).status.code(), Some(2));
    assert_eq!(numasim(&["trace-diff", s(&a), s(&dir.join("missing.txt"))]).status.code(), Some(2));
}

/// The overload scenario's balancer moves a queued worker: trace-moves finds the moves in a
/// trace with sched_switch and classes every one, and refuses what it cannot read.
#[test]
fn trace_moves_classes_the_moves_of_a_run() {
    let dir = scratch("trace-moves");
    let file = dir.join("t.txt");
    let events = "sched:*,sched:sched_switch";
    ok(&["run", "overload", "--out", s(&dir.join("out")), "--trace", s(&file), "--trace-events", events]);
    let moved = summary(&dir.join("out"))["sched"]["nr_migrations"].as_u64().unwrap();
    assert!(moved > 0, "overload moves a worker");
    let out = String::from_utf8(ok(&["trace-moves", s(&file), "--comm", "overload/"]).stdout).unwrap();
    let first = out.lines().next().unwrap();
    assert!(first.starts_with(&format!("{moved} moves of overload/* threads (")), "{out}");
    let classed: u64 = out
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(classed, moved, "{out}");
    assert!(!out.contains("before its first sched_switch"), "{out}");
    assert_eq!(numasim(&["trace-moves", s(&dir.join("missing.txt")), "--comm", "x"]).status.code(), Some(2));
    assert_eq!(numasim(&["trace-moves", s(&file), "--comm", ""]).status.code(), Some(2));
}

#[test]
fn json_tracks_hold_devices_and_vcpus_with_their_events() {
    let dir = scratch("trace-tracks");
    let file = dir.join("default.json");
    ok(&["run", "default", "--set", "run.duration_ms=1500", "--out", s(&dir.join("out")), "--trace", s(&file)]);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let track = |process: &str, thread: &str| {
        let pid = events
            .iter()
            .find(|e| e["name"] == "process_name" && e["args"]["name"] == process)
            .unwrap_or_else(|| panic!("no process {process}"))["pid"]
            .clone();
        let tid = events
            .iter()
            .find(|e| e["name"] == "thread_name" && e["pid"] == pid && e["args"]["name"] == thread)
            .unwrap_or_else(|| panic!("no track {thread} in {process}"))["tid"]
            .clone();
        (pid, tid)
    };
    let on = |(pid, tid): (serde_json::Value, serde_json::Value), name: &str| {
        events.iter().filter(|e| e["pid"] == pid && e["tid"] == tid && e["name"] == name).count()
    };
    // The device's driver worker faults buffer pages in through GUP; the vCPUs take EPT
    // violations through GUP too, and run as slices on their own tracks.
    assert!(on(track("devices", "accel"), "numasim_gup") > 0);
    assert!(on(track("guest", "guest/vcpu/0"), "numasim_gup") > 0);
    assert!(events.iter().any(|e| e["ph"] == "X" && e["pid"] == track("guest", "guest/vcpu/0").0));
}
