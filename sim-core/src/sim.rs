//! One simulation run: the bevy `World`, its construction, and the event loop.

use std::borrow::Cow;
use std::time::Instant;

use bevy_ecs::prelude::*;

use crate::config::{Config, DeviceMode, GupPath, HugepageAdvice, MapSize, Thp};
use crate::debug_vm::{Violation, check_vm};
use crate::device::{Device, DriverContext, device_tick};
use crate::engine::{Event, EventQueue, NSEC_PER_MSEC, Nanos, RngStream, stream};
use crate::kernel::{Kernel, Sysctl};
use crate::kvm::Kvm;
use crate::machine::{Cpu, Nid, PgData, Topology};
use crate::mm::backing::{Backing, HugetlbPage, MemKinds, MemPolicy, Memfd, hugetlb_fault, hugetlb_reserve};
use crate::mm::huge_memory::thp_pages_of;
use crate::mm::ksm::{KsmFrames, Ksmd, ksmd_wake};
use crate::mm::memory::{do_anonymous_page, populate_range, shmem_fault};
use crate::mm::memory_tiers::MemoryTiers;
use crate::mm::mmu_notifier::{SecondaryMmu, SmmuKind, map_secondary};
use crate::mm::mprotect::{Action, Actions, WakingMain, run_action};
use crate::mm::numa_balancing::clone_node_stamp;
use crate::mm::page_alloc::setup_per_zone_wmarks;
use crate::mm::shmem::map_cached_thps;
use crate::mm::userfaultfd::RwpMode;
use crate::mm::vmscan::{Aging, age_pages, kswapd};
use crate::mm::{HPAGE_PMD_NR, Mm, PageIdx, Pages};
pub use crate::sched::ThreadSpec;
use crate::sched::fair::LoadBalance;
use crate::sched::{AccessPattern, AccessStream, Task, TaskNuma, cpu_tick, wake_task};
use crate::stats::Counters;
use crate::stats::recorder::{Recorder, sample};
use crate::stats::summary::{
    Group, SCHED_NR_MIGRATIONS, SCHEDSTAT, Span, Summary, THREAD, Value, metrics, thread_node_share,
    thread_nr_migrations,
};
use crate::trace::{KSMD_PID, PidKind, Trace, TraceMeta, TraceOptions};
use crate::version::Rules;

pub use crate::units::PAGES_PER_MIB;

/// A simulation being built or run.
pub struct Sim {
    pub world: World,
    config: Config,
    next_pid: u32,
    /// The node the next boot-time huge page goes to (hstate_next_node_to_alloc()).
    hugetlb_next_node: u32,
    /// Run [`check_vm`] after every event (`--check-invariants`).
    check_invariants: bool,
}

/// Events in a row at one instant after which a run is called stalled: far more than the
/// handful per actor a legitimate instant holds (wake-ups, a CPU rescheduling after an
/// exit), far fewer than a loop would produce in a second.
pub const STALL_EVENTS: u64 = 1 << 20;

/// Why a run stopped before its end.
#[derive(Debug, Clone, PartialEq)]
pub enum SimError {
    /// Simulated time stopped advancing: `events` events in a row at `time`, the last of
    /// them of kind `kind`.
    Stalled { time: Nanos, events: u64, kind: &'static str },
    /// `--check-invariants` found the model's bookkeeping broken.
    Invariant(Violation),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimError::Stalled { time, events, kind } => write!(
                f,
                "simulated time stopped advancing: {events} events in a row at t = {time} ns, the last a {kind} event"
            ),
            SimError::Invariant(v) => v.fmt(f),
        }
    }
}

impl std::error::Error for SimError {}

/// Counts events in a row at one instant (the engine's guard against a run that hangs).
#[derive(Default)]
struct StallGuard {
    time: Nanos,
    events: u64,
    limit: u64,
}

impl StallGuard {
    fn observe(&mut self, time: Nanos, event: Event) -> Result<(), SimError> {
        if time != self.time {
            self.time = time;
            self.events = 0;
        }
        self.events += 1;
        if self.events > self.limit {
            return Err(SimError::Stalled { time, events: self.events, kind: event.kind() });
        }
        Ok(())
    }
}

