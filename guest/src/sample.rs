//! What init reads every `run.sample_ms`: /proc/vmstat, KSM's counters, each VMA's pages per
//! node, each thread's CPU and NUMA scheduling fields.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use guest::{PAGE_SIZE, Plan, RUNTIME_KEY, Sample, SmmuSample, ThreadSample};

use crate::shared::Shared;

/// The sampler walks numa_maps (every page of every VMA: hundreds of milliseconds for a
/// large buffer under TCG) only when this many times the last walk's duration has passed
/// since, so it keeps to a tenth of one vCPU instead of taking one from the workload.
const PLACEMENT_DUTY: u64 = 10;

/// Reads samples, re-reading the VMA placement at most at [`PLACEMENT_DUTY`]'s pace (and
/// always for the first and the last sample); in between a sample repeats the last one.
#[derive(Default)]
pub struct Sampler {
    placement: Vec<(String, Vec<u64>)>,
    walked_at_ns: u64,
    walk_ns: u64,
}

impl Sampler {
    /// Reads one sample at `t_ms` since the workload started.
    pub fn take(&mut self, plan: &Plan, shared: &Shared, names: &[String], t_ms: f64, last: bool) -> Sample {
        let now = crate::sys::now_ns();
        let mut walk_cpu_ns = 0;
        if self.placement.is_empty() || last || now - self.walked_at_ns >= PLACEMENT_DUTY * self.walk_ns {
            let cpu = crate::sys::thread_cpu_ns();
            self.placement = vma_placement(plan, shared);
            (self.walked_at_ns, self.walk_ns) = (now, crate::sys::now_ns() - now);
            walk_cpu_ns = crate::sys::thread_cpu_ns() - cpu;
        }
        Sample {
            t_ms,
            vmstat: vmstat(),
            ksm: ksm(),
            vmas: self.placement.clone(),
            threads: threads(shared, names),
            smmus: smmus(plan, shared),
            uffd_rwp_faults: shared.uffd_rwp_faults.load(Ordering::Relaxed),
            uffd_rwp_waits: shared.uffd_rwp_waits.load(Ordering::Relaxed),
            uffd_rwp_wait_ns: shared.uffd_rwp_wait_ns.load(Ordering::Relaxed),
            proc_mem_eio: shared.proc_mem_eio.load(Ordering::Relaxed),
            sampler_cpu_ns: crate::sys::thread_cpu_ns(),
            placement_walk_cpu_ns: walk_cpu_ns,
            sampler_cpu: crate::sys::current_cpu(),
        }
    }
}

/// Each gupdev device's counters as its toucher last published them (empty until then).
fn smmus(plan: &Plan, shared: &Shared) -> Vec<SmmuSample> {
    plan.smmus
        .iter()
        .zip(&shared.smmus)
        .map(|(p, slot)| SmmuSample {
            name: p.name.clone(),
            kind: Some(p.kind),
            stats: if slot.valid.load(Ordering::Acquire) == 0 {
                BTreeMap::new()
            } else {
                crate::gupdev::STATS_FIELDS
                    .iter()
                    .zip(&slot.stats)
                    .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
                    .collect()
            },
        })
        .collect()
}

/// The vmstat lines numasim has names for, and their neighbours: numa_*, pgmigrate_*,
/// thp_*, cow_ksm, and memory tiering's pgpromote_* and pgdemote_*.
fn vmstat() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| {
            ["numa_", "pgmigrate_", "thp_", "pgpromote_", "pgdemote_"].iter().any(|p| k.starts_with(p))
                || *k == "cow_ksm"
        })
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// /sys/kernel/mm/ksm/pages_* (and full_scans).
fn ksm() -> BTreeMap<String, u64> {
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/ksm") else { return BTreeMap::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.starts_with("pages_") || name == "full_scans").then_some(())?;
            let v = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            Some((name, v))
        })
        .collect()
}

/// Pages per node of every VMA, summed over the numa_maps lines inside it (an mprotect of
/// part of a VMA splits it). numa_maps, not move_pages(2): on 6.1.192 move_pages reports a
/// protnone page as -ENOENT.
fn vma_placement(plan: &Plan, shared: &Shared) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    for (pi, p) in plan.processes.iter().enumerate() {
        let pid = shared.procs[pi].pid.load(Ordering::Relaxed);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap_or_default();
        for (vi, v) in p.vmas.iter().enumerate() {
            let base = shared.procs[pi].vma_base[vi].load(Ordering::Relaxed);
            let range = base..base + v.pages * PAGE_SIZE;
            let mut nodes = vec![0u64; (plan.nodes + plan.memory_nodes) as usize];
            for line in maps.lines() {
                let start = line.split(' ').next().and_then(|a| u64::from_str_radix(a, 16).ok());
                if start.is_some_and(|s| range.contains(&s)) {
                    add_node_counts(line, &mut nodes);
                }
            }
            out.push((format!("{}/{}", p.name, v.name), nodes));
        }
    }
    out
}

