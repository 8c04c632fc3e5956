//! ksmd (mm/ksm.c), driven one wake-up at a time.

use bevy_ecs::entity::Entity;
use sim_core::config::{Config, KernelConfig, KernelVersion, KsmConfig, MachineConfig};
use sim_core::mm::ksm::ksmd_wake;
use sim_core::mm::mmu_notifier::{SPTE_VALID, SecondaryMmu, SmmuKind};
use sim_core::mm::mprotect::mprotect_vma;
use sim_core::mm::{Mm, PG_KSM, PTE_PROTNONE, PageIdx, Pages};
use sim_core::sim::Sim;
use sim_core::stats::Counters;

/// A process with one 512-page mergeable VMA of 4 contents, populated on node 0 from page
/// `populated_from` on, after ksmd's first pass over it: every page's checksum is recorded
/// and nothing has merged yet.
fn mergeable(populated_from: u64) -> (Sim, Entity, PageIdx) {
    mergeable_on(KernelVersion::V6_12, populated_from)
}

fn mergeable_on(version: KernelVersion, populated_from: u64) -> (Sim, Entity, PageIdx) {
    let (mut sim, mm, base) = populated(version, populated_from);
    for _ in 0..(512 - populated_from).div_ceil(100) {
        assert_eq!(wake(&mut sim), 0, "the first pass only records checksums");
    }
    (sim, mm, base)
}

fn populated(version: KernelVersion, populated_from: u64) -> (Sim, Entity, PageIdx) {
    let config = Config {
        machine: MachineConfig { memory_per_node_mib: 64, ..Default::default() },
        kernel: KernelConfig { version, ..Default::default() },
        ksm: KsmConfig { run: true, pages_to_scan: 100, ..Default::default() },
        ..Default::default()
    };
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("app");
    let vma = sim.add_vma(mm, "buf", 512);
    let base = sim.vma_base(mm, vma);
    sim.make_mergeable(mm, vma, 4, 0);
    populate(&mut sim, mm, base + populated_from as PageIdx..base + 512);
    (sim, mm, base)
}

fn populate(sim: &mut Sim, mm: Entity, pages: std::ops::Range<PageIdx>) {
    sim.with_kernel(|k| {
        for page in pages {
            sim_core::mm::memory::do_anonymous_page(k, mm, 0, page, 0, true);
        }
    });
}

fn wake(sim: &mut Sim) -> u64 {
    sim.world.run_system_cached(ksmd_wake).unwrap();
    sim.world.resource::<Counters>().ksm.pages_merged
}

/// scan_get_next_rmap_item() (6.12.117) walks past absent PTEs inside its loop: they do not
/// use up a slot of pages_to_scan, so one wake-up still looks at 100 present pages.
#[test]
fn absent_pages_do_not_use_up_pages_to_scan() {
    let (mut sim, _, _) = mergeable(300);
    // 100 present pages of 4 contents: the first of each goes into the unstable tree, the
    // second merges with it and becomes stable, every later one merges with the stable page.
    assert_eq!(wake(&mut sim), 100 - 4);
}

/// replace_page() maps the KSM page with `mk_pte(kpage, vma->vm_page_prot)` (6.12.117): in a
/// PROT_NONE VMA the merged PTE stays PROT_NONE, so the CPU still cannot read it.
#[test]
fn a_merge_in_a_prot_none_vma_keeps_the_pte_inaccessible() {
    let (mut sim, mm, base) = mergeable(0);
    sim.with_kernel(|k| mprotect_vma(k, mm, 0, false));
    assert!(wake(&mut sim) > 0, "6.12's page walker finds pages in PROT_NONE VMAs");
    let pages = sim.world.resource::<Pages>();
    let merged: Vec<usize> =
        (base as usize..base as usize + 100).filter(|&i| pages.pte(i as PageIdx).flags & PG_KSM != 0).collect();
    assert!(!merged.is_empty());
    assert!(merged.iter().all(|&i| pages.pte(i as PageIdx).flags & PTE_PROTNONE != 0));
    assert!(!sim.world.get::<Mm>(mm).unwrap().page_accessible(base));
}

/// try_to_merge_two_pages() makes the page being scanned the KSM page in place;
/// write_protect_page() runs an MMU_NOTIFY_CLEAR invalidation of it, so a device that had it
/// mapped writable must refault (and would then take the COW).
#[test]
fn the_page_that_becomes_the_ksm_page_is_invalidated_in_secondary_mmus() {
    let (mut sim, mm, base) = mergeable(0);
    let smmu = sim.add_secondary_mmu("dev", mm, base, 512, SmmuKind::Notifier);
    sim.with_kernel(|k| {
        let sim_core::kernel::Kernel { smmus, pages, .. } = k;
        let mut s = smmus.get_mut(smmu).unwrap();
        for p in base..base + 512 {
            s.map(p, pages, true);
        }
    });
    wake(&mut sim);
    let pages = sim.world.resource::<Pages>();
    let s = sim.world.get::<SecondaryMmu>(smmu).unwrap();
    // Page 4 (content 1, like page 0) is scanned second: it becomes the KSM page in place.
    assert_ne!(pages.pte(base + 4).flags & PG_KSM, 0);
    assert_eq!(pages.pte(base + 4).nid, 0);
    for p in base..base + 100 {
        assert_eq!(s.entry(p) & SPTE_VALID, 0, "page {p}: every merged or write-protected page is unmapped");
    }
    assert_ne!(s.entry(base + 200) & SPTE_VALID, 0, "pages ksmd has not reached stay mapped");
}

/// The KSM folio is freed with its last mapping: once every sharer has broken COW
/// (do_wp_page()) or been unmapped, no frame is left behind (found by the invariant mode).
#[test]
fn a_ksm_frame_is_freed_with_its_last_mapping() {
    let (mut sim, mm, base) = mergeable(0);
    assert!(wake(&mut sim) > 0);
    sim.with_kernel(|k| {
        for page in base..base + 512 {
            let mut f = sim_core::kernel::Faulter::kthread(k, 9, 0, sim_core::stats::Source::Cpu);
            sim_core::mm::memory::handle_mm_fault(k, mm, page, true, &mut f).unwrap();
        }
        let rss = k.mm(mm).rss;
        let node0 = k.pgdat(0);
        assert_eq!(node0.present_pages - node0.free_pages, rss, "one frame per page, no KSM frame left");
        sim_core::mm::mprotect::do_munmap(k, mm, 0);
        let node0 = k.pgdat(0);
        assert_eq!(node0.free_pages, node0.present_pages);
    });
}

/// cmp_and_merge_page() merges a page only once its checksum held still since ksmd's last
/// visit (rmap_item->oldchecksum). 6.12.117 tests that before the stable tree search, so a
/// page that appears after its twins merged waits a pass; 6.1.192 tests it only before the
/// unstable tree, so such a page merges with its stable twin on first sight.
#[test]
fn a_new_page_with_a_stable_twin_merges_at_once_on_6_1_and_a_pass_later_on_6_12() {
    for (version, first_sight) in [(KernelVersion::V6_1Debian12, 100), (KernelVersion::V6_12, 0)] {
        let (mut sim, mm, base) = mergeable_on(version, 300);
        let mut merged = 0;
        for _ in 0..3 {
            merged = wake(&mut sim);
        }
        assert_eq!(merged, 212 - 4, "{version:?}: the second pass merges every page but the 4 KSM pages");
        populate(&mut sim, mm, base..base + 300);
        assert_eq!(wake(&mut sim) - merged, first_sight, "{version:?}");
    }
}
