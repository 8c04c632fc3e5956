//! What each modelled kernel version does differently.
//!
//! `kernel.version` selects one row of [`Rules`]; every mechanism whose behaviour changed
//! between the versions reads its rule from here, never from the version number itself,
//! because stable kernels mix eras (Debian 12's 6.1.192 carries v6.2's
//! gup_can_follow_protnone() on a 6.1 base). Read from the 6.1.192 and 6.12.117 sources
//! (Debian's linux-source packages) and, for 6.4–6.6, from the commits named below.

use bevy_ecs::resource::Resource;

use crate::config::{GupPolicy, KernelConfig, KernelVersion};

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
    pub vma_filter: VmaScanFilter,
    /// update_task_scan_period()'s early "scan slower" return (no local or shared faults, or
    /// failed migrations) clears numa_faults_locality too (`goto out`, 6.12.117); 6.1.192
    /// returns before the memset, so those faults count again at the next update. 6.4–6.6
    /// keep 6.1's (not checked against their sources, which are not here).
    pub scan_slower_clears_locality: bool,
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
}

impl Rules {
    /// The rules of `version`, with the GUP era overridden when asked.
    pub fn of(version: KernelVersion, gup_override: Option<GupPolicy>) -> Self {
        use KernelVersion::*;
        let (gup, savedwrite, ksm_scan_walks, ksm_lookup_walks, vma_filter) = match version {
            V6_1 => (GupPolicy::Implicit, true, false, false, VmaScanFilter::None),
            V6_1Debian12 => (GupPolicy::ImplicitAll, true, true, false, VmaScanFilter::None),
            V6_4 => (GupPolicy::ImplicitAll, false, false, false, VmaScanFilter::Accessed),
            V6_5 => (GupPolicy::ImplicitForce, false, false, false, VmaScanFilter::Accessed),
            V6_6 => (GupPolicy::Explicit, false, false, false, VmaScanFilter::Accessed),
            V6_12 => (GupPolicy::Explicit, false, true, true, VmaScanFilter::AccessedForced),
        };
        // The 2024 reordering is not in 6.4–6.6, which keep 6.1's order.
        let ksm_checksum_first = version == V6_12;
        let scan_slower_clears_locality = version == V6_12;
        let gup = gup_override.unwrap_or(gup);
        // 6.4–6.6 keep 6.1's scheduler names and rules (not checked against their sources).
        let lb_6_12 = version == V6_12;
        Self {
            version,
            gup,
            savedwrite,
            ksm_scan_walks,
            ksm_lookup_walks,
            ksm_checksum_first,
            vma_filter,
            scan_slower_clears_locality,
            pkg_domain_name: if lb_6_12 { "PKG" } else { "DIE" },
            sd_share_llc_name: if lb_6_12 { "SD_SHARE_LLC" } else { "SD_SHARE_PKG_RESOURCES" },
            lb_6_12,
        }
    }

    pub fn from_config(k: &KernelConfig) -> Self {
        Self::of(k.version, k.gup_policy)
    }
}
