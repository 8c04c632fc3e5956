//! get_user_pages() and friends (mm/gup.c) and the rule for protnone PTEs
//! (`gup_can_follow_protnone()` in include/linux/mm.h), under each `kernel.gup_policy`.

use bevy_ecs::entity::Entity;

use super::memory::handle_pte_fault;
use super::{PG_KSM, PTE_PROTNONE, PageIdx};
use crate::config::GupPolicy;
use crate::engine::Nanos;
use crate::kernel::{Faulter, Kernel};
use crate::trace::Event;
use crate::trace::events::GupResult;
use crate::trace_event;

/// GUP flags, with the kernel's values (enum in include/linux/mm_types.h).
pub const FOLL_WRITE: u32 = 1 << 0;
pub const FOLL_GET: u32 = 1 << 1;
pub const FOLL_FORCE: u32 = 1 << 3;
pub const FOLL_LONGTERM: u32 = 1 << 8;
pub const FOLL_HONOR_NUMA_FAULT: u32 = 1 << 12;
/// Internal flag set by pin_user_pages() (FOLL_PIN in mm/internal.h).
pub const FOLL_PIN: u32 = 1 << 13;

/// Why GUP failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupError {
    /// -EFAULT: the VMA is gone, or PROT_NONE without FOLL_FORCE (check_vma_flags()).
    Fault,
}

/// The flags slow GUP works with, by era: before patch 4 of the FOLL_HONOR_NUMA_FAULT
/// series (and with FOLL_NUMA before v6.2) every GUP caller without FOLL_FORCE honors NUMA
/// hinting faults (`is_valid_gup_args()` / `__get_user_pages()` set the flag); after it
/// only callers that pass FOLL_HONOR_NUMA_FAULT do.
pub fn gup_effective_flags(policy: GupPolicy, flags: u32) -> u32 {
    match policy {
        GupPolicy::Implicit | GupPolicy::ImplicitAll if flags & FOLL_FORCE == 0 => flags | FOLL_HONOR_NUMA_FAULT,
        GupPolicy::Implicit | GupPolicy::ImplicitAll => flags & !FOLL_HONOR_NUMA_FAULT,
        GupPolicy::Explicit => flags,
    }
}

/// Models gup_can_follow_protnone(): without FOLL_HONOR_NUMA_FAULT a protnone PTE is
/// followed; with it, only in an inaccessible (PROT_NONE) VMA, where a hinting fault makes
/// no sense and FOLL_FORCE must make progress.
pub fn gup_can_follow_protnone(vma_accessible: bool, flags: u32) -> bool {
    flags & FOLL_HONOR_NUMA_FAULT == 0 || !vma_accessible
}

/// Models follow_page_pte(): can `page` be returned without a fault?
fn follow_page_pte(k: &Kernel, page: PageIdx, vma_accessible: bool, flags: u32) -> bool {
    let i = page as usize;
    if !k.pages.present(page) {
        return false;
    }
    let pte = k.pages.pte[i].flags;
    if pte & PTE_PROTNONE != 0 && !gup_can_follow_protnone(vma_accessible, flags) {
        return false;
    }
    // can_follow_write_pte(): a protnone or KSM (write-protected) PTE is not writable, so a
    // write GUP faults whatever the NUMA flag says.
    flags & FOLL_WRITE == 0 || pte & (PTE_PROTNONE | PG_KSM) == 0 || !vma_accessible
}

/// Models __get_user_pages() for one page of `mm`: find its VMA (check_vma_flags()),
/// follow the PTE, else
/// faultin_page() → handle_mm_fault() and retry. A hinting fault taken here is counted
/// under `f.source` and targets `f`'s node. With FOLL_PIN the page is pinned on return.
/// Returns the CPU time the faults cost.
pub fn get_user_pages(
    k: &mut Kernel,
    mm: Entity,
    page: PageIdx,
    flags: u32,
    f: &mut Faulter,
) -> Result<Nanos, GupError> {
    let flags = gup_effective_flags(k.sysctl.0.gup_policy, flags);
    let protnone = k.pages.protnone(page);
    let result = gup_one_page(k, mm, page, flags, f);
    trace_event!(k, f, gup_event(k, mm, page, flags, protnone, &result));
    result.map(|(cost, _)| cost)
}

