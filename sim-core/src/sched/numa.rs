//! NUMA task placement (kernel/sched/fair.c, CONFIG_NUMA_BALANCING): per-task fault
//! statistics, the preferred node, numa groups, task migration and the scan period.

use bevy_ecs::prelude::*;

use super::fair::{SCHED_CAPACITY_SCALE, Tasks, adjust_numa_imbalance, rq_avg};
use super::{Affinity, Task, migrate_task_to};
use crate::engine::{NSEC_PER_MSEC, NSEC_PER_SEC, Nanos};
use crate::kernel::{Faulter, Kernel, Sysctl};
use crate::machine::Nid;
use crate::mm::{CPUPID_UNSET, Mm, PageIdx, cpu_pid_to_cpupid, cpupid_match_pid, cpupid_pid_unset, cpupid_to_cpu};
use crate::sched::promotion::{folio_use_access_time, should_promote};
use crate::trace::Event;
use crate::trace::events::{NumaPair, TaskIds};
use crate::trace_event;
use crate::version::Rules;

/// task_numa_fault() flags (include/linux/sched/numa_balancing.h).
pub const TNF_MIGRATED: u32 = 0x01;
pub const TNF_NO_GROUP: u32 = 0x02;
pub const TNF_SHARED: u32 = 0x04;
pub const TNF_FAULT_LOCAL: u32 = 0x08;
pub const TNF_MIGRATE_FAIL: u32 = 0x10;

/// Rows of the numa_faults array (enum numa_faults_stats).
const NUMA_MEM: usize = 0;
const NUMA_CPU: usize = 1;
const NUMA_MEMBUF: usize = 2;
const NUMA_CPUBUF: usize = 3;
const NR_NUMA_HINT_FAULT_TYPES: usize = 2;
const NR_NUMA_HINT_FAULT_STATS: usize = NR_NUMA_HINT_FAULT_TYPES * 2;
const NR_NUMA_HINT_FAULT_BUCKETS: usize = NR_NUMA_HINT_FAULT_STATS * 2;

const NUMA_PERIOD_SLOTS: i64 = 10;
const NUMA_PERIOD_THRESHOLD: i64 = 7;
/// Never scan more PTEs than MAX_SCAN_WINDOW MB/sec.
const MAX_SCAN_WINDOW: u64 = 2560;
/// A node with more than 1/3 of the group's maximum CPU faults is active.
const ACTIVE_NODE_FRACTION: i64 = 3;
/// Minimum improvement (of 1000) for a task swap (SMALLIMP).
const SMALLIMP: i64 = 30;

/// `task_faults_idx()`.
#[inline]
fn task_faults_idx(nr_nodes: usize, s: usize, nid: usize, private: usize) -> usize {
    NR_NUMA_HINT_FAULT_TYPES * (s * nr_nodes + nid) + private
}

/// A numa_group. Simplified: one group per process, held by its mm, which a thread joins on
/// its first shared fault against a sibling thread (the kernel creates per-task groups and
/// merges the groups of threads of one mm, which ends in the same place); a TNF_SHARED fault
/// against another process's task moves the thread to that process's group when it is the
/// larger (`TaskNuma::group_mm`).
#[derive(Clone, Debug)]
pub struct NumaGroup {
    pub nr_tasks: u32,
    pub active_nodes: u32,
    pub max_faults_cpu: i64,
    pub total_faults: i64,
    /// `NR_NUMA_HINT_FAULT_STATS * nr_nodes` entries: NUMA_MEM and NUMA_CPU rows.
    pub faults: Vec<i64>,
}

impl NumaGroup {
    fn new(nr_nodes: usize) -> Self {
        Self {
            nr_tasks: 0,
            active_nodes: 1,
            max_faults_cpu: 0,
            total_faults: 0,
            faults: vec![0; NR_NUMA_HINT_FAULT_STATS * nr_nodes],
        }
    }

    fn nr_nodes(&self) -> usize {
        self.faults.len() / NR_NUMA_HINT_FAULT_STATS
    }

    /// `group_faults()`.
    pub fn faults_mem(&self, nid: usize) -> i64 {
        let n = self.nr_nodes();
        self.faults[task_faults_idx(n, NUMA_MEM, nid, 0)] + self.faults[task_faults_idx(n, NUMA_MEM, nid, 1)]
    }

    /// `group_faults_cpu()`.
    pub fn faults_cpu(&self, nid: usize) -> i64 {
        let n = self.nr_nodes();
        self.faults[task_faults_idx(n, NUMA_CPU, nid, 0)] + self.faults[task_faults_idx(n, NUMA_CPU, nid, 1)]
    }

    /// `group_faults_priv()` and `group_faults_shared()`.
    fn faults_by_type(&self, private: usize) -> i64 {
        let n = self.nr_nodes();
        (0..n).map(|nid| self.faults[task_faults_idx(n, NUMA_MEM, nid, private)]).sum()
    }

    /// `numa_is_active_node()`.
    fn is_active_node(&self, nid: usize) -> bool {
        self.faults_cpu(nid) * ACTIVE_NODE_FRACTION > self.max_faults_cpu
    }

    /// `numa_group_count_active_nodes()`.
    fn count_active_nodes(&mut self) {
        let n = self.nr_nodes();
        let max = (0..n).map(|nid| self.faults_cpu(nid)).max().unwrap_or(0);
        self.max_faults_cpu = max;
        self.active_nodes = (0..n).filter(|&nid| self.faults_cpu(nid) * ACTIVE_NODE_FRACTION > max).count() as u32;
    }
}

/// A task's NUMA balancing state (the `numa_*` fields of task_struct).
#[derive(Component, Clone, Debug)]
pub struct TaskNuma {
    pub pid: u32,
    pub mm: Entity,
    pub node_stamp: Nanos,
    /// Milliseconds, as in the kernel.
    pub numa_scan_period: u64,
    pub numa_scan_period_max: u64,
    pub numa_scan_seq: u32,
    pub numa_preferred_nid: Option<Nid>,
    /// `NR_NUMA_HINT_FAULT_BUCKETS * nr_nodes` entries once the first fault is taken.
    pub numa_faults: Vec<i64>,
    pub total_numa_faults: i64,
    /// Remote, local and failed-migration faults since the last scan-period update.
    pub numa_faults_locality: [u64; 3],
    pub numa_migrate_retry: Nanos,
    pub numa_pages_migrated: u64,
    pub last_task_numa_placement: Nanos,
    pub last_sum_exec_runtime: Nanos,
    /// Member of a numa group: its process's, or `group_mm`'s.
    pub in_group: bool,
    /// The mm holding the group the task joined when that is another process's (a TNF_SHARED
    /// fault on a memfd both map); `None`: its own mm's.
    pub group_mm: Option<Entity>,
    /// numa_migrate_preferred() asked for task_numa_migrate(); it runs when the quantum ends.
    pub migrate_pending: bool,
}

