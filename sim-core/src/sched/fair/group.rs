//! Finding the busiest group of a domain and how much to pull from it:
//! find_busiest_group() / sched_balance_find_src_group() with update_sd_lb_stats(),
//! update_sg_lb_stats(), group_classify(), update_sd_pick_busiest() and
//! calculate_imbalance(), as in 6.1.192 and 6.12.117 ([`crate::version::Rules::lb_6_12`]
//! says where they differ).

use super::super::topology::{Group, SD_NUMA, SD_PREFER_SIBLING, SD_SHARE_LLC};
use super::balance::{Fbq, Idle, LbEnv, Migration, SCALE};
use super::{LoadBalance, Tasks};
use crate::kernel::Kernel;

/// enum group_type, without misfit_task, smt_balance and asym_packing (not modelled); the
/// order is the kernel's, so comparisons hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum GroupType {
    #[default]
    HasSpare,
    FullyBusy,
    Imbalanced,
    Overloaded,
}

/// struct sg_lb_stats.
#[derive(Clone, Debug, Default)]
struct SgStats {
    avg_load: u64,
    group_load: u64,
    group_util: u64,
    group_runnable: u64,
    group_capacity: u64,
    sum_nr_running: u32,
    idle_cpus: u32,
    group_weight: u32,
    group_type: GroupType,
    nr_numa_running: u32,
    nr_preferred_running: u32,
}

/// A CPU's cfs_rq averages: its queued and blocked threads' PELT averages decayed to now
/// (see [`crate::sched::pelt`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RqAvg {
    /// cpu_load().
    pub(crate) load: u64,
    /// cpu_runnable().
    pub(crate) runnable: u64,
    util: u64,
}

impl RqAvg {
    /// cpu_util_cfs(): util_avg capped at the CPU's capacity.
    pub(crate) fn util_cfs(&self) -> u64 {
        self.util.min(SCALE)
    }

    /// cpu_util_cfs_boost() (6.12): the larger of util and runnable, capped.
    pub(super) fn util_cfs_boost(&self) -> u64 {
        self.util.max(self.runnable).min(SCALE)
    }
}

/// `cpu`'s [`RqAvg`] now.
pub(crate) fn rq_avg(k: &Kernel, tasks: &Tasks, cpu: u32) -> RqAvg {
    let now = k.now();
    let rq = k.rq(cpu);
    let running = rq.running.filter(|&(_, until)| until > now).map(|(e, _)| e);
    let queued = rq.runqueue.iter().map(|&e| (e, true));
    let blocked = rq.blocked.iter().map(|&e| (e, false));
    let mut a = RqAvg::default();
    for (e, on_rq) in queued.chain(blocked) {
        if let Ok((t, _)) = tasks.get(e) {
            let s = t.avg.at(now, on_rq, Some(e) == running);
            a.load += s.load_avg;
            a.runnable += s.runnable_avg;
            a.util += s.util_avg;
        }
    }
    a
}

/// A run queue's NUMA counts: nr_numa_running and nr_preferred_running.
pub(super) fn rq_numa(k: &Kernel, tasks: &Tasks, cpu: u32) -> (u32, u32) {
    let nid = k.topo.cpu_to_node(cpu);
    let mut counts = (0, 0);
    for &e in &k.rq(cpu).runqueue {
        if let Ok((_, p)) = tasks.get(e)
            && let Some(pref) = p.numa_preferred_nid
        {
            counts.0 += 1;
            counts.1 += u32::from(pref == nid);
        }
    }
    counts
}

/// fbq_classify_rq().
pub(super) fn fbq_classify_rq(k: &Kernel, tasks: &Tasks, cpu: u32) -> Fbq {
    let nr = k.rq_len(cpu) as u32;
    let (numa, preferred) = rq_numa(k, tasks, cpu);
    if nr > numa {
        Fbq::Regular
    } else if nr > preferred {
        Fbq::Remote
    } else {
        Fbq::All
    }
}

/// update_sg_lb_stats() and group_classify().
fn update_sg_lb_stats(k: &Kernel, lb: &LoadBalance, tasks: &Tasks, env: &LbEnv, g: &Group) -> SgStats {
    let mut s = SgStats::default();
    for &cpu in g.span.iter().filter(|c| env.cpus.contains(c)) {
        let nr = k.rq_len(cpu) as u64;
        let avg = rq_avg(k, tasks, cpu);
        s.group_load += avg.load;
        s.group_util += avg.util_cfs();
        s.group_runnable += avg.runnable;
        s.sum_nr_running += nr as u32;
        let (numa, preferred) = rq_numa(k, tasks, cpu);
        s.nr_numa_running += numa;
        s.nr_preferred_running += preferred;
        s.idle_cpus += u32::from(nr == 0);
    }
    s.group_capacity = SCALE * g.span.len() as u64;
    s.group_weight = g.span.len() as u32;
    let pct = u64::from(lb.domains[env.dst_cpu as usize][env.lvl].sd.imbalance_pct);
    s.group_type = if group_is_overloaded(pct, &s) {
        GroupType::Overloaded
    } else if lb.group_imbalance.get(&(g.span[0], g.span.len())).copied().unwrap_or(false) {
        GroupType::Imbalanced
    } else if !group_has_capacity(pct, &s) {
        GroupType::FullyBusy
    } else {
        GroupType::HasSpare
    };
    if s.group_type == GroupType::Overloaded {
        s.avg_load = s.group_load * SCALE / s.group_capacity;
    }
    s
}

