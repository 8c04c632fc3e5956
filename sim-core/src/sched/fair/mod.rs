//! The fair class's load balancing (kernel/sched/fair.c, 6.1.192 and 6.12.117, where
//! 6.12 renamed rebalance_domains() sched_balance_domains(), load_balance()
//! sched_balance_rq(), find_busiest_group() sched_balance_find_src_group(),
//! find_busiest_queue() sched_balance_find_src_rq() and newidle_balance()
//! sched_balance_newidle(); 6.1.192 carries the last rename and NI_RANDOM as backports).
//!
//! - Periodic: a busy CPU's tick balances each domain whose interval (balance_interval ×
//!   busy_factor) is due, trigger_load_balance() → rebalance_domains().
//! - nohz idle: idle CPUs stop ticking; a busy CPU's tick kicks idle balancing as
//!   nohz_balancer_kick() does, and _nohz_idle_balance() then balances every idle CPU whose
//!   next_balance is due, the kicked CPU last. The IPI takes no simulated time.
//! - Newly idle: a CPU whose run queue empties balances before it idles
//!   (sched_balance_newidle()).
//! - Active: after failures the busiest CPU's stopper pushes a task
//!   (active_load_balance_cpu_stop()); a running thread leaves at the end of its quantum.
//!
//! 6.1.192 and 6.12.117 differ in names (DIE / PKG, SD_SHARE_PKG_RESOURCES / SD_SHARE_LLC)
//! and in four balancing rules, listed at [`crate::version::Rules::lb_6_12`];
//! adjust_numa_imbalance() and the newidle, nohz and active paths are the same in both.
//!
//! Simplifications, one per line:
//! - Load, runnable and util are PELT's ([`crate::sched::pelt`], with its simplifications).
//! - CPU capacity is 1024 everywhere (no RT/IRQ pressure, no asymmetry): misfit, asym
//!   packing and SMT balance groups never occur and are not modelled.
//! - rq->avg_idle and max_newidle_lb_cost do not gate newidle balancing (balancing costs no
//!   simulated time); NI_RANDOM and newidle_ratio are modelled with a seeded stream.
//! - LBF_DST_PINNED's retry on another CPU of the local group is not modelled.
//! - CACHE_HOT_BUDDY is not modelled (no next or last buddy is kept).
//! - Wake-ups: a thread's wait for its start time is pinned to its start CPU (as the
//!   oracle's guest program pins it); a periodic thread's later wakes go through
//!   select_task_rq_fair() (`wake.rs`). ttwu_move_balance stays 0 (no SD_BALANCE_WAKE).
//! - Device workers and ksmd are not tasks on run queues; they add no load.

mod balance;
mod group;
pub mod slice;
mod wake;

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;

use super::topology::{Domain, SD_BALANCE_NEWIDLE, build_domains};
use super::{HZ, TICK_NSEC, Task, TaskNuma};
use crate::engine::{NSEC_PER_MSEC, Nanos, RngStream};
use crate::kernel::Kernel;
use crate::machine::Topology;
use crate::stats::summary::Value;
use crate::version::Rules;

pub use balance::Idle;
pub(crate) use balance::SCALE as SCHED_CAPACITY_SCALE;
pub(crate) use group::{adjust_numa_imbalance, rq_avg};
pub use wake::{select_task_rq_fair, ttwu_stat};

/// The threads, as the balancer reads and moves them.
pub(crate) type Tasks<'w, 's, 'a, 'b> = Query<'w, 's, (&'a mut Task, &'b mut TaskNuma)>;

/// MAX_PINNED_INTERVAL: balance_interval's ceiling while every task is pinned.
const MAX_PINNED_INTERVAL: u64 = 512;

/// msecs_to_jiffies().
fn msecs_to_jiffies(ms: u64) -> u64 {
    ms.div_ceil(TICK_NSEC / NSEC_PER_MSEC)
}

/// The per-CPU copy of a domain's balancing state (each CPU has its own sched_domain).
#[derive(Clone, Debug)]
struct SdState {
    /// Milliseconds.
    balance_interval: u64,
    /// Jiffies.
    last_balance: u64,
    nr_balance_failed: u32,
    newidle_call: u32,
    newidle_success: u32,
    newidle_ratio: u32,
}

