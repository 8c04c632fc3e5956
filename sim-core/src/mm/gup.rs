//! get_user_pages() and friends (mm/gup.c) and the rule for protnone PTEs
//! (`gup_can_follow_protnone()` in include/linux/mm.h), in each GUP era (`version.rs`), with
//! 7.3's userfaultfd RWP test on top.

use bevy_ecs::entity::Entity;

use super::backing::{protnone_at, pte_flags_in};
use super::memory::handle_pte_fault;
use super::userfaultfd::userfault_sigbus;
use super::{PTE_COW, PTE_PROTNONE, PTE_UFFD, PageIdx};
use crate::config::GupPolicy;
#[cfg(test)]
use crate::config::KernelVersion;
use crate::engine::Nanos;
use crate::kernel::{Faulter, Kernel};
use crate::trace::Event;
use crate::trace::events::GupResult;
use crate::trace_event;
use crate::version::Rules;

/// GUP flags, with 6.12's values (the enum in include/linux/mm_types.h; 6.1 numbered them
/// differently, e.g. FOLL_PIN 0x40000). Only numasim's own `numasim_gup` trace shows them, by
/// name.
pub const FOLL_WRITE: u32 = 1 << 0;
pub const FOLL_GET: u32 = 1 << 1;
pub const FOLL_FORCE: u32 = 1 << 3;
pub const FOLL_LONGTERM: u32 = 1 << 8;
pub const FOLL_HONOR_NUMA_FAULT: u32 = 1 << 12;
/// Internal flag set by pin_user_pages() (the second FOLL_* enum, in mm/internal.h).
pub const FOLL_PIN: u32 = 1 << 19;
/// Internal flag: the caller let GUP drop mmap_lock (a non-NULL `locked`, or
/// get_user_pages_unlocked()), so faultin_page() passes FAULT_FLAG_ALLOW_RETRY and a
/// userfault may wait for its handler (mm/internal.h, 6.12.118 and 7.3.4).
pub const FOLL_UNLOCKABLE: u32 = 1 << 21;

/// Why GUP failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupError {
    /// -EFAULT: the VMA is gone, or PROT_NONE without FOLL_FORCE (check_vma_flags()).
    Fault,
}

/// The flags slow GUP works with, by era: `__get_user_pages()` sets FOLL_NUMA unless
/// FOLL_FORCE (≤ v6.1, and v6.2–v6.4 where gup_can_follow_protnone() tests FOLL_FORCE alone);
/// v6.5's is_valid_gup_args() sets FOLL_HONOR_NUMA_FAULT for every external caller,
/// "independent of FOLL_FORCE"; from v6.6 only callers that pass the flag honor.
pub fn gup_effective_flags(era: GupPolicy, flags: u32) -> u32 {
    match era {
        GupPolicy::Implicit | GupPolicy::ImplicitAll if flags & FOLL_FORCE == 0 => flags | FOLL_HONOR_NUMA_FAULT,
        GupPolicy::Implicit | GupPolicy::ImplicitAll => flags & !FOLL_HONOR_NUMA_FAULT,
        GupPolicy::ImplicitForce => flags | FOLL_HONOR_NUMA_FAULT,
        GupPolicy::Explicit => flags,
    }
}

/// Models gup_can_follow_protnone(). v6.2–v6.4 (include/linux/mm.h of 6.1.192 too):
/// `return flags & FOLL_FORCE;`, with no VMA test. Before and after: without
/// FOLL_HONOR_NUMA_FAULT (FOLL_NUMA) a protnone PTE is followed; with it, only in an
/// inaccessible (PROT_NONE) VMA, where a hinting fault makes no sense and FOLL_FORCE must
/// make progress. 7.3 first asks whether the VMA is accessible and VM_UFFD_RWP
/// (`vma_uffd_rwp`, false on releases without RWP): then never, whatever the flags, so every
/// slow-GUP caller faults there as under v6.5's rule, per VMA.
pub fn gup_can_follow_protnone(era: GupPolicy, vma_accessible: bool, vma_uffd_rwp: bool, flags: u32) -> bool {
    if vma_uffd_rwp && vma_accessible {
        return false;
    }
    match era {
        GupPolicy::ImplicitAll => flags & FOLL_FORCE != 0,
        _ => flags & FOLL_HONOR_NUMA_FAULT == 0 || !vma_accessible,
    }
}

/// Models can_follow_write_pte() for an anonymous private page: a protnone or KSM
/// (write-protected) PTE is not writable, so a write GUP faults — except that up to v6.1 a
/// protnone PTE of a writable page kept its write bit (savedwrite), which pte_write() sees.
/// The zero page is mapped read-only like a KSM page.
/// Simplified: every frame-backed, non-KSM page counts as written (populated by a memset,
/// or faulted in by the write that allocated it).
fn can_follow_write_pte(rules: &Rules, pte: u8, vma_accessible: bool) -> bool {
    if !vma_accessible || pte & (PTE_PROTNONE | PTE_COW) == 0 {
        return true;
    }
    rules.savedwrite && pte & PTE_COW == 0
}