/// What a finished run produced.
pub struct RunOutput {
    pub summary: Summary,
    pub recorder: Recorder,
    /// The events recorded, in time order, when tracing was on.
    pub trace: Option<Trace>,
}

/// A device to add (see [`crate::device::Device`]).
pub struct DeviceSpec {
    pub name: String,
    pub nid: Nid,
    pub mm: Entity,
    /// The buffer: global index of its first page, and its length.
    pub base: PageIdx,
    pub len: u64,
    pub mode: DeviceMode,
    pub gup_path: GupPath,
    pub map_size: MapSize,
    pub write: bool,
    /// Run the driver's GUP in this thread's context instead of a worker on the device's node.
    pub owner: Option<Entity>,
    pub pattern: Box<dyn AccessPattern>,
    pub touch_lines: u64,
    pub think_ns: Nanos,
    pub quantum: Nanos,
    pub fault_cost: Nanos,
    pub start: Nanos,
    pub stop: Option<Nanos>,
}

impl Sim {
    /// The machine of `config` with no processes yet.
    pub fn new(config: &Config) -> Self {
        let mut world = World::new();
        let mut topo = Topology::new(&config.machine);
        let present: Vec<u64> =
            (0..topo.nr_nodes).map(|nid| config.machine.node_memory_mib(nid) * PAGES_PER_MIB).collect();
        let thp = config.kernel.transparent_hugepage != Thp::Never;
        let wmarks = setup_per_zone_wmarks(&present, thp);
        topo.node_entities = (0..topo.nr_nodes as usize)
            .map(|nid| {
                let (wmark, present) = (wmarks[nid], present[nid]);
                let nid = nid as Nid;
                world
                    .spawn(PgData {
                        nid,
                        present_pages: present,
                        free_pages: present,
                        wmark,
                        nbp: Default::default(),
                        kswapd: Default::default(),
                    })
                    .id()
            })
            .collect();
        let tiered = config.kernel.numa_balancing.tiering() || topo.nr_cpu_nodes < topo.nr_nodes;
        topo.cpu_entities = (0..topo.nr_cpus())
            .map(|id| world.spawn(Cpu { id, nid: topo.cpu_to_node(id), ..Default::default() }).id())
            .collect();
        let rules = Rules::of(config.kernel.version, config.kernel.gup_policy);
        world.insert_resource(MemoryTiers::new(&config.machine, &topo, rules.hmat_adistance));
        let lb =
            LoadBalance::new(&topo, &rules, config.kernel.load_balance, stream(config.run.seed, "sched:ni_random"));
        world.insert_resource(lb);
        world.insert_resource(topo);
        world.insert_resource(Sysctl(config.kernel.clone()));
        world.insert_resource(rules);
        world.insert_resource(EventQueue::default());
        world.insert_resource(Pages::default());
        let file_thp_reported = config.kernel.shmem_enabled.may_be_huge();
        world.insert_resource(Counters { tiered, file_thp_reported, ..Counters::default() });
        world.insert_resource(Recorder::new(config.run.sample_ms * NSEC_PER_MSEC));
        world.insert_resource(Kvm(config.kvm.clone()));
        world.insert_resource(crate::kernel::CurrentCpu::default());
        world.insert_resource(Actions::default());
        let ksm = &config.ksm;
        world.insert_resource(KsmFrames::default());
        world.insert_resource(MemKinds::default());
        world.insert_resource(Ksmd::new(ksm));
        world.insert_resource(Aging { interval: config.aging.interval_ms * NSEC_PER_MSEC });
        let mut queue = world.resource_mut::<EventQueue>();
        if config.ksm.run {
            queue.schedule(config.ksm.sleep_millisecs * NSEC_PER_MSEC, Event::Ksmd);
        }
        if config.aging.enabled {
            queue.schedule(config.aging.interval_ms * NSEC_PER_MSEC, Event::Aging);
        }
        Self { world, config: config.clone(), next_pid: 1000, hugetlb_next_node: 0, check_invariants: false }
    }