impl TaskNuma {
    /// The mm holding the task's numa group (its own unless it joined another process's).
    pub fn group_home(&self) -> Entity {
        self.group_mm.unwrap_or(self.mm)
    }

    /// Models init_numa_balancing() for a new thread.
    pub fn new(pid: u32, mm: Entity, sysctl: &Sysctl) -> Self {
        Self {
            pid,
            mm,
            node_stamp: 0,
            numa_scan_period: sysctl.0.numa_balancing_scan_delay_ms,
            numa_scan_period_max: 0,
            numa_scan_seq: 0,
            numa_preferred_nid: None,
            numa_faults: Vec::new(),
            total_numa_faults: 0,
            numa_faults_locality: [0; 3],
            numa_migrate_retry: 0,
            numa_pages_migrated: 0,
            last_task_numa_placement: 0,
            last_sum_exec_runtime: 0,
            in_group: false,
            group_mm: None,
            migrate_pending: false,
        }
    }

    fn nr_nodes(&self) -> usize {
        self.numa_faults.len() / NR_NUMA_HINT_FAULT_BUCKETS
    }

    /// `task_faults()`.
    pub fn task_faults(&self, nid: usize) -> i64 {
        if self.numa_faults.is_empty() {
            return 0;
        }
        let n = self.nr_nodes();
        self.numa_faults[task_faults_idx(n, NUMA_MEM, nid, 0)] + self.numa_faults[task_faults_idx(n, NUMA_MEM, nid, 1)]
    }

    /// `task_weight()`, for directly connected nodes (score_nearby_nodes() is 0).
    pub fn task_weight(&self, nid: usize) -> i64 {
        if self.total_numa_faults <= 0 {
            return 0;
        }
        1000 * self.task_faults(nid) / self.total_numa_faults
    }
}

/// `group_weight()`.
pub(crate) fn group_weight(ng: Option<&NumaGroup>, nid: usize) -> i64 {
    match ng {
        Some(g) if g.total_faults > 0 => 1000 * g.faults_mem(nid) / g.total_faults,
        _ => 0,
    }
}

/// Models task_nr_scan_windows(): the RSS in scan-size windows, at least one.
pub fn task_nr_scan_windows(sysctl: &Sysctl, rss: u64) -> u64 {
    let nr_scan_pages = sysctl.scan_size_pages();
    let rss = if rss == 0 { nr_scan_pages } else { rss };
    rss.div_ceil(nr_scan_pages)
}

/// Models task_scan_min(): milliseconds.
pub fn task_scan_min(sysctl: &Sysctl, rss: u64) -> u64 {
    let scan_size = sysctl.0.numa_balancing_scan_size_mb;
    let windows = if scan_size < MAX_SCAN_WINDOW { MAX_SCAN_WINDOW / scan_size } else { 1 };
    let floor = 1000 / windows;
    let scan = sysctl.0.numa_balancing_scan_period_min_ms / task_nr_scan_windows(sysctl, rss);
    floor.max(scan)
}

/// Scales `period` with the share of the group's faults that are shared.
fn scale_by_group(period: u64, ng: Option<&NumaGroup>) -> u64 {
    match ng {
        Some(g) => {
            let shared = g.faults_by_type(0).max(0) as u64;
            let private = g.faults_by_type(1).max(0) as u64;
            period * u64::from(g.nr_tasks) * (shared + 1) / (private + shared + 1)
        }
        None => period,
    }
}

/// Models task_scan_start().
pub fn task_scan_start(sysctl: &Sysctl, rss: u64, ng: Option<&NumaGroup>) -> u64 {
    let smin = task_scan_min(sysctl, rss);
    smin.max(scale_by_group(smin, ng))
}

/// Models update_scan_period() in kernel/sched/fair.c (6.1.192, 6.12.117): a task moved to
/// another node scans at the start rate again, unless it has completed a scan and moves to
/// its preferred node or was away from it already.
pub fn update_scan_period(k: &Kernel, p: &mut TaskNuma, src_cpu: u32, dst_cpu: u32) {
    let (src_nid, dst_nid) = (k.topo.cpu_to_node(src_cpu), k.topo.cpu_to_node(dst_cpu));
    if !k.sysctl.0.numa_balancing.enabled() || p.numa_faults.is_empty() || src_nid == dst_nid {
        return;
    }
    if p.numa_scan_seq != 0
        && (Some(dst_nid) == p.numa_preferred_nid || p.numa_preferred_nid.is_some_and(|n| n != src_nid))
    {
        return;
    }
    let rss = k.mms.get(p.mm).expect("tasks point at live mms").rss;
    p.numa_scan_period = task_scan_start(&k.sysctl, rss, group_of(p, &k.mms));
}

/// Models task_scan_max().
pub fn task_scan_max(sysctl: &Sysctl, rss: u64, ng: Option<&NumaGroup>) -> u64 {
    let smin = task_scan_min(sysctl, rss);
    let smax = sysctl.0.numa_balancing_scan_period_max_ms / task_nr_scan_windows(sysctl, rss);
    let smax = smax.max(scale_by_group(smax, ng));
    smin.max(smax)
}

/// The numa group `p` belongs to (`deref_task_numa_group()`), if any, held by its home mm.
pub(crate) fn group_of<'a>(p: &TaskNuma, mms: &'a Query<&mut Mm>) -> Option<&'a NumaGroup> {
    if p.in_group { mms.get(p.group_home()).ok().and_then(|m| m.numa_group.as_ref()) } else { None }
}

