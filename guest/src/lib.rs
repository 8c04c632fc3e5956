//! The guest's plan (what the host asks the guest to run) and its frames (what the guest sends
//! back over the data serial port). Shared by the guest program and the host's `oracle` crate,
//! so the two cannot disagree on a field.
//!
//! The host resolves a numasim config into a [`Plan`]: every count expanded, every slice cut,
//! every initial CPU chosen. The guest only carries it out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bytes in a base page on x86_64.
pub const PAGE_SIZE: u64 = 4096;
/// Where the plan lives in the initramfs.
pub const PLAN_PATH: &str = "/plan.json";
/// Where brd.ko lives in the initramfs (when the plan needs a ramdisk).
pub const BRD_PATH: &str = "/brd.ko";
/// Where gupdev.ko (oracle/gupdev/, built for the booted kernel) lives when the plan uses it.
pub const GUPDEV_PATH: &str = "/gupdev.ko";
/// Most gupdev devices (secondary MMUs) a plan may have.
pub const MAX_SMMUS: usize = 16;
/// Size of the brd ramdisk O_DIRECT callers use; a caller's page i uses block i mod its pages.
pub const RAMDISK_KIB: u64 = 16 * 1024;
/// The serial port the guest writes frames to (ttyS0 is the kernel console).
pub const DATA_PORT: &str = "/dev/ttyS1";
/// The serial port the guest writes the kernel's trace to: the bytes of tracefs's `trace`
/// file, whose length and checksum follow on the data port in a [`Frame::Trace`].
pub const TRACE_PORT: &str = "/dev/ttyS2";
/// Most thread slots (workload threads and GUP callers) a plan may have.
pub const MAX_THREADS: usize = 512;
/// The key, among the files read at the start and the end, of the task table: one line per
/// task, `pid tid ppid cpus_allowed comm`, then the three fields of its
/// /proc/PID/task/TID/schedstat (run ns, wait ns, timeslices).
pub const TASKS_FILE: &str = "tasks:schedstat";

/// The memory tiers the kernel built (mm/memory-tiers.c): `memory_tierN/nodelist` each, read
/// by the guest at the start and named by the host in guest.json.
pub const MEMORY_TIERING_DIR: &str = "/sys/devices/virtual/memory_tiering";
/// Most VMAs per process.
pub const MAX_VMAS: usize = 16;
/// Most processes (workload processes and GUP-caller processes).
pub const MAX_PROCESSES: usize = 64;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Only boot, say hello and power off (the accelerator probe).
    pub probe: bool,
    pub seed: u64,
    pub duration_ms: u64,
    pub sample_ms: u64,
    pub nodes: u32,
    pub cpus_per_node: u32,
    /// CPU-less nodes, numbered after the `nodes` CPU nodes.
    #[serde(default)]
    pub memory_nodes: u32,
    /// Files written in order before the workload starts (sysctls, debugfs knobs, sysfs).
    pub writes: Vec<(String, String)>,
    /// Files written at the workload's start, after setting up (NUMA balancing goes on here,
    /// so populating is not scanned).
    pub start_writes: Vec<(String, String)>,
    /// Load /brd.ko with one ramdisk of this many KiB (O_DIRECT GUP callers need it).
    pub brd_kib: Option<u64>,
    /// memfds init creates before it forks, so every process inherits them; a
    /// [`VmaBacking::Memfd`] names one by index.
    #[serde(default)]
    pub memfds: Vec<MemfdPlan>,
    /// Secondary MMUs realised by gupdev (load /gupdev.ko), indexed by [`Touch::Smmu`] and
    /// [`RemotePath::Smmu`]; each is one open /dev/gupdev.
    #[serde(default)]
    pub smmus: Vec<SmmuPlan>,
    pub processes: Vec<ProcessPlan>,
    /// GUP callers in processes of their own (process_vm_*, /proc/PID/mem).
    pub remote_callers: Vec<RemoteCaller>,
    /// Tracepoints to record while the workload runs.
    #[serde(default)]
    pub trace: Option<TracePlan>,
}

