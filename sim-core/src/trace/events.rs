//! The events a trace holds, as plain data, and how each prints.
//!
//! Where the kernel has a tracepoint, the event keeps its system, name, fields and TP_printk
//! format: include/trace/events/sched.h and include/trace/events/migrate.h, read in the
//! v6.1 and v6.12 sources. What the kernel does not trace is in the `numasim` system, with
//! names prefixed `numasim_` so a reader never mistakes one for a kernel tracepoint.

use crate::config::GupPolicy;
use crate::engine::Nanos;
use crate::machine::Nid;
use crate::mm::gup::{FOLL_FORCE, FOLL_GET, FOLL_HONOR_NUMA_FAULT, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE};
use crate::mm::mmu_notifier::MmuNotifyEvent;
use crate::stats::Source;
use crate::trace::TraceMeta;
use crate::version::Rules;
use std::fmt::Write as _;

/// Whose tracepoint formats to print: they differ between the two oracle kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TpVersion {
    /// v6.1: mm_migrate_pages has no `nr_split`; sched_skip_vma_numa does not exist (v6.7+).
    V6_1,
    #[default]
    V6_12,
    /// 6.16+ as 7.3.4 prints them: 6.12's, and sched_skip_cpuset_numa.
    V7_3,
}

impl TpVersion {
    pub const ALL: [TpVersion; 3] = [TpVersion::V6_1, TpVersion::V6_12, TpVersion::V7_3];

    /// The formats a kernel with `rules` prints.
    pub fn of(rules: &Rules) -> Self {
        if rules.cpuset_single_node_skip {
            TpVersion::V7_3
        } else if rules.sched_skip_vma_numa_tp {
            TpVersion::V6_12
        } else {
            TpVersion::V6_1
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TpVersion::V6_1 => "6.1",
            TpVersion::V6_12 => "6.12",
            TpVersion::V7_3 => "7.3",
        }
    }

    /// Whether this kernel has the tracepoint at all.
    pub fn has(self, kind: Kind) -> bool {
        match kind {
            Kind::SchedSkipVmaNuma => self != TpVersion::V6_1,
            Kind::SchedSkipCpusetNuma => self == TpVersion::V7_3,
            _ => true,
        }
    }
}

macro_rules! kinds {
    ($($kind:ident = $system:literal : $name:literal,)*) => {
        /// An event kind: one tracepoint.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind { $($kind,)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            /// The tracepoint's system (the directory under events/).
            pub fn system(self) -> &'static str {
                match self { $(Kind::$kind => $system,)* }
            }

            /// The tracepoint's name, as `trace-cmd report` prints it.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$kind => $name,)* }
            }
        }
    };
}

kinds! {
    SchedMoveNuma = "sched": "sched_move_numa",
    SchedSwapNuma = "sched": "sched_swap_numa",
    SchedStickNuma = "sched": "sched_stick_numa",
    SchedSkipVmaNuma = "sched": "sched_skip_vma_numa",
    SchedSkipCpusetNuma = "sched": "sched_skip_cpuset_numa",
    SchedMigrateTask = "sched": "sched_migrate_task",
    SchedSwitch = "sched": "sched_switch",
    MmMigratePagesStart = "migrate": "mm_migrate_pages_start",
    MmMigratePages = "migrate": "mm_migrate_pages",
    HintFault = "numasim": "numasim_hint_fault",
    TaskNumaWork = "numasim": "numasim_task_numa_work",
    Gup = "numasim": "numasim_gup",
    MmuNotifierInvalidate = "numasim": "numasim_mmu_notifier_invalidate",
    StaleMappings = "numasim": "numasim_stale_mappings",
    StaleAccess = "numasim": "numasim_stale_access",
    KsmMerge = "numasim": "numasim_ksm_merge",
    KsmSkip = "numasim": "numasim_ksm_skip",
    KsmCow = "numasim": "numasim_ksm_cow",
    TaskRun = "numasim": "numasim_task_run",
}

impl Kind {
    /// Recorded only when named: `sched_switch` shows what a thread was doing when the
    /// balancer moved it, but CPUs switch tens of thousands of times a run, so a wildcard
    /// leaves it out (and on a kernel the oracle keeps it to the scenario's own tasks).
    pub fn named_only(self) -> bool {
        self == Kind::SchedSwitch
    }
}

