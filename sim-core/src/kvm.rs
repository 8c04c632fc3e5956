//! KVM guests (virt/kvm/kvm_main.c, arch/x86/kvm/mmu): vCPU threads touch guest memory
//! through the EPT/NPT, a secondary MMU kept coherent by an MMU notifier. A missing entry is
//! an EPT violation: kvm_faultin_pfn() → hva_to_pfn() tries GUP-fast, then slow GUP with
//! FOLL_HONOR_NUMA_FAULT (patch 3 of the series), and maps the pfn.
//!
//! A guest write (`vcpus.write_fraction`) needs a writable entry: its EPT violation goes
//! through GUP with FOLL_WRITE, which takes a hinting fault whatever FOLL_HONOR_NUMA_FAULT
//! says. Simplified: a read fault maps the page read-only (KVM would map it writable when
//! the host PTE allows).

use bevy_ecs::prelude::*;

use crate::config::KvmConfig;
use crate::engine::{NSEC_PER_USEC, Nanos};
use crate::kernel::{Faulter, Kernel};
use crate::machine::MAX_NODES;
use crate::mm::PageIdx;
use crate::mm::backing::Backing;
use crate::mm::gup::{
    FOLL_GET, FOLL_HONOR_NUMA_FAULT, FOLL_UNLOCKABLE, FOLL_WRITE, GupError, get_user_page_fast_only, get_user_pages,
};
use crate::mm::memory::shmem_fault;
use crate::mm::mmu_notifier::map_secondary;
use crate::mm::mmu_notifier::{SPTE_VALID, SPTE_WRITABLE, touch_secondary, touch_secondary_if};
use crate::sched::{Task, TaskNuma, Touch};
use crate::stats::Source;

/// KVM's knobs (`[kvm]`).
#[derive(Resource, Debug, Clone, Default)]
pub struct Kvm(pub KvmConfig);

/// Runs one quantum of vCPU `task`: guest touches through `ept`, EPT violations resolved
/// inline. Returns the time spent. A vCPU whose guest memory cannot be faulted in (PROT_NONE
/// or unmapped) exits to user space; it idles for the rest of the quantum.
pub fn run_vcpu_quantum(k: &mut Kernel, task: &mut Task, numa: &mut TaskNuma, cpu: u32, ept: Entity) -> Nanos {
    let quantum = k.sysctl.0.quantum_us * NSEC_PER_USEC;
    let nid = k.topo.cpu_to_node(cpu);
    let ept_cost = k.kvm.0.ept_violation_cost_ns;
    let cost = k.topo.touch_costs(nid, task.touch_lines, task.think_ns);
    let (mut elapsed, mut touches, mut local) = (0, 0, 0);
    while elapsed < quantum {
        let Touch { offset, write, ahead } = task.access.next_touch();
        let page = task.base + offset;
        let need = SPTE_VALID | if write { SPTE_WRITABLE } else { 0 };
        let frame_nid = match touch_secondary_if(k, ept, page, need, Some(task.base + ahead)) {
            Some(nid) => nid,
            None => {
                let mut f = Faulter::user(k, task, numa, cpu, Source::Kvm, elapsed);
                elapsed += ept_cost;
                match kvm_faultin_pfn(k, ept, task.mm, page, write, &mut f) {
                    Ok(cost) => elapsed += cost,
                    Err(GupError::Fault) => return quantum.max(elapsed),
                }
                touch_secondary(k, ept, page)
            }
        };
        elapsed += cost[frame_nid as usize % MAX_NODES];
        touches += 1;
        local += u64::from(frame_nid == nid);
    }
    k.counters.touch(Source::Kvm, touches, local);
    elapsed
}

/// Models kvm_faultin_pfn() → hva_to_pfn(): GUP-fast first, then slow GUP with
/// FOLL_HONOR_NUMA_FAULT when KVM sets it (`kvm.honor_numa_fault`) and FOLL_WRITE for a
/// write fault, then map the pfn (writable for a write fault).
fn kvm_faultin_pfn(
    k: &mut Kernel,
    ept: Entity,
    mm: Entity,
    page: PageIdx,
    write: bool,
    f: &mut Faulter,
) -> Result<Nanos, GupError> {
    let mut cost = 0;
    let m = k.mms.get(mm).expect("vCPUs have a live mm");
    if let Some(vma) = m.vma_of_page(page).filter(|&v| m.vmas[v].backing == Backing::GuestMemfd) {
        return Ok(kvm_gmem_get_pfn(k, ept, mm, vma, page, write, f));
    }
    if !get_user_page_fast_only(k, mm, page, write) {
        let honor = if k.kvm.0.honor_numa_fault { FOLL_HONOR_NUMA_FAULT } else { 0 };
        let write_flag = if write { FOLL_WRITE } else { 0 };
        // hva_to_pfn_slow() → get_user_pages_unlocked(): FOLL_UNLOCKABLE.
        cost += get_user_pages(k, mm, page, FOLL_GET | FOLL_UNLOCKABLE | honor | write_flag, f)?;
    }
    // A THP on the host is mapped into the EPT at 2 MiB (kvm_mmu_max_mapping_level() sees
    // the huge host PMD); a 4 KiB host page at 4 KiB.
    map_secondary(k, ept, mm, page, write, true);
    Ok(cost)
}

/// Models kvm_gmem_get_pfn() (virt/kvm/guest_memfd.c, 7.3.4) for a memslot backed by
/// guest_memfd: no GUP and no host PTE, so no hinting fault; a page not yet in the file is
/// allocated by the file's policy or on the vCPU's node (kvm_gmem_get_folio() with
/// mpol_shared_policy_lookup()), GFP_HIGHUSER, so never migrated. Mapped at 4 KiB.
fn kvm_gmem_get_pfn(
    k: &mut Kernel,
    ept: Entity,
    mm: Entity,
    vma: usize,
    page: PageIdx,
    write: bool,
    f: &Faulter,
) -> Nanos {
    let mut cost = 0;
    if !k.pages.present(page) {
        shmem_fault(k, mm, vma, page, f.nid);
        cost = k.sysctl.0.hint_fault_cost_ns;
    }
    map_secondary(k, ept, mm, page, write, false);
    cost
}
