//! Memory management: address spaces (mm_struct, VMAs) and the page array.
//!
//! Pages are not entities. Every page of every VMA has a global page number and its state a
//! slot in [`Pages`], a struct-of-arrays resource with a directory per 2 MiB chunk, so the
//! hot paths (a CPU touch, a scanner pass) are loops over plain arrays. 4 KiB pages cost 12
//! bytes each and 3 bytes per 512 (the settled blocks of `slots.rs`); a THP-backed chunk 16
//! bytes for all 512 pages.

pub mod backing;
pub mod gup;
pub mod huge_memory;
pub mod ksm;
pub mod memory;
pub mod memory_tiers;
pub mod migrate;
pub mod mmu_notifier;
pub mod mprotect;
pub mod numa_balancing;
pub mod page_alloc;
pub mod shmem;
pub mod slots;
pub mod userfaultfd;
pub mod vmscan;

use bevy_ecs::component::Component;
use bevy_ecs::resource::Resource;

use crate::engine::Nanos;
use crate::machine::{NUMA_NO_NODE, Nid};
pub use slots::Slots;
use slots::UNTOUCHED;

/// log2 of the base page size (4 KiB).
pub const PAGE_SHIFT: u32 = 12;

pub use crate::units::PageIdx;

/// PTE bit: the PTE is PROT_NONE for NUMA hinting (`pte_protnone()` in an accessible VMA).
pub const PTE_PROTNONE: u8 = 1 << 0;
/// PTE bit: the accessed ("young") bit of the primary PTE.
pub const PTE_YOUNG: u8 = 1 << 1;
/// Page flag: the page is a KSM page (PageKsm()).
pub const PG_KSM: u8 = 1 << 2;
/// PTE bit: the PTE maps the shared zero page (a read fault of untouched anonymous memory,
/// `pte_mkspecial(pfn_pte(my_zero_pfn()))`): no folio, no RSS, on [`ZERO_PAGE_NID`].
pub const PTE_ZERO: u8 = 1 << 3;
/// ksmd's rmap_item for the page holds the checksum of its current content
/// (`rmap_item->oldchecksum == calc_checksum(page)`): set when ksmd first scans the page,
/// cleared when the content changes. Kept beside the PTE bits because it costs no byte.
pub const RMAP_CHECKSUMMED: u8 = 1 << 4;
/// PTE bit: `_PAGE_UFFD` (7.3). In a VM_UFFD_RWP VMA, on top of PTE_PROTNONE, it marks a PTE
/// that UFFDIO_RWPROTECT armed: its next access is an RWP fault, not a NUMA hinting fault.
pub const PTE_UFFD: u8 = 1 << 5;
/// What a write must copy before it may proceed (do_wp_page()): a KSM page or the zero page.
pub const PTE_COW: u8 = PG_KSM | PTE_ZERO;
/// The node of the shared zero page (x86's empty_zero_page sits in the kernel image).
pub const ZERO_PAGE_NID: Nid = 0;

/// `last_cpupid` of a page that has never taken a hinting fault (`-1 & LAST_CPUPID_MASK`).
pub const CPUPID_UNSET: u32 = u32::MAX;
/// Bits of the pid kept in a cpupid (LAST__PID_SHIFT in include/linux/page-flags-layout.h).
const LAST_PID_BITS: u32 = 8;
const LAST_PID_MASK: u32 = (1 << LAST_PID_BITS) - 1;

/// `cpu_pid_to_cpupid()`: the CPU and the low 8 bits of the pid, as the kernel packs them.
#[inline]
pub fn cpu_pid_to_cpupid(cpu: u32, pid: u32) -> u32 {
    (cpu << LAST_PID_BITS) | (pid & LAST_PID_MASK)
}

/// `cpupid_to_cpu()`.
#[inline]
pub fn cpupid_to_cpu(cpupid: u32) -> u32 {
    cpupid >> LAST_PID_BITS
}

/// Models cpupid_pid_unset() in include/linux/mm.h (6.1, 6.12): only the pid bits are
/// tested, so a real pid whose low 8 bits are all ones (255, 511, ...) reads as unset.
#[inline]
pub fn cpupid_pid_unset(cpupid: u32) -> bool {
    cpupid & LAST_PID_MASK == LAST_PID_MASK
}

