//! Shmem THPs (mm/shmem.c, do_set_pmd() in mm/memory.c): the PMD-sized folios a memfd's page
//! cache may hold, and the PMDs its mappers map them with.
//!
//! Read in 6.1.192, 6.12.118 and 7.3.4. shmem_get_folio_gfp() asks `shmem_enabled`
//! ([`ShmemEnabled::allows`]: __shmem_is_huge() in 6.1, shmem_huge_global_enabled() through
//! shmem_allowable_huge_orders() in 6.12 and 7.3) whether a fault at a page not yet in the
//! file tries a huge folio for its 2 MiB block; shmem_alloc_hugefolio() gives up without
//! counting when any page of the block is already cached, and counts `thp_file_fallback`
//! when the allocation fails, which then takes one 4 KiB page. A huge folio added to the
//! cache counts `thp_file_alloc` (shmem_add_to_page_cache()). finish_fault() maps it by PMD
//! (do_set_pmd(), `thp_file_mapped`) in every VMA whose block is PMD-aligned with the file
//! offset and wholly inside it (transhuge_vma_suitable(), thp_vma_suitable_order());
//! shmem_get_unmapped_area() aligns every mapping of 2 MiB or more once shm_mnt may hold huge
//! folios, so each mapper of a memfd maps its THPs by PMD, never by PTEs.
//!
//! The folio is one: its node, pins and last_cpupid are the chunk's shared slot in
//! [`super::Pages`]; each mapper has its own PMD (`Vma::pmds`) and its own protnone bits
//! (`backing::Memfd`), so change_huge_pmd() in one mm leaves the other mappers' PMDs
//! accessible, and a migration rebuilds every mapper's PMD (remove_migration_pmd()).
//!
//! Secondary MMUs: KVM maps a PMD-mapped shmem THP with a 2 MiB EPT entry as it does an
//! anonymous one (host_pfn_mapping_level() reads the host PMD, whatever the folio's kind).
//!
//! Simplified (one line each):
//! - every mapper's PMD is set when the folio is allocated and each counts `thp_file_mapped`
//!   then (the minor fault that maps a cached page is not modelled, as for 4 KiB pages);
//! - PMD-sized folios only: 7.3's smaller file orders for `always` are not tried, a fallback
//!   takes 4 KiB pages, and the pages past a memfd's last whole 2 MiB block are 4 KiB;
//! - no shrinker split past i_size (shmem_unused_huge_shrink()), no khugepaged collapse;
//! - a scan covers a memfd THP whole (its mappings are PMD-aligned and the actions that would
//!   split a VMA need anonymous memory), so __split_huge_pmd()'s zap of a file PMD is not
//!   modelled.

use bevy_ecs::entity::Entity;

use super::backing::{alloc_node, mappers};
use super::huge_memory::alloc_thp;
use super::memory::vm_page_prot;
use super::{HPAGE_PMD_NR, PageIdx, Pmd};
use crate::kernel::Kernel;
use crate::machine::Nid;

pub use crate::config::ShmemEnabled;

/// Models the huge branch of shmem_get_folio_gfp() for a fault at block `b` of memfd VMA `vma`
/// of `mm`, none of whose pages is cached yet, from a CPU on node `nid`. Returns false when the
/// fault takes a 4 KiB page instead, after which the block stays 4 KiB in every mapper.
pub fn shmem_fault_huge(k: &mut Kernel, mm: Entity, vma: usize, b: usize, nid: Nid) -> bool {
    let v = k.mm(mm).vmas[vma].clone();
    // A whole block of a memfd is inside i_size: `within_size` allows it as `always` does.
    let allowed = k.sysctl.0.shmem_enabled.allows(true, v.vm_hugepage);
    let (head, prot) = (v.block_page(b), vm_page_prot(v.accessible));
    let got = if allowed { alloc_thp(k, alloc_node(k, &v, head, nid), v.vm_hugepage) } else { None };
    let Some(got) = got else {
        k.counters.file_thp.thp_file_fallback += u64::from(allowed);
        set_mappers_pmd(k, mm, &v, head, Pmd::Table);
        return false;
    };
    k.pgdat(got).free_pages -= HPAGE_PMD_NR;
    for i in k.pages.chunk_slots(head) {
        let pte = k.pages.slots.pte_mut(i);
        pte.nid = got;
        pte.flags |= prot;
    }
    k.counters.file_thp.thp_file_alloc += 1;
    let mapped = set_mappers_pmd(k, mm, &v, head, Pmd::Huge);
    k.counters.file_thp.thp_file_mapped += mapped;
    true
}

/// A new mapper `mm` of the memfd its VMA `vma` maps takes the blocks another mapper already
/// holds: a cached THP mapped by PMD (`thp_file_mapped`), a block of 4 KiB folios by PTEs.
/// Its RSS counted the pages when it mapped the file.
pub fn map_cached_thps(k: &mut Kernel, mm: Entity, vma: usize) {
    let v = k.mm(mm).vmas[vma].clone();
    let Some(other) = mappers(k, mm, &v).into_iter().find(|&m| m != mm) else { return };
    let o = k.mm(other);
    let Some(oi) = o.vma_of_page(v.base) else { return };
    let cached = o.vmas[oi].pmds.clone();
    let pmds = &mut k.mm(mm).vmas[vma].pmds;
    for (pmd, &c) in pmds.iter_mut().zip(&cached) {
        *pmd = c;
    }
    k.counters.file_thp.thp_file_mapped += cached.iter().filter(|&&c| c == Pmd::Huge).count() as u64;
}

/// Sets the PMD over the block at `head` in every mapper of `v`'s memfd; each mapper counts
/// the folio in its RSS (MM_SHMEMPAGES) when it maps a huge one. Returns the PMDs set.
fn set_mappers_pmd(k: &mut Kernel, mm: Entity, v: &super::Vma, head: PageIdx, pmd: Pmd) -> u64 {
    let mut set = 0;
    for m in mappers(k, mm, v) {
        let mut m = k.mm(m);
        let Some(vi) = m.vma_of_page(head) else { continue };
        let w = &mut m.vmas[vi];
        let Some(b) = w.pmd_block(w.start + u64::from(head - w.base)) else { continue };
        w.pmds[b] = pmd;
        if pmd == Pmd::Huge {
            m.rss += HPAGE_PMD_NR;
            set += 1;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of __shmem_is_huge() (6.1.192) and shmem_huge_global_enabled() (6.12.118) for
    /// a memfd (shm_mnt), by value, for a block inside i_size and one past it, with and
    /// without VM_HUGEPAGE.
    #[test]
    fn shmem_enabled_follows_the_kernels_switch() {
        use ShmemEnabled::*;
        let rows = [
            (Always, [true, true, true, true]),
            (WithinSize, [true, true, false, true]),
            (Advise, [false, true, false, true]),
            (Never, [false; 4]),
            (Deny, [false; 4]),
            (Force, [true; 4]),
        ];
        for (value, want) in rows {
            let got = [(true, false), (true, true), (false, false), (false, true)].map(|(w, h)| value.allows(w, h));
            assert_eq!(got, want, "{value:?}");
        }
        assert!(!Never.may_be_huge() && !Deny.may_be_huge() && Advise.may_be_huge() && Force.may_be_huge());
    }
}
