//! Promotion in memory-tiering mode (`numa_balancing` 2 or 3): the parts of
//! kernel/sched/fair.c that decide whether a hinting fault on a slow-tier page promotes it,
//! read in 6.12.118 and 7.3.4 (the same but for 7.3's pgpromote_candidate_nrl, not modelled).

use crate::engine::Nanos;
use crate::kernel::Kernel;
use crate::machine::{Nid, PgData};
use crate::mm::PAGE_SHIFT;
use crate::sched::TICK_NSEC;

/// PAGE_ACCESS_TIME_MASK: LAST_CPUPID_MASK, 21 bits with Debian's NR_CPUS = 8192 (8 pid bits
/// and 13 CPU bits, so PAGE_ACCESS_TIME_BUCKETS is 0 and times are kept to the millisecond).
pub const PAGE_ACCESS_TIME_MASK: u32 = (1 << 21) - 1;
/// NUMA_MIGRATION_ADJUST_STEPS.
const NUMA_MIGRATION_ADJUST_STEPS: u32 = 16;
/// Jiffies at boot: INITIAL_JIFFIES is -300 s at HZ = 250 (Debian's CONFIG_HZ).
const INITIAL_JIFFIES: u32 = (-300i32 * 250) as u32;
const MSEC_PER_SEC: u32 = 1000;

/// The promotion limiter and hot threshold of one node (struct pglist_data's nbp_* fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nbp {
    /// nbp_rl_start: when the rate limiter's current second began (jiffies in ms).
    pub rl_start: u32,
    /// nbp_rl_nr_cand: pgpromote_candidate at that time.
    pub rl_nr_cand: u64,
    /// nbp_th_start: when the threshold's current period began.
    pub th_start: u32,
    /// nbp_th_nr_cand: pgpromote_candidate then.
    pub th_nr_cand: u64,
    /// nbp_threshold: the hot threshold in ms, 0 until first adjusted.
    pub threshold: u32,
    /// The node's PGPROMOTE_CANDIDATE node stat.
    pub pgpromote_candidate: u64,
}

/// `jiffies_to_msecs(jiffies)` at `now` (jiffies start 300 s before wrapping, as at boot).
pub fn jiffies_msecs(now: Nanos) -> u32 {
    ((now / TICK_NSEC) as u32).wrapping_add(INITIAL_JIFFIES).wrapping_mul(4)
}

/// Models folio_use_access_time() (mm/memory-tiers.c): in memory-tiering mode a slow-tier
/// folio's last_cpupid holds the time of its last scan or fault instead of a cpupid.
#[inline]
pub fn folio_use_access_time(k: &Kernel, nid: Nid) -> bool {
    k.sysctl.0.numa_balancing.tiering() && !k.tiers.node_is_toptier(nid)
}

/// Models folio_xchg_access_time(): stores `time` in the slot's last_cpupid and returns the
/// time stored before (an unset cpupid reads as the mask, as `-1 & LAST_CPUPID_MASK`).
pub fn folio_xchg_access_time(k: &mut Kernel, slot: usize, time: u32) -> u32 {
    std::mem::replace(&mut k.pages.slots.last_cpupid[slot], time & PAGE_ACCESS_TIME_MASK) & PAGE_ACCESS_TIME_MASK
}

/// Models pgdat_free_space_enough(): the node keeps its promo watermark plus max(1 GiB,
/// present / 16) free.
fn pgdat_free_space_enough(pgdat: &PgData) -> bool {
    let enough = (1u64 << (30 - PAGE_SHIFT)).max(pgdat.present_pages >> 4);
    pgdat.free_pages > pgdat.wmark.promo() + enough
}

/// Models numa_hint_fault_latency(): ms since the folio was last scanned (or faulted).
fn numa_hint_fault_latency(k: &mut Kernel, slot: usize, time: u32) -> u32 {
    let last = folio_xchg_access_time(k, slot, time);
    time.wrapping_sub(last) & PAGE_ACCESS_TIME_MASK
}

/// Models numa_promotion_rate_limit(): counts `nr` candidates and says whether this second's
/// candidates reached `rate_limit` pages.
fn numa_promotion_rate_limit(k: &mut Kernel, dst: Nid, rate_limit: u64, nr: u64, now: u32) -> bool {
    k.counters.tierstat.pgpromote_candidate += nr;
    let mut pgdat = k.pgdat(dst);
    let nbp = &mut pgdat.nbp;
    nbp.pgpromote_candidate += nr;
    if now.wrapping_sub(nbp.rl_start) > MSEC_PER_SEC {
        nbp.rl_start = now;
        nbp.rl_nr_cand = nbp.pgpromote_candidate;
    }
    nbp.pgpromote_candidate - nbp.rl_nr_cand >= rate_limit
}

