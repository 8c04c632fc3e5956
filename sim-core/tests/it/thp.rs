//! Transparent huge pages (mm/huge_memory.c, 6.12.117), driven directly.

use bevy_ecs::entity::Entity;
use sim_core::config::{Config, GupPolicy, HugepageAdvice, KernelVersion, MachineConfig, NotifierMode, Thp};
use sim_core::kernel::{Faulter, Kernel};
use sim_core::mm::gup::{
    FOLL_FORCE, FOLL_GET, FOLL_HONOR_NUMA_FAULT, FOLL_PIN, FOLL_WRITE, get_user_page_fast_only, get_user_pages,
};
use sim_core::mm::memory::handle_mm_fault;
use sim_core::mm::mmu_notifier::{
    MmuNotifyEvent, SPTE_HUGE, SPTE_VALID, SecondaryMmu, SmmuKind, invalidate_range, map_secondary,
};
use sim_core::mm::mprotect::mprotect_vma;
use sim_core::mm::numa_balancing::{ProtNumaChange, change_prot_numa};
use sim_core::mm::vmscan::age_pages;
use sim_core::mm::{HPAGE_PMD_NR, Mm, PTE_PROTNONE, PTE_ZERO, PageIdx, Pages, Pmd};
use sim_core::sim::Sim;
use sim_core::stats::{Counters, Source};

/// A 2-node machine with THP `always` and a 4 MiB VMA (two PMD blocks), untouched.
fn machine(policy: GupPolicy) -> (Sim, Entity, PageIdx) {
    machine_with(policy, Thp::Always)
}

fn machine_with(policy: GupPolicy, thp: Thp) -> (Sim, Entity, PageIdx) {
    machine_notified(policy, thp, NotifierMode::Unconditional)
}

fn machine_notified(policy: GupPolicy, thp: Thp, notifier: NotifierMode) -> (Sim, Entity, PageIdx) {
    let mut config =
        Config { machine: MachineConfig { memory_per_node_mib: 64, ..Default::default() }, ..Default::default() };
    config.kernel.transparent_hugepage = thp;
    config.kernel.notifier = notifier;
    config.kernel.gup_policy = Some(policy);
    // The rules these tests cite are 6.12's; 6.19 on leaves pinned THPs alone (machine_on()).
    config.kernel.version = KernelVersion::V6_12;
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("app");
    let vma = sim.add_vma(mm, "buf", 2 * HPAGE_PMD_NR);
    let base = sim.vma_base(mm, vma);
    sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 2;
    (sim, mm, base)
}

fn fault(k: &mut Kernel, mm: Entity, page: PageIdx, cpu: u32, write: bool) {
    let mut f = Faulter::kthread(k, 77, cpu, Source::Cpu);
    handle_mm_fault(k, mm, page, write, &mut f).unwrap();
}

fn pmd(sim: &Sim, mm: Entity, b: usize) -> Pmd {
    sim.world.get::<Mm>(mm).unwrap().vmas[0].pmds[b]
}

fn scan(sim: &mut Sim, mm: Entity) -> u64 {
    scan_range(sim, mm).pte_updates
}

fn scan_range(sim: &mut Sim, mm: Entity) -> ProtNumaChange {
    let v = sim.world.get::<Mm>(mm).unwrap().vmas[0].clone();
    sim.with_kernel(|k| change_prot_numa(k, mm, &v, v.start, v.end(), None))
}