/// The counters /proc/schedstat prints per domain and idle type (show_schedstat(),
/// kernel/sched/stats.c), in its order: `schedstat.<DOMAIN>.<field>.<idle type>`.
pub const LB_FIELDS: [&str; 8] =
    ["lb_count", "lb_balanced", "lb_failed", "lb_imbalance", "lb_gained", "lb_hot_gained", "lb_nobusyq", "lb_nobusyg"];

/// The per-domain counters after those that numasim keeps, in show_schedstat()'s order:
/// `schedstat.<DOMAIN>.<field>` (the sbe_* and sbf_* between alb_* and ttwu_* have not been
/// counted since 3.x).
pub const DOMAIN_FIELDS: [&str; 6] =
    ["alb_count", "alb_failed", "alb_pushed", "ttwu_wake_remote", "ttwu_move_affine", "ttwu_move_balance"];

/// The schedstat counters of one domain name, summed over CPUs, indexed by [`Idle`].
#[derive(Clone, Debug, Default)]
pub struct DomainStats {
    pub lb_count: [u64; 3],
    pub lb_balanced: [u64; 3],
    pub lb_failed: [u64; 3],
    pub lb_imbalance: [u64; 3],
    pub lb_gained: [u64; 3],
    pub lb_hot_gained: [u64; 3],
    pub lb_nobusyq: [u64; 3],
    pub lb_nobusyg: [u64; 3],
    pub alb_count: u64,
    pub alb_failed: u64,
    pub alb_pushed: u64,
    pub ttwu_wake_remote: u64,
    pub ttwu_move_affine: u64,
}

/// The load balancer's state: every CPU's domains and their balancing state, the nohz idle
/// state, and the schedstat counters.
#[derive(Resource)]
pub struct LoadBalance {
    pub enabled: bool,
    domains: Vec<Vec<Domain>>,
    state: Vec<Vec<SdState>>,
    /// rq->next_balance, in jiffies.
    next_balance: Vec<u64>,
    /// nohz.next_balance.
    nohz_next_balance: u64,
    /// nohz.idle_cpus_mask and nohz.nr_cpus: a CPU joins when it stops ticking and leaves at
    /// its next busy tick (nohz_balance_enter_idle(), nohz_balance_exit_idle()).
    nohz_idle: Vec<bool>,
    nohz_nr_cpus: u32,
    /// sgc->imbalance of each group, by its span's first CPU and weight.
    group_imbalance: BTreeMap<(u32, usize), bool>,
    /// max_load_balance_interval: HZ * num_online_cpus() / 10, in jiffies.
    max_interval: u64,
    /// sched_rng() for NI_RANDOM.
    rng: RngStream,
    pub stats: BTreeMap<&'static str, DomainStats>,
    /// Balance passes run (load_balance() calls), for the cost per pass.
    pub passes: u64,
}

