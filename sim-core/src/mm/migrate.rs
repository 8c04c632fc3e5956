//! Page migration for NUMA balancing (mm/migrate.c).

use bevy_ecs::entity::Entity;

use super::PageIdx;
use super::memory::{alloc_page_node, free_page_node};
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range};
use crate::kernel::{Faulter, Kernel};
use crate::machine::Nid;
use crate::trace::Event;
use crate::trace_event;

/// Why a misplaced page did not move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateFail {
    /// The target node is below its high watermark (migrate_balanced_pgdat()); the kernel
    /// gives up before migrate_pages(), so pgmigrate_fail is not counted.
    TargetFull,
    /// The page is pinned or holds extra references: folio_migrate_mapping() finds the
    /// refcount does not match the mappings, and migrate_pages() counts pgmigrate_fail.
    Refcount,
}

/// High watermark of a node, after `__setup_per_zone_wmarks()` with one zone per node:
/// min = sqrt(16 * KiB) scaled to the node, plus twice the watermark_scale_factor (10/10000)
/// gap. Simplified: min_free_kbytes is computed per node, not over all lowmem.
pub fn high_wmark_pages(present_pages: u64) -> u64 {
    let kib = present_pages * 4;
    let min_free_kbytes = ((kib * 16) as f64).sqrt() as u64;
    let min = (min_free_kbytes.clamp(128, 262_144) / 4).min(present_pages / 4);
    let gap = (min / 4).max(present_pages * 10 / 10_000);
    min + 2 * gap
}

/// Models migrate_balanced_pgdat(): the target keeps its high watermark after the copy.
fn migrate_balanced_pgdat(k: &mut Kernel, nid: Nid, nr_pages: u64) -> bool {
    let pgdat = k.pgdat(nid);
    pgdat.free_pages > high_wmark_pages(pgdat.present_pages) + nr_pages
}

/// Models migrate_misplaced_folio_prepare() + migrate_misplaced_folio(): move one page of
/// `mm` to node `target`. On success the old frame is freed, the page gets a new frame
/// generation, and secondary MMUs are told through the MMU notifier (try_to_migrate()).
pub fn migrate_misplaced_folio(k: &mut Kernel, mm: Entity, page: PageIdx, target: Nid) -> Result<(), MigrateFail> {
    let i = page as usize;
    if !migrate_balanced_pgdat(k, target, 1) {
        return Err(MigrateFail::TargetFull);
    }
    if k.pages.pins[i] > 0 || k.pages.refs[i] > 0 {
        k.counters.vmstat.pgmigrate_fail += 1;
        return Err(MigrateFail::Refcount);
    }
    // try_to_migrate() replaces the PTE with a migration entry: secondary MMUs let go.
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
    let src = k.pages.pte[i].nid;
    let got = alloc_page_node(k, target);
    debug_assert_eq!(got, Some(target), "migrate_balanced_pgdat() guarantees a free frame");
    free_page_node(k, src);
    k.pages.pte[i].nid = target;
    k.pages.frame_gen[i] = k.pages.frame_gen[i].wrapping_add(1);
    k.counters.vmstat.pgmigrate_success += 1;
    k.counters.vmstat.numa_pages_migrated += 1;
    Ok(())
}

/// The tracepoints migrate_pages() fires for one misplaced folio, if it got that far (a
/// full target node stops migrate_misplaced_folio_prepare() before it).
pub fn trace_migrate_pages(k: &mut Kernel, f: &Faulter, result: Result<(), MigrateFail>) {
    if result == Err(MigrateFail::TargetFull) {
        return;
    }
    let succeeded = u32::from(result.is_ok());
    trace_event!(k, f, Event::MmMigratePagesStart);
    trace_event!(k, f, Event::MmMigratePages { succeeded, failed: 1 - succeeded });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_a_small_fraction_of_the_node() {
        // 1 GiB node: min_free_kbytes = sqrt(16 * 1 Mi KiB) = 4096 KiB = 1024 pages,
        // gap = max(256, 262) = 262, high = 1024 + 524.
        assert_eq!(high_wmark_pages(262_144), 1024 + 2 * 262);
        assert!(high_wmark_pages(1024) < 1024 / 2);
    }
}