/// The loop of __get_user_pages() for one page: returns the fault cost and whether it
/// faulted.
fn gup_one_page(
    k: &mut Kernel,
    mm: Entity,
    page: PageIdx,
    flags: u32,
    f: &mut Faulter,
) -> Result<(Nanos, bool), GupError> {
    let m = k.mms.get(mm).expect("GUP callers hold a live mm");
    let vma = m.vma_of_page(page).ok_or(GupError::Fault)?;
    let accessible = m.vmas[vma].accessible;
    if !accessible && flags & FOLL_FORCE == 0 {
        return Err(GupError::Fault);
    }
    let mut cost = 0;
    // Each pass resolves one reason not to follow; three cover missing + protnone + COW.
    for pass in 0..3 {
        if follow_page_pte(k, page, accessible, flags) {
            let i = page as usize;
            if flags & FOLL_PIN != 0 {
                k.pages.pins[i] = k.pages.pins[i].saturating_add(1);
            }
            return Ok((cost, pass > 0));
        }
        // faultin_page() → handle_mm_fault(), with the VMA check_vma_flags() already did.
        cost += handle_pte_fault(k, mm, vma, page, flags & FOLL_WRITE != 0, f);
    }
    Err(GupError::Fault)
}

/// numasim_gup: what slow GUP decided for one page under the configured policy.
fn gup_event(
    k: &Kernel,
    mm: Entity,
    page: PageIdx,
    flags: u32,
    protnone: bool,
    r: &Result<(Nanos, bool), GupError>,
) -> Event {
    let result = match r {
        Ok((_, false)) => GupResult::Follow,
        Ok((_, true)) => GupResult::Fault,
        Err(GupError::Fault) => GupResult::Efault,
    };
    Event::Gup { addr: k.page_addr(mm, page), flags, policy: k.sysctl.0.gup_policy, protnone, result }
}

/// Models get_user_page_fast_only() (KVM's hva_to_pfn_fast()): a lockless walk that
/// succeeds only on a present PTE that is not protnone (and writable, for a write).
pub fn get_user_page_fast_only(k: &Kernel, page: PageIdx, write: bool) -> bool {
    let pte = k.pages.pte[page as usize].flags;
    k.pages.present(page) && pte & PTE_PROTNONE == 0 && !(write && pte & PG_KSM != 0)
}

/// What follow_page() gave KSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Followed {
    Page,
    /// No page mapped (never touched, or unmapped).
    None,
    /// The PTE is protnone and follow_page() honored NUMA hinting (v6.2 – v6.4).
    Protnone,
}

/// Models follow_page() as ksmd calls it (FOLL_GET, never FOLL_HONOR_NUMA_FAULT). From v6.2
/// until the series, gup_can_follow_protnone() refused every protnone PTE without
/// FOLL_FORCE, so follow_page() failed on them (`implicit-all`); before and after, it follows.
pub fn follow_page(k: &Kernel, page: PageIdx, vma_accessible: bool) -> Followed {
    if !k.pages.present(page) {
        return Followed::None;
    }
    let flags = if k.sysctl.0.gup_policy == GupPolicy::ImplicitAll { FOLL_HONOR_NUMA_FAULT } else { 0 };
    if k.pages.protnone(page) && !gup_can_follow_protnone(vma_accessible, flags) {
        Followed::Protnone
    } else {
        Followed::Page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table() {
        use GupPolicy::*;
        // A read GUP from a device driver (no flag) on a protnone PTE in an accessible VMA.
        let follows = |p| gup_can_follow_protnone(true, gup_effective_flags(p, FOLL_GET));
        assert!(!follows(Implicit));
        assert!(!follows(ImplicitAll));
        assert!(follows(Explicit));
        // KVM passes the flag: it faults in every era.
        let kvm = |p| gup_can_follow_protnone(true, gup_effective_flags(p, FOLL_GET | FOLL_HONOR_NUMA_FAULT));
        assert!(!kvm(Implicit) && !kvm(ImplicitAll) && !kvm(Explicit));
        // FOLL_FORCE (ptrace) never honors.
        let force = |p| gup_can_follow_protnone(true, gup_effective_flags(p, FOLL_FORCE));
        assert!(force(Implicit) && force(ImplicitAll) && force(Explicit));
        // In a PROT_NONE VMA even an honoring caller follows.
        assert!(gup_can_follow_protnone(false, FOLL_HONOR_NUMA_FAULT));
    }
}
