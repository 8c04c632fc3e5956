//! Memory kinds: what backs a VMA (anonymous memory, a memfd, hugetlbfs, guest_memfd), the
//! per-VMA memory policy, and the faults that allocate each kind's frames.
//!
//! Read in 6.1.192, 6.12.117 and 7.3.4 (mm/shmem.c, mm/hugetlb.c, mm/mempolicy.c,
//! mm/mprotect.c, mm/memory.c, mm/migrate.c, kernel/sched/fair.c; virt/kvm/guest_memfd.c in
//! 7.3.4). What each kind changes:
//!
//! | kind | task_numa_work() | change_pte_range() | do_numa_page() | migration |
//! |---|---|---|---|---|
//! | anon | scanned | pinned or shared COW folios skipped | private | yes |
//! | memfd (shmem, MAP_SHARED) | scanned (vma_migratable(), MOF from the task policy) from 6.12; 6.1 skips it, `unsuitable` (vma_policy_mof() without the fallback) | no single-threaded target node; pinned folios made protnone up to 6.18, skipped from 6.19 (folio_can_map_prot_numa()) | TNF_SHARED when another mm maps the folio | yes (shmem is not file LRU: no VM_EXEC or dirty refusal) |
//! | hugetlbfs | skipped, `unsuitable` (is_vm_hugetlb_page()) | never reached | never | never by balancing |
//! | guest_memfd (6.18+) | not in the address space | never reached | never | unmovable (GFP_HIGHUSER) |
//!
//! A VMA with a memory policy set by mbind() has no MPOL_F_MOF (only MPOL_F_NUMA_BALANCING
//! sets it, and only for bind), so vma_policy_mof() is false and task_numa_work() skips the
//! VMA as `unsuitable`; its pages are placed by the policy when they are allocated.
//!
//! Simplified (one line each):
//! - each mapper of a memfd has its own protnone bit per page (one mm's scan changes and
//!   notifies only its own PTEs), but the rest of the PTE is shared: a page is present and
//!   young for all mappers once one faulted or touched it (the minor fault that maps a
//!   cached page is not modelled);
//! - a group spanning processes is the process group of the mm whose task the fault's
//!   cpupid names (task_numa_group() takes that task's own group), ties going to the lower pid;
//! - memfd memory is never mapped read-only (so never skipped as `shared_ro`) and is never
//!   munmap()ed; its THPs (`kernel.shmem_enabled`) are in `shmem.rs`;
//! - the hugetlb pool is reserved at boot round-robin over the nodes, as `hugepages=` on
//!   the command line does, with as many pages as the hugetlbfs VMAs need; secondary MMUs
//!   map hugetlb pages at 4 KiB;
//! - `bind` falls back along the zonelist outside its nodes when they are full (the kernel
//!   would reclaim, then fail); MPOL_F_NUMA_BALANCING is not modelled;
//! - guest_memfd memory has 4 KiB pages and is allocated on the vCPU's node or by its policy
//!   at the vCPU's first fault (kvm_gmem_get_pfn()); no host thread touches it.

use bevy_ecs::entity::Entity;
use bevy_ecs::resource::Resource;

use super::{PTE_PROTNONE, PTE_YOUNG, PageIdx, Vma};
pub use crate::config::{Backing, HugetlbPage, MemPolicy, MpolMode};
use crate::kernel::Kernel;
use crate::machine::Nid;

impl Backing {
    /// Whether get_mm_rss() counts the kind's pages (MM_ANONPAGES, MM_SHMEMPAGES); hugetlb
    /// pages are counted apart and guest_memfd pages are not mapped.
    pub fn in_rss(self) -> bool {
        matches!(self, Backing::Anon | Backing::Memfd)
    }
}

impl MemPolicy {
    /// The node a page is allocated on: policy_nodemask() and the preferred node for `mode`.
    /// `local`: the faulting CPU's node; `zonelist`: its nodes by distance; `ilx`: the page's
    /// offset in the file (interleave_nid() counts from the mapping's start).
    pub fn node(&self, local: Nid, zonelist: &[Nid], ilx: u64) -> Nid {
        match self.mode {
            MpolMode::Preferred => self.nodes[0] as Nid,
            MpolMode::Interleave => self.nodes[(ilx % self.nodes.len() as u64) as usize] as Nid,
            MpolMode::Bind => {
                let allowed = |n: &&Nid| self.nodes.contains(&u32::from(**n));
                zonelist.iter().find(allowed).copied().unwrap_or(local)
            }
        }
    }
}

