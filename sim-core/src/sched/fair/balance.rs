//! One balancing pass over one domain: load_balance() / sched_balance_rq() with
//! find_busiest_queue(), detach_tasks(), can_migrate_task(), task_hot(),
//! migrate_degrades_locality() and the active balance (need_active_balance(),
//! active_load_balance_cpu_stop()), as in 6.1.192 and 6.12.117
//! ([`crate::version::Rules::lb_6_12`] says where they differ).

use bevy_ecs::prelude::*;

use super::super::numa::{group_of, group_weight};
use super::super::topology::{Group, SD_NUMA};
use super::group::{fbq_classify_rq, find_busiest_group, rq_avg, rq_numa};
use super::{DomainStats, LoadBalance, MAX_PINNED_INTERVAL, Tasks};
use crate::kernel::Kernel;
use crate::sched::migrate_task_to;

/// SCHED_CAPACITY_SCALE: one CPU's capacity, and a nice-0 task's load (NICE_0_LOAD scaled
/// down).
pub(crate) const SCALE: u64 = 1024;
/// sysctl_sched_migration_cost: a task that ran within 0.5 ms is cache hot.
const MIGRATION_COST_NS: u64 = 500_000;
/// sysctl_sched_nr_migrate (SCHED_NR_MIGRATE_BREAK without PREEMPT_RT).
const NR_MIGRATE: usize = 32;

/// enum cpu_idle_type, in 6.1's order (schedstat's per-type counters are indexed by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// CPU_IDLE: an idle CPU's periodic balance (nohz idle balancing here).
    Idle = 0,
    /// CPU_NOT_IDLE (6.12: __CPU_NOT_IDLE): a busy CPU's periodic balance.
    NotIdle = 1,
    /// CPU_NEWLY_IDLE: a CPU whose run queue just emptied.
    NewlyIdle = 2,
}

impl Idle {
    pub const ALL: [Idle; 3] = [Idle::Idle, Idle::NotIdle, Idle::NewlyIdle];

    /// The metric suffix of this type.
    pub fn name(self) -> &'static str {
        match self {
            Idle::Idle => "idle",
            Idle::NotIdle => "busy",
            Idle::NewlyIdle => "newidle",
        }
    }
}

/// enum migration_type (migrate_misfit is not modelled).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Migration {
    #[default]
    Load,
    Util,
    Task,
}

/// enum fbq_type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fbq {
    Regular,
    Remote,
    #[default]
    All,
}

const LBF_ALL_PINNED: u32 = 0x01;
const LBF_SOME_PINNED: u32 = 0x08;
const LBF_ACTIVE_LB: u32 = 0x10;

/// struct lb_env.
pub(super) struct LbEnv {
    pub(super) dst_cpu: u32,
    pub(super) lvl: usize,
    pub(super) idle: Idle,
    pub(super) imbalance: i64,
    pub(super) migration: Migration,
    pub(super) fbq: Fbq,
    /// The CPUs still considered (env->cpus).
    pub(super) cpus: Vec<u32>,
    pub(super) src_cpu: u32,
    pub(super) flags: u32,
}

/// find_busiest_queue() / sched_balance_find_src_rq().
fn find_busiest_queue(k: &Kernel, tasks: &Tasks, env: &LbEnv, g: &Group) -> Option<u32> {
    let mut busiest = None;
    let mut best = 0u64;
    for &cpu in g.span.iter().filter(|c| env.cpus.contains(c)) {
        if fbq_classify_rq(k, tasks, cpu) > env.fbq {
            continue;
        }
        let nr = k.rq_len(cpu) as u64;
        if nr == 0 {
            continue;
        }
        let value = match env.migration {
            Migration::Load => {
                let load = rq_avg(k, tasks, cpu).load;
                if nr == 1 && load as i64 > env.imbalance {
                    continue;
                }
                load
            }
            // 6.12 compares cpu_util_cfs_boost(), 6.1 cpu_util_cfs().
            Migration::Util if nr > 1 => {
                let avg = rq_avg(k, tasks, cpu);
                if k.rules.lb_6_12 { avg.util_cfs_boost() } else { avg.util_cfs() }
            }
            Migration::Util => continue,
            Migration::Task => nr,
        };
        if value > best {
            best = value;
            busiest = Some(cpu);
        }
    }
    busiest
}