/// Models __cpupid_match_pid(): compares only the pid bits the cpupid keeps (an unset
/// cpupid matches the pids that collide with it, as in the kernel).
#[inline]
pub fn cpupid_match_pid(pid: u32, cpupid: u32) -> bool {
    (cpupid & LAST_PID_MASK) == (pid & LAST_PID_MASK)
}

/// What a touch reads first: where the frame is and how the PTE maps it. Kept together so
/// a touch costs one cache miss, not two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(2))]
pub struct Pte {
    /// Node of the frame backing the page, or [`NUMA_NO_NODE`] before the first touch.
    pub nid: Nid,
    /// PTE bits and page flags (`PTE_*`, `PG_*`).
    pub flags: u8,
}

/// Pages per chunk of the page directory: one PMD's worth (HPAGE_PMD_NR).
pub(crate) const CHUNK_SHIFT: u32 = 9;
pub(crate) const CHUNK: usize = 1 << CHUNK_SHIFT;
/// Directory entry bit: the chunk's 512 pages share one slot (a THP or an untouched block).
const DIR_COMPACT: u32 = 1 << 31;

/// Per-page accessors for the fields of [`Slots`]: `name(page)` reads the page's slot,
/// `name_mut(page)` gives it a slot of its own first.
macro_rules! per_page {
    ($($get:ident, $set:ident: $t:ty;)*) => {$(
        #[inline]
        pub fn $get(&self, page: PageIdx) -> $t {
            self.slots.$get[self.slot(page)]
        }

        pub fn $set(&mut self, page: PageIdx) -> &mut $t {
            let s = self.slot_mut(page);
            &mut self.slots.$get[s]
        }
    )*};
}

/// Per-page state, kept per PMD-sized chunk of 512 global pages: a chunk maps its pages to
/// 512 slots of [`Slots`] (4 KiB pages: 12 bytes per page), or to one slot all 512 share
/// (compact: a THP, the huge zero page, or a THP-eligible block not yet faulted), which
/// costs 12 bytes per 2 MiB. A compact chunk is expanded into 512 copies of its slot the
/// first time one page needs state of its own ([`Pages::slot_mut`]: a 4 KiB fault, a split,
/// a pin, KSM content), which no caller can tell from the compact form; THP-wide changes
/// write [`Pages::chunk_slots`]. Never compacted again (khugepaged is not modelled).
/// Without THP every chunk is expanded in order, so slot `i` is page `i` and the 4 KiB
/// paths skip the directory.
#[derive(Resource, Debug)]
pub struct Pages {
    /// Slot `i` is page `i` (no chunk was ever compact): [`Pages::slot`] needs no lookup.
    identity: bool,
    /// Per chunk: its first slot, or `DIR_COMPACT | slot` (empty while `identity`).
    dir: Vec<u32>,
    /// Chunks of 512 pages laid out.
    chunks: usize,
    /// Pages in use (the last chunk may be partly used).
    len: usize,
    pub slots: Slots,
}

impl Default for Pages {
    fn default() -> Self {
        Self { identity: true, dir: Vec::new(), chunks: 0, len: 0, slots: Slots::default() }
    }
}

impl Pages {
    /// Appends `n` untouched pages and returns the index of the first. With `thp`, they start
    /// on a chunk boundary (PMD blocks of a VMA with a PMD-aligned start are then whole
    /// chunks) and whole chunks start compact.
    pub fn grow(&mut self, n: u64, thp: bool) -> PageIdx {
        let base = if thp { self.len.next_multiple_of(CHUNK) } else { self.len };
        let new_len = base + n as usize;
        assert!(new_len <= PageIdx::MAX as usize, "more pages than a PageIdx can address");
        if self.identity && !thp {
            // Slot i is page i: exactly as many slots as pages.
            self.slots.reserve_exact(new_len - self.slots.len());
            self.slots.push(new_len - self.slots.len(), UNTOUCHED);
            self.chunks = new_len.div_ceil(CHUNK);
            self.len = new_len;
            return base as PageIdx;
        }
        let chunks = new_len.div_ceil(CHUNK).saturating_sub(self.chunks);
        if self.identity {
            // The first THP-eligible pages: from now on slots go through the directory, and
            // the last chunk so far gets all its 512 slots.
            self.identity = false;
            self.slots.push(self.chunks * CHUNK - self.slots.len(), UNTOUCHED);
            self.dir = (0..self.chunks).map(|c| (c * CHUNK) as u32).collect();
        }
        // With THP, a chunk wholly inside the new pages starts compact.
        let compact = |c: usize| thp && c * CHUNK >= base && (c + 1) * CHUNK <= new_len;
        let new_chunks = self.chunks..self.chunks + chunks;
        self.dir.reserve_exact(chunks);
        self.slots.reserve_exact(new_chunks.map(|c| if compact(c) { 1 } else { CHUNK }).sum());
        while self.chunks * CHUNK < new_len {
            let first = self.slots.len();
            assert!(first + CHUNK < DIR_COMPACT as usize, "more page slots than the directory can address");
            let compact = compact(self.chunks);
            self.slots.push(if compact { 1 } else { CHUNK }, UNTOUCHED);
            self.dir.push(if compact { DIR_COMPACT | first as u32 } else { first as u32 });
            self.chunks += 1;
        }
        self.len = new_len;
        base as PageIdx
    }

