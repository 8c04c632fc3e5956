//! The fair class's wake-up placement (kernel/sched/fair.c, 6.1.192 and 6.12.117):
//! select_task_rq_fair() with wake_affine() and select_idle_sibling(), and ttwu_stat()'s
//! domain counters (kernel/sched/core.c). The two releases agree on every path modelled
//! here; 6.12's additions (WF_CURRENT_CPU, cluster fallbacks prev_aff) need a flag or a
//! topology the model has not.
//!
//! Simplifications, one per line:
//! - cpu_load() is 1024 per runnable thread; the wakee's blocked load on prev_cpu, which
//!   wake_affine_weight() subtracts, is taken as a whole nice-0 load (1024).
//! - Wakes are never WF_SYNC, and wake_wide() is false (one waker per wakee).
//! - SD_BALANCE_WAKE is set on no level, so the slow path (find_idlest_cpu()) never runs.
//! - recent_used_cpu and the per-CPU kthread stacking rule are not modelled.
//! - SIS_UTIL's scan limit (nr_idle_scan) is not modelled: select_idle_cpu() scans the whole
//!   LLC (at most a node's CPUs); without SMT there is no idle-core search.
//! - available_idle_cpu(): the CPU's run queue is empty.

use super::LoadBalance;
use crate::kernel::Kernel;
use crate::sched::Task;
use crate::sched::topology::{Domain, SD_SHARE_LLC, SD_WAKE_AFFINE};

/// available_idle_cpu().
fn idle(k: &Kernel, cpu: u32) -> bool {
    k.rq_len(cpu) == 0
}

/// sd_llc: the highest domain of `cpu` sharing its last-level cache.
fn sd_llc(lb: &LoadBalance, cpu: u32) -> Option<&Domain> {
    lb.domains[cpu as usize].iter().rev().find(|d| d.flags & SD_SHARE_LLC != 0)
}

/// cpus_share_cache().
fn share_cache(lb: &LoadBalance, a: u32, b: u32) -> bool {
    a == b || sd_llc(lb, a).is_some_and(|d| d.spans(b))
}

/// select_task_rq_fair() for a wake-up (WF_TTWU) of `task`, last on `prev`, by a thread on
/// `waker`: the first domain of the waker with SD_WAKE_AFFINE that spans `prev` lets
/// wake_affine() choose between the two, then select_idle_sibling() looks for an idle CPU
/// near the choice.
pub fn select_task_rq_fair(k: &Kernel, lb: &mut LoadBalance, task: &Task, prev: u32, waker: u32) -> u32 {
    let want_affine = task.affinity.allows(waker);
    let mut target = prev;
    let affine = lb.domains[waker as usize].iter().position(|d| d.flags & SD_WAKE_AFFINE != 0 && d.spans(prev));
    if want_affine
        && let Some(lvl) = affine
        && waker != prev
    {
        target = wake_affine(k, lb, lvl, waker, prev);
    }
    select_idle_sibling(k, lb, task, prev, target)
}

/// wake_affine(): WA_IDLE, then WA_WEIGHT (with WA_BIAS); a pull to the waker's CPU counts
/// in the domain's ttwu_move_affine.
fn wake_affine(k: &Kernel, lb: &mut LoadBalance, lvl: usize, this: u32, prev: u32) -> u32 {
    let target = wake_affine_idle(k, lb, this, prev).or_else(|| wake_affine_weight(k, lb, lvl, this, prev));
    if target != Some(this) {
        return prev;
    }
    lb.domain_stats(this, lvl).ttwu_move_affine += 1;
    this
}

/// wake_affine_idle() without WF_SYNC.
fn wake_affine_idle(k: &Kernel, lb: &LoadBalance, this: u32, prev: u32) -> Option<u32> {
    if idle(k, this) && share_cache(lb, this, prev) {
        return Some(if idle(k, prev) { prev } else { this });
    }
    idle(k, prev).then_some(prev)
}

/// wake_affine_weight() without WF_SYNC: the waker's CPU if, with the wakee added, its load
/// stays below prev_cpu's load biased by half the domain's imbalance_pct.
fn wake_affine_weight(k: &Kernel, lb: &LoadBalance, lvl: usize, this: u32, prev: u32) -> Option<u32> {
    const TASK_LOAD: u64 = super::balance::SCALE;
    let load = |cpu: u32| k.rq_len(cpu) as u64 * TASK_LOAD;
    let pct = u64::from(lb.domains[this as usize][lvl].sd.imbalance_pct);
    let this_eff = (load(this) + TASK_LOAD) * 100;
    // prev_cpu's load still holds the wakee's blocked load, which the kernel takes off.
    let prev_eff = load(prev) * (100 + (pct - 100) / 2);
    (this_eff < prev_eff).then_some(this)
}

/// select_idle_sibling(): `target` if idle, else `prev` if idle and sharing its cache, else
/// the first idle CPU of target's LLC from target + 1 round (select_idle_cpu()), else
/// `target`.
fn select_idle_sibling(k: &Kernel, lb: &LoadBalance, task: &Task, prev: u32, target: u32) -> u32 {
    if idle(k, target) {
        return target;
    }
    if prev != target && share_cache(lb, prev, target) && idle(k, prev) {
        return prev;
    }
    let Some(llc) = sd_llc(lb, target) else { return target };
    let span = &llc.sd.span;
    let start = span.iter().position(|&c| c > target).unwrap_or(0);
    let wrapped = span[start..].iter().chain(&span[..start]);
    wrapped.copied().find(|&c| task.affinity.allows(c) && idle(k, c)).unwrap_or(target)
}

/// ttwu_stat()'s domain counter: a wakee placed on another CPU than the waker's counts in
/// ttwu_wake_remote of the waker's lowest domain spanning it.
pub fn ttwu_stat(lb: &mut LoadBalance, waker: u32, cpu: u32) {
    if cpu == waker {
        return;
    }
    let Some(lvl) = lb.domains[waker as usize].iter().position(|d| d.spans(cpu)) else { return };
    lb.domain_stats(waker, lvl).ttwu_wake_remote += 1;
}
