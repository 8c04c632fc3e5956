//! Threads on CPUs. A CPU gives the thread that ran least recently a turn of its slice
//! (`fair/slice.rs`), run in quanta; the fair class's load balancer (`fair/`) and NUMA
//! placement (`numa.rs`) move threads between CPUs. Simplified: scheduler decisions only at
//! quantum ends, no preemption inside a quantum.

pub mod bursts;
pub mod fair;
pub mod numa;
pub mod pelt;
pub mod promotion;
pub mod topology;

use bevy_ecs::prelude::*;

pub use numa::TaskNuma;
pub use pelt::SchedAvg;

use crate::engine::{Event, NSEC_PER_USEC, Nanos, RngStream};
use crate::kernel::{Faulter, Kernel};
use crate::machine::{MAX_NODES, NUMA_NO_NODE};
use crate::mm::PageIdx;
use crate::mm::memory::{Sigsegv, handle_mm_fault};
use crate::mm::numa_balancing::{task_numa_work, task_tick_numa};
use crate::mm::{PTE_COW, PTE_PROTNONE, PTE_YOUNG};
use crate::stats::Source;
use crate::trace::Event as TraceEvent;
use crate::trace::events::PrevState;
use crate::trace_event;
use bursts::{AfterBurst, burst_done};
pub use bursts::{Periodic, RunSchedule};

/// CONFIG_HZ of Debian's kernels (6.1 to 7.3).
pub const HZ: u64 = 250;
/// One tick, a jiffy: 4 ms at HZ = 250.
pub const TICK_NSEC: Nanos = crate::engine::NSEC_PER_SEC / HZ;
use fair::{LoadBalance, newidle_balance, rq_avg, trigger_load_balance};

/// Where a thread's next touches go: page offsets within the thread's range.
pub trait AccessPattern: Send + Sync + 'static {
    /// Fills `out` with offsets in `0..len` of the range the pattern was built for.
    fn fill(&mut self, rng: &mut RngStream, out: &mut [u32]);
}

/// CPUs a thread may run on (`p->cpus_ptr`); `None` means all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affinity(pub Option<Vec<u32>>);

impl Affinity {
    pub fn allows(&self, cpu: u32) -> bool {
        self.0.as_ref().is_none_or(|cpus| cpus.contains(&cpu))
    }
}

/// Touches drawn from a pattern per refill: amortises the dynamic call over many touches.
const BATCH: usize = 256;

/// How many touches ahead of the current one a stream's pages are known: far enough that a
/// prefetch issued now has reached the cache (a DRAM miss, ~100 ns) when the touch comes.
pub const LOOKAHEAD: usize = 32;

/// One touch drawn from a stream.
#[derive(Clone, Copy, Debug)]
pub struct Touch {
    /// Page offset within the range.
    pub offset: u32,
    pub write: bool,
    /// The offset of the touch [`LOOKAHEAD`] after this one.
    pub ahead: u32,
}

/// An access pattern with its random stream and a buffer of drawn touches. A refill draws a
/// batch of offsets, then one write chance per touch of the batch (when writes are
/// possible): the order in which one touch at a time drew them before, so drawing a batch
/// early, to know the pages ahead, changes no touch.
pub struct AccessStream {
    pattern: Box<dyn AccessPattern>,
    rng: RngStream,
    write_fraction: f64,
    offsets: Vec<u32>,
    writes: Vec<bool>,
    next: usize,
}

impl AccessStream {
    /// A stream of `pattern`'s offsets of which a share `write_fraction` (0..=1) write.
    pub fn new(pattern: Box<dyn AccessPattern>, rng: RngStream, write_fraction: f64) -> Self {
        let cap = BATCH + LOOKAHEAD;
        Self {
            pattern,
            rng,
            write_fraction,
            offsets: Vec::with_capacity(cap),
            writes: Vec::with_capacity(cap),
            next: 0,
        }
    }

    /// The next touch.
    #[inline]
    pub fn next_touch(&mut self) -> Touch {
        if self.next + LOOKAHEAD >= self.offsets.len() {
            self.refill();
        }
        let t = Touch {
            offset: self.offsets[self.next],
            write: self.writes[self.next],
            ahead: self.offsets[self.next + LOOKAHEAD],
        };
        self.next += 1;
        t
    }