/// should_we_balance(): one CPU of the local group balances for it: the first idle one,
/// else the group's first CPU; a newly idle CPU always may.
fn should_we_balance(k: &Kernel, lb: &LoadBalance, env: &LbEnv) -> bool {
    if !env.cpus.contains(&env.dst_cpu) {
        return false;
    }
    if env.idle == Idle::NewlyIdle {
        return k.rq_len(env.dst_cpu) == 0;
    }
    let local = &lb.domains[env.dst_cpu as usize][env.lvl].groups[0];
    let mut balance = local.span.iter().filter(|c| env.cpus.contains(c));
    match balance.clone().find(|&&c| k.rq_len(c) == 0) {
        Some(&c) => c == env.dst_cpu,
        None => balance.next() == Some(&env.dst_cpu),
    }
}

/// The thread in the quantum in progress on `cpu`, if any.
fn running_on(k: &Kernel, cpu: u32) -> Option<(Entity, u64)> {
    k.rq(cpu).running.filter(|&(_, until)| until > k.now())
}

/// When a thread taken from `cpu` can start elsewhere: at the end of its quantum in progress
/// there (a thread preempted by a wake-up finishes the model's quantum), else now.
fn leaves_at(k: &Kernel, cpu: u32, e: Entity) -> u64 {
    running_on(k, cpu).filter(|&(r, _)| r == e).map_or(k.now(), |(_, until)| until)
}

/// task_hot(): the thread ran within sysctl_sched_migration_cost.
fn task_hot(k: &Kernel, task: &crate::sched::Task) -> bool {
    k.now().saturating_sub(task.exec_start) < MIGRATION_COST_NS
}

/// migrate_degrades_locality(): 1 if moving hurts the thread's NUMA locality, 0 if it helps,
/// -1 if NUMA does not care.
fn migrate_degrades_locality(k: &Kernel, lb: &LoadBalance, tasks: &Tasks, env: &LbEnv, e: Entity) -> i32 {
    let Ok((_, p)) = tasks.get(e) else { return -1 };
    let d = &lb.domains[env.dst_cpu as usize][env.lvl];
    if !k.sysctl.0.numa_balancing.enabled() || p.numa_faults.is_empty() || d.flags & SD_NUMA == 0 {
        return -1;
    }
    let (src, dst) = (k.topo.cpu_to_node(env.src_cpu), k.topo.cpu_to_node(env.dst_cpu));
    if src == dst {
        return -1;
    }
    if p.numa_preferred_nid == Some(src) {
        let (_, preferred) = rq_numa(k, tasks, env.src_cpu);
        return if k.rq_len(env.src_cpu) as u32 > preferred { 1 } else { -1 };
    }
    if p.numa_preferred_nid == Some(dst) {
        return 0;
    }
    if env.idle == Idle::Idle {
        return -1;
    }
    let weight = |nid: crate::machine::Nid| match group_of(p, &k.mms) {
        Some(g) => group_weight(Some(g), nid as usize),
        None => p.task_weight(nid as usize),
    };
    i32::from(weight(dst) < weight(src))
}

/// can_migrate_task(): `Some(hot)` when the thread may move (hot: moved although cache
/// hot, for lb_hot_gained).
fn can_migrate_task(k: &Kernel, lb: &LoadBalance, tasks: &Tasks, env: &mut LbEnv, e: Entity) -> Option<bool> {
    let (task, _) = tasks.get(e).ok()?;
    if !task.affinity.allows(env.dst_cpu) {
        env.flags |= LBF_SOME_PINNED;
        return None;
    }
    env.flags &= !LBF_ALL_PINNED;
    // task_on_cpu(): the thread that has the CPU stays (a preempted one has not).
    if k.rq(env.src_cpu).turn.is_some_and(|(t, _)| t == e) {
        return None;
    }
    if env.flags & LBF_ACTIVE_LB != 0 {
        return Some(false);
    }
    let hot = match migrate_degrades_locality(k, lb, tasks, env, e) {
        -1 => task_hot(k, task),
        degrades => degrades == 1,
    };
    let d = &lb.domains[env.dst_cpu as usize][env.lvl];
    let failed = lb.state[env.dst_cpu as usize][env.lvl].nr_balance_failed;
    (!hot || failed > d.sd.cache_nice_tries).then_some(hot)
}

