//! Traces against the summary: every traced event kind that has a counter counts what the
//! counter counts, read back from the ftrace text; tracing changes no result; a trace is
//! bit-identical for the same config and seed.

use crate::common;

use std::collections::BTreeMap;

use common::{CROSSED, PULLED, config, metric, scenario};
use sim_core::config::Config;
use sim_core::sim::{RunOutput, Sim};
use sim_core::trace::chrome::write_chrome;
use sim_core::trace::output::write_ftrace;
use sim_core::trace::parse::{count_events, numeric_fields, parse_line};
use sim_core::trace::{Kind, TpVersion, TraceOptions};

fn all_events() -> TraceOptions {
    TraceOptions { kinds: Kind::ALL.to_vec(), events: "*:*".into(), version: TpVersion::V6_12, max_bytes: 1 << 30 }
}

/// Runs `c` traced (after `prepare`) and returns the results and the ftrace text.
fn traced(c: &Config, prepare: impl FnOnce(&mut Sim)) -> (RunOutput, String) {
    let mut sim = workloads::build(c);
    prepare(&mut sim);
    sim.enable_trace(all_events());
    let out = sim.run().expect("the run completes");
    let mut text = Vec::new();
    let written = write_ftrace(out.trace.as_ref().expect("tracing was on"), &mut text).unwrap();
    assert_eq!(written.truncated, None, "the bound is far away");
    (out, String::from_utf8(text).unwrap())
}

/// What the trace says, per counter it can be held against.
fn tally(text: &str) -> BTreeMap<String, f64> {
    let c = count_events(text);
    let n = |e: &str| c.events.get(e).copied().unwrap_or(0) as f64;
    let sum = |e: &str| c.sums.get(e).copied().unwrap_or(0) as f64;
    let mut t = BTreeMap::new();
    t.insert("vmstat.numa_hint_faults".into(), n("numasim_hint_fault"));
    t.insert("vmstat.numa_pte_updates".into(), sum("numasim_task_numa_work.nr_pte_updates"));
    t.insert("vmstat.pgmigrate_success".into(), sum("mm_migrate_pages.nr_succeeded"));
    t.insert("vmstat.pgmigrate_fail".into(), sum("mm_migrate_pages.nr_failed"));
    t.insert("numasim.numa_task_migrated".into(), n("sched_move_numa"));
    // Both tasks of a swap move: two per sched_swap_numa.
    t.insert("numasim.numa_task_swapped".into(), 2.0 * n("sched_swap_numa"));
    t.insert("vmstat.cow_ksm".into(), n("numasim_ksm_cow"));
    t.insert("stale.accesses".into(), n("numasim_stale_access"));
    t.insert("ksm.pages_merged".into(), n("numasim_ksm_merge"));
    t.insert("ksm.skipped_protnone".into(), n("numasim_ksm_skip"));
    let mut local = 0.0;
    let mut migrated = 0.0;
    let mut stale_max = 0.0f64;
    for l in text.lines().filter_map(parse_line) {
        let field = |k: &str| numeric_fields(l.fields).find(|(f, _)| *f == k).map_or(0.0, |(_, v)| v as f64);
        match l.event {
            "numasim_hint_fault" => {
                local += field("local");
                migrated += field("migrated") * field("nr_pages");
                let source = l.fields.split_whitespace().find_map(|kv| kv.strip_prefix("source=")).unwrap();
                *t.entry(format!("hint_faults_by_source.{source}")).or_default() += 1.0;
            }
            "numasim_stale_mappings" => stale_max = stale_max.max(field("stale")),
            _ => {}
        }
    }
    t.insert("vmstat.numa_hint_faults_local".into(), local);
    t.insert("vmstat.numa_pages_migrated".into(), migrated);
    t.insert("stale.mappings_max".into(), stale_max);
    for s in ["cpu", "kvm", "device"] {
        t.entry(format!("hint_faults_by_source.{s}")).or_default();
    }
    t
}