/// do_huge_pmd_anonymous_page(): a write fault in an empty, aligned 2 MiB block allocates a
/// THP on the faulting node; a read maps the huge zero page, and a write to it splits the PMD
/// (do_huge_pmd_wp_page() falls back) and copies 4 KiB.
#[test]
fn faults_allocate_thps_and_the_huge_zero_page() {
    let (mut sim, mm, base) = machine(GupPolicy::Explicit);
    sim.with_kernel(|k| fault(k, mm, base + 3, 4, true));
    assert_eq!(pmd(&sim, mm, 0), Pmd::Huge);
    sim.with_kernel(|k| {
        assert!((base..base + 512).all(|p| k.pages.pte(p).nid == 1), "the whole THP on node 1");
        assert_eq!(k.mm(mm).rss, HPAGE_PMD_NR);
        fault(k, mm, base + 600, 0, false);
    });
    assert_eq!(pmd(&sim, mm, 1), Pmd::HugeZero);
    sim.with_kernel(|k| {
        assert_ne!(k.pages.pte(base + 1000).flags & PTE_ZERO, 0);
        fault(k, mm, base + 600, 0, true);
        assert_eq!(k.pages.pte(base + 600).flags & PTE_ZERO, 0);
        assert_ne!(k.pages.pte(base + 601).flags & PTE_ZERO, 0, "the rest stays zero-page PTEs");
    });
    assert_eq!(pmd(&sim, mm, 1), Pmd::Table);
    let c = sim.world.resource::<Counters>().vmstat;
    assert_eq!((c.thp_fault_alloc, c.thp_split_pmd, c.thp_fault_fallback), (1, 1, 0));
}

/// do_huge_pmd_anonymous_page() (mm/huge_memory.c, 6.1.192 and 6.12.118) builds the PMD
/// from `vma->vm_page_prot`: a FOLL_FORCE first touch in a PROT_NONE VMA maps a protnone THP
/// (a write) or huge zero page (a read).
#[test]
fn a_forced_first_touch_in_a_prot_none_vma_maps_a_protnone_pmd() {
    let (mut sim, mm, base) = machine(GupPolicy::Explicit);
    sim.with_kernel(|k| {
        mprotect_vma(k, mm, 0, false);
        let mut f = Faulter::kthread(k, 77, 4, Source::Device);
        get_user_pages(k, mm, base + 3, FOLL_GET | FOLL_FORCE | FOLL_WRITE, &mut f).unwrap();
        get_user_pages(k, mm, base + 600, FOLL_GET | FOLL_FORCE, &mut f).unwrap();
        assert!((base..base + 1024).all(|p| k.pages.protnone(p)), "both blocks protnone");
    });
    assert_eq!((pmd(&sim, mm, 0), pmd(&sim, mm, 1)), (Pmd::Huge, Pmd::HugeZero));
}

/// With THP enabled, khugepaged's start raises min_free_kbytes
/// (set_recommended_min_free_kbytes(), mm/khugepaged.c 6.1.192 and 6.12.118): on 2 × 64 MiB
/// to 5% of the free buffer pages, (2 × (16384 - 271)) / 20 pages = 6444 KiB, against
/// calculate_min_free_kbytes()'s 1448.
#[test]
fn thp_enabled_raises_the_min_watermark() {
    let min = |thp| {
        let (mut sim, _, _) = machine_with(GupPolicy::Explicit, thp);
        sim.with_kernel(|k| k.pgdat(0).wmark.min)
    };
    assert_eq!((min(Thp::Never), min(Thp::Madvise), min(Thp::Always)), (181, 805, 805));
}

/// A node without 512 free pages above its min watermark gives no THP: thp_fault_fallback,
/// and the block is mapped by 4 KiB PTEs from then on.
#[test]
fn a_full_node_falls_back_to_4k_pages() {
    let (mut sim, mm, base) = machine(GupPolicy::Explicit);
    sim.with_kernel(|k| {
        let mut node0 = k.pgdat(0);
        node0.free_pages = node0.wmark.low + 100;
        fault(k, mm, base, 0, true);
    });
    assert_eq!(pmd(&sim, mm, 0), Pmd::Table);
    let c = sim.world.resource::<Counters>().vmstat;
    assert_eq!((c.thp_fault_alloc, c.thp_fault_fallback), (0, 1));
}