/// detach_tasks() and attach_tasks(): move up to env.imbalance from the busiest run queue,
/// least recently run first. Returns how many moved and how many of them were hot.
fn detach_tasks(k: &mut Kernel, lb: &LoadBalance, tasks: &mut Tasks, env: &mut LbEnv) -> (u64, u64) {
    let src = env.src_cpu;
    if k.rq_len(src) <= 1 {
        env.flags &= !LBF_ALL_PINNED;
        return (0, 0);
    }
    if env.imbalance <= 0 {
        return (0, 0);
    }
    let failed = lb.state[env.dst_cpu as usize][env.lvl].nr_balance_failed;
    let candidates: Vec<Entity> = k.rq(src).runqueue.iter().copied().collect();
    let loop_max = NR_MIGRATE.min(candidates.len());
    let mut detached = Vec::new();
    let mut hot_moved = 0;
    for &e in candidates.iter().take(loop_max) {
        if env.idle != Idle::NotIdle && k.rq_len(src) - detached.len() <= 1 {
            break;
        }
        let Some(hot) = can_migrate_task(k, lb, tasks, env, e) else { continue };
        let Ok((task, _)) = tasks.get(e) else { continue };
        let avg = task.avg.at(k.now(), true, false);
        let cost = match env.migration {
            // task_h_load(), at least 1.
            Migration::Load => avg.load_avg.max(1),
            // task_util_est().
            Migration::Util => avg.util_avg,
            Migration::Task => 1,
        };
        if env.migration != Migration::Task && (cost >> failed.min(63)) as i64 > env.imbalance {
            continue;
        }
        env.imbalance -= cost as i64;
        detached.push(e);
        hot_moved += u64::from(hot);
        // CONFIG_PREEMPTION (Debian's PREEMPT_DYNAMIC): newidle moves one task at most.
        if env.idle == Idle::NewlyIdle || env.imbalance <= 0 {
            break;
        }
    }
    for &e in detached.iter().rev() {
        let at = leaves_at(k, src, e);
        migrate_task_to(k, tasks, e, env.dst_cpu, at);
    }
    (detached.len() as u64, hot_moved)
}

fn stats<'a>(lb: &'a mut LoadBalance, env: &LbEnv) -> &'a mut DomainStats {
    lb.domain_stats(env.dst_cpu, env.lvl)
}

/// Where load_balance() ends.
enum Outcome {
    Moved(u64),
    Failed,
    Balanced,
    AllPinned,
    OnePinned,
}

/// load_balance() / sched_balance_rq() of `cpu`'s domain `lvl`. Returns the threads moved
/// and whether higher domains are balanced too (continue_balancing).
pub(super) fn load_balance(
    k: &mut Kernel,
    lb: &mut LoadBalance,
    tasks: &mut Tasks,
    cpu: u32,
    lvl: usize,
    idle: Idle,
) -> (u64, bool) {
    lb.passes += 1;
    let span = lb.domains[cpu as usize][lvl].sd.span.clone();
    let mut env = LbEnv {
        dst_cpu: cpu,
        lvl,
        idle,
        imbalance: 0,
        migration: Migration::Load,
        fbq: Fbq::All,
        cpus: span,
        src_cpu: cpu,
        flags: 0,
    };
    stats(lb, &env).lb_count[idle as usize] += 1;
    let mut cont = true;
    let outcome = pull(k, lb, tasks, &mut env, &mut cont);
    let st = &mut lb.state[cpu as usize][lvl];
    let (min, max) = {
        let sd = &lb.domains[cpu as usize][lvl].sd;
        (sd.min_interval, sd.max_interval)
    };
    match outcome {
        Outcome::Moved(n) => {
            st.nr_balance_failed = 0;
            st.balance_interval = min;
            (n, cont)
        }
        Outcome::Failed => {
            st.balance_interval = min;
            (0, cont)
        }
        Outcome::Balanced | Outcome::AllPinned | Outcome::OnePinned => {
            if !matches!(outcome, Outcome::OnePinned) {
                st.nr_balance_failed = 0;
                stats(lb, &env).lb_balanced[idle as usize] += 1;
            }
            let st = &mut lb.state[cpu as usize][lvl];
            let all_pinned = env.flags & LBF_ALL_PINNED != 0;
            if idle != Idle::NewlyIdle
                && ((all_pinned && st.balance_interval < MAX_PINNED_INTERVAL) || st.balance_interval < max)
            {
                st.balance_interval *= 2;
            }
            (0, cont)
        }
    }
}

/// The key of sd_parent->groups->sgc->imbalance: the group in the parent made of this
/// domain's span.
fn parent_group(lb: &LoadBalance, env: &LbEnv) -> Option<(u32, usize)> {
    let chain = &lb.domains[env.dst_cpu as usize];
    chain.get(env.lvl + 1)?;
    let span = &chain[env.lvl].sd.span;
    Some((span[0], span.len()))
}