    /// Directory entry of chunk `c`.
    #[inline]
    fn entry(&self, c: usize) -> u32 {
        if self.identity { (c * CHUNK) as u32 } else { self.dir[c] }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Chunks of 512 pages laid out (the last may be partly used).
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot holding page `page`'s state (shared by its chunk when compact).
    #[inline]
    pub fn slot(&self, page: PageIdx) -> usize {
        if self.identity {
            return page as usize;
        }
        let e = self.dir[(page >> CHUNK_SHIFT) as usize];
        // Branch-free: a compact entry adds no offset within the chunk.
        let mask = (e >> 31).wrapping_sub(1) & (CHUNK as u32 - 1);
        ((e & !DIR_COMPACT) + (page & mask)) as usize
    }

    /// The slot of page `page`, for a change to that page alone: a compact chunk is
    /// expanded first.
    pub fn slot_mut(&mut self, page: PageIdx) -> usize {
        self.expand(page);
        self.slot(page)
    }

    /// Gives every page of `page`'s chunk a slot of its own, a copy of the shared one.
    pub fn expand(&mut self, page: PageIdx) {
        let c = (page >> CHUNK_SHIFT) as usize;
        let e = self.entry(c);
        if e & DIR_COMPACT != 0 {
            let first = self.slots.len();
            assert!(first + CHUNK < DIR_COMPACT as usize, "more page slots than the directory can address");
            // Grow by a thirty-second, not by doubling: expansions come one chunk at a time.
            if self.slots.capacity() < first + CHUNK {
                self.slots.reserve_exact((first / 32).max(CHUNK));
            }
            let shared = self.slots.get((e & !DIR_COMPACT) as usize);
            self.slots.push(CHUNK, shared);
            self.dir[c] = first as u32;
        }
    }

    /// Whether `page`'s chunk is compact (its pages share one slot).
    pub fn is_compact(&self, page: PageIdx) -> bool {
        self.entry((page >> CHUNK_SHIFT) as usize) & DIR_COMPACT != 0
    }

    /// The distinct slots of the chunk holding `page`: the shared one, or 512.
    pub fn chunk_slots(&self, page: PageIdx) -> std::ops::Range<usize> {
        let e = self.entry((page >> CHUNK_SHIFT) as usize);
        let first = (e & !DIR_COMPACT) as usize;
        first..first + if e & DIR_COMPACT != 0 { 1 } else { CHUNK }
    }

    /// The slots of the folio of `nr` pages at `first`: one page's, or a THP's chunk's.
    pub fn folio_slots(&self, first: PageIdx, nr: u64) -> std::ops::Range<usize> {
        if nr > 1 {
            self.chunk_slots(first)
        } else {
            let s = self.slot(first);
            s..s + 1
        }
    }

    /// `pages` from `first` as runs of pages sharing a slot: `(page, count, slot)`.
    pub fn runs(&self, first: PageIdx, pages: u64) -> impl Iterator<Item = (PageIdx, u64, usize)> + '_ {
        let end = u64::from(first) + pages;
        let mut page = u64::from(first);
        std::iter::from_fn(move || {
            (page < end).then(|| {
                let p = page as PageIdx;
                let n = if self.is_compact(p) { (u64::from(p | (CHUNK as u32 - 1)) + 1).min(end) - page } else { 1 };
                page += n;
                (p, n, self.slot(p))
            })
        })
    }

