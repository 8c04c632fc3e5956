//! The kernel's view of the world that every mechanism runs with.
//!
//! [`Kernel`] is a bevy `SystemParam` bundling the few resources and queries the mm and
//! scheduler code needs. Event handlers are bevy systems taking a `Kernel`; the functions
//! named after kernel functions take `&mut Kernel` plus the task they run for.

use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;

use crate::config::KernelConfig;
use crate::engine::{EventQueue, NSEC_PER_MSEC, Nanos};
use crate::machine::{Cpu, Nid, PgData, Topology};
use crate::mm::mmu_notifier::SecondaryMmu;
use crate::mm::{Mm, PageIdx, Pages};
use crate::stats::{Counters, Source};
use crate::trace::Trace;
use crate::version::Rules;

/// The kernel's tunables: sysctls and costs (`[kernel]` in the config).
#[derive(Resource, Debug, Clone)]
pub struct Sysctl(pub KernelConfig);

impl Sysctl {
    pub fn scan_delay(&self) -> Nanos {
        self.0.numa_balancing_scan_delay_ms * NSEC_PER_MSEC
    }

    /// `sysctl_numa_balancing_scan_size` in 4 KiB pages.
    pub fn scan_size_pages(&self) -> u64 {
        self.0.numa_balancing_scan_size_mb << (20 - 12)
    }
}

/// The CPU the current event runs on (`smp_processor_id()`), as the last
/// [`Kernel::trace_current`] set it: kvm_flush_remote_tlbs() sends no IPI to it.
#[derive(Resource, Debug, Default)]
pub struct CurrentCpu(pub u32);

#[derive(SystemParam)]
pub struct Kernel<'w, 's> {
    pub queue: ResMut<'w, EventQueue>,
    pub sysctl: Res<'w, Sysctl>,
    /// The kernel version's rules (`kernel.version`).
    pub rules: Res<'w, Rules>,
    pub topo: Res<'w, Topology>,
    pub tiers: Res<'w, crate::mm::memory_tiers::MemoryTiers>,
    pub pages: ResMut<'w, Pages>,
    pub counters: ResMut<'w, Counters>,
    pub pgdat: Query<'w, 's, &'static mut PgData>,
    pub mms: Query<'w, 's, &'static mut Mm>,
    pub cpus: Query<'w, 's, &'static mut Cpu>,
    pub smmus: Query<'w, 's, &'static mut SecondaryMmu>,
    pub kvm: Res<'w, crate::kvm::Kvm>,
    pub ksm_frames: ResMut<'w, crate::mm::ksm::KsmFrames>,
    pub current_cpu: ResMut<'w, CurrentCpu>,
    /// The hugetlb pool and the memfds' mappers.
    pub kinds: ResMut<'w, crate::mm::backing::MemKinds>,
    /// The trace sink, present only while tracing.
    pub trace: Option<ResMut<'w, Trace>>,
}

impl Kernel<'_, '_> {
    pub fn now(&self) -> Nanos {
        self.queue.now()
    }

    pub fn pgdat(&mut self, nid: Nid) -> Mut<'_, PgData> {
        let e = self.topo.node_entities[nid as usize];
        self.pgdat.get_mut(e).expect("every node has a PgData")
    }

    pub fn mm(&mut self, mm: Entity) -> Mut<'_, Mm> {
        self.mms.get_mut(mm).expect("tasks point at live mms")
    }

    pub fn cpu(&mut self, cpu: u32) -> Mut<'_, Cpu> {
        let e = self.topo.cpu_entities[cpu as usize];
        self.cpus.get_mut(e).expect("every cpu has a Cpu")
    }

    /// A CPU's run queue, read only.
    pub fn rq(&self, cpu: u32) -> &Cpu {
        self.cpus.get(self.topo.cpu_entities[cpu as usize]).expect("every cpu has a Cpu")
    }

    /// rq->nr_running: the threads on `cpu`'s run queue, the running one included.
    pub fn rq_len(&self, cpu: u32) -> usize {
        self.rq(cpu).runqueue.len()
    }

    /// Sets the current CPU, and the trace's `current` (CPU, task and time), for the events
    /// that follow.
    #[inline]
    pub fn trace_current(&mut self, cpu: u32, pid: u32, ts: Nanos) {
        self.current_cpu.0 = cpu;
        if let Some(t) = self.trace.as_mut() {
            t.set_current(cpu, pid, ts, self.queue.now());
        }
    }

    /// Tells the trace that `pid` ran on `cpu` from `start` to `end`.
    #[inline]
    pub fn trace_task_ran(&mut self, cpu: u32, pid: u32, start: Nanos, end: Nanos) {
        if let Some(t) = self.trace.as_mut() {
            t.task_ran(cpu, pid, self.topo.cpu_to_node(cpu), start, end);
        }
    }

    /// The user virtual address of global page `page` of `mm`, for traces.
    pub fn page_addr(&self, mm: Entity, page: PageIdx) -> u64 {
        self.mms.get(mm).map_or(0, |m| m.page_addr(page))
    }
}

/// Who is faulting: the CPU it runs on and, for a user task, its NUMA statistics.
pub struct Faulter<'a> {
    pub cpu: u32,
    pub nid: Nid,
    /// pid of the faulting thread (a kernel worker has its own pid but no mm).
    pub pid: u32,
    /// The faulting task's NUMA state; `None` for a kernel thread (no mm): task_numa_fault()
    /// returns early for those, so no statistics are kept.
    pub task: Option<&'a mut crate::sched::TaskNuma>,
    pub source: Source,
    /// Time of the fault (the quantum's start plus the work done so far).
    pub now: Nanos,
    /// The faulting task's sum_exec_runtime at the fault.
    pub runtime: Nanos,
}

impl<'a> Faulter<'a> {
    /// A fault taken by user thread `task` running on `cpu`, `spent` ns into the work that
    /// started at the current event.
    pub fn user(
        k: &Kernel,
        task: &crate::sched::Task,
        numa: &'a mut crate::sched::TaskNuma,
        cpu: u32,
        source: Source,
        spent: Nanos,
    ) -> Self {
        Self {
            cpu,
            nid: k.topo.cpu_to_node(cpu),
            pid: task.pid,
            task: Some(numa),
            source,
            now: k.now() + spent,
            runtime: task.sum_exec_runtime + spent,
        }
    }

    /// A fault taken by a kernel thread (no mm) with `pid` on `cpu`.
    pub fn kthread(k: &Kernel, pid: u32, cpu: u32, source: Source) -> Self {
        Self { cpu, nid: k.topo.cpu_to_node(cpu), pid, task: None, source, now: k.now(), runtime: 0 }
    }
}
