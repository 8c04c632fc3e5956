//! GUP on protnone PTEs, PROT_NONE VMAs and secondary-MMU invalidation, driven directly.

use bevy_ecs::entity::Entity;
use sim_core::config::{Config, GupPolicy, MachineConfig, NotifierMode};
use sim_core::kernel::{Faulter, Kernel};
use sim_core::mm::gup::{
    FOLL_FORCE, FOLL_GET, FOLL_HONOR_NUMA_FAULT, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE, Followed, GupError, follow_page,
    get_user_page_fast_only, get_user_pages,
};
use sim_core::mm::memory::{Sigsegv, handle_mm_fault};
use sim_core::mm::mmu_notifier::{SPTE_VALID, SecondaryMmu, SmmuKind, update_stale_gauge};
use sim_core::mm::mprotect::{do_munmap, mprotect_vma};
use sim_core::mm::numa_balancing::change_prot_numa;
use sim_core::mm::{Mm, PTE_PROTNONE, PTE_ZERO, PageIdx};
use sim_core::sim::Sim;
use sim_core::stats::{Counters, Source};

/// 2 nodes, a 1024-page VMA on node 0 whose first page's PTE is protnone, and a notifier
/// secondary MMU over it.
fn setup(policy: GupPolicy, notifier: NotifierMode) -> (Sim, Entity, Entity, PageIdx) {
    let mut config =
        Config { machine: MachineConfig { memory_per_node_mib: 64, ..Default::default() }, ..Default::default() };
    config.kernel.gup_policy = Some(policy);
    config.kernel.notifier = notifier;
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("app");
    let vma = sim.add_vma(mm, "buf", 1024);
    sim.populate(mm, vma, 0);
    let base = sim.vma_base(mm, vma);
    let smmu = sim.add_secondary_mmu("dev", mm, base, 1024, SmmuKind::Notifier);
    sim.world.resource_mut::<sim_core::mm::Pages>().pte_mut(base).flags |= PTE_PROTNONE;
    (sim, mm, smmu, base)
}

/// A device worker on node 1 (no mm).
fn worker() -> Faulter<'static> {
    Faulter { cpu: 4, nid: 1, pid: 99, task: None, source: Source::Device, now: 0, runtime: 0 }
}

fn gup(sim: &mut Sim, mm: Entity, page: PageIdx, flags: u32) -> (Result<u64, GupError>, Counters, bool, u8) {
    sim.with_kernel(|k: &mut Kernel| {
        let r = get_user_pages(k, mm, page, flags, &mut worker());
        (r, k.counters.clone(), k.pages.protnone(page), k.pages.pte(page).nid)
    })
}

#[test]
fn a_read_gup_follows_protnone_only_under_the_explicit_policy() {
    for (policy, faults) in [
        (GupPolicy::Implicit, true),
        (GupPolicy::ImplicitAll, true),
        (GupPolicy::ImplicitForce, true),
        (GupPolicy::Explicit, false),
    ] {
        let (mut sim, mm, _, page) = setup(policy, NotifierMode::Unconditional);
        let (r, c, protnone, nid) = gup(&mut sim, mm, page, FOLL_GET);
        assert!(r.is_ok());
        assert_eq!(c.hint_faults_by_source.device, u64::from(faults), "{policy:?}");
        assert_eq!(protnone, !faults, "{policy:?}: the fault restores the PTE");
        // The worker runs on node 1: the hinting fault pulls the page there.
        assert_eq!(nid, if faults { 1 } else { 0 }, "{policy:?}");
    }
}

#[test]
fn a_write_gup_always_takes_the_hinting_fault() {
    for policy in GupPolicy::ALL {
        let (mut sim, mm, _, page) = setup(policy, NotifierMode::Unconditional);
        let (r, c, protnone, _) = gup(&mut sim, mm, page, FOLL_GET | FOLL_WRITE);
        assert!(r.is_ok());
        assert_eq!(c.hint_faults_by_source.device, 1, "{policy:?}");
        assert!(!protnone);
    }
}

#[test]
fn kvm_style_callers_fault_in_every_era_and_force_only_in_v6_5() {
    for policy in GupPolicy::ALL {
        let (mut sim, mm, _, page) = setup(policy, NotifierMode::Unconditional);
        let (_, c, _, _) = gup(&mut sim, mm, page, FOLL_GET | FOLL_HONOR_NUMA_FAULT);
        assert_eq!(c.vmstat.numa_hint_faults, 1, "{policy:?}");
        let (mut sim, mm, _, page) = setup(policy, NotifierMode::Unconditional);
        let (_, c, _, _) = gup(&mut sim, mm, page, FOLL_GET | FOLL_FORCE);
        // v6.5's is_valid_gup_args() set FOLL_HONOR_NUMA_FAULT "independent of FOLL_FORCE".
        let faults = u64::from(policy == GupPolicy::ImplicitForce);
        assert_eq!(c.vmstat.numa_hint_faults, faults, "{policy:?}: FOLL_FORCE");
    }
}