/// A switched-out task's state as sched_switch prints it (`__trace_sched_switch_state()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrevState {
    /// Still runnable: preempted or its turn served (`R`).
    Runnable,
    /// Asleep until a wake (`S`).
    Sleeping,
    /// Exited (`X`).
    Dead,
}

impl PrevState {
    pub fn name(self) -> &'static str {
        match self {
            PrevState::Runnable => "R",
            PrevState::Sleeping => "S",
            PrevState::Dead => "X",
        }
    }
}

/// A task as sched_numa_pair_template records it: pid, tgid and numa group id
/// (`task_numa_group_id()`; numasim's groups are held per process, so it is that process's
/// pid, see [`crate::sched::numa::NumaGroup`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskIds {
    pub pid: u32,
    pub tgid: u32,
    pub ngid: u32,
}

/// The two tasks of sched_swap_numa / sched_stick_numa; `dst` is all zeros and `dst_cpu`
/// -1 when there is no destination task or CPU, as the kernel fills them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumaPair {
    pub src: TaskIds,
    pub src_cpu: i32,
    pub src_nid: i32,
    pub dst: TaskIds,
    pub dst_cpu: i32,
    pub dst_nid: i32,
}

/// `enum numa_vmaskip_reason` (include/linux/sched/numa_balancing.h, v6.7+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumabSkip {
    Unsuitable,
    SharedRo,
    Inaccessible,
    ScanDelay,
    PidInactive,
    IgnorePid,
    SeqCompleted,
}

impl NumabSkip {
    /// The string `__print_symbolic(reason, NUMAB_SKIP_REASON)` prints.
    pub fn name(self) -> &'static str {
        match self {
            NumabSkip::Unsuitable => "unsuitable",
            NumabSkip::SharedRo => "shared_ro",
            NumabSkip::Inaccessible => "inaccessible",
            NumabSkip::ScanDelay => "scan_delay",
            NumabSkip::PidInactive => "pid_inactive",
            NumabSkip::IgnorePid => "ignore_pid_inactive",
            NumabSkip::SeqCompleted => "seq_completed",
        }
    }
}

/// What slow GUP did with one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupResult {
    /// Followed the PTE without a fault.
    Follow,
    /// Faulted (handle_mm_fault()) and then followed.
    Fault,
    /// -EFAULT.
    Efault,
}

impl GupResult {
    fn name(self) -> &'static str {
        match self {
            GupResult::Follow => "follow",
            GupResult::Fault => "fault",
            GupResult::Efault => "efault",
        }
    }
}

/// Which tree a KSM merge found its twin in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KsmTree {
    Stable,
    Unstable,
}