    /// The random stream of actor `name`.
    pub fn rng(&self, name: &str) -> RngStream {
        stream(self.config.run.seed, name)
    }

    fn alloc_pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    /// A new process (an empty mm) named `name`, with an idle main thread: it counts in
    /// mm_users until [`Sim::add_main_thread`] gives it work.
    pub fn add_process(&mut self, name: &str) -> Entity {
        let pid = self.alloc_pid();
        let sysctl = self.world.resource::<Sysctl>();
        let mut mm = Mm::new(pid, name, sysctl.scan_delay());
        mm.no_numa_balancing = sysctl.0.no_numa_balancing_processes.iter().any(|p| p == name);
        self.world.spawn(mm).id()
    }

    /// Starts the NUMA scanner's pass over `mm` `pages` into its first VMA
    /// (mm->numa_scan_offset), where a long-running process's scanner would stand.
    pub fn set_numa_scan_offset(&mut self, mm: Entity, pages: u64) {
        let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
        m.numa_scan_offset = m.vmas.first().map_or(0, |v| v.start) + pages;
    }

    /// Whether `kernel.no_numa_balancing_vmas` names VMA `name` of `mm` (VM_NO_NUMA_BALANCING).
    fn vma_opted_out(&self, mm: Entity, name: &str) -> bool {
        let (m, sysctl) = (self.world.get::<Mm>(mm).expect("live mm"), self.world.resource::<Sysctl>());
        sysctl.0.no_numa_balancing_vmas.contains(&format!("{}/{name}", m.name))
    }

    /// Maps `pages` of anonymous memory into `mm`; returns the VMA index.
    pub fn add_vma(&mut self, mm: Entity, name: &str, pages: u64) -> usize {
        let thp = self.world.resource::<Sysctl>().0.transparent_hugepage;
        let base = self.world.resource_mut::<Pages>().grow(pages, thp != Thp::Never);
        let opted_out = self.vma_opted_out(mm, name);
        let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
        let vma = m.add_vma(name, pages, base, thp != Thp::Never);
        m.vmas[vma].set_thp(thp.allows(None));
        m.vmas[vma].no_numa_balancing = opted_out;
        vma
    }

    /// Maps a memfd of `pages` into `mm` MAP_SHARED: memfd `id` when given (another
    /// process's, whose pages it then shares), else a new one. Returns the VMA index and the
    /// memfd's id. When `shmem_enabled` lets the file hold THPs, a mapping of 2 MiB or more
    /// starts on a PMD boundary (shmem_get_unmapped_area()) and its whole blocks may be mapped
    /// by PMD (`shmem.rs`).
    pub fn add_memfd_vma(&mut self, mm: Entity, name: &str, pages: u64, id: Option<u32>) -> (usize, u32) {
        let huge = self.world.resource::<Sysctl>().0.shmem_enabled.may_be_huge();
        let id = id.unwrap_or_else(|| {
            let base = self.world.resource_mut::<Pages>().grow(pages, huge);
            let mut kinds = self.world.resource_mut::<MemKinds>();
            kinds.memfds.push(Memfd::new(base, pages));
            (kinds.memfds.len() - 1) as u32
        });
        let mut kinds = self.world.resource_mut::<MemKinds>();
        let memfd = &mut kinds.memfds[id as usize];
        memfd.add_mapper(mm);
        let base = memfd.base;
        // Pages another mapper already faulted in are mapped here too (MM_SHMEMPAGES).
        let p = self.world.resource::<Pages>();
        let present = (0..pages).filter(|&i| p.has_folio(base + i as PageIdx)).count() as u64;
        let opted_out = self.vma_opted_out(mm, name);
        let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
        m.rss += present;
        let vma = m.add_vma(name, pages, base, huge);
        m.vmas[vma].set_thp(huge);
        m.vmas[vma].backing = Backing::Memfd;
        m.vmas[vma].memfd = Some(id);
        m.vmas[vma].no_numa_balancing = opted_out;
        self.with_kernel(|k| map_cached_thps(k, mm, vma));
        (vma, id)
    }