/// Models follow_page_pte(): can `page` be returned without a fault? `mm`'s own PTE is
/// the one followed.
fn follow_page_pte(k: &Kernel, mm: Entity, page: PageIdx, vma: VmaTest, flags: u32) -> bool {
    if !k.pages.present(page) {
        return false;
    }
    let pte = pte_flags_in(k, mm, vma.memfd, page);
    if pte & PTE_PROTNONE != 0 && !gup_can_follow_protnone(k.rules.gup, vma.accessible, vma.uffd_rwp, flags) {
        return false;
    }
    flags & FOLL_WRITE == 0 || can_follow_write_pte(&k.rules, pte, vma.accessible)
}

/// What GUP's checks read of a VMA: vma_is_accessible(), and VM_UFFD_RWP on a release that
/// has RWP.
#[derive(Clone, Copy)]
struct VmaTest {
    accessible: bool,
    uffd_rwp: bool,
    /// The memfd the VMA maps, whose mappers each have their own PTEs.
    memfd: Option<u32>,
}

/// Counts a GUP call that faults on a NUMA hint (a protnone PTE without the uffd marker)
/// only because of the VM_UFFD_RWP test: 6.12's rule would have followed it.
fn count_rwp_gup_fault(k: &mut Kernel, mm: Entity, page: PageIdx, vma: VmaTest, flags: u32) {
    if vma.uffd_rwp
        && k.pages.pte(page).flags & PTE_UFFD == 0
        && follow_page_pte(k, mm, page, VmaTest { uffd_rwp: false, ..vma }, flags)
    {
        k.counters.uffd_rwp.uffd_rwp_gup_faults += 1;
    }
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
    let flags = gup_effective_flags(k.rules.gup, flags);
    let protnone = protnone_at(k, mm, page);
    let result = gup_one_page(k, mm, page, flags, f);
    trace_event!(k, f, gup_event(k, mm, page, flags, protnone, &result));
    result.map(|(cost, _)| cost)
}

/// numasim_gup: what slow GUP decided for one page in the kernel's GUP era.
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
    Event::Gup { addr: k.page_addr(mm, page), flags, policy: k.rules.gup, protnone, result }
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
    let v = &m.vmas[vma];
    let test = VmaTest { accessible: v.accessible, uffd_rwp: k.rules.uffd_rwp && v.uffd_rwp.is_some(), memfd: v.memfd };
    if !test.accessible && flags & FOLL_FORCE == 0 {
        return Err(GupError::Fault);
    }
    let mut cost = 0;
    // Each pass resolves one reason not to follow; three cover missing + protnone + COW.
    for pass in 0..3 {
        if follow_page_pte(k, mm, page, test, flags) {
            if flags & FOLL_PIN != 0 {
                // Pins are counted per subpage: a pinned THP keeps a slot per page.
                let pins = k.pages.pins_mut(page);
                *pins = pins.saturating_add(1);
            }
            return Ok((cost, pass > 0));
        }
        if pass == 0 {
            count_rwp_gup_fault(k, mm, page, test, flags);
        }
        let m = k.mms.get(mm).expect("GUP callers hold a live mm");
        if test.accessible && userfault_sigbus(&m.vmas[vma], k.pages.pte(page).flags, flags & FOLL_UNLOCKABLE != 0) {
            k.counters.uffd_rwp.uffd_rwp_gup_efaults += 1;
            return Err(GupError::Fault);
        }
        // faultin_page() → handle_mm_fault(), with the VMA check_vma_flags() already did.
        cost += handle_pte_fault(k, mm, vma, page, flags & FOLL_WRITE != 0, f);
    }
    Err(GupError::Fault)
}

