//! The scenario configuration: the TOML schema, its defaults, `--set` overrides and validation.
//!
//! Every section rejects unknown keys. Errors name the dotted key, the line in the file (when
//! the key is in the file) and, for a misspelt key or value, the closest valid one.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::mm::backing::{Backing, HugetlbPage, MemPolicy, MpolMode};
use toml::de::{DeTable, DeValue};

/// A whole scenario.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Scenario name; results go to `out/<name>/` by default.
    pub name: String,
    /// One line saying what the scenario shows (`numasim scenarios` prints it).
    pub description: String,
    pub run: RunConfig,
    pub machine: MachineConfig,
    pub kernel: KernelConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub process: Vec<ProcessConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vm: Vec<VmConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device: Vec<DeviceConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub action: Vec<ActionConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub userfaultfd: Vec<UserfaultfdConfig>,
    pub kvm: KvmConfig,
    pub ksm: KsmConfig,
    pub aging: AgingConfig,
    /// How `numasim validate` judges this scenario against a real kernel; the simulation
    /// ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    pub duration_ms: u64,
    /// Length of one time-series interval.
    pub sample_ms: u64,
    /// Simulator memory the run may use; without it, the machine's available memory
    /// (see [`crate::limits::check_memory_budget`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_gib: Option<f64>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { seed: 1, duration_ms: 10_000, sample_ms: 100, max_memory_gib: None }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MachineConfig {
    /// Nodes with CPUs and memory (numbered first).
    pub nodes: u32,
    pub cpus_per_node: u32,
    pub memory_per_node_mib: u64,
    /// SLIT distances, a row per node (CPU-less nodes included) of as many entries; default
    /// 10 local, 20 remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<Vec<Vec<u32>>>,
    /// Latency of one cache-line access to local memory; remote access costs
    /// `local_latency_ns * distance / 10`.
    pub local_latency_ns: u64,
    /// CPU-less memory nodes (CXL or PMEM expanders), numbered after the CPU nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_node: Vec<MemoryNodeConfig>,
}

/// A node with memory and no CPUs (N_MEMORY without N_CPU).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryNodeConfig {
    pub memory_mib: u64,
    /// Latency of one cache-line access from any CPU node: what HMAT reports as the read
    /// and the write latency from the node's best initiator.
    pub latency_ns: u64,
    /// The node's abstract distance as a driver's memory type would set it (dax kmem's
    /// MEMTIER_DEFAULT_DAX_ADISTANCE is 640); otherwise computed from the latency as
    /// mt_perf_to_adistance() does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstract_distance: Option<u32>,
}

impl Default for MemoryNodeConfig {
    fn default() -> Self {
        Self { memory_mib: 1024, latency_ns: 250, abstract_distance: None }
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            nodes: 2,
            cpus_per_node: 4,
            memory_per_node_mib: 1024,
            distance: None,
            local_latency_ns: 100,
            memory_node: Vec::new(),
        }
    }
}

impl MachineConfig {
    /// All nodes, CPU-less ones included (nr_node_ids).
    pub fn nr_nodes(&self) -> u32 {
        self.nodes + self.memory_node.len() as u32
    }

    /// Memory of node `nid` in MiB.
    pub fn node_memory_mib(&self, nid: u32) -> u64 {
        match nid.checked_sub(self.nodes) {
            Some(i) => self.memory_node[i as usize].memory_mib,
            None => self.memory_per_node_mib,
        }
    }

    /// Memory of the whole machine in MiB.
    pub fn total_memory_mib(&self) -> u64 {
        (0..self.nr_nodes()).map(|n| self.node_memory_mib(n)).sum()
    }
}

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

pub use crate::release::KernelVersion;

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
    /// What-if: change_prot_numa() leaves DMA-pinned folios alone, base pages and THPs
    /// (folio_maybe_dma_pinned()). 6.19+ does for THPs (folio_can_map_prot_numa() in
    /// change_huge_pmd(), the 7.2 and 7.3 rows); every release read does for the private
    /// anonymous base pages numasim has; for older THPs it is the 2023 RFC's proposal.
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

/// sysctl_numa_balancing_promote_rate_limit's default (kernel/sched/fair.c, 6.12, 7.3).
pub const PROMOTE_RATE_LIMIT_MBPS: u64 = 65536;
/// sysctl_numa_balancing_hot_threshold's default, MSEC_PER_SEC.
pub const HOT_THRESHOLD_MS: u64 = 1000;

fn is_default_promote_rate_limit(v: &u64) -> bool {
    *v == PROMOTE_RATE_LIMIT_MBPS
}

fn is_default_hot_threshold(v: &u64) -> bool {
    *v == HOT_THRESHOLD_MS
}

/// `sysctl_numa_balancing_mode`: NUMA_BALANCING_NORMAL (1) and NUMA_BALANCING_MEMORY_TIERING
/// (2) bits (include/linux/sched/sysctl.h). Read as the sysctl is written (0 to 3) or as a
/// boolean; written back as a boolean for 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumaBalancing(u8);

impl NumaBalancing {
    pub const DISABLED: Self = Self(0);
    pub const NORMAL: Self = Self(1);
    pub const MEMORY_TIERING: Self = Self(2);

    /// Any mode: the sched_numa_balancing static key is on and task_numa_work() scans.
    pub fn enabled(self) -> bool {
        self.0 != 0
    }

    /// NUMA_BALANCING_NORMAL: top-tier pages are scanned and placed by locality.
    pub fn normal(self) -> bool {
        self.0 & Self::NORMAL.0 != 0
    }

    /// NUMA_BALANCING_MEMORY_TIERING: slow-tier pages are promoted by hotness.
    pub fn tiering(self) -> bool {
        self.0 & Self::MEMORY_TIERING.0 != 0
    }

    pub fn mode(self) -> u8 {
        self.0
    }
}

impl From<bool> for NumaBalancing {
    fn from(on: bool) -> Self {
        if on { Self::NORMAL } else { Self::DISABLED }
    }
}

