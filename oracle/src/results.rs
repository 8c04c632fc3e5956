//! The guest's samples as numasim's result contract: summary.json and timeseries.csv with
//! numasim's names where the kernel measures the same thing, `kernel.*` extras where it
//! measures more, and `not_measured` for what it cannot give.

use std::collections::BTreeMap;

use guest::{Plan, Sample};
use serde_json::{Map, Value, json};

/// vmstat counters numasim and /proc/vmstat share, in numasim's order.
pub const VMSTAT: [&str; 14] = [
    "numa_pte_updates",
    "numa_huge_pte_updates",
    "numa_hint_faults",
    "numa_hint_faults_local",
    "numa_pages_migrated",
    "pgmigrate_success",
    "pgmigrate_fail",
    "cow_ksm",
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_migration_success",
    "thp_migration_fail",
    "thp_migration_split",
    "thp_split_pmd",
];

/// numasim metrics the kernel cannot give: who took a fault, per-touch locality, secondary-MMU
/// staleness and aging are the simulator's own observations; the task migration counts are
/// schedstats 6.1 and 6.12 do not export.
pub const NOT_MEASURED: [&str; 16] = [
    "vmstat.numa_task_migrated",
    "vmstat.numa_task_swapped",
    "hint_faults_by_source.cpu",
    "hint_faults_by_source.kvm",
    "hint_faults_by_source.device",
    "hint_faults_by_source.follow_page",
    "locality.cpu",
    "locality.kvm",
    "locality.device",
    "stale.mappings_max",
    "stale.mapping_ns",
    "stale.accesses",
    "stale.mappings",
    "ksm.skipped_protnone",
    "young.secondary_only_protnone",
    "touches.kvm",
];

/// What the run was, for the summary's header fields.
pub struct RunInfo<'a> {
    pub scenario: &'a str,
    pub seed: u64,
    pub release: &'a str,
    pub sim_version: &'a str,
    pub gup_policy: &'a str,
    pub wall_s: f64,
}

fn delta(last: &Sample, first: &Sample, name: &str) -> u64 {
    let get = |s: &Sample| s.vmstat.get(name).copied().unwrap_or(0);
    get(last).saturating_sub(get(first))
}

/// Touches by CPU threads and by devices (GUP callers) in `s`.
fn touches(s: &Sample) -> (u64, u64) {
    s.threads.iter().fold((0, 0), |(cpu, dev), t| {
        if t.name.starts_with("device/") { (cpu, dev + t.touches) } else { (cpu + t.touches, dev) }
    })
}

/// KSM merges so far: pages now mapping a KSM page plus those a write unshared again.
fn ksm_merged(last: &Sample, first: &Sample) -> u64 {
    let mapped = |s: &Sample| s.ksm.get("pages_shared").unwrap_or(&0) + s.ksm.get("pages_sharing").unwrap_or(&0);
    (mapped(last) + delta(last, first, "cow_ksm")).saturating_sub(mapped(first))
}

/// summary.json for samples `s` (the first is the workload's start).
pub fn summary(info: &RunInfo<'_>, s: &[Sample]) -> Value {
    let (first, last) = (&s[0], &s[s.len() - 1]);
    let elapsed_s = (last.t_ms - first.t_ms) / 1e3;
    let (cpu, device) = touches(last);
    let vmstat: Map<String, Value> = VMSTAT.iter().map(|n| (n.to_string(), json!(delta(last, first, n)))).collect();
    let kernel_vmstat: Map<String, Value> =
        last.vmstat.keys().map(|n| (n.clone(), json!(delta(last, first, n)))).collect();
    let kernel_ksm: Map<String, Value> = last.ksm.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let rate = if elapsed_s > 0.0 { (cpu + device) as f64 / elapsed_s } else { 0.0 };
    json!({
        "scenario": info.scenario,
        "seed": info.seed,
        "kernel_version": info.sim_version,
        "gup_policy": info.gup_policy,
        "notifier": "unconditional",
        "source": info.release,
        "sim_time_ns": (elapsed_s * 1e9) as u64,
        "wall_s": info.wall_s,
        "vmstat": vmstat,
        "touches": { "cpu": cpu, "device": device },
        "ksm": { "pages_merged": ksm_merged(last, first) },
        "throughput": { "touches_per_s": rate },
        "kernel_vmstat": kernel_vmstat,
        "kernel_ksm": kernel_ksm,
        "not_measured": NOT_MEASURED,
    })
}

