//! The guest's samples as numasim's result contract: the summary and timeseries.csv with
//! numasim's names where the kernel measures the same thing, `kernel.*` extras where it
//! measures more, and `not_measured` for what it cannot give.

use std::collections::BTreeMap;

use ::results::{Groups, Summary, Value};
use guest::{Plan, RemotePath, Sample, SmmuKind, Touch};
use sim_core::metric;
use sim_core::stats::summary::{
    LOCALITY, Metric, PER_SCAN_PASS, PER_SCAN_PASS_GROUP, SCHED_NR_MIGRATIONS, SCHEDSTAT, STALE_MAPPINGS, THREAD,
    THROUGHPUT, TOUCHES, thread_node_share, thread_nr_migrations,
};
use sim_core::stats::{FileThpStat, KvmStat, SecondaryMmuChurn, TierStat, VmStat};

/// vmstat counters numasim and /proc/vmstat share: the model's `vmstat` group, whose names
/// are mm/vmstat.c's vmstat_text (6.1 and 6.12), in the model's order.
pub const VMSTAT: &[&str] = VmStat::NAMES;

/// numasim metrics the kernel cannot give: who took a fault, per-touch locality, secondary-MMU
/// staleness and aging are the simulator's own observations; no released kernel counts the
/// task migrations (`numasim.numa_task_*`: its record is the sched_move_numa and
/// sched_swap_numa tracepoints).
pub const NOT_MEASURED: [Metric; 16] = [
    metric!(Numasim.numa_task_migrated),
    metric!(Numasim.numa_task_swapped),
    metric!(HintFaultsBySource.cpu),
    metric!(HintFaultsBySource.kvm),
    metric!(HintFaultsBySource.device),
    metric!(HintFaultsBySource.follow_page),
    metric!(LOCALITY; Touches.cpu),
    metric!(LOCALITY; Touches.kvm),
    metric!(LOCALITY; Touches.device),
    metric!(Stale.mappings_max),
    metric!(Stale.mapping_ns),
    metric!(Stale.accesses),
    STALE_MAPPINGS,
    metric!(Ksm.skipped_protnone),
    metric!(Young.secondary_only_protnone),
    TOUCHES_KVM,
];

/// Touches by vCPUs: measured when the scenario has a VM.
const TOUCHES_KVM: Metric = metric!(TOUCHES; Touches.kvm);

/// The churn counters gupdev keeps (ABI 3), by numasim's name and the module's field.
const CHURN: [(Metric, &str); 5] = [
    (metric!(SecondaryMmuChurn.invalidate_protection_vma), "invalidations_protection_vma"),
    (metric!(SecondaryMmuChurn.invalidate_clear), "invalidations_clear"),
    (metric!(SecondaryMmuChurn.invalidate_unmap), "invalidations_unmap"),
    (metric!(SecondaryMmuChurn.entries_zapped), "entries_dropped"),
    (metric!(SecondaryMmuChurn.entries_refilled), "entries_refilled"),
];

/// The secondary-MMU churn metrics (`secondary_mmu.*`, `kvm.*`, `per_scan_pass.*`); gupdev
/// measures some ([`CHURN`]).
fn churn_not_measured() -> Vec<Metric> {
    let group = |g: &'static str, names: &'static [&'static str]| names.iter().map(move |&n| (g, n));
    group(SecondaryMmuChurn::GROUP, SecondaryMmuChurn::NAMES)
        .chain(group(KvmStat::GROUP, KvmStat::NAMES))
        .chain(group(PER_SCAN_PASS_GROUP, &PER_SCAN_PASS))
        .collect()
}

/// What the run was, for the summary's header fields.
pub struct RunInfo<'a> {
    pub scenario: &'a str,
    pub seed: u64,
    pub release: &'a str,
    pub sim_version: &'a str,
    pub gup_policy: &'a str,
    /// `kernel.notifier` (what gupdev's devices ran with).
    pub notifier: &'a str,
    /// The scenario ages pages (`aging.enabled`): the guest does not, so young.* is unknown.
    pub aging: bool,
    /// `kernel.numa_balancing`, the mode the guest switched on.
    pub numa_balancing: u8,
    pub wall_s: f64,
}

/// NUMA_BALANCING_MEMORY_TIERING in `kernel.numa_balancing` (include/linux/sched/sysctl.h).
const NUMA_BALANCING_MEMORY_TIERING: u8 = 2;