impl Serialize for NumaBalancing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            0 | 1 => s.serialize_bool(self.0 == 1),
            n => s.serialize_u8(n),
        }
    }
}

impl<'de> Deserialize<'de> for NumaBalancing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        numa_balancing_mode(d)
    }
}

/// Reads `numa_balancing` as the sysctl is written (0, 1) or as a boolean.
fn numa_balancing_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NumaBalancing, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Bool(bool),
        Int(i64),
    }
    match Mode::deserialize(d)? {
        Mode::Bool(b) => Ok(b.into()),
        Mode::Int(n @ 0..=3) => Ok(NumaBalancing(n as u8)),
        Mode::Int(n) => {
            Err(serde::de::Error::custom(format!("numa_balancing must be 0 to 3 (or false/true), got {n}")))
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            numa_balancing: NumaBalancing::NORMAL,
            numa_balancing_scan_delay_ms: 1000,
            numa_balancing_scan_period_min_ms: 1000,
            numa_balancing_scan_period_max_ms: 60_000,
            numa_balancing_scan_size_mb: 256,
            version: KernelVersion::V6_12,
            transparent_hugepage: Thp::Never,
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

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    pub name: String,
    pub vma: Vec<VmaConfig>,
    pub thread: Vec<ThreadConfig>,
    /// What the process's main thread does: waits while every configured thread runs as its
    /// clone (`idle`, as a pthreads benchmark and the oracle's guest do), or is the first
    /// configured thread (`first`, a single-threaded program).
    pub main_thread: MainThread,
    /// cpuset.mems of the process's cgroup: the memory nodes its tasks may use (empty: all).
    /// Simplified: only task_numa_work() (6.16+ skips a single-node cpuset) and NUMA
    /// migrations read it; first-touch allocation does not, so a scenario keeps its threads
    /// and `populate_node` on these nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpuset_mems: Vec<u32>,
}

/// The role of a process's main thread (the one fork() created).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MainThread {
    /// Counted in mm_users and get_nr_threads() and runs only to make the process's actions:
    /// every configured thread is a CLONE_VM clone, staggered by init_numa_balancing().
    #[default]
    Idle,
    /// The first thread of the first block: no clone stagger, scans from its first tick.
    First,
}

/// An anonymous private mapping (mmap(MAP_PRIVATE|MAP_ANONYMOUS)).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VmaConfig {
    pub name: String,
    pub size_mib: u64,
    /// Fault the whole range in on this node before the run starts (a memset by a thread
    /// there); otherwise pages are allocated on first touch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub populate_node: Option<u32>,
    /// madvise(MADV_MERGEABLE): ksmd may merge its pages.
    pub mergeable: bool,
    /// Page contents for KSM: 0 means every page is unique; N means page i holds one of N
    /// contents (i mod N), so pages with equal contents can be merged.
    pub content_classes: u32,
    /// madvise(MADV_HUGEPAGE) or madvise(MADV_NOHUGEPAGE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepage: Option<HugepageAdvice>,
    /// What backs the memory: `anon` (default), `memfd`, `hugetlbfs` or `guest_memfd` (a
    /// `[[vm]]` only, 6.18+).
    #[serde(skip_serializing_if = "is_default")]
    pub backing: Backing,
    /// For `memfd`: the file's name; mappings naming the same file share its pages (default:
    /// `<process>/<vma>`, and `<vm>/ram` for a VM's memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memfd: Option<String>,
    /// For `hugetlbfs`: the huge page size, `2M` (default) or `1G`.
    #[serde(skip_serializing_if = "is_default")]
    pub hugetlb_page: HugetlbPage,
    /// mbind() on the range: `{ mode = "bind" | "preferred" | "interleave", nodes = [...] }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mempolicy: Option<MemPolicy>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PatternKind {
    /// Every page of the range equally likely.
    Uniform,
    /// Pages in address order, wrapping around.
    Sequential,
    /// `hot_probability` of the touches go to the first `hot_fraction` of the range.
    HotCold,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Slice {
    /// Every thread of the block touches the whole VMA.
    Whole,
    /// Thread i of n touches the i-th n-th of the VMA.
    Private,
}

/// A block of identical threads.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ThreadConfig {
    pub name: String,
    pub count: u32,
    /// When set, the block has `count_per_node * machine.nodes` threads (so scenarios follow
    /// the machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_per_node: Option<u32>,
    /// When set, the block has this many threads per CPU of the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_per_cpu: Option<u32>,
    /// Start on this node's CPUs (otherwise spread over all nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// CPU affinity: the threads run on and may only move between these CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<u32>>,
    pub vma: String,
    pub slice: Slice,
    pub pattern: PatternKind,
    pub hot_fraction: f64,
    pub hot_probability: f64,
    /// Cache lines read per page touch; a touch costs this many times the access latency.
    pub touch_lines: u32,
    /// CPU work between touches.
    pub think_ns: u64,
    /// Share of touches that write (a write to a KSM page breaks its sharing).
    pub write_fraction: f64,
    pub start_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<u64>,
    /// With `run_us`: each thread runs `run_us` of CPU time every `period_ms` from its start
    /// and sleeps in between, woken through the scheduler's wake-up path. Such a block may
    /// leave `vma` empty: it then touches no pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_us: Option<u64>,
}

impl Default for ThreadConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            count: 1,
            count_per_node: None,
            count_per_cpu: None,
            node: None,
            cpus: None,
            vma: String::new(),
            slice: Slice::Whole,
            pattern: PatternKind::Uniform,
            hot_fraction: 0.1,
            hot_probability: 0.9,
            touch_lines: 16,
            think_ns: 0,
            write_fraction: 0.0,
            start_ms: 0,
            stop_ms: None,
            period_ms: None,
            run_us: None,
        }
    }
}