#[test]
fn a_prot_none_vma_never_takes_a_hinting_fault() {
    let (mut sim, mm, _, page) = setup(GupPolicy::Implicit, NotifierMode::Unconditional);
    sim.with_kernel(|k| mprotect_vma(k, mm, 0, false));
    let (r, c, _, _) = gup(&mut sim, mm, page, FOLL_GET);
    assert_eq!(r, Err(GupError::Fault), "check_vma_flags() refuses without FOLL_FORCE");
    let (r, c2, _, _) = gup(&mut sim, mm, page, FOLL_GET | FOLL_FORCE);
    assert!(r.is_ok(), "FOLL_FORCE follows the PROT_NONE PTE");
    assert_eq!(c.vmstat.numa_hint_faults + c2.vmstat.numa_hint_faults, 0);
}

/// do_anonymous_page() (mm/memory.c, 6.1.192 and 6.12.118) builds a first touch's PTE from
/// `vma->vm_page_prot`: in a PROT_NONE VMA a FOLL_FORCE read (/proc/PID/mem) maps the zero
/// page protnone, a FOLL_FORCE write a protnone page; a CPU still gets SIGSEGV there, and
/// mprotect() back to read/write makes both accessible.
#[test]
fn a_forced_first_touch_in_a_prot_none_vma_maps_a_protnone_pte() {
    for policy in GupPolicy::ALL {
        let (mut sim, mm, _, _) = setup(policy, NotifierMode::Unconditional);
        let vma = sim.add_vma(mm, "late", 16);
        let read = sim.vma_base(mm, vma);
        let written = read + 1;
        sim.with_kernel(|k| mprotect_vma(k, mm, vma, false));
        assert!(gup(&mut sim, mm, read, FOLL_GET | FOLL_FORCE).0.is_ok(), "{policy:?}");
        assert!(gup(&mut sim, mm, written, FOLL_GET | FOLL_FORCE | FOLL_WRITE).0.is_ok(), "{policy:?}");
        sim.with_kernel(|k| {
            assert_eq!(k.pages.pte(read).flags & (PTE_ZERO | PTE_PROTNONE), PTE_ZERO | PTE_PROTNONE, "{policy:?}");
            assert!(k.pages.present(written) && k.pages.protnone(written), "{policy:?}");
            let mut cpu = Faulter { cpu: 0, nid: 0, pid: 7, task: None, source: Source::Cpu, now: 0, runtime: 0 };
            assert_eq!(handle_mm_fault(k, mm, read, false, &mut cpu), Err(Sigsegv), "{policy:?}");
            mprotect_vma(k, mm, vma, true);
            assert!(!k.pages.protnone(read) && !k.pages.protnone(written), "{policy:?}");
            assert_eq!(k.counters.vmstat.numa_hint_faults, 0, "{policy:?}");
        });
    }
}

#[test]
fn gup_fast_bails_on_protnone_and_missing_ptes() {
    let (mut sim, mm, _, page) = setup(GupPolicy::Explicit, NotifierMode::Unconditional);
    sim.with_kernel(|k| {
        assert!(!get_user_page_fast_only(k, mm, page, false), "protnone");
        assert!(get_user_page_fast_only(k, mm, page + 1, false));
    });
    let mut config = Config::default();
    config.machine.memory_per_node_mib = 8;
    let mut sim2 = Sim::new(&config);
    let mm2 = sim2.add_process("p");
    sim2.add_vma(mm2, "v", 4);
    sim2.with_kernel(|k| assert!(!get_user_page_fast_only(k, mm2, 0, false), "not present"));
    // Slow GUP faults a missing page in: a read maps the shared zero page (do_anonymous_page()
    // in 6.12.117: "Use the zero-page for reads"), a write a fresh page on the caller's node.
    let (r, _, _, nid) = gup(&mut sim2, mm2, 1, FOLL_GET);
    assert!(r.is_ok());
    assert_eq!(nid, sim_core::mm::ZERO_PAGE_NID);
    let (r, _, _, nid) = gup(&mut sim2, mm2, 2, FOLL_GET | FOLL_WRITE);
    assert!(r.is_ok());
    assert_eq!(nid, 1);
    sim2.with_kernel(|k| {
        assert_eq!(k.mm(mm2).rss, 1, "the zero page is not resident memory");
        // The first write through the zero-page PTE copies it (do_wp_page()).
        let r = get_user_pages(k, mm2, 1, FOLL_GET | FOLL_WRITE, &mut worker());
        assert!(r.is_ok());
        assert_eq!(k.pages.pte(1).nid, 1);
        assert_eq!(k.mm(mm2).rss, 2);
    });
}

