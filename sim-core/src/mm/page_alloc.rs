//! Zone watermarks (mm/page_alloc.c): the free-page levels below which allocations fall back
//! to other nodes and migrations refuse a target.

/// A node's watermarks in pages (zone->_watermark[WMARK_MIN/LOW/HIGH]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub min: u64,
    pub low: u64,
    pub high: u64,
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
/// default watermark_scale_factor is 10). Simplified: one zone per node, no lowmem reserve,
/// and no khugepaged bump of min_free_kbytes (THP is not modelled).
pub fn setup_per_zone_wmarks(present: &[u64]) -> Vec<Watermarks> {
    let total: u64 = present.iter().sum();
    let pages_min = min_free_kbytes(total) / 4;
    present
        .iter()
        .map(|&managed| {
            let min = (u128::from(pages_min) * u128::from(managed) / u128::from(total.max(1))) as u64;
            let gap = (min / 4).max(managed * 10 / 10_000);
            Watermarks { min, low: min + gap, high: min + 2 * gap }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_follow_the_kernel_arithmetic() {
        // Two 1 GiB nodes: 2 GiB = 2097152 KiB, min_free_kbytes = sqrt(33554432) = 5792 KiB
        // = 1448 pages, 724 per node; gap = max(181, 262) = 262.
        let w = setup_per_zone_wmarks(&[262_144, 262_144]);
        assert_eq!(w[0], Watermarks { min: 724, low: 986, high: 1248 });
        assert_eq!(w[0], w[1]);
        // 4 MiB: sqrt(4096 * 16) = 256 KiB; 256 KiB would give 64, below the 128 KiB floor.
        assert_eq!(min_free_kbytes(1024), 256);
        assert_eq!(min_free_kbytes(64), 128);
    }
}