/// A KVM guest: a process whose guest memory is one VMA, and vCPU threads that touch it
/// through the EPT/NPT (a secondary MMU).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub name: String,
    pub memory_mib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub populate_node: Option<u32>,
    pub mergeable: bool,
    pub content_classes: u32,
    /// madvise() THP advice on the guest memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepage: Option<HugepageAdvice>,
    /// The vCPU threads (their `vma` is the guest memory and need not be given).
    pub vcpus: ThreadConfig,
    /// What backs the memory: `anon` (default), `memfd`, `hugetlbfs` or `guest_memfd` (a
    /// `[[vm]]` only, 6.18+).
    #[serde(skip_serializing_if = "is_default")]
    pub backing: Backing,
    /// For `memfd`: the file's name; mappings naming the same file share its pages (default:
    /// `<process>/<vma>`, and `<vm>/ram` for a VM's memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memfd: Option<String>,
    /// For `hugetlbfs`: the huge page size, `2M` (default) or `1G`.
    #[serde(skip_serializing_if = "is_default")]
    pub hugetlb_page: HugetlbPage,
    /// mbind() on the range: `{ mode = "bind" | "preferred" | "interleave", nodes = [...] }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mempolicy: Option<MemPolicy>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            memory_mib: 256,
            populate_node: None,
            mergeable: false,
            content_classes: 0,
            hugepage: None,
            vcpus: ThreadConfig::default(),
            backing: Backing::Anon,
            memfd: None,
            hugetlb_page: HugetlbPage::Size2M,
            mempolicy: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
}

/// How a device keeps its view of process memory.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceMode {
    /// Faults pages in with get_user_pages() and keeps them coherent through an MMU
    /// (interval) notifier, like ODP RDMA or an accelerator with its own page table.
    Notifier,
    /// pin_user_pages(FOLL_LONGTERM) at setup, like VFIO type1 or RDMA without ODP.
    Pin,
}

/// Whose context the driver's GUP runs in.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GupContext {
    /// A kernel worker thread on the device's node (no mm: no task statistics).
    Worker,
    /// The process's first thread (e.g. an ioctl): its CPU, node and statistics.
    Owner,
}

/// The user-space GUP path a notifier-mode device stands for: what its accesses are when
/// the oracle realises the scenario on a real kernel, and the GUP flags the model uses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GupPath {
    /// process_vm_readv()/process_vm_writev(): pin_user_pages_remote(), FOLL_WRITE for writes.
    ProcessVm,
    /// O_DIRECT I/O on the buffer: pin_user_pages_fast(), FOLL_WRITE when reading into it.
    ODirect,
    /// /proc/PID/mem: access_remote_vm() with FOLL_FORCE (and FOLL_WRITE for writes).
    ProcMem,
    /// A driver's get_user_pages_remote() into its own page table, kept by an MMU notifier:
    /// the model's device itself; the oracle realises it with the gupdev module.
    Driver,
}

/// The largest mapping a device's page table makes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum MapSize {
    /// 4 KiB entries only.
    #[serde(rename = "4k")]
    Base,
    /// A 2 MiB entry where the host maps a THP (as KVM's EPT does), 4 KiB elsewhere.
    #[serde(rename = "2m")]
    Pmd,
}

/// A DMA device with a secondary MMU over one VMA of a process.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    pub name: String,
    /// The node the device is attached to.
    pub node: u32,
    pub process: String,
    pub vma: String,
    pub access: Access,
    pub mode: DeviceMode,
    /// The GUP path of a `notifier` device (ignored for `pin`).
    pub gup_path: GupPath,
    pub gup_context: GupContext,
    pub map_size: MapSize,
    pub pattern: PatternKind,
    pub hot_fraction: f64,
    pub hot_probability: f64,
    pub touch_lines: u32,
    pub think_ns: u64,
    /// DMA time per device event.
    pub quantum_us: u64,
    /// Device-side cost of a translation fault (round trip to the driver), on top of the
    /// kernel's fault work.
    pub fault_cost_ns: u64,
    pub start_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<u64>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            node: 0,
            process: String::new(),
            vma: String::new(),
            access: Access::Read,
            mode: DeviceMode::Notifier,
            gup_context: GupContext::Worker,
            gup_path: GupPath::ProcessVm,
            map_size: MapSize::Base,
            pattern: PatternKind::Uniform,
            hot_fraction: 0.1,
            hot_probability: 0.9,
            touch_lines: 16,
            think_ns: 0,
            quantum_us: 1000,
            fault_cost_ns: 5000,
            start_ms: 0,
            stop_ms: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Syscall {
    /// mprotect(PROT_NONE) on the VMA, and back to PROT_READ|PROT_WRITE after `protect_ms`.
    Mprotect,
    /// munmap() of the VMA.
    Munmap,
    /// UFFDIO_RWPROTECT with UFFDIO_RWPROTECT_MODE_RWP over the range of an RWP-registered
    /// VMA (7.3), and without it after `protect_ms`; it splits no VMA.
    UffdioRwprotect,
}

/// UFFDIO_REGISTER modes. Only read-write protection is modelled.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UffdMode {
    /// UFFDIO_REGISTER_MODE_RWP (7.3).
    #[default]
    Rwp,
}

/// A userfaultfd registered over one VMA, and the thread that handles its faults.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UserfaultfdConfig {
    pub process: String,
    pub vma: String,
    pub mode: UffdMode,
    /// UFFD_FEATURE_RWP_ASYNC: the kernel resolves RWP faults itself and no handler runs.
    pub rwp_async: bool,
    /// Sync mode: from an RWP fault until the handler thread's UFFDIO_RWPROTECT over the
    /// page wakes the faulting thread.
    pub handler_latency_us: u64,
}

impl Default for UserfaultfdConfig {
    fn default() -> Self {
        Self {
            process: String::new(),
            vma: String::new(),
            mode: UffdMode::Rwp,
            rwp_async: false,
            handler_latency_us: 20,
        }
    }
}

/// A system call the workload makes on a range of a VMA, once or periodically. A range
/// smaller than the VMA splits it (split_vma()) when the process is built.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActionConfig {
    pub syscall: Syscall,
    pub process: String,
    pub vma: String,
    /// Start of the range within the VMA.
    pub offset_mib: u64,
    /// Length of the range; the rest of the VMA when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len_mib: Option<u64>,
    pub start_ms: u64,
    /// How long the VMA stays PROT_NONE (mprotect); 0 keeps it so.
    pub protect_ms: u64,
    /// Repeat every `period_ms` (mprotect); 0 means once.
    pub period_ms: u64,
}

