//! `[kernel]`: the release, the sysctls and the what-if knobs.

use serde::{Deserialize, Serialize};

use super::tiering::{HOT_THRESHOLD_MS, NumaBalancing, PROMOTE_RATE_LIMIT_MBPS};
use super::{GupPolicy, KernelVersion};

/// /sys/kernel/mm/transparent_hugepage/enabled.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Thp {
    /// Every anonymous VMA may get THPs (unless MADV_NOHUGEPAGE).
    Always,
    /// Only VMAs with MADV_HUGEPAGE.
    Madvise,
    Never,
}

/// madvise() advice on THP for one VMA.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HugepageAdvice {
    /// MADV_HUGEPAGE (VM_HUGEPAGE).
    Madvise,
    /// MADV_NOHUGEPAGE (VM_NOHUGEPAGE).
    Nohugepage,
}

impl Thp {
    /// Whether a VMA with `advice` may be backed by THPs (thp_vma_allowable_order()).
    pub fn allows(self, advice: Option<HugepageAdvice>) -> bool {
        match (self, advice) {
            (_, Some(HugepageAdvice::Nohugepage)) | (Thp::Never, _) => false,
            (Thp::Always, _) => true,
            (Thp::Madvise, advice) => advice == Some(HugepageAdvice::Madvise),
        }
    }
}

/// /sys/kernel/mm/transparent_hugepage/shmem_enabled: when a shmem (memfd) fault allocates a
/// PMD-sized folio. Read in mm/shmem.c: __shmem_is_huge() (6.1.192), shmem_huge_global_enabled()
/// (6.12.118, 7.3.4). A memfd lives on the internal shm_mnt, whose `huge` follows every value
/// but `deny` and `force`, which override every mount; the per-size
/// `hugepages-*/shmem_enabled` files of 6.12 and 7.3 apply to anonymous shared memory
/// (vma_is_anon_shmem()) only, not to a memfd. Debian's images (6.1 through 7.3) boot with
/// `never` (CONFIG_TRANSPARENT_HUGEPAGE_SHMEM_HUGE_NEVER=y where the option exists).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShmemEnabled {
    /// SHMEM_HUGE_ALWAYS: every fault in a whole 2 MiB block tries a huge folio.
    Always,
    /// SHMEM_HUGE_WITHIN_SIZE: as `always` for a block inside i_size, else as `advise`.
    WithinSize,
    /// SHMEM_HUGE_ADVISE: only for a VMA with MADV_HUGEPAGE (VM_HUGEPAGE).
    Advise,
    /// SHMEM_HUGE_NEVER.
    #[default]
    Never,
    /// SHMEM_HUGE_DENY: off for every shmem mount, an emergency switch.
    Deny,
    /// SHMEM_HUGE_FORCE: on for every shmem mount, for testing.
    Force,
}

impl ShmemEnabled {
    /// Whether a shmem fault at a block wholly inside the file (`within_size`) of a VMA with
    /// VM_HUGEPAGE `vm_hugepage` tries a PMD-sized folio. A VMA with VM_NOHUGEPAGE gets none
    /// (the config refuses MADV_NOHUGEPAGE on a memfd, so it is not asked here).
    pub fn allows(self, within_size: bool, vm_hugepage: bool) -> bool {
        match self {
            ShmemEnabled::Deny | ShmemEnabled::Never => false,
            ShmemEnabled::Always | ShmemEnabled::Force => true,
            ShmemEnabled::WithinSize => within_size || vm_hugepage,
            ShmemEnabled::Advise => vm_hugepage,
        }
    }

    /// Whether shm_mnt may hold huge folios at all, so shmem_get_unmapped_area() puts a
    /// mapping of 2 MiB or more on a PMD boundary (`huge != SHMEM_HUGE_NEVER` and not `deny`).
    pub fn may_be_huge(self) -> bool {
        !matches!(self, ShmemEnabled::Never | ShmemEnabled::Deny)
    }
}

/// How a secondary MMU's notifier treats a range whose PTEs did not change.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NotifierMode {
    /// The kernel: every range change_protection() walks is invalidated.
    Unconditional,
    /// Skips PTEs whose value did not change: the hazard from the patch discussion.
    Smart,
}

