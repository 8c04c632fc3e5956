//! Secondary MMUs and MMU notifiers (mm/mmu_notifier.c, include/linux/mmu_notifier.h).
//!
//! A secondary MMU mirrors part of a process's page table: KVM's EPT/NPT, or a device's
//! IOMMU page table. Notifier-based users (KVM, ODP/accelerator drivers) are told about
//! changes through invalidate_range_start/end and answer clear_young/test_young; long-term
//! pinning users (VFIO, RDMA without ODP) hold their pages instead and are not notified.

use bevy_ecs::prelude::*;

use super::huge_memory::thp_pages_of;
use super::{CHUNK_SHIFT, HPAGE_PMD_NR, PageIdx, Pages, Pte};
use crate::config::NotifierMode;
use crate::engine::hugepages::reserve_exact_huge;
use crate::engine::prefetch;
use crate::kernel::Kernel;
use crate::machine::Nid;
use crate::stats::Counters;
use crate::trace::Event;
use crate::trace_event;

/// Secondary PTE bits: valid, writable, accessed. The frame (node and generation of the
/// page when it was mapped) sits above them.
pub const SPTE_VALID: u32 = 1 << 0;
pub const SPTE_WRITABLE: u32 = 1 << 1;
pub const SPTE_YOUNG: u32 = 1 << 2;
/// Part of a 2 MiB (PMD-level) entry: the 512 entries of a THP's block are mapped, zapped
/// and aged together.
pub const SPTE_HUGE: u32 = 1 << 3;
/// An invalid entry an invalidation zapped: its next map is a refill (`secondary_mmu.refills`).
pub const SPTE_ZAPPED: u32 = 1 << 4;
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
    /// KVM's EPT/NPT: a notifier user whose zaps end in kvm_flush_remote_tlbs(), which
    /// interrupts the vCPUs running in the guest.
    Kvm,
    /// Long-term pins: no notifier; the pinned pages cannot move, so entries stay right.
    LongtermPin,
}

impl SmmuKind {
    /// Whether MMU notifier invalidations reach the table.
    pub fn notified(self) -> bool {
        self != SmmuKind::LongtermPin
    }
}

/// One secondary MMU over a range of a process's memory.
#[derive(Component, Debug)]
pub struct SecondaryMmu {
    pub name: String,
    pub mm: Entity,
    /// Global index of the first page covered; `entries` has one slot per page.
    pub base: PageIdx,
    /// Written only through [`SecondaryMmu::map`], [`SecondaryMmu::zap`] and the accessed-bit
    /// methods.
    entries: Vec<u32>,
    /// Per 2 MiB chunk of pages the table covers (as [`Pages`] lays them out): bumped by each
    /// map or zap there, so the invariant checker recounts only what changed. The accessed
    /// bit does not count: no check reads it.
    writes: Vec<u32>,
    pub kind: SmmuKind,
}

impl SecondaryMmu {
    pub fn new(name: &str, mm: Entity, base: PageIdx, len: u64, kind: SmmuKind) -> Self {
        let chunks = Self::chunk_of(base, base as usize + len as usize) + 1;
        // On the host's huge pages, as the page state is: a table of a guest's 1470 GiB is
        // 1.4 GiB, and its first random touches would otherwise fault it in 4 KiB at a time.
        let mut entries = Vec::new();
        reserve_exact_huge(&mut entries, len as usize);
        entries.resize(len as usize, 0);
        Self { name: name.to_string(), mm, base, entries, writes: vec![0; chunks], kind }
    }

    /// The chunk of the table (counted from its first) that page index `page` is in.
    #[inline]
    fn chunk_of(base: PageIdx, page: usize) -> usize {
        (page >> CHUNK_SHIFT) - (base as usize >> CHUNK_SHIFT)
    }

    /// Every entry, to read.
    #[inline]
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// Per chunk of pages: a count of the maps and zaps there, for the invariant checker.
    pub fn writes(&self) -> &[u32] {
        &self.writes
    }

    /// Counts a map or zap of the non-empty entries `range` in each chunk it touches.
    fn wrote(&mut self, range: std::ops::Range<usize>) {
        let base = self.base as usize;
        for c in Self::chunk_of(self.base, base + range.start)..=Self::chunk_of(self.base, base + range.end - 1) {
            self.writes[c] = self.writes[c].wrapping_add(1);
        }
    }

    /// Invalidates entries `range` (indices into the table).
    pub fn zap(&mut self, range: std::ops::Range<usize>) {
        self.clear(range, 0);
    }

    /// Invalidates valid entries `range` for an MMU notifier, marking them [`SPTE_ZAPPED`].
    fn zap_notified(&mut self, range: std::ops::Range<usize>) {
        self.clear(range, SPTE_ZAPPED);
    }

    fn clear(&mut self, range: std::ops::Range<usize>, mark: u32) {
        if !range.is_empty() {
            self.wrote(range.clone());
        }
        self.entries[range].fill(mark);
    }

