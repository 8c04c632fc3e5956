//! Why a thread changed CPU: each `sched_migrate_task` of the threads asked for, classed by
//! what the thread was doing just before, read from `sched_switch` and the NUMA placement
//! events of the same trace (numasim's or a real kernel's). A thread switched out runnable
//! and moved before it ran again was waiting on a run queue behind whatever took its CPU;
//! that is the move a balancer makes (detach_tasks() takes queued, not running, tasks).

use std::collections::BTreeMap;

use super::parse::{Line, field, parse_line};

/// How long before a move a NUMA placement event of the same thread counts as its cause:
/// task_numa_migrate() traces sched_move_numa/sched_swap_numa just before the stopper
/// moves the task, well within a tick.
const PLACEMENT_WINDOW_NS: u64 = 5_000_000;

/// The moves of the threads whose comm starts with a prefix, by cause, and how long those
/// threads waited when something else took their CPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Moves {
    pub total: u64,
    /// Cause (`waiting behind X`, `NUMA placement (sched_swap_numa)`, ...) to count.
    pub by_cause: BTreeMap<String, u64>,
    /// Who took a thread's CPU while it stayed runnable: its waits until it ran again (ns).
    pub waits: BTreeMap<String, Vec<u64>>,
    /// sched_switch events read.
    pub sched_switches: u64,
}

/// What a thread was last seen doing.
#[derive(Clone, Debug)]
enum State {
    Running,
    Waiting { behind: String, since: u64 },
    Asleep,
}

/// A comm as a kind of task: the text before its first `/` (`numa02/worker/1` → `numa02`,
/// `kworker/0:1` → `kworker`, `init/sampler/0` → `init`), the scenario's own threads as
/// `another thread of PREFIX`.
fn task_kind(comm: &str, prefix: &str) -> String {
    if comm.starts_with(prefix) {
        return format!("another {prefix} thread");
    }
    comm.split('/').next().unwrap_or(comm).to_string()
}

/// Classes the moves in `text` of the threads whose comm starts with `prefix`.
pub fn classify(text: &str, prefix: &str) -> Moves {
    let mut m = Moves::default();
    let mut state: BTreeMap<u32, State> = BTreeMap::new();
    let mut placed: BTreeMap<u32, (u64, &str)> = BTreeMap::new();
    // Each CPU's running task, for a thread moved before it ever ran: it has waited on its
    // first CPU's queue since it was created, behind what runs there.
    let mut running: BTreeMap<u32, String> = BTreeMap::new();
    for l in text.lines().filter_map(parse_line) {
        match l.event {
            "sched_switch" => {
                m.sched_switches += 1;
                switch(&l, prefix, &mut state, &mut m);
                if let Some(next) = field(l.fields, "next_comm") {
                    running.insert(l.cpu, task_kind(next, prefix));
                }
            }
            "sched_move_numa" | "sched_swap_numa" => {
                for key in ["pid", "src_pid", "dst_pid"] {
                    if let Some(pid) = field(l.fields, key).and_then(|p| p.parse().ok()) {
                        placed.insert(pid, (l.ts, l.event));
                    }
                }
            }
            "sched_migrate_task" if field(l.fields, "comm").is_some_and(|c| c.starts_with(prefix)) => {
                let Some(pid) = field(l.fields, "pid").and_then(|p| p.parse::<u32>().ok()) else { continue };
                m.total += 1;
                let cause = match (placed.get(&pid), state.get(&pid)) {
                    (Some(&(at, event)), _) if l.ts.saturating_sub(at) <= PLACEMENT_WINDOW_NS => {
                        format!("NUMA placement ({event})")
                    }
                    (_, Some(State::Waiting { behind, .. })) => format!("waiting behind {behind}"),
                    (_, Some(State::Running)) => "while running (active balance)".to_string(),
                    (_, Some(State::Asleep)) => "on wake-up".to_string(),
                    (_, None) => match field(l.fields, "orig_cpu")
                        .and_then(|c| running.get(&c.parse().ok()?))
                        .filter(|k| *k != "swapper")
                    {
                        Some(behind) => format!("waiting behind {behind}"),
                        None => "before its first sched_switch".to_string(),
                    },
                };
                *m.by_cause.entry(cause).or_default() += 1;
            }
            _ => {}
        }
    }
    m
}

/// One sched_switch: the thread switched out waits (runnable) or sleeps; the one switched
/// in runs, ending a wait.
fn switch(l: &Line, prefix: &str, state: &mut BTreeMap<u32, State>, m: &mut Moves) {
    let f = l.fields;
    let (Some(prev), Some(next)) = (field(f, "prev_comm"), field(f, "next_comm")) else { return };
    let pid = |key| field(f, key).and_then(|p| p.parse::<u32>().ok());
    if let Some(prev_pid) = pid("prev_pid").filter(|_| prev.starts_with(prefix)) {
        let runnable = field(f, "prev_state").is_some_and(|s| s.starts_with('R'));
        let s = if runnable { State::Waiting { behind: task_kind(next, prefix), since: l.ts } } else { State::Asleep };
        state.insert(prev_pid, s);
    }
    if let Some(next_pid) = pid("next_pid").filter(|_| next.starts_with(prefix))
        && let Some(State::Waiting { behind, since }) = state.insert(next_pid, State::Running)
    {
        m.waits.entry(behind).or_default().push(l.ts.saturating_sub(since));
    }
}

