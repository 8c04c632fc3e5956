//! userfaultfd RWP (7.3.4: mm/userfaultfd.c, do_uffd_rwp() and handle_pte_fault() in
//! mm/memory.c, change_pte_range() in mm/mprotect.c, gup_can_follow_protnone() in
//! include/linux/mm.h) against NUMA hinting, driven directly.

use bevy_ecs::entity::Entity;
use sim_core::config::{Config, KernelVersion, MachineConfig};
use sim_core::kernel::Faulter;
use sim_core::mm::gup::{FOLL_FORCE, FOLL_GET, FOLL_HONOR_NUMA_FAULT, FOLL_UNLOCKABLE, GupError, get_user_pages};
use sim_core::mm::memory::handle_mm_fault;
use sim_core::mm::mprotect::mprotect_vma;
use sim_core::mm::numa_balancing::change_prot_numa;
use sim_core::mm::userfaultfd::{RwpMode, mrwprotect_range};
use sim_core::mm::{Mm, PTE_PROTNONE, PTE_UFFD, PageIdx};
use sim_core::sim::Sim;
use sim_core::stats::{Counters, Source};

const LATENCY: u64 = 20_000;
const TRAP: u64 = 1500;

/// 7.3, 2 nodes, a 64-page VMA populated on node 0 and registered for RWP in `mode`, and an
/// unregistered 64-page VMA beside it. Returns the sim, the mm and both VMAs' first pages.
fn setup(mode: RwpMode) -> (Sim, Entity, PageIdx, PageIdx) {
    let mut config =
        Config { machine: MachineConfig { memory_per_node_mib: 64, ..Default::default() }, ..Default::default() };
    config.kernel.version = KernelVersion::V7_3;
    config.kernel.hint_fault_cost_ns = TRAP;
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("vmm");
    let rwp = sim.add_vma(mm, "ram", 64);
    let plain = sim.add_vma(mm, "heap", 64);
    sim.populate(mm, rwp, 0);
    sim.populate(mm, plain, 0);
    let (rwp, plain) = (sim.vma_base(mm, rwp), sim.vma_base(mm, plain));
    sim.register_uffd_rwp(mm, rwp, 64, mode);
    (sim, mm, rwp, plain)
}

fn sync() -> RwpMode {
    RwpMode::Sync { latency: LATENCY }
}

/// A device worker on node 1 (no mm).
fn worker() -> Faulter<'static> {
    Faulter { cpu: 4, nid: 1, pid: 99, task: None, source: Source::Device, now: 0, runtime: 0 }
}

fn cpu() -> Faulter<'static> {
    Faulter { cpu: 4, nid: 1, pid: 7, task: None, source: Source::Cpu, now: 0, runtime: 0 }
}

fn flags(sim: &mut Sim, page: PageIdx) -> u8 {
    sim.with_kernel(|k| k.pages.pte(page).flags) & (PTE_PROTNONE | PTE_UFFD)
}

fn counters(sim: &mut Sim) -> Counters {
    sim.with_kernel(|k| k.counters.clone())
}

/// The NUMA scanner's pass over the first `n` pages of the VMA holding `page`.
fn scan(sim: &mut Sim, mm: Entity, page: PageIdx, n: u64) -> u64 {
    let vma = {
        let m = sim.world.get::<Mm>(mm).unwrap();
        m.vmas[m.vma_of_page(page).unwrap()].clone()
    };
    sim.with_kernel(|k| change_prot_numa(k, mm, &vma, vma.start, vma.start + n, None)).pte_updates
}

/// Arming turns a pending NUMA hint into an RWP marker (change_pte_range() promotes plain
/// PROT_NONE), so the access that follows is an RWP fault and NUMA balancing never sees it.
#[test]
fn arming_turns_a_pending_hint_into_an_rwp_fault() {
    let (mut sim, mm, page, _) = setup(sync());
    assert_eq!(scan(&mut sim, mm, page, 1), 1);
    assert_eq!(flags(&mut sim, page), PTE_PROTNONE, "a pending hint");
    sim.with_kernel(|k| mrwprotect_range(k, mm, page, 4, true));
    assert_eq!(flags(&mut sim, page), PTE_PROTNONE | PTE_UFFD);
    let cost = sim.with_kernel(|k| handle_mm_fault(k, mm, page, false, &mut cpu()).unwrap());
    assert_eq!(cost, TRAP + LATENCY, "the thread waits for the handler");
    let c = counters(&mut sim);
    assert_eq!((c.uffd_rwp.uffd_rwp_hints_lost, c.uffd_rwp.uffd_rwp_faults), (1, 1));
    assert_eq!(c.vmstat.numa_hint_faults, 0, "do_numa_page() never ran");
    assert_eq!(flags(&mut sim, page), 0, "the handler resolved the page");
    assert_eq!(sim.with_kernel(|k| k.pages.pte(page).nid), 0, "and nothing migrated it");
}

/// change_pte_range() with MM_CP_PROT_NUMA leaves protnone PTEs alone: an armed PTE is not
/// counted in numa_pte_updates and keeps its marker. A plain hint in an RWP VMA still goes
/// to do_numa_page().
#[test]
fn the_scanner_skips_armed_ptes_and_hints_beside_them_stay_hints() {
    let (mut sim, mm, page, _) = setup(sync());
    sim.with_kernel(|k| mrwprotect_range(k, mm, page, 2, true));
    assert_eq!(scan(&mut sim, mm, page, 4), 2, "only the two unarmed pages");
    assert_eq!(flags(&mut sim, page), PTE_PROTNONE | PTE_UFFD);
    let hint = page + 2;
    sim.with_kernel(|k| handle_mm_fault(k, mm, hint, false, &mut cpu()).unwrap());
    let c = counters(&mut sim);
    assert_eq!((c.vmstat.numa_hint_faults, c.uffd_rwp.uffd_rwp_faults), (1, 0));
}

