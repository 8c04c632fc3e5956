//! Matching ksmd's pace to the guest's. ksm_scan_thread() (mm/ksm.c, 6.1 and 6.12) runs
//! ksm_do_scan(pages_to_scan) and only then sleeps `sleep_millisecs`, so ksmd's own time per
//! batch lengthens its period. On real hardware that time is small beside the sleep; under
//! TCG it is not: a pass that looks only at checksums runs at about half the nominal pace, and
//! each merge's TLB flushes of the other vCPUs take milliseconds. The kernel's time series
//! show both: the first pass (nothing merges before a checksum held still) gives the cost
//! per page looked at, the second the cost per merge. The sim gets them as
//! `ksm.scan_cost_ns` and `ksm.merge_cost_ns`.

use results::Table;
use serde::Serialize;
use sim_core::config::Config;
use sim_core::sim::PAGES_PER_MIB;

/// What the kernel's ksmd did and the costs that give the sim the same pace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KsmdPace {
    /// Seconds of the first pass over the mergeable pages (until full_scans ticked).
    pub first_pass_s: f64,
    /// Merges per second after it (pages_shared + pages_sharing).
    pub merges_per_s: f64,
    /// Pages ksmd looked at per second after the first pass: 6.12's pages_scanned, or on
    /// kernels without it the merges (every page of a content-class buffer merges then).
    pub scanned_per_s: f64,
    pub scan_cost_ns: u64,
    pub merge_cost_ns: u64,
}

/// The pace of the kernel's ksmd in `t` (the kernel's timeseries.csv) for `config`; `None`
/// when ksmd did not run, had nothing to merge, or did not finish a pass.
pub fn measure(t: &Table, config: &Config) -> Option<KsmdPace> {
    let ksm = &config.ksm;
    let mergeable = mergeable_pages(config);
    if !ksm.run || mergeable == 0 || ksm.pages_to_scan == 0 {
        return None;
    }
    let time = t.time_s();
    let full_scans = t.column("kernel.ksm.full_scans")?;
    let merged: Vec<f64> = t
        .column("kernel.ksm.pages_shared")?
        .iter()
        .zip(t.column("kernel.ksm.pages_sharing")?)
        .map(|(shared, sharing)| shared + sharing)
        .collect();
    let first = full_scans.iter().position(|&f| f > full_scans[0])?;
    let last = time.len().checked_sub(1).filter(|&l| l > first)?;
    let (span, merges) = (time[last] - time[first], merged[last] - merged[first]);
    if span <= 0.0 || merges <= 0.0 {
        return None;
    }
    let scanned = t.column("kernel.ksm.pages_scanned").map_or(merges, |s| s[last] - s[first]).max(merges);
    let sleep_per_page = ksm.sleep_millisecs as f64 * 1e6 / f64::from(ksm.pages_to_scan);
    let scan_ns = (time[first] * 1e9 / mergeable as f64 - sleep_per_page).max(0.0);
    let merge_ns = ((span * 1e9 / scanned - sleep_per_page - scan_ns) * scanned / merges).max(0.0);
    Some(KsmdPace {
        first_pass_s: time[first],
        merges_per_s: merges / span,
        scanned_per_s: scanned / span,
        scan_cost_ns: scan_ns.round() as u64,
        merge_cost_ns: merge_ns.round() as u64,
    })
}

/// Gives the sim ksmd's measured costs.
pub fn apply(config: &mut Config, pace: &KsmdPace) {
    config.ksm.scan_cost_ns = pace.scan_cost_ns;
    config.ksm.merge_cost_ns = pace.merge_cost_ns;
}

/// Pages of MADV_MERGEABLE memory: what one ksmd pass covers.
fn mergeable_pages(config: &Config) -> u64 {
    let vmas = config.process.iter().flat_map(|p| &p.vma).filter(|v| v.mergeable).map(|v| v.size_mib);
    let vms = config.vm.iter().filter(|v| v.mergeable).map(|v| v.memory_mib);
    vmas.chain(vms).sum::<u64>() * PAGES_PER_MIB
}

#[cfg(test)]
mod tests {
    use sim_core::config::{ProcessConfig, VmaConfig};

    use super::*;

    fn table(rows: &[[f64; 5]]) -> Table {
        let header = [
            "time_ms",
            "kernel.ksm.full_scans",
            "kernel.ksm.pages_shared",
            "kernel.ksm.pages_sharing",
            "kernel.ksm.pages_scanned",
        ];
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: rows.iter().map(|r| r.iter().map(|v| v.to_string()).collect()).collect(),
        }
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.ksm.run = true;
        c.ksm.pages_to_scan = 200;
        let vma = VmaConfig { name: "cache".into(), size_mib: 128, mergeable: true, ..Default::default() };
        let scratch = VmaConfig { name: "scratch".into(), size_mib: 64, ..Default::default() };
        c.process.push(ProcessConfig { name: "app".into(), vma: vec![vma, scratch], ..Default::default() });
        c
    }

    /// 32768 mergeable pages: a first pass of 6.5536 s is 200 us per page, of which the
    /// sleep is 100 us; then 100 merges per s out of 200 pages looked at per s: each page
    /// costs 5 ms, of which sleep and scan are 0.2 ms, and the merges (half the pages) take
    /// the rest, 9.6 ms each.
    #[test]
    fn the_first_pass_prices_a_page_and_the_second_a_merge() {
        let t =
            table(&[[0.0, 2.0, 0.0, 0.0, 0.0], [6553.6, 3.0, 0.0, 0.0, 32768.0], [16553.6, 3.0, 10.0, 990.0, 34768.0]]);
        let pace = measure(&t, &config()).unwrap();
        assert_eq!((pace.scan_cost_ns, pace.merge_cost_ns), (100_000, 9_600_000));
        assert_eq!((pace.merges_per_s, pace.scanned_per_s), (100.0, 200.0));
    }

    #[test]
    fn no_pace_without_a_finished_pass_or_a_merge() {
        let unfinished = table(&[[0.0, 2.0, 0.0, 0.0, 0.0], [9000.0, 2.0, 0.0, 0.0, 30000.0]]);
        assert_eq!(measure(&unfinished, &config()), None);
        let idle =
            table(&[[0.0, 2.0, 0.0, 0.0, 0.0], [6553.6, 3.0, 0.0, 0.0, 32768.0], [9000.0, 3.0, 0.0, 0.0, 33000.0]]);
        assert_eq!(measure(&idle, &config()), None);
    }
}