/// alloc_pages_mpol() (mm/mempolicy.c, 6.12.118; vma_alloc_folio() in 6.1.192): the local
/// `__GFP_THISNODE | __GFP_NORETRY` try goes down to the min watermark (the slow path); only a
/// VM_HUGEPAGE VMA, whose vma_thp_gfp_mask() has `__GFP_DIRECT_RECLAIM` under the default
/// defrag, then retries along the zonelist: a remote THP instead of 4 KiB pages.
#[test]
fn a_full_node_gives_madvised_memory_a_remote_thp() {
    let run = |free_above_min: u64, madvised: bool| {
        let (mut sim, mm, base) = machine(GupPolicy::Explicit);
        if madvised {
            sim.madvise_hugepage(mm, 0, Some(HugepageAdvice::Madvise));
        }
        sim.with_kernel(|k| {
            let mut node0 = k.pgdat(0);
            node0.free_pages = node0.wmark.min + free_above_min;
            fault(k, mm, base, 0, true);
        });
        let c = sim.world.resource::<Counters>().vmstat;
        let nid = sim.with_kernel(|k| k.pages.pte(base).nid);
        (pmd(&sim, mm, 0), c.thp_fault_alloc, nid)
    };
    assert_eq!(run(512, false), (Pmd::Huge, 1, 0), "between min and low: the slow path");
    assert_eq!(run(511, false), (Pmd::Table, 0, 0), "4 KiB pages on node 0, down to min");
    assert_eq!(run(511, true), (Pmd::Huge, 1, 1), "MADV_HUGEPAGE: a THP on node 1");
}

/// change_huge_pmd(): one PMD update per THP, counted as 512 PTE updates too (6.12.117
/// change_pmd_range()), pinned THPs included; the hinting fault is one per THP and migrates
/// it whole (thp_migration_success, numa_pages_migrated += 512), unless a subpage is pinned.
#[test]
fn a_thp_is_scanned_faulted_and_migrated_at_the_pmd() {
    for pinned in [false, true] {
        let (mut sim, mm, base) = machine(GupPolicy::Explicit);
        sim.with_kernel(|k| {
            fault(k, mm, base, 0, true);
            fault(k, mm, base + 512, 0, true);
            if pinned {
                *k.pages.pins_mut(base + 17) = 1;
            }
        });
        let changed = scan_range(&mut sim, mm);
        assert_eq!(changed, ProtNumaChange { pte_updates: 2 * HPAGE_PMD_NR, entries_written: 2 }, "two PMDs written");
        let c = sim.world.resource::<Counters>().vmstat;
        assert_eq!((c.numa_huge_pte_updates, c.numa_pte_updates), (2, 1024));
        sim.with_kernel(|k| fault(k, mm, base + 100, 4, false));
        let c = sim.world.resource::<Counters>().vmstat;
        assert_eq!(c.numa_hint_faults, 1, "one fault for 512 pages");
        sim.with_kernel(|k| {
            assert!((base..base + 512).all(|p| !k.pages.protnone(p)), "the whole PMD is restored");
            assert!((base + 512..base + 1024).all(|p| k.pages.protnone(p)), "the other THP is untouched");
            let want = if pinned { 0 } else { 1 };
            assert!((base..base + 512).all(|p| k.pages.pte(p).nid == want));
        });
        if pinned {
            assert_eq!((c.thp_migration_fail, c.pgmigrate_fail, c.numa_pages_migrated), (1, 512, 0));
        } else {
            assert_eq!((c.thp_migration_success, c.numa_pages_migrated, c.pgmigrate_success), (1, 512, 512));
        }
    }
}

/// As [`machine`], with the rules of `version` and a single-threaded process.
fn machine_on(version: KernelVersion) -> (Sim, Entity, PageIdx) {
    let mut config =
        Config { machine: MachineConfig { memory_per_node_mib: 64, ..Default::default() }, ..Default::default() };
    config.kernel.transparent_hugepage = Thp::Always;
    config.kernel.version = version;
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("app");
    let vma = sim.add_vma(mm, "buf", 2 * HPAGE_PMD_NR);
    let base = sim.vma_base(mm, vma);
    (sim, mm, base)
}