    /// Maps `pages` of a hugetlbfs file of huge pages of `size` into `mm` (a whole number of
    /// huge pages), aligned to the huge page size. The pool must hold them
    /// ([`Sim::reserve_hugetlb`]).
    pub fn add_hugetlb_vma(&mut self, mm: Entity, name: &str, pages: u64, size: HugetlbPage) -> usize {
        let base = self.world.resource_mut::<Pages>().grow(pages, true);
        let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
        let vma = m.add_vma_aligned(name, pages, base, size.pages());
        m.vmas[vma].backing = Backing::Hugetlbfs;
        m.vmas[vma].hugetlb = size;
        vma
    }

    /// Reserves `count` huge pages of `size` at boot (`hugepages=` on the command line),
    /// round-robin over the nodes; false if the nodes had no room for them all.
    pub fn reserve_hugetlb(&mut self, size: HugetlbPage, count: u64) -> bool {
        let mut next = self.hugetlb_next_node;
        let ok = self.with_kernel(|k| hugetlb_reserve(k, size, count, &mut next));
        self.hugetlb_next_node = next;
        ok
    }

    /// Sets a VMA's kind (anonymous or guest_memfd; see [`Sim::add_memfd_vma`] and
    /// [`Sim::add_hugetlb_vma`] for the others) and its mbind() policy.
    pub fn set_backing(&mut self, mm: Entity, vma: usize, backing: Backing, policy: Option<MemPolicy>) {
        let v = &mut self.world.get_mut::<Mm>(mm).expect("live mm").vmas[vma];
        if backing != Backing::Anon && backing != Backing::Memfd {
            v.set_thp(false);
        }
        if backing != Backing::Memfd && backing != Backing::Hugetlbfs {
            v.backing = backing;
        }
        v.mempolicy = policy;
    }

    /// madvise(MADV_HUGEPAGE / MADV_NOHUGEPAGE) on a VMA before it is touched: for anonymous
    /// memory `transparent_hugepage` decides with it, for a memfd `shmem_enabled` at each
    /// fault.
    pub fn madvise_hugepage(&mut self, mm: Entity, vma: usize, advice: Option<HugepageAdvice>) {
        let thp = self.world.resource::<Sysctl>().0.transparent_hugepage;
        let v = &mut self.world.get_mut::<Mm>(mm).expect("live mm").vmas[vma];
        if v.backing != Backing::Memfd {
            v.set_thp(thp.allows(advice));
        }
        v.vm_hugepage = advice == Some(HugepageAdvice::Madvise);
    }

    /// The VMA of `mm` holding global page `page`.
    pub fn vma_of_page(&self, mm: Entity, page: PageIdx) -> Option<usize> {
        self.world.get::<Mm>(mm).expect("live mm").vma_of_page(page)
    }

    /// Global index of a VMA's first page.
    pub fn vma_base(&self, mm: Entity, vma: usize) -> PageIdx {
        self.world.get::<Mm>(mm).expect("live mm").vmas[vma].base
    }

    /// Splits VMA `vma` at page offset `at` (see [`Mm::split_vma`]); returns the new VMA.
    pub fn split_vma(&mut self, mm: Entity, vma: usize, at: u64) -> usize {
        self.world.get_mut::<Mm>(mm).expect("live mm").split_vma(vma, at)
    }

    /// Marks a VMA mergeable (madvise(MADV_MERGEABLE)) with `classes` page contents (0: all
    /// unique; N: page i holds content (i + `offset`) mod N).
    pub fn make_mergeable(&mut self, mm: Entity, vma: usize, classes: u32, offset: u64) {
        let (base, pages) = {
            let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
            let v = &mut m.vmas[vma];
            v.mergeable = true;
            (v.base, v.pages)
        };
        if classes > 0 {
            let mut p = self.world.resource_mut::<Pages>();
            for i in 0..pages {
                let s = p.slot_mut(base + i as PageIdx);
                p.slots.content[s] = (1 + (offset + i) % u64::from(classes)) as u16;
            }
        }
        self.world.resource_mut::<Ksmd>().vmas.push((mm, vma));
    }

