//! Tracing (kernel/trace): events recorded as plain data while the simulation runs and
//! printed afterwards, as ftrace text ([`output`]) or Chrome JSON for Perfetto ([`chrome`]).
//!
//! The sink is the optional [`Trace`] resource. With tracing off it does not exist, and a
//! call site costs one `Option` check; every call site is on a slow path (a fault, a scan,
//! a notifier call) or once per quantum, never per touch. Recording keeps events in memory
//! (a bounded number: `--trace-max-mib`); when the bound is hit recording stops, the time
//! is kept, and the output says from when on events are missing.

pub mod chrome;
pub mod events;
pub mod kernel;
pub mod moves;
pub mod output;
pub mod parse;

use std::collections::BTreeMap;

use bevy_ecs::resource::Resource;

pub use events::{Event, Kind, TpVersion};
/// What a run's summary says of the trace file.
pub use results::TraceSummary;

use crate::engine::Nanos;
use crate::machine::Nid;

/// pid of ksmd in traces (a kernel thread: below the pids numasim gives processes).
pub const KSMD_PID: u32 = 40;

/// One recorded event with the common fields of every tracepoint: time, CPU and the pid of
/// the task it ran in (`current`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    pub ts: Nanos,
    pub cpu: u32,
    pub pid: u32,
    pub event: Event,
}

/// What a pid is, for naming it and for placing its events on a Perfetto track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidKind {
    /// A user thread of process `tgid`; `vcpu` for a KVM vCPU thread.
    Thread { tgid: u32, vcpu: bool },
    /// A process (its main thread makes the process's system calls).
    Process,
    /// A driver's kernel worker for a device.
    DeviceWorker,
    /// Another kernel thread (ksmd).
    Kthread,
}

/// Names the output needs: the comm of every pid (the kernel's saved_cmdlines), the
/// secondary MMUs, and the run's identity for the header.
#[derive(Clone, Debug, Default)]
pub struct TraceMeta {
    pub comms: BTreeMap<u32, (String, PidKind)>,
    /// Secondary MMU names; events name one by its index here.
    pub smmus: Vec<String>,
    pub nr_cpus: u32,
    pub cpus_per_node: u32,
    /// One line saying what ran (scenario, seed, policy).
    pub title: String,
}

impl TraceMeta {
    pub fn comm(&self, pid: u32) -> &str {
        // pid 0 is a CPU's idle task, which ftrace prints as `<idle>`.
        if pid == 0 {
            return "<idle>";
        }
        self.comms.get(&pid).map_or("<...>", |(c, _)| c.as_str())
    }

    pub fn smmu_name(&self, id: u16) -> &str {
        self.smmus.get(id as usize).map_or("?", String::as_str)
    }

    /// The id of the secondary MMU called `name` (names are unique: devices and VMs are).
    pub fn smmu_id(&self, name: &str) -> u16 {
        self.smmus.iter().position(|n| n == name).map_or(u16::MAX, |i| i as u16)
    }
}

/// What to record: event kinds, the kernel whose formats to print, and the size bound.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub kinds: Vec<Kind>,
    /// The `--trace-events` text, for the header.
    pub events: String,
    pub version: TpVersion,
    pub max_bytes: u64,
}

/// The sink: recorded events and where recording stands.
#[derive(Resource, Debug)]
pub struct Trace {
    enabled: u32,
    max_records: usize,
    records: Vec<Record>,
    /// `current` for events raised without a faulting task at hand: (cpu, pid, time).
    current: (u32, u32, Nanos),
    /// The time of the event being handled: no event recorded later happens before it.
    clock: Nanos,
    /// Per CPU, the run of quanta of one task not yet recorded: (pid, nid, start, end).
    runs: Vec<Option<(u32, Nid, Nanos, Nanos)>>,
    /// Recording stopped at this time (the record bound was hit).
    stopped_at: Option<Nanos>,
    /// Events not recorded because recording had stopped.
    dropped: u64,
    pub options: TraceOptions,
    pub meta: TraceMeta,
}

impl Trace {
    pub fn new(options: TraceOptions, meta: TraceMeta) -> Self {
        let enabled = options.kinds.iter().filter(|k| options.version.has(**k)).fold(0u32, |m, k| m | 1 << *k as u32);
        let max_records = (options.max_bytes as usize / std::mem::size_of::<Record>()).max(1);
        let runs = vec![None; meta.nr_cpus as usize];
        Self {
            enabled,
            max_records,
            records: Vec::new(),
            current: (0, 0, 0),
            clock: 0,
            runs,
            stopped_at: None,
            dropped: 0,
            options,
            meta,
        }
    }