/// Models update_task_scan_period() in kernel/sched/fair.c (6.1.192, 6.12.117): slow
/// scanning when faults are local or private, speed it up when they are remote and private,
/// double it when there were no local or shared faults or a migration failed — and then
/// clear the locality counts only where the kernel does ([`Rules::scan_slower_clears_locality`]).
pub fn update_task_scan_period(
    p: &mut TaskNuma,
    (mm, ng): (&mut Mm, Option<&NumaGroup>),
    sysctl: &Sysctl,
    rules: &Rules,
    now: Nanos,
    shared: u64,
    private: u64,
) {
    let remote = p.numa_faults_locality[0];
    let local = p.numa_faults_locality[1];
    if local + shared == 0 || p.numa_faults_locality[2] != 0 {
        p.numa_scan_period = p.numa_scan_period_max.min(p.numa_scan_period << 1);
        mm.numa_next_scan = now + p.numa_scan_period * NSEC_PER_MSEC;
        if rules.scan_slower_clears_locality {
            p.numa_faults_locality = [0; 3];
        }
        return;
    }
    let period_slot = p.numa_scan_period.div_ceil(NUMA_PERIOD_SLOTS as u64) as i64;
    let lr_ratio = (local as i64 * NUMA_PERIOD_SLOTS) / (local + remote) as i64;
    let ps_ratio = (private as i64 * NUMA_PERIOD_SLOTS) / (private + shared) as i64;
    let diff = if ps_ratio >= NUMA_PERIOD_THRESHOLD {
        (ps_ratio - NUMA_PERIOD_THRESHOLD).max(1) * period_slot
    } else if lr_ratio >= NUMA_PERIOD_THRESHOLD {
        (lr_ratio - NUMA_PERIOD_THRESHOLD).max(1) * period_slot
    } else {
        -(NUMA_PERIOD_THRESHOLD - lr_ratio.max(ps_ratio)) * period_slot
    };
    let lo = task_scan_min(sysctl, mm.rss) as i64;
    let hi = task_scan_max(sysctl, mm.rss, ng) as i64;
    p.numa_scan_period = (p.numa_scan_period as i64 + diff).clamp(lo, hi.max(lo)) as u64;
    p.numa_faults_locality = [0; 3];
}

/// Models numa_get_avg_runtime(). Simplified: before the first placement the task counts
/// as always runnable (the kernel uses its PELT load_sum).
fn numa_get_avg_runtime(p: &mut TaskNuma, now: Nanos, runtime: Nanos) -> (u64, u64) {
    let (delta, period) = if p.last_task_numa_placement != 0 {
        (runtime - p.last_sum_exec_runtime, now.saturating_sub(p.last_task_numa_placement))
    } else {
        (runtime, runtime)
    };
    p.last_sum_exec_runtime = runtime;
    p.last_task_numa_placement = now;
    (delta, period)
}

/// Models task_numa_placement(): once per new numa_scan_seq, decay the fault statistics by
/// half, fold in the faults since, pick the preferred node, update the scan period.
/// Simplified: preferred_group_nid() as for directly connected nodes.
pub fn task_numa_placement(k: &mut Kernel, p: &mut TaskNuma, now: Nanos, runtime: Nanos) {
    let Kernel { sysctl, mms, rules, topo, .. } = k;
    let seq = mms.get(p.mm).expect("tasks point at live mms").numa_scan_seq;
    if p.numa_scan_seq == seq {
        return;
    }
    // The group may be another process's: out of its home mm while the faults fold in.
    let home = p.group_home();
    let mut group = if p.in_group { mms.get_mut(home).ok().and_then(|mut m| m.numa_group.take()) } else { None };
    let mut mm = mms.get_mut(p.mm).expect("tasks point at live mms");
    p.numa_scan_seq = seq;
    p.numa_scan_period_max = task_scan_max(sysctl, mm.rss, group.as_ref());

    let total_faults = (p.numa_faults_locality[0] + p.numa_faults_locality[1]) as i64;
    let (runtime, period) = numa_get_avg_runtime(p, now, runtime);
    let n = p.nr_nodes();
    let mut fault_types = [0i64; 2];
    let mut max_faults = 0i64;
    let mut max_nid = None;
    for nid in 0..n {
        let (mut faults, mut group_faults) = (0i64, 0i64);
        for (private, fault_type) in fault_types.iter_mut().enumerate() {
            let mem_idx = task_faults_idx(n, NUMA_MEM, nid, private);
            let membuf_idx = task_faults_idx(n, NUMA_MEMBUF, nid, private);
            let cpu_idx = task_faults_idx(n, NUMA_CPU, nid, private);
            let cpubuf_idx = task_faults_idx(n, NUMA_CPUBUF, nid, private);
            let f = &mut p.numa_faults;
            let diff = f[membuf_idx] - f[mem_idx] / 2;
            *fault_type += f[membuf_idx];
            f[membuf_idx] = 0;
            let f_weight = ((runtime << 16) / (period + 1)) as i64;
            let f_weight = f_weight * f[cpubuf_idx] / (total_faults + 1);
            let f_diff = f_weight - f[cpu_idx] / 2;
            f[cpubuf_idx] = 0;
            f[mem_idx] += diff;
            f[cpu_idx] += f_diff;
            faults += f[mem_idx];
            p.total_numa_faults += diff;
            if let Some(ng) = group.as_mut() {
                ng.faults[mem_idx] += diff;
                ng.faults[cpu_idx] += f_diff;
                ng.total_faults += diff;
                group_faults += ng.faults[mem_idx];
            }
        }
        let score = if group.is_some() { group_faults } else { faults };
        if score > max_faults {
            max_faults = score;
            max_nid = Some(nid as Nid);
        }
    }
    if let Some(ng) = group.as_mut() {
        ng.count_active_nodes();
    }
    // A task cannot run on a CPU-less node: numa_nearest_node(max_nid, N_CPU).
    let max_nid = max_nid.map(|nid| topo.nearest_cpu_node(nid));
    if max_faults > 0 {
        p.numa_preferred_nid = max_nid;
    }
    let (shared, private) = (fault_types[0].max(0) as u64, fault_types[1].max(0) as u64);
    update_task_scan_period(p, (&mut mm, group.as_ref()), sysctl, rules, now, shared, private);
    if group.is_some() {
        mms.get_mut(home).expect("groups live in live mms").numa_group = group;
    }
}