/// Where a page of VMA `v` is allocated for a fault from node `local`: by the VMA's policy,
/// else on the local node (the default policy).
pub fn alloc_node(k: &Kernel, v: &Vma, page: PageIdx, local: Nid) -> Nid {
    match &v.mempolicy {
        Some(pol) => pol.node(local, k.topo.zonelist(local), u64::from(page - v.base)),
        None => local,
    }
}

/// The mms that map VMA `v`'s pages: its own `mm`, and every mm mapping the same memfd.
pub fn mappers(k: &Kernel, mm: Entity, v: &Vma) -> Vec<Entity> {
    v.memfd.map_or_else(|| vec![mm], |id| k.kinds.memfds[id as usize].mappers.clone())
}

/// The mms that map global page `page` of `mm` (just `mm` where it maps no such page).
pub fn page_mappers(k: &Kernel, mm: Entity, page: PageIdx) -> Vec<Entity> {
    let m = k.mms.get(mm).expect("live mm");
    m.vma_of_page(page).map_or_else(|| vec![mm], |vi| mappers(k, mm, &m.vmas[vi]))
}

/// A memfd: its pages' first global index, the mms mapping it, and each mapper's own
/// protnone bits. The frame state (node, pins, references, last_cpupid) is the page-cache
/// folio's and stays in [`super::Pages`], shared; the PTE's protnone bit is per mm, since
/// each mm has its own page table over the folio.
#[derive(Debug, Clone)]
pub struct Memfd {
    pub base: PageIdx,
    pub mappers: Vec<Entity>,
    pages: u64,
    /// Per mapper (in `mappers`' order), a bit per page: that mm's PTE is protnone. The
    /// shared PTE's PTE_PROTNONE is set while any mapper's bit is, so a touch of a page no
    /// mapper made protnone takes the fast path as an anonymous page does.
    protnone: Vec<Vec<u64>>,
}

impl Memfd {
    pub fn new(base: PageIdx, pages: u64) -> Self {
        Self { base, mappers: Vec::new(), pages, protnone: Vec::new() }
    }

    pub fn add_mapper(&mut self, mm: Entity) {
        self.mappers.push(mm);
        self.protnone.push(vec![0; self.pages.div_ceil(64) as usize]);
    }

    fn mapper(&self, mm: Entity) -> usize {
        self.mappers.iter().position(|&m| m == mm).expect("a mapper of the memfd")
    }