/// Memory tiering's summary entries, where the model files them (`c.tiered`: tiering mode or
/// a CPU-less node): the /proc/vmstat counters under the model's `vmstat` group, and the
/// hinting faults by tier, which the kernel does not count. They are derived in mode 2 alone:
/// without NUMA_BALANCING_NORMAL the scanner leaves top-tier folios alone (change_pte_range()
/// and change_huge_pmd() in 6.12, folio_can_map_prot_numa() in 7.3), so every hinting fault
/// is on a lower tier; in modes 1 and 3 the kernel's count does not split.
fn add_tiering(m: &mut Groups, not_measured: &mut Vec<Metric>, info: &RunInfo<'_>, (first, last): (&Sample, &Sample)) {
    for &name in TierStat::NAMES {
        count(m, (TierStat::GROUP, name), delta(last, first, name));
    }
    let by_tier = [metric!(HintFaultsByTier.toptier), metric!(HintFaultsByTier.lower)];
    if info.numa_balancing == NUMA_BALANCING_MEMORY_TIERING {
        count(m, by_tier[0], 0);
        count(m, by_tier[1], delta(last, first, "numa_hint_faults"));
    } else {
        not_measured.extend(by_tier);
    }
}

/// Whether the plan lets memfds hold THPs (`shmem_enabled` written, not `deny`), as the model
/// then reports the file THP counters.
fn shmem_thp_written(plan: &Plan) -> bool {
    plan.writes.iter().any(|(path, v)| path.ends_with("/shmem_enabled") && v != "never" && v != "deny")
}

fn delta(last: &Sample, first: &Sample, name: &str) -> u64 {
    let get = |s: &Sample| s.vmstat.get(name).copied().unwrap_or(0);
    get(last).saturating_sub(get(first))
}

/// Who a guest thread touches for: its numasim touch counter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Toucher {
    Cpu,
    Device,
    Kvm,
}

/// The toucher kind of every thread slot of `plan` (vCPUs are the threads of a VM's process
/// that touch through its KVM-like secondary MMU).
fn touchers(plan: &Plan) -> BTreeMap<String, Toucher> {
    let kind = |name: &str, touch: Touch| match touch {
        _ if name.starts_with("device/") => Toucher::Device,
        Touch::Smmu { smmu } if plan.smmus[smmu].kind == SmmuKind::Kvm => Toucher::Kvm,
        _ => Toucher::Cpu,
    };
    let threads = plan.processes.iter().flat_map(|p| &p.threads).map(|t| (t.name.clone(), kind(&t.name, t.touch)));
    threads.chain(plan.remote_callers.iter().map(|c| (c.name.clone(), Toucher::Device))).collect()
}

/// Touches by CPU threads, devices (GUP callers) and vCPUs in `s`.
fn touches(s: &Sample, kinds: &BTreeMap<String, Toucher>) -> [u64; 3] {
    s.threads.iter().fold([0; 3], |mut acc, t| {
        let i = match kinds.get(&t.name).copied().unwrap_or(Toucher::Cpu) {
            Toucher::Cpu => 0,
            Toucher::Device => 1,
            Toucher::Kvm => 2,
        };
        acc[i] += t.touches;
        acc
    })
}

/// KSM merges so far: pages now mapping a KSM page plus those a write unshared again.
/// /sys/kernel/mm/ksm/pages_skipped over the run: the smart scan's skips (6.7+; absent on 6.1).
fn ksm_skipped(last: &Sample, first: &Sample) -> Option<u64> {
    let at = |s: &Sample| s.ksm.get("pages_skipped").copied();
    Some(at(last)?.saturating_sub(at(first).unwrap_or(0)))
}

fn ksm_merged(last: &Sample, first: &Sample) -> u64 {
    let mapped = |s: &Sample| s.ksm.get("pages_shared").unwrap_or(&0) + s.ksm.get("pages_sharing").unwrap_or(&0);
    (mapped(last) + delta(last, first, "cow_ksm")).saturating_sub(mapped(first))
}

/// What gupdev measured, by numasim's names, and which of numasim's names that covers.
struct SmmuCounters {
    values: Vec<(Metric, u64)>,
    measured: Vec<Metric>,
}

/// A gupdev counter summed over the secondary MMUs of `kind` (all when None).
fn smmu_sum(s: &Sample, kind: Option<SmmuKind>, field: &str) -> u64 {
    s.smmus.iter().filter(|m| kind.is_none() || m.kind == kind).filter_map(|m| m.stats.get(field)).sum()
}