    /// Attaches a secondary MMU (an EPT or a device page table) over `pages` pages of `mm`
    /// from global page `base`.
    pub fn add_secondary_mmu(&mut self, name: &str, mm: Entity, base: PageIdx, pages: u64, kind: SmmuKind) -> Entity {
        self.world.spawn(SecondaryMmu::new(name, mm, base, pages, kind)).id()
    }

    /// Maps every present page of `pages` from `base` into secondary MMU `smmu`, as a vCPU's
    /// write fault on each maps it (kvm_faultin_pfn(): a THP at 2 MiB, a 4 KiB page at
    /// 4 KiB): the EPT of a guest that has written all its memory since boot.
    pub fn populate_secondary(&mut self, smmu: Entity, mm: Entity, base: PageIdx, pages: u64) {
        let end = base + pages as PageIdx;
        self.with_kernel(|k| {
            let mut page = base;
            while page < end {
                if let Some(thp) = thp_pages_of(k, mm, page) {
                    map_secondary(k, smmu, mm, page, true, true);
                    page = thp.end;
                    continue;
                }
                // One borrow of the table per 2 MiB of base pages: 385 M of them for big-vm.
                let run_end = (page + 1).next_multiple_of(HPAGE_PMD_NR as PageIdx).min(end);
                let Kernel { smmus, pages: p, .. } = k;
                let mut s = smmus.get_mut(smmu).expect("secondary MMUs outlive their users");
                for q in (page..run_end).filter(|&q| p.present(q)) {
                    s.map(q, p, true);
                }
                page = run_end;
            }
        });
    }

    /// Adds a device; it starts its DMA at `spec.start`.
    pub fn add_device(&mut self, spec: DeviceSpec) -> Entity {
        let kind = match spec.mode {
            DeviceMode::Notifier => SmmuKind::Notifier,
            DeviceMode::Pin => SmmuKind::LongtermPin,
        };
        let smmu = self.add_secondary_mmu(&spec.name, spec.mm, spec.base, spec.len, kind);
        let context = match spec.owner {
            Some(owner) => DriverContext::Owner(owner),
            None => {
                let cpus_per_node = self.world.resource::<Topology>().cpus_per_node;
                DriverContext::Worker { pid: self.alloc_pid(), cpu: u32::from(spec.nid) * cpus_per_node }
            }
        };
        let rng = self.rng(&format!("device:{}", spec.name));
        let device = Device {
            name: spec.name,
            nid: spec.nid,
            mm: spec.mm,
            base: spec.base,
            len: spec.len,
            smmu,
            mode: spec.mode,
            gup_path: spec.gup_path,
            map_size: spec.map_size,
            write: spec.write,
            context,
            access: AccessStream::new(spec.pattern, rng, 0.0),
            touch_lines: spec.touch_lines,
            think_ns: spec.think_ns,
            quantum: spec.quantum,
            fault_cost: spec.fault_cost,
            stop: spec.stop,
            pinned: false,
        };
        let e = self.world.spawn(device).id();
        self.world.resource_mut::<EventQueue>().schedule(spec.start, Event::DeviceTick(e));
        e
    }

    /// UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_RWP over the VMAs holding `pages` pages of
    /// `mm` from global page `first` (a region the config's actions may have split).
    pub fn register_uffd_rwp(&mut self, mm: Entity, first: PageIdx, pages: u64, mode: RwpMode) {
        let end = u64::from(first) + pages;
        let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
        for v in m.vmas.iter_mut().filter(|v| v.base >= first && u64::from(v.base) < end) {
            v.uffd_rwp = Some(mode);
        }
        self.world.resource_mut::<Counters>().uffd_rwp_registered = true;
    }