impl LoadBalance {
    pub fn new(topo: &Topology, rules: &Rules, enabled: bool, rng: RngStream) -> Self {
        let domains = build_domains(topo, rules.version);
        let state = domains
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .map(|d| SdState {
                        balance_interval: d.sd.min_interval,
                        last_balance: 0,
                        nr_balance_failed: 0,
                        newidle_call: 512,
                        newidle_success: 256,
                        newidle_ratio: 512,
                    })
                    .collect()
            })
            .collect();
        let mut stats = BTreeMap::new();
        for d in domains.iter().flatten() {
            stats.entry(d.sd.name).or_insert_with(DomainStats::default);
        }
        let nr_cpus = topo.nr_cpus() as usize;
        Self {
            enabled,
            domains,
            state,
            next_balance: vec![0; nr_cpus],
            nohz_next_balance: 0,
            // Every CPU boots idle, its tick stopped until it has work.
            nohz_idle: vec![true; nr_cpus],
            nohz_nr_cpus: nr_cpus as u32,
            group_imbalance: BTreeMap::new(),
            max_interval: (HZ * topo.nr_cpus() as u64 / 10).max(1),
            rng,
            stats,
            passes: 0,
        }
    }

    /// nohz_balance_enter_idle(): `cpu` stops its tick.
    pub fn enter_idle(&mut self, cpu: u32) {
        if !std::mem::replace(&mut self.nohz_idle[cpu as usize], true) {
            self.nohz_nr_cpus += 1;
        }
    }

    /// nohz_balance_exit_idle(): `cpu` ticks busy again.
    fn exit_idle(&mut self, cpu: u32) {
        if std::mem::replace(&mut self.nohz_idle[cpu as usize], false) {
            self.nohz_nr_cpus -= 1;
        }
    }

    /// The schedstat counters of `cpu`'s domain `lvl` (kept per domain name).
    fn domain_stats(&mut self, cpu: u32, lvl: usize) -> &mut DomainStats {
        let name = self.domains[cpu as usize][lvl].sd.name;
        self.stats.get_mut(name).expect("every domain name has stats")
    }

    /// get_sd_balance_interval(), in jiffies.
    fn interval(&self, cpu: u32, lvl: usize, busy: bool) -> u64 {
        let sd = &self.domains[cpu as usize][lvl].sd;
        let mut ms = self.state[cpu as usize][lvl].balance_interval;
        if busy {
            ms *= u64::from(sd.busy_factor);
        }
        let mut j = msecs_to_jiffies(ms);
        if busy {
            j -= 1;
        }
        j.clamp(1, self.max_interval)
    }

    /// The schedstat metrics: `<DOMAIN>.<field>.<idle|busy|newidle>` and `<DOMAIN>.alb_*`,
    /// `<DOMAIN>.ttwu_*` (ttwu_move_balance always 0: see the module's simplifications),
    /// summed over CPUs and
    /// over the levels sharing a name (NUMA, when the SLIT has several distances).
    pub fn schedstat_metrics(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (name, s) in &self.stats {
            let per_type = [
                s.lb_count,
                s.lb_balanced,
                s.lb_failed,
                s.lb_imbalance,
                s.lb_gained,
                s.lb_hot_gained,
                s.lb_nobusyq,
                s.lb_nobusyg,
            ];
            for (field, v) in LB_FIELDS.iter().zip(per_type) {
                for idle in Idle::ALL {
                    out.push((format!("{name}.{field}.{}", idle.name()), Value::Count(v[idle as usize])));
                }
            }
            let single = [s.alb_count, s.alb_failed, s.alb_pushed, s.ttwu_wake_remote, s.ttwu_move_affine, 0];
            for (field, v) in DOMAIN_FIELDS.iter().zip(single) {
                out.push((format!("{name}.{field}"), Value::Count(v)));
            }
        }
        out
    }
}

fn jiffies(now: Nanos) -> u64 {
    now / TICK_NSEC
}

/// trigger_load_balance() on a busy CPU's tick: run rebalance_domains() when
/// rq->next_balance is due, then nohz_balancer_kick().
pub fn trigger_load_balance(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, cpu: u32) {
    let now = jiffies(k.now());
    if now >= lb.next_balance[cpu as usize] {
        let idle = if k.rq_len(cpu) == 0 { Idle::Idle } else { Idle::NotIdle };
        rebalance_domains(k, lb, tasks, cpu, idle);
    }
    nohz_balancer_kick(k, lb, tasks, cpu);
}

/// rebalance_domains() / sched_balance_domains(): balance each due domain bottom up; stop
/// climbing once should_we_balance() hands a level to another CPU.
fn rebalance_domains(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, cpu: u32, mut idle: Idle) {
    let now = jiffies(k.now());
    let mut busy = idle != Idle::Idle;
    let mut next_balance = now + 60 * HZ;
    let mut continue_balancing = true;
    for lvl in 0..lb.domains[cpu as usize].len() {
        if !continue_balancing {
            break;
        }
        let mut interval = lb.interval(cpu, lvl, busy);
        // SD_SERIALIZE's sched_balance_running is never contended: events run one at a time.
        let last = lb.state[cpu as usize][lvl].last_balance;
        if now >= last + interval {
            let (moved, cont) = balance::load_balance(k, lb, tasks, cpu, lvl, idle);
            continue_balancing = cont;
            if moved > 0 {
                idle = if k.rq_len(cpu) == 0 { Idle::Idle } else { Idle::NotIdle };
                busy = idle != Idle::Idle;
            }
            lb.state[cpu as usize][lvl].last_balance = now;
            interval = lb.interval(cpu, lvl, busy);
        }
        next_balance = next_balance.min(lb.state[cpu as usize][lvl].last_balance + interval);
    }
    lb.next_balance[cpu as usize] = next_balance;
}