/// Models task_numa_group() with per-process groups (see [`NumaGroup`]): a fault whose
/// cpupid names a task running now joins the faulting task to its process's group when that
/// task is a sibling; when it is another process's and the fault is TNF_SHARED, the task
/// moves to that process's group if it is the larger (on a tie, the group of the mm with
/// the lower pid wins, standing in for the kernel's group address). Returns whether the
/// fault counts as private.
fn task_numa_group(k: &mut Kernel, p: &mut TaskNuma, cpupid: u32, flags: u32) -> bool {
    let cpu = cpupid_to_cpu(cpupid);
    if cpu >= k.topo.nr_cpus() {
        return false;
    }
    let Some((curr_pid, curr_mm)) = k.cpu(cpu).curr else {
        return false;
    };
    if !cpupid_match_pid(curr_pid, cpupid) {
        return false;
    }
    if curr_mm != p.mm && flags & TNF_SHARED == 0 {
        // Another process without TNF_SHARED: the pid match was a collision, so private.
        return true;
    }
    if !p.in_group {
        join_group(k, p, p.mm);
    }
    if curr_mm != p.mm && curr_mm != p.group_home() && larger_group(k, curr_mm, p.group_home()) {
        leave_group(k, p);
        join_group(k, p, curr_mm);
    }
    false
}

/// Whether the group held by `theirs` is larger than the one held by `mine` (a missing group:
/// no), ties going to the mm with the lower pid.
fn larger_group(k: &Kernel, theirs: Entity, mine: Entity) -> bool {
    let size = |e: Entity| k.mms.get(e).ok().and_then(|m| m.numa_group.as_ref().map(|g| (g.nr_tasks, m.pid)));
    match (size(theirs), size(mine)) {
        (Some((t, tpid)), Some((m, mpid))) => t > m || (t == m && tpid < mpid),
        _ => false,
    }
}

/// Adds `p`'s fault statistics to the group `home` holds (made if it has none).
fn join_group(k: &mut Kernel, p: &mut TaskNuma, home: Entity) {
    let nr_nodes = k.topo.nr_nodes as usize;
    let mut mm = k.mm(home);
    let ng = mm.numa_group.get_or_insert_with(|| NumaGroup::new(nr_nodes));
    for (g, t) in ng.faults.iter_mut().zip(&p.numa_faults[..NR_NUMA_HINT_FAULT_STATS * nr_nodes]) {
        *g += t;
    }
    ng.total_faults += p.total_numa_faults;
    ng.nr_tasks += 1;
    p.in_group = true;
    p.group_mm = (home != p.mm).then_some(home);
}

/// Takes `p`'s fault statistics out of its group.
fn leave_group(k: &mut Kernel, p: &mut TaskNuma) {
    let mut home = k.mm(p.group_home());
    task_numa_free(&mut home, p);
}

/// Models task_numa_free(): a thread leaves its group when it exits.
pub fn task_numa_free(mm: &mut Mm, p: &mut TaskNuma) {
    if !p.in_group {
        return;
    }
    if let Some(ng) = mm.numa_group.as_mut() {
        let n = ng.nr_nodes();
        for (g, t) in ng.faults.iter_mut().zip(&p.numa_faults[..NR_NUMA_HINT_FAULT_STATS * n]) {
            *g -= t;
        }
        ng.total_faults -= p.total_numa_faults;
        ng.nr_tasks -= 1;
    }
    p.in_group = false;
    p.group_mm = None;
}

/// Models task_numa_fault(): account a hinting fault on a page of `mem_node` to the task.
/// Faults on a slow-tier node are not accounted in memory-tiering mode, nor, in any mode,
/// when the folio had no valid last_cpupid.
pub fn task_numa_fault(
    k: &mut Kernel,
    p: &mut TaskNuma,
    f: &Faulter,
    last_cpupid: u32,
    mem_node: Nid,
    pages: u64,
    flags: u32,
) {
    if !k.tiers.node_is_toptier(mem_node) && (k.sysctl.0.numa_balancing.tiering() || cpupid_pid_unset(last_cpupid)) {
        return;
    }
    let nr_nodes = k.topo.nr_nodes as usize;
    let cpu_node = f.nid as usize;
    let mut local = usize::from(flags & TNF_FAULT_LOCAL != 0);
    if p.numa_faults.is_empty() {
        p.numa_faults = vec![0; NR_NUMA_HINT_FAULT_BUCKETS * nr_nodes];
        p.total_numa_faults = 0;
        p.numa_faults_locality = [0; 3];
    }
    // The first fault tests the whole cpupid (`-1 & LAST_CPUPID_MASK`), not just its pid.
    let private = if last_cpupid == CPUPID_UNSET {
        true
    } else {
        let mut private = cpupid_match_pid(p.pid, last_cpupid);
        if !private && flags & TNF_NO_GROUP == 0 {
            private = task_numa_group(k, p, last_cpupid, flags);
        }
        private
    };
    if !private && local == 0 && p.in_group {
        let mm = k.mm(p.group_home());
        if let Some(ng) = &mm.numa_group
            && ng.active_nodes > 1
            && ng.is_active_node(cpu_node)
            && ng.is_active_node(mem_node as usize)
        {
            local = 1;
        }
    }
    if f.now > p.numa_migrate_retry {
        task_numa_placement(k, p, f.now, f.runtime);
        numa_migrate_preferred(p, f);
    }
    if flags & TNF_MIGRATED != 0 {
        p.numa_pages_migrated += pages;
    }
    if flags & TNF_MIGRATE_FAIL != 0 {
        p.numa_faults_locality[2] += pages;
    }
    let private = usize::from(private);
    p.numa_faults[task_faults_idx(nr_nodes, NUMA_MEMBUF, mem_node as usize, private)] += pages as i64;
    p.numa_faults[task_faults_idx(nr_nodes, NUMA_CPUBUF, cpu_node, private)] += pages as i64;
    p.numa_faults_locality[local] += pages;
}

