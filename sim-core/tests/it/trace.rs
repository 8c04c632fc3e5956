//! The ftrace text of every event kind, pinned: field names and formats as the kernel's
//! TP_printk prints them (include/trace/events/sched.h and migrate.h of v6.1 and v6.12),
//! in `trace-cmd report` lines.

use sim_core::config::GupPolicy;
use sim_core::mm::gup::{FOLL_GET, FOLL_HONOR_NUMA_FAULT, FOLL_WRITE};
use sim_core::mm::mmu_notifier::MmuNotifyEvent;
use sim_core::stats::Source;
use sim_core::trace::events::{GupResult, KsmTree, NumaPair, NumabSkip, PrevState, TaskIds};
use sim_core::trace::output::write_ftrace;
use sim_core::trace::parse::count_events;
use sim_core::trace::{Event, KSMD_PID, Kind, PidKind, Record, TpVersion, Trace, TraceMeta, TraceOptions};

fn meta() -> TraceMeta {
    let mut m = TraceMeta { nr_cpus: 8, cpus_per_node: 4, title: "test".into(), ..Default::default() };
    m.comms.insert(1001, ("numa02".into(), PidKind::Process));
    m.comms.insert(1003, ("numa02/worker/1".into(), PidKind::Thread { tgid: 1001, vcpu: false }));
    m.comms.insert(1005, ("a-very-long-thread-name".into(), PidKind::Thread { tgid: 1001, vcpu: false }));
    m.comms.insert(1010, ("gpu0".into(), PidKind::DeviceWorker));
    m.comms.insert(KSMD_PID, ("ksmd".into(), PidKind::Kthread));
    m.smmus = vec!["gpu0".into(), "vm0/ept".into()];
    m
}

/// One event of every kind, at 1.5 s plus a microsecond each.
fn one_of_each() -> Vec<(u32, u32, Event)> {
    let t = |pid, tgid, ngid| TaskIds { pid, tgid, ngid };
    let pair =
        NumaPair { src: t(1003, 1001, 1001), src_cpu: 1, src_nid: 0, dst: t(1005, 1001, 1001), dst_cpu: 5, dst_nid: 1 };
    let stick = NumaPair { dst: TaskIds::default(), dst_cpu: -1, dst_nid: -1, ..pair };
    vec![
        (1, 1003, Event::SchedMoveNuma { task: t(1003, 1001, 1003), src_cpu: 1, src_nid: 0, dst_cpu: 6, dst_nid: 1 }),
        (1, 1003, Event::SchedSwapNuma(pair)),
        (1, 1003, Event::SchedStickNuma(stick)),
        (
            1,
            1003,
            Event::SchedSkipVmaNuma {
                numa_scan_offset: 0x10000,
                vm_start: 0x10000,
                vm_end: 0x2010000,
                reason: NumabSkip::PidInactive,
            },
        ),
        (1, 1003, Event::SchedSkipCpusetNuma { task: t(1003, 1001, 1003), mems_allowed: 0b1011 }),
        (5, 1005, Event::SchedMigrateTask { pid: 1005, orig_cpu: 5, dest_cpu: 2 }),
        (2, 1003, Event::SchedSwitch { cpu: 2, prev_pid: 1003, prev_state: PrevState::Runnable, next_pid: 0 }),
        (1, 1003, Event::MmMigratePagesStart),
        (1, 1003, Event::MmMigratePages { succeeded: 512, failed: 0, thp_succeeded: 1, thp_failed: 0 }),
        (
            5,
            1005,
            Event::HintFault {
                addr: 0x7a000,
                page_nid: 0,
                nid: 1,
                source: Source::Cpu,
                nr_pages: 1,
                local: false,
                migrated: true,
                migrate_fail: false,
            },
        ),
        (1, 1003, Event::TaskNumaWork { start: 0, end: 0x10200000, scanned: 66032, pte_updates: 65000, seq: 2 }),
        (
            4,
            1010,
            Event::Gup {
                addr: 0x7b000,
                flags: FOLL_GET | FOLL_WRITE | FOLL_HONOR_NUMA_FAULT,
                policy: GupPolicy::Implicit,
                protnone: true,
                result: GupResult::Fault,
            },
        ),
        (
            0,
            1001,
            Event::MmuNotifierInvalidate {
                smmu: 0,
                event: MmuNotifyEvent::ProtectionVma,
                start: 0x10000,
                end: 0x4010000,
                invalidated: 3,
                skipped: 9,
            },
        ),
        (0, 1001, Event::StaleMappings { stale: 9 }),
        (4, 1010, Event::StaleAccess { smmu: 0, addr: 0x12000, nid: 0 }),
        (0, KSMD_PID, Event::KsmMerge { addr: 0x13000, nid: 1, kpage_nid: 0, tree: KsmTree::Unstable }),
        (0, KSMD_PID, Event::KsmSkip { addr: 0x14000 }),
        (2, 1003, Event::KsmCow { addr: 0x13000, nid: 0 }),
        (3, 1003, Event::TaskRun { nid: 0, dur: 4_000_000 }),
    ]
}