/// Models numa_promotion_adjust_threshold(): once per numa_balancing_scan_period_max, lower
/// the threshold by a 16th of 2 × `ref_th` if candidates ran over 110 % of the rate limit's
/// worth for the period, raise it if under 90 %, within [unit, 2 × `ref_th`].
fn numa_promotion_adjust_threshold(nbp: &mut Nbp, rate_limit: u64, ref_th: u32, th_period: u32, now: u32) {
    if now.wrapping_sub(nbp.th_start) <= th_period {
        return;
    }
    nbp.th_start = now;
    let ref_cand = rate_limit * u64::from(th_period) / u64::from(MSEC_PER_SEC);
    let diff_cand = nbp.pgpromote_candidate - nbp.th_nr_cand;
    let unit_th = ref_th * 2 / NUMA_MIGRATION_ADJUST_STEPS;
    let mut th = if nbp.threshold == 0 { ref_th } else { nbp.threshold };
    if diff_cand > ref_cand * 11 / 10 {
        th = th.saturating_sub(unit_th).max(unit_th);
    } else if diff_cand < ref_cand * 9 / 10 {
        th = (th + unit_th).min(ref_th * 2);
    }
    nbp.th_nr_cand = nbp.pgpromote_candidate;
    nbp.threshold = th;
}

/// Models the memory-tiering branch of should_numa_migrate_memory() for a slow-tier folio
/// of `nr` pages at `slot` faulted from node `dst` at `now`: promote at once while the
/// destination has plenty free (resetting the threshold); else adjust the threshold, and
/// promote a folio whose hint-fault latency is under it, unless this second's candidates
/// exceed numa_balancing_promote_rate_limit_MBps.
pub fn should_promote(k: &mut Kernel, slot: usize, dst: Nid, nr: u64, now: Nanos) -> bool {
    let time = jiffies_msecs(now);
    if pgdat_free_space_enough(&k.pgdat(dst)) {
        k.pgdat(dst).nbp.threshold = 0;
        return true;
    }
    let def_th = k.sysctl.0.numa_balancing_hot_threshold_ms as u32;
    let rate_limit = k.sysctl.0.numa_balancing_promote_rate_limit_mbps << (20 - PAGE_SHIFT);
    let th_period = k.sysctl.0.numa_balancing_scan_period_max_ms as u32;
    let th = {
        let mut pgdat = k.pgdat(dst);
        numa_promotion_adjust_threshold(&mut pgdat.nbp, rate_limit, def_th, th_period, time);
        if pgdat.nbp.threshold == 0 { def_th } else { pgdat.nbp.threshold }
    };
    if numa_hint_fault_latency(k, slot, time) >= th {
        return false;
    }
    !numa_promotion_rate_limit(k, dst, rate_limit, nr, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threshold steps by 2 × 1000 / 16 = 125 ms, down to 125 and up to 2000.
    #[test]
    fn the_threshold_steps_by_a_sixteenth_of_twice_the_default() {
        let rate_limit = 256; // 1 MB/s in pages
        let mut nbp = Nbp { th_start: 0, ..Default::default() };
        // 60 s of 256 pages/s is 15 360 candidates; 20 000 is over 110 %.
        nbp.pgpromote_candidate = 20_000;
        numa_promotion_adjust_threshold(&mut nbp, rate_limit, 1000, 60_000, 60_001);
        assert_eq!(nbp.threshold, 875);
        // No period has passed: unchanged.
        nbp.pgpromote_candidate = 100_000;
        numa_promotion_adjust_threshold(&mut nbp, rate_limit, 1000, 60_000, 120_001);
        assert_eq!(nbp.threshold, 875);
        // Next period: 80 000 more, still over: down again; then none: up, capped at 2000.
        numa_promotion_adjust_threshold(&mut nbp, rate_limit, 1000, 60_000, 120_002);
        assert_eq!(nbp.threshold, 750);
        for i in 0..20 {
            numa_promotion_adjust_threshold(&mut nbp, rate_limit, 1000, 60_000, 180_003 + i * 60_001);
        }
        assert_eq!(nbp.threshold, 2000);
        for i in 0..40 {
            nbp.pgpromote_candidate += 1_000_000;
            numa_promotion_adjust_threshold(&mut nbp, rate_limit, 1000, 60_000, 2_000_000 + i * 60_001);
        }
        assert_eq!(nbp.threshold, 125, "never below one step");
    }

    #[test]
    fn jiffies_start_five_minutes_before_the_wrap() {
        assert_eq!(jiffies_msecs(0), 0u32.wrapping_sub(300_000));
        assert_eq!(jiffies_msecs(4_000_000).wrapping_sub(jiffies_msecs(0)), 4);
        assert_eq!(jiffies_msecs(3_999_999), jiffies_msecs(0), "a jiffy is 4 ms at HZ = 250");
    }
}