#[test]
fn pins_count_and_follow_page_fails_on_protnone_only_in_implicit_all() {
    let (mut sim, mm, _, page) = setup(GupPolicy::Explicit, NotifierMode::Unconditional);
    gup(&mut sim, mm, page, FOLL_PIN | FOLL_LONGTERM).0.unwrap();
    assert_eq!(sim.world.resource::<sim_core::mm::Pages>().pins(page), 1);
    for (policy, want) in [
        (GupPolicy::Implicit, Followed::Page),
        (GupPolicy::ImplicitAll, Followed::Protnone),
        (GupPolicy::Explicit, Followed::Page),
    ] {
        let (mut sim, _, _, page) = setup(policy, NotifierMode::Unconditional);
        sim.with_kernel(|k| assert_eq!(follow_page(k, page, true), want, "{policy:?}"));
    }
}

fn map_all(sim: &mut Sim, smmu: Entity, base: PageIdx) {
    sim.with_kernel(|k| {
        let Kernel { smmus, pages, .. } = k;
        let mut s = smmus.get_mut(smmu).unwrap();
        for p in base..base + 1024 {
            s.map(p, pages, false);
        }
    });
}

fn valid(sim: &Sim, smmu: Entity) -> usize {
    sim.world.get::<SecondaryMmu>(smmu).unwrap().entries().iter().filter(|&&e| e & SPTE_VALID != 0).count()
}

#[test]
fn a_smart_notifier_skips_unchanged_ptes_and_leaves_stale_entries() {
    for (mode, stale) in [(NotifierMode::Unconditional, 0), (NotifierMode::Smart, 1)] {
        let (mut sim, mm, smmu, base) = setup(GupPolicy::Explicit, mode);
        map_all(&mut sim, smmu, base);
        // The first page is protnone already: mprotect(PROT_NONE) does not change its PTE.
        sim.with_kernel(|k| {
            mprotect_vma(k, mm, 0, false);
            update_stale_gauge(k);
        });
        assert_eq!(valid(&sim, smmu), stale, "{mode:?}");
        assert_eq!(sim.world.resource::<Counters>().stale_mappings, stale as u64, "{mode:?}");
        // Back to read/write: the PTE changes, every notifier drops the entry.
        sim.with_kernel(|k| {
            mprotect_vma(k, mm, 0, true);
            update_stale_gauge(k);
        });
        assert_eq!(valid(&sim, smmu), 0, "{mode:?}");
        assert_eq!(sim.world.resource::<Counters>().stale_mappings, 0);
    }
}

#[test]
fn the_numa_scanner_notifies_the_walked_range() {
    for (mode, left) in [(NotifierMode::Unconditional, 0), (NotifierMode::Smart, 1)] {
        let (mut sim, mm, smmu, base) = setup(GupPolicy::Explicit, mode);
        map_all(&mut sim, smmu, base);
        sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 2;
        let vma = sim.world.get::<Mm>(mm).unwrap().vmas[0].clone();
        let updated = sim.with_kernel(|k| change_prot_numa(k, mm, &vma, vma.start, vma.end(), None)).pte_updates;
        assert_eq!(updated, 1023, "the protnone page is skipped");
        // Smart: only the already-protnone page keeps its (not stale) entry.
        assert_eq!(valid(&sim, smmu), left, "{mode:?}");
    }
}

#[test]
fn munmap_invalidates_even_a_smart_notifier() {
    let (mut sim, mm, smmu, base) = setup(GupPolicy::Explicit, NotifierMode::Smart);
    map_all(&mut sim, smmu, base);
    sim.with_kernel(|k| {
        do_munmap(k, mm, 0);
        update_stale_gauge(k);
        let node0 = k.pgdat(0);
        assert_eq!(node0.free_pages, node0.present_pages, "the frames are freed");
    });
    assert_eq!(valid(&sim, smmu), 0);
    assert_eq!(sim.world.resource::<Counters>().stale.mappings_max, 0);
}