impl Default for ActionConfig {
    fn default() -> Self {
        Self {
            syscall: Syscall::Mprotect,
            process: String::new(),
            vma: String::new(),
            offset_mib: 0,
            len_mib: None,
            start_ms: 1000,
            protect_ms: 100,
            period_ms: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KvmConfig {
    /// KVM passes FOLL_HONOR_NUMA_FAULT in hva_to_pfn_slow() (patch 3 of the series); false
    /// models a KVM that never set it. Only matters under `gup_policy = "explicit"`.
    pub honor_numa_fault: bool,
    /// Cost of an EPT violation exit and kvm_faultin_pfn(), on top of GUP's work.
    pub ept_violation_cost_ns: u64,
}

impl Default for KvmConfig {
    fn default() -> Self {
        Self { honor_numa_fault: true, ept_violation_cost_ns: 3000 }
    }
}

/// /sys/kernel/mm/ksm/.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KsmConfig {
    pub run: bool,
    pub pages_to_scan: u32,
    pub sleep_millisecs: u64,
    /// Merge identical pages on different nodes into one (the kernel's default), or only
    /// within a node.
    pub merge_across_nodes: bool,
    /// ksmd's CPU time per page it looks at (calc_checksum(), the tree searches). 0: on real
    /// hardware it is under a microsecond, nothing beside `sleep_millisecs`.
    pub scan_cost_ns: u64,
    /// ksmd's CPU time per merge (write_protect_page() and replace_page(), each with a TLB
    /// flush of every CPU running the mm). 0 for the same reason; under QEMU's TCG the
    /// cross-CPU flushes take milliseconds, and `numasim validate` sets both costs from the
    /// pace the kernel's ksmd kept.
    pub merge_cost_ns: u64,
}

impl Default for KsmConfig {
    fn default() -> Self {
        Self {
            run: false,
            pages_to_scan: 100,
            sleep_millisecs: 20,
            merge_across_nodes: true,
            scan_cost_ns: 0,
            merge_cost_ns: 0,
        }
    }
}

/// `[validate]`: what `numasim validate` compares with a real kernel, and how closely.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// One tolerance per judged metric; metrics without one are shown, not judged.
    pub tolerance: Vec<ToleranceConfig>,
}

/// Sim and kernel agree on `metric` when |sim - kernel| <= abs + rel * |kernel|.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToleranceConfig {
    /// A dotted result name (`vmstat.numa_hint_faults`) or a derived one (docs/ORACLE.md, "Derived metrics").
    pub metric: String,
    pub abs: f64,
    pub rel: f64,
    /// Why this much: the kernel's noise and what the model simplifies.
    pub reason: String,
}

/// The page-aging scanner (folio_referenced() over primary and secondary MMUs).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgingConfig {
    pub enabled: bool,
    pub interval_ms: u64,
}

impl Default for AgingConfig {
    fn default() -> Self {
        Self { enabled: false, interval_ms: 1000 }
    }
}

impl ThreadConfig {
    /// Number of threads the block expands to on `machine`.
    pub fn threads(&self, machine: &MachineConfig) -> u32 {
        match (self.count_per_cpu, self.count_per_node) {
            (Some(per_cpu), _) => per_cpu * machine.nodes * machine.cpus_per_node,
            (None, Some(per_node)) => per_node * machine.nodes,
            (None, None) => self.count,
        }
    }
}

impl Config {
    /// Size of VMA `vma` of process (or vm) `process`, if both exist.
    pub fn vma_size_mib(&self, process: &str, vma: &str) -> Option<u64> {
        let in_process =
            self.process.iter().find(|p| p.name == process).and_then(|p| p.vma.iter().find(|v| v.name == vma));
        in_process
            .map(|v| v.size_mib)
            .or_else(|| self.vm.iter().find(|v| v.name == process && vma == "ram").map(|v| v.memory_mib))
    }

    /// The THP advice and KSM flag of VMA `vma` of `process` (or of a vm's `ram`).
    pub fn vma_advice(&self, process: &str, vma: &str) -> (Option<HugepageAdvice>, bool) {
        let in_process =
            self.process.iter().find(|p| p.name == process).and_then(|p| p.vma.iter().find(|v| v.name == vma));
        in_process.map(|v| (v.hugepage, v.mergeable)).unwrap_or_else(|| {
            self.vm.iter().find(|v| v.name == process).map_or((None, false), |v| (v.hugepage, v.mergeable))
        })
    }

    /// Page offsets where actions cut VMA `vma` of `process` (sorted, inside the VMA).
    pub fn vma_cuts(&self, process: &str, vma: &str) -> Vec<u64> {
        let size = self.vma_size_mib(process, vma).unwrap_or(0) * crate::sim::PAGES_PER_MIB;
        let mut cuts: Vec<u64> = self
            .action
            .iter()
            .filter(|a| a.process == process && a.vma == vma && a.syscall != Syscall::UffdioRwprotect)
            .flat_map(|a| {
                let start = a.offset_mib * crate::sim::PAGES_PER_MIB;
                [start, a.len_mib.map_or(size, |l| start + l * crate::sim::PAGES_PER_MIB)]
            })
            .filter(|&c| c > 0 && c < size)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }
}

/// A configuration error, ready to show the user.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    /// The file (or "--set") the error is in.
    pub origin: String,
    /// 1-based line of the offending key, when the key is written in the file.
    pub line: Option<usize>,
    /// Dotted key, e.g. `machine.distance` or `process[0].thread[1].cpus`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A config file's text and the name to show in errors.
#[derive(Clone, Debug)]
pub struct Source {
    pub origin: String,
    pub text: String,
}