#[test]
fn trace_event_counts_equal_the_summary_counters() {
    let full = |sim: &mut Sim, nodes: &[u8]| {
        sim.with_kernel(|k| {
            for &n in nodes {
                k.pgdat(n).free_pages = 0;
            }
        })
    };
    let runs: Vec<(&str, RunOutput, String)> = vec![
        ("default", scenario("default", &["run.duration_ms=3000"]), vec![]),
        ("pinned-device", scenario("pinned-device", &["run.duration_ms=3000"]), vec![]),
        (
            "ksm-protnone",
            scenario(
                "ksm-protnone",
                &["run.duration_ms=4000", "kernel.version=6.4", "process.0.thread.0.write_fraction=0.01"],
            ),
            vec![],
        ),
        (
            "mprotect-hazard",
            scenario("mprotect-hazard", &["run.duration_ms=4000", "kernel.gup_policy=implicit"]),
            vec![],
        ),
        ("moved", config(PULLED, &["run.duration_ms=12000"]), vec![1]),
        // A smaller imb_numa_nr with 8 CPUs a node: the second thread finds no CPU and sticks.
        ("stuck", config(PULLED, &["run.duration_ms=12000", "machine.cpus_per_node=8"]), vec![1]),
        ("swapped", config(CROSSED, &["run.duration_ms=8000"]), vec![0, 1]),
    ]
    .into_iter()
    .map(|(name, c, fill)| {
        let (out, text) = traced(&c, |sim| full(sim, &fill));
        (name, out, text)
    })
    .collect();
    let mut seen: BTreeMap<String, f64> = BTreeMap::new();
    for (name, out, text) in &runs {
        for (counter, traced) in tally(text) {
            let counted = metric(out, &counter);
            assert_eq!(traced, counted, "{name}: {counter}: trace {traced}, summary {counted}");
            *seen.entry(counter).or_default() += counted;
        }
    }
    // Every comparison above was of something that happened in some run.
    for (counter, total) in &seen {
        assert!(*total > 0.0, "no run exercised {counter}");
    }
    let sticks: Vec<&str> =
        runs.iter().filter(|(_, _, t)| count_events(t).events.contains_key("sched_stick_numa")).map(|r| r.0).collect();
    assert!(!sticks.is_empty(), "some task_numa_migrate() found no better CPU");
}

#[test]
fn tracing_changes_no_result_and_a_trace_is_bit_identical() {
    let c = scenario("default", &["run.duration_ms=2000"]);
    let plain = workloads::build(&c).run().expect("the run completes");
    let (first, text) = traced(&c, |_| {});
    let (_, again) = traced(&c, |_| {});
    assert_eq!(first.summary.metrics, plain.summary.metrics);
    assert_eq!(first.summary.events, plain.summary.events);
    assert_eq!(text, again, "same config and seed, same trace");
    let json = |out: &RunOutput| {
        let mut b = Vec::new();
        write_chrome(out.trace.as_ref().unwrap(), &mut b).unwrap();
        b
    };
    assert_eq!(json(&first), json(&traced(&c, |_| {}).0));
}

#[test]
fn a_filter_records_only_what_it_names() {
    let c = scenario("default", &["run.duration_ms=2000"]);
    let mut sim = workloads::build(&c);
    let kinds = sim_core::trace::parse_events("migrate:mm_migrate_pages,sched").unwrap();
    sim.enable_trace(TraceOptions { kinds, events: "migrate:mm_migrate_pages,sched".into(), ..all_events() });
    let out = sim.run().expect("the run completes");
    let trace = out.trace.as_ref().unwrap();
    assert!(!trace.records().is_empty());
    assert!(trace.records().iter().all(|r| matches!(r.event.kind().system(), "sched" | "migrate")));
    assert!(trace.records().iter().all(|r| r.event.kind() != Kind::MmMigratePagesStart));
    let succeeded: u64 = trace
        .records()
        .iter()
        .map(|r| match r.event {
            sim_core::trace::Event::MmMigratePages { succeeded, .. } => u64::from(succeeded),
            _ => 0,
        })
        .sum();
    assert_eq!(succeeded as f64, metric(&out, "vmstat.pgmigrate_success"));
}