/// Models get_user_page_fast_only() (KVM's hva_to_pfn_fast()): a lockless walk of `mm`'s
/// page table that succeeds only on a present PTE that is not protnone (and writable, for a
/// write).
pub fn get_user_page_fast_only(k: &Kernel, mm: Entity, page: PageIdx, write: bool) -> bool {
    let pte = k.pages.pte(page).flags;
    k.pages.present(page) && !protnone_at(k, mm, page) && !(write && pte & PTE_COW != 0)
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

/// Models follow_page() as ksmd calls it (FOLL_GET: no FOLL_FORCE, and follow_page() never
/// sets FOLL_HONOR_NUMA_FAULT). Only v6.2–v6.4's gup_can_follow_protnone() refuses its
/// protnone PTEs, in accessible and PROT_NONE VMAs alike. Mergeable VMAs are never
/// RWP-registered here (config validation).
pub fn follow_page(k: &Kernel, page: PageIdx, vma_accessible: bool) -> Followed {
    if !k.pages.present(page) {
        return Followed::None;
    }
    if k.pages.protnone(page) && !gup_can_follow_protnone(k.rules.gup, vma_accessible, false, FOLL_GET) {
        Followed::Protnone
    } else {
        Followed::Page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::PG_KSM;

    /// The truth table of docs/MODEL.md ("GUP eras"), rows by caller, columns by era: does a
    /// protnone PTE in an accessible VMA get followed without a hinting fault?
    #[test]
    fn the_era_table() {
        use GupPolicy::*;
        let follows = |era, flags| gup_can_follow_protnone(era, true, false, gup_effective_flags(era, flags));
        let row = |flags| GupPolicy::ALL.map(|era| follows(era, flags));
        // [≤ v6.1, v6.2–v6.4, v6.5, v6.6+]
        assert_eq!(row(FOLL_GET), [false, false, false, true], "slow GUP read");
        assert_eq!(row(FOLL_GET | FOLL_FORCE), [true, true, false, true], "slow GUP read, FOLL_FORCE");
        assert_eq!(row(FOLL_GET | FOLL_HONOR_NUMA_FAULT), [false; 4], "KVM's hva_to_pfn_slow()");
        // follow_page() passes neither FOLL_FORCE nor the flag, and skips is_valid_gup_args().
        let follow_page = GupPolicy::ALL.map(|era| gup_can_follow_protnone(era, true, false, FOLL_GET));
        assert_eq!(follow_page, [true, false, true, true], "follow_page(), accessible VMA");
        let follow_page = GupPolicy::ALL.map(|era| gup_can_follow_protnone(era, false, false, FOLL_GET));
        assert_eq!(follow_page, [true, false, true, true], "follow_page(), PROT_NONE VMA");
        // A PROT_NONE VMA with FOLL_FORCE (ptrace) follows in every era.
        for era in [Implicit, ImplicitAll, ImplicitForce, Explicit] {
            assert!(gup_can_follow_protnone(era, false, false, gup_effective_flags(era, FOLL_FORCE)), "{era:?}");
        }
    }

    /// 7.3's VM_UFFD_RWP test, per release: in an accessible RWP VMA every caller's protnone
    /// PTE faults, /proc/PID/mem (FOLL_FORCE) and process_vm_readv() included, where 6.12's
    /// rule follows them; KVM (FOLL_HONOR_NUMA_FAULT) faults under both. A PROT_NONE RWP VMA
    /// falls through to the era's rule, so FOLL_FORCE still makes progress there.
    #[test]
    fn the_rwp_test_per_release() {
        let callers = [
            ("/proc/PID/mem", FOLL_GET | FOLL_FORCE),
            ("process_vm_readv()", FOLL_GET | FOLL_UNLOCKABLE),
            ("KVM", FOLL_GET | FOLL_HONOR_NUMA_FAULT | FOLL_UNLOCKABLE),
        ];
        for v in [KernelVersion::V6_12, KernelVersion::V7_2, KernelVersion::V7_3] {
            let rules = Rules::of(v, None);
            for (caller, flags) in callers {
                let flags = gup_effective_flags(rules.gup, flags);
                let follows = gup_can_follow_protnone(rules.gup, true, rules.uffd_rwp, flags);
                let want = !rules.uffd_rwp && flags & FOLL_HONOR_NUMA_FAULT == 0;
                assert_eq!(follows, want, "{v}, {caller}, accessible RWP VMA");
                let prot_none = gup_can_follow_protnone(rules.gup, false, rules.uffd_rwp, flags | FOLL_FORCE);
                assert!(prot_none, "{v}, {caller}, PROT_NONE RWP VMA");
            }
        }
        assert!(!gup_can_follow_protnone(GupPolicy::Explicit, true, true, FOLL_GET | FOLL_FORCE));
        assert!(gup_can_follow_protnone(GupPolicy::Explicit, true, false, FOLL_GET | FOLL_FORCE));
    }

    /// The values of include/linux/mm_types.h and mm/internal.h in 6.12.118: FOLL_PIN sits
    /// after FOLL_TOUCH (1 << 16), FOLL_TRIED and FOLL_REMOTE, not beside the public flags.
    #[test]
    fn flags_have_6_12_values() {
        let flags = [FOLL_WRITE, FOLL_GET, FOLL_FORCE, FOLL_LONGTERM, FOLL_HONOR_NUMA_FAULT, FOLL_PIN, FOLL_UNLOCKABLE];
        assert_eq!(flags, [1, 2, 8, 0x100, 0x1000, 0x8_0000, 0x20_0000]);
    }

    #[test]
    fn savedwrite_lets_a_forced_write_follow_a_protnone_pte() {
        let rules = |v| Rules::of(v, None);
        let protnone = PTE_PROTNONE;
        assert!(can_follow_write_pte(&rules(KernelVersion::V6_1Debian12), protnone, true));
        assert!(!can_follow_write_pte(&rules(KernelVersion::V6_12), protnone, true));
        // A KSM page is write-protected for real: no saved write bit.
        assert!(!can_follow_write_pte(&rules(KernelVersion::V6_1), protnone | PG_KSM, true));
    }
}