/// Parses, overrides and validates a scenario. `overrides` are `key=value` strings as given
/// to `--set`; a value that is not valid TOML is taken as a string, so
/// `kernel.gup_policy=explicit` works unquoted.
pub fn load(src: &Source, overrides: &[String]) -> Result<Config, ConfigError> {
    let config = parse_text(src)?;
    let mut config = if overrides.is_empty() {
        config
    } else {
        let mut table: toml::Table = toml::from_str(&src.text).map_err(|e| toml_error(src, &e, ""))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        from_table(table)?
    };
    name_threads(&mut config);
    validate(&config).and_then(|()| crate::limits::check_memory_budget(&config)).map_err(|(path, message)| {
        ConfigError { origin: src.origin.clone(), line: locate(&src.text, &path), key: path, message }
    })?;
    Ok(config)
}

/// Thread blocks without a name are `worker`s, a VM's are `vcpu`s.
fn name_threads(config: &mut Config) {
    for t in config.process.iter_mut().flat_map(|p| p.thread.iter_mut()) {
        if t.name.is_empty() {
            t.name = "worker".into();
        }
    }
    for vm in &mut config.vm {
        if vm.vcpus.name.is_empty() {
            vm.vcpus.name = "vcpu".into();
        }
    }
}

/// The resolved config as TOML: every default filled in. Loading it gives the same config.
pub fn to_toml(config: &Config) -> String {
    toml::to_string(config).expect("a Config always serializes")
}

fn parse_text(src: &Source) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(&src.text).map_err(|e| toml_error(src, &e, ""))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        toml_error(src, e.inner(), &path)
    })
}

fn from_table(table: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            origin: "--set".into(),
            line: None,
            message: explain(e.inner().message()),
            key: if key == "." { String::new() } else { key },
        }
    })
}

fn toml_error(src: &Source, e: &toml::de::Error, path: &str) -> ConfigError {
    ConfigError {
        origin: src.origin.clone(),
        line: e.span().map(|s| line_of(&src.text, s.start)),
        key: if path == "." { String::new() } else { path.to_string() },
        message: explain(e.message()),
    }
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Adds "did you mean" to serde's "unknown field/variant `x`, expected one of `a`, `b`".
fn explain(message: &str) -> String {
    let message = message.trim().to_string();
    if !message.starts_with("unknown field") && !message.starts_with("unknown variant") {
        return message;
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let Some((given, valid)) = quoted.split_first() else {
        return message;
    };
    match closest(given, valid) {
        Some(best) => format!("{message}; did you mean `{best}`?"),
        None => message,
    }
}

/// The candidate closest to `given` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), *c))
        .min()
        .filter(|(d, _)| *d <= given.len().max(3) / 2)
        .map(|(_, c)| c)
}

/// Most dot-separated parts a `--set` key may have.
const MAX_KEY_PARTS: usize = 16;

fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let err =
        |key: &str, message: String| ConfigError { origin: "--set".into(), line: None, key: key.to_string(), message };
    let Some((key, raw)) = assignment.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
        return Err(err(assignment, "expected key=value".into()));
    };
    let key = key.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let path: Vec<&str> = key.split('.').collect();
    // The deepest key is `vm.0.vcpus.cpus`; a deeper one is a mistake, and following it
    // would build a table nested as deep (and recurse as deep when it is read).
    if path.iter().any(|p| p.trim().is_empty()) {
        return Err(err(key, "a key part is empty (two dots in a row, or a dot at an end)".into()));
    }
    if path.len() > MAX_KEY_PARTS {
        return Err(err(
            &key[..key.len().min(80)],
            format!("a key of {} parts: config keys have at most {MAX_KEY_PARTS}", path.len()),
        ));
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let result = set_path(&mut root, &path, value).map_err(|m| err(key, m));
    let toml::Value::Table(t) = root else { unreachable!("the root stays a table") };
    *table = t;
    result
}

/// Sets `path` (table keys and array indices) below `cur` to `value`, creating tables on the
/// way; array entries must exist already.
fn set_path(cur: &mut toml::Value, path: &[&str], value: toml::Value) -> Result<(), String> {
    let (head, rest) = path.split_first().expect("a key has at least one part");
    let slot = match cur {
        toml::Value::Table(t) => {
            if rest.is_empty() {
                t.insert(head.to_string(), value);
                return Ok(());
            }
            if !t.contains_key(*head) && rest[0].parse::<usize>().is_ok() {
                return Err(format!("there are no `{head}` entries to index"));
            }
            t.entry(head.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
        }
        toml::Value::Array(a) => {
            let idx: usize = head.parse().map_err(|_| format!("`{head}` is not an array index"))?;
            let len = a.len();
            let slot =
                a.get_mut(idx).ok_or_else(|| format!("index {idx} is out of range (the array has {len} entries)"))?;
            if rest.is_empty() {
                *slot = value;
                return Ok(());
            }
            slot
        }
        _ => return Err(format!("`{head}` is below a value that is not a table or an array")),
    };
    set_path(slot, rest, value)
}

/// The line on which dotted `path` (as validation names it, `a.b[2].c`) is written.
fn locate(text: &str, path: &str) -> Option<usize> {
    let segs: Vec<(&str, Option<usize>)> = path
        .split('.')
        .map(|seg| match seg.split_once('[') {
            Some((name, i)) => (name, i.trim_end_matches(']').parse().ok()),
            None => (seg, None),
        })
        .collect();
    locate_segments(text, &segs)
}

/// The line on which the key with these path segments (table names, then the key, taken
/// literally: a segment may contain dots) is written.
pub fn locate_key(text: &str, segments: &[&str]) -> Option<usize> {
    let segs: Vec<(&str, Option<usize>)> = segments.iter().map(|s| (*s, None)).collect();
    locate_segments(text, &segs)
}

fn locate_segments(text: &str, segs: &[(&str, Option<usize>)]) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let span = span_of(root.get_ref(), segs)?;
    Some(line_of(text, span.start))
}

