//! `[[process]]`: VMAs and thread blocks.

use serde::{Deserialize, Serialize};

use super::{Backing, HugepageAdvice, HugetlbPage, MachineConfig, MemPolicy, is_default};

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
    /// Instead of `period_ms`: `[[at_ms, run_us], ...]`, a recorded schedule. Each thread
    /// wakes at every `at_ms` and runs `run_us` of CPU time; a burst not done when the next
    /// is due runs on into it. The block starts at its first burst and sleeps after its last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bursts: Vec<[u64; 2]>,
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
            bursts: Vec::new(),
        }
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
