//! Matching the sim's touch rate to the guest's. Under TCG a guest thread touches memory far
//! more slowly per second of guest time than the model's latencies say, while the scanner
//! runs on guest jiffies; so the sim's threads get the think time that gives each block the
//! touches per second its guest threads reported.

use std::collections::BTreeMap;

use serde::Serialize;
use sim_core::config::Config;

/// One thread block's rates before and after matching.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Matched {
    /// `process/block` (as in the time series' `task.<process>/<block>/<i>` columns) or
    /// `device/name`.
    pub block: String,
    /// Mean touches per second of guest time over the block's guest threads.
    pub guest_touches_per_s: f64,
    pub think_ns_before: u64,
    pub think_ns_after: u64,
    /// How much [`refine`] scaled the block's period after a first sim run (1: not at all).
    pub scale: f64,
}

/// Sets each thread block's and device's `think_ns` (from the oracle's per-thread rates,
/// keyed `process/block/i` and `device/name`, as guest.json's `touch_rate_per_s`) so that
/// one touch plus the think time takes as long as it took the guest. Blocks and devices the
/// guest did not report keep theirs. A touch is costed at local latency: remote touches make
/// the sim up to distance/10 times slower in memory time, which is small beside think times
/// of microseconds.
pub fn match_touch_rate(config: &mut Config, rates: &BTreeMap<String, f64>) -> Vec<Matched> {
    let latency = config.machine.local_latency_ns;
    blocks(config)
        .filter_map(|(block, lines, think)| match_one(block, u64::from(lines) * latency, think, rates))
        .collect()
}

/// Each guest thread's touch rate averaged over repeated kernel runs (over the runs that
/// reported it).
pub fn mean_rates(runs: &[&BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for (thread, rate) in runs.iter().flat_map(|r| r.iter()) {
        let e = sums.entry(thread.clone()).or_default();
        (e.0, e.1) = (e.0 + rate, e.1 + 1);
    }
    sums.into_iter().map(|(t, (sum, n))| (t, sum / f64::from(n))).collect()
}

/// The second step: fault, migration and remote-latency time make the sim's touches fall
/// short of the first step's estimate; `sim_per_kernel` (touches in the sim / touches on the
/// kernel, for CPU threads and for devices) scales each matched block's period to close
/// the gap. Returns whether anything changed (then the sim runs again).
pub fn refine(config: &mut Config, matched: &mut [Matched], shortfall: Shortfall) -> bool {
    let latency = config.machine.local_latency_ns;
    let vms: Vec<String> = config.vm.iter().map(|v| format!("{}/{}", v.name, v.vcpus.name)).collect();
    let mut changed = false;
    for (block, lines, think) in blocks(config) {
        let Some(m) = matched.iter_mut().find(|m| m.block == block) else { continue };
        let factor = if block.starts_with("device/") {
            shortfall.device
        } else if vms.contains(&block) {
            shortfall.kvm
        } else {
            shortfall.cpu
        };
        let Some(f) = factor.filter(|f| f.is_finite() && *f > 0.0 && (f - 1.0).abs() > 0.02) else { continue };
        let touch_ns = u64::from(lines) * latency;
        *think = (((*think + touch_ns) as f64 * f).round() as u64).saturating_sub(touch_ns);
        (m.think_ns_after, m.scale) = (*think, m.scale * f);
        changed = true;
    }
    changed
}

/// Sim touches / kernel touches of CPU threads (`touches.cpu`), devices (`touches.device`)
/// and vCPUs (`touches.kvm`), where both sides have them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shortfall {
    pub cpu: Option<f64>,
    pub device: Option<f64>,
    pub kvm: Option<f64>,
}

/// Every thread block (`process/block`), VM's vCPU block (`vm/block`) and device
/// (`device/name`) with its touch size and think time.
fn blocks(config: &mut Config) -> impl Iterator<Item = (String, u32, &mut u64)> {
    let threads = config.process.iter_mut().flat_map(|p| {
        let process = p.name.clone();
        p.thread.iter_mut().map(move |t| (format!("{process}/{}", t.name), t.touch_lines, &mut t.think_ns))
    });
    let vcpus = config.vm.iter_mut().map(|v| {
        let t = &mut v.vcpus;
        (format!("{}/{}", v.name, t.name), t.touch_lines, &mut t.think_ns)
    });
    let devices = config.device.iter_mut().map(|d| (format!("device/{}", d.name), d.touch_lines, &mut d.think_ns));
    threads.chain(vcpus).chain(devices)
}

