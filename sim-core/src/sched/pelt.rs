//! Per-entity load tracking, as kernel/sched/pelt.c computes it for a task's sched entity
//! (identical in 6.1.192 and 6.12.117): load, runnable and util sums over 1024 µs periods,
//! each older period weighing y (y^32 = 1/2), and the averages they give.
//!
//! Simplifications, one per line:
//! - Every thread is nice 0 in the root task group: its load weight is NICE_0_LOAD scaled
//!   down (1024) and task_h_load() is its own load_avg (the oracle's guest never calls
//!   setsid(), so autogroup leaves its threads in the root group).
//! - A CPU's cfs_rq averages are the sums of its threads' averages, runnable and blocked,
//!   each decayed to the time asked ([`SchedAvg::at`]); the kernel keeps running sums that
//!   equal these up to rounding.
//! - util_est is not modelled: cpu_util_cfs() and task_util_est() read util_avg.

use crate::engine::Nanos;

/// LOAD_AVG_PERIOD: the number of periods over which a contribution halves.
const LOAD_AVG_PERIOD: u64 = 32;

/// LOAD_AVG_MAX: the sum of an entity runnable for ever, 1024 · Σ yⁿ as the kernel's integer
/// arithmetic converges (`tests::load_avg_max_is_the_series_limit` recomputes it).
const LOAD_AVG_MAX: u64 = 47742;

/// The load weight of a nice-0 task, scale_load_down(NICE_0_LOAD).
pub const NICE_0_WEIGHT: u64 = 1024;

/// runnable_avg_yN_inv: ⌊(2³² − 1) · yⁿ⌋ for n < 32 (`tests::y_inverse_table_is_y_to_the_n`
/// derives each entry).
const Y_N_INV: [u32; 32] = [
    0xffffffff, 0xfa83b2da, 0xf5257d14, 0xefe4b99a, 0xeac0c6e6, 0xe5b906e6, 0xe0ccdeeb, 0xdbfbb796, 0xd744fcc9,
    0xd2a81d91, 0xce248c14, 0xc9b9bd85, 0xc5672a10, 0xc12c4cc9, 0xbd08a39e, 0xb8fbaf46, 0xb504f333, 0xb123f581,
    0xad583ee9, 0xa9a15ab4, 0xa5fed6a9, 0xa2704302, 0x9ef5325f, 0x9b8d39b9, 0x9837f050, 0x94f4efa8, 0x91c3d373,
    0x8ea4398a, 0x8b95c1e3, 0x88980e80, 0x85aac367, 0x82cd8698,
];

/// decay_load(): `val` · yⁿ.
fn decay_load(val: u64, n: u64) -> u64 {
    if n > LOAD_AVG_PERIOD * 63 {
        return 0;
    }
    let (val, n) = (val >> (n / LOAD_AVG_PERIOD), n % LOAD_AVG_PERIOD);
    ((u128::from(val) * u128::from(Y_N_INV[n as usize])) >> 32) as u64
}

/// __accumulate_pelt_segments(): the contribution of `d1` µs ending the oldest period,
/// `periods - 1` whole periods and `d3` µs of the current one.
fn accumulate_pelt_segments(periods: u64, d1: u64, d3: u64) -> u64 {
    let c1 = decay_load(d1, periods);
    let c2 = LOAD_AVG_MAX - decay_load(LOAD_AVG_MAX, periods) - 1024;
    c1 + c2 + d3
}

/// struct sched_avg of a task's sched entity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedAvg {
    last_update_time: Nanos,
    load_sum: u64,
    runnable_sum: u64,
    util_sum: u64,
    period_contrib: u64,
    pub load_avg: u64,
    pub runnable_avg: u64,
    pub util_avg: u64,
}

impl SchedAvg {
    /// init_entity_runnable_average(), post_init_entity_util_avg() and
    /// attach_entity_load_avg() for a new task joining a CPU whose cfs_rq has `cpu_util`
    /// and `cpu_load`: its load starts at its weight, its util at the CPU's util per unit of
    /// load times its weight, at most half the capacity the CPU has spare.
    pub fn new_task(now: Nanos, cpu_util: u64, cpu_load: u64) -> Self {
        let cap = NICE_0_WEIGHT.saturating_sub(cpu_util) / 2;
        let util = match cap {
            0 => 0,
            _ if cpu_util != 0 => (cpu_util * NICE_0_WEIGHT / (cpu_load + 1)).min(cap),
            _ => cap,
        };
        let divider = LOAD_AVG_MAX - 1024;
        Self {
            last_update_time: now,
            load_sum: divider,
            runnable_sum: util * divider,
            util_sum: util * divider,
            period_contrib: 0,
            load_avg: NICE_0_WEIGHT,
            runnable_avg: util,
            util_avg: util,
        }
    }