/// Models should_numa_migrate_memory(): record this CPU+pid in the page's last_cpupid and
/// decide whether a fault from `f` should pull the folio of `nr` pages from `src_nid` to
/// `f.nid`. A slow-tier folio in memory-tiering mode is judged by hotness instead
/// ([`should_promote`]); outside that mode a slow-tier folio's first fault does not migrate.
pub fn should_numa_migrate_memory(k: &mut Kernel, f: &Faulter, page: PageIdx, nr: u64, src_nid: Nid) -> bool {
    let dst_nid = f.nid;
    let slot = k.pages.slot(page);
    if folio_use_access_time(k, src_nid) {
        return should_promote(k, slot, dst_nid, nr, f.now);
    }
    let this_cpupid = cpu_pid_to_cpupid(f.cpu, f.pid);
    let last_cpupid = std::mem::replace(&mut k.pages.slots.last_cpupid[slot], this_cpupid);
    if !k.sysctl.0.numa_balancing.tiering() && !k.tiers.node_is_toptier(src_nid) && cpupid_pid_unset(last_cpupid) {
        return false;
    }
    let (preferred, scan_seq, in_group, mm) = match f.task.as_deref() {
        Some(p) => (p.numa_preferred_nid, p.numa_scan_seq, p.in_group, Some(p.group_home())),
        None => (None, 0, false, None),
    };
    let unset = cpupid_pid_unset(last_cpupid);
    let matches = cpupid_match_pid(f.pid, last_cpupid);
    // Early in a task's life, migrate on first or private faults.
    if (preferred.is_none() || scan_seq <= 4) && (unset || matches) {
        return true;
    }
    // Two-stage filter: the previous fault must have come from the same node (P(n)^2).
    if !unset {
        let last_cpu = cpupid_to_cpu(last_cpupid);
        if last_cpu >= k.topo.nr_cpus() || k.topo.cpu_to_node(last_cpu) != dst_nid {
            return false;
        }
    }
    if matches {
        return true;
    }
    let (Some(mm), true) = (mm, in_group) else {
        return true;
    };
    let mm = k.mms.get(mm).expect("tasks point at live mms");
    let Some(ng) = &mm.numa_group else {
        return true;
    };
    let (src, dst) = (src_nid as usize, dst_nid as usize);
    if ng.faults_cpu(dst) > ng.faults_cpu(src) * ACTIVE_NODE_FRACTION {
        return true;
    }
    ng.faults_cpu(dst) * ng.faults_mem(src) * 3 > ng.faults_cpu(src) * ng.faults_mem(dst) * 4
}

/// Models numa_migrate_preferred(): retry every min(1 s, scan period / 16); when the task
/// is away from its preferred node, ask for task_numa_migrate().
fn numa_migrate_preferred(p: &mut TaskNuma, f: &Faulter) {
    let Some(preferred) = p.numa_preferred_nid else {
        return;
    };
    if p.numa_faults.is_empty() {
        return;
    }
    let interval = NSEC_PER_SEC.min(p.numa_scan_period * NSEC_PER_MSEC / 16);
    p.numa_migrate_retry = f.now + interval;
    if f.nid != preferred {
        p.migrate_pending = true;
    }
}

/// task_numa_env's imbalance_pct: sd_numa's (sd_init()'s 117 on every NUMA level, see
/// `topology.rs`) with its excess halved, as task_numa_migrate() sets it.
const NUMA_ENV_IMBALANCE_PCT: u64 = 100 + (117 - 100) / 2;

/// enum numa_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumaType {
    HasSpare,
    FullyBusy,
    Overloaded,
}

/// struct numa_stats: a node's PELT sums (`fair::rq_avg()`), its threads, and the first idle
/// CPU there that `p` may use.
#[derive(Clone, Copy, Debug)]
struct NumaStats {
    load: i64,
    nr_running: usize,
    capacity: i64,
    idle_cpu: Option<u32>,
    node_type: NumaType,
}

/// update_numa_stats() with numa_classify(). Capacity is 1024 per CPU.
fn update_numa_stats(k: &Kernel, tasks: &Tasks, nid: Nid, allowed: &Affinity) -> NumaStats {
    let (mut load, mut runnable, mut util, mut nr_running, mut idle_cpu) = (0, 0, 0, 0, None);
    let mut weight = 0;
    for cpu in k.topo.node_cpus(nid) {
        let avg = rq_avg(k, tasks, cpu);
        load += avg.load;
        runnable += avg.runnable;
        util += avg.util_cfs();
        let len = k.rq_len(cpu);
        nr_running += len;
        weight += 1;
        if len == 0 && idle_cpu.is_none() && allowed.allows(cpu) {
            idle_cpu = Some(cpu);
        }
    }
    let capacity = SCHED_CAPACITY_SCALE * weight as u64;
    let node_type = numa_classify((nr_running, weight), capacity, util, runnable);
    NumaStats { load: load as i64, nr_running, capacity: capacity as i64, idle_cpu, node_type }
}

/// numa_classify() at task_numa_env's imbalance_pct, for a node running `running.0` threads
/// on `running.1` CPUs.
fn numa_classify(running: (usize, usize), capacity: u64, util: u64, runnable: u64) -> NumaType {
    let (nr_running, weight) = running;
    let pct = NUMA_ENV_IMBALANCE_PCT;
    if nr_running > weight && (capacity * 100 < util * pct || capacity * pct < runnable * 100) {
        NumaType::Overloaded
    } else if nr_running < weight || (capacity * 100 > util * pct && capacity * pct > runnable * 100) {
        NumaType::HasSpare
    } else {
        NumaType::FullyBusy
    }
}

/// load_too_imbalanced(): would moving load leave the two nodes further apart than they
/// are, capacity considered?
fn load_too_imbalanced(src: &NumaStats, dst: &NumaStats, src_load: i64, dst_load: i64) -> bool {
    let imb = (dst_load * src.capacity - src_load * dst.capacity).abs();
    let old_imb = (dst.load * src.capacity - src.load * dst.capacity).abs();
    imb > old_imb
}

/// The best place found so far (struct task_numa_env's best_*).
#[derive(Clone, Copy, Debug)]
struct Best {
    imp: i64,
    /// The thread to swap with, or `None` to move to an idle CPU.
    task: Option<Entity>,
    cpu: u32,
}

/// struct task_numa_env, reduced to what the simulation needs.
struct NumaEnv {
    src_cpu: u32,
    src_nid: Nid,
    /// The mm holding the task's group.
    p_home: Entity,
    p_group: Option<NumaGroup>,
    affinity: Affinity,
    best: Option<Best>,
    src_stats: NumaStats,
    /// task_h_load(p).
    p_load: i64,
}