/// One event's payload. Addresses are user virtual addresses (`vpn << PAGE_SHIFT`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    SchedMoveNuma {
        task: TaskIds,
        src_cpu: i32,
        src_nid: i32,
        dst_cpu: i32,
        dst_nid: i32,
    },
    SchedSwapNuma(NumaPair),
    SchedStickNuma(NumaPair),
    /// set_task_cpu(): the task's CPU changes (comm comes from the trace's pid names, prio is
    /// 120: every modelled thread is nice 0).
    SchedMigrateTask {
        pid: u32,
        orig_cpu: i32,
        dest_cpu: i32,
    },
    /// __schedule(): `cpu` switches from `prev_pid` to `next_pid` (0: the CPU's idle task,
    /// `swapper/N`). Every modelled thread is nice 0 (prio 120).
    SchedSwitch {
        cpu: u32,
        prev_pid: u32,
        prev_state: PrevState,
        next_pid: u32,
    },
    SchedSkipVmaNuma {
        numa_scan_offset: u64,
        vm_start: u64,
        vm_end: u64,
        reason: NumabSkip,
    },
    /// task_numa_work() skipped a task whose cpuset allows one node (6.16+).
    SchedSkipCpusetNuma {
        task: TaskIds,
        mems_allowed: u64,
    },
    /// migrate_pages() for one misplaced folio: mode MIGRATE_ASYNC, reason MR_NUMA_MISPLACED.
    MmMigratePagesStart,
    /// Pages moved and not (`nr_succeeded` and `nr_failed` count base pages), and THPs.
    MmMigratePages {
        succeeded: u32,
        failed: u32,
        thp_succeeded: u32,
        thp_failed: u32,
    },
    /// `nr_pages`: 1, or 512 for a THP's PMD fault.
    HintFault {
        addr: u64,
        page_nid: Nid,
        nid: Nid,
        source: Source,
        nr_pages: u32,
        local: bool,
        migrated: bool,
        migrate_fail: bool,
    },
    /// One task_numa_work() pass: scan offsets before and after, pages walked, PTEs updated.
    TaskNumaWork {
        start: u64,
        end: u64,
        scanned: u64,
        pte_updates: u64,
        seq: u32,
    },
    Gup {
        addr: u64,
        flags: u32,
        policy: GupPolicy,
        protnone: bool,
        result: GupResult,
    },
    MmuNotifierInvalidate {
        smmu: u16,
        event: MmuNotifyEvent,
        start: u64,
        end: u64,
        invalidated: u32,
        skipped: u32,
    },
    StaleMappings {
        stale: u64,
    },
    StaleAccess {
        smmu: u16,
        addr: u64,
        nid: Nid,
    },
    KsmMerge {
        addr: u64,
        nid: Nid,
        kpage_nid: Nid,
        tree: KsmTree,
    },
    /// follow_page() failed on a protnone PTE (the v6.2 – v6.4 rule).
    KsmSkip {
        addr: u64,
    },
    KsmCow {
        addr: u64,
        nid: Nid,
    },
    /// The task ran on the record's CPU (node `nid`) from the record's time for `dur` ns.
    TaskRun {
        nid: Nid,
        dur: Nanos,
    },
}

impl Event {
    pub fn kind(&self) -> Kind {
        match self {
            Event::SchedMoveNuma { .. } => Kind::SchedMoveNuma,
            Event::SchedSwapNuma(_) => Kind::SchedSwapNuma,
            Event::SchedStickNuma(_) => Kind::SchedStickNuma,
            Event::SchedSkipVmaNuma { .. } => Kind::SchedSkipVmaNuma,
            Event::SchedSkipCpusetNuma { .. } => Kind::SchedSkipCpusetNuma,
            Event::SchedMigrateTask { .. } => Kind::SchedMigrateTask,
            Event::SchedSwitch { .. } => Kind::SchedSwitch,
            Event::MmMigratePagesStart => Kind::MmMigratePagesStart,
            Event::MmMigratePages { .. } => Kind::MmMigratePages,
            Event::HintFault { .. } => Kind::HintFault,
            Event::TaskNumaWork { .. } => Kind::TaskNumaWork,
            Event::Gup { .. } => Kind::Gup,
            Event::MmuNotifierInvalidate { .. } => Kind::MmuNotifierInvalidate,
            Event::StaleMappings { .. } => Kind::StaleMappings,
            Event::StaleAccess { .. } => Kind::StaleAccess,
            Event::KsmMerge { .. } => Kind::KsmMerge,
            Event::KsmSkip { .. } => Kind::KsmSkip,
            Event::KsmCow { .. } => Kind::KsmCow,
            Event::TaskRun { .. } => Kind::TaskRun,
        }
    }