/// The module's counters under numasim's names. Staleness counts only when every device and
/// VM of the scenario has a gupdev secondary MMU (user-space GUP callers keep no mappings to
/// go stale, unlike the model's devices); young.* also needs a scenario without page aging
/// (the guest runs none; nothing else ages pages without memory pressure). Hinting faults
/// are the module's vmstat deltas around its GUP calls (system-wide: see gupdev's README).
/// `stale.mappings_max` sums each device's own maximum: exact with one device, an upper
/// bound of the gauge's maximum with more. The churn counters are the module's counts of
/// invalidations over each table's window by event, entries dropped and refilled, over the
/// workload (`first` to `last`).
fn smmu_counters(plan: &Plan, info: &RunInfo<'_>, (first, last): (&Sample, &Sample)) -> SmmuCounters {
    let mut out = SmmuCounters { values: Vec::new(), measured: Vec::new() };
    if plan.smmus.is_empty() {
        return out;
    }
    let devices_all_smmu = plan.remote_callers.iter().all(|c| matches!(c.path, RemotePath::Smmu { .. }))
        && plan.processes.iter().flat_map(|p| &p.threads).all(|t| matches!(t.touch, Touch::Cpu | Touch::Smmu { .. }));
    let has_kvm = plan.smmus.iter().any(|m| m.kind == SmmuKind::Kvm);
    let mut add = |name: Metric, v: u64| {
        out.values.push((name, v));
        out.measured.push(name);
    };
    if devices_all_smmu {
        add(metric!(Stale.mappings_max), smmu_sum(last, None, "stale_mappings_max"));
        add(metric!(Stale.mapping_ns), smmu_sum(last, None, "stale_mapping_ns"));
        add(metric!(Stale.accesses), smmu_sum(last, None, "stale_accesses"));
        add(STALE_MAPPINGS, smmu_sum(last, None, "stale_mappings"));
        add(metric!(HintFaultsBySource.device), smmu_sum(last, Some(SmmuKind::Device), "hint_faults"));
        if !info.aging {
            add(metric!(Young.secondary_only_protnone), smmu_sum(last, None, "young_secondary_only_protnone"));
        }
        for (name, field) in CHURN {
            add(name, smmu_sum(last, None, field).saturating_sub(smmu_sum(first, None, field)));
        }
    }
    if has_kvm {
        add(metric!(HintFaultsBySource.kvm), smmu_sum(last, Some(SmmuKind::Kvm), "hint_faults"));
    }
    out
}

fn count(m: &mut Groups, (group, name): Metric, v: u64) {
    m.set(group, name, Value::Count(v));
}

/// `sched.nr_migrations` and each thread's moves and node shares, as the model names them.
fn per_thread(m: &mut Groups, plan: &Plan, s: &[Sample]) {
    let last = &s[s.len() - 1];
    let moves: Vec<Option<u64>> = (0..last.threads.len()).map(|i| crate::schedstat::thread_moves(s, i)).collect();
    count(m, SCHED_NR_MIGRATIONS, moves.iter().flatten().sum::<u64>());
    for (i, t) in last.threads.iter().enumerate() {
        if let Some(n) = moves[i] {
            m.set(THREAD, thread_nr_migrations(&t.name), Value::Count(n));
        }
        for (node, share) in crate::schedstat::node_shares(plan, s, i).into_iter().flatten().enumerate() {
            m.set(THREAD, thread_node_share(&t.name, node), Value::Real(share));
        }
    }
}

/// A group of counts from a map of them.
fn counts<'a>(m: impl IntoIterator<Item = (&'a String, u64)>) -> ::results::Group {
    m.into_iter().map(|(k, v)| (k.clone().into(), Value::Count(v))).collect()
}

