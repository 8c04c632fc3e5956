//! What each modelled kernel release does differently.
//!
//! `kernel.version` names a release (`release.rs`); every mechanism whose behaviour changed
//! between releases reads its rule from here, never from the version number itself, because
//! stable kernels mix eras (Debian 12's 6.1.192 carries v6.2's gup_can_follow_protnone() on
//! a 6.1 base). Each rule lists the releases that have it ([`Span`]): the first mainline
//! release, and stable backports as ranges of their series. Read from the 6.1.192, 6.12.117,
//! 6.12.118, 7.2.13 and 7.3.4 sources (Debian's linux-source packages, and their changelogs
//! for the backports) and, for 6.4–6.6 and 6.18, from the commits named below.

use bevy_ecs::resource::Resource;
use serde::{Deserialize, Serialize};

use crate::release::KernelVersion;
use crate::release::Span::{Mainline, Stable};
use crate::release::{Release, Span, has};

/// Which GUP callers honor NUMA hinting faults: the four eras of the truth table in
/// docs/MODEL.md, "GUP eras". A kernel version selects one; `kernel.gup_policy` overrides it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum GupPolicy {
    /// FOLL_NUMA, 2012 – v6.1: every GUP caller without FOLL_FORCE honors, follow_page()
    /// does not.
    Implicit,
    /// v6.2 – v6.4: `gup_can_follow_protnone()` follows only with FOLL_FORCE, follow_page()
    /// included (it fails on every protnone PTE, PROT_NONE VMAs too).
    ImplicitAll,
    /// v6.5 (patch 1 alone): is_valid_gup_args() sets FOLL_HONOR_NUMA_FAULT for every
    /// external caller, FOLL_FORCE included; follow_page() does not honor.
    ImplicitForce,
    /// v6.6+ (patches 3 and 4): only callers passing FOLL_HONOR_NUMA_FAULT (KVM) honor.
    Explicit,
}

impl GupPolicy {
    pub const ALL: [GupPolicy; 4] =
        [GupPolicy::Implicit, GupPolicy::ImplicitAll, GupPolicy::ImplicitForce, GupPolicy::Explicit];

    pub fn name(self) -> &'static str {
        match self {
            GupPolicy::Implicit => "implicit",
            GupPolicy::ImplicitAll => "implicit-all",
            GupPolicy::ImplicitForce => "implicit-force",
            GupPolicy::Explicit => "explicit",
        }
    }
}

/// Which accessed-VMA filter task_numa_work() applies before scanning a VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaScanFilter {
    /// ≤ v6.3: every accessible VMA is scanned (no vma->numab_state).
    None,
    /// v6.4 – v6.6, "sched/numa: enhance vma scanning logic": per-VMA scan delay, two pid
    /// windows, every VMA scanned in the first two passes (`numa_scan_seq < 2`).
    Accessed,
    /// v6.7+, Mel Gorman's series: passes counted from the VMA's first scan, partial and
    /// forced scans, scan offset inside the VMA; v6.11's "scan the vma if it has not been
    /// scanned for a while" (prev_scan_seq + nr_threads) on top. As in 6.12.117.
    AccessedForced,
}