    /// `pages` from `first` as spans of consecutive slots, each with the pages one of its
    /// slots stands for: one span of single pages without THP; per chunk otherwise (its 512
    /// slots, or a compact chunk's one slot for all its pages in the range).
    pub fn spans(&self, first: PageIdx, pages: u64) -> impl Iterator<Item = (std::ops::Range<usize>, u64)> + '_ {
        let end = u64::from(first) + pages;
        let mut page = u64::from(first);
        std::iter::from_fn(move || {
            (page < end).then(|| {
                let p = page as PageIdx;
                let stop = if self.identity { end } else { (u64::from(p | (CHUNK as u32 - 1)) + 1).min(end) };
                let (s, n) = (self.slot(p), stop - page);
                page = stop;
                if self.is_compact(p) { (s..s + 1, n) } else { (s..s + n as usize, 1) }
            })
        })
    }

    /// The PTE of page `page`.
    #[inline]
    pub fn pte(&self, page: PageIdx) -> Pte {
        self.slots.pte(self.slot(page))
    }

    /// Page `page`'s PTE, for a change to that page alone (a compact chunk is expanded).
    pub fn pte_mut(&mut self, page: PageIdx) -> &mut Pte {
        let s = self.slot_mut(page);
        self.slots.pte_mut(s)
    }

    per_page! {
        last_cpupid, last_cpupid_mut: u32;
        refs, refs_mut: u8;
        content, content_mut: u16;
    }

    /// Page `page`'s FOLL_PIN pins.
    #[inline]
    pub fn pins(&self, page: PageIdx) -> u8 {
        self.slots.pins(self.slot(page))
    }

    /// Page `page`'s pins, to change (a compact chunk is expanded: pins are per subpage).
    pub fn pins_mut(&mut self, page: PageIdx) -> &mut u8 {
        let s = self.slot_mut(page);
        self.slots.pins_mut(s)
    }

    #[inline]
    pub fn present(&self, page: PageIdx) -> bool {
        self.pte(page).nid != NUMA_NO_NODE
    }

    /// Whether the page has a frame of its own (a folio), not the shared zero page.
    #[inline]
    pub fn has_folio(&self, page: PageIdx) -> bool {
        self.present(page) && self.pte(page).flags & PTE_ZERO == 0
    }

    #[inline]
    pub fn protnone(&self, page: PageIdx) -> bool {
        self.pte(page).flags & PTE_PROTNONE != 0
    }

    /// Settles the blocks holding pages `first..first + pages` that can be (populated memory
    /// need not wait for touches to find it settled).
    pub fn settle(&mut self, first: PageIdx, pages: u64) {
        // Consecutive compact chunks have consecutive slots: one range, each block checked
        // once, not once per chunk.
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        for (slots, _) in self.spans(first, pages) {
            match ranges.last_mut() {
                Some(r) if r.end == slots.start => r.end = slots.end,
                _ => ranges.push(slots),
            }
        }
        for r in ranges {
            self.slots.settle(r);
        }
    }

    /// Starts loading the state a touch of `page` reads into the cache: nothing when the
    /// page's block is settled.
    #[inline]
    pub fn prefetch(&self, page: PageIdx) {
        let s = self.slot(page);
        if self.slots.settled_nid(s).is_none() {
            self.slots.prefetch_pte(s);
        }
    }

    /// Bytes of simulator memory the page state holds (allocated capacity).
    pub fn bytes(&self) -> usize {
        self.slots.bytes() + self.dir.capacity() * std::mem::size_of::<u32>()
    }
}

/// Per-VMA NUMA balancing state (struct vma_numab_state).
#[derive(Clone, Debug, Default)]
pub struct VmaNumab {
    pub next_scan: Nanos,
    pub pids_active_reset: Nanos,
    /// Hashed pids that faulted in this VMA, in the previous and the current window.
    pub pids_active: [u64; 2],
    pub start_scan_seq: u32,
    pub prev_scan_seq: u32,
}

/// Pages in a PMD (HPAGE_PMD_NR): a THP maps 2 MiB.
pub const HPAGE_PMD_NR: u64 = 512;