    /// The printed fields, in TP_printk order. `meta` names tasks (comm) and secondary MMUs.
    pub fn fields<'a>(&self, v: TpVersion, meta: &'a TraceMeta) -> Vec<(&'static str, Field<'a>)> {
        use Field::*;
        let smmu = |id| meta.smmu_name(id);
        match *self {
            Event::SchedMoveNuma { task, src_cpu, src_nid, dst_cpu, dst_nid } => vec![
                ("pid", U(task.pid.into())),
                ("tgid", U(task.tgid.into())),
                ("ngid", U(task.ngid.into())),
                ("src_cpu", I(src_cpu.into())),
                ("src_nid", I(src_nid.into())),
                ("dst_cpu", I(dst_cpu.into())),
                ("dst_nid", I(dst_nid.into())),
            ],
            Event::SchedSwapNuma(p) | Event::SchedStickNuma(p) => vec![
                ("src_pid", U(p.src.pid.into())),
                ("src_tgid", U(p.src.tgid.into())),
                ("src_ngid", U(p.src.ngid.into())),
                ("src_cpu", I(p.src_cpu.into())),
                ("src_nid", I(p.src_nid.into())),
                ("dst_pid", U(p.dst.pid.into())),
                ("dst_tgid", U(p.dst.tgid.into())),
                ("dst_ngid", U(p.dst.ngid.into())),
                ("dst_cpu", I(p.dst_cpu.into())),
                ("dst_nid", I(p.dst_nid.into())),
            ],
            Event::SchedMigrateTask { pid, orig_cpu, dest_cpu } => vec![
                ("comm", Comm(meta.comm(pid))),
                ("pid", U(pid.into())),
                ("prio", I(120)),
                ("orig_cpu", I(orig_cpu.into())),
                ("dest_cpu", I(dest_cpu.into())),
            ],
            Event::SchedSwitch { cpu, prev_pid, prev_state, next_pid } => {
                let comm = |pid: u32| if pid == 0 { Swapper(cpu) } else { Comm(meta.comm(pid)) };
                vec![
                    ("prev_comm", comm(prev_pid)),
                    ("prev_pid", U(prev_pid.into())),
                    ("prev_prio", I(120)),
                    ("prev_state", S(prev_state.name())),
                    ("", S("==>")),
                    ("next_comm", comm(next_pid)),
                    ("next_pid", U(next_pid.into())),
                    ("next_prio", I(120)),
                ]
            }
            Event::SchedSkipVmaNuma { numa_scan_offset, vm_start, vm_end, reason } => vec![
                ("numa_scan_offset", HexUpper(numa_scan_offset)),
                ("vm_start", HexUpper(vm_start)),
                ("vm_end", HexUpper(vm_end)),
                ("reason", S(reason.name())),
            ],
            Event::SchedSkipCpusetNuma { task, mems_allowed } => vec![
                ("comm", Comm(meta.comm(task.pid))),
                ("pid", U(task.pid.into())),
                ("tgid", U(task.tgid.into())),
                ("ngid", U(task.ngid.into())),
                ("mem_nodes_allowed", NodeList(mems_allowed)),
            ],
            Event::MmMigratePagesStart => vec![("mode", S("MIGRATE_ASYNC")), ("reason", S("numa_misplaced"))],
            Event::MmMigratePages { succeeded, failed, thp_succeeded, thp_failed } => {
                let mut f = vec![
                    ("nr_succeeded", U(succeeded.into())),
                    ("nr_failed", U(failed.into())),
                    ("nr_thp_succeeded", U(thp_succeeded.into())),
                    ("nr_thp_failed", U(thp_failed.into())),
                    ("nr_thp_split", U(0)),
                ];
                if v != TpVersion::V6_1 {
                    f.push(("nr_split", U(0)));
                }
                f.extend([("mode", S("MIGRATE_ASYNC")), ("reason", S("numa_misplaced"))]);
                f
            }
            Event::HintFault { addr, page_nid, nid, source, nr_pages, local, migrated, migrate_fail } => vec![
                ("addr", Hex(addr)),
                ("page_nid", U(page_nid.into())),
                ("nid", U(nid.into())),
                ("source", S(source_name(source))),
                ("nr_pages", U(nr_pages.into())),
                ("local", U(local.into())),
                ("migrated", U(migrated.into())),
                ("migrate_fail", U(migrate_fail.into())),
            ],
            Event::TaskNumaWork { start, end, scanned, pte_updates, seq } => vec![
                ("start", Hex(start)),
                ("end", Hex(end)),
                ("scanned", U(scanned)),
                ("nr_pte_updates", U(pte_updates)),
                ("numa_scan_seq", U(seq.into())),
            ],
            Event::Gup { addr, flags, policy, protnone, result } => vec![
                ("addr", Hex(addr)),
                ("gup_flags", Flags(flags)),
                ("policy", S(policy.name())),
                ("protnone", U(protnone.into())),
                ("result", S(result.name())),
            ],
            Event::MmuNotifierInvalidate { smmu: s, event, start, end, invalidated, skipped } => vec![
                ("smmu", Str(smmu(s))),
                ("event", S(event.name())),
                ("start", Hex(start)),
                ("end", Hex(end)),
                ("nr_invalidated", U(invalidated.into())),
                ("nr_skipped", U(skipped.into())),
            ],
            Event::StaleMappings { stale } => vec![("stale", U(stale))],
            Event::StaleAccess { smmu: s, addr, nid } => {
                vec![("smmu", Str(smmu(s))), ("addr", Hex(addr)), ("nid", U(nid.into()))]
            }
            Event::KsmMerge { addr, nid, kpage_nid, tree } => vec![
                ("addr", Hex(addr)),
                ("nid", U(nid.into())),
                ("kpage_nid", U(kpage_nid.into())),
                ("tree", S(if tree == KsmTree::Stable { "stable" } else { "unstable" })),
            ],
            Event::KsmSkip { addr } => vec![("addr", Hex(addr)), ("reason", S("protnone"))],
            Event::KsmCow { addr, nid } => vec![("addr", Hex(addr)), ("nid", U(nid.into()))],
            Event::TaskRun { nid, dur } => vec![("nid", U(nid.into())), ("dur_ns", U(dur))],
        }
    }
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Cpu => "cpu",
        Source::Kvm => "kvm",
        Source::Device => "device",
        Source::FollowPage => "follow_page",
    }
}