impl NumaEnv {
    fn best_imp(&self) -> i64 {
        self.best.map_or(0, |b| b.imp)
    }
}

/// Models task_numa_compare(): would `p` be better off on `cpu` of `dst_nid`, moving there
/// or swapping with the thread running there?
#[allow(clippy::too_many_arguments)]
fn task_numa_compare(
    k: &mut Kernel,
    tasks: &Query<(&mut Task, &mut TaskNuma)>,
    env: &mut NumaEnv,
    dst_nid: Nid,
    cpu: u32,
    taskimp: i64,
    groupimp: i64,
    maymove: bool,
    dst_stats: &NumaStats,
) {
    let (src, dst) = (env.src_nid as usize, dst_nid as usize);
    let moveimp = if env.p_group.is_some() { groupimp } else { taskimp };
    let Some(cur_e) = k.rq(cpu).curr_task() else {
        if maymove && moveimp >= env.best_imp() {
            env.best = Some(Best { imp: moveimp, task: None, cpu });
        }
        return;
    };
    let Ok((cur_task, cur)) = tasks.get(cur_e) else { return };
    if !cur_task.affinity.allows(env.src_cpu) {
        return;
    }
    let best_prefers_src = |env: &NumaEnv| {
        env.best
            .and_then(|b| b.task)
            .and_then(|t| tasks.get(t).ok())
            .is_some_and(|(_, b)| b.numa_preferred_nid == Some(env.src_nid))
    };
    if best_prefers_src(env) && cur.numa_preferred_nid != Some(env.src_nid) {
        return;
    }
    let cur_group = group_of(cur, &k.mms).cloned();
    let same_group = match (&cur_group, &env.p_group) {
        (None, None) => true,
        (Some(_), Some(_)) => cur.group_home() == env.p_home,
        _ => false,
    };
    let mut imp = moveimp;
    if same_group {
        // No swap within a group, or between group-less tasks, while there is spare capacity.
        if dst_stats.node_type == NumaType::HasSpare {
            return;
        }
        imp = taskimp + cur.task_weight(src) - cur.task_weight(dst);
        if cur_group.is_some() {
            imp -= imp / 16;
        }
    } else if let (Some(cg), Some(_)) = (&cur_group, &env.p_group) {
        imp += group_weight(Some(cg), src) - group_weight(Some(cg), dst);
    } else {
        imp += cur.task_weight(src) - cur.task_weight(dst);
    }
    // Discourage taking a thread off its preferred node; encourage sending one to it.
    if cur.numa_preferred_nid == Some(dst_nid) {
        imp -= imp / 16;
    }
    if cur.numa_preferred_nid == Some(env.src_nid) {
        imp += imp / 8;
    }
    if maymove && moveimp > imp && moveimp > env.best_imp() {
        env.best = Some(Best { imp: moveimp, task: None, cpu });
        return;
    }
    if env.best.is_some_and(|b| b.task.is_some())
        && cur.numa_preferred_nid == Some(env.src_nid)
        && !best_prefers_src(env)
    {
        env.best = Some(Best { imp, task: Some(cur_e), cpu });
        return;
    }
    if imp < SMALLIMP || imp <= env.best_imp() + SMALLIMP / 2 {
        return;
    }
    // In the overloaded case, keep the load balanced.
    let load = env.p_load - cur_task.avg.at(k.now(), true, false).load_avg as i64;
    if load != 0 && load_too_imbalanced(&env.src_stats, dst_stats, env.src_stats.load - load, dst_stats.load + load) {
        return;
    }
    env.best = Some(Best { imp, task: Some(cur_e), cpu });
}

/// Models task_numa_find_cpu(): an idle CPU on `dst_nid` if the move keeps the nodes
/// balanced, else the best thread there to swap with; on a node without spare capacity a
/// plain move is allowed when it does not unbalance the load (load_too_imbalanced()).
fn task_numa_find_cpu(
    k: &mut Kernel,
    tasks: &Query<(&mut Task, &mut TaskNuma)>,
    env: &mut NumaEnv,
    dst_nid: Nid,
    taskimp: i64,
    groupimp: i64,
) {
    let dst = update_numa_stats(k, tasks, dst_nid, &env.affinity);
    let maymove = if dst.node_type == NumaType::HasSpare {
        let (src_running, dst_running) = (env.src_stats.nr_running as i64 - 1, dst.nr_running as i64 + 1);
        let imbalance = (dst_running - src_running).max(0);
        let imb_numa_nr = imb_numa_nr(k.topo.cpus_per_node as usize) as i64;
        let balanced = adjust_numa_imbalance(imbalance, dst_running, imb_numa_nr) == 0;
        if balanced && let Some(cpu) = dst.idle_cpu {
            env.best = Some(Best { imp: 0, task: None, cpu });
            return;
        }
        balanced
    } else {
        !load_too_imbalanced(&env.src_stats, &dst, env.src_stats.load - env.p_load, dst.load + env.p_load)
    };
    for cpu in k.topo.node_cpus(dst_nid) {
        if env.affinity.allows(cpu) {
            task_numa_compare(k, tasks, env, dst_nid, cpu, taskimp, groupimp, maymove, &dst);
        }
    }
}

/// The NUMA domain's `imb_numa_nr`, as build_sched_domains() in kernel/sched/topology.c
/// (6.1.192 and 6.12.117 alike) sets it for one LLC per node: "allow an imbalance up to
/// 12.5% of the node", `max(1, sd->span_weight >> 3)` with the node-sized domain's weight.
pub fn imb_numa_nr(cpus_per_node: usize) -> usize {
    (cpus_per_node >> 3).max(1)
}

