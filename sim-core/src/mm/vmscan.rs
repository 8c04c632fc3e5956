//! Page aging (mm/vmscan.c, mm/rmap.c): folio_referenced() asks the primary PTE and, through
//! mmu_notifier_clear_young(), every secondary MMU whether a page was used; and kswapd's
//! reclaim by demotion to a lower memory tier.

use bevy_ecs::prelude::*;

use super::backing::protnone_at;
use super::mmu_notifier::{MmuNotifyEvent, SPTE_VALID, SPTE_YOUNG, SmmuKind, invalidate_range};
use super::userfaultfd::userfaultfd_pte_rwp;
use super::{CPUPID_UNSET, PG_KSM, PTE_PROTNONE, PTE_YOUNG, PTE_ZERO, PageIdx};
use crate::engine::{Event, Nanos};
use crate::kernel::Kernel;
use crate::machine::Nid;

/// kswapd's state for one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kswapd {
    /// A wake-up is queued or running (pgdat->kswapd_wait has been woken).
    pub woken: bool,
    /// Where the next reclaim pass resumes: the clock hand over the pages mapped in any mm.
    pub hand: PageIdx,
}

/// Models can_demote() (mm/vmscan.c, 6.12.118, 7.3.4): demotion_enabled and a demotion
/// target below `nid`.
pub fn can_demote(k: &Kernel, nid: Nid) -> bool {
    k.sysctl.0.demotion_enabled && !k.tiers.demotion_targets(nid).is_empty()
}

/// Models wakeup_kswapd() for node `nid`: kswapd runs at once unless already awake.
/// Simplified: with nothing to demote to, kswapd is not woken, since swap and page-cache
/// reclaim are not modelled.
pub fn wakeup_kswapd(k: &mut Kernel, nid: Nid) {
    if !can_demote(k, nid) || k.pgdat(nid).kswapd.woken {
        return;
    }
    k.pgdat(nid).kswapd.woken = true;
    k.queue.schedule_in(0, Event::Kswapd(nid));
}

/// Handler of [`Event::Kswapd`]: models balance_pgdat() with pgdat_balanced()'s mark (the
/// promo watermark in memory-tiering mode, else high) and shrink_folio_list()'s demotion
/// (demote_folio_list(), `pgdemote_kswapd`). Simplified LRU: Debian's 6.12 and 7.3 run
/// MGLRU (CONFIG_LRU_GEN_ENABLED=y); the model approximates its generations by a clock over
/// the mapped pages: a page referenced since the hand last passed (the accessed bit of its
/// PTE or of a secondary MMU's entry, as folio_referenced() reads them) has its bits
/// cleared and is passed over, an unreferenced one is demoted. THP-backed pages, pinned
/// pages and KSM pages are passed over; kswapd costs no CPU time.
pub fn kswapd(In(nid): In<Nid>, mut k: Kernel, mms: Query<Entity, With<super::Mm>>) {
    k.pgdat(nid).kswapd.woken = false;
    let mark = {
        let w = k.pgdat(nid).wmark;
        if k.sysctl.0.numa_balancing.tiering() { w.promo() } else { w.high }
    };
    let pages = mapped_pages(&k, &mms);
    let total: u64 = pages.iter().map(|(_, r)| u64::from(r.end - r.start)).sum();
    let mut hand = k.pgdat(nid).kswapd.hand;
    // Two laps: the first may only clear accessed bits.
    for _ in 0..2 * total {
        if k.pgdat(nid).free_pages > mark {
            break;
        }
        let Some((mm, page)) = next_page(&pages, hand) else { break };
        hand = page + 1;
        if !demotable(&k, page, nid) || folio_referenced(&mut k, mm, page) {
            continue;
        }
        if !demote_page(&mut k, mm, page, nid) {
            break;
        }
    }
    k.pgdat(nid).kswapd.hand = hand;
}

/// Every mm's VMA page ranges, by first page: the pages kswapd's clock walks.
fn mapped_pages(k: &Kernel, mms: &Query<Entity, With<super::Mm>>) -> Vec<(Entity, std::ops::Range<PageIdx>)> {
    let mut pages: Vec<_> = mms
        .iter()
        .filter_map(|e| Some((e, k.mms.get(e).ok()?)))
        .flat_map(|(e, mm)| mm.vmas.iter().map(move |v| (e, v.base..v.base + v.pages as PageIdx)))
        .collect();
    pages.sort_by_key(|(_, r)| r.start);
    pages
}

/// The first mapped page at or after `hand`, wrapping to the first range.
fn next_page(pages: &[(Entity, std::ops::Range<PageIdx>)], hand: PageIdx) -> Option<(Entity, PageIdx)> {
    let later = pages.iter().find(|(_, r)| r.end > hand);
    later.map(|(e, r)| (*e, hand.max(r.start))).or_else(|| pages.first().map(|(e, r)| (*e, r.start)))
}

/// A 4 KiB anonymous page on `nid` that migration could move.
fn demotable(k: &Kernel, page: PageIdx, nid: Nid) -> bool {
    let pages = &k.pages;
    let pte = pages.pte(page);
    if pte.nid != nid || pte.flags & (PTE_ZERO | PG_KSM) != 0 || pages.is_compact(page) {
        return false;
    }
    let s = pages.slot(page);
    pages.slots.pins(s) == 0 && pages.slots.refs[s] == 0
}