/// group_has_capacity().
fn group_has_capacity(pct: u64, s: &SgStats) -> bool {
    if s.sum_nr_running < s.group_weight {
        return true;
    }
    if s.group_capacity * pct < s.group_runnable * 100 {
        return false;
    }
    s.group_capacity * 100 > s.group_util * pct
}

/// group_is_overloaded().
fn group_is_overloaded(pct: u64, s: &SgStats) -> bool {
    if s.sum_nr_running <= s.group_weight {
        return false;
    }
    s.group_capacity * 100 < s.group_util * pct || s.group_capacity * pct < s.group_runnable * 100
}

/// update_sd_pick_busiest().
fn pick_busiest(lb_6_12: bool, s: &SgStats, busiest: &SgStats) -> bool {
    if s.sum_nr_running == 0 {
        return false;
    }
    if s.group_type != busiest.group_type {
        return s.group_type > busiest.group_type;
    }
    match s.group_type {
        GroupType::Overloaded => s.avg_load > busiest.avg_load,
        GroupType::Imbalanced => false,
        // avg_load is 0 for both: 6.12 takes the later group, 6.1 keeps the first.
        GroupType::FullyBusy => {
            if lb_6_12 {
                s.avg_load >= busiest.avg_load
            } else {
                s.avg_load > busiest.avg_load
            }
        }
        GroupType::HasSpare => {
            s.idle_cpus < busiest.idle_cpus
                || (s.idle_cpus == busiest.idle_cpus && s.sum_nr_running > busiest.sum_nr_running)
        }
    }
}

/// struct sd_lb_stats, reduced.
struct SdStats {
    local: SgStats,
    busiest: Option<(usize, SgStats)>,
    total_load: u64,
    total_capacity: u64,
    prefer_sibling: bool,
}

/// update_sd_lb_stats().
fn update_sd_lb_stats(k: &Kernel, lb: &LoadBalance, tasks: &Tasks, env: &mut LbEnv) -> SdStats {
    let chain = &lb.domains[env.dst_cpu as usize];
    let d = &chain[env.lvl];
    let lb_6_12 = k.rules.lb_6_12;
    let mut sds =
        SdStats { local: SgStats::default(), busiest: None, total_load: 0, total_capacity: 0, prefer_sibling: false };
    // sds->busiest_stat before any group: idle_cpus UINT_MAX, so any has_spare group wins.
    let none = SgStats { idle_cpus: u32::MAX, ..Default::default() };
    for (i, g) in d.groups.iter().enumerate() {
        let s = update_sg_lb_stats(k, lb, tasks, env, g);
        sds.total_load += s.group_load;
        sds.total_capacity += s.group_capacity;
        if g.span.contains(&env.dst_cpu) {
            sds.local = s;
        } else if pick_busiest(lb_6_12, &s, sds.busiest.as_ref().map_or(&none, |(_, b)| b)) {
            sds.busiest = Some((i, s));
        }
    }
    sds.prefer_sibling = if lb_6_12 {
        sds.busiest.as_ref().is_some_and(|(i, _)| d.groups[*i].flags & SD_PREFER_SIBLING != 0)
    } else {
        env.lvl > 0 && chain[env.lvl - 1].flags & SD_PREFER_SIBLING != 0
    };
    if d.flags & SD_NUMA != 0 {
        env.fbq = match &sds.busiest {
            Some((_, b)) if b.sum_nr_running > b.nr_numa_running => Fbq::Regular,
            Some((_, b)) if b.sum_nr_running > b.nr_preferred_running => Fbq::Remote,
            _ => Fbq::All,
        };
    }
    sds
}

/// sibling_imbalance() (6.12) or 6.1's plain difference: tasks to move so both groups run
/// as many per CPU.
fn sibling_imbalance(lb_6_12: bool, env: &LbEnv, busiest: &SgStats, local: &SgStats) -> i64 {
    let diff = i64::from(busiest.sum_nr_running.saturating_sub(local.sum_nr_running));
    if !lb_6_12 {
        return diff;
    }
    if env.idle == Idle::NotIdle || busiest.sum_nr_running == 0 {
        return 0;
    }
    let (nb, nl) = (i64::from(busiest.group_weight), i64::from(local.group_weight));
    if nb == nl {
        return diff;
    }
    let imb = (nl * i64::from(busiest.sum_nr_running) - nb * i64::from(local.sum_nr_running)).max(0);
    let imb = (2 * imb + nl + nb) / (nl + nb);
    if imb <= 1 && local.sum_nr_running == 0 && busiest.sum_nr_running > 1 { 2 } else { imb }
}