/// A scan that covers part of a THP splits its PMD (__split_huge_pmd()); the folio stays
/// one. 6.12.118 makes the covered PTEs protnone, and a hinting fault on one is one fault for
/// the folio (do_numa_page(): folio_nr_pages()), migrates all 512 pages and restores every
/// protnone PTE (numa_rebuild_large_mapping()). 6.1.192's change_pte_range() skips the pages
/// (`page_count(page) != 1`), and its do_numa_page() only restores a PTE made protnone before
/// the split (`if (PageCompound(page)) goto out_map;`).
#[test]
fn a_pte_mapped_thp_is_hinted_as_one_folio_on_6_12_and_not_at_all_on_6_1() {
    for (version, updates, faults, migrated) in
        [(KernelVersion::V6_12, 256, 1, 512), (KernelVersion::V6_1Debian12, 0, 0, 0)]
    {
        let (mut sim, mm, base) = machine_on(version);
        sim.with_kernel(|k| fault(k, mm, base, 0, true));
        let v = sim.world.get::<Mm>(mm).unwrap().vmas[0].clone();
        let half = sim.with_kernel(|k| change_prot_numa(k, mm, &v, v.start, v.start + 256, Some(1)));
        assert_eq!(half.pte_updates, updates, "{version}");
        assert_eq!(pmd(&sim, mm, 0), Pmd::PteMapped, "{version}: split, still one folio");
        sim.with_kernel(|k| {
            // A PTE made protnone before the split, as a whole-PMD pass would have left it.
            k.pages.pte_mut(base + 300).flags |= PTE_PROTNONE;
            fault(k, mm, base + 300, 4, false);
            if updates > 0 {
                fault(k, mm, base + 10, 4, false);
            }
            assert!((base..base + 512).all(|p| !k.pages.protnone(p)), "{version}: every PTE restored");
            assert_eq!(k.pages.pte(base + 511).nid, u8::from(migrated > 0), "{version}: the whole folio moved");
        });
        let c = sim.world.resource::<Counters>().vmstat;
        assert_eq!((c.numa_hint_faults, c.numa_pages_migrated), (faults, migrated), "{version}");
    }
}

/// folio_maybe_dma_pinned() is the folio's (its _pincount): one pinned page of a PTE-mapped
/// THP keeps every PTE of it from a scan, in 6.12.118's change_pte_range() (a private
/// mapping) and 7.3.4's folio_can_map_prot_numa(), even where the scanned half holds no
/// pinned page.
#[test]
fn one_pinned_page_keeps_a_pte_mapped_thp_from_the_scan() {
    for version in [KernelVersion::V6_12, KernelVersion::V7_3] {
        for (pinned, updates) in [(false, 256), (true, 0)] {
            let (mut sim, mm, base) = machine_on(version);
            sim.with_kernel(|k| {
                fault(k, mm, base, 0, true);
                if pinned {
                    *k.pages.pins_mut(base + 400) = 1;
                }
            });
            let v = sim.world.get::<Mm>(mm).unwrap().vmas[0].clone();
            let half = sim.with_kernel(|k| change_prot_numa(k, mm, &v, v.start, v.start + 256, Some(1)));
            assert_eq!(pmd(&sim, mm, 0), Pmd::PteMapped, "{version}: split by the half scan");
            assert_eq!(half.pte_updates, updates, "{version}, pinned {pinned}");
        }
    }
}

/// From 6.19 (7.2.13 and 7.3.4 mm/huge_memory.c) change_huge_pmd() calls
/// folio_can_map_prot_numa(): a DMA-pinned THP, and a THP already on a single-threaded
/// process's node, stay mapped; 6.12.118 makes both protnone.
#[test]
fn from_6_19_pinned_and_local_thps_are_not_made_protnone() {
    for (version, pinned_updates, local_updates) in
        [(KernelVersion::V6_12, 512, 512), (KernelVersion::V7_2, 0, 0), (KernelVersion::V7_3, 0, 0)]
    {
        let (mut sim, mm, base) = machine_on(version);
        sim.with_kernel(|k| {
            fault(k, mm, base, 0, true);
            fault(k, mm, base + 512, 0, true);
            *k.pages.pins_mut(base + 17) = 1;
        });
        let v = sim.world.get::<Mm>(mm).unwrap().vmas[0].clone();
        let pinned = sim.with_kernel(|k| change_prot_numa(k, mm, &v, v.start, v.start + 512, None)).pte_updates;
        let local = sim.with_kernel(|k| change_prot_numa(k, mm, &v, v.start + 512, v.end(), Some(0))).pte_updates;
        assert_eq!((pinned, local), (pinned_updates, local_updates), "{version}");
    }
}