fn span_of(table: &DeTable<'_>, segs: &[(&str, Option<usize>)]) -> Option<std::ops::Range<usize>> {
    let ((name, index), rest) = segs.split_first()?;
    let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *name)?;
    let value = match (index, value.get_ref()) {
        (None, _) => value,
        (Some(i), DeValue::Array(items)) => items.get(*i)?,
        (Some(_), _) => return None,
    };
    match (rest, value.get_ref()) {
        ([], _) => Some(value.span()),
        (_, DeValue::Table(inner)) => span_of(inner, rest),
        _ => None,
    }
}

type Invalid = (String, String);

/// CPU-less nodes: a size, a latency, and room for them among MAX_NODES.
fn validate_memory_nodes(m: &MachineConfig) -> Result<(), Invalid> {
    let max = crate::machine::MAX_NODES as u32;
    check(
        m.nr_nodes() <= max,
        "machine.memory_node",
        format!("machine.nodes plus CPU-less nodes must be at most {max}, got {}", m.nr_nodes()),
    )?;
    for (i, n) in m.memory_node.iter().enumerate() {
        let at = |rest: &str| format!("machine.memory_node[{i}].{rest}");
        check(n.memory_mib >= 1, at("memory_mib"), "must be at least 1")?;
        check(n.latency_ns >= 1, at("latency_ns"), "must be at least 1")?;
        let max_adist = crate::mm::memory_tiers::MAX_ABSTRACT_DISTANCE;
        check(
            n.abstract_distance.is_none_or(|a| a <= max_adist),
            at("abstract_distance"),
            format!("must be at most {max_adist}"),
        )?;
    }
    Ok(())
}

fn check(ok: bool, key: impl Into<String>, message: impl Into<String>) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err((key.into(), message.into())) }
}

/// Range and cross-reference checks serde cannot express.
pub fn validate(c: &Config) -> Result<(), Invalid> {
    let m = &c.machine;
    let max = crate::machine::MAX_NODES as u32;
    check((1..=max).contains(&m.nodes), "machine.nodes", format!("must be 1 to {max}, got {}", m.nodes))?;
    check(
        (1..=1024).contains(&m.cpus_per_node),
        "machine.cpus_per_node",
        format!("must be 1 to 1024, got {}", m.cpus_per_node),
    )?;
    check(m.memory_per_node_mib >= 1, "machine.memory_per_node_mib", "must be at least 1")?;
    check(m.local_latency_ns >= 1, "machine.local_latency_ns", "must be at least 1")?;
    validate_memory_nodes(m)?;
    if let Some(d) = &m.distance {
        let n = m.nr_nodes() as usize;
        check(
            d.len() == n && d.iter().all(|row| row.len() == n),
            "machine.distance",
            format!("must be {n} rows of {n} entries (machine.nodes plus machine.memory_node: {n})"),
        )?;
        for (i, row) in d.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let ok = if i == j { v == 10 } else { (11..=254).contains(&v) };
                check(
                    ok,
                    "machine.distance",
                    format!("entry [{i}][{j}] = {v}: the diagonal must be 10 and other entries 11 to 254"),
                )?;
            }
        }
    }
    let r = &c.run;
    check(r.duration_ms >= 1, "run.duration_ms", "must be at least 1")?;
    check(
        r.sample_ms >= 1 && r.sample_ms <= r.duration_ms,
        "run.sample_ms",
        format!("must be 1 to run.duration_ms ({})", r.duration_ms),
    )?;
    let k = &c.kernel;
    check(k.numa_balancing_scan_size_mb >= 1, "kernel.numa_balancing_scan_size_mb", "must be at least 1")?;
    // Both are unsigned ints in the kernel; the rate limit is shifted into pages.
    check(
        k.numa_balancing_promote_rate_limit_mbps <= u64::from(u32::MAX >> 8),
        "kernel.numa_balancing_promote_rate_limit_MBps",
        format!("must be at most {}", u32::MAX >> 8),
    )?;
    check(
        k.numa_balancing_hot_threshold_ms <= u64::from(u32::MAX >> 1),
        "kernel.numa_balancing_hot_threshold_ms",
        format!("must be at most {}", u32::MAX >> 1),
    )?;
    check(
        k.numa_balancing_scan_period_min_ms >= 1
            && k.numa_balancing_scan_period_min_ms <= k.numa_balancing_scan_period_max_ms,
        "kernel.numa_balancing_scan_period_min_ms",
        "must be at least 1 and at most numa_balancing_scan_period_max_ms",
    )?;
    check(k.quantum_us >= 1, "kernel.quantum_us", "must be at least 1")?;
    crate::limits::check_arithmetic(c)?;
    crate::limits::check_names(c)?;
    validate_processes(c)
}