/// Tracepoints the guest enables through tracefs for the workload's run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TracePlan {
    /// `system/event`, as the directories under /sys/kernel/tracing/events/ name them;
    /// those the kernel does not have are reported, not an error.
    pub events: Vec<String>,
    /// buffer_size_kb: the ring buffer of each CPU. It does not overwrite: when a CPU's buffer
    /// is full, that CPU's later events are dropped and counted.
    pub buffer_kb_per_cpu: u64,
    /// `system/event` and the filter written to its `filter` file before recording.
    #[serde(default)]
    pub filters: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessPlan {
    pub name: String,
    pub vmas: Vec<VmaPlan>,
    pub threads: Vec<ThreadPlan>,
    pub actions: Vec<ActionPlan>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VmaPlan {
    pub name: String,
    pub pages: u64,
    /// First-touch every page from a thread bound to this node before the workload starts.
    pub populate_node: Option<u32>,
    pub mergeable: bool,
    /// 0: every page unique; N: page i holds content i mod N.
    pub content_classes: u32,
    /// madvise(MADV_HUGEPAGE) (true) or madvise(MADV_NOHUGEPAGE) (false).
    pub hugepage: Option<bool>,
    /// Registered with userfaultfd RWP (7.3): `Some(rwp_async)`.
    #[serde(default)]
    pub uffd_rwp: Option<bool>,
    #[serde(default)]
    pub backing: VmaBacking,
}

/// What backs a VMA.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum VmaBacking {
    /// mmap(MAP_PRIVATE | MAP_ANONYMOUS).
    #[default]
    Anon,
    /// [`Plan::memfds`]`[file]`, all of it, mapped MAP_SHARED.
    Memfd { file: usize },
    /// mmap(MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB) of huge pages of `page_kib`, taken
    /// from the pool `hugepages=` reserved on the kernel command line.
    Hugetlb { page_kib: u64 },
}

/// One memfd: its name (memfd_create()'s, shown in /proc/PID/maps) and size.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MemfdPlan {
    pub name: String,
    pub pages: u64,
    /// A mapper populates it before the start: the others' first touches find its pages.
    pub populated: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub enum Pattern {
    Uniform,
    Sequential,
    HotCold { hot_pages: u64, hot_probability: f64 },
}

/// How a thread touches its range.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Touch {
    /// Loads and stores from the CPU.
    Cpu,
    /// O_DIRECT I/O between the page and the ramdisk: `write_buffer` reads from the disk into
    /// the page (GUP with FOLL_WRITE), otherwise the page is written to the disk (GUP read).
    ODirect { write_buffer: bool },
    /// Registers the whole range as io_uring fixed buffers (FOLL_LONGTERM pin) and holds it.
    LongtermPin,
    /// Accesses through the secondary MMU `smmu` of [`Plan::smmus`] (gupdev), mapping what
    /// is missing through its GUP: a device in the owner's context, or a KVM-like vCPU.
    Smmu { smmu: usize },
}

/// Who a secondary MMU stands for: its counters go to numasim's names by kind.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SmmuKind {
    Device,
    Kvm,
}