/// follow_pmd_mask() applies gup_can_follow_protnone() to a protnone PMD as
/// follow_page_pte() does to a PTE: a driver's read GUP follows it only in the explicit era.
#[test]
fn gup_on_a_protnone_pmd_follows_the_era_rule() {
    for (policy, faults) in
        [(GupPolicy::Implicit, 1), (GupPolicy::ImplicitAll, 1), (GupPolicy::ImplicitForce, 1), (GupPolicy::Explicit, 0)]
    {
        let (mut sim, mm, base) = machine(policy);
        sim.with_kernel(|k| fault(k, mm, base, 0, true));
        scan(&mut sim, mm);
        sim.with_kernel(|k| {
            let mut f = Faulter::kthread(k, 88, 4, Source::Device);
            get_user_pages(k, mm, base + 9, FOLL_GET, &mut f).unwrap();
            assert_eq!(k.counters.hint_faults_by_source.device, faults, "{policy:?}");
            assert_eq!(k.pages.pte(base).flags & PTE_PROTNONE == 0, faults == 1, "{policy:?}");
        });
    }
}

/// try_to_merge_one_page() splits a THP before it merges one of its subpages.
#[test]
fn ksm_splits_a_thp_before_merging_its_subpages() {
    let (mut sim, mm, base) = machine(GupPolicy::Explicit);
    sim.make_mergeable(mm, 0, 4, 0);
    sim.with_kernel(|k| fault(k, mm, base, 0, true));
    sim.world.resource_mut::<sim_core::mm::ksm::Ksmd>().vmas.push((mm, 0));
    // The first pass records checksums; merging starts in the second.
    for _ in 0..20 {
        sim.world.run_system_cached(sim_core::mm::ksm::ksmd_wake).unwrap();
    }
    let c = sim.world.resource::<Counters>();
    assert!(c.ksm.pages_merged > 0);
    assert_eq!(c.vmstat.thp_split_pmd, 1);
    assert_eq!(pmd(&sim, mm, 0), Pmd::Table);
}

/// A device worker's GUP on a protnone PMD (follow_pmd_mask() → follow_huge_pmd() with
/// gup_can_follow_protnone()) faults or follows exactly as on a protnone 4 KiB PTE, in every
/// GUP era, for reads and writes, with and without FOLL_HONOR_NUMA_FAULT; GUP-fast bails on
/// both (pmd_protnone() in gup_fast_pmd_range(), pte_protnone() in gup_fast_pte_range()).
#[test]
fn gup_on_a_protnone_pmd_decides_as_on_a_protnone_pte() {
    let policies = [GupPolicy::Implicit, GupPolicy::ImplicitAll, GupPolicy::ImplicitForce, GupPolicy::Explicit];
    for policy in policies {
        for flags in [FOLL_GET, FOLL_GET | FOLL_HONOR_NUMA_FAULT, FOLL_GET | FOLL_WRITE, FOLL_PIN] {
            let decide = |thp| {
                let (mut sim, mm, base) = machine_with(policy, thp);
                // A memset of the first 2 MiB: one THP, or 512 pages.
                sim.with_kernel(|k| (base..base + 512).for_each(|p| fault(k, mm, p, 0, true)));
                assert!(scan(&mut sim, mm) > 0);
                sim.with_kernel(|k| {
                    assert!(!get_user_page_fast_only(k, mm, base + 9, false), "GUP-fast bails on protnone");
                    let mut f = Faulter::kthread(k, 88, 4, Source::Device);
                    get_user_pages(k, mm, base + 9, flags, &mut f).unwrap();
                    (k.counters.hint_faults_by_source.device, k.pages.protnone(base + 9), k.pages.pte(base + 9).nid)
                })
            };
            let (huge, small) = (decide(Thp::Always), decide(Thp::Never));
            assert_eq!(huge, small, "{policy:?}, flags {flags:#x}: (faults, protnone, node) THP vs 4 KiB");
        }
    }
}