fn validate_processes(c: &Config) -> Result<(), Invalid> {
    let nodes = c.machine.nr_nodes();
    let mut total_mib = 0u64;
    for (pi, p) in c.process.iter().enumerate() {
        let at = |rest: &str| format!("process[{pi}].{rest}");
        check(!p.name.is_empty(), at("name"), "a process needs a name")?;
        check(
            c.process[..pi].iter().all(|q| q.name != p.name),
            at("name"),
            format!("process name `{}` is used twice", p.name),
        )?;
        for (vi, v) in p.vma.iter().enumerate() {
            let at = |rest: &str| format!("process[{pi}].vma[{vi}].{rest}");
            check(!v.name.is_empty(), at("name"), "a vma needs a name")?;
            check(
                p.vma[..vi].iter().all(|w| w.name != v.name),
                at("name"),
                format!("vma name `{}` is used twice in process `{}`", v.name, p.name),
            )?;
            check(v.size_mib >= 1, at("size_mib"), "must be at least 1")?;
            if let Some(n) = v.populate_node {
                check(n < nodes, at("populate_node"), node_range(n, nodes))?;
            }
            total_mib += v.size_mib;
        }
        for &n in &p.cpuset_mems {
            check(n < nodes, at("cpuset_mems"), node_range(n, nodes))?;
        }
        for (ti, t) in p.thread.iter().enumerate() {
            let at = |rest: &str| format!("process[{pi}].thread[{ti}].{rest}");
            validate_thread(t, &c.machine, &at)?;
            let names: Vec<&str> = p.vma.iter().map(|v| v.name.as_str()).collect();
            let no_pages = t.vma.is_empty() && t.period_ms.is_some();
            check(no_pages || names.contains(&t.vma.as_str()), at("vma"), unknown_name("vma", &t.vma, &names))?;
        }
    }
    for (vi, vm) in c.vm.iter().enumerate() {
        let at = |rest: &str| format!("vm[{vi}].{rest}");
        check(!vm.name.is_empty(), at("name"), "a vm needs a name")?;
        check(
            c.process.iter().all(|p| p.name != vm.name) && c.vm[..vi].iter().all(|w| w.name != vm.name),
            at("name"),
            format!("name `{}` is already used by a process or vm", vm.name),
        )?;
        check(vm.memory_mib >= 1, at("memory_mib"), "must be at least 1")?;
        if let Some(n) = vm.populate_node {
            check(n < nodes, at("populate_node"), node_range(n, nodes))?;
        }
        validate_thread(&vm.vcpus, &c.machine, &|rest| at(&format!("vcpus.{rest}")))?;
        check(vm.vcpus.period_ms.is_none(), at("vcpus.period_ms"), "vCPU threads do not sleep")?;
        total_mib += vm.memory_mib;
    }
    let mms: Vec<(&str, Vec<&str>)> = c
        .process
        .iter()
        .map(|p| (p.name.as_str(), p.vma.iter().map(|v| v.name.as_str()).collect()))
        .chain(c.vm.iter().map(|v| (v.name.as_str(), vec!["ram"])))
        .collect();
    let find_vma = |process: &str, vma: &str, at: &dyn Fn(&str) -> String| -> Result<(), Invalid> {
        let names: Vec<&str> = mms.iter().map(|m| m.0).collect();
        let Some((_, vmas)) = mms.iter().find(|m| m.0 == process) else {
            return Err((at("process"), unknown_name("process or vm", process, &names)));
        };
        check(vmas.contains(&vma), at("vma"), unknown_name("vma", vma, vmas))
    };
    for (di, d) in c.device.iter().enumerate() {
        let at = |rest: &str| format!("device[{di}].{rest}");
        check(!d.name.is_empty(), at("name"), "a device needs a name")?;
        check(d.node < nodes, at("node"), node_range(d.node, nodes))?;
        find_vma(&d.process, &d.vma, &at)?;
        if d.gup_context == GupContext::Owner {
            let threads = c.process.iter().find(|p| p.name == d.process).is_none_or(|p| !p.thread.is_empty());
            check(threads, at("gup_context"), format!("`owner` needs a thread in process `{}`", d.process))?;
        }
        check(d.quantum_us >= 1, at("quantum_us"), "must be at least 1")?;
        check_toucher(d.hot_fraction, d.hot_probability, d.touch_lines, d.start_ms, d.stop_ms, &at)?;
    }
    validate_opt_outs(&c.kernel, &mms)?;
    for (ui, u) in c.userfaultfd.iter().enumerate() {
        let at = |rest: &str| format!("userfaultfd[{ui}].{rest}");
        find_vma(&u.process, &u.vma, &at)?;
        validate_userfaultfd(c, ui, u, &at)?;
    }
    for (ai, a) in c.action.iter().enumerate() {
        let at = |rest: &str| format!("action[{ai}].{rest}");
        find_vma(&a.process, &a.vma, &at)?;
        let size = c.vma_size_mib(&a.process, &a.vma).expect("found above");
        check(a.offset_mib < size, at("offset_mib"), format!("must be below the VMA's size ({size} MiB)"))?;
        if let Some(len) = a.len_mib {
            check(
                len >= 1 && a.offset_mib + len <= size,
                at("len_mib"),
                format!("the range must be at least 1 MiB and end within the VMA ({size} MiB)"),
            )?;
        }
        if a.syscall == Syscall::UffdioRwprotect {
            validate_rwprotect(c, a, &at)?;
        } else if a.period_ms > 0 {
            check(
                a.protect_ms > 0 && a.protect_ms < a.period_ms,
                at("protect_ms"),
                "a periodic mprotect needs 0 < protect_ms < period_ms",
            )?;
        }
    }
    check(c.ksm.sleep_millisecs >= 1, "ksm.sleep_millisecs", "must be at least 1")?;
    check(c.aging.interval_ms >= 1, "aging.interval_ms", "must be at least 1")?;
    validate_tolerances(c)?;
    crate::mm::backing_check::check_kinds(c)?;
    let total_mib = total_mib - crate::mm::backing_check::shared_mib(c);
    let have = c.machine.total_memory_mib();
    check(total_mib <= have, "process", format!("the VMAs need {total_mib} MiB but the machine has {have} MiB"))
}

/// The NUMA balancing opt-outs name processes, vms and their VMAs (`mms`: each with its
/// VMAs' names).
fn validate_opt_outs(k: &KernelConfig, mms: &[(&str, Vec<&str>)]) -> Result<(), Invalid> {
    let names: Vec<&str> = mms.iter().map(|m| m.0).collect();
    for (i, p) in k.no_numa_balancing_processes.iter().enumerate() {
        let at = format!("kernel.no_numa_balancing_processes[{i}]");
        check(names.contains(&p.as_str()), at, unknown_name("process or vm", p, &names))?;
    }
    for (i, v) in k.no_numa_balancing_vmas.iter().enumerate() {
        let at = format!("kernel.no_numa_balancing_vmas[{i}]");
        let Some((process, vma)) = v.split_once('/') else {
            return Err((at, format!("`{v}` must be `process/vma`")));
        };
        let Some((_, vmas)) = mms.iter().find(|m| m.0 == process) else {
            return Err((at, unknown_name("process or vm", process, &names)));
        };
        check(vmas.contains(&vma), at, unknown_name("vma", vma, vmas))?;
    }
    Ok(())
}