/// What maps one PMD-sized (2 MiB) block of a THP-eligible VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pmd {
    /// Nothing yet (pmd_none(): no page table).
    None,
    /// A page table of 4 KiB PTEs.
    Table,
    /// A THP, all 512 subpages on one node with one set of PTE bits.
    Huge,
    /// The huge zero page, mapped by a read fault.
    HugeZero,
    /// A THP mapped by 512 PTEs after __split_huge_pmd(): still one large folio, until a
    /// split_huge_page() (KSM) makes its subpages folios of their own.
    PteMapped,
}

/// A virtual memory area: anonymous private memory unless `backing` says otherwise.
#[derive(Clone, Debug)]
pub struct Vma {
    pub name: String,
    /// First virtual page (address >> PAGE_SHIFT) and length in pages.
    pub start: u64,
    pub pages: u64,
    /// Global index of the VMA's first page in [`Pages`].
    pub base: PageIdx,
    /// `vma_is_accessible()`: false after mprotect(PROT_NONE) or munmap().
    pub accessible: bool,
    /// munmap() removed the VMA (kept in place so indices stay stable).
    pub unmapped: bool,
    /// Set by madvise(MADV_MERGEABLE): ksmd scans it.
    pub mergeable: bool,
    /// Initialised on the first scan (vma->numab_state).
    pub numab: Option<VmaNumab>,
    /// THPs may back the VMA (thp_vma_allowable_order(): the sysfs setting and madvise()).
    pub thp: bool,
    /// VM_HUGEPAGE (madvise(MADV_HUGEPAGE)): with the default defrag setting its THP faults
    /// may reclaim, and so fall back to a remote node (vma_thp_gfp_mask()).
    pub vm_hugepage: bool,
    /// VM_NO_NUMA_BALANCING (`kernel.no_numa_balancing_vmas`; proposed, not in a kernel):
    /// task_numa_work() skips the VMA.
    pub no_numa_balancing: bool,
    /// The state of each whole 2 MiB block, for a THP-eligible VMA that starts on a PMD
    /// boundary (empty otherwise: every fault maps 4 KiB).
    pub pmds: Vec<Pmd>,
    /// VM_UFFD_RWP: registered with UFFDIO_REGISTER_MODE_RWP, and how its faults resolve.
    pub uffd_rwp: Option<userfaultfd::RwpMode>,
    /// What backs the VMA (see `backing.rs`).
    pub backing: backing::Backing,
    /// The memfd this VMA maps (an index into `MemKinds::memfds`), for a memfd VMA.
    pub memfd: Option<u32>,
    /// The huge page size of a hugetlbfs VMA.
    pub hugetlb: backing::HugetlbPage,
    /// The policy mbind() set on the VMA; `None`: the task's (local) policy.
    pub mempolicy: Option<backing::MemPolicy>,
}

impl Vma {
    pub fn end(&self) -> u64 {
        self.start + self.pages
    }

    /// Global page index of virtual page `vpn` (inside the VMA).
    #[inline]
    pub fn page(&self, vpn: u64) -> PageIdx {
        self.base + (vpn - self.start) as PageIdx
    }

    /// The PMD block holding virtual page `vpn`, when THPs may map it.
    #[inline]
    pub fn pmd_block(&self, vpn: u64) -> Option<usize> {
        let b = ((vpn - self.start) / HPAGE_PMD_NR) as usize;
        (b < self.pmds.len()).then_some(b)
    }

    /// Global index of the first page of PMD block `b`.
    pub fn block_page(&self, b: usize) -> PageIdx {
        self.base + (b as u64 * HPAGE_PMD_NR) as PageIdx
    }

    /// Sets THP eligibility and lays out the blocks (thp_vma_suitable_order(): a block must
    /// lie wholly inside the VMA, on a PMD-aligned address).
    pub fn set_thp(&mut self, thp: bool) {
        self.thp = thp;
        let aligned = self.start.is_multiple_of(HPAGE_PMD_NR);
        self.pmds = if thp && aligned { vec![Pmd::None; (self.pages / HPAGE_PMD_NR) as usize] } else { Vec::new() };
    }

    /// `vma_set_access_pid_bit()`: remember that `pid` faulted in this VMA.
    pub fn set_access_pid_bit(&mut self, pid: u32) {
        if let Some(numab) = &mut self.numab {
            numab.pids_active[1] |= 1 << hash_32(pid, 6);
        }
    }
}

/// `hash_32()` from include/linux/hash.h.
pub fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