    /// Keeps the touches not taken yet and draws a batch after them.
    #[cold]
    fn refill(&mut self) {
        self.offsets.drain(..self.next);
        self.writes.drain(..self.next);
        self.next = 0;
        let start = self.offsets.len();
        self.offsets.resize(start + BATCH, 0);
        self.pattern.fill(&mut self.rng, &mut self.offsets[start..]);
        if self.write_fraction > 0.0 {
            for _ in 0..BATCH {
                let w = self.rng.chance(self.write_fraction);
                self.writes.push(w);
            }
        } else {
            self.writes.resize(start + BATCH, false);
        }
    }
}

/// A thread to add: where it runs and what it touches.
pub struct ThreadSpec {
    pub name: String,
    pub cpu: u32,
    pub affinity: Affinity,
    /// The pages the thread touches: global index of the first, and how many.
    pub base: PageIdx,
    pub len: u64,
    pub pattern: Box<dyn AccessPattern>,
    pub touch_lines: u64,
    pub think_ns: Nanos,
    /// Share of touches that write (a write to a KSM page breaks its sharing).
    pub write_fraction: f64,
    pub start: Nanos,
    pub stop: Option<Nanos>,
    /// For a vCPU: the VM's EPT.
    pub ept: Option<Entity>,
    /// For a thread that sleeps between bursts of work.
    pub schedule: Option<RunSchedule>,
}

/// A user thread (task_struct, minus the NUMA fields in [`TaskNuma`]).
#[derive(Component)]
pub struct Task {
    pub pid: u32,
    pub name: String,
    pub mm: Entity,
    pub cpu: u32,
    pub affinity: Affinity,
    pub sum_exec_runtime: Nanos,
    /// The pages the thread touches (global index of the first, and how many); which VMA
    /// they belong to is looked up when a touch faults, as the kernel does.
    pub base: PageIdx,
    pub len: u64,
    pub access: AccessStream,
    /// For a vCPU thread: the VM's EPT, through which its touches go (kvm.rs).
    pub ept: Option<Entity>,
    /// Cache lines per touch and CPU work per touch.
    pub touch_lines: u64,
    pub think_ns: Nanos,
    pub start: Nanos,
    pub stop: Option<Nanos>,
    /// `se.exec_start` as task_hot() reads it: when the thread last stopped running.
    pub exec_start: Nanos,
    /// `se.nr_migrations`: how often the thread's CPU changed.
    pub nr_migrations: u64,
    /// Runtime spent on each node's CPUs (per-thread node shares).
    pub node_runtime: Vec<Nanos>,
    pub schedule: Option<RunSchedule>,
    /// A sleeping thread's CPU time left in the current burst.
    budget: Nanos,
    /// `se.avg`: the thread's PELT load, runnable and util, from its first wake on.
    pub avg: SchedAvg,
}

impl Task {
    pub fn new(pid: u32, mm: Entity, spec: ThreadSpec, rng: RngStream) -> Self {
        Self {
            pid,
            name: spec.name,
            mm,
            cpu: spec.cpu,
            affinity: spec.affinity,
            sum_exec_runtime: 0,
            base: spec.base,
            len: spec.len,
            access: AccessStream::new(spec.pattern, rng, spec.write_fraction),
            ept: spec.ept,
            touch_lines: spec.touch_lines,
            think_ns: spec.think_ns,
            start: spec.start,
            stop: spec.stop,
            exec_start: 0,
            nr_migrations: 0,
            node_runtime: Vec::new(),
            budget: spec.schedule.as_ref().map_or(0, RunSchedule::first_budget),
            schedule: spec.schedule,
            avg: SchedAvg::default(),
        }
    }
}

/// Puts a thread on its CPU's run queue, starting the CPU if it was idle.
pub fn enqueue_task(k: &mut Kernel, te: Entity, cpu: u32) {
    let now = k.now();
    enqueue_task_at(k, te, cpu, now);
}

