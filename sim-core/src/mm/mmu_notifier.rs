//! Secondary MMUs and MMU notifiers (mm/mmu_notifier.c, include/linux/mmu_notifier.h).
//!
//! A secondary MMU mirrors part of a process's page table: KVM's EPT/NPT, or a device's
//! IOMMU page table. Notifier-based users (KVM, ODP/accelerator drivers) are told about
//! changes through invalidate_range_start/end and answer clear_young/test_young; long-term
//! pinning users (VFIO, RDMA without ODP) hold their pages instead and are not notified.

use bevy_ecs::prelude::*;

use super::{PageIdx, Pages};
use crate::config::NotifierMode;
use crate::engine::prefetch;
use crate::kernel::Kernel;
use crate::machine::Nid;
use crate::trace::Event;
use crate::trace_event;

/// Secondary PTE bits: valid, writable, accessed. The frame (node and generation of the
/// page when it was mapped) sits above them.
pub const SPTE_VALID: u32 = 1 << 0;
pub const SPTE_WRITABLE: u32 = 1 << 1;
pub const SPTE_YOUNG: u32 = 1 << 2;
const SPTE_NID_SHIFT: u32 = 8;
const SPTE_GEN_SHIFT: u32 = 16;

/// Why the primary mapping changed (`enum mmu_notifier_event` in include/linux/mmu_notifier.h),
/// for the events numasim raises: munmap() (MMU_NOTIFY_UNMAP), migration, KSM and COW
/// (try_to_migrate_one(), replace_page(), wp_page_copy(): MMU_NOTIFY_CLEAR), and
/// change_protection() (MMU_NOTIFY_PROTECTION_VMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuNotifyEvent {
    Unmap,
    Clear,
    ProtectionVma,
}

impl MmuNotifyEvent {
    pub fn name(self) -> &'static str {
        match self {
            MmuNotifyEvent::Unmap => "MMU_NOTIFY_UNMAP",
            MmuNotifyEvent::Clear => "MMU_NOTIFY_CLEAR",
            MmuNotifyEvent::ProtectionVma => "MMU_NOTIFY_PROTECTION_VMA",
        }
    }
}

/// How a secondary MMU stays coherent with the primary page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmmuKind {
    /// Registered MMU notifier: invalidations zap entries, which refault later.
    Notifier,
    /// Long-term pins: no notifier; the pinned pages cannot move, so entries stay right.
    LongtermPin,
}

/// One secondary MMU over a range of a process's memory.
#[derive(Component, Debug)]
pub struct SecondaryMmu {
    pub name: String,
    pub mm: Entity,
    /// Global index of the first page covered; `entries` has one slot per page.
    pub base: PageIdx,
    pub entries: Vec<u32>,
    pub kind: SmmuKind,
}

impl SecondaryMmu {
    pub fn new(name: &str, mm: Entity, base: PageIdx, len: u64, kind: SmmuKind) -> Self {
        Self { name: name.to_string(), mm, base, entries: vec![0; len as usize], kind }
    }

    /// Index of `page` in the table, if covered.
    #[inline]
    pub fn slot(&self, page: PageIdx) -> Option<usize> {
        let i = page.checked_sub(self.base)? as usize;
        (i < self.entries.len()).then_some(i)
    }

    /// The entry for `page` (0, invalid, outside the range).
    #[inline]
    pub fn entry(&self, page: PageIdx) -> u32 {
        self.slot(page).map_or(0, |i| self.entries[i])
    }

    /// Starts loading what a touch of `page` through this table reads: its entry, and the
    /// page's PTE and frame generation that tell whether the entry is stale.
    #[inline]
    pub fn prefetch(&self, page: PageIdx, pages: &Pages) {
        if let Some(i) = self.slot(page) {
            prefetch(&self.entries, i);
            prefetch(&pages.pte, page as usize);
            prefetch(&pages.frame_gen, page as usize);
        }
    }

    /// Maps `page` to the frame it has now.
    pub fn map(&mut self, page: PageIdx, pages: &Pages, writable: bool) {
        if let Some(i) = self.slot(page) {
            let p = page as usize;
            self.entries[i] = SPTE_VALID
                | if writable { SPTE_WRITABLE } else { 0 }
                | (u32::from(pages.pte[p].nid) << SPTE_NID_SHIFT)
                | (u32::from(pages.frame_gen[p]) << SPTE_GEN_SHIFT);
        }
    }

    /// Node of the frame an entry points at.
    #[inline]
    pub fn entry_nid(entry: u32) -> Nid {
        ((entry >> SPTE_NID_SHIFT) & 0xff) as Nid
    }