/// The version-dependent rules of one kernel.
#[derive(Resource, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub version: KernelVersion,
    /// The GUP era (the version's, or `kernel.gup_policy`'s what-if).
    pub gup: GupPolicy,
    /// ≤ v6.1: change_pte_range() keeps a writable PTE's write bit when it makes it protnone
    /// (x86 `pte_mk_savedwrite()` is `pte_mkwrite()`), so a FOLL_FORCE|FOLL_WRITE GUP passes
    /// can_follow_write_pte() on it without a fault. v6.2 removed savedwrite.
    pub savedwrite: bool,
    /// ksmd's scan_get_next_rmap_item() finds pages with a page-table walker
    /// (ksm_next_page_pmd_entry(), which does not look at protnone) instead of follow_page():
    /// 6.12 and 6.1.192 (a stable backport).
    pub ksm_scan_walks: bool,
    /// get_mergeable_page() reads unstable-tree pages with folio_walk_start() instead of
    /// follow_page(FOLL_GET): 6.12 (6.1.192 still calls follow_page()).
    pub ksm_lookup_walks: bool,
    /// cmp_and_merge_page() checks that the page's checksum held still since ksmd's last
    /// visit before it searches the stable tree (6.12.117), not only before the unstable
    /// tree (6.1.192: a page with a stable twin merges on first sight).
    pub ksm_checksum_first: bool,
    /// ksmd skips pages that never merged for a growing number of scans
    /// (should_skip_rmap_item(), v6.7+).
    pub ksm_smart_scan: bool,
    /// A THP split to PTEs (a partly scanned THP) is made protnone per PTE and faulted and
    /// migrated as one 512-page folio (6.12); up to 6.1.192 the scanner skips it and a
    /// hinting fault on it only restores the PTE.
    pub pte_mapped_thp_numa: bool,
    pub vma_filter: VmaScanFilter,
    /// update_task_scan_period()'s early "scan slower" return (no local or shared faults, or
    /// failed migrations) clears numa_faults_locality too (`goto out`, 6.12.117+ and 7.3.4+);
    /// 6.1.192 and 7.2.13 return before the memset, so those faults count again at the next
    /// update.
    pub scan_slower_clears_locality: bool,
    /// change_huge_pmd() skips a THP that folio_can_map_prot_numa() refuses: DMA-pinned, or
    /// on the node a single-threaded process runs on (6.19+; before, only the huge zero page
    /// and protnone PMDs are skipped).
    pub thp_prot_numa_filter: bool,
    /// task_numa_work() returns at once, tracing sched_skip_cpuset_numa, for a task whose
    /// cpuset allows a single memory node (6.16+).
    pub cpuset_single_node_skip: bool,
    /// A CPU-less node's abstract distance comes from its HMAT performance
    /// (mt_perf_to_adistance(), v6.7+); before, a node no driver typed is default DRAM.
    pub hmat_adistance: bool,
    /// change_pte_range() leaves DMA-pinned folios of shared (non-COW) mappings too: 6.19's
    /// folio_can_map_prot_numa() tests the pin outside the COW test (7.3.4); up to 6.18 only
    /// a COW mapping's pinned folios are left (6.1.192, 6.12.117), so a pinned memfd page is
    /// made protnone.
    pub prot_numa_pinned_shared: bool,
    /// KVM's guest_memfd with a NUMA memory policy (6.18+): a `[[vm]]` may be backed by it.
    pub guest_memfd: bool,
    /// vma_policy_mof() asks __get_vma_policy() and, for a shmem VMA without a shared policy,
    /// falls back to the task's (the default policy has MPOL_F_MOF): read in 6.12.117 and
    /// 7.3.4. In 6.1.192 it returns the flag of vm_ops->get_policy()'s policy alone, false
    /// when shmem_get_policy() finds none, so task_numa_work() skips every memfd VMA as
    /// unsuitable (the memory-kind cases of docs/VALIDATION.md show it on both kernels).
    pub shmem_mof_fallback: bool,
    /// The sched-domain level spanning a CPU's package: "DIE" through v6.6, "PKG" from v6.7
    /// ("sched/topology: Rename 'DIE' domain to 'PKG'"); 6.12.117 says PKG, 6.1.192 DIE.
    pub pkg_domain_name: &'static str,
    /// The LLC flag's name: SD_SHARE_PKG_RESOURCES (6.1.192), SD_SHARE_LLC (6.12.117, v6.10's
    /// rename).
    pub sd_share_llc_name: &'static str,
    /// 6.12.117's load balancer rather than 6.1.192's, differing in:
    /// - update_sd_lb_stats(): prefer_sibling from the busiest group's flags (6.1: the child
    ///   domain's);
    /// - the prefer-sibling imbalance: sibling_imbalance(), 0 for a busy CPU (6.1: the
    ///   difference of nr_running);
    /// - update_sd_pick_busiest(): the last of equally loaded fully busy groups (6.1: the first);
    /// - find_busiest_queue()'s migrate_util: cpu_util_cfs_boost() (6.1: cpu_util_cfs()).
    pub lb_6_12: bool,
    /// The fair class picks by EEVDF with a base slice per request (v6.6, "sched/fair:
    /// Implement an EEVDF-like scheduling policy"); before, CFS's sched_slice() and
    /// check_preempt_wakeup().
    pub eevdf: bool,
    /// userfaultfd RWP (UFFDIO_REGISTER_MODE_RWP, UFFDIO_RWPROTECT, UFFD_FEATURE_RWP_ASYNC):
    /// a second user of protnone PTEs, told from NUMA hinting by `_PAGE_UFFD`, and
    /// gup_can_follow_protnone()'s VM_UFFD_RWP test (7.3).
    pub uffd_rwp: bool,
    /// The tracepoint formats of v6.7 on: sched_skip_vma_numa exists and mm_migrate_pages
    /// prints `nr_split` (6.12.117; 6.1.192 has neither). From 6.16 sched_skip_cpuset_numa
    /// too, with [`Rules::cpuset_single_node_skip`].
    pub sched_skip_vma_numa_tp: bool,
}