/// Models task_numa_migrate(): look for a better CPU on the preferred node, and on the
/// other nodes when there is none or the task's group spans several; then move there or
/// swap. Simplified: nodes are directly connected (no score_nearby_nodes()). `te` is running until
/// `until`, when it stops on its CPU and a move takes effect; a swapped task moves now.
pub fn task_numa_migrate(k: &mut Kernel, tasks: &mut Query<(&mut Task, &mut TaskNuma)>, te: Entity, until: Nanos) {
    let Ok((task, p)) = tasks.get(te) else { return };
    let Some(preferred) = p.numa_preferred_nid else { return };
    let src_nid = k.topo.cpu_to_node(task.cpu);
    let p_group = group_of(p, &k.mms).cloned();
    let mut env = NumaEnv {
        src_cpu: task.cpu,
        src_nid,
        p_home: p.group_home(),
        p_group,
        src_stats: update_numa_stats(k, tasks, src_nid, &task.affinity),
        p_load: task.avg.at(k.now(), true, false).load_avg as i64,
        affinity: task.affinity.clone(),
        best: None,
    };
    let weights =
        |p: &TaskNuma, g: Option<&NumaGroup>, nid: Nid| (p.task_weight(nid as usize), group_weight(g, nid as usize));
    let (taskweight, groupweight) = weights(p, env.p_group.as_ref(), src_nid);
    let p = p.clone();
    let imps = |env: &NumaEnv, nid: Nid| {
        let (t, g) = weights(&p, env.p_group.as_ref(), nid);
        (t - taskweight, g - groupweight)
    };
    if preferred != src_nid {
        let (taskimp, groupimp) = imps(&env, preferred);
        task_numa_find_cpu(k, tasks, &mut env, preferred, taskimp, groupimp);
    }
    let spans = env.p_group.as_ref().is_some_and(|g| g.active_nodes > 1);
    if env.best.is_none() || spans {
        for nid in k.topo.cpu_nodes() {
            if nid == src_nid || nid == preferred {
                continue;
            }
            let (taskimp, groupimp) = imps(&env, nid);
            if taskimp < 0 && groupimp < 0 {
                continue;
            }
            task_numa_find_cpu(k, tasks, &mut env, nid, taskimp, groupimp);
        }
    }
    // A task of a group spanning nodes settles where it goes (sched_setnuma()).
    if env.p_group.is_some() {
        let nid = env.best.map_or(src_nid, |b| k.topo.cpu_to_node(b.cpu));
        if let Ok((_, mut p)) = tasks.get_mut(te) {
            p.numa_preferred_nid = Some(nid);
        }
    }
    let Some(best) = env.best else {
        trace_event!(k, Event::SchedStickNuma(numa_pair(k, tasks, te, env.src_cpu, None, -1)));
        return;
    };
    match best.task {
        None => {
            trace_event!(k, sched_move_numa(k, tasks, te, env.src_cpu, best.cpu));
            migrate_task_to(k, tasks, te, best.cpu, until);
            k.counters.numasim.numa_task_migrated += 1;
        }
        Some(other) => {
            let pair = numa_pair(k, tasks, te, env.src_cpu, Some(other), best.cpu as i32);
            trace_event!(k, Event::SchedSwapNuma(pair));
            migrate_task_to(k, tasks, other, env.src_cpu, k.now());
            migrate_task_to(k, tasks, te, best.cpu, until);
            k.counters.numasim.numa_task_swapped += 2;
        }
    }
}

/// A task as the sched tracepoints print it: pid, tgid and numa group id (the process's pid
/// once the task joined its process's group, its own pid before: the kernel gives every
/// faulting task a group of its own first).
fn task_ids(k: &Kernel, tasks: &Query<(&mut Task, &mut TaskNuma)>, te: Entity) -> TaskIds {
    let Ok((task, p)) = tasks.get(te) else { return TaskIds::default() };
    let tgid = k.mms.get(task.mm).map_or(0, |m| m.pid);
    let ngid = if p.in_group { k.mms.get(p.group_home()).map_or(0, |m| m.pid) } else { task.pid };
    TaskIds { pid: task.pid, tgid, ngid }
}

/// sched_move_numa of `te` from `src_cpu` to `dst_cpu`.
fn sched_move_numa(
    k: &Kernel,
    tasks: &Query<(&mut Task, &mut TaskNuma)>,
    te: Entity,
    src_cpu: u32,
    dst_cpu: u32,
) -> Event {
    Event::SchedMoveNuma {
        task: task_ids(k, tasks, te),
        src_cpu: src_cpu as i32,
        src_nid: k.topo.cpu_to_node(src_cpu).into(),
        dst_cpu: dst_cpu as i32,
        dst_nid: k.topo.cpu_to_node(dst_cpu).into(),
    }
}