/// An address space (struct mm_struct): a process, or a VM's memory as its host process.
#[derive(Component, Debug)]
pub struct Mm {
    /// The process id (tgid) and name.
    pub pid: u32,
    pub name: String,
    pub vmas: Vec<Vma>,
    /// Earliest time of the next scan (mm->numa_next_scan).
    pub numa_next_scan: Nanos,
    /// Virtual page where the next scan resumes (mm->numa_scan_offset).
    pub numa_scan_offset: u64,
    /// Completed passes over the address space (mm->numa_scan_seq).
    pub numa_scan_seq: u32,
    /// Resident pages (get_mm_rss()).
    pub rss: u64,
    /// Threads using the mm (get_nr_threads(), mm_users): from 1, the main thread fork()
    /// made, whether or not it runs.
    pub nr_threads: u32,
    /// The process's numa_group (see sched/numa.rs for the simplification).
    pub numa_group: Option<crate::sched::numa::NumaGroup>,
    /// cpuset.mems as a node mask (`cpuset_current_mems_allowed`); all ones without a cpuset.
    pub mems_allowed: u64,
    /// Opted out of NUMA balancing (`kernel.no_numa_balancing_processes`; proposed, not in a
    /// kernel: a prctl() setting an mm flag): its threads never queue task_numa_work().
    pub no_numa_balancing: bool,
}

impl Mm {
    pub fn new(pid: u32, name: &str, scan_delay: Nanos) -> Self {
        Self {
            pid,
            name: name.to_string(),
            vmas: Vec::new(),
            numa_next_scan: scan_delay,
            numa_scan_offset: 0,
            numa_scan_seq: 0,
            rss: 0,
            nr_threads: 1,
            numa_group: None,
            mems_allowed: u64::MAX,
            no_numa_balancing: false,
        }
    }

    /// Adds a VMA after the last one (a gap of one page between VMAs, like guard pages).
    /// With `pmd_align`, a VMA of 2 MiB or more starts on a PMD boundary, as
    /// thp_get_unmapped_area() places large anonymous mappings when THP is on.
    pub fn add_vma(&mut self, name: &str, pages: u64, base: PageIdx, pmd_align: bool) -> usize {
        let align = if pmd_align && pages >= HPAGE_PMD_NR { HPAGE_PMD_NR } else { 1 };
        self.add_vma_aligned(name, pages, base, align)
    }

    /// Adds a VMA after the last one, starting on a multiple of `align` pages (a hugetlbfs
    /// mapping starts on its huge page size, hugetlb_get_unmapped_area()).
    pub fn add_vma_aligned(&mut self, name: &str, pages: u64, base: PageIdx, align: u64) -> usize {
        let start = self.vmas.last().map_or(16, |v| v.end() + 1).next_multiple_of(align);
        self.vmas.push(Vma {
            name: name.to_string(),
            start,
            pages,
            base,
            accessible: true,
            unmapped: false,
            mergeable: false,
            numab: None,
            thp: false,
            vm_hugepage: false,
            no_numa_balancing: false,
            pmds: Vec::new(),
            uffd_rwp: None,
            backing: backing::Backing::Anon,
            memfd: None,
            hugetlb: backing::HugetlbPage::Size2M,
            mempolicy: None,
        });
        self.vmas.len() - 1
    }

    /// Models split_vma(): cut VMA `vi` at page offset `at` (0 < at < pages); the tail becomes a
    /// new VMA right after it, adjacent in the address space, with the same name and flags.
    /// Returns the new VMA's index.
    pub fn split_vma(&mut self, vi: usize, at: u64) -> usize {
        let v = &mut self.vmas[vi];
        assert!(at > 0 && at < v.pages, "split inside the VMA");
        let mut tail = v.clone();
        tail.start = v.start + at;
        tail.pages = v.pages - at;
        tail.base = v.base + at as PageIdx;
        v.pages = at;
        let thp = v.thp;
        v.set_thp(thp);
        tail.set_thp(thp);
        self.vmas.insert(vi + 1, tail);
        vi + 1
    }

    /// Whether page `page` lies in an accessible VMA of this mm (`vma_is_accessible()`).
    pub fn page_accessible(&self, page: PageIdx) -> bool {
        self.vma_of_page(page).is_some_and(|vi| self.vmas[vi].accessible)
    }