/// `Release::new`, short.
const fn r(major: u32, minor: u32, sublevel: u32) -> Release {
    Release::new(major, minor, sublevel)
}

/// v6.2 ("mm/gup: replace FOLL_NUMA by gup_can_follow_protnone()"): `return flags & FOLL_FORCE;`.
/// In 6.1.y by 6.1.192 (the release read; earlier 6.1.y were not).
const GUP_IMPLICIT_ALL: &[Span] = &[Mainline(r(6, 2, 0)), Stable(r(6, 1, 192))];
/// v6.5 (d74943a2f3cd): is_valid_gup_args() sets FOLL_HONOR_NUMA_FAULT for every external
/// caller. That patch, "mm/gup: reintroduce FOLL_NUMA as FOLL_HONOR_NUMA_FAULT", is listed
/// under ChangeLog-6.4.13 in the history Debian's 6.12 changelog carries.
const GUP_IMPLICIT_FORCE: &[Span] = &[Mainline(r(6, 5, 0)), Stable(r(6, 4, 13))];
/// v6.6: only callers that pass FOLL_HONOR_NUMA_FAULT honour hints.
const GUP_EXPLICIT: &[Span] = &[Mainline(r(6, 6, 0))];
/// v6.2 removed savedwrite.
const NO_SAVEDWRITE: &[Span] = &[Mainline(r(6, 2, 0))];
/// ksm_next_page_pmd_entry(): in the 6.12 source and backported to 6.1.y by 6.1.192; its
/// merge release (after 6.6) was not read.
const KSM_SCAN_WALKS: &[Span] = &[Mainline(r(6, 12, 0)), Stable(r(6, 1, 192))];
/// get_mergeable_page() with folio_walk_start(): 6.12.
const KSM_LOOKUP_WALKS: &[Span] = &[Mainline(r(6, 12, 0))];
/// A PTE-mapped THP is hinted per PTE and faulted as one folio (change_pte_range() without
/// the page_count test, do_numa_page() with folio_nr_pages() and
/// numa_rebuild_large_mapping()): read in 6.12.118; 6.1.192 skips and ignores it; the
/// releases between (the large-folio work of v6.5–v6.10) were not read.
const PTE_MAPPED_THP_NUMA: &[Span] = &[Mainline(r(6, 12, 0))];
/// v6.7's KSM smart scan (should_skip_rmap_item(), `ksm_smart_scan = true`); read in 6.12.118.
const KSM_SMART_SCAN: &[Span] = &[Mainline(r(6, 7, 0))];
/// Chengming Zhou's v6.9 reordering of cmp_and_merge_page().
const KSM_CHECKSUM_FIRST: &[Span] = &[Mainline(r(6, 9, 0))];
/// v6.4, "sched/numa: enhance vma scanning logic".
const VMA_ACCESSED: &[Span] = &[Mainline(r(6, 4, 0))];
/// v6.7, Mel Gorman's series (v6.11's rescan on top: 6.7–6.10 were not read).
const VMA_ACCESSED_FORCED: &[Span] = &[Mainline(r(6, 7, 0))];
/// "sched/fair: Reset NUMA fault locality after scan period update": a stable fix, listed
/// under ChangeLog-6.12.117 in Debian's 6.12 changelog and under ChangeLog-7.3.4 in its 7.3
/// one; 7.2.13's update_task_scan_period() still returns before the memset. Whether a
/// 6.18.y has it was not read (no 6.18 changelog past 6.18.3 in the suites): 6.18 is taken
/// without it.
const SCAN_SLOWER_CLEARS_LOCALITY: &[Span] = &[Stable(r(6, 12, 117)), Stable(r(7, 3, 4))];
/// task_numa_work()'s early return for a task whose cpuset allows one node, traced as
/// sched_skip_cpuset_numa (Libo Chen, in mm-unstable in April 2025: v6.16). Read in 7.2.13
/// and 7.3.4.
const CPUSET_SINGLE_NODE_SKIP: &[Span] = &[Mainline(r(6, 16, 0))];
/// change_huge_pmd() asks folio_can_map_prot_numa(), as change_pte_range() does (Kefeng
/// Wang's series, in mm-new in October 2025: v6.19). Read in 7.2.13 and 7.3.4.
const THP_PROT_NUMA_FILTER: &[Span] = &[Mainline(r(6, 19, 0))];
/// v6.7, Huang Ying's "memory tiering: calculate abstract distance based on ACPI HMAT":
/// mt_calc_adistance() asks hmat_calculate_adistance(); absent in 6.1.192, read in 6.12.118
/// and 7.3.4.
const HMAT_ADISTANCE: &[Span] = &[Mainline(r(6, 7, 0))];
/// folio_can_map_prot_numa()'s pin test for every mapping: the same series as
/// [`THP_PROT_NUMA_FILTER`] (v6.19), which moved the tests into that function. Read in 7.3.4.
const PROT_NUMA_PINNED_SHARED: &[Span] = &[Mainline(r(6, 19, 0))];
/// guest_memfd with a NUMA policy of its own (kvm_gmem_get_policy(), "KVM: guest_memfd:
/// Enforce NUMA mempolicy using shared policy", v6.18). Read in 7.3.4.
const GUEST_MEMFD_MEMPOLICY: &[Span] = &[Mainline(r(6, 18, 0))];
/// vma_policy_mof()'s task-policy fallback for shmem: read in 6.12.117 (present) and
/// 6.1.192 (absent); the release between that brought it was not checked.
const SHMEM_MOF_FALLBACK: &[Span] = &[Mainline(r(6, 12, 0))];
/// v6.7, "sched/topology: Rename 'DIE' domain to 'PKG'".
const PKG_DOMAIN: &[Span] = &[Mainline(r(6, 7, 0))];
/// v6.10's rename of SD_SHARE_PKG_RESOURCES to SD_SHARE_LLC.
const SD_SHARE_LLC: &[Span] = &[Mainline(r(6, 10, 0))];
/// The four load-balancer rules of [`Rules::lb_6_12`]: read in 6.12; their merge releases
/// (after 6.6) were not checked.
const LB_6_12: &[Span] = &[Mainline(r(6, 12, 0))];
/// v6.6, EEVDF replaces CFS's pick; read in 6.12.117.
const EEVDF: &[Span] = &[Mainline(r(6, 6, 0))];
/// userfaultfd RWP: in 7.3.4's source (include/uapi/linux/userfaultfd.h, mm/userfaultfd.c,
/// gup_can_follow_protnone() in include/linux/mm.h); absent from 7.2.13's.
const UFFD_RWP: &[Span] = &[Mainline(r(7, 3, 0))];
/// sched_skip_vma_numa (include/trace/events/sched.h), with v6.7's VMA filter whose skips it
/// traces: absent from 6.1.192, in 6.12.117. mm_migrate_pages's `nr_split` (not in 6.1.192,
/// in 6.12.117) is taken with it; its own merge release was not read.
const SCHED_SKIP_VMA_NUMA_TP: &[Span] = &[Mainline(r(6, 7, 0))];