impl NotifierMode {
    pub fn name(self) -> &'static str {
        match self {
            NotifierMode::Unconditional => "unconditional",
            NotifierMode::Smart => "smart",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// /proc/sys/kernel/numa_balancing: 0 (`false`) off, 1 (`true`) normal, 2 memory
    /// tiering, 3 both.
    pub numa_balancing: NumaBalancing,
    pub numa_balancing_scan_delay_ms: u64,
    pub numa_balancing_scan_period_min_ms: u64,
    pub numa_balancing_scan_period_max_ms: u64,
    pub numa_balancing_scan_size_mb: u64,
    /// The kernel release whose rules apply (see `version.rs`).
    pub version: KernelVersion,
    /// /sys/kernel/mm/transparent_hugepage/enabled.
    pub transparent_hugepage: Thp,
    /// /sys/kernel/mm/transparent_hugepage/shmem_enabled: huge folios for memfd memory.
    #[serde(skip_serializing_if = "is_default_shmem_enabled")]
    pub shmem_enabled: ShmemEnabled,
    /// What-if override of the GUP era alone; the version's era when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gup_policy: Option<GupPolicy>,
    pub notifier: NotifierMode,
    /// Scheduler quantum: a thread runs this long before its CPU picks again.
    pub quantum_us: u64,
    /// CPU time of one NUMA hinting fault (trap, do_numa_page, PTE restore).
    pub hint_fault_cost_ns: u64,
    /// CPU time to migrate one 4 KiB page (isolate, copy, remap).
    pub migrate_cost_ns: u64,
    /// CPU time change_prot_numa() spends per page-table entry it writes (a 4 KiB PTE, a huge
    /// PMD once).
    pub pte_scan_cost_ns: u64,
    /// CPU time of the TLB flush that ends each change_prot_numa() call over a VMA
    /// (tlb_finish_mmu()); 0: negligible on hardware (validate sets it under TCG).
    pub tlb_flush_cost_ns: u64,
    /// The fair class's load balancing (periodic, nohz idle, newly idle and active
    /// balancing over the sched domains, `sched/fair/`); `false`: threads move only by NUMA
    /// placement, for A/B runs.
    pub load_balance: bool,
    /// /proc/sys/kernel/numa_balancing_promote_rate_limit_MBps (default 65536).
    #[serde(rename = "numa_balancing_promote_rate_limit_MBps", skip_serializing_if = "is_default_promote_rate_limit")]
    pub numa_balancing_promote_rate_limit_mbps: u64,
    /// /sys/kernel/debug/sched/numa_balancing/hot_threshold_ms (default 1000), a debugfs
    /// file rather than a sysctl.
    #[serde(skip_serializing_if = "is_default_hot_threshold")]
    pub numa_balancing_hot_threshold_ms: u64,
    /// /sys/kernel/mm/numa/demotion_enabled (default false): reclaim demotes to the next
    /// memory tier.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub demotion_enabled: bool,
    /// What-if: change_prot_numa() leaves DMA-pinned folios alone, base pages and THPs, in
    /// every mapping (folio_maybe_dma_pinned()). 6.19+ does (folio_can_map_prot_numa() in
    /// change_pte_range() and change_huge_pmd(), the 7.2 and 7.3 rows); every release read
    /// does for private base pages (6.1.192 by `page_count(page) != 1`); for older THPs and
    /// a shared mapping's (memfd) base pages it is the 2023 RFC's proposal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prot_numa_skip_pinned: bool,
    /// What-if, proposed, not in a kernel: change_prot_numa() flags its invalidations
    /// MMU_NOTIFIER_RANGE_NUMA and every notifier-based secondary MMU keeps its entries.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mmu_notifier_range_numa: bool,
    /// What-if, proposed, not in a kernel: processes and vms (by name) opted out of NUMA
    /// balancing, as a prctl() would; their threads never queue task_numa_work().
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub no_numa_balancing_processes: Vec<String>,
    /// What-if, proposed, not in a kernel: VMAs (`process/vma`, a vm's memory is
    /// `vm/ram`) flagged VM_NO_NUMA_BALANCING; task_numa_work() skips them as unsuitable.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub no_numa_balancing_vmas: Vec<String>,
}

fn is_default_promote_rate_limit(v: &u64) -> bool {
    *v == PROMOTE_RATE_LIMIT_MBPS
}

fn is_default_shmem_enabled(v: &ShmemEnabled) -> bool {
    *v == ShmemEnabled::Never
}

fn is_default_hot_threshold(v: &u64) -> bool {
    *v == HOT_THRESHOLD_MS
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            numa_balancing: NumaBalancing::NORMAL,
            numa_balancing_scan_delay_ms: 1000,
            numa_balancing_scan_period_min_ms: 1000,
            numa_balancing_scan_period_max_ms: 60_000,
            numa_balancing_scan_size_mb: 256,
            version: KernelVersion::V7_3,
            transparent_hugepage: Thp::Never,
            shmem_enabled: ShmemEnabled::Never,
            gup_policy: None,
            notifier: NotifierMode::Unconditional,
            quantum_us: 1000,
            hint_fault_cost_ns: 1500,
            migrate_cost_ns: 8000,
            pte_scan_cost_ns: 10,
            tlb_flush_cost_ns: 0,
            load_balance: true,
            numa_balancing_promote_rate_limit_mbps: PROMOTE_RATE_LIMIT_MBPS,
            numa_balancing_hot_threshold_ms: HOT_THRESHOLD_MS,
            demotion_enabled: false,
            prot_numa_skip_pinned: false,
            mmu_notifier_range_numa: false,
            no_numa_balancing_processes: Vec::new(),
            no_numa_balancing_vmas: Vec::new(),
        }
    }
}