/// nohz_balancer_kick(): this CPU leaves the nohz idle mask; when some CPU is in it,
/// nohz.next_balance is due, and this CPU runs two or more threads or its LLC has more than
/// one busy CPU (sds->nr_busy_cpus), the first idle CPU in the mask (find_new_ilb()) balances
/// for every idle CPU.
fn nohz_balancer_kick(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, cpu: u32) {
    lb.exit_idle(cpu);
    let now = jiffies(k.now());
    if lb.nohz_nr_cpus == 0 || now < lb.nohz_next_balance {
        return;
    }
    let llc = k.topo.node_cpus(k.topo.cpu_to_node(cpu));
    let busy_in_llc = llc.filter(|&c| !lb.nohz_idle[c as usize]).count();
    if k.rq_len(cpu) < 2 && busy_in_llc <= 1 {
        return;
    }
    lb.nohz_next_balance = now + 1;
    let nr_cpus = k.topo.nr_cpus();
    let Some(ilb) = (0..nr_cpus).find(|&c| c != cpu && lb.nohz_idle[c as usize] && k.rq_len(c) == 0) else {
        return;
    };
    // The kicked CPU balances from its idle task (pid 0).
    k.trace_current(ilb, 0, k.now());
    nohz_idle_balance(k, lb, tasks, ilb);
}

/// _nohz_idle_balance(): the kicked CPU balances every idle CPU of the mask whose
/// next_balance is due, from the CPU after it round, itself last; nohz.next_balance becomes
/// the earliest next_balance of them.
fn nohz_idle_balance(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, ilb: u32) {
    let now = jiffies(k.now());
    let nr_cpus = k.topo.nr_cpus();
    let mut next_balance = now + 60 * HZ;
    for i in 1..=nr_cpus {
        let c = (ilb + i) % nr_cpus;
        if !lb.nohz_idle[c as usize] || k.rq_len(c) != 0 {
            continue;
        }
        if now >= lb.next_balance[c as usize] {
            rebalance_domains(k, lb, tasks, c, Idle::Idle);
        }
        next_balance = next_balance.min(lb.next_balance[c as usize]);
    }
    lb.nohz_next_balance = next_balance;
}

/// sched_balance_newidle(): a CPU about to idle pulls from the busiest CPU of its lowest
/// domain that has one, when some CPU has a thread waiting (the root domain's overload
/// flag); rq->next_balance comes no later than the domains' next idle balance
/// (update_next_balance()).
pub fn newidle_balance(k: &mut Kernel, lb: &mut LoadBalance, tasks: &mut Tasks, cpu: u32) {
    let c = cpu as usize;
    let due = |lb: &LoadBalance, lvl: usize| lb.state[c][lvl].last_balance + lb.interval(cpu, lvl, false);
    let mut next_balance = jiffies(k.now()) + HZ;
    let overloaded = (0..k.topo.nr_cpus()).any(|other| k.rq_len(other) > 1);
    if !overloaded {
        if !lb.domains[c].is_empty() {
            next_balance = next_balance.min(due(lb, 0));
        }
        lb.next_balance[c] = lb.next_balance[c].min(next_balance);
        return;
    }
    for lvl in 0..lb.domains[c].len() {
        next_balance = next_balance.min(due(lb, lvl));
        if lb.domains[c][lvl].flags & SD_BALANCE_NEWIDLE == 0 {
            continue;
        }
        // NI_RANDOM: run with probability (1 + newidle_ratio) / 1024, a success weighing
        // the inverse.
        let weight = 1 + lb.state[c][lvl].newidle_ratio;
        if lb.rng.below(1024) as u32 > weight {
            update_newidle_stats(&mut lb.state[c][lvl], 0);
            continue;
        }
        let weight = (1024 + weight / 2) / weight;
        let (moved, cont) = balance::load_balance(k, lb, tasks, cpu, lvl, Idle::NewlyIdle);
        update_newidle_stats(&mut lb.state[c][lvl], weight * u32::from(moved > 0));
        if moved > 0 || k.rq_len(cpu) > 0 || !cont {
            break;
        }
    }
    lb.next_balance[c] = lb.next_balance[c].min(next_balance);
}

/// update_newidle_stats(): the newidle success ratio over the last ~1024 calls.
fn update_newidle_stats(st: &mut SdState, success: u32) {
    st.newidle_call += 1;
    st.newidle_success += success;
    if st.newidle_call >= 1024 {
        st.newidle_ratio = st.newidle_success;
        st.newidle_call /= 2;
        st.newidle_success /= 2;
    }
}

#[cfg(test)]
mod tests;