    /// The word and bit of `page` in a mapper's bitmap.
    fn bit(&self, page: PageIdx) -> (usize, u64) {
        let i = u64::from(page - self.base);
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn protnone_in(&self, mm: Entity, page: PageIdx) -> bool {
        let (w, b) = self.bit(page);
        self.protnone[self.mapper(mm)][w] & b != 0
    }

    fn set_protnone(&mut self, mm: Entity, page: PageIdx, on: bool) {
        self.set_protnone_range(mm, page, 1, on);
    }

    fn set_protnone_range(&mut self, mm: Entity, first: PageIdx, pages: u64, on: bool) {
        let who = self.mapper(mm);
        for page in first..first + pages as PageIdx {
            let (w, b) = self.bit(page);
            if on { self.protnone[who][w] |= b } else { self.protnone[who][w] &= !b }
        }
    }

    /// The memfd's pages, from [`Memfd::base`].
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether any mapper's PTE for `page` is protnone.
    pub fn any_protnone(&self, page: PageIdx) -> bool {
        let (w, b) = self.bit(page);
        self.protnone.iter().any(|bits| bits[w] & b != 0)
    }

    /// Every mapper's PTE for `page` is rebuilt accessible.
    fn clear_all(&mut self, page: PageIdx) {
        let (w, b) = self.bit(page);
        for bits in &mut self.protnone {
            bits[w] &= !b;
        }
    }
}

/// Whether `mm`'s own PTE for `page` is protnone (`memfd`: its VMA's): the shared PTE's bit
/// for any mapping but a memfd's, whose mappers each have their own.
pub fn pte_protnone_in(k: &Kernel, mm: Entity, memfd: Option<u32>, page: PageIdx) -> bool {
    k.pages.protnone(page) && memfd.is_none_or(|id| k.kinds.memfds[id as usize].protnone_in(mm, page))
}

/// The flags of `mm`'s own PTE for `page` (`memfd`: its VMA's): the shared PTE's, without
/// PTE_PROTNONE where only another mapper's PTE is protnone.
pub fn pte_flags_in(k: &Kernel, mm: Entity, memfd: Option<u32>, page: PageIdx) -> u8 {
    let flags = k.pages.pte(page).flags;
    if flags & PTE_PROTNONE != 0 && !pte_protnone_in(k, mm, memfd, page) { flags & !PTE_PROTNONE } else { flags }
}

/// [`pte_protnone_in`] for a page of `mm` whose VMA the caller has not looked up.
pub fn protnone_at(k: &Kernel, mm: Entity, page: PageIdx) -> bool {
    if !k.pages.protnone(page) {
        return false;
    }
    let m = k.mms.get(mm).expect("live mm");
    pte_protnone_in(k, mm, m.vma_of_page(page).and_then(|vi| m.vmas[vi].memfd), page)
}

/// change_pte_range() made `mm`'s PTE for `page` protnone (`memfd`: the VMA's).
pub fn make_pte_protnone(k: &mut Kernel, mm: Entity, memfd: Option<u32>, page: PageIdx) {
    let i = k.pages.slot_mut(page);
    k.pages.slots.pte_mut(i).flags |= PTE_PROTNONE;
    if let Some(id) = memfd {
        k.kinds.memfds[id as usize].set_protnone(mm, page, true);
    }
}

/// change_huge_pmd() made `mm`'s PMD over the THP at `head` protnone (`memfd`: the VMA's; only
/// that mapper's PMD, the folio's other mappers keep theirs).
pub fn make_pmd_protnone(k: &mut Kernel, mm: Entity, memfd: Option<u32>, head: PageIdx) {
    for i in k.pages.chunk_slots(head) {
        k.pages.slots.pte_mut(i).flags |= PTE_PROTNONE;
    }
    if let Some(id) = memfd {
        k.kinds.memfds[id as usize].set_protnone_range(mm, head, super::HPAGE_PMD_NR, true);
    }
}

/// do_huge_pmd_numa_page() made `mm`'s PMD over the THP at `head` accessible and young again
/// (`memfd`: the VMA's). The folio stays protnone for a mapper whose own PMD still is.
pub fn restore_pmd(k: &mut Kernel, mm: Entity, memfd: Option<u32>, head: PageIdx) {
    let others = memfd.is_some_and(|id| {
        let memfd = &mut k.kinds.memfds[id as usize];
        memfd.set_protnone_range(mm, head, super::HPAGE_PMD_NR, false);
        memfd.any_protnone(head)
    });
    for i in k.pages.chunk_slots(head) {
        let pte = k.pages.slots.pte_mut(i);
        if !others {
            pte.flags &= !PTE_PROTNONE;
        }
        pte.flags |= PTE_YOUNG;
    }
}

/// do_numa_page() made `mm`'s PTE for `page` accessible again (`memfd`: the VMA's), and the
/// access that faulted set its accessed bit. Another mapper's protnone PTE stays.
pub fn restore_pte(k: &mut Kernel, mm: Entity, memfd: Option<u32>, page: PageIdx) {
    let others = memfd.is_some_and(|id| {
        let memfd = &mut k.kinds.memfds[id as usize];
        memfd.set_protnone(mm, page, false);
        memfd.any_protnone(page)
    });
    let i = k.pages.slot_mut(page);
    let pte = k.pages.slots.pte_mut(i);
    if !others {
        pte.flags &= !PTE_PROTNONE;
    }
    pte.flags |= PTE_YOUNG;
}

/// remove_migration_ptes() rebuilt every mapper's PTE for the migrated `pages` from
/// `vma->vm_page_prot` (mm/migrate.c, 6.1.192, 6.12.117 and 7.3.4: a migration entry keeps no
/// protnone bit), so no mapper of a memfd is left protnone there. The caller restores the
/// faulting mm's PTE.
pub fn migrated_ptes_rebuilt(k: &mut Kernel, mm: Entity, first: PageIdx, pages: u64) {
    let m = k.mms.get(mm).expect("live mm");
    let Some(id) = m.vma_of_page(first).and_then(|vi| m.vmas[vi].memfd) else {
        return;
    };
    for p in first..first + pages as PageIdx {
        k.kinds.memfds[id as usize].clear_all(p);
    }
}

/// The memory kinds' shared state: the hugetlb pool and each memfd's mappers.
#[derive(Resource, Debug, Default, Clone)]
pub struct MemKinds {
    pub pool: HugetlbPool,
    /// Per memfd (a VMA's `memfd` id).
    pub memfds: Vec<Memfd>,
}

/// The boot-time hugetlb pool: free huge pages per node and size (the `hugepages=` and
/// `hugepagesz=` reservation), in 4 KiB pages.
#[derive(Resource, Debug, Default, Clone)]
pub struct HugetlbPool {
    /// Per node: free pool pages (4 KiB units) of each size, 2M then 1G.
    free: Vec<[u64; 2]>,
}

impl HugetlbPool {
    fn index(size: HugetlbPage) -> usize {
        match size {
            HugetlbPage::Size2M => 0,
            HugetlbPage::Size1G => 1,
        }
    }