/// One gupdev device: its ATTACH and the flags of its MAPs (oracle/gupdev/README.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SmmuPlan {
    /// `device/<name>` or `kvm/<vm>`.
    pub name: String,
    pub kind: SmmuKind,
    /// The process (index into [`Plan::processes`]) and VMA it maps.
    pub process: usize,
    pub vma: usize,
    /// GUPDEV_NOTIFIER_*: 0 none (long-term pin), 1 unconditional, 2 smart.
    pub notifier: u32,
    /// GUP from a kernel thread on this node (MAP_KTHREAD); None: in the caller's context.
    pub kthread_node: Option<u32>,
    /// MAP_WRITE: map writable (FOLL_WRITE); accesses then write.
    pub write: bool,
    /// Pass FOLL_HONOR_NUMA_FAULT where the kernel has it (on a kernel without the flag
    /// every GUP honours hinting faults: the map goes without it).
    pub honor_numa_fault: bool,
    /// MAP_PIN_LONGTERM of the whole VMA at the start, held to the stop.
    pub pin: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ThreadPlan {
    /// `process/block/i`, as numasim names threads.
    pub name: String,
    pub vma: usize,
    /// The thread's range within the VMA, in pages.
    pub first_page: u64,
    pub pages: u64,
    pub pattern: Pattern,
    pub touch_lines: u32,
    pub think_ns: u64,
    pub write_fraction: f64,
    pub start_ms: u64,
    pub stop_ms: Option<u64>,
    /// The CPU the thread starts on.
    pub start_cpu: u32,
    /// CPUs the thread may run on afterwards (empty: all).
    pub cpus: Vec<u32>,
    pub touch: Touch,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ActionKind {
    /// PROT_NONE for `protect_ms` (0: for good), every `period_ms` (0: once).
    Mprotect {
        protect_ms: u64,
        period_ms: u64,
    },
    Munmap,
    /// UFFDIO_RWPROTECT arming the range for `protect_ms` (0: until the handler resolves),
    /// every `period_ms` (0: once).
    Rwprotect {
        protect_ms: u64,
        period_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActionPlan {
    pub vma: usize,
    pub first_page: u64,
    pub pages: u64,
    pub start_ms: u64,
    pub kind: ActionKind,
}

/// Which user-space GUP path a remote caller takes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum RemotePath {
    /// process_vm_readv (no flag) / process_vm_writev (FOLL_WRITE).
    ProcessVm,
    /// pread/pwrite on /proc/PID/mem (FOLL_FORCE).
    ProcMem,
    /// Accesses through gupdev's secondary MMU `smmu` of [`Plan::smmus`] (a device whose
    /// driver GUPs from a kernel thread on its node).
    Smmu { smmu: usize },
}

/// A device realised as a process on the device's node reaching into another's memory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RemoteCaller {
    /// `device/<name>`.
    pub name: String,
    pub node: u32,
    pub process: usize,
    pub vma: usize,
    pub write: bool,
    pub path: RemotePath,
    pub pattern: Pattern,
    pub touch_lines: u32,
    pub think_ns: u64,
    pub start_ms: u64,
    pub stop_ms: Option<u64>,
}

impl Plan {
    /// Thread slots in order: every process's threads, then the remote callers.
    pub fn slot_names(&self) -> Vec<String> {
        let threads = self.processes.iter().flat_map(|p| p.threads.iter().map(|t| t.name.clone()));
        threads.chain(self.remote_callers.iter().map(|c| c.name.clone())).collect()
    }
}

/// What page `page` of a VMA holds: equal values for pages of one content class, otherwise
/// a value no other page has. Stored in the page's first word; the rest stays zero.
pub fn page_content(salt: u64, page: u64, content_classes: u32) -> u64 {
    if content_classes == 0 {
        (salt << 40) | (page + 1)
    } else {
        0x5a5a_0000_0000 + page % u64::from(content_classes) + 1
    }
}

/// The key of a thread's `se.sum_exec_runtime` (nanoseconds) in [`ThreadSample::sched`].
pub const RUNTIME_KEY: &str = "sum_exec_runtime_ns";

/// One line on the data port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Frame {
    /// Init is running: the kernel release and seconds since boot.
    Hello {
        release: String,
        uptime_s: f64,
    },
    /// The workload is set up; sampling starts. `setup_ms` is what populating took.
    Started {
        setup_ms: u64,
        /// The PTE walk timed before the workload was set up (None from a guest without it).
        #[serde(default)]
        pte_walk: Option<PteWalk>,
    },
    Sample(Sample),
    /// Files read once, by path: `start` before the workload starts (caches, sched domains,
    /// /proc/schedstat), `end` after it stopped (/proc/schedstat).
    Files {
        when: String,
        files: BTreeMap<String, String>,
    },
    /// The guest could not do what the plan says.
    Error {
        message: String,
    },
    /// The trace was written to [`TRACE_PORT`], zlib-compressed: `bytes` bytes with FNV-1a
    /// hash `fnv`.
    Trace(TraceInfo),
    /// The kernel cannot run the plan (gupdev.ko refused or of another ABI): bad input.
    Unsupported {
        message: String,
    },
    /// Everything ran; the guest powers off next.
    Done {
        elapsed_ms: u64,
    },
}