/// One printed value and the printf conversion the kernel uses for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    /// `%d`
    I(i64),
    /// `%d` / `%lu` of a value that is never negative
    U(u64),
    /// `%lX`
    HexUpper(u64),
    /// `%#lx`
    Hex(u64),
    /// `__print_symbolic()` and other fixed strings
    S(&'static str),
    Str(&'a str),
    /// A task's comm: at most TASK_COMM_LEN - 1 (15) characters.
    Comm(&'a str),
    /// The comm of a CPU's idle task, `swapper/N`.
    Swapper(u32),
    /// GUP flags, `FOLL_GET|FOLL_WRITE`
    Flags(u32),
    /// A node mask as `%*pbl` prints it: `0`, `0-1,3`
    NodeList(u64),
}

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Field::I(v) => write!(f, "{v}"),
            Field::U(v) => write!(f, "{v}"),
            Field::HexUpper(v) => write!(f, "{v:X}"),
            Field::Hex(v) => write!(f, "{v:#x}"),
            Field::S(s) => f.write_str(s),
            Field::Str(s) => f.write_str(s),
            Field::Comm(s) => s.chars().take(15).try_for_each(|c| f.write_char(c)),
            Field::Swapper(cpu) => write!(f, "swapper/{cpu}"),
            Field::Flags(flags) => write_gup_flags(f, flags),
            Field::NodeList(mask) => write_node_list(f, mask),
        }
    }
}

const GUP_FLAG_NAMES: [(u32, &str); 6] = [
    (FOLL_WRITE, "FOLL_WRITE"),
    (FOLL_GET, "FOLL_GET"),
    (FOLL_FORCE, "FOLL_FORCE"),
    (FOLL_LONGTERM, "FOLL_LONGTERM"),
    (FOLL_HONOR_NUMA_FAULT, "FOLL_HONOR_NUMA_FAULT"),
    (FOLL_PIN, "FOLL_PIN"),
];

/// `%*pbl`: runs of set bits as `a-b`, single bits as `a`, comma-separated.
fn write_node_list(f: &mut std::fmt::Formatter<'_>, mask: u64) -> std::fmt::Result {
    let mut sep = "";
    let mut bit = 0;
    while bit < 64 {
        if mask & 1 << bit == 0 {
            bit += 1;
            continue;
        }
        let first = bit;
        while bit < 64 && mask & 1 << bit != 0 {
            bit += 1;
        }
        match bit - 1 - first {
            0 => write!(f, "{sep}{first}")?,
            _ => write!(f, "{sep}{first}-{}", bit - 1)?,
        }
        sep = ",";
    }
    Ok(())
}

fn write_gup_flags(f: &mut std::fmt::Formatter<'_>, flags: u32) -> std::fmt::Result {
    let mut sep = "";
    for (bit, name) in GUP_FLAG_NAMES {
        if flags & bit != 0 {
            write!(f, "{sep}{name}")?;
            sep = "|";
        }
    }
    if sep.is_empty() { f.write_str("0") } else { Ok(()) }
}