    /// Sets entry `i`'s accessed bit (the device or vCPU used it).
    #[inline]
    pub fn mark_young(&mut self, i: usize) {
        self.entries[i] |= SPTE_YOUNG;
    }

    /// Clears the accessed bit of entries `range`.
    pub fn clear_young(&mut self, range: std::ops::Range<usize>) {
        self.entries[range].iter_mut().for_each(|e| *e &= !SPTE_YOUNG);
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
            let s = pages.slot(page);
            pages.slots.prefetch_pte(s);
            pages.slots.prefetch_frame_gen(s);
        }
    }

    /// Maps `page` to the frame it has now; returns whether that refilled a zapped entry.
    pub fn map(&mut self, page: PageIdx, pages: &Pages, writable: bool) -> bool {
        self.map_entry(page, pages, writable, 0)
    }

    fn map_entry(&mut self, page: PageIdx, pages: &Pages, writable: bool, huge: u32) -> bool {
        let Some(i) = self.slot(page) else { return false };
        let s = pages.slot(page);
        self.wrote(i..i + 1);
        let refill = self.entries[i] & SPTE_ZAPPED != 0;
        self.entries[i] = SPTE_VALID
            | huge
            | if writable { SPTE_WRITABLE } else { 0 }
            | (u32::from(pages.slots.pte(s).nid) << SPTE_NID_SHIFT)
            | (u32::from(pages.slots.frame_gen(s)) << SPTE_GEN_SHIFT);
        refill
    }

    /// The entries that map and unmap with entry `i`: its PMD block for a 2 MiB entry.
    pub fn unit(&self, i: usize) -> std::ops::Range<usize> {
        if self.entries[i] & SPTE_HUGE == 0 {
            return i..i + 1;
        }
        let first = ((self.base as usize + i) & !(HPAGE_PMD_NR as usize - 1)) - self.base as usize;
        first..first + HPAGE_PMD_NR as usize
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
        let s = pages.slot(self.base + i as PageIdx);
        Self::entry_is_stale(self.entries[i], granted, pages.slots.pte(s), pages.slots.frame_gen(s))
    }

    /// [`SecondaryMmu::is_stale`] of valid entry `e`, given what its page holds now: its PTE
    /// and frame generation.
    #[inline]
    pub fn entry_is_stale(e: u32, granted: bool, pte: Pte, frame_gen: u16) -> bool {
        !granted | (Self::entry_nid(e) != pte.nid) | ((e >> SPTE_GEN_SHIFT) as u16 != frame_gen)
    }

    /// Valid entries that grant access the primary mapping no longer grants: the VMA is
    /// PROT_NONE or gone, or the page has moved to another frame. Long-term pins are by
    /// design and never count.
    pub fn stale_entries(&self, granted: impl Fn(PageIdx) -> bool, pages: &Pages) -> u64 {
        if !self.kind.notified() {
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
    invalidate(k, mm, first..first + n as PageIdx, event, false, changed);
}

/// [`invalidate_range`] for change_prot_numa(): MMU_NOTIFY_PROTECTION_VMA, which the
/// proposed MMU_NOTIFIER_RANGE_NUMA flag (`kernel.mmu_notifier_range_numa`; proposed, not in
/// a kernel) marks as a NUMA hinting change, so that secondary MMUs keep their entries: a
/// kept entry maps the frame the page still has, and a migration later zaps it
/// (MMU_NOTIFY_CLEAR). Simplified: where KVM would test the flag is not settled; numasim
/// tests it before KVM's `kvm_unmap_hva_range` tracepoint, so a kept range is not traced.
pub fn invalidate_prot_numa(k: &mut Kernel, mm: Entity, first: PageIdx, n: u64, changed: impl Fn(PageIdx) -> bool) {
    let keep = k.sysctl.0.mmu_notifier_range_numa;
    invalidate(k, mm, first..first + n as PageIdx, MmuNotifyEvent::ProtectionVma, keep, changed);
}

fn invalidate(
    k: &mut Kernel,
    mm: Entity,
    range: std::ops::Range<PageIdx>,
    event: MmuNotifyEvent,
    keep: bool,
    changed: impl Fn(PageIdx) -> bool,
) {
    let unconditional = k.sysctl.0.notifier == NotifierMode::Unconditional;
    let tracing = k.trace.is_some();
    let me = k.current_cpu.0;
    let Kernel { smmus, counters, cpus, mms, trace, .. } = k;
    for mut s in smmus.iter_mut() {
        if s.mm != mm || !s.kind.notified() {
            continue;
        }
        let lo = range.start.max(s.base);
        let hi = (u64::from(range.end)).min(u64::from(s.base) + s.entries.len() as u64) as PageIdx;
        // An interval notifier (a device's) hears only of ranges over its window; so count.
        if lo < hi {
            counters.secondary_mmu.invalidated(event);
            counters.secondary_mmu.range_numa_kept += u64::from(keep);
        }
        if keep {
            continue;
        }
        let (mut invalidated, mut skipped) = (0, 0);
        let mut page = lo;
        while page < hi {
            let i = (page - s.base) as usize;
            let unit = s.unit(i);
            let end = (s.base + unit.end as PageIdx).min(hi);
            if s.entries[i] & SPTE_VALID != 0 {
                // A 2 MiB entry goes whole when any page of the range under it changed.
                if unconditional || (page..end).any(&changed) {
                    invalidated += unit.len() as u32;
                    s.zap_notified(unit);
                } else {
                    skipped += end - page;
                }
            }
            page = end;
        }
        counters.secondary_mmu.entries_zapped += u64::from(invalidated);
        if s.kind == SmmuKind::Kvm {
            // kvm_mmu_notifier_invalidate_range_start() traces every range of the mm, in a
            // memslot or not.
            counters.kvm.kvm_unmap_hva_range += 1;
        }
        if invalidated > 0 {
            let ipis = if s.kind == SmmuKind::Kvm { kvm_flush_remote_tlbs(counters, cpus, s.mm, me) } else { 0 };
            counters.secondary_mmu.tlb_flushes += 1;
            counters.secondary_mmu.flush_ipis += ipis;
        }
        if tracing && lo < hi {
            let m = mms.get(mm).expect("notified mms are live");
            let t = trace.as_mut().expect("tracing");
            let smmu = t.meta.smmu_id(&s.name);
            let (start, end) = (m.page_addr(lo), m.page_addr(hi - 1) + (1 << super::PAGE_SHIFT));
            t.push_current(Event::MmuNotifierInvalidate { smmu, event, start, end, invalidated, skipped });
        }
    }
}

/// Models kvm_flush_remote_tlbs() (virt/kvm/kvm_main.c, 6.12.118 and 7.3.4) after a zap:
/// kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH) sends an IPI to every vCPU in guest mode on
/// a CPU other than the caller's (`me`); `remote_tlb_flush` counts the flushes that sent one
/// (x86 without Hyper-V has no kvm_arch_flush_remote_tlbs()). Returns the IPIs sent.
/// Simplified: a vCPU thread in its quantum is in guest mode; one out of it is not.
fn kvm_flush_remote_tlbs(counters: &mut Counters, cpus: &Query<&mut crate::machine::Cpu>, vm: Entity, me: u32) -> u64 {
    let ipis = cpus.iter().filter(|c| c.id != me && c.curr.is_some_and(|(_, m)| m == vm)).count() as u64;
    counters.kvm.remote_tlb_flush_requests += 1;
    counters.kvm.remote_tlb_flush += u64::from(ipis > 0);
    ipis
}

/// Maps `page` of `mm` into secondary MMU `smmu` as it is mapped now. With `pmd`, a THP is
/// mapped at 2 MiB, its whole block at once, when the table covers all of it (KVM's
/// kvm_mmu_max_mapping_level() on a huge host PMD, or a device with `map_size = "2m"`);
/// anything else at 4 KiB.
pub fn map_secondary(k: &mut Kernel, smmu: Entity, mm: Entity, page: PageIdx, writable: bool, pmd: bool) {
    let span = if pmd { thp_pages_of(k, mm, page) } else { None };
    let Kernel { smmus, pages, counters, .. } = k;
    let mut s = smmus.get_mut(smmu).expect("secondary MMUs outlive their users");
    let refills = match span.filter(|r| s.slot(r.start).is_some() && s.slot(r.end - 1).is_some()) {
        Some(r) => r.filter(|&p| s.map_entry(p, pages, writable, SPTE_HUGE)).count() as u64,
        None => u64::from(s.map(page, pages, writable)),
    };
    counters.secondary_mmu.entries_refilled += refills;
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
    // No bit needed: the caller has just mapped the entry.
    touch_secondary_if(k, smmu, page, 0, None).expect("an entry always has no bits to miss")
}

/// A device's or vCPU's touch of `page` through `smmu` (and a prefetch of the touch
/// `ahead`) in one lookup of the table: [`touch_secondary`] if the entry has the bits
/// `need`, else `None`, and the caller faults first.
#[inline]
pub fn touch_secondary_if(
    k: &mut Kernel,
    smmu: Entity,
    page: PageIdx,
    need: u32,
    ahead: Option<PageIdx>,
) -> Option<Nid> {
    let Kernel { smmus, pages, counters, mms, trace, .. } = k;
    let mut s = smmus.get_mut(smmu).expect("secondary MMUs outlive their users");
    if let Some(ahead) = ahead {
        s.prefetch(ahead, pages);
    }
    let i = s.slot(page).expect("touches stay in the mapped range");
    if s.entries[i] & need != need {
        return None;
    }
    s.mark_young(i);
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
    Some(nid)
}