/// Models folio_referenced() for reclaim: tests and clears the PTE's accessed bit and, through
/// mmu_notifier_clear_young(), the notifier-based secondary MMUs' entries for the page.
fn folio_referenced(k: &mut Kernel, mm: Entity, page: PageIdx) -> bool {
    let mut young = false;
    for mut s in k.smmus.iter_mut() {
        if s.mm != mm || s.kind != SmmuKind::Notifier {
            continue;
        }
        if let Some(i) = s.slot(page)
            && s.entries()[i] & (SPTE_VALID | SPTE_YOUNG) == SPTE_VALID | SPTE_YOUNG
        {
            let unit = s.unit(i);
            s.clear_young(unit);
            young = true;
        }
    }
    if k.pages.pte(page).flags & PTE_YOUNG != 0 {
        k.pages.pte_mut(page).flags &= !PTE_YOUNG;
        young = true;
    }
    young
}

/// Models demote_folio_list() for one page of `mm` on `src`: allocated on the first demotion
/// target above its min watermark (alloc_demote_folio() does not reclaim), the secondary
/// MMUs invalidated, the PTE remapped with the VMA's protection (remove_migration_pte(), so
/// a NUMA hint's protnone PTE comes back accessible, while 7.3.4's keeps an RWP-armed PTE's
/// marker and restores PAGE_NONE under it in a VM_UFFD_RWP VMA), and last_cpupid reset
/// across tiers in memory-tiering mode (folio_migrate_flags()). False when no target has
/// room.
fn demote_page(k: &mut Kernel, mm: Entity, page: PageIdx, src: Nid) -> bool {
    let targets = k.tiers.demotion_targets(src).to_vec();
    let Some(dst) = targets.into_iter().find(|&t| {
        let p = k.pgdat(t);
        p.free_pages > p.wmark.min + 1
    }) else {
        return false;
    };
    invalidate_range(k, mm, page, 1, MmuNotifyEvent::Clear, |_| true);
    k.pgdat(dst).free_pages -= 1;
    k.pgdat(src).free_pages += 1;
    let flags = k.pages.pte(page).flags;
    let m = k.mms.get(mm).expect("kswapd walks live mms");
    let armed = m.vma_of_page(page).is_some_and(|v| userfaultfd_pte_rwp(&m.vmas[v], flags));
    let s = k.pages.slot_mut(page);
    let pte = k.pages.slots.new_frame(s);
    pte.nid = dst;
    if !armed {
        pte.flags &= !PTE_PROTNONE;
    }
    if k.sysctl.0.numa_balancing.tiering() && k.tiers.node_is_toptier(src) != k.tiers.node_is_toptier(dst) {
        k.pages.slots.last_cpupid[s] = CPUPID_UNSET;
    }
    k.counters.tierstat.pgdemote_kswapd += 1;
    k.counters.vmstat.pgmigrate_success += 1;
    true
}

/// The aging scanner's period.
#[derive(Resource, Debug)]
pub struct Aging {
    pub interval: Nanos,
}

/// Handler of [`Event::Aging`]: one pass of folio_referenced() → ptep_clear_young_notify()
/// over every mapped page: the primary accessed bit, and mmu_notifier_clear_young() on every
/// notifier-based secondary MMU (done table by table, which gives the same bits). A page young only through a secondary MMU while its primary PTE
/// is protnone is counted in `young.secondary_only_protnone`: aging calls it used, while
/// NUMA balancing never saw the access. Simplified: every page is aged each pass (no LRU
/// lists); long-term pinned device mappings report no accessed bits.
pub fn age_pages(mut k: Kernel, aging: Res<Aging>) {
    // The pages young in a secondary MMU, with the mm whose PTE that table mirrors.
    let mut secondary_young: Vec<(PageIdx, Entity)> = Vec::new();
    for mut s in k.smmus.iter_mut() {
        if !s.kind.notified() {
            continue;
        }
        let (base, mm) = (s.base, s.mm);
        for i in 0..s.entries().len() {
            if s.entries()[i] & (SPTE_VALID | SPTE_YOUNG) == SPTE_VALID | SPTE_YOUNG {
                // test_young on a 2 MiB entry answers for its whole block (the THP's folio).
                let unit = s.unit(i);
                s.clear_young(unit.clone());
                secondary_young.extend(unit.map(|j| (base + j as PageIdx, mm)));
            }
        }
    }
    let pages = &k.pages;
    let mut only_secondary: Vec<PageIdx> = secondary_young
        .into_iter()
        .filter(|&(p, mm)| pages.has_folio(p) && pages.pte(p).flags & PTE_YOUNG == 0 && protnone_at(&k, mm, p))
        .map(|(p, _)| p)
        .collect();
    only_secondary.sort_unstable();
    only_secondary.dedup();
    let only_secondary = only_secondary.len();
    k.counters.young.secondary_only_protnone += only_secondary as u64;
    for pte in k.pages.slots.ptes_mut() {
        pte.flags &= !PTE_YOUNG;
    }
    k.queue.schedule_in(aging.interval, Event::Aging);
}