/// Puts a thread on `cpu`'s run queue now; an idle CPU starts running it at `at`.
fn enqueue_task_at(k: &mut Kernel, te: Entity, cpu: u32, at: Nanos) {
    k.cpu(cpu).runqueue.push_back(te);
    start_ticking(k, cpu, at);
}

/// An idle CPU starts running its queue at `at`.
fn start_ticking(k: &mut Kernel, cpu: u32, at: Nanos) {
    let mut c = k.cpu(cpu);
    if !c.ticking {
        c.ticking = true;
        k.queue.schedule(at, Event::CpuTick(cpu));
    }
}

/// Models set_task_cpu() (kernel/sched/core.c, 6.1.192 and 6.12.117), through which every
/// CPU change goes: trace_sched_migrate_task(), migrate_task_rq_fair() (which calls
/// update_scan_period()) and `se.nr_migrations++`.
fn set_task_cpu(k: &mut Kernel, task: &mut Task, numa: &mut TaskNuma, cpu: u32) {
    if task.cpu == cpu {
        return;
    }
    trace_event!(k, TraceEvent::SchedMigrateTask { pid: task.pid, orig_cpu: task.cpu as i32, dest_cpu: cpu as i32 });
    numa::update_scan_period(k, numa, task.cpu, cpu);
    task.nr_migrations += 1;
    task.cpu = cpu;
}

/// Models migrate_task_to() (kernel/sched/core.c, v6.12) and the load balancer's
/// detach/attach: move a thread to another CPU's run queue (set_task_cpu() on the way). The
/// kernel moves a running task with stop_one_cpu(migration_cpu_stop) on its own CPU, so it
/// reaches the new CPU when it stops running on the old one: `at`, the end of the quantum
/// it is in (now for a task that is not running). It joins the new run queue at once (its
/// load counts there); an idle new CPU starts it at `at`. Simplified: on a busy CPU its place
/// in the queue decides when it runs, which may be before `at`.
pub fn migrate_task_to(k: &mut Kernel, tasks: &mut Query<(&mut Task, &mut TaskNuma)>, te: Entity, cpu: u32, at: Nanos) {
    let Ok((mut task, mut numa)) = tasks.get_mut(te) else {
        return;
    };
    let old = task.cpu;
    set_task_cpu(k, &mut task, &mut numa, cpu);
    dequeue_task(k, te, old);
    enqueue_task_at(k, te, cpu, at);
}

/// Takes a thread off `cpu`'s run queue; if it had the CPU, its turn ends.
fn dequeue_task(k: &mut Kernel, te: Entity, cpu: u32) {
    let mut c = k.cpu(cpu);
    c.runqueue.retain(|&e| e != te);
    if c.turn.is_some_and(|(e, _)| e == te) {
        c.turn = None;
    }
}

/// Handler of [`Event::TaskWake`], try_to_wake_up() (kernel/sched/core.c, 6.1.192 and
/// 6.12.117). At its start time a thread has waited pinned to its start CPU, so
/// select_task_rq() takes that CPU without asking select_task_rq_fair(); a periodic thread's
/// later wakes go through select_task_rq_fair() (none with `kernel.load_balance = false`) and
/// ttwu_stat().
/// - The waker is the wakee's previous CPU: its timer fires there (hrtimer of a
///   clock_nanosleep()), so wake_affine() never runs for these wakes.
/// - A new thread's PELT averages start on its CPU (wake_up_new_task()); a sleeper's decay
///   over its sleep and leave its previous CPU's blocked load.
/// - A woken thread ran least recently, so it is next in line; under CFS a sleeper may
///   preempt (check_preempt_wakeup(), `fair/slice.rs`). A thread waking at its start time
///   has waited for it parked (as the oracle's guest program parks each thread until the
///   start) and does not preempt.
pub fn wake_task(
    In(te): In<Entity>,
    mut k: Kernel,
    mut lb: ResMut<LoadBalance>,
    mut tasks: Query<(&mut Task, &mut TaskNuma)>,
) {
    let now = k.now();
    let (prev, never_ran) = tasks.get(te).map(|(t, _)| (t.cpu, t.sum_exec_runtime == 0)).expect("woken tasks exist");
    let first_avg = never_ran.then(|| {
        let a = rq_avg(&k, &tasks, prev);
        SchedAvg::new_task(now, a.util_cfs(), a.load)
    });
    let (mut task, mut numa) = tasks.get_mut(te).expect("woken tasks exist");
    match first_avg {
        Some(avg) => task.avg = avg,
        None => {
            task.avg.update(now, false, false);
            k.cpu(prev).blocked.retain(|&e| e != te);
        }
    }
    if lb.enabled && !never_ran {
        let cpu = fair::select_task_rq_fair(&k, &mut lb, &task, prev, prev);
        set_task_cpu(&mut k, &mut task, &mut numa, cpu);
        fair::ttwu_stat(&mut lb, prev, cpu);
    }
    let cpu = task.cpu;
    let preempt = !never_ran
        && fair::slice::wakeup_preempts(k.rules.eevdf, k.topo.nr_cpus(), now.saturating_sub(task.exec_start));
    let mut c = k.cpu(cpu);
    if preempt {
        // It is rq->curr from now on; the thread it preempted stops at the end of the
        // quantum in progress.
        c.runqueue.push_back(te);
        c.turn = Some((te, 0));
    } else {
        c.runqueue.push_front(te);
    }
    start_ticking(&mut k, cpu, now);
}