/// What a change_protection() walk over populated PTEs costs a task on this kernel and
/// accelerator: mprotect(PROT_READ) and back over `pages` populated base pages, and over one,
/// timed by the guest before the workload is set up while `busy_cpus` other vCPUs spin (as
/// the workload's threads will keep them busy). Medians of `round_trips` round trips; each
/// is two walks and two TLB flushes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PteWalk {
    pub pages: u64,
    pub busy_cpus: u32,
    pub round_trips: u32,
    /// The walking thread's CPU time (CLOCK_THREAD_CPUTIME_ID: its sum_exec_runtime, what
    /// task_numa_work() charges node_stamp for).
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// The same over one page: the flushes and the calls without the PTEs (None from a guest
    /// built before the one-page timing, 2026-12-01).
    #[serde(default)]
    pub one_page_cpu_ns: Option<u64>,
    #[serde(default)]
    pub one_page_wall_ns: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Guest CLOCK_MONOTONIC since the workload started.
    pub t_ms: f64,
    /// /proc/vmstat lines numa_*, pgmigrate_*, thp_migration_*, cow_ksm (absolute values).
    pub vmstat: BTreeMap<String, u64>,
    /// /sys/kernel/mm/ksm/pages_* (absolute values).
    pub ksm: BTreeMap<String, u64>,
    /// Pages per node of every workload VMA (from /proc/PID/numa_maps), `process/vma`.
    pub vmas: Vec<(String, Vec<u64>)>,
    pub threads: Vec<ThreadSample>,
    /// Each gupdev device's counters (GUPDEV_IOC_STATS), in [`Plan::smmus`] order.
    #[serde(default)]
    pub smmus: Vec<SmmuSample>,
    /// RWP fault messages the userfaultfd handler threads resolved so far.
    #[serde(default)]
    pub uffd_rwp_faults: u64,
    /// Sync RWP faults a workload thread timed from its access to its wake so far, and their
    /// summed time: the round trip through handle_userfault(), the handler's read and its
    /// UFFDIO_RWPROTECT wake.
    #[serde(default)]
    pub uffd_rwp_waits: u64,
    #[serde(default)]
    pub uffd_rwp_wait_ns: u64,
    /// /proc/PID/mem reads that failed with EIO so far: mem_rw() turns GUP's -EFAULT (a sync
    /// RWP fault without FAULT_FLAG_ALLOW_RETRY) into -EIO when nothing was copied.
    #[serde(default)]
    pub proc_mem_eio: u64,
    /// The sampler's own CPU time so far (its thread's sum_exec_runtime).
    #[serde(default)]
    pub sampler_cpu_ns: u64,
    /// The CPU time of this sample's numa_maps walk; 0 when the sample repeats the last walk.
    #[serde(default)]
    pub placement_walk_cpu_ns: u64,
    /// The CPU the sampler took this sample on (sched_getcpu()).
    #[serde(default)]
    pub sampler_cpu: Option<u32>,
}

/// The counters of one secondary MMU at its last GUPDEV_IOC_STATS.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SmmuSample {
    pub name: String,
    pub kind: Option<SmmuKind>,
    /// gupdev_stats fields by their C names (stale_mappings_max, stale_accesses, ...).
    pub stats: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ThreadSample {
    pub name: String,
    /// Last CPU it ran on (/proc/PID/task/TID/stat field 39); -1 once it has exited.
    pub cpu: i32,
    /// Minor faults so far (stat field 10): with its VMAs populated before the start, a
    /// workload thread's are its NUMA hinting faults.
    #[serde(default)]
    pub minflt: Option<u64>,
    /// Touches (or GUP calls) made so far.
    pub touches: u64,
    /// From /proc/PID/task/TID/sched: numa_preferred_nid, mm->numa_scan_seq,
    /// numa_pages_migrated, total_numa_faults, se.nr_migrations, nr_voluntary_switches,
    /// nr_involuntary_switches; and [`RUNTIME_KEY`] from its schedstat.
    pub sched: BTreeMap<String, i64>,
}

/// What came with a trace: which events it holds, their tracefs formats, when the workload
/// started on the trace clock, and what the ring buffer dropped.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TraceInfo {
    /// Events enabled (`system/event`).
    pub enabled: Vec<String>,
    /// Events of the plan this kernel does not have.
    pub absent: Vec<String>,
    /// events/<system>/<event>/format of each enabled event.
    pub formats: BTreeMap<String, String>,
    /// CLOCK_MONOTONIC (the `mono` trace clock) when the workload started.
    pub go_ns: u64,
    /// (pid, name) of every workload process and GUP-caller process.
    pub processes: Vec<(u32, String)>,
    /// (tid, pid, name) of every workload thread and GUP caller.
    pub threads: Vec<(u32, u32, String)>,
    /// Events each CPU's full ring buffer dropped (per_cpu/cpuN/stats).
    pub dropped_per_cpu: Vec<u64>,
    /// Compressed size and hash, and how long the port took to send it.
    pub bytes: u64,
    pub fnv: u64,
    pub ship_ms: u64,
}

/// FNV-1a over `data`, continuing from `h` (start with [`FNV_OFFSET`]).
pub fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
