//! How long a thread keeps its CPU while others wait, and whether a woken thread takes the
//! CPU at once (kernel/sched/fair.c):
//! - 6.1.192 (CFS): sched_slice() of `sysctl_sched_latency`, enforced at the tick by
//!   check_preempt_tick(); a woken sleeper is placed up to half a latency behind
//!   min_vruntime (place_entity() with GENTLE_FAIR_SLEEPERS) and preempts the running thread
//!   when it lags it by more than `sysctl_sched_wakeup_granularity`
//!   (check_preempt_wakeup() → wakeup_preempt_entity()).
//! - 6.12.117 (EEVDF, v6.6): each request is `sysctl_sched_base_slice` of service, ended at
//!   the tick (update_curr() → update_deadline()); RUN_TO_PARITY keeps a woken thread off
//!   the CPU until the running one's request is served (pick_eevdf()'s protect_slice()).
//!
//! Both scale their tunables by get_update_sysctl_factor(): 1 + log2 of the online CPUs, at
//! most 8 of them (SCHED_TUNABLESCALING_LOG, the default).
//!
//! Simplified, one per line:
//! - Every thread is nice 0: CFS's slice is its period over the threads queued, and the
//!   CPU turns to the thread that ran least recently (the one with the least vruntime when
//!   all are equal); EEVDF's earliest eligible deadline is that thread too.
//! - A turn ends at the first tick after the slice is used, counted from the turn's start;
//!   the kernel's ticks fall on a grid of their own.
//! - vruntime is not kept: a CFS sleeper's lag behind the running thread is its sleep,
//!   capped at half a latency, as if the running thread sat at min_vruntime.
//! - A preemption takes effect at the end of the model's quantum in progress.
//! - EEVDF sleepers rejoin with zero lag (no PLACE_LAG credit, no DELAY_DEQUEUE).

use crate::engine::{NSEC_PER_USEC, Nanos};

use crate::sched::TICK_NSEC;

/// sched_nr_latency: beyond this many threads CFS stretches its period.
const SCHED_NR_LATENCY: u64 = 8;

/// get_update_sysctl_factor() with SCHED_TUNABLESCALING_LOG.
fn sysctl_factor(nr_cpus: u32) -> u64 {
    1 + u64::from(nr_cpus.clamp(1, 8).ilog2())
}

/// sysctl_sched_latency (6 ms), sysctl_sched_min_granularity (0.75 ms),
/// sysctl_sched_wakeup_granularity (1 ms), scaled.
fn cfs_tunables(nr_cpus: u32) -> (Nanos, Nanos, Nanos) {
    let factor = sysctl_factor(nr_cpus);
    (6000 * NSEC_PER_USEC * factor, 750 * NSEC_PER_USEC * factor, 1000 * NSEC_PER_USEC * factor)
}

/// How long the thread that took the CPU runs before the CPU turns to another of its
/// `nr_running` threads: the slice, ended at the first tick that sees it used up.
pub fn turn_ns(eevdf: bool, nr_cpus: u32, nr_running: usize) -> Nanos {
    if eevdf {
        let base_slice = 700 * NSEC_PER_USEC * sysctl_factor(nr_cpus);
        return base_slice.div_ceil(TICK_NSEC).max(1) * TICK_NSEC;
    }
    let (latency, min_gran, _) = cfs_tunables(nr_cpus);
    // __sched_period() and sched_slice(); check_preempt_tick() fires once the run exceeds it.
    let nr = (nr_running as u64).max(1);
    let period = if nr > SCHED_NR_LATENCY { nr * min_gran } else { latency };
    let slice = (period / nr).max(min_gran);
    (slice / TICK_NSEC + 1) * TICK_NSEC
}

/// Whether a thread woken after sleeping `slept` ns preempts the thread running on its CPU.
pub fn wakeup_preempts(eevdf: bool, nr_cpus: u32, slept: Nanos) -> bool {
    if eevdf {
        return false;
    }
    let (latency, _, wakeup_gran) = cfs_tunables(nr_cpus);
    slept.min(latency / 2) > wakeup_gran
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NSEC_PER_MSEC;

    /// On 4 CPUs (factor 3): CFS's 18 ms period gives two threads 9 ms each, ended at the
    /// third tick (12 ms), three threads 6 ms (8 ms); past sched_nr_latency the slice is the
    /// 2.25 ms minimum granularity (4 ms). EEVDF's 2.1 ms request ends at the first tick. On
    /// 1 CPU (factor 1) CFS gives two threads 3 ms (4 ms).
    #[test]
    fn turns_follow_the_kernels_slices_to_the_tick() {
        assert_eq!(turn_ns(false, 4, 2), 12 * NSEC_PER_MSEC);
        assert_eq!(turn_ns(false, 4, 3), 8 * NSEC_PER_MSEC);
        assert_eq!(turn_ns(false, 4, 9), 4 * NSEC_PER_MSEC);
        assert_eq!(turn_ns(true, 4, 2), 4 * NSEC_PER_MSEC);
        assert_eq!(turn_ns(false, 1, 2), 4 * NSEC_PER_MSEC);
        assert_eq!(turn_ns(false, 256, 2), 16 * NSEC_PER_MSEC, "factor 4: 24 ms over 2 is 12 ms");
        assert_eq!(turn_ns(true, 256, 2), 4 * NSEC_PER_MSEC, "2.8 ms");
    }

    /// On 4 CPUs a CFS sleeper preempts once it lags by more than the 3 ms granularity; the
    /// 9 ms half-latency cap is above it, so every long sleeper preempts. EEVDF never does.
    #[test]
    fn cfs_sleepers_preempt_past_the_wakeup_granularity() {
        assert!(!wakeup_preempts(false, 4, 3 * NSEC_PER_MSEC));
        assert!(wakeup_preempts(false, 4, 3 * NSEC_PER_MSEC + 1));
        assert!(wakeup_preempts(false, 4, 72 * NSEC_PER_MSEC));
        assert!(!wakeup_preempts(true, 4, 72 * NSEC_PER_MSEC));
        assert!(!wakeup_preempts(false, 1, NSEC_PER_MSEC), "factor 1: 1 ms is not past the granularity");
    }
}
