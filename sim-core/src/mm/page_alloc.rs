//! Zone watermarks (mm/page_alloc.c): the free-page levels below which allocations fall back
//! to other nodes and migrations refuse a target.

/// A node's watermarks in pages (zone->_watermark[WMARK_MIN/LOW/HIGH]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub min: u64,
    pub low: u64,
    pub high: u64,
}

impl Watermarks {
    /// WMARK_PROMO (6.12, 7.3): high plus the same gap again, which kswapd reclaims to in
    /// memory-tiering mode.
    pub fn promo(&self) -> u64 {
        self.high + (self.high - self.low)
    }
}

/// Models calculate_min_free_kbytes(): `int_sqrt(lowmem_kbytes * 16)`, clamped to
/// [128, 262144] KiB (6.1.192 and 6.12.117).
pub fn min_free_kbytes(total_pages: u64) -> u64 {
    let kbytes = total_pages * 4;
    (kbytes * 16).isqrt().clamp(128, 262_144)
}

/// Models __setup_per_zone_wmarks() for a machine whose nodes have `present` pages each:
/// min_free_kbytes is shared out by node size, and low and high sit
/// `max(min / 4, managed * watermark_scale_factor / 10000)` above min and low (the
/// default watermark_scale_factor is 10). With THP enabled (`always` or `madvise`),
/// khugepaged's start first raises min_free_kbytes ([`recommended_min_free_kbytes`]).
/// Simplified: one zone per node for the watermarks, no lowmem reserve.
pub fn setup_per_zone_wmarks(present: &[u64], thp_enabled: bool) -> Vec<Watermarks> {
    let total: u64 = present.iter().sum();
    let mut kbytes = min_free_kbytes(total);
    if thp_enabled {
        kbytes = kbytes.max(recommended_min_free_kbytes(present, &wmarks_for(present, kbytes)));
    }
    wmarks_for(present, kbytes)
}

/// The per-node watermarks for a given min_free_kbytes.
fn wmarks_for(present: &[u64], min_free_kbytes: u64) -> Vec<Watermarks> {
    let total: u64 = present.iter().sum();
    let pages_min = min_free_kbytes / 4;
    present
        .iter()
        .map(|&managed| {
            let min = (u128::from(pages_min) * u128::from(managed) / u128::from(total.max(1))) as u64;
            let gap = (min / 4).max(managed * 10 / 10_000);
            Watermarks { min, low: min + gap, high: min + 2 * gap }
        })
        .collect()
}

/// pageblock_nr_pages on x86-64 with THP (pageblock_order = HPAGE_PMD_ORDER).
const PAGEBLOCK_NR_PAGES: u64 = 512;
/// MIGRATE_PCPTYPES: unmovable, movable, reclaimable.
const MIGRATE_PCPTYPES: u64 = 3;
/// x86-64's ZONE_DMA (below 16 MiB) and ZONE_DMA32 (below 4 GiB) ends, in pages.
const ZONE_ENDS: [u64; 2] = [16 << 8, 4 << 18];

/// Models set_recommended_min_free_kbytes() (mm/khugepaged.c, 6.1.192 and 6.12.118), which
/// khugepaged's start runs when a PMD THP size is enabled: two pageblocks, plus
/// MIGRATE_PCPTYPES² more, per populated zone up to ZONE_NORMAL, at most 5% of
/// nr_free_buffer_pages() (managed pages above each zone's high watermark), in KiB.
/// `base` are the watermarks calculate_min_free_kbytes() gave. Simplified: nodes hold
/// consecutive physical memory from 0 with no PCI hole, for the zone count.
pub fn recommended_min_free_kbytes(present: &[u64], base: &[Watermarks]) -> u64 {
    let nr_zones = populated_zones(present);
    let recommended = PAGEBLOCK_NR_PAGES * nr_zones * (2 + MIGRATE_PCPTYPES * MIGRATE_PCPTYPES);
    let free_buffer: u64 = present.iter().zip(base).map(|(&p, w)| p.saturating_sub(w.high)).sum();
    recommended.min(free_buffer / 20) * 4
}

/// Populated ZONE_DMA, ZONE_DMA32 and ZONE_NORMAL zones, each node having its own.
fn populated_zones(present: &[u64]) -> u64 {
    let mut start = 0;
    let mut zones = 0;
    for &pages in present {
        let end = start + pages;
        let mut zone_start = 0;
        for zone_end in ZONE_ENDS.into_iter().chain([u64::MAX]) {
            zones += u64::from(start < zone_end && zone_start < end);
            zone_start = zone_end;
        }
        start = end;
    }
    zones
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_follow_the_kernel_arithmetic() {
        // Two 1 GiB nodes: 2 GiB = 2097152 KiB, min_free_kbytes = sqrt(33554432) = 5792 KiB
        // = 1448 pages, 724 per node; gap = max(181, 262) = 262.
        let w = setup_per_zone_wmarks(&[262_144, 262_144], false);
        assert_eq!(w[0], Watermarks { min: 724, low: 986, high: 1248 });
        assert_eq!(w[0], w[1]);
        // 4 MiB: sqrt(4096 * 16) = 256 KiB; 256 KiB would give 64, below the 128 KiB floor.
        assert_eq!(min_free_kbytes(1024), 256);
        assert_eq!(min_free_kbytes(64), 128);
    }

    /// set_recommended_min_free_kbytes() (mm/khugepaged.c, 6.1.192 and 6.12.118) with THP
    /// enabled: 512 × nr_zones × (2 + 3²) pages, capped at 5% of the free buffer pages.
    #[test]
    fn thp_raises_min_free_kbytes_per_populated_zone() {
        // 2 × 1 GiB: node 0 has DMA and DMA32, node 1 DMA32: 3 × 5632 pages = 66 MiB.
        let w = setup_per_zone_wmarks(&[262_144, 262_144], true);
        assert_eq!(w[0], Watermarks { min: 8448, low: 10_560, high: 12_672 });
        // 8 × 64 GiB: DMA, DMA32 and Normal on node 0, Normal on the others: 10 zones.
        assert_eq!(populated_zones(&[16 << 18; 8]), 10);
        let base = wmarks_for(&[16 << 18; 8], min_free_kbytes(8 * (16 << 18)));
        assert_eq!(recommended_min_free_kbytes(&[16 << 18; 8], &base), 10 * 5632 * 4);
        // 4 × 16 MiB: 5% of the free pages, (16384 - 4 × 96 high) / 20 = 800, wins.
        let small = [4096; 4];
        assert_eq!(populated_zones(&small), 4, "DMA on node 0, a DMA32 zone on each other node");
        let base = wmarks_for(&small, min_free_kbytes(16_384));
        assert_eq!(base[0].high, 96);
        assert_eq!(recommended_min_free_kbytes(&small, &base), 800 * 4);
    }
}