    /// 4 KiB pages the pool holds free on node `nid`, all sizes.
    pub fn free_pages(&self, nid: Nid) -> u64 {
        self.free.get(nid as usize).map_or(0, |f| f[0] + f[1])
    }
}

/// Reserves `count` huge pages of `size` at boot, round-robin over the nodes from where the
/// last reservation stopped (hstate_next_node_to_alloc()), a node without room passed over.
/// Returns false when no node had room for one.
pub fn hugetlb_reserve(k: &mut Kernel, size: HugetlbPage, count: u64, next: &mut u32) -> bool {
    let nodes = k.topo.nr_nodes;
    k.kinds.pool.free.resize(nodes as usize, [0; 2]);
    let n = size.pages();
    for _ in 0..count {
        let Some(nid) = (0..nodes).map(|i| ((*next + i) % nodes) as Nid).find(|&nid| k.pgdat(nid).free_pages >= n)
        else {
            return false;
        };
        k.pgdat(nid).free_pages -= n;
        k.kinds.pool.free[nid as usize][HugetlbPool::index(size)] += n;
        *next = (u32::from(nid) + 1) % nodes;
    }
    true
}

/// Models hugetlb_fault() → hugetlb_no_page() → alloc_hugetlb_folio(): the huge page holding
/// `page` in VMA `v` is dequeued from the pool on the policy's or the faulting CPU's node, or
/// the nearest node with a free one (dequeue_hugetlb_folio_nodemask() walks the zonelist),
/// and mapped young on every subpage. Returns false when the pool is empty (SIGBUS).
pub fn hugetlb_fault(k: &mut Kernel, v: &Vma, page: PageIdx, size: HugetlbPage, local: Nid) -> bool {
    let n = size.pages();
    let head = v.base + ((u64::from(page - v.base) / n) * n) as PageIdx;
    let want = alloc_node(k, v, head, local);
    let i = HugetlbPool::index(size);
    let zonelist = k.topo.zonelist(want).to_vec();
    let Some(nid) = zonelist.into_iter().find(|&nid| k.kinds.pool.free.get(nid as usize).is_some_and(|f| f[i] >= n))
    else {
        return false;
    };
    k.kinds.pool.free[nid as usize][i] -= n;
    let runs: Vec<(PageIdx, u64, usize)> = k.pages.runs(head, n).collect();
    for (_, _, s) in runs {
        let pte = k.pages.slots.pte_mut(s);
        pte.nid = nid;
        pte.flags |= PTE_YOUNG;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_pick_the_nodes_mbind_gives() {
        let zonelist = [1, 0, 2, 3];
        let bind = MemPolicy { mode: MpolMode::Bind, nodes: vec![2, 3] };
        assert_eq!(bind.node(1, &zonelist, 0), 2, "the nearest allowed node by distance");
        let bind_local = MemPolicy { mode: MpolMode::Bind, nodes: vec![1, 3] };
        assert_eq!(bind_local.node(1, &zonelist, 0), 1, "the local node when allowed");
        let preferred = MemPolicy { mode: MpolMode::Preferred, nodes: vec![3] };
        assert_eq!(preferred.node(1, &zonelist, 7), 3);
        let interleave = MemPolicy { mode: MpolMode::Interleave, nodes: vec![0, 2] };
        let nodes: Vec<Nid> = (0..4).map(|i| interleave.node(1, &zonelist, i)).collect();
        assert_eq!(nodes, [0, 2, 0, 2]);
    }

    #[test]
    fn hugetlb_sizes() {
        assert_eq!(HugetlbPage::Size2M.mib(), 2);
        assert_eq!(HugetlbPage::Size1G.mib(), 1024);
        assert!(Backing::Memfd.in_rss() && !Backing::Hugetlbfs.in_rss() && !Backing::GuestMemfd.in_rss());
    }
}