/// The fields of sched_swap_numa / sched_stick_numa (sched_numa_pair_template): a missing
/// destination task prints zeros, a missing destination CPU -1.
fn numa_pair(
    k: &Kernel,
    tasks: &Query<(&mut Task, &mut TaskNuma)>,
    src: Entity,
    src_cpu: u32,
    dst: Option<Entity>,
    dst_cpu: i32,
) -> NumaPair {
    NumaPair {
        src: task_ids(k, tasks, src),
        src_cpu: src_cpu as i32,
        src_nid: k.topo.cpu_to_node(src_cpu).into(),
        dst: dst.map_or(TaskIds::default(), |d| task_ids(k, tasks, d)),
        dst_cpu,
        dst_nid: if dst_cpu >= 0 { k.topo.cpu_to_node(dst_cpu as u32).into() } else { -1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KernelConfig;
    use crate::config::KernelVersion;

    fn sysctl() -> Sysctl {
        Sysctl(KernelConfig::default())
    }

    fn node(load: i64, nr_running: usize) -> NumaStats {
        NumaStats { load, nr_running, capacity: 2048, idle_cpu: None, node_type: NumaType::FullyBusy }
    }

    /// Two busy threads on node 0 and two plus a part-time one (load 400) on node 1: moving a
    /// busy thread (1024) from 1 to 0 widens the gap (2448 against 400 before), moving the
    /// part-time one narrows it (1248 → 448); a swap of two busy threads moves no load.
    #[test]
    fn a_numa_move_may_not_unbalance_the_nodes() {
        let (src, dst) = (node(2448, 3), node(2048, 2));
        assert!(load_too_imbalanced(&src, &dst, 2448 - 1024, 2048 + 1024));
        assert!(!load_too_imbalanced(&src, &dst, 2448 - 400, 2048 + 400));
        assert!(!load_too_imbalanced(&src, &dst, 2448, 2048));
    }

    /// numa_classify() at 108 %: fewer threads than CPUs is spare; more, with util or
    /// runnable past 108 % of capacity, overloaded, and with both below 1/1.08 of it still
    /// spare; one busy thread per CPU, fully busy.
    #[test]
    fn nodes_classify_by_threads_and_pelt() {
        assert_eq!(numa_classify((1, 2), 2048, 1024, 1024), NumaType::HasSpare);
        assert_eq!(numa_classify((3, 2), 2048, 2048, 2448), NumaType::Overloaded);
        assert_eq!(numa_classify((3, 2), 2048, 1800, 2100), NumaType::HasSpare);
        assert_eq!(numa_classify((2, 2), 2048, 2040, 2048), NumaType::FullyBusy);
        assert_eq!(numa_classify((2, 2), 2048, 1000, 1000), NumaType::HasSpare);
    }

    #[test]
    fn scan_min_and_max_follow_the_kernel_formula() {
        let s = sysctl();
        // 256 MB scan size: windows = 2560/256 = 10, floor = 100 ms.
        // RSS of 1 GiB = 4 windows: min = max(100, 1000/4) = 250, max = 60000/4 = 15000.
        let rss = 262_144;
        assert_eq!(task_nr_scan_windows(&s, rss), 4);
        assert_eq!(task_scan_min(&s, rss), 250);
        assert_eq!(task_scan_max(&s, rss, None), 15_000);
        // A tiny RSS counts as one window: min = 1000, max = 60000.
        assert_eq!(task_scan_min(&s, 10), 1000);
        assert_eq!(task_scan_max(&s, 10, None), 60_000);
        // 40 GiB: 160 windows, min hits the 100 ms floor, max = 375.
        assert_eq!(task_scan_min(&s, 40 * 262_144), 100);
        assert_eq!(task_scan_max(&s, 40 * 262_144, None), 375);
        // A group of 4 tasks with mostly shared faults stretches the maximum.
        let mut g = NumaGroup::new(2);
        g.nr_tasks = 4;
        g.faults[task_faults_idx(2, NUMA_MEM, 0, 0)] = 299; // shared
        g.faults[task_faults_idx(2, NUMA_MEM, 1, 1)] = 100; // private
        // smax = 60000 * 4 * 300 / 400 = 180000.
        assert_eq!(task_scan_max(&s, 10, Some(&g)), 180_000);
    }

    fn task(period: u64, max: u64, locality: [u64; 3]) -> TaskNuma {
        let mut p = TaskNuma::new(1, Entity::PLACEHOLDER, &sysctl());
        p.numa_scan_period = period;
        p.numa_scan_period_max = max;
        p.numa_faults_locality = locality;
        p
    }

    fn mm() -> Mm {
        let mut mm = Mm::new(1, "t", 0);
        mm.rss = 10; // one window: min 1000, max 60000
        mm
    }

    fn rules(v: KernelVersion) -> Rules {
        Rules::of(v, None)
    }

    #[test]
    fn scan_period_adapts_as_the_kernel_computes() {
        let s = sysctl();
        let r = rules(KernelVersion::V6_12);
        // Mostly private faults (ps = 9): grow by (9-7) * ceil(2000/10) = 400.
        let mut p = task(2000, 60_000, [50, 50, 0]);
        update_task_scan_period(&mut p, (&mut mm(), None), &s, &r, 0, 10, 90);
        assert_eq!(p.numa_scan_period, 2400);
        assert_eq!(p.numa_faults_locality, [0; 3]);
        // Shared (ps = 2) but local (lr = 8): grow by 1 slot of 300.
        let mut p = task(3000, 60_000, [20, 80, 0]);
        update_task_scan_period(&mut p, (&mut mm(), None), &s, &r, 0, 80, 20);
        assert_eq!(p.numa_scan_period, 3300);
        // Shared and remote (lr = 3, ps = 5): shrink by (7-5) * 300 = 600 ...
        let mut p = task(3000, 60_000, [70, 30, 0]);
        update_task_scan_period(&mut p, (&mut mm(), None), &s, &r, 0, 50, 50);
        assert_eq!(p.numa_scan_period, 2400);
        // ... but never below task_scan_min (1000 here).
        let mut p = task(1100, 60_000, [90, 10, 0]);
        update_task_scan_period(&mut p, (&mut mm(), None), &s, &r, 0, 90, 10);
        assert_eq!(p.numa_scan_period, 1000);
    }

    #[test]
    fn failed_migrations_double_the_period_and_delay_the_next_scan() {
        let s = sysctl();
        let r = rules(KernelVersion::V6_12);
        let mut m = mm();
        let mut p = task(1500, 60_000, [10, 90, 3]);
        update_task_scan_period(&mut p, (&mut m, None), &s, &r, 5 * NSEC_PER_SEC, 0, 100);
        assert_eq!(p.numa_scan_period, 3000);
        assert_eq!(m.numa_next_scan, 5 * NSEC_PER_SEC + 3000 * NSEC_PER_MSEC);
        // Doubling stops at numa_scan_period_max.
        let mut p = task(40_000, 60_000, [0, 0, 0]);
        update_task_scan_period(&mut p, (&mut m, None), &s, &r, 0, 0, 100);
        assert_eq!(p.numa_scan_period, 60_000);
    }

    /// 6.12.117's "scan slower" return goes through `out:` and clears numa_faults_locality;
    /// 6.1.192's returns first, so the failed migration still counts at the next update and
    /// doubles the period again although every fault since was local and private.
    #[test]
    fn only_6_12_clears_the_locality_when_it_scans_slower() {
        let s = sysctl();
        let cases = [
            // ps = 10 on the next update: +3 slots of ceil(2000 / 10).
            (KernelVersion::V6_12, [0, 0, 0], 2600, [0, 0, 0]),
            (KernelVersion::V6_1Debian12, [10, 90, 3], 4000, [10, 190, 3]),
        ];
        for (v, kept, second, after) in cases {
            let r = rules(v);
            let mut m = mm();
            let mut p = task(1000, 60_000, [10, 90, 3]);
            update_task_scan_period(&mut p, (&mut m, None), &s, &r, 0, 0, 100);
            assert_eq!(p.numa_scan_period, 2000, "{v:?}");
            assert_eq!(p.numa_faults_locality, kept, "{v:?}");
            p.numa_faults_locality[1] += 100;
            update_task_scan_period(&mut p, (&mut m, None), &s, &r, 0, 0, 100);
            assert_eq!(p.numa_scan_period, second, "{v:?}");
            assert_eq!(p.numa_faults_locality, after, "{v:?}");
        }
    }
}