fn ftrace(version: TpVersion) -> String {
    let options = TraceOptions { kinds: Kind::ALL.to_vec(), events: "*:*".into(), version, max_bytes: 1 << 20 };
    let mut trace = Trace::new(options, meta());
    for (i, (cpu, pid, event)) in one_of_each().into_iter().enumerate() {
        trace.push(Record { ts: 1_500_000_000 + i as u64 * 1000, cpu, pid, event });
    }
    trace.finish(2_000_000_000);
    let mut out = Vec::new();
    write_ftrace(&trace, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

const V6_12: &str = "\
# numasim trace: test
# tracepoint formats of Linux 6.12; events: *:*
cpus=8
 numa02/worker/1-1003  [001]     1.500000: sched_move_numa:      pid=1003 tgid=1001 ngid=1003 src_cpu=1 src_nid=0 dst_cpu=6 dst_nid=1
 numa02/worker/1-1003  [001]     1.500001: sched_swap_numa:      src_pid=1003 src_tgid=1001 src_ngid=1001 src_cpu=1 src_nid=0 dst_pid=1005 dst_tgid=1001 dst_ngid=1001 dst_cpu=5 dst_nid=1
 numa02/worker/1-1003  [001]     1.500002: sched_stick_numa:     src_pid=1003 src_tgid=1001 src_ngid=1001 src_cpu=1 src_nid=0 dst_pid=0 dst_tgid=0 dst_ngid=0 dst_cpu=-1 dst_nid=-1
 numa02/worker/1-1003  [001]     1.500003: sched_skip_vma_numa:  numa_scan_offset=10000 vm_start=10000 vm_end=2010000 reason=pid_inactive
 a-very-long-thr-1005  [005]     1.500005: sched_migrate_task:   comm=a-very-long-thr pid=1005 prio=120 orig_cpu=5 dest_cpu=2
 numa02/worker/1-1003  [002]     1.500006: sched_switch:         prev_comm=numa02/worker/1 prev_pid=1003 prev_prio=120 prev_state=R ==> next_comm=swapper/2 next_pid=0 next_prio=120
 numa02/worker/1-1003  [001]     1.500007: mm_migrate_pages_start: mode=MIGRATE_ASYNC reason=numa_misplaced
 numa02/worker/1-1003  [001]     1.500008: mm_migrate_pages:     nr_succeeded=512 nr_failed=0 nr_thp_succeeded=1 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced
 a-very-long-thr-1005  [005]     1.500009: numasim_hint_fault:   addr=0x7a000 page_nid=0 nid=1 source=cpu nr_pages=1 local=0 migrated=1 migrate_fail=0
 numa02/worker/1-1003  [001]     1.500010: numasim_task_numa_work: start=0x0 end=0x10200000 scanned=66032 nr_pte_updates=65000 numa_scan_seq=2
            gpu0-1010  [004]     1.500011: numasim_gup:          addr=0x7b000 gup_flags=FOLL_WRITE|FOLL_GET|FOLL_HONOR_NUMA_FAULT policy=implicit protnone=1 result=fault
          numa02-1001  [000]     1.500012: numasim_mmu_notifier_invalidate: smmu=gpu0 event=MMU_NOTIFY_PROTECTION_VMA start=0x10000 end=0x4010000 nr_invalidated=3 nr_skipped=9
          numa02-1001  [000]     1.500013: numasim_stale_mappings: stale=9
            gpu0-1010  [004]     1.500014: numasim_stale_access: smmu=gpu0 addr=0x12000 nid=0
            ksmd-40    [000]     1.500015: numasim_ksm_merge:    addr=0x13000 nid=1 kpage_nid=0 tree=unstable
            ksmd-40    [000]     1.500016: numasim_ksm_skip:     addr=0x14000 reason=protnone
 numa02/worker/1-1003  [002]     1.500017: numasim_ksm_cow:      addr=0x13000 nid=0
 numa02/worker/1-1003  [003]     1.500018: numasim_task_run:     nid=0 dur_ns=4000000
# numasim: end of trace, 18 events
";

#[test]
fn every_event_kind_prints_as_the_kernel_prints_it() {
    assert_eq!(ftrace(TpVersion::V6_12), V6_12);
}

/// include/trace/events/sched.h (7.2.13, 7.3.4): `mem_nodes_allowed=%*pbl`.
#[test]
fn linux_7_3_prints_sched_skip_cpuset_numa() {
    let text = ftrace(TpVersion::V7_3);
    let line = text.lines().find(|l| l.contains(" sched_skip_cpuset_numa: ")).expect("7.3 has it");
    assert!(line.ends_with("comm=numa02/worker/1 pid=1003 tgid=1001 ngid=1003 mem_nodes_allowed=0-1,3"), "{line}");
    assert_eq!(count_events(&text).events.values().sum::<u64>(), 19);
}

#[test]
fn linux_6_1_has_no_nr_split_and_no_sched_skip_vma_numa() {
    let text = ftrace(TpVersion::V6_1);
    assert!(text.contains("tracepoint formats of Linux 6.1;"));
    assert!(!text.contains("sched_skip_vma_numa"), "added in v6.7");
    let migrate = text.lines().find(|l| l.contains(" mm_migrate_pages: ")).unwrap();
    assert!(migrate.ends_with(
        "nr_succeeded=512 nr_failed=0 nr_thp_succeeded=1 nr_thp_failed=0 nr_thp_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced"
    ));
    assert_eq!(count_events(&text).events.values().sum::<u64>(), 17);
}

#[test]
fn one_kind_of_each_event_is_pinned() {
    let kinds: Vec<Kind> = one_of_each().iter().map(|(_, _, e)| e.kind()).collect();
    assert_eq!(kinds, Kind::ALL, "the pinned text covers every kind the model records, in declaration order");
}

#[test]
fn a_trace_past_its_bound_is_cut_in_time_and_says_so() {
    let options =
        TraceOptions { kinds: Kind::ALL.to_vec(), events: "*:*".into(), version: TpVersion::V6_12, max_bytes: 4096 };
    let mut trace = Trace::new(options, meta());
    for i in 0..1000u64 {
        trace.set_current(0, 1001, i * 1000, i * 1000);
        trace.push_current(Event::StaleMappings { stale: i });
    }
    trace.finish(1_000_000);
    let mut out = Vec::new();
    let written = write_ftrace(&trace, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.len() as u64 <= 4096, "{} bytes", text.len());
    assert_eq!(written.bytes, text.len() as u64);
    let t = written.truncated.expect("cut");
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("# numasim: trace stopped at "), "{last}");
    assert_eq!(written.events + t.missing, 1000);
    assert_eq!(count_events(&text).events["numasim_stale_mappings"], written.events);
    // What the file holds is every event before the cut.
    assert_eq!(t.at, written.events * 1000);
}
