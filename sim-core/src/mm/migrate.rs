//! Page migration for NUMA balancing (mm/migrate.c).

use bevy_ecs::entity::Entity;

use super::backing::page_mappers;
use super::mmu_notifier::{MmuNotifyEvent, invalidate_range};
use super::vmscan::wakeup_kswapd;
use super::{CPUPID_UNSET, PageIdx};
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
    /// The target node is outside the faulting task's cpuset.mems: alloc_misplaced_dst_folio()
    /// gets no page (prepare_alloc_pages() limits the nodemask to
    /// cpuset_current_mems_allowed), migrate_folio_unmap() returns -ENOMEM before it unmaps
    /// anything, and migrate_pages() counts pgmigrate_fail.
    Cpuset,
}

/// Models migrate_balanced_pgdat(): the target keeps its high watermark after the copy.
fn migrate_balanced_pgdat(k: &mut Kernel, nid: Nid, nr_pages: u64) -> bool {
    let pgdat = k.pgdat(nid);
    pgdat.free_pages > pgdat.wmark.high + nr_pages
}

/// Models migrate_misplaced_folio_prepare() + migrate_misplaced_folio(): move the folio of
/// `nr` pages from `first` (one 4 KiB page, or a THP's 512) of `mm` to node `target`, whole
/// (NUMA balancing never splits a THP to migrate it: `nosplit` for MR_NUMA_MISPLACED). On
/// success the old frames are freed, the pages get a new frame generation, and secondary
/// MMUs are told through the MMU notifier (try_to_migrate()). `mems_allowed`: the nodes the
/// faulting task may allocate on.
pub fn migrate_misplaced_folio(
    k: &mut Kernel,
    mm: Entity,
    first: PageIdx,
    nr: u64,
    target: Nid,
    mems_allowed: u64,
) -> Result<(), MigrateFail> {
    let thp = u64::from(nr > 1);
    if !migrate_balanced_pgdat(k, target, nr) {
        // Memory-tiering mode wakes the target's kswapd to make room for promotions.
        if k.sysctl.0.numa_balancing.tiering() {
            wakeup_kswapd(k, target);
        }
        return Err(MigrateFail::TargetFull);
    }
    if mems_allowed & 1 << target == 0 {
        k.counters.vmstat.pgmigrate_fail += nr;
        k.counters.vmstat.thp_migration_fail += thp;
        return Err(MigrateFail::Cpuset);
    }
    // migrate_folio_unmap(): try_to_migrate() replaces the PTEs with migration entries and
    // secondary MMUs let go (MMU_NOTIFY_CLEAR) before folio_migrate_mapping() checks the
    // refcount, so a pinned folio's secondary mappings are dropped even though it stays
    // (mm/migrate.c, 6.1.192 and 6.12.117).
    // The rmap walk reaches every mm mapping the folio (a memfd's other mappers too).
    for m in page_mappers(k, mm, first) {
        invalidate_range(k, m, first, nr, MmuNotifyEvent::Clear, |_| true);
    }
    let slots = k.pages.folio_slots(first, nr);
    if slots.clone().any(|i| k.pages.slots.pins(i) > 0 || k.pages.slots.refs[i] > 0) {
        k.counters.vmstat.pgmigrate_fail += nr;
        k.counters.vmstat.thp_migration_fail += thp;
        return Err(MigrateFail::Refcount);
    }
    let src = k.pages.slots.pte(slots.start).nid;
    let mut dst = k.pgdat(target);
    dst.free_pages -= nr;
    k.pgdat(src).free_pages += nr;
    let tiering = k.sysctl.0.numa_balancing.tiering();
    let (src_top, dst_top) = (k.tiers.node_is_toptier(src), k.tiers.node_is_toptier(target));
    for i in slots {
        k.pages.slots.new_frame(i).nid = target;
        // folio_migrate_flags(): across tiers last_cpupid held an access time on one side.
        if tiering && src_top != dst_top {
            k.pages.slots.last_cpupid[i] = CPUPID_UNSET;
        }
    }
    k.counters.vmstat.pgmigrate_success += nr;
    k.counters.vmstat.numa_pages_migrated += nr;
    k.counters.vmstat.thp_migration_success += thp;
    if tiering && !src_top && dst_top {
        k.counters.tierstat.pgpromote_success += nr;
    }
    Ok(())
}

/// The tracepoints migrate_pages() fires for one misplaced folio of `nr` pages, if it got
/// that far (a full target node stops migrate_misplaced_folio_prepare() before it).
pub fn trace_migrate_pages(k: &mut Kernel, f: &Faulter, nr: u64, result: Result<(), MigrateFail>) {
    if result == Err(MigrateFail::TargetFull) {
        return;
    }
    let (nr, thp) = (nr as u32, u32::from(nr > 1));
    let (succeeded, failed) = if result.is_ok() { (nr, 0) } else { (0, nr) };
    let (thp_succeeded, thp_failed) = if result.is_ok() { (thp, 0) } else { (0, thp) };
    trace_event!(k, f, Event::MmMigratePagesStart);
    trace_event!(k, f, Event::MmMigratePages { succeeded, failed, thp_succeeded, thp_failed });
}
