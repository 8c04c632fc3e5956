//! Page migration for NUMA balancing (mm/migrate.c).

use bevy_ecs::entity::Entity;

use super::PageIdx;
use super::memory::{alloc_page_node, free_page_node};
use super::mmu_notifier::invalidate_range;
use crate::kernel::Kernel;
use crate::machine::Nid;

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

/// Models migrate_balanced_pgdat(): the target keeps its high watermark after the copy.
fn migrate_balanced_pgdat(k: &mut Kernel, nid: Nid, nr_pages: u64) -> bool {
    let pgdat = k.pgdat(nid);
    pgdat.free_pages > pgdat.wmark.high + nr_pages
}

/// Models migrate_misplaced_folio_prepare() + migrate_misplaced_folio(): move one page of
/// `mm` to node `target`. On success the old frame is freed, the page gets a new frame
/// generation, and secondary MMUs are told through the MMU notifier (try_to_migrate()).
pub fn migrate_misplaced_folio(k: &mut Kernel, mm: Entity, page: PageIdx, target: Nid) -> Result<(), MigrateFail> {
    let i = page as usize;
    if !migrate_balanced_pgdat(k, target, 1) {
        return Err(MigrateFail::TargetFull);
    }
    // migrate_folio_unmap(): try_to_migrate() replaces the PTE with a migration entry and
    // secondary MMUs let go (MMU_NOTIFY_CLEAR) before folio_migrate_mapping() checks the
    // refcount, so a pinned page's secondary mappings are dropped even though it stays
    // (mm/migrate.c, 6.1.192 and 6.12.117).
    invalidate_range(k, mm, page, 1, |_| true);
    if k.pages.pins[i] > 0 || k.pages.refs[i] > 0 {
        k.counters.vmstat.pgmigrate_fail += 1;
        return Err(MigrateFail::Refcount);
    }
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
