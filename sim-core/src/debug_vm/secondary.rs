//! The secondary-MMU checks: every valid entry of a notifier-kept table maps the frame its
//! page has now, in a VMA that grants access, or is counted stale, and the `stale.mappings`
//! gauge equals that count; no entry that is not stale gives write access to a KSM page or
//! the zero page (both are write-protected everywhere); the entries an invalidation zapped
//! and no fault refilled yet are as many as `secondary_mmu.entries_zapped` less
//! `entries_refilled`.
//!
//! A KVM guest's EPT has an entry per page of guest memory, and the check runs after every
//! event, so the verdicts are kept per 2 MiB chunk ([`TableCache`]) and a chunk is counted
//! again only when something it depends on changed; the count takes the entries in runs per
//! VMA (one answer of vma_is_accessible()) and per span of consecutive page slots, three
//! parallel arrays folded without a branch.

use std::collections::HashMap;

use bevy_ecs::prelude::*;

use super::Violation;
use super::census::ChunkCensus;
use crate::engine::Nanos;
use crate::mm::mmu_notifier::{SPTE_VALID, SPTE_WRITABLE, SPTE_ZAPPED, SecondaryMmu};
use crate::mm::{CHUNK, CHUNK_SHIFT, Mm, PG_KSM, PTE_COW, PageIdx, Pages, Pte, Vma};
use crate::stats::Counters;

/// One table's verdicts per 2 MiB chunk of pages, kept between checks, and what they were
/// taken over. A chunk is counted again when a map or zap wrote it
/// ([`SecondaryMmu::writes`]), when the census recounted its pages (a PTE or frame changed),
/// or, the whole table, when the mm's VMAs grant access differently.
#[derive(Default)]
pub(super) struct TableCache {
    base: PageIdx,
    runs: Vec<(PageIdx, u64, bool)>,
    writes: Vec<u32>,
    tallies: Vec<Tally>,
}

/// The secondary-MMU checks; `full`: count every chunk again, and hold the kept verdicts of
/// the chunks nothing changed against the new count.
pub(super) fn check_secondary(
    (pages, census, full): (&Pages, &ChunkCensus, bool),
    (mms, smmus): (&Query<&Mm>, &Query<(Entity, &SecondaryMmu)>),
    caches: &mut HashMap<Entity, TableCache>,
    counters: &Counters,
    now: Nanos,
) -> Result<(), Violation> {
    let (mut stale, mut zapped) = (0, 0);
    for (e, s) in smmus.iter() {
        let vmas = mms.get(s.mm).map_or(&[][..], |m| &m.vmas[..]);
        let runs = granted_runs(vmas, s.base, s.entries().len() as u64);
        let cache = caches.entry(e).or_default();
        let relaid = cache.base != s.base || cache.runs != runs || cache.tallies.len() != s.writes().len();
        if relaid {
            *cache = TableCache { base: s.base, runs, writes: s.writes().to_vec(), tallies: Vec::new() };
        }
        let first_chunk = s.base as usize >> CHUNK_SHIFT;
        for c in 0..s.writes().len() {
            let changed =
                relaid || cache.writes[c] != s.writes()[c] || census.recounted.get(first_chunk + c).is_none_or(|&r| r);
            if !changed && !full {
                continue;
            }
            let t = tally_chunk(s, pages, &cache.runs, first_chunk + c);
            if !changed && t != cache.tallies[c] {
                let detail =
                    format!("kept verdicts of chunk {c} of `{}` {:?}, counted {t:?}", s.name, cache.tallies[c]);
                return Err(Violation::new("incremental_secondary", now, detail));
            }
            match cache.tallies.get_mut(c) {
                Some(kept) => *kept = t,
                None => cache.tallies.push(t),
            }
            cache.writes[c] = s.writes()[c];
        }
        if s.kind.notified() {
            stale += cache.tallies.iter().map(|t| t.stale).sum::<u64>();
        }
        zapped += cache.tallies.iter().map(|t| t.zapped).sum::<u64>();
        if let Some((page, pte)) = cache.tallies.iter().find_map(|t| t.write_to_cow) {
            return Err(writable_cow(s, page, pte, now));
        }
    }
    if stale != counters.stale_mappings {
        let detail = format!("the stale.mappings gauge says {} but {stale} entries are stale", counters.stale_mappings);
        return Err(Violation::new("stale_gauge", now, detail));
    }
    let churn = &counters.secondary_mmu;
    if churn.entries_refilled.checked_add(zapped) != Some(churn.entries_zapped) {
        let detail = format!(
            "{zapped} entries wait for a refill, but secondary_mmu counts {} zapped and {} refilled",
            churn.entries_zapped, churn.entries_refilled
        );
        return Err(Violation::new("secondary_zaps_refills", now, detail));
    }
    Ok(())
}