/// timeseries.csv: one row per sample after the first, counters as interval deltas.
pub fn timeseries(plan: &Plan, s: &[Sample]) -> String {
    let mut header = vec!["time_ms".to_string()];
    header.extend(VMSTAT.iter().map(|n| format!("vmstat.{n}")));
    header.extend(["touches.cpu", "touches.device", "ksm.pages_merged", "throughput.touches_per_s"].map(String::from));
    header.extend((0..plan.nodes).map(|n| format!("node.{n}.used_pages")));
    let names: Vec<&str> = s[0].threads.iter().map(|t| t.name.as_str()).collect();
    header.extend(names.iter().map(|n| format!("task.{n}.nid")));
    header.extend(names.iter().map(|n| format!("kernel.task.{n}.numa_preferred_nid")));
    header.extend(names.iter().map(|n| format!("kernel.task.{n}.numa_scan_seq")));
    for (vma, _) in &s[0].vmas {
        header.extend((0..plan.nodes).map(|n| format!("kernel.vma.{vma}.node.{n}.pages")));
    }
    let ksm_keys: Vec<&String> = s[0].ksm.keys().collect();
    header.extend(ksm_keys.iter().map(|k| format!("kernel.ksm.{k}")));
    let mut out = header.join(",") + "\n";
    for w in s.windows(2) {
        out += &row(plan, &w[0], &w[1], &ksm_keys).join(",");
        out.push('\n');
    }
    out
}

fn row(plan: &Plan, prev: &Sample, cur: &Sample, ksm_keys: &[&String]) -> Vec<String> {
    let mut r = vec![format!("{}", cur.t_ms.round())];
    r.extend(VMSTAT.iter().map(|n| delta(cur, prev, n).to_string()));
    let ((c0, d0), (c1, d1)) = (touches(prev), touches(cur));
    let span_s = (cur.t_ms - prev.t_ms) / 1e3;
    let rate = if span_s > 0.0 { ((c1 + d1) - (c0 + d0)) as f64 / span_s } else { 0.0 };
    r.extend([(c1 - c0).to_string(), (d1 - d0).to_string(), ksm_merged(cur, prev).to_string(), rate.to_string()]);
    let mut used = vec![0u64; plan.nodes as usize];
    for (_, nodes) in &cur.vmas {
        for (u, n) in used.iter_mut().zip(nodes) {
            *u += n;
        }
    }
    r.extend(used.iter().map(u64::to_string));
    let nid = |cpu: i32| if cpu < 0 { String::new() } else { (cpu as u32 / plan.cpus_per_node).to_string() };
    r.extend(cur.threads.iter().map(|t| nid(t.cpu)));
    let sched = |t: &guest::ThreadSample, k: &str| t.sched.get(k).map_or(String::new(), i64::to_string);
    r.extend(cur.threads.iter().map(|t| sched(t, "numa_preferred_nid")));
    r.extend(cur.threads.iter().map(|t| sched(t, "mm->numa_scan_seq")));
    for (_, nodes) in &cur.vmas {
        r.extend(nodes.iter().map(u64::to_string));
    }
    r.extend(ksm_keys.iter().map(|k| cur.ksm.get(*k).copied().unwrap_or(0).to_string()));
    r
}

/// Per-thread touch rate in touches per second of guest time over the thread's active span:
/// what `validate` sets the simulator's think time from.
pub fn touch_rates(plan: &Plan, s: &[Sample]) -> BTreeMap<String, f64> {
    let last = &s[s.len() - 1];
    let spans: BTreeMap<String, (u64, Option<u64>)> = plan
        .processes
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| (t.name.clone(), (t.start_ms, t.stop_ms))))
        .chain(plan.remote_callers.iter().map(|c| (c.name.clone(), (c.start_ms, c.stop_ms))))
        .collect();
    last.threads
        .iter()
        .map(|t| {
            let (start, stop) = spans.get(&t.name).copied().unwrap_or((0, None));
            let end = stop.map_or(last.t_ms, |s| (s as f64).min(last.t_ms));
            let secs = (end - start as f64) / 1e3;
            (t.name.clone(), if secs > 0.0 { t.touches as f64 / secs } else { 0.0 })
        })
        .collect()
}