/// One block: the mean guest rate of its threads (`block` itself or `block/i`).
fn match_one(block: String, touch_ns: u64, think: &mut u64, rates: &BTreeMap<String, f64>) -> Option<Matched> {
    let prefix = format!("{block}/");
    let mine: Vec<f64> = rates
        .iter()
        .filter(|&(n, &r)| (*n == block || n.starts_with(&prefix)) && r.is_finite() && r > 0.0)
        .map(|(_, &r)| r)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let guest = mine.iter().sum::<f64>() / mine.len() as f64;
    let before = *think;
    *think = ((1e9 / guest).round() as u64).saturating_sub(touch_ns);
    Some(Matched { block, guest_touches_per_s: guest, think_ns_before: before, think_ns_after: *think, scale: 1.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_time_fills_the_guest_period_beyond_the_touch_cost() {
        let mut c = workloads::catalogue::resolve("numa02", &[]).unwrap();
        let rates: BTreeMap<String, f64> =
            (0..4).map(|i| (format!("numa02/worker/{i}"), 100_000.0 + i as f64)).collect();
        let m = match_touch_rate(&mut c, &rates);
        assert_eq!(m.len(), 1);
        // 10 us per touch at ~100 k/s, of which 16 lines x 100 ns is memory time.
        assert_eq!(c.process[0].thread[0].think_ns, 10_000 - 1600);
        assert_eq!(m[0].scale, 1.0);
    }

    #[test]
    fn repeated_runs_pace_the_sim_at_each_threads_mean_rate() {
        let a = BTreeMap::from([("p/w/0".to_string(), 1000.0), ("device/d".to_string(), 300.0)]);
        let b = BTreeMap::from([("p/w/0".to_string(), 3000.0)]);
        let m = mean_rates(&[&a, &b]);
        assert_eq!(m, BTreeMap::from([("p/w/0".to_string(), 2000.0), ("device/d".to_string(), 300.0)]));
        assert_eq!(mean_rates(&[&a]), a);
    }

    #[test]
    fn a_guest_faster_than_the_model_gets_no_think_time_and_unreported_blocks_keep_theirs() {
        let mut c = workloads::catalogue::resolve("device-gup", &[]).unwrap();
        let before = c.process[0].thread[0].think_ns;
        assert!(match_touch_rate(&mut c, &BTreeMap::from([("other/x/0".into(), 5.0)])).is_empty());
        assert_eq!(c.process[0].thread[0].think_ns, before);
        let rates = BTreeMap::from([("app/producer/0".into(), 1e9), ("device/accel".into(), 1000.0)]);
        let m = match_touch_rate(&mut c, &rates);
        assert_eq!(m[0].think_ns_after, 0);
        assert_eq!((m[1].block.as_str(), c.device[0].think_ns), ("device/accel", 1_000_000 - 1600));
    }

    #[test]
    fn refining_scales_the_period_of_matched_blocks_by_kind_and_ignores_small_gaps() {
        let mut c = workloads::catalogue::resolve("device-gup", &[]).unwrap();
        let rates = BTreeMap::from([("app/producer/0".into(), 1e5), ("device/accel".into(), 1e4)]);
        let mut m = match_touch_rate(&mut c, &rates);
        assert_eq!((c.process[0].thread[0].think_ns, c.device[0].think_ns), (8400, 98_400));
        // The sim's CPU threads did 80 % of the kernel's touches: a period 80 % as long.
        let short = Shortfall { cpu: Some(0.8), device: Some(1.01), kvm: None };
        assert!(refine(&mut c, &mut m, short));
        assert_eq!((c.process[0].thread[0].think_ns, c.device[0].think_ns), (6400, 98_400));
        assert_eq!((m[0].think_ns_after, m[0].scale, m[1].scale), (6400, 0.8, 1.0));
        assert!(!refine(&mut c, &mut m, Shortfall { cpu: None, device: Some(f64::INFINITY), kvm: None }));
    }

    /// A VM's vCPUs are matched as a block `vm/vcpus` and refined by the vCPUs' own touches.
    #[test]
    fn vcpus_are_matched_and_refined_by_kvm_touches() {
        let mut c = workloads::catalogue::resolve("kvm-guest", &[]).unwrap();
        let block = format!("{}/{}", c.vm[0].name, c.vm[0].vcpus.name);
        let rates = BTreeMap::from([(format!("{block}/0"), 1e4), (format!("{block}/1"), 1e4)]);
        let mut m = match_touch_rate(&mut c, &rates);
        assert_eq!(m.len(), 1, "{m:?}");
        let lines = u64::from(c.vm[0].vcpus.touch_lines) * c.machine.local_latency_ns;
        assert_eq!(c.vm[0].vcpus.think_ns, 100_000 - lines);
        let short = Shortfall { cpu: Some(0.5), device: None, kvm: Some(2.0) };
        assert!(refine(&mut c, &mut m, short));
        assert_eq!(c.vm[0].vcpus.think_ns, 200_000 - lines);
    }
}