/// The moves as a table: causes by count, then each CPU taker's waits.
pub fn render(m: &Moves, prefix: &str) -> String {
    let mut out = format!("{} moves of {prefix}* threads ({} sched_switch events read)\n", m.total, m.sched_switches);
    if m.sched_switches == 0 {
        out += "no sched_switch in the trace: record it by name (--trace-events 'sched:*,sched:sched_switch')\n";
    }
    let mut causes: Vec<_> = m.by_cause.iter().collect();
    causes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (cause, n) in causes {
        out += &format!("{n:>8}  {cause}\n");
    }
    out += "\nswitched out runnable, by what took the CPU: times, wait median / p90 (ms)\n";
    let mut waits: Vec<_> = m.waits.iter().collect();
    waits.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    for (behind, w) in waits {
        let mut w = w.clone();
        w.sort_unstable();
        let at = |q: f64| w[((w.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
        out += &format!("{:>8}  {behind}: {:.1} / {:.1}\n", w.len(), at(0.5), at(0.9));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
# tracepoint formats of Linux 6.12; events: sched:*,sched:sched_switch
 numa02/worker/0-1002  [000]     1.000000: sched_switch:         prev_comm=numa02/worker/0 prev_pid=1002 prev_prio=120 prev_state=R ==> next_comm=init next_pid=1 next_prio=120
   kworker/1:1-30    [001]     1.001000: sched_switch:         prev_comm=numa02/worker/1 prev_pid=1003 prev_prio=120 prev_state=R+ ==> next_comm=kworker/1:1 next_pid=30 next_prio=120
        <idle>-0     [002]     1.010000: sched_migrate_task:   comm=numa02/worker/0 pid=1002 prio=120 orig_cpu=0 dest_cpu=2
        <idle>-0     [002]     1.010000: sched_switch:         prev_comm=swapper/2 prev_pid=0 prev_prio=120 prev_state=R ==> next_comm=numa02/worker/0 next_pid=1002 next_prio=120
 numa02/worker/3-1005  [003]     1.020000: sched_swap_numa:      src_pid=1005 src_tgid=1001 src_ngid=1001 src_cpu=3 src_nid=1 dst_pid=1003 dst_tgid=1001 dst_ngid=1001 dst_cpu=1 dst_nid=0
 numa02/worker/3-1005  [003]     1.021000: sched_migrate_task:   comm=numa02/worker/1 pid=1003 prio=120 orig_cpu=1 dest_cpu=3
 numa02/worker/2-1004  [002]     1.030000: sched_switch:         prev_comm=numa02/worker/2 prev_pid=1004 prev_prio=120 prev_state=S ==> next_comm=swapper/2 next_pid=0 next_prio=120
        <idle>-0     [000]     1.040000: sched_migrate_task:   comm=numa02/worker/2 pid=1004 prio=120 orig_cpu=2 dest_cpu=0
        <idle>-0     [000]     1.050000: sched_migrate_task:   comm=numa02/worker/0 pid=1002 prio=120 orig_cpu=2 dest_cpu=0
        <idle>-0     [000]     1.060000: sched_migrate_task:   comm=init pid=1 prio=120 orig_cpu=0 dest_cpu=1
        <idle>-0     [001]     1.070000: sched_migrate_task:   comm=numa02/worker/4 pid=1006 prio=120 orig_cpu=1 dest_cpu=2
";

    /// A queued worker moved is classed by what took its CPU, one that never ran by what runs
    /// on its CPU, a move right after a swap as placement, a sleeper's as a wake-up, a running
    /// one's as active balance; other tasks' moves are not counted, and a wait ends when the
    /// thread runs again.
    #[test]
    fn each_move_is_classed_by_what_the_thread_was_doing() {
        let m = classify(TRACE, "numa02/");
        assert_eq!(m.total, 5);
        let expected = [
            ("NUMA placement (sched_swap_numa)", 1),
            ("on wake-up", 1),
            ("waiting behind init", 1),
            ("waiting behind kworker", 1),
            ("while running (active balance)", 1),
        ];
        assert_eq!(m.by_cause, expected.map(|(k, v)| (k.to_string(), v)).into());
        assert_eq!(m.waits["init"], [10_000_000]);
        assert!(!m.waits.contains_key("kworker"), "worker 1 never ran again");
        let table = render(&m, "numa02/");
        assert!(table.starts_with("5 moves of numa02/* threads (4 sched_switch events read)\n"), "{table}");
        assert!(table.contains("       1  init: 10.0 / 10.0\n"), "{table}");
    }

    #[test]
    fn a_trace_without_sched_switch_says_how_to_record_it() {
        let m = classify("", "numa02/");
        assert!(render(&m, "numa02/").contains("--trace-events 'sched:*,sched:sched_switch'"));
    }
}