    /// __update_load_avg_se(): brings the sums to `now` for an entity that was on a run
    /// queue (`on_rq`) and running (`running`) since the last update, and the averages with
    /// them when a period boundary passed.
    pub fn update(&mut self, now: Nanos, on_rq: bool, running: bool) {
        let Some(delta) = now.checked_sub(self.last_update_time) else {
            self.last_update_time = now;
            return;
        };
        let delta = delta >> 10;
        if delta == 0 {
            return;
        }
        self.last_update_time += delta << 10;
        let running = on_rq && running;
        if self.accumulate_sum(delta, on_rq, running) {
            let divider = LOAD_AVG_MAX - 1024 + self.period_contrib;
            self.load_avg = NICE_0_WEIGHT * self.load_sum / divider;
            self.runnable_avg = self.runnable_sum / divider;
            self.util_avg = self.util_sum / divider;
        }
    }

    /// The averages at `now` of an entity in the same state since the last update, for a
    /// reader that does not update it (a CPU's blocked load decays without anyone running).
    pub fn at(&self, now: Nanos, on_rq: bool, running: bool) -> Self {
        let mut a = *self;
        if now > a.last_update_time {
            a.update(now, on_rq, running);
        }
        a
    }

    /// accumulate_sum(): true when at least one period boundary passed.
    fn accumulate_sum(&mut self, delta: u64, load: bool, running: bool) -> bool {
        let mut contrib = delta;
        let delta = delta + self.period_contrib;
        let periods = delta / 1024;
        let rest = delta % 1024;
        if periods > 0 {
            self.load_sum = decay_load(self.load_sum, periods);
            self.runnable_sum = decay_load(self.runnable_sum, periods);
            self.util_sum = decay_load(self.util_sum, periods);
            if load {
                contrib = accumulate_pelt_segments(periods, 1024 - self.period_contrib, rest);
            }
        }
        self.period_contrib = rest;
        if load {
            self.load_sum += contrib;
            self.runnable_sum += contrib << 10;
        }
        if running {
            self.util_sum += contrib << 10;
        }
        periods > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One PELT period: 1024 units of 1024 ns.
    const PERIOD_NS: Nanos = 1024 * 1024;

    /// Each entry is (2³² − 1) · yⁿ with y = 2^(−1/32), as the kernel's generator
    /// (Documentation/scheduler/sched-pelt.c) computes it.
    #[test]
    fn y_inverse_table_is_y_to_the_n() {
        let y = 0.5f64.powf(1.0 / 32.0);
        for (n, &v) in Y_N_INV.iter().enumerate() {
            let want = (u32::MAX as f64 * y.powi(n as i32)) as u32;
            assert!(v.abs_diff(want) <= 1, "y^{n}: {v:#x} against {want:#x}");
        }
    }

    /// LOAD_AVG_MAX is where max = decay(max, 1) + 1024 stops growing.
    #[test]
    fn load_avg_max_is_the_series_limit() {
        let mut max = 0u64;
        loop {
            let next = decay_load(max, 1) + 1024;
            if next == max {
                break;
            }
            max = next;
        }
        assert_eq!(max, LOAD_AVG_MAX);
    }

    /// A task running for ever converges to its weight and full util; one runnable half the
    /// time (in 8 ms bursts) to about half; a blocked one halves every 32 ms.
    #[test]
    fn averages_follow_the_time_runnable() {
        let mut always = SchedAvg::new_task(0, 0, 0);
        let mut half = SchedAvg::new_task(0, 0, 0);
        for ms in 1..=1000u64 {
            always.update(ms * PERIOD_NS, true, true);
            half.update(ms * PERIOD_NS, (ms / 8) % 2 == 0, true);
        }
        assert!(always.load_avg >= 1000 && always.util_avg >= 1000, "{always:?}");
        assert!((400..640).contains(&half.load_avg), "{half:?}");
        assert_eq!(half.load_avg, half.runnable_avg, "a task's runnable is its load at weight 1024");
        let later = always.at(1000 * PERIOD_NS + 32 * PERIOD_NS, false, false);
        assert!(later.load_avg.abs_diff(always.load_avg / 2) <= 2, "{later:?}");
        assert_eq!(always.at(1000 * PERIOD_NS, false, false), always, "no time passed");
    }

    /// A runnable task that waits (not running) keeps its load but loses util.
    #[test]
    fn waiting_counts_as_load_not_util() {
        let mut a = SchedAvg::new_task(0, 0, 0);
        for ms in 1..=300u64 {
            a.update(ms * PERIOD_NS, true, false);
        }
        assert!(a.load_avg >= 1000 && a.runnable_avg >= 1000 && a.util_avg <= 5, "{a:?}");
    }

    /// post_init_entity_util_avg(): half the spare capacity on an idle CPU; on a busy one
    /// the CPU's util per unit of load, capped.
    #[test]
    fn a_new_task_starts_from_its_cpu() {
        assert_eq!(SchedAvg::new_task(0, 0, 0).util_avg, 512);
        assert_eq!(SchedAvg::new_task(0, 1024, 1024).util_avg, 0);
        assert_eq!(SchedAvg::new_task(0, 400, 2047).util_avg, 200);
        assert_eq!(SchedAvg::new_task(0, 600, 1023).util_avg, 212);
        assert_eq!(SchedAvg::new_task(0, 0, 0).load_avg, 1024);
    }
}