/// load_balance()'s body from `redo:` to the failure handling.
fn pull(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, env: &mut LbEnv, cont: &mut bool) -> Outcome {
    let idle = env.idle as usize;
    loop {
        if !should_we_balance(k, lb, env) {
            *cont = false;
            return balanced(lb, env);
        }
        let Some(group) = find_busiest_group(k, lb, tasks, env) else {
            stats(lb, env).lb_nobusyg[idle] += 1;
            return balanced(lb, env);
        };
        let g = lb.domains[env.dst_cpu as usize][env.lvl].groups[group].clone();
        let Some(busiest) = find_busiest_queue(k, tasks, env, &g) else {
            stats(lb, env).lb_nobusyq[idle] += 1;
            return balanced(lb, env);
        };
        stats(lb, env).lb_imbalance[idle] += env.imbalance.max(0) as u64;
        env.src_cpu = busiest;
        env.flags |= LBF_ALL_PINNED;
        if k.rq_len(busiest) > 1 {
            let (moved, hot) = detach_tasks(k, lb, tasks, env);
            let s = stats(lb, env);
            s.lb_gained[idle] += moved;
            s.lb_hot_gained[idle] += hot;
            if env.flags & LBF_SOME_PINNED != 0
                && env.imbalance > 0
                && let Some(key) = parent_group(lb, env)
            {
                lb.group_imbalance.insert(key, true);
            }
            if env.flags & LBF_ALL_PINNED != 0 {
                env.cpus.retain(|&c| c != busiest);
                let local = &lb.domains[env.dst_cpu as usize][env.lvl].groups[0].span;
                if !env.cpus.iter().all(|c| local.contains(c)) {
                    continue;
                }
                return Outcome::AllPinned;
            }
            if moved > 0 {
                return Outcome::Moved(moved);
            }
        }
        return failed(k, lb, tasks, env);
    }
}

/// load_balance()'s `out_balanced:`: clear the parent's group imbalance.
fn balanced(lb: &mut LoadBalance, env: &LbEnv) -> Outcome {
    if env.flags & LBF_ALL_PINNED == 0
        && let Some(key) = parent_group(lb, env)
    {
        lb.group_imbalance.remove(&key);
    }
    Outcome::Balanced
}

/// Nothing moved: count the failure and, after enough of them, push the busiest CPU's
/// task with its stopper (need_active_balance()'s imbalanced_active_balance()).
fn failed(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, env: &mut LbEnv) -> Outcome {
    stats(lb, env).lb_failed[env.idle as usize] += 1;
    let d = &lb.domains[env.dst_cpu as usize][env.lvl];
    let cache_nice_tries = d.sd.cache_nice_tries;
    let st = &mut lb.state[env.dst_cpu as usize][env.lvl];
    if env.idle != Idle::NewlyIdle {
        st.nr_balance_failed += 1;
    }
    if env.migration == Migration::Task && st.nr_balance_failed > cache_nice_tries + 2 {
        let curr = k.rq(env.src_cpu).curr_task();
        let allowed = curr.and_then(|e| tasks.get(e).ok()).is_some_and(|(t, _)| t.affinity.allows(env.dst_cpu));
        if !allowed {
            return Outcome::OnePinned;
        }
        active_load_balance_cpu_stop(k, lb, tasks, env.src_cpu, env.dst_cpu);
    }
    Outcome::Failed
}

/// active_load_balance_cpu_stop(): the busiest CPU's stopper pushes one thread (the least
/// recently run that may go) to `target`; the thread in its quantum leaves when it ends.
fn active_load_balance_cpu_stop(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, busiest: u32, target: u32) {
    if k.rq_len(busiest) == 0 {
        return;
    }
    let Some(lvl) = lb.domains[target as usize].iter().position(|d| d.spans(busiest)) else { return };
    let pick =
        k.rq(busiest).runqueue.iter().copied().find(|&e| tasks.get(e).is_ok_and(|(t, _)| t.affinity.allows(target)));
    let s = lb.domain_stats(target, lvl);
    s.alb_count += 1;
    let Some(e) = pick else {
        s.alb_failed += 1;
        return;
    };
    s.alb_pushed += 1;
    s.lb_gained[Idle::Idle as usize] += 1;
    lb.state[target as usize][lvl].nr_balance_failed = 0;
    let at = leaves_at(k, busiest, e);
    migrate_task_to(k, tasks, e, target, at);
}