/// Adds a numa_maps line's `N<node>=<pages>` fields to `nodes`, in base pages: a hugetlb
/// VMA's line counts huge pages (gather_hugetlb_stats()), of `kernelpagesize_kB` each.
fn add_node_counts(line: &str, nodes: &mut [u64]) {
    let fields = || line.split(' ').filter_map(|f| f.split_once('='));
    let page_kib = fields().find(|(k, _)| *k == "kernelpagesize_kB").and_then(|(_, v)| v.parse::<u64>().ok());
    let scale = page_kib.map_or(1, |kib| (kib * 1024 / PAGE_SIZE).max(1));
    for (k, v) in fields() {
        let (Some(n), Ok(pages)) = (k.strip_prefix('N').and_then(|n| n.parse::<usize>().ok()), v.parse::<u64>()) else {
            continue;
        };
        if let Some(slot) = nodes.get_mut(n) {
            *slot += pages * scale;
        }
    }
}

fn threads(shared: &Shared, names: &[String]) -> Vec<ThreadSample> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let s = &shared.threads[i];
            let (pid, tid) = (s.pid.load(Ordering::Relaxed), s.tid.load(Ordering::Relaxed));
            let dir = format!("/proc/{pid}/task/{tid}");
            let stat = stat_fields(&dir);
            let field = |n: usize| stat.get(n - 3).map(String::as_str);
            ThreadSample {
                name: name.clone(),
                cpu: field(39).and_then(|f| f.parse().ok()).unwrap_or(-1),
                minflt: field(10).and_then(|f| f.parse().ok()),
                touches: s.touches.load(Ordering::Relaxed),
                sched: sched_numa(&dir),
            }
        })
        .collect()
}

/// The fields of /proc/PID/task/TID/stat after comm (field 3 first); none once it exited.
fn stat_fields(dir: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_comm.split_whitespace().map(String::from).collect()
}

/// The NUMA lines of /proc/PID/task/TID/sched (sched_show_numa() in kernel/sched/debug.c)
/// and the counters of how the task moved between CPUs and slept (proc_sched_show_task()):
/// se.nr_migrations counts every CPU change (NUMA placement, load balancing, wakeups),
/// nr_wakeups_migrate those at a wake-up and nr_forced_migrations those by active
/// balancing; nr_voluntary_switches every time the thread blocked, and the schedstats
/// sum_sleep_runtime and sum_block_runtime (milliseconds there, kept as nanoseconds with a
/// `_ns` suffix) how long it slept interruptibly and in D state;
/// and `sum_exec_runtime_ns`, the first field of its schedstat: the runtime task_tick_numa()
/// paces the scanner by.
fn sched_numa(dir: &str) -> BTreeMap<String, i64> {
    const KEYS: [&str; 10] = [
        "numa_preferred_nid",
        "mm->numa_scan_seq",
        "numa_pages_migrated",
        "total_numa_faults",
        "se.nr_migrations",
        "nr_voluntary_switches",
        "nr_involuntary_switches",
        "nr_wakeups",
        "nr_wakeups_migrate",
        "nr_forced_migrations",
    ];
    const MS_KEYS: [&str; 2] = ["sum_sleep_runtime", "sum_block_runtime"];
    let text = std::fs::read_to_string(format!("{dir}/sched")).unwrap_or_default();
    let fields = text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim()));
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for (k, v) in fields {
        if KEYS.contains(&k) {
            out.extend(v.parse().ok().map(|n| (k.to_string(), n)));
        } else if MS_KEYS.contains(&k) {
            out.extend(v.parse::<f64>().ok().map(|ms| (format!("{k}_ns"), (ms * 1e6).round() as i64)));
        }
    }
    let schedstat = std::fs::read_to_string(format!("{dir}/schedstat")).unwrap_or_default();
    if let Some(ns) = schedstat.split_whitespace().next().and_then(|f| f.parse().ok()) {
        out.insert(RUNTIME_KEY.to_string(), ns);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::add_node_counts;

    #[test]
    fn a_hugetlb_line_counts_huge_pages_and_becomes_base_pages() {
        let mut nodes = vec![0; 2];
        add_node_counts(
            "7f0000200000 default file=/anon_hugepage\\040(deleted) huge dirty=3 N0=2 N1=1 kernelpagesize_kB=2048",
            &mut nodes,
        );
        assert_eq!(nodes, [1024, 512]);
        add_node_counts(
            "7f0000a00000 default file=/memfd:ring\\040(deleted) dirty=4 N0=3 N1=1 kernelpagesize_kB=4",
            &mut nodes,
        );
        assert_eq!(nodes, [1027, 513]);
    }
}