/// The summary for samples `s` (the first is the workload's start) and the files the guest
/// read at the start and the end (`files`, by `when`); a /proc/schedstat whose version
/// numasim cannot read fails.
pub fn summary(
    info: &RunInfo<'_>,
    plan: &Plan,
    s: &[Sample],
    files: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Summary, String> {
    let (first, last) = (&s[0], &s[s.len() - 1]);
    let elapsed_s = (last.t_ms - first.t_ms) / 1e3;
    let kinds = touchers(plan);
    let [cpu, device, kvm] = touches(last, &kinds);
    let rate = if elapsed_s > 0.0 { (cpu + device + kvm) as f64 / elapsed_s } else { 0.0 };
    let smmu = smmu_counters(plan, info, (first, last));
    let has_kvm = kinds.values().any(|k| *k == Toucher::Kvm);
    let mut not_measured: Vec<Metric> = NOT_MEASURED
        .into_iter()
        .chain(churn_not_measured())
        .filter(|m| !(smmu.measured.contains(m) || has_kvm && *m == TOUCHES_KVM))
        .collect();
    let mut out = Summary {
        scenario: info.scenario.into(),
        seed: info.seed,
        kernel_version: info.sim_version.into(),
        gup_policy: info.gup_policy.into(),
        notifier: info.notifier.into(),
        source: Some(info.release.into()),
        sim_time_ns: (elapsed_s * 1e9) as u64,
        wall_s: info.wall_s,
        kernel_vmstat: counts(last.vmstat.keys().map(|n| (n, delta(last, first, n)))),
        kernel_ksm: counts(last.ksm.iter().map(|(k, v)| (k, *v))),
        kernel_gupdev: Groups(
            last.smmus.iter().map(|m| (m.name.clone().into(), counts(m.stats.iter().map(|(k, v)| (k, *v))))).collect(),
        ),
        ..Summary::default()
    };
    let m = &mut out.metrics;
    for &name in VMSTAT {
        count(m, (VmStat::GROUP, name), delta(last, first, name));
    }
    count(m, metric!(TOUCHES; Touches.cpu), cpu);
    count(m, metric!(TOUCHES; Touches.device), device);
    if has_kvm {
        count(m, TOUCHES_KVM, kvm);
    }
    count(m, metric!(Ksm.pages_merged), ksm_merged(last, first));
    match ksm_skipped(last, first) {
        Some(n) => count(m, metric!(Ksm.pages_skipped), n),
        None => not_measured.push(metric!(Ksm.pages_skipped)),
    }
    m.set(THROUGHPUT.0, THROUGHPUT.1, Value::Real(rate));
    if plan.memory_nodes > 0 || info.numa_balancing & NUMA_BALANCING_MEMORY_TIERING != 0 {
        add_tiering(m, &mut not_measured, info, (first, last));
    }
    if shmem_thp_written(plan) {
        for &name in FileThpStat::NAMES {
            count(m, (FileThpStat::GROUP, name), delta(last, first, name));
        }
    }
    // The guest's handler threads count the sync RWP faults they resolve; the kernel counts
    // no RWP event of its own.
    if plan.processes.iter().flat_map(|p| &p.vmas).any(|v| v.uffd_rwp == Some(false)) {
        count(m, metric!(UffdRwp.uffd_rwp_faults), last.uffd_rwp_faults - first.uffd_rwp_faults);
    }
    // Nor GUP's -EFAULTs: a /proc/PID/mem reader's failed reads (EIO, mem_rw()) are the
    // guest's count of them. gupdev's own failures are not counted, so a plan with a device
    // leaves the counter out.
    if plan.processes.iter().flat_map(|p| &p.vmas).any(|v| v.uffd_rwp.is_some()) && plan.smmus.is_empty() {
        count(m, metric!(UffdRwp.uffd_rwp_gup_efaults), last.proc_mem_eio - first.proc_mem_eio);
    }
    for (name, v) in smmu.values.iter().filter(|(n, _)| *n != STALE_MAPPINGS) {
        count(m, *name, *v);
    }
    per_thread(m, plan, s);
    if let (Some(start), Some(end)) = (files.get("start"), files.get("end").and_then(|e| e.get("/proc/schedstat"))) {
        for (domain, counters) in crate::schedstat::deltas(start, end)? {
            for (name, v) in counters {
                m.set(SCHEDSTAT, format!("{domain}.{name}"), Value::Count(v));
            }
        }
    }
    out.not_measured = not_measured.into_iter().map(|(g, n)| format!("{g}.{n}")).collect();
    Ok(out)
}

/// timeseries.csv: one row per sample after the first, counters as interval deltas.
pub fn timeseries(plan: &Plan, s: &[Sample]) -> String {
    let mut header = vec!["time_ms".to_string()];
    header.extend(VMSTAT.iter().map(|n| format!("vmstat.{n}")));
    header.extend(["touches.cpu", "touches.device", "ksm.pages_merged", "throughput.touches_per_s"].map(String::from));
    let nodes = plan.nodes + plan.memory_nodes;
    header.extend((0..nodes).map(|n| format!("node.{n}.used_pages")));
    let names: Vec<&str> = s[0].threads.iter().map(|t| t.name.as_str()).collect();
    header.extend(names.iter().map(|n| format!("task.{n}.nid")));
    header.extend(names.iter().map(|n| format!("kernel.task.{n}.numa_preferred_nid")));
    header.extend(names.iter().map(|n| format!("kernel.task.{n}.numa_scan_seq")));
    for (vma, _) in &s[0].vmas {
        header.extend((0..nodes).map(|n| format!("kernel.vma.{vma}.node.{n}.pages")));
    }
    let ksm_keys: Vec<&String> = s[0].ksm.keys().collect();
    header.extend(ksm_keys.iter().map(|k| format!("kernel.ksm.{k}")));
    if !plan.smmus.is_empty() {
        header.extend(["stale.mappings", "stale.accesses"].map(String::from));
    }
    for (key, _) in THREAD_DELTAS {
        header.extend(names.iter().map(|n| format!("kernel.task.{n}.{key}")));
    }
    header.extend(SAMPLER_COLUMNS.map(String::from));
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
    let kinds = touchers(plan);
    let ([c0, d0, k0], [c1, d1, k1]) = (touches(prev, &kinds), touches(cur, &kinds));
    let span_s = (cur.t_ms - prev.t_ms) / 1e3;
    let rate = if span_s > 0.0 { ((c1 + d1 + k1) - (c0 + d0 + k0)) as f64 / span_s } else { 0.0 };
    r.extend([(c1 - c0).to_string(), (d1 - d0).to_string(), ksm_merged(cur, prev).to_string(), rate.to_string()]);
    let mut used = vec![0u64; (plan.nodes + plan.memory_nodes) as usize];
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
    if !plan.smmus.is_empty() {
        let accesses = |s: &Sample| smmu_sum(s, None, "stale_accesses");
        r.push(smmu_sum(cur, None, "stale_mappings").to_string());
        r.push(accesses(cur).saturating_sub(accesses(prev)).to_string());
    }
    for (_, field) in THREAD_DELTAS {
        r.extend(cur.threads.iter().zip(&prev.threads).map(|(c, p)| thread_delta(c, p, field)));
    }
    r.push(cur.sampler_cpu_ns.saturating_sub(prev.sampler_cpu_ns).to_string());
    r.push(cur.placement_walk_cpu_ns.to_string());
    r.push(cur.sampler_cpu.map_or(String::new(), |c| (c / plan.cpus_per_node).to_string()));
    r
}

/// The guest's sampler, not the kernel: its CPU time in the interval, that of the interval's
/// numa_maps walk (0 when it repeated the last one) and the node it sampled on (empty when
/// the guest could not say). validate shapes its stand-in for the sampler from them.
pub const SAMPLER_COLUMNS: [&str; 3] = ["guest.sampler.cpu_ns", "guest.sampler.walk_cpu_ns", "guest.sampler.nid"];

/// Per-thread columns of a kernel run's timeseries.csv, as interval deltas: the column's key
/// and the /proc/PID/task/TID/sched field it comes from (`touches`: the guest's own count;
/// `minflt`: the stat file's minor faults; `runtime_ns`: schedstat's runtime, which weighs
/// the CPU of `task.<thread>.nid` into the thread's node shares).
const THREAD_DELTAS: [(&str, &str); 12] = [
    ("touches", "touches"),
    ("runtime_ns", guest::RUNTIME_KEY),
    ("minflt", "minflt"),
    ("numa_pages_migrated", "numa_pages_migrated"),
    ("nr_migrations", "se.nr_migrations"),
    ("nr_wakeups_migrate", "nr_wakeups_migrate"),
    ("nr_forced_migrations", "nr_forced_migrations"),
    ("nr_wakeups", "nr_wakeups"),
    ("nr_voluntary_switches", "nr_voluntary_switches"),
    ("nr_involuntary_switches", "nr_involuntary_switches"),
    ("sum_sleep_runtime_ns", "sum_sleep_runtime_ns"),
    ("sum_block_runtime_ns", "sum_block_runtime_ns"),
];

/// `field` of a thread now less at the previous sample; empty when a side lacks it (an exited
/// thread, or a kernel that does not print it).
fn thread_delta(cur: &guest::ThreadSample, prev: &guest::ThreadSample, field: &str) -> String {
    let get = |t: &guest::ThreadSample| match field {
        "touches" => Some(t.touches as i64),
        "minflt" => t.minflt.map(|m| m as i64),
        _ => t.sched.get(field).copied(),
    };
    match (get(cur), get(prev)) {
        (Some(c), Some(p)) => (c - p).to_string(),
        _ => String::new(),
    }
}

/// Per-thread touch rate in touches per second of guest time over the thread's active span:
/// what `validate` sets the simulator's think time from.
pub fn touch_rates(plan: &Plan, s: &[Sample]) -> BTreeMap<String, f64> {
    per_active_second(plan, s, |t| Some(t.touches as f64))
}

/// Per-thread CPU share over the thread's active span: its runtime (schedstat) per second of
/// guest time. task_tick_numa() paces the scanner by runtime, so a worker that shares its
/// CPU (with the sampler, a main thread, kworkers) scans less often than one that owns it.
pub fn cpu_shares(plan: &Plan, s: &[Sample]) -> BTreeMap<String, f64> {
    let runtime = |t: &guest::ThreadSample| t.sched.get(guest::RUNTIME_KEY).map(|ns| *ns as f64 / 1e9);
    let first: BTreeMap<&str, f64> = s[0].threads.iter().filter_map(|t| Some((t.name.as_str(), runtime(t)?))).collect();
    per_active_second(plan, s, |t| Some(runtime(t)? - first.get(t.name.as_str())?))
}

/// `value` of each thread in the last sample per second of its active span (from its
/// start_ms to its stop_ms or the last sample); threads without a value are left out.
fn per_active_second(
    plan: &Plan,
    s: &[Sample],
    value: impl Fn(&guest::ThreadSample) -> Option<f64>,
) -> BTreeMap<String, f64> {
    let last = &s[s.len() - 1];
    let spans: BTreeMap<String, (u64, Option<u64>)> = plan
        .processes
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| (t.name.clone(), (t.start_ms, t.stop_ms))))
        .chain(plan.remote_callers.iter().map(|c| (c.name.clone(), (c.start_ms, c.stop_ms))))
        .collect();
    last.threads
        .iter()
        .filter_map(|t| {
            let (start, stop) = spans.get(&t.name).copied().unwrap_or((0, None));
            let end = stop.map_or(last.t_ms, |s| (s as f64).min(last.t_ms));
            let secs = (end - start as f64) / 1e3;
            Some((t.name.clone(), if secs > 0.0 { value(t)? / secs } else { 0.0 }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest::{ProcessPlan, RemoteCaller, SmmuPlan, SmmuSample, ThreadPlan, ThreadSample};

    /// The summary as the file holds it.
    fn json(s: Summary) -> serde_json::Value {
        serde_json::from_str(&s.to_text()).unwrap()
    }

    fn info() -> RunInfo<'static> {
        RunInfo {
            scenario: "s",
            seed: 1,
            release: "6.12.117+deb12-amd64",
            sim_version: "6.12",
            gup_policy: "explicit",
            notifier: "smart",
            aging: false,
            numa_balancing: 1,
            wall_s: 1.0,
        }
    }

    fn smmu(name: &str, kind: SmmuKind) -> SmmuPlan {
        SmmuPlan {
            name: name.into(),
            kind,
            process: 0,
            vma: 0,
            notifier: 2,
            kthread_node: None,
            write: false,
            honor_numa_fault: false,
            pin: false,
        }
    }

    fn sample<const N: usize>(t_ms: f64, touches: [u64; 3], stats: [(&str, u64); N]) -> Sample {
        let names = ["p/w/0", "device/d", "g/vcpu/0"];
        Sample {
            t_ms,
            threads: names
                .iter()
                .zip(touches)
                .map(|(n, t)| ThreadSample { name: n.to_string(), touches: t, ..ThreadSample::default() })
                .collect(),
            smmus: ["device/d", "kvm/g"]
                .iter()
                .zip([SmmuKind::Device, SmmuKind::Kvm])
                .map(|(n, kind)| SmmuSample {
                    name: n.to_string(),
                    kind: Some(kind),
                    stats: stats.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                })
                .collect(),
            ..Sample::default()
        }
    }

    fn thread(name: &str, touch: Touch) -> ThreadPlan {
        ThreadPlan {
            name: name.into(),
            vma: 0,
            first_page: 0,
            pages: 1,
            pattern: guest::Pattern::Sequential,
            touch_lines: 1,
            think_ns: 0,
            write_fraction: 0.0,
            start_ms: 0,
            stop_ms: None,
            start_cpu: 0,
            cpus: Vec::new(),
            touch,
        }
    }

    fn plan(device_path: RemotePath) -> Plan {
        Plan {
            nodes: 2,
            cpus_per_node: 2,
            smmus: vec![smmu("device/d", SmmuKind::Device), smmu("kvm/g", SmmuKind::Kvm)],
            processes: vec![
                ProcessPlan { threads: vec![thread("p/w/0", Touch::Cpu)], ..ProcessPlan::default() },
                ProcessPlan { threads: vec![thread("g/vcpu/0", Touch::Smmu { smmu: 1 })], ..ProcessPlan::default() },
            ],
            remote_callers: vec![RemoteCaller {
                name: "device/d".into(),
                node: 1,
                process: 0,
                vma: 0,
                write: false,
                path: device_path,
                pattern: guest::Pattern::Sequential,
                touch_lines: 1,
                think_ns: 0,
                start_ms: 0,
                stop_ms: None,
            }],
            ..Plan::default()
        }
    }

    #[test]
    fn gupdev_counters_fill_numasim_names_and_leave_not_measured() {
        let p = plan(RemotePath::Smmu { smmu: 0 });
        let stats = [("stale_accesses", 7), ("stale_mappings_max", 5), ("hint_faults", 11), ("entries_refilled", 9)];
        let at_start = [("stale_accesses", 0), ("stale_mappings_max", 0), ("hint_faults", 0), ("entries_refilled", 4)];
        let s = [sample(0.0, [0; 3], at_start)];
        let s = [s[0].clone(), sample(1000.0, [10, 20, 30], stats)];
        let v = json(summary(&info(), &p, &s, &BTreeMap::new()).unwrap());
        // Sums over both secondary MMUs for stale.*, by kind for the hinting faults.
        assert_eq!((v["stale"]["accesses"].as_u64(), v["stale"]["mappings_max"].as_u64()), (Some(14), Some(10)));
        assert_eq!(v["hint_faults_by_source"]["device"].as_u64(), Some(11));
        assert_eq!(v["hint_faults_by_source"]["kvm"].as_u64(), Some(11));
        assert_eq!((v["touches"]["cpu"].as_u64(), v["touches"]["device"].as_u64()), (Some(10), Some(20)));
        assert_eq!(v["touches"]["kvm"].as_u64(), Some(30));
        assert_eq!(v["notifier"], "smart");
        let nm: Vec<&str> = v["not_measured"].as_array().unwrap().iter().filter_map(|m| m.as_str()).collect();
        for m in ["stale.accesses", "young.secondary_only_protnone", "hint_faults_by_source.kvm", "touches.kvm"] {
            assert!(!nm.contains(&m), "{m} is measured: {nm:?}");
        }
        assert!(nm.contains(&"locality.device") && nm.contains(&"hint_faults_by_source.cpu"));
        assert_eq!(v["kernel_gupdev"]["device/d"]["hint_faults"].as_u64(), Some(11));
        assert_eq!(v["secondary_mmu"]["entries_refilled"].as_u64(), Some(10), "both tables, over the workload");
        assert!(!nm.contains(&"secondary_mmu.entries_refilled") && nm.contains(&"secondary_mmu.tlb_flushes"));
        assert!(nm.contains(&"kvm.kvm_unmap_hva_range"));
    }

    /// A user-space GUP caller keeps no mapping that could go stale: with one in the
    /// scenario, staleness stays unmeasured (the model's device has a secondary MMU).
    #[test]
    fn staleness_is_not_measured_beside_a_user_space_gup_caller() {
        let p = plan(RemotePath::ProcessVm);
        let s = [sample(0.0, [0; 3], [("a", 0); 3]), sample(1000.0, [1, 2, 3], [("stale_accesses", 3); 3])];
        let v = json(summary(&info(), &p, &s, &BTreeMap::new()).unwrap());
        assert!(v["stale"].is_null(), "{v}");
        let nm: Vec<&str> = v["not_measured"].as_array().unwrap().iter().filter_map(|m| m.as_str()).collect();
        assert!(nm.contains(&"stale.accesses") && nm.contains(&"hint_faults_by_source.device"));
        assert!(!nm.contains(&"hint_faults_by_source.kvm"));
    }

    /// The guest's handler threads' resolves are `numasim.uffd_rwp_faults` over the run, only
    /// when a VMA is registered in sync mode (an async one has no handler to count them).
    #[test]
    fn sync_rwp_handler_resolves_are_the_kernel_runs_rwp_faults() {
        let with_faults = |t_ms: f64, n: u64| Sample { uffd_rwp_faults: n, ..sample(t_ms, [0; 3], [("a", 0); 3]) };
        let s = [with_faults(0.0, 4), with_faults(1000.0, 19)];
        let mut p = plan(RemotePath::ProcessVm);
        let faults =
            |p: &Plan| json(summary(&info(), p, &s, &BTreeMap::new()).unwrap())["numasim"]["uffd_rwp_faults"].as_u64();
        assert_eq!(faults(&p), None, "no VMA registered");
        p.processes[0].vmas = vec![guest::VmaPlan { uffd_rwp: Some(true), ..guest::VmaPlan::default() }];
        assert_eq!(faults(&p), None, "async: no handler");
        p.processes[0].vmas[0].uffd_rwp = Some(false);
        assert_eq!(faults(&p), Some(15));
    }

    /// The reader's failed /proc/PID/mem reads are `numasim.uffd_rwp_gup_efaults` over the
    /// run when a VMA is registered (sync or async), and absent without one or with a gupdev
    /// device, whose failures the guest does not count.
    #[test]
    fn the_readers_eio_count_is_the_kernel_runs_gup_efaults() {
        let with_eio = |t_ms: f64, n: u64| Sample { proc_mem_eio: n, ..sample(t_ms, [0; 3], [("a", 0); 3]) };
        let s = [with_eio(0.0, 2), with_eio(1000.0, 30)];
        let mut p = Plan { smmus: Vec::new(), ..plan(RemotePath::ProcMem) };
        p.processes.truncate(1);
        let efaults = |p: &Plan| {
            json(summary(&info(), p, &s, &BTreeMap::new()).unwrap())["numasim"]["uffd_rwp_gup_efaults"].as_u64()
        };
        assert_eq!(efaults(&p), None, "no VMA registered");
        p.processes[0].vmas = vec![guest::VmaPlan { uffd_rwp: Some(true), ..guest::VmaPlan::default() }];
        assert_eq!(efaults(&p), Some(28));
        p.processes[0].vmas[0].uffd_rwp = Some(false);
        assert_eq!(efaults(&p), Some(28));
        p.smmus.push(smmu("device/d", SmmuKind::Device));
        assert_eq!(efaults(&p), None, "a gupdev device's failures are not counted");
    }

    #[test]
    fn a_threads_cpu_share_is_its_runtime_per_second_and_a_thread_without_schedstat_has_none() {
        let with_runtime = |t_ms: f64, ns: [i64; 2]| {
            let mut s = sample(t_ms, [0, 0, 0], [("held_pages", 0); 3]);
            for (t, ns) in s.threads.iter_mut().zip(ns) {
                t.sched.insert(guest::RUNTIME_KEY.to_string(), ns);
            }
            s
        };
        let plan = plan(RemotePath::ProcessVm);
        let s = [with_runtime(0.0, [5_000_000, 0]), with_runtime(2000.0, [1_105_000_000, 2_000_000_000])];
        let shares = cpu_shares(&plan, &s);
        assert_eq!(shares.len(), 2, "the vCPU thread has no schedstat: {shares:?}");
        assert!((shares["p/w/0"] - 0.55).abs() < 1e-12, "{shares:?}");
        assert_eq!(shares["device/d"], 1.0);
    }

    /// The per-thread columns are interval deltas of the guest's counts and the sched file's
    /// fields, and empty where a sample lacks the field.
    #[test]
    fn per_thread_columns_are_deltas_of_the_sched_fields() {
        let p = plan(RemotePath::ProcessVm);
        let mut s = [sample(0.0, [5, 0, 0], [("a", 0); 3]), sample(1000.0, [25, 0, 0], [("a", 0); 3])];
        for (smp, (mig, vol)) in s.iter_mut().zip([(3, 10), (7, 40)]) {
            smp.threads[0].minflt = Some(mig as u64 * 100);
            let sched = &mut smp.threads[0].sched;
            sched.extend([("se.nr_migrations".to_string(), mig), ("nr_voluntary_switches".to_string(), vol)]);
        }
        let csv = timeseries(&p, &s);
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("{name}"))];
        assert_eq!(col("kernel.task.p/w/0.touches"), "20");
        assert_eq!(col("kernel.task.p/w/0.nr_migrations"), "4");
        assert_eq!(col("kernel.task.p/w/0.minflt"), "400");
        assert_eq!(col("kernel.task.p/w/0.nr_voluntary_switches"), "30");
        assert_eq!(col("kernel.task.p/w/0.nr_involuntary_switches"), "");
        assert_eq!(col("kernel.task.device/d.nr_migrations"), "");
    }

    /// A sample where thread 0 runs on `cpu` with `runtime_ms` and `moves` so far, and the
    /// device thread has no sched file.
    fn on_cpu(t_ms: f64, cpu: i32, runtime_ms: i64, moves: i64) -> Sample {
        let mut s = sample(t_ms, [0; 3], [("a", 0); 3]);
        s.threads[0].cpu = cpu;
        s.threads[0].sched.extend([
            (guest::RUNTIME_KEY.to_string(), runtime_ms * 1_000_000),
            ("se.nr_migrations".to_string(), moves),
        ]);
        s
    }

    /// Each interval's runtime counts on the node of the CPU its closing sample saw; the
    /// moves are the delta of se.nr_migrations, summed into sched.nr_migrations.
    #[test]
    fn a_threads_node_shares_weigh_each_interval_by_its_runtime() {
        let p = plan(RemotePath::ProcessVm);
        let s =
            [on_cpu(0.0, 0, 0, 5), on_cpu(1000.0, 1, 300, 6), on_cpu(2000.0, 2, 400, 9), on_cpu(3000.0, 3, 1000, 9)];
        let v = json(summary(&info(), &p, &s, &BTreeMap::new()).unwrap());
        let t = &v["thread"];
        assert_eq!(t["p/w/0.nr_migrations"].as_u64(), Some(4));
        assert!((t["p/w/0.node0_share"].as_f64().unwrap() - 0.3).abs() < 1e-12, "{t}");
        assert!((t["p/w/0.node1_share"].as_f64().unwrap() - 0.7).abs() < 1e-12, "{t}");
        assert_eq!(v["sched"]["nr_migrations"].as_u64(), Some(4));
        let device = t.as_object().unwrap().keys().filter(|k| k.starts_with("device/d."));
        assert_eq!(device.count(), 0, "no sched file, no figures: {t}");
    }

    /// A thread the first sample did not see started later: its moves count from 0.
    #[test]
    fn a_thread_started_after_the_first_sample_counts_its_moves_from_zero() {
        let p = plan(RemotePath::ProcessVm);
        let mut first = on_cpu(0.0, 0, 0, 0);
        first.threads[0].sched.clear();
        let v = json(summary(&info(), &p, &[first, on_cpu(1000.0, 2, 50, 3)], &BTreeMap::new()).unwrap());
        assert_eq!(v["thread"]["p/w/0.nr_migrations"].as_u64(), Some(3));
        assert!(v["thread"]["p/w/0.node0_share"].is_null(), "no interval with runtime on both ends");
    }
}