/// What UFFDIO_REGISTER_MODE_RWP needs: a release with RWP, one registration per VMA, and a
/// VMA the model can track (4 KiB pages, not mergeable).
fn validate_userfaultfd(
    c: &Config,
    ui: usize,
    u: &UserfaultfdConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    let version = c.kernel.version;
    check(
        crate::version::Rules::of(version, None).uffd_rwp,
        at("mode"),
        format!("UFFDIO_REGISTER_MODE_RWP is new in 7.3; kernel.version {version} does not have it"),
    )?;
    check(
        c.userfaultfd[..ui].iter().all(|w| (w.process.as_str(), w.vma.as_str()) != (&u.process, &u.vma)),
        at("vma"),
        format!("vma `{}` of `{}` is registered twice", u.vma, u.process),
    )?;
    let (hugepage, mergeable) = c.vma_advice(&u.process, &u.vma);
    check(
        !c.kernel.transparent_hugepage.allows(hugepage),
        at("vma"),
        "RWP over THPs (do_huge_pmd_uffd_rwp()) is not modelled: give the VMA hugepage = \"nohugepage\" \
         or set kernel.transparent_hugepage = \"never\"",
    )?;
    check(!mergeable, at("vma"), "RWP on a mergeable (KSM) VMA is not modelled")?;
    if !u.rwp_async {
        check(u.handler_latency_us >= 1, at("handler_latency_us"), "must be at least 1")?;
    }
    Ok(())
}

/// UFFDIO_RWPROTECT needs a release with RWP and a VMA registered for it (-ENOENT otherwise).
fn validate_rwprotect(c: &Config, a: &ActionConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    let version = c.kernel.version;
    check(
        crate::version::Rules::of(version, None).uffd_rwp,
        at("syscall"),
        format!("UFFDIO_RWPROTECT is new in 7.3; kernel.version {version} does not have it"),
    )?;
    check(
        c.userfaultfd.iter().any(|u| u.process == a.process && u.vma == a.vma && u.mode == UffdMode::Rwp),
        at("vma"),
        format!(
            "no [[userfaultfd]] registers vma `{}` of `{}` in mode \"rwp\" (UFFDIO_RWPROTECT returns -ENOENT)",
            a.vma, a.process
        ),
    )?;
    if a.period_ms > 0 {
        check(
            a.protect_ms < a.period_ms,
            at("protect_ms"),
            "a periodic UFFDIO_RWPROTECT needs protect_ms < period_ms (0: the handler alone resolves)",
        )?;
    }
    Ok(())
}

fn validate_tolerances(c: &Config) -> Result<(), Invalid> {
    let Some(v) = &c.validate else { return Ok(()) };
    for (i, t) in v.tolerance.iter().enumerate() {
        let at = |rest: &str| format!("validate.tolerance[{i}].{rest}");
        check(!t.metric.is_empty(), at("metric"), "a tolerance names its metric")?;
        check(
            v.tolerance[..i].iter().all(|u| u.metric != t.metric),
            at("metric"),
            format!("`{}` has two tolerances", t.metric),
        )?;
        for (key, x) in [("abs", t.abs), ("rel", t.rel)] {
            check(x.is_finite() && x >= 0.0, at(key), format!("must be a finite number >= 0, got {x}"))?;
        }
        check(!t.reason.trim().is_empty(), at("reason"), "a tolerance says why it is that wide")?;
    }
    Ok(())
}

fn validate_thread(t: &ThreadConfig, m: &MachineConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    let cpus = m.nodes * m.cpus_per_node;
    check(t.threads(m) >= 1, at("count"), "a thread block needs at least one thread")?;
    if let Some(n) = t.node {
        check(n < m.nodes, at("node"), node_range(n, m.nodes))?;
    }
    if let Some(list) = &t.cpus {
        check(!list.is_empty(), at("cpus"), "must list at least one CPU")?;
        for &cpu in list {
            check(cpu < cpus, at("cpus"), format!("CPU {cpu} does not exist: the machine has CPUs 0 to {}", cpus - 1))?;
        }
    }
    check((0.0..=1.0).contains(&t.write_fraction), at("write_fraction"), "must be in [0, 1]")?;
    validate_period(t, at)?;
    check_toucher(t.hot_fraction, t.hot_probability, t.touch_lines, t.start_ms, t.stop_ms, at)
}

/// `period_ms` and `run_us` come together, and the run fits in the period.
fn validate_period(t: &ThreadConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    match (t.period_ms, t.run_us) {
        (None, None) => Ok(()),
        (Some(_), None) => Err((at("run_us"), "a thread with `period_ms` needs `run_us`".into())),
        (None, Some(_)) => Err((at("period_ms"), "a thread with `run_us` needs `period_ms`".into())),
        (Some(period), Some(run)) => {
            check(period >= 1, at("period_ms"), "must be at least 1")?;
            let period_us = period.saturating_mul(1000);
            check(
                run >= 1 && run < period_us,
                at("run_us"),
                format!("must be at least 1 and below the period ({period_us} us)"),
            )
        }
    }
}

/// The keys threads and devices share: the hot-cold pattern, the touch size, the lifetime.
fn check_toucher(
    hot_fraction: f64,
    hot_probability: f64,
    touch_lines: u32,
    start_ms: u64,
    stop_ms: Option<u64>,
    at: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    check(hot_fraction > 0.0 && hot_fraction <= 1.0, at("hot_fraction"), "must be in (0, 1]")?;
    check((0.0..=1.0).contains(&hot_probability), at("hot_probability"), "must be in [0, 1]")?;
    check(touch_lines >= 1, at("touch_lines"), "must be at least 1")?;
    if let Some(stop) = stop_ms {
        check(stop > start_ms, at("stop_ms"), "must be after start_ms")?;
    }
    Ok(())
}

fn node_range(n: u32, nodes: u32) -> String {
    format!("node {n} does not exist: the machine has nodes 0 to {}", nodes - 1)
}

pub(crate) fn unknown_name(what: &str, given: &str, names: &[&str]) -> String {
    let mut msg = format!("no {what} named `{given}`");
    if let Some(best) = closest(given, names) {
        msg += &format!("; did you mean `{best}`?");
    } else if !names.is_empty() {
        msg += &format!(" (there are: {})", names.join(", "));
    }
    msg
}