    /// Schedules an mprotect/munmap of a VMA, made by the process's main thread (which gets
    /// its NUMA state here when it is idle and has no action yet).
    pub fn add_action(&mut self, action: Action, start: Nanos) {
        let tgid = self.world.get::<Mm>(action.mm).expect("live mm").pid;
        let main = TaskNuma::new(tgid, action.mm, self.world.resource::<Sysctl>());
        let mut actions = self.world.resource_mut::<Actions>();
        if action.idle_main && !actions.main_threads.iter().any(|m| m.numa.mm == action.mm) {
            actions.main_threads.push(WakingMain::new(main));
        }
        actions.list.push(action);
        let i = (actions.list.len() - 1) as u32;
        self.world.resource_mut::<EventQueue>().schedule(start, Event::Action(i));
    }

    /// Faults every page of a VMA in on node `nid` (with zonelist fallback), as a memset by a
    /// thread there would.
    pub fn populate(&mut self, mm: Entity, vma: usize, nid: Nid) {
        let v = self.world.get::<Mm>(mm).expect("live mm").vmas[vma].clone();
        let (base, pages, thp) = (v.base, v.pages, v.thp);
        self.with_kernel(|k| {
            if v.backing == Backing::Hugetlbfs {
                let n = v.hugetlb.pages();
                for head in (0..pages).step_by(n as usize).map(|p| base + p as PageIdx) {
                    let mapped = hugetlb_fault(k, &v, head, v.hugetlb, nid);
                    assert!(mapped, "the boot-time pool holds every hugetlbfs VMA's pages");
                }
            } else if !thp {
                populate_range(k, mm, base, pages, nid);
            } else if v.backing == Backing::Memfd {
                for page in (0..pages).map(|p| base + p as PageIdx) {
                    if !k.pages.present(page) {
                        shmem_fault(k, mm, vma, page, nid);
                    }
                }
            } else {
                for page in (0..pages).map(|p| base + p as PageIdx) {
                    if !k.pages.present(page) {
                        do_anonymous_page(k, mm, vma, page, nid, true);
                    }
                }
            }
            k.pages.settle(base, pages);
        });
    }

    /// Runs `f` with the kernel's view of the world.
    pub fn with_kernel<R>(&mut self, f: impl FnOnce(&mut Kernel) -> R) -> R {
        let mut state = bevy_ecs::system::SystemState::<Kernel>::new(&mut self.world);
        let mut k = state.get_mut(&mut self.world).expect("the kernel's resources exist");
        let r = f(&mut k);
        state.apply(&mut self.world);
        r
    }

    /// Adds a thread to `mm`, cloned (CLONE_VM) by its main thread. It joins its CPU's run
    /// queue at `spec.start`.
    pub fn add_thread(&mut self, mm: Entity, spec: ThreadSpec) -> Entity {
        let (mm_users, rss) = {
            let mut m = self.world.get_mut::<Mm>(mm).expect("live mm");
            m.nr_threads += 1;
            (m.nr_threads - 1, m.rss)
        };
        let mut numa = TaskNuma::new(self.alloc_pid(), mm, self.world.resource::<Sysctl>());
        numa.node_stamp = self.with_kernel(|k| clone_node_stamp(k, &numa, rss, mm_users));
        self.spawn_thread(mm, spec, numa)
    }

    /// Gives `mm`'s main thread the work in `spec` (a single-threaded program): it is not a
    /// clone, so its node_stamp starts at 0, as init_numa_balancing() leaves a forked task.
    pub fn add_main_thread(&mut self, mm: Entity, spec: ThreadSpec) -> Entity {
        let tgid = self.world.get::<Mm>(mm).expect("live mm").pid;
        let numa = TaskNuma::new(tgid, mm, self.world.resource::<Sysctl>());
        self.spawn_thread(mm, spec, numa)
    }