/// The verdicts on table `s`'s entries for the pages of chunk `c`.
fn tally_chunk(s: &SecondaryMmu, pages: &Pages, runs: &[(PageIdx, u64, bool)], c: usize) -> Tally {
    let (lo, hi) = ((c * CHUNK) as u64, ((c + 1) * CHUNK) as u64);
    let mut t = Tally::default();
    for &(first, n, granted) in runs {
        let (from, to) = (u64::from(first).max(lo), (u64::from(first) + n).min(hi));
        if from >= to {
            continue;
        }
        let mut page = from as PageIdx;
        for (slots, each) in pages.spans(page, to - from) {
            let i = (page - s.base) as usize;
            // A compact chunk's one slot stands for all its pages.
            let compact = each > 1;
            let entries = &s.entries()[i..i + if compact { each as usize } else { slots.len() }];
            let state = |k: usize| {
                let slot = slots.start + if compact { 0 } else { k };
                (pages.slots.pte(slot), pages.slots.frame_gen(slot))
            };
            let (stale, bad) = if compact {
                fold(entries, granted, std::iter::repeat(state(0)))
            } else {
                let ptes = pages.slots.ptes(slots.clone()).iter().copied();
                fold(entries, granted, ptes.zip(pages.slots.frame_gens(slots.clone()).iter().copied()))
            };
            t.stale += stale;
            t.zapped += entries.iter().filter(|&&e| e & SPTE_ZAPPED != 0).count() as u64;
            if bad > 0 && t.write_to_cow.is_none() {
                let k = (0..entries.len()).find(|&k| verdict(entries[k], granted, state(k)).1).unwrap_or(0);
                t.write_to_cow = Some((page + k as PageIdx, state(k).0));
            }
            page += entries.len() as PageIdx;
        }
    }
    t
}

/// `n` pages from `first` as runs `(first, pages, granted)`: a VMA that grants access
/// (vma_is_accessible(), not munmap()ed) or not, and the gaps between VMAs, which do not.
/// VMAs are in page order.
fn granted_runs(vmas: &[Vma], first: PageIdx, n: u64) -> Vec<(PageIdx, u64, bool)> {
    let (mut page, end) = (u64::from(first), u64::from(first) + n);
    let mut runs = Vec::new();
    for v in vmas {
        let (start, stop) = (u64::from(v.base), (u64::from(v.base) + v.pages).min(end));
        if stop <= page {
            continue;
        }
        if start >= end {
            break;
        }
        if start > page {
            runs.push((page as PageIdx, start - page, false));
            page = start;
        }
        runs.push((page as PageIdx, stop - page, !v.unmapped && v.accessible));
        page = stop;
    }
    if page < end {
        runs.push((page as PageIdx, end - page, false));
    }
    runs
}

/// Stale entries among some, and the first that gives write access to a copy-on-write
/// page, with the page's PTE.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    stale: u64,
    /// Entries an invalidation zapped, not refilled since.
    zapped: u64,
    write_to_cow: Option<(PageIdx, Pte)>,
}

/// Counts the stale entries among `entries` and those that write-enable a copy-on-write page;
/// their pages hold `state` (PTE, frame generation) one by one.
fn fold(entries: &[u32], granted: bool, state: impl Iterator<Item = (Pte, u16)>) -> (u64, u64) {
    entries.iter().zip(state).fold((0, 0), |(stale, bad), (&e, st)| {
        let (s, b) = verdict(e, granted, st);
        (stale + u64::from(s), bad + u64::from(b))
    })
}

/// Whether entry `e` is valid and stale, and whether it is valid, not stale, and gives write
/// access to a copy-on-write page.
#[inline]
fn verdict(e: u32, granted: bool, (pte, frame_gen): (Pte, u16)) -> (bool, bool) {
    let valid = e & SPTE_VALID != 0;
    let stale = valid & SecondaryMmu::entry_is_stale(e, granted, pte, frame_gen);
    (stale, valid & !stale & (e & SPTE_WRITABLE != 0) & (pte.flags & PTE_COW != 0))
}

fn writable_cow(s: &SecondaryMmu, page: PageIdx, pte: Pte, now: Nanos) -> Violation {
    let (invariant, what) = if pte.flags & PG_KSM != 0 {
        ("ksm_write_protected", "a KSM page")
    } else {
        ("zero_page_write_protected", "the zero page")
    };
    let detail = format!("secondary MMU `{}` maps {what} writable", s.name);
    Violation::new(invariant, now, detail).at_page(page)
}