/// pick_next_task_fair(): the thread in its turn keeps the CPU until its slice is used;
/// then the one that ran least recently takes it and goes to the back of the queue. Under
/// EEVDF a thread alone on its CPU starts a new request each time one is served
/// (update_deadline()), so a thread woken meanwhile waits for the rest of it.
fn pick_next_task(k: &mut Kernel, cpu: u32) -> Option<Entity> {
    let eevdf = k.rules.eevdf;
    let turn = fair::slice::turn_ns(eevdf, k.topo.nr_cpus(), k.rq_len(cpu));
    let mut c = k.cpu(cpu);
    if let Some((e, used)) = c.turn {
        if used < turn {
            return Some(e);
        }
        if eevdf && c.runqueue.len() == 1 {
            c.turn = Some((e, 0));
            return Some(e);
        }
    }
    let e = c.runqueue.pop_front()?;
    c.runqueue.push_back(e);
    c.turn = Some((e, 0));
    Some(e)
}

/// Handler of [`Event::CpuTick`]: balance (trigger_load_balance() on a busy CPU,
/// sched_balance_newidle() on one whose queue emptied), run the thread that has the CPU
/// ([`pick_next_task`]) for one quantum, then do what the kernel does on return to user
/// (task_numa_work()) and at the tick (numa placement).
pub fn cpu_tick(
    In(cpu): In<u32>,
    mut k: Kernel,
    mut lb: ResMut<LoadBalance>,
    mut tasks: Query<(&mut Task, &mut TaskNuma)>,
) {
    let now = k.now();
    if lb.enabled {
        // The balancing softirq runs in the context of the thread the tick interrupted.
        let curr = k.rq(cpu).curr.map_or(0, |(pid, _)| pid);
        k.trace_current(cpu, curr, now);
        if k.rq_len(cpu) > 0 {
            trigger_load_balance(&mut k, &mut lb, &mut tasks, cpu);
        } else {
            newidle_balance(&mut k, &mut lb, &mut tasks, cpu);
        }
    }
    let Some(te) = pick_next_task(&mut k, cpu) else {
        trace_switch(&mut k, &tasks, cpu, None, now);
        lb.enter_idle(cpu);
        let mut c = k.cpu(cpu);
        c.ticking = false;
        c.curr = None;
        c.running = None;
        c.turn = None;
        return;
    };
    let (task, _) = tasks.get(te).expect("queued tasks exist");
    if task.stop.is_some_and(|stop| now >= stop) {
        let (_, mut numa) = tasks.get_mut(te).expect("queued tasks exist");
        exit_task(&mut k, &mut numa, te, cpu);
        k.queue.schedule_in(0, Event::CpuTick(cpu));
        return;
    }
    trace_switch(&mut k, &tasks, cpu, Some(te), now);
    let (mut task, mut numa) = tasks.get_mut(te).expect("queued tasks exist");
    k.cpu(cpu).curr = Some((task.pid, task.mm));
    k.trace_current(cpu, task.pid, now);
    // Waiting on the run queue since it last ran: load and runnable, no util.
    task.avg.update(now, true, false);
    let quantum = k.sysctl.0.quantum_us * NSEC_PER_USEC;
    let slice = if task.schedule.is_some() { quantum.min(task.budget) } else { quantum };
    let mut spent = match task.ept {
        Some(ept) => crate::kvm::run_vcpu_quantum(&mut k, &mut task, &mut numa, cpu, ept),
        // A thread with no pages only uses CPU time.
        None if task.len == 0 => slice,
        None => run_quantum(&mut k, &mut task, &mut numa, cpu, slice),
    };
    task.sum_exec_runtime += spent;
    k.trace_current(cpu, task.pid, now + spent);
    let nid = k.topo.cpu_to_node(cpu);
    if k.sysctl.0.numa_balancing.enabled() && task_tick_numa(&mut k, &mut numa, task.sum_exec_runtime, now + spent) {
        let scan = task_numa_work(&mut k, &mut numa, task.pid, nid, now + spent);
        task.sum_exec_runtime += scan;
        spent += scan;
    }
    account_runtime(&mut task, nid, now, spent);
    task.avg.update(now + spent, true, true);
    k.trace_task_ran(cpu, task.pid, now, now + spent.max(1));
    let t = &mut *task;
    let after = match t.schedule.as_mut() {
        Some(schedule) => burst_done(schedule, &mut t.budget, t.start, spent, now + spent.max(1)),
        None => AfterBurst::Runs,
    };
    // A thread going to sleep is off the run queue; its placement waits for its next run.
    let migrate = after == AfterBurst::Runs && std::mem::take(&mut numa.migrate_pending);
    if migrate {
        numa::task_numa_migrate(&mut k, &mut tasks, te, now + spent.max(1));
    }
    if let AfterBurst::Sleeps(wake) = after {
        dequeue_task(&mut k, te, cpu);
        k.cpu(cpu).blocked.push(te);
        if let Some(at) = wake {
            k.queue.schedule(at, Event::TaskWake(te));
        }
    }
    let mut c = k.cpu(cpu);
    c.running = Some((te, now + spent.max(1)));
    if let Some((e, used)) = c.turn
        && e == te
    {
        c.turn = Some((e, used + spent.max(1)));
    }
    k.queue.schedule_in(spent.max(1), Event::CpuTick(cpu));
}