/// adjust_numa_imbalance() (identical in 6.1.192 and 6.12.117): below imb_numa_nr running
/// tasks at the destination, an imbalance of up to NUMA_IMBALANCE_MIN (2) is left alone.
pub(crate) fn adjust_numa_imbalance(imbalance: i64, dst_running: i64, imb_numa_nr: i64) -> i64 {
    const NUMA_IMBALANCE_MIN: i64 = 2;
    if dst_running > imb_numa_nr {
        return imbalance;
    }
    if imbalance <= NUMA_IMBALANCE_MIN { 0 } else { imbalance }
}

/// calculate_imbalance().
fn calculate_imbalance(k: &Kernel, lb: &LoadBalance, env: &mut LbEnv, sds: &mut SdStats) {
    let d = &lb.domains[env.dst_cpu as usize][env.lvl];
    let (_, busiest) = sds.busiest.as_ref().expect("a busiest group");
    let local = &mut sds.local;
    if busiest.group_type == GroupType::Imbalanced {
        env.migration = Migration::Task;
        env.imbalance = 1;
        return;
    }
    if local.group_type == GroupType::HasSpare {
        if busiest.group_type > GroupType::FullyBusy && d.flags & SD_SHARE_LLC == 0 {
            env.migration = Migration::Util;
            env.imbalance = (local.group_capacity.max(local.group_util) - local.group_util) as i64;
            if env.idle != Idle::NotIdle && env.imbalance == 0 {
                env.migration = Migration::Task;
                env.imbalance = 1;
            }
            return;
        }
        env.migration = Migration::Task;
        env.imbalance = if busiest.group_weight == 1 || sds.prefer_sibling {
            sibling_imbalance(k.rules.lb_6_12, env, busiest, local)
        } else {
            (i64::from(local.idle_cpus) - i64::from(busiest.idle_cpus)).max(0)
        };
        if d.flags & SD_NUMA != 0 {
            let dst_running = i64::from(local.sum_nr_running) + 1;
            env.imbalance = adjust_numa_imbalance(env.imbalance, dst_running, i64::from(d.sd.imb_numa_nr));
        }
        env.imbalance >>= 1;
        return;
    }
    let mut avg_load = 0;
    if local.group_type < GroupType::Overloaded {
        local.avg_load = local.group_load * SCALE / local.group_capacity;
        if local.avg_load >= busiest.avg_load {
            env.imbalance = 0;
            return;
        }
        avg_load = sds.total_load * SCALE / sds.total_capacity;
        if local.avg_load >= avg_load {
            env.imbalance = 0;
            return;
        }
    }
    env.migration = Migration::Load;
    let a = busiest.avg_load.saturating_sub(avg_load) * busiest.group_capacity;
    let b = avg_load.saturating_sub(local.avg_load) * local.group_capacity;
    env.imbalance = (a.min(b) / SCALE) as i64;
}

/// find_busiest_group() / sched_balance_find_src_group(): the group to pull from, with
/// env.imbalance set, or None when the domain is balanced.
pub(super) fn find_busiest_group(k: &Kernel, lb: &LoadBalance, tasks: &Tasks, env: &mut LbEnv) -> Option<usize> {
    let mut sds = update_sd_lb_stats(k, lb, tasks, env);
    let lb_6_12 = k.rules.lb_6_12;
    let (group, busiest) = sds.busiest.clone()?;
    let local = &sds.local;
    let pct = u64::from(lb.domains[env.dst_cpu as usize][env.lvl].sd.imbalance_pct);
    let force = busiest.group_type == GroupType::Imbalanced;
    if !force {
        if local.group_type > busiest.group_type {
            return None;
        }
        if local.group_type == GroupType::Overloaded {
            let avg = sds.total_load * SCALE / sds.total_capacity;
            if local.avg_load >= busiest.avg_load
                || local.avg_load >= avg
                || 100 * busiest.avg_load <= pct * local.avg_load
            {
                return None;
            }
        }
        let sibling = if lb_6_12 {
            sibling_imbalance(true, env, &busiest, local) > 1
        } else {
            busiest.sum_nr_running > local.sum_nr_running + 1
        };
        let to_sibling = sds.prefer_sibling && local.group_type == GroupType::HasSpare && sibling;
        if !to_sibling && busiest.group_type != GroupType::Overloaded {
            if env.idle == Idle::NotIdle {
                return None;
            }
            if busiest.group_weight > 1 && local.idle_cpus <= busiest.idle_cpus + 1 {
                return None;
            }
            if busiest.sum_nr_running == 1 {
                return None;
            }
        }
    }
    calculate_imbalance(k, lb, env, &mut sds);
    (env.imbalance != 0).then_some(group)
}