    /// The user virtual address of global page `page` (0 if no VMA, mapped or unmapped,
    /// ever held it).
    pub fn page_addr(&self, page: PageIdx) -> u64 {
        self.vmas
            .iter()
            .find(|v| page >= v.base && u64::from(page - v.base) < v.pages)
            .map_or(0, |v| (v.start + u64::from(page - v.base)) << PAGE_SHIFT)
    }

    /// The VMA holding global page `page`, if this mm maps it.
    pub fn vma_of_page(&self, page: PageIdx) -> Option<usize> {
        self.vmas.iter().position(|v| !v.unmapped && page >= v.base && u64::from(page - v.base) < v.pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpupid_keeps_eight_pid_bits() {
        let c = cpu_pid_to_cpupid(5, 0x1234);
        assert_eq!(cpupid_to_cpu(c), 5);
        assert!(cpupid_match_pid(0x34, c));
        assert!(cpupid_match_pid(0x1134, c), "pids equal in the low 8 bits collide, as in the kernel");
        assert!(!cpupid_match_pid(0x35, c));
        assert!(!cpupid_match_pid(0xfe, CPUPID_UNSET));
    }

    /// cpupid_pid_unset() and __cpupid_match_pid() in include/linux/mm.h (6.12.117): the pid
    /// bits alone decide, so pid 1023 (0x3ff) looks like "never faulted".
    #[test]
    fn cpupid_unset_is_a_pid_bits_test() {
        assert!(cpupid_pid_unset(CPUPID_UNSET));
        assert!(cpupid_pid_unset(cpu_pid_to_cpupid(3, 1023)));
        assert!(!cpupid_pid_unset(cpu_pid_to_cpupid(3, 1022)));
        assert!(cpupid_match_pid(1023, CPUPID_UNSET));
    }

    #[test]
    fn page_state_fits_the_memory_budget() {
        let mut pages = Pages::default();
        pages.grow(1 << 16, false);
        pages.grow(1000, false);
        let per_page = pages.bytes() as f64 / pages.len() as f64;
        assert!(per_page <= 12.01, "{per_page} bytes per 4 KiB page");
        assert!((0..pages.len() as PageIdx).all(|p| pages.slot(p) == p as usize), "without THP slot i is page i");
        let mut thp = Pages::default();
        thp.grow(1 << 16, true);
        let per_page = thp.bytes() as f64 / thp.len() as f64;
        assert!(per_page <= 1.0, "{per_page} bytes per THP-backed page");
    }

    /// A compact chunk's pages share a slot; a change to one page expands the chunk into
    /// copies of that slot, and only that page differs afterwards.
    #[test]
    fn a_compact_chunk_expands_on_a_change_to_one_page() {
        let mut pages = Pages::default();
        pages.grow(100, false);
        let base = pages.grow(3 * CHUNK as u64 + 7, true);
        assert_eq!(base, CHUNK as PageIdx, "THP-eligible pages start on a chunk boundary");
        let (first, second) = (base, base + CHUNK as PageIdx);
        assert!(pages.is_compact(first) && pages.is_compact(second));
        assert!(!pages.is_compact(base + 3 * CHUNK as PageIdx), "a partly used last chunk has 512 slots");
        for s in pages.chunk_slots(second) {
            *pages.slots.pte_mut(s) = Pte { nid: 1, flags: PTE_YOUNG };
            pages.slots.last_cpupid[s] = 42;
        }
        assert!((second..second + CHUNK as PageIdx).all(|p| pages.pte(p).nid == 1));
        let before = pages.bytes();
        pages.pte_mut(second + 5).flags |= PTE_PROTNONE;
        assert!(!pages.is_compact(second) && pages.is_compact(first));
        assert!(pages.bytes() > before);
        assert!(pages.protnone(second + 5) && !pages.protnone(second + 4) && !pages.protnone(second + 6));
        assert!((second..second + CHUNK as PageIdx).all(|p| pages.pte(p).nid == 1 && pages.last_cpupid(p) == 42));
        let runs: Vec<(PageIdx, u64)> = pages.runs(first + 500, 20).map(|(p, n, _)| (p, n)).collect();
        assert_eq!(runs[0], (first + 500, 12), "the rest of the compact chunk is one run");
        assert_eq!(runs[1..], (0..8).map(|i| (second + i, 1)).collect::<Vec<_>>()[..]);
    }
}