/// A THP's 512 subpages share one slot through fault, scan, hinting fault and migration
/// (page state well under a byte per 4 KiB page); a pin on one subpage gives every subpage
/// a slot of its own, a copy of the THP's state.
#[test]
fn a_thp_keeps_one_slot_until_a_subpage_needs_its_own() {
    let (mut sim, mm, base) = machine(GupPolicy::Explicit);
    sim.with_kernel(|k| {
        fault(k, mm, base, 0, true);
        fault(k, mm, base + 512, 0, true);
    });
    scan(&mut sim, mm);
    sim.with_kernel(|k| fault(k, mm, base + 100, 4, false));
    let pages = sim.world.resource::<Pages>();
    assert!(pages.is_compact(base) && pages.is_compact(base + 512));
    assert_eq!(sim.world.resource::<Counters>().vmstat.thp_migration_success, 1);
    assert!((base..base + 512).all(|p| pages.pte(p).nid == 1 && !pages.protnone(p)));
    assert!((base + 512..base + 1024).all(|p| pages.pte(p).nid == 0 && pages.protnone(p)));
    let per_page = pages.bytes() as f64 / pages.len() as f64;
    assert!(per_page <= 1.0, "{per_page} bytes per page");
    let cpupid = pages.last_cpupid(base);
    sim.with_kernel(|k| {
        let mut f = Faulter::kthread(k, 88, 0, Source::Device);
        get_user_pages(k, mm, base + 7, FOLL_PIN, &mut f).unwrap();
    });
    let pages = sim.world.resource::<Pages>();
    assert!(!pages.is_compact(base) && pages.is_compact(base + 512));
    assert_eq!((pages.pins(base + 7), pages.pins(base + 6)), (1, 0));
    assert!((base..base + 512).all(|p| pages.pte(p).nid == 1 && pages.last_cpupid(p) == cpupid));
    assert_eq!(pmd(&sim, mm, 0), Pmd::Huge, "a pin does not split the PMD");
}

/// A device mapping at 2 MiB (`map_size = "2m"`) maps a THP's whole block with one fault;
/// test_young on that entry answers for the whole folio (512 pages young through the device
/// while protnone, against 1 for a 4 KiB entry), and an invalidation touching any page under
/// it (even one a smart notifier would skip elsewhere) drops the whole PMD-level entry. A
/// THP migration's MMU_NOTIFY_CLEAR covers the PMD.
#[test]
fn a_device_maps_a_thp_at_2m_and_ages_and_loses_it_per_pmd() {
    for pmd in [false, true] {
        let (mut sim, mm, base) = machine_notified(GupPolicy::Explicit, Thp::Always, NotifierMode::Smart);
        let smmu = sim.add_secondary_mmu("dev", mm, base, 1024, SmmuKind::Notifier);
        sim.with_kernel(|k| (0..2).for_each(|b| fault(k, mm, base + b * 512, 0, true)));
        sim.world.run_system_cached(age_pages).unwrap();
        scan(&mut sim, mm);
        let entries = |sim: &Sim| sim.world.get::<SecondaryMmu>(smmu).unwrap().entries().to_vec();
        let valid = |sim: &Sim| entries(sim).iter().filter(|&&e| e & SPTE_VALID != 0).count();
        sim.with_kernel(|k| map_secondary(k, smmu, mm, base + 9, false, pmd));
        assert_eq!(valid(&sim), if pmd { 512 } else { 1 });
        assert_eq!(entries(&sim)[9] & SPTE_HUGE != 0, pmd);
        sim.world.get_mut::<SecondaryMmu>(smmu).unwrap().mark_young(9);
        sim.world.run_system_cached(age_pages).unwrap();
        let young = sim.world.resource::<Counters>().young.secondary_only_protnone;
        assert_eq!(young, if pmd { 512 } else { 1 }, "test_young per PMD");
        sim.with_kernel(|k| {
            (0..512).for_each(|p| map_secondary(k, smmu, mm, base + p, false, pmd));
            invalidate_range(k, mm, base + 9, 1, MmuNotifyEvent::ProtectionVma, |p| p == base + 9);
        });
        assert_eq!(valid(&sim), if pmd { 0 } else { 511 }, "a 2 MiB entry goes whole");
        sim.with_kernel(|k| {
            map_secondary(k, smmu, mm, base + 600, false, pmd);
            fault(k, mm, base + 512, 4, false);
        });
        assert_eq!(sim.world.resource::<Counters>().vmstat.thp_migration_success, 1);
        assert_eq!(valid(&sim), if pmd { 0 } else { 511 }, "the migration cleared the PMD's entries");
    }
}