    fn spawn_thread(&mut self, mm: Entity, spec: ThreadSpec, numa: TaskNuma) -> Entity {
        let pid = numa.pid;
        let rng = self.rng(&format!("thread:{}", spec.name));
        let name = spec.name.clone();
        let start = spec.start;
        let task = Task::new(pid, mm, spec, rng);
        let e = self.world.spawn((task, numa)).id();
        self.world.resource_mut::<Recorder>().tracked.push((name, e));
        self.world.resource_mut::<EventQueue>().schedule(start, Event::TaskWake(e));
        e
    }

    /// Checks the model's invariants ([`crate::debug_vm`]) after every event of [`Sim::run`].
    pub fn set_check_invariants(&mut self, on: bool) {
        self.check_invariants = on;
    }

    /// Runs [`check_vm`] now; `after` names the event just handled; `full`: recount
    /// everything rather than what changed since the last check.
    fn check_invariants(&mut self, after: Option<Event>, full: bool) -> Result<(), SimError> {
        let result = self.world.run_system_cached_with(check_vm, full).expect("the checked resources exist");
        result.map_err(|mut v| {
            v.after = after.map(|e| format!("{e:?}"));
            SimError::Invariant(v)
        })
    }

    /// Runs to `run.duration_ms` and returns the results; the world stays inspectable.
    /// Stops early, with the reason, if simulated time stops advancing (more than
    /// [`STALL_EVENTS`] events at one instant, or one per entity if there are more entities)
    /// or, when asked for, an invariant breaks.
    pub fn run(&mut self) -> Result<RunOutput, SimError> {
        let wall = Instant::now();
        let end = self.config.run.duration_ms.saturating_mul(NSEC_PER_MSEC);
        let interval = self.config.run.sample_ms.saturating_mul(NSEC_PER_MSEC);
        self.world.resource_mut::<EventQueue>().schedule(interval.min(end), Event::Sample);
        if self.check_invariants {
            self.check_invariants(None, true)?;
        }
        let mut guard =
            StallGuard { limit: STALL_EVENTS.max(4 * self.world.entities().len() as u64), ..Default::default() };
        while let Some(event) = self.world.resource_mut::<EventQueue>().pop_until(end) {
            self.dispatch(event);
            if self.check_invariants {
                self.check_invariants(Some(event), false)?;
            }
            guard.observe(self.world.resource::<EventQueue>().now(), event)?;
        }
        if self.check_invariants {
            self.check_invariants(None, true)?;
        }
        let mut queue = self.world.resource_mut::<EventQueue>();
        queue.advance_to(end);
        let events = queue.dispatched();
        let last = self.world.resource::<Recorder>().rows.last().map(|r| r.0);
        if last != Some(end) {
            sample(&mut self.world);
        }
        let counters = self.world.resource_mut::<Counters>().accrue_stale(end).clone();
        let mut metrics = metrics(&counters, end, Span::Run);
        metrics.0.extend(self.sched_metrics().into_iter().map(|(g, values)| (Cow::Borrowed(g), values)));
        let c = &self.config;
        let summary = Summary {
            scenario: c.name.clone(),
            seed: c.run.seed,
            kernel_version: c.kernel.version.name().into(),
            gup_policy: self.world.resource::<Rules>().gup.name().into(),
            notifier: c.kernel.notifier.name().into(),
            sim_time_ns: end,
            events: Some(events),
            wall_s: wall.elapsed().as_secs_f64(),
            metrics,
            ..Summary::default()
        };
        let recorder = self.world.remove_resource::<Recorder>().expect("inserted in new()");
        let trace = self.world.remove_resource::<Trace>().map(|mut t| {
            t.finish(end);
            t
        });
        Ok(RunOutput { summary, recorder, trace })
    }

