//! Page aging (mm/vmscan.c, mm/rmap.c): folio_referenced() asks the primary PTE and, through
//! mmu_notifier_clear_young(), every secondary MMU whether a page was used.

use bevy_ecs::prelude::*;

use super::mmu_notifier::{SPTE_VALID, SPTE_YOUNG};
use super::{PTE_PROTNONE, PTE_YOUNG, PageIdx};
use crate::engine::{Event, Nanos};
use crate::kernel::Kernel;

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
    let mut secondary_young: Vec<PageIdx> = Vec::new();
    for mut s in k.smmus.iter_mut() {
        if !s.kind.notified() {
            continue;
        }
        let base = s.base;
        for i in 0..s.entries().len() {
            if s.entries()[i] & (SPTE_VALID | SPTE_YOUNG) == SPTE_VALID | SPTE_YOUNG {
                // test_young on a 2 MiB entry answers for its whole block (the THP's folio).
                let unit = s.unit(i);
                s.clear_young(unit.clone());
                secondary_young.extend(unit.map(|j| base + j as PageIdx));
            }
        }
    }
    secondary_young.sort_unstable();
    secondary_young.dedup();
    let pages = &k.pages;
    let only_secondary = secondary_young
        .iter()
        .filter(|&&p| pages.has_folio(p) && pages.pte(p).flags & (PTE_PROTNONE | PTE_YOUNG) == PTE_PROTNONE)
        .count();
    k.counters.young.secondary_only_protnone += only_secondary as u64;
    for pte in k.pages.slots.ptes_mut() {
        pte.flags &= !PTE_YOUNG;
    }
    k.queue.schedule_in(aging.interval, Event::Aging);
}