/// gup_can_follow_protnone() in 7.3: in an accessible VM_UFFD_RWP VMA a /proc/PID/mem read
/// (FOLL_FORCE, no FOLL_HONOR_NUMA_FAULT) faults on a NUMA hint and takes the hinting
/// fault; in a VMA without RWP the same read follows it (6.12's rule).
#[test]
fn a_proc_mem_read_takes_the_hinting_fault_only_in_an_rwp_vma() {
    let (mut sim, mm, rwp, plain) = setup(sync());
    scan(&mut sim, mm, rwp, 1);
    scan(&mut sim, mm, plain, 1);
    for (page, faults) in [(plain, 0), (rwp, 1)] {
        let r = sim.with_kernel(|k| get_user_pages(k, mm, page, FOLL_GET | FOLL_FORCE, &mut worker()));
        assert!(r.is_ok());
        let c = counters(&mut sim);
        assert_eq!(c.hint_faults_by_source.device, faults, "page {page}");
        assert_eq!(c.uffd_rwp.uffd_rwp_gup_faults, faults, "page {page}");
    }
    // KVM honors hints anyway: its fault is not one the RWP test added.
    let next = rwp + 1;
    scan(&mut sim, mm, next, 2);
    let kvm = FOLL_GET | FOLL_HONOR_NUMA_FAULT | FOLL_UNLOCKABLE;
    sim.with_kernel(|k| get_user_pages(k, mm, next, kvm, &mut worker())).unwrap();
    let c = counters(&mut sim);
    assert_eq!((c.hint_faults_by_source.device, c.uffd_rwp.uffd_rwp_gup_faults), (2, 1));
}

/// handle_userfault() without FAULT_FLAG_ALLOW_RETRY is VM_FAULT_SIGBUS: /proc/PID/mem's
/// get_user_pages_remote(..., NULL) gets -EFAULT and the page stays armed; a caller with
/// FOLL_UNLOCKABLE (process_vm_readv(), KVM) waits for the handler.
#[test]
fn a_sync_rwp_fault_fails_a_gup_that_cannot_wait() {
    let (mut sim, mm, page, _) = setup(sync());
    sim.with_kernel(|k| mrwprotect_range(k, mm, page, 1, true));
    let r = sim.with_kernel(|k| get_user_pages(k, mm, page, FOLL_GET | FOLL_FORCE, &mut worker()));
    assert_eq!(r, Err(GupError::Fault));
    assert_eq!(flags(&mut sim, page), PTE_PROTNONE | PTE_UFFD);
    let r = sim.with_kernel(|k| get_user_pages(k, mm, page, FOLL_GET | FOLL_UNLOCKABLE, &mut worker()));
    assert_eq!(r, Ok(TRAP + LATENCY));
    assert_eq!(flags(&mut sim, page), 0);
    let c = counters(&mut sim);
    assert_eq!((c.uffd_rwp.uffd_rwp_gup_efaults, c.uffd_rwp.uffd_rwp_faults), (1, 1));
    assert_eq!(c.uffd_rwp.uffd_rwp_gup_faults, 0, "an armed PTE is no hint 6.12 would have followed");
}

/// UFFD_FEATURE_RWP_ASYNC: do_uffd_rwp() resolves in the kernel, for GUP callers that cannot
/// wait too, at the cost of a trap.
#[test]
fn an_async_rwp_fault_resolves_without_the_handler() {
    let (mut sim, mm, page, _) = setup(RwpMode::Async);
    sim.with_kernel(|k| mrwprotect_range(k, mm, page, 1, true));
    let r = sim.with_kernel(|k| get_user_pages(k, mm, page, FOLL_GET | FOLL_FORCE, &mut worker()));
    assert_eq!(r, Ok(TRAP));
    assert_eq!(flags(&mut sim, page), 0);
    assert_eq!(counters(&mut sim).uffd_rwp.uffd_rwp_gup_efaults, 0);
}

/// Resolving applies vm_page_prot: armed PTEs and pending hints in the range alike become
/// accessible (the hint is lost); mprotect(PROT_NONE) and back keeps an armed PTE armed
/// (change_present_ptes() restores PAGE_NONE under the marker).
#[test]
fn resolving_clears_hints_and_mprotect_keeps_markers() {
    let (mut sim, mm, page, _) = setup(sync());
    sim.with_kernel(|k| mrwprotect_range(k, mm, page, 1, true));
    scan(&mut sim, mm, page, 2);
    let vma = sim.vma_of_page(mm, page).unwrap();
    sim.with_kernel(|k| {
        mprotect_vma(k, mm, vma, false);
        mprotect_vma(k, mm, vma, true);
    });
    assert_eq!(flags(&mut sim, page), PTE_PROTNONE | PTE_UFFD, "still armed");
    assert_eq!(flags(&mut sim, page + 1), 0, "mprotect() dropped the hint");
    scan(&mut sim, mm, page, 2);
    sim.with_kernel(|k| mrwprotect_range(k, mm, page, 2, false));
    assert_eq!((flags(&mut sim, page), flags(&mut sim, page + 1)), (0, 0));
    assert_eq!(counters(&mut sim).uffd_rwp.uffd_rwp_hints_lost, 1, "the hint the resolve rewrote");
}