    /// `sched.nr_migrations`, per thread `thread.<name>.nr_migrations` and
    /// `thread.<name>.node<N>_share` (the share of its runtime on node N's CPUs), and the
    /// load balancer's `schedstat.*`.
    fn sched_metrics(&mut self) -> Vec<(&'static str, Group)> {
        let nr_nodes = self.world.resource::<Topology>().nr_nodes as usize;
        let w = &mut self.world;
        let mut threads: Vec<(String, u64, Vec<Nanos>)> =
            w.query::<&Task>().iter(w).map(|t| (t.name.clone(), t.nr_migrations, t.node_runtime.clone())).collect();
        threads.sort_by(|a, b| a.0.cmp(&b.0));
        let total: u64 = threads.iter().map(|t| t.1).sum();
        let mut per_thread = Vec::new();
        for (name, nr, runtime) in threads {
            per_thread.push((Cow::Owned(thread_nr_migrations(&name)), Value::Count(nr)));
            let all: Nanos = runtime.iter().sum();
            for nid in 0..nr_nodes {
                let on = runtime.get(nid).copied().unwrap_or(0);
                let share = if all == 0 { 0.0 } else { on as f64 / all as f64 };
                per_thread.push((Cow::Owned(thread_node_share(&name, nid)), Value::Real(share)));
            }
        }
        let schedstat = w.resource::<LoadBalance>().schedstat_metrics().into_iter().map(|(n, v)| (Cow::Owned(n), v));
        vec![
            (SCHED_NR_MIGRATIONS.0, vec![(Cow::Borrowed(SCHED_NR_MIGRATIONS.1), Value::Count(total))]),
            (THREAD, per_thread),
            (SCHEDSTAT, schedstat.collect()),
        ]
    }

    /// Turns tracing on for the run (call after the world is built): the events `options`
    /// selects are recorded, and returned in [`RunOutput::trace`].
    pub fn enable_trace(&mut self, options: TraceOptions) {
        let meta = self.trace_meta();
        self.world.insert_resource(Trace::new(options, meta));
    }

    /// What a trace needs to name what it saw: every pid's comm and the secondary MMUs.
    fn trace_meta(&mut self) -> TraceMeta {
        let c = &self.config;
        let title = format!(
            "scenario {}, seed {}, kernel {}, gup_policy {}, notifier {}",
            c.name,
            c.run.seed,
            c.kernel.version.name(),
            self.world.resource::<Rules>().gup.name(),
            c.kernel.notifier.name()
        );
        let topo = self.world.resource::<Topology>();
        let mut meta =
            TraceMeta { nr_cpus: topo.nr_cpus(), cpus_per_node: topo.cpus_per_node, title, ..Default::default() };
        let w = &mut self.world;
        for m in w.query::<&Mm>().iter(w) {
            meta.comms.insert(m.pid, (m.name.clone(), PidKind::Process));
        }
        for t in w.query::<&Task>().iter(w) {
            let tgid = w.get::<Mm>(t.mm).map_or(0, |m| m.pid);
            meta.comms.insert(t.pid, (t.name.clone(), PidKind::Thread { tgid, vcpu: t.ept.is_some() }));
        }
        for d in w.query::<&Device>().iter(w) {
            if let DriverContext::Worker { pid, .. } = d.context {
                meta.comms.insert(pid, (d.name.clone(), PidKind::DeviceWorker));
            }
        }
        meta.comms.insert(KSMD_PID, ("ksmd".into(), PidKind::Kthread));
        meta.smmus = w.query::<&SecondaryMmu>().iter(w).map(|s| s.name.clone()).collect();
        meta.smmus.sort();
        meta
    }

    fn dispatch(&mut self, event: Event) {
        const VALID: &str = "event handlers are valid systems over resources Sim::new inserts";
        let w = &mut self.world;
        match event {
            Event::CpuTick(cpu) => w.run_system_cached_with(cpu_tick, cpu).expect(VALID),
            Event::TaskWake(e) => w.run_system_cached_with(wake_task, e).expect(VALID),
            Event::DeviceTick(e) => w.run_system_cached_with(device_tick, e).expect(VALID),
            Event::Ksmd => w.run_system_cached(ksmd_wake).expect(VALID),
            Event::Aging => w.run_system_cached(age_pages).expect(VALID),
            Event::Kswapd(nid) => w.run_system_cached_with(kswapd, nid).expect(VALID),
            Event::Action(i) => w.run_system_cached_with(run_action, i).expect(VALID),
            Event::Sample => sample(w),
        }
    }
}