    /// Is valid entry `i` stale: does it grant access the primary mapping no longer grants
    /// (`granted` is false: the VMA is PROT_NONE or gone), or point at a frame the page has
    /// left?
    #[inline]
    pub fn is_stale(&self, i: usize, granted: bool, pages: &Pages) -> bool {
        let e = self.entries[i];
        let p = (self.base + i as PageIdx) as usize;
        !granted || Self::entry_nid(e) != pages.pte[p].nid || (e >> SPTE_GEN_SHIFT) as u16 != pages.frame_gen[p]
    }

    /// Valid entries that grant access the primary mapping no longer grants: the VMA is
    /// PROT_NONE or gone, or the page has moved to another frame. Long-term pins are by
    /// design and never count.
    pub fn stale_entries(&self, granted: impl Fn(PageIdx) -> bool, pages: &Pages) -> u64 {
        if self.kind == SmmuKind::LongtermPin {
            return 0;
        }
        let mut n = 0;
        for (i, &e) in self.entries.iter().enumerate() {
            if e & SPTE_VALID == 0 {
                continue;
            }
            if self.is_stale(i, granted(self.base + i as PageIdx), pages) {
                n += 1;
            }
        }
        n
    }
}

/// Models mmu_notifier_invalidate_range_start()/end() over pages `first..first + n` of `mm`,
/// for any event (change_protection(), migration, KSM, munmap): every notifier-based
/// secondary MMU mapping part of the range drops its entries. `changed(page)` says whether
/// the primary PTE of a page changed; a `smart` notifier (`kernel.notifier`) only drops
/// entries of pages whose PTE changed, the kernel (`unconditional`) drops them all.
pub fn invalidate_range(
    k: &mut Kernel,
    mm: Entity,
    first: PageIdx,
    n: u64,
    event: MmuNotifyEvent,
    changed: impl Fn(PageIdx) -> bool,
) {
    let unconditional = k.sysctl.0.notifier == NotifierMode::Unconditional;
    let tracing = k.trace.is_some();
    for mut s in k.smmus.iter_mut() {
        if s.mm != mm || s.kind != SmmuKind::Notifier {
            continue;
        }
        let lo = first.max(s.base);
        let hi = (u64::from(first) + n).min(u64::from(s.base) + s.entries.len() as u64) as PageIdx;
        let (mut invalidated, mut skipped) = (0, 0);
        for page in lo..hi.max(lo) {
            let i = (page - s.base) as usize;
            if s.entries[i] & SPTE_VALID == 0 {
                continue;
            }
            if unconditional || changed(page) {
                s.entries[i] = 0;
                invalidated += 1;
            } else {
                skipped += 1;
            }
        }
        if tracing && lo < hi {
            let m = k.mms.get(mm).expect("notified mms are live");
            let t = k.trace.as_mut().expect("tracing");
            let smmu = t.meta.smmu_id(&s.name);
            let (start, end) = (m.page_addr(lo), m.page_addr(hi - 1) + (1 << super::PAGE_SHIFT));
            t.push_current(Event::MmuNotifierInvalidate { smmu, event, start, end, invalidated, skipped });
        }
    }
}

/// Recounts stale secondary-MMU entries into the `stale.mappings` gauge.
pub fn update_stale_gauge(k: &mut Kernel) {
    let now = k.now();
    let Kernel { smmus, mms, pages, counters, .. } = k;
    let total: u64 = smmus
        .iter()
        .map(|s| {
            let mm = mms.get(s.mm).ok();
            s.stale_entries(|page| mm.is_some_and(|m| m.page_accessible(page)), pages)
        })
        .sum();
    if total != counters.stale_mappings {
        trace_event!(k, Event::StaleMappings { stale: total });
    }
    k.counters.set_stale_mappings(now, total);
}

/// An access through a valid secondary-MMU entry: sets its accessed bit, counts it as
/// stale if the primary mapping no longer grants it, and returns the frame's node.
pub fn touch_secondary(k: &mut Kernel, smmu: Entity, page: PageIdx) -> Nid {
    let Kernel { smmus, pages, counters, mms, trace, .. } = k;
    let mut s = smmus.get_mut(smmu).expect("secondary MMUs outlive their users");
    let i = s.slot(page).expect("touches stay in the mapped range");
    s.entries[i] |= SPTE_YOUNG;
    let m = mms.get(s.mm).ok();
    let granted = m.is_some_and(|m| m.page_accessible(page));
    let nid = SecondaryMmu::entry_nid(s.entries[i]);
    if s.is_stale(i, granted, pages) {
        counters.stale.accesses += 1;
        if let Some(t) = trace.as_mut() {
            let (addr, smmu) = (m.map_or(0, |m| m.page_addr(page)), t.meta.smmu_id(&s.name));
            t.push_current(Event::StaleAccess { smmu, addr, nid });
        }
    }
    nid
}