impl Rules {
    /// The rules of `version`, with the GUP era overridden when asked.
    pub fn of(version: KernelVersion, gup_override: Option<GupPolicy>) -> Self {
        let at = version.rules_release();
        let on = |spans| has(spans, at);
        let gup = if on(GUP_EXPLICIT) {
            GupPolicy::Explicit
        } else if on(GUP_IMPLICIT_FORCE) {
            GupPolicy::ImplicitForce
        } else if on(GUP_IMPLICIT_ALL) {
            GupPolicy::ImplicitAll
        } else {
            GupPolicy::Implicit
        };
        let vma_filter = if on(VMA_ACCESSED_FORCED) {
            VmaScanFilter::AccessedForced
        } else if on(VMA_ACCESSED) {
            VmaScanFilter::Accessed
        } else {
            VmaScanFilter::None
        };
        Self {
            version,
            gup: gup_override.unwrap_or(gup),
            savedwrite: !on(NO_SAVEDWRITE),
            ksm_scan_walks: on(KSM_SCAN_WALKS),
            ksm_lookup_walks: on(KSM_LOOKUP_WALKS),
            ksm_checksum_first: on(KSM_CHECKSUM_FIRST),
            ksm_smart_scan: on(KSM_SMART_SCAN),
            pte_mapped_thp_numa: on(PTE_MAPPED_THP_NUMA),
            vma_filter,
            scan_slower_clears_locality: on(SCAN_SLOWER_CLEARS_LOCALITY),
            thp_prot_numa_filter: on(THP_PROT_NUMA_FILTER),
            cpuset_single_node_skip: on(CPUSET_SINGLE_NODE_SKIP),
            hmat_adistance: on(HMAT_ADISTANCE),
            prot_numa_pinned_shared: on(PROT_NUMA_PINNED_SHARED),
            guest_memfd: on(GUEST_MEMFD_MEMPOLICY),
            shmem_mof_fallback: on(SHMEM_MOF_FALLBACK),
            pkg_domain_name: if on(PKG_DOMAIN) { "PKG" } else { "DIE" },
            sd_share_llc_name: if on(SD_SHARE_LLC) { "SD_SHARE_LLC" } else { "SD_SHARE_PKG_RESOURCES" },
            lb_6_12: on(LB_6_12),
            eevdf: on(EEVDF),
            uffd_rwp: on(UFFD_RWP),
            sched_skip_vma_numa_tp: on(SCHED_SKIP_VMA_NUMA_TP),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows as they were written before rules became release ranges: a row's results do
    /// not move.
    #[test]
    fn the_rows_keep_their_rules() {
        use GupPolicy::*;
        use VmaScanFilter::{Accessed, AccessedForced, None as Every};
        let rows = [
            (KernelVersion::V6_1, (Implicit, true, false, false, false, Every, false, false)),
            (KernelVersion::V6_1Debian12, (ImplicitAll, true, true, false, false, Every, false, false)),
            (KernelVersion::V6_4, (ImplicitAll, false, false, false, false, Accessed, false, false)),
            (KernelVersion::V6_5, (ImplicitForce, false, false, false, false, Accessed, false, false)),
            (KernelVersion::V6_6, (Explicit, false, false, false, false, Accessed, false, false)),
            (KernelVersion::V6_12, (Explicit, false, true, true, true, AccessedForced, true, true)),
            (KernelVersion::V6_18, (Explicit, false, true, true, true, AccessedForced, false, true)),
            (KernelVersion::V7_2, (Explicit, false, true, true, true, AccessedForced, false, true)),
            (KernelVersion::V7_3, (Explicit, false, true, true, true, AccessedForced, true, true)),
        ];
        for (v, want) in rows {
            let r = Rules::of(v, None);
            let got = (
                r.gup,
                r.savedwrite,
                r.ksm_scan_walks,
                r.ksm_lookup_walks,
                r.ksm_checksum_first,
                r.vma_filter,
                r.scan_slower_clears_locality,
                r.lb_6_12,
            );
            assert_eq!(got, want, "{v}");
            let pkg = if r.lb_6_12 { ("PKG", "SD_SHARE_LLC") } else { ("DIE", "SD_SHARE_PKG_RESOURCES") };
            assert_eq!((r.pkg_domain_name, r.sd_share_llc_name), pkg, "{v}");
        }
    }

    /// Releases inside a read series follow the dated backports: 6.12.116 lacks the locality
    /// reset (ChangeLog-6.12.117), 6.4.13 has v6.5's GUP rule (ChangeLog-6.4.13), 6.1 stable
    /// releases before the one read keep v6.1's.
    #[test]
    fn stable_backports_apply_from_their_release() {
        let rules = |s: &str| Rules::of(s.parse().unwrap(), None);
        assert!(!rules("6.12.116").scan_slower_clears_locality);
        assert!(rules("6.12.117").scan_slower_clears_locality);
        assert_eq!(rules("6.12.116").gup, GupPolicy::Explicit);
        assert_eq!(rules("6.4.12").gup, GupPolicy::ImplicitAll);
        assert_eq!(rules("6.4.13").gup, GupPolicy::ImplicitForce);
        assert_eq!(rules("6.1.50").gup, GupPolicy::Implicit);
        assert_eq!(
            rules("6.1.192"),
            Rules { version: "6.1.192".parse().unwrap(), ..Rules::of(KernelVersion::V6_1Debian12, None) }
        );
        // 6.8 was not read: 6.6's rules, though v6.7's filter is in it.
        assert_eq!(rules("6.8").vma_filter, VmaScanFilter::Accessed);
        // 7.3.0–7.3.3 lack 7.3.4's backport; 7.2 stands for 6.19, which has v6.19's filter.
        assert!(!rules("7.3.3").scan_slower_clears_locality);
        assert!(rules("7.3.4").scan_slower_clears_locality);
        assert!(rules("6.19").thp_prot_numa_filter && !rules("6.18").thp_prot_numa_filter);
        assert!(rules("6.12").hmat_adistance && rules("7.3").hmat_adistance && !rules("6.6").hmat_adistance);
        assert!(!rules("6.1-debian12").hmat_adistance);
    }

    /// The rules the 6.16–7.3 sources added: the cpuset skip (6.16, so 6.18 on) and the THP
    /// prot_numa filter (6.19, so 7.2 and 7.3); none before.
    #[test]
    fn newer_rows_add_the_cpuset_skip_and_the_thp_filter() {
        let rows = [
            (KernelVersion::V6_12, false, false),
            (KernelVersion::V6_18, true, false),
            (KernelVersion::V7_2, true, true),
            (KernelVersion::V7_3, true, true),
        ];
        for (v, cpuset, thp) in rows {
            let r = Rules::of(v, None);
            assert_eq!((r.cpuset_single_node_skip, r.thp_prot_numa_filter), (cpuset, thp), "{v}");
        }
    }

    /// userfaultfd RWP is in 7.3's source and in no release read before it (7.2.13 lacks
    /// UFFDIO_REGISTER_MODE_RWP).
    #[test]
    fn only_7_3_has_userfaultfd_rwp() {
        for v in KernelVersion::ALL {
            let want = v == KernelVersion::V7_3;
            assert_eq!(Rules::of(v, None).uffd_rwp, want, "{v}");
        }
        let rules = |s: &str| Rules::of(s.parse().unwrap(), None);
        assert!(!rules("7.2.13").uffd_rwp && rules("7.3.0").uffd_rwp && rules("7.3.4").uffd_rwp);
    }

    fn yes(b: bool) -> String {
        if b { "yes" } else { "no" }.into()
    }

    fn either(b: bool, then: &str, otherwise: &str) -> String {
        if b { then } else { otherwise }.into()
    }

    /// A rule as a cell words it.
    type Cell = fn(&Rules) -> String;

    /// How a cell of docs/MODEL.md's version tables words a rule (its first word), by the
    /// column's header.
    const COLUMNS: &[(&str, Cell)] = &[
        ("GUP era", |r| r.gup.name().into()),
        ("savedwrite", |r| yes(r.savedwrite)),
        ("KSM finds pages by", |r| either(r.ksm_scan_walks, "page-table", "follow_page()")),
        ("KSM reads tree pages by", |r| either(r.ksm_lookup_walks, "folio_walk", "follow_page()")),
        ("VMA scan filter", |r| {
            match r.vma_filter {
                VmaScanFilter::None => "none",
                VmaScanFilter::Accessed => "v6.4",
                VmaScanFilter::AccessedForced => "v6.7+",
            }
            .into()
        }),
        ("locality reset on \"scan slower\"", |r| yes(r.scan_slower_clears_locality)),
        ("THP prot_numa filter (6.19)", |r| yes(r.thp_prot_numa_filter)),
        ("cpuset single-node skip (6.16)", |r| yes(r.cpuset_single_node_skip)),
        ("package domain", |r| r.pkg_domain_name.into()),
        ("LLC flag", |r| r.sd_share_llc_name.into()),
        ("fair class picks by", |r| either(r.eevdf, "EEVDF", "CFS")),
        ("load balancer", |r| either(r.lb_6_12, "6.12's", "6.1's")),
        ("sched_skip_vma_numa, `nr_split`", |r| yes(r.sched_skip_vma_numa_tp)),
        ("KSM checksum first", |r| yes(r.ksm_checksum_first)),
        ("KSM smart scan", |r| yes(r.ksm_smart_scan)),
        ("PTE-mapped THP hinted", |r| yes(r.pte_mapped_thp_numa)),
        ("HMAT abstract distance", |r| yes(r.hmat_adistance)),
        ("pinned shared folios left", |r| yes(r.prot_numa_pinned_shared)),
        ("guest_memfd", |r| yes(r.guest_memfd)),
        ("userfaultfd RWP", |r| yes(r.uffd_rwp)),
    ];

    /// The cells of a Markdown table row, trimmed.
    fn cells(line: &str) -> Vec<&str> {
        line.trim().trim_matches('|').split('|').map(str::trim).collect()
    }

    /// The rows a table's first cell names: its backquoted versions before any aside.
    fn versions_of(cell: &str) -> Vec<KernelVersion> {
        let named = cell.split('(').next().unwrap_or_default();
        let versions: Vec<KernelVersion> = named
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|v| v.parse().unwrap_or_else(|e| panic!("`{v}` in `{cell}`: {e}")))
            .collect();
        assert!(!versions.is_empty(), "no version in `{cell}`");
        versions
    }

    /// docs/MODEL.md's tables by kernel version ("Kernel versions") say what `Rules::of`
    /// gives for every row they name, and the tables of every rule name every row: a rule
    /// changed without its documentation, or a column the test cannot read, fails.
    #[test]
    fn the_documented_version_tables_hold_the_rules() {
        let doc = include_str!("../../docs/MODEL.md");
        let mut checked: std::collections::BTreeMap<String, Vec<KernelVersion>> = Default::default();
        let mut lines = doc.lines().peekable();
        while let Some(line) = lines.next() {
            let header = cells(line);
            if header.first() != Some(&"version") || !line.starts_with('|') {
                continue;
            }
            lines.next(); // the |---| line
            while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
                let row = cells(row);
                assert_eq!(row.len(), header.len(), "{row:?}");
                for v in versions_of(row[0]) {
                    let rules = Rules::of(v, None);
                    for (column, cell) in header.iter().zip(&row).skip(1) {
                        let (_, rule) = COLUMNS
                            .iter()
                            .find(|(name, _)| name == column)
                            .unwrap_or_else(|| panic!("docs/MODEL.md: no rule for the column `{column}`"));
                        let want = rule(&rules);
                        let said = cell.split_whitespace().next().unwrap_or_default();
                        let said = said.trim_matches('`').trim_end_matches([',', ';']);
                        assert_eq!(said, want, "docs/MODEL.md, row {v}, column `{column}`: `{cell}`");
                        checked.entry(column.to_string()).or_default().push(v);
                    }
                }
            }
        }
        let mut all = KernelVersion::ALL.to_vec();
        all.sort_by_key(|v| v.rules_release());
        for (column, _) in COLUMNS {
            let mut rows = checked.get(*column).cloned().unwrap_or_default();
            rows.sort_by_key(|v| v.rules_release());
            assert_eq!(rows, all, "docs/MODEL.md: the column `{column}` names each row once");
        }
    }
}