/// sched_switch when the thread `cpu` runs changes (`next` None: the CPU goes idle). The
/// thread whose quantum just ended is the one switched out: runnable if it is queued
/// somewhere, asleep if it blocked, dead if it exited.
fn trace_switch(k: &mut Kernel, tasks: &Query<(&mut Task, &mut TaskNuma)>, cpu: u32, next: Option<Entity>, now: Nanos) {
    let prev = k.rq(cpu).running.map(|(e, _)| e);
    if k.trace.is_none() || prev == next {
        return;
    }
    let pid = |e: Option<Entity>| e.and_then(|e| tasks.get(e).ok()).map_or(0, |(t, _)| t.pid);
    let prev_state = match prev.and_then(|e| tasks.get(e).ok().map(|(t, _)| (e, t.cpu))) {
        None => PrevState::Runnable,
        Some((e, on)) if k.rq(on).runqueue.contains(&e) => PrevState::Runnable,
        Some((e, on)) if k.rq(on).blocked.contains(&e) => PrevState::Sleeping,
        Some(_) => PrevState::Dead,
    };
    let (prev_pid, next_pid) = (pid(prev), pid(next));
    k.trace_current(cpu, prev_pid, now);
    trace_event!(k, TraceEvent::SchedSwitch { cpu, prev_pid, prev_state, next_pid });
}

/// Charges a quantum to the thread's node shares and sets exec_start to its end.
fn account_runtime(task: &mut Task, nid: crate::machine::Nid, now: Nanos, spent: Nanos) {
    let nid = nid as usize;
    if task.node_runtime.len() <= nid {
        task.node_runtime.resize(nid + 1, 0);
    }
    task.node_runtime[nid] += spent;
    task.exec_start = now + spent;
}