    pub fn enabled(&self, kind: Kind) -> bool {
        self.enabled & (1 << kind as u32) != 0
    }

    /// Sets `current` for the events that follow (a handler's CPU and task, and the time
    /// they happen at), while handling the event of time `clock`.
    pub fn set_current(&mut self, cpu: u32, pid: u32, ts: Nanos, clock: Nanos) {
        self.current = (cpu, pid, ts);
        self.clock = clock;
    }

    /// Records `event` in the context of `current`.
    pub fn push_current(&mut self, event: Event) {
        let (cpu, pid, ts) = self.current;
        self.push(Record { ts, cpu, pid, event });
    }

    pub fn push(&mut self, r: Record) {
        if !self.enabled(r.event.kind()) {
            return;
        }
        if self.stopped_at.is_some() {
            self.dropped += 1;
            return;
        }
        if self.records.len() >= self.max_records {
            // Events of other CPUs handled later may still fall between the clock and this
            // one's time: the trace is complete only up to the clock.
            self.stop(r.ts.min(self.clock));
            self.dropped += 1;
            return;
        }
        self.records.push(r);
    }

    /// Stops recording at `now`: runs in progress end there (up to one record per CPU past
    /// the bound).
    fn stop(&mut self, now: Nanos) {
        for cpu in 0..self.runs.len() {
            if let Some((pid, nid, start, end)) = self.runs[cpu].take() {
                let event = Event::TaskRun { nid, dur: end.min(now).saturating_sub(start) };
                self.records.push(Record { ts: start, cpu: cpu as u32, pid, event });
            }
        }
        self.stopped_at = Some(now);
    }

    /// `pid` ran on `cpu` from `start` to `end`: extends the CPU's current run of that task,
    /// or records the run it ends and starts a new one.
    pub fn task_ran(&mut self, cpu: u32, pid: u32, nid: Nid, start: Nanos, end: Nanos) {
        if !self.enabled(Kind::TaskRun) || self.stopped_at.is_some() {
            return;
        }
        let slot = &mut self.runs[cpu as usize];
        match slot {
            Some((p, _, _, e)) if *p == pid && *e == start => *e = end,
            _ => {
                if let Some(done) = slot.replace((pid, nid, start, end)) {
                    self.push_run(cpu, done);
                }
            }
        }
    }

    fn push_run(&mut self, cpu: u32, (pid, nid, start, end): (u32, Nid, Nanos, Nanos)) {
        self.push(Record { ts: start, cpu, pid, event: Event::TaskRun { nid, dur: end - start } });
    }

    fn close_runs(&mut self, now: Nanos) {
        for cpu in 0..self.runs.len() {
            if let Some((pid, nid, start, end)) = self.runs[cpu].take() {
                self.push_run(cpu as u32, (pid, nid, start, end.min(now).max(start)));
            }
        }
    }

    /// Ends recording at the end of the run and puts the records in time order (events at
    /// the same time stay in the order they happened).
    pub fn finish(&mut self, end: Nanos) {
        if self.stopped_at.is_none() {
            self.close_runs(end);
        }
        self.records.sort_by_key(|r| r.ts);
    }

    /// The records, in time order once [`Trace::finish`] ran.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// When recording stopped, if it did, and how many events it missed from then on.
    pub fn stopped(&self) -> Option<(Nanos, u64)> {
        self.stopped_at.map(|t| (t, self.dropped))
    }
}