/// A task runs on one CPU at a time. task_numa_migrate() decides at the end of a quantum;
/// migrate_task_to() moves the task when it stops running there, so it must not start on the
/// new CPU at the start of the quantum it just ran on the old one.
#[test]
fn a_task_moved_by_task_numa_migrate_never_runs_on_two_cpus_at_once() {
    for (name, c, fill) in [
        ("moved", config(PULLED, &["run.duration_ms=12000"]), vec![1u8]),
        ("swapped", config(CROSSED, &["run.duration_ms=8000"]), vec![0, 1]),
    ] {
        let (out, _) = traced(&c, |sim| {
            sim.with_kernel(|k| {
                for &n in &fill {
                    k.pgdat(n).free_pages = 0;
                }
            })
        });
        let moves = metric(&out, "numasim.numa_task_migrated") + metric(&out, "numasim.numa_task_swapped");
        assert!(moves > 0.0, "{name}: no task was moved");
        let mut runs: BTreeMap<u32, Vec<(u64, u64, u32)>> = BTreeMap::new();
        for r in out.trace.as_ref().unwrap().records() {
            if let sim_core::trace::Event::TaskRun { dur, .. } = r.event {
                runs.entry(r.pid).or_default().push((r.ts, r.ts + dur, r.cpu));
            }
        }
        for (pid, mut spans) in runs {
            spans.sort();
            for w in spans.windows(2) {
                let ((_, end, cpu), (start, _, next_cpu)) = (w[0], w[1]);
                assert!(
                    start >= end,
                    "{name}: pid {pid} ran on CPU {next_cpu} from {start} ns, before its run on CPU {cpu} ended at {end} ns"
                );
            }
        }
    }
}

/// One thread on node 1 whose memory, on node 0, its cpuset pins there.
const CPUSET_BOUND: &str = r#"
[run]
duration_ms = 4000

[machine]
cpus_per_node = 1

[[process]]
name = "app"
cpuset_mems = [0]

[[process.vma]]
name = "data"
size_mib = 64
populate_node = 0

[[process.thread]]
vma = "data"
cpus = [1]
"#;

/// task_numa_work() (kernel/sched/fair.c, 7.2.13 and 7.3.4, from 6.16) returns at once for a
/// task whose cpuset allows one node and fires sched_skip_cpuset_numa; 6.12.118 scans, and
/// its misplaced-page migrations fail: alloc_misplaced_dst_folio() gets nothing outside
/// cpuset.mems (pgmigrate_fail, nothing migrated).
#[test]
fn a_single_node_cpuset_stops_the_scanner_from_6_16() {
    let run = |version: &str| {
        let c = config(CPUSET_BOUND, &[&format!("kernel.version={version}")]);
        let mut sim = workloads::build(&c);
        sim.enable_trace(TraceOptions { version: TpVersion::V7_3, ..all_events() });
        let out = sim.run().expect("the run completes");
        let mut text = Vec::new();
        write_ftrace(out.trace.as_ref().expect("tracing was on"), &mut text).unwrap();
        let skips = count_events(&String::from_utf8(text).unwrap()).events.get("sched_skip_cpuset_numa").copied();
        (out, skips.unwrap_or(0))
    };
    let (old, old_skips) = run("6.12");
    assert!(metric(&old, "vmstat.numa_pte_updates") > 0.0);
    assert!(metric(&old, "vmstat.pgmigrate_fail") > 0.0, "the target node is outside cpuset.mems");
    assert_eq!((metric(&old, "vmstat.numa_pages_migrated"), old_skips), (0.0, 0));
    for version in ["6.18", "7.3"] {
        let (new, skips) = run(version);
        assert_eq!(metric(&new, "vmstat.numa_pte_updates"), 0.0, "{version}");
        assert_eq!(metric(&new, "vmstat.numa_hint_faults"), 0.0, "{version}");
        assert!(skips > 0, "{version}: one sched_skip_cpuset_numa per task_numa_work()");
    }
}