fn exit_task(k: &mut Kernel, numa: &mut TaskNuma, te: Entity, cpu: u32) {
    dequeue_task(k, te, cpu);
    k.mm(numa.mm).nr_threads -= 1;
    let mut home = k.mm(numa.group_home());
    numa::task_numa_free(&mut home, numa);
}

/// Runs one quantum of `task` on `cpu`: touches pages until the quantum is used up, taking
/// page faults inline. Returns the time spent. Kept out of line so the touch loop's code does
/// not change with what its caller does around it.
#[inline(never)]
fn run_quantum(k: &mut Kernel, task: &mut Task, numa: &mut TaskNuma, cpu: u32, quantum: Nanos) -> Nanos {
    let nid = k.topo.cpu_to_node(cpu);
    let cost = k.topo.touch_costs(nid, task.touch_lines, task.think_ns);
    let (mut elapsed, mut touches, mut local) = (0, 0, 0);
    while elapsed < quantum {
        let Touch { offset, write, ahead } = task.access.next_touch();
        k.pages.prefetch(task.base + ahead);
        let page = task.base + offset;
        let i = k.pages.slot(page);
        let page_nid = if let Some(nid) = k.pages.slots.settled_nid(i) {
            nid
        } else {
            k.pages.slots.note_unsettled_touch(i);
            let pte = k.pages.slots.pte(i);
            // A PROT_NONE VMA's pages are all protnone or missing: only faults need the VMA.
            if pte.nid == NUMA_NO_NODE || pte.flags & PTE_PROTNONE != 0 || (write && pte.flags & PTE_COW != 0) {
                let mut f = Faulter::user(k, task, numa, cpu, Source::Cpu, elapsed);
                match handle_mm_fault(k, task.mm, page, write, &mut f) {
                    Ok(cost) => elapsed += cost,
                    // The program's SIGSEGV handler waits for the mapping to come back.
                    Err(Sigsegv) => {
                        elapsed = quantum.max(elapsed);
                        break;
                    }
                }
                k.pages.pte(page).nid
            } else {
                // Only dirty the cache line when the accessed bit is not set yet.
                if pte.flags & PTE_YOUNG == 0 {
                    k.pages.slots.pte_mut(i).flags |= PTE_YOUNG;
                }
                pte.nid
            }
        };
        elapsed += cost[page_nid as usize % MAX_NODES];
        touches += 1;
        local += u64::from(page_nid == nid);
    }
    k.counters.touch(Source::Cpu, touches, local);
    elapsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::stream;

    /// Draws `len`-page offsets uniformly, as workloads' Uniform pattern does.
    struct Below(u64);

    impl AccessPattern for Below {
        fn fill(&mut self, rng: &mut RngStream, out: &mut [u32]) {
            for o in out {
                *o = rng.below(self.0) as u32;
            }
        }
    }

    /// A stream's touches are the ones drawn one touch at a time: a batch of offsets when
    /// the last is used up, then each touch's write chance as it comes.
    #[test]
    fn batched_touches_are_the_touches_drawn_one_at_a_time() {
        for p in [0.0, 0.3, 1.0] {
            let mut s = AccessStream::new(Box::new(Below(1000)), stream(5, "t"), p);
            let mut rng = stream(5, "t");
            let mut batch = vec![0; BATCH];
            let mut want = Vec::new();
            for i in 0..3 * BATCH + 7 {
                if i % BATCH == 0 {
                    Below(1000).fill(&mut rng, &mut batch);
                }
                want.push((batch[i % BATCH], p > 0.0 && rng.chance(p)));
            }
            let got: Vec<Touch> = (0..want.len()).map(|_| s.next_touch()).collect();
            assert_eq!(got.iter().map(|t| (t.offset, t.write)).collect::<Vec<_>>(), want, "p = {p}");
            for (i, t) in got.iter().enumerate().take(want.len() - LOOKAHEAD) {
                assert_eq!(t.ahead, want[i + LOOKAHEAD].0, "touch {i}, p = {p}");
            }
            if p == 0.3 {
                let writes = want.iter().filter(|w| w.1).count();
                assert!((200..270).contains(&writes), "{writes} writes of {}", want.len());
            }
        }
    }
}