/// Parses a `--trace-events` list: comma-separated `system:event` patterns where either side
/// may be a glob with `*`, a bare system (`sched`) or a bare event name, as `trace-cmd record
/// -e` takes them. Every pattern must match at least one event.
pub fn parse_events(spec: &str) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for pat in spec.split(',').map(str::trim) {
        if pat.is_empty() {
            return Err(format!("--trace-events `{spec}`: empty pattern"));
        }
        let named =
            |k: Kind| !k.named_only() || pat == k.name() || pat.split_once(':').is_some_and(|(_, n)| n == k.name());
        let matched: Vec<Kind> = Kind::ALL.iter().copied().filter(|k| pattern_matches(pat, *k) && named(*k)).collect();
        if matched.is_empty() {
            let all: Vec<String> = Kind::ALL.iter().map(|k| format!("{}:{}", k.system(), k.name())).collect();
            return Err(format!("--trace-events: `{pat}` matches no event; the events are {}", all.join(", ")));
        }
        kinds.extend(matched);
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

fn pattern_matches(pat: &str, k: Kind) -> bool {
    match pat.split_once(':') {
        Some((sys, name)) => glob(sys, k.system()) && glob(name, k.name()),
        None => glob(pat, k.system()) || glob(pat, k.name()),
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, rest)) => {
            let Some(tail) = s.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// Records an event when tracing is on; the event expression is evaluated only then.
/// `trace_event!(k, event)` runs in the context `current` holds; `trace_event!(k, f, event)`
/// in that of a faulting task `f` ([`crate::kernel::Faulter`]).
#[macro_export]
macro_rules! trace_event {
    ($k:expr, $ev:expr) => {
        if $k.trace.is_some() {
            let ev = $ev;
            if let Some(t) = $k.trace.as_mut() {
                t.push_current(ev);
            }
        }
    };
    ($k:expr, $f:expr, $ev:expr) => {
        if $k.trace.is_some() {
            let r = $crate::trace::Record { ts: $f.now, cpu: $f.cpu, pid: $f.pid, event: $ev };
            if let Some(t) = $k.trace.as_mut() {
                t.push(r);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_patterns_follow_trace_cmd() {
        let sched = parse_events("sched:*").unwrap();
        assert_eq!(
            sched,
            vec![
                Kind::SchedMoveNuma,
                Kind::SchedSwapNuma,
                Kind::SchedStickNuma,
                Kind::SchedSkipVmaNuma,
                Kind::SchedSkipCpusetNuma,
                Kind::SchedMigrateTask
            ]
        );
        assert_eq!(parse_events("sched").unwrap(), sched);
        assert_eq!(parse_events("migrate:mm_migrate_pages").unwrap(), vec![Kind::MmMigratePages]);
        assert_eq!(
            parse_events("mm_migrate_pages,sched_move_numa").unwrap(),
            vec![Kind::SchedMoveNuma, Kind::MmMigratePages]
        );
        assert_eq!(parse_events("*:*").unwrap().len(), Kind::ALL.len() - 1, "a wildcard leaves sched_switch out");
        assert_eq!(parse_events("numasim:*ksm*").unwrap(), vec![Kind::KsmMerge, Kind::KsmSkip, Kind::KsmCow]);
        assert_eq!(parse_events("sched:sched_switch").unwrap(), vec![Kind::SchedSwitch]);
        assert!(!parse_events("sched:*").unwrap().contains(&Kind::SchedSwitch));
        let err = parse_events("sched:sched_wakeup").unwrap_err();
        assert!(err.contains("`sched:sched_wakeup` matches no event"), "{err}");
        assert!(parse_events("sched,").is_err());
    }

    #[test]
    fn the_record_bound_stops_recording_and_counts_what_it_missed() {
        let options = TraceOptions {
            kinds: Kind::ALL.to_vec(),
            events: "*".into(),
            version: TpVersion::V6_12,
            max_bytes: 3 * std::mem::size_of::<Record>() as u64,
        };
        let mut t = Trace::new(options, TraceMeta { nr_cpus: 1, ..Default::default() });
        for ts in 0..5 {
            t.set_current(0, 1, ts, ts);
            t.push_current(Event::StaleMappings { stale: ts });
        }
        t.finish(10);
        assert_eq!(t.records().len(), 3);
        assert_eq!(t.stopped(), Some((3, 2)));

        // An event late in a quantum that began at 7: other CPUs' events from 7 on may be
        // missing, so the trace is complete only up to 7.
        let mut t = Trace::new(t.options.clone(), TraceMeta { nr_cpus: 1, ..Default::default() });
        for _ in 0..4 {
            t.set_current(0, 1, 9, 7);
            t.push_current(Event::StaleMappings { stale: 0 });
        }
        assert_eq!(t.stopped(), Some((7, 1)));
    }

    #[test]
    fn runs_of_one_task_merge_until_another_runs() {
        let options = TraceOptions {
            kinds: vec![Kind::TaskRun],
            events: "*".into(),
            version: TpVersion::V6_12,
            max_bytes: 1 << 20,
        };
        let mut t = Trace::new(options, TraceMeta { nr_cpus: 1, ..Default::default() });
        t.task_ran(0, 7, 0, 0, 10);
        t.task_ran(0, 7, 0, 10, 20);
        t.task_ran(0, 8, 0, 20, 30);
        t.finish(30);
        let runs: Vec<(Nanos, u32, Event)> = t.records().iter().map(|r| (r.ts, r.pid, r.event)).collect();
        assert_eq!(runs, vec![(0, 7, Event::TaskRun { nid: 0, dur: 20 }), (20, 8, Event::TaskRun { nid: 0, dur: 10 })]);
    }
}
