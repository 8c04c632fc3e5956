//! Scenarios: the built-in catalogue, and building a simulation from a config.

pub mod actors;
pub mod catalogue;
pub mod pattern;
pub mod validation;

use std::collections::HashMap;

pub use actors::{Placer, thread_range};
use bevy_ecs::entity::Entity;
use sim_core::config::{
    Access, Backing, Config, GupContext, HugepageAdvice, HugetlbPage, MachineConfig, MainThread, MemPolicy,
    ThreadConfig,
};
use sim_core::engine::{NSEC_PER_MSEC, NSEC_PER_USEC};
use sim_core::machine::Nid;
use sim_core::mm::PageIdx;
use sim_core::mm::mmu_notifier::SmmuKind;
use sim_core::mm::mprotect::Action;
use sim_core::mm::userfaultfd::RwpMode;
use sim_core::sched::{Affinity, Periodic, RunSchedule};
use sim_core::sim::{DeviceSpec, PAGES_PER_MIB, Sim, ThreadSpec};

/// The pages of a VMA as the config names it; actions on part of it split it into several
/// kernel VMAs, which stay adjacent, so the region is one run of global pages.
#[derive(Clone, Debug)]
struct Region {
    name: String,
    /// Global index of the first page, and the number of pages.
    base: PageIdx,
    pages: u64,
}

/// An address space as the config names it: its mm, regions and first thread.
struct NamedMm {
    name: String,
    mm: Entity,
    regions: Vec<Region>,
    first_thread: Option<Entity>,
}

/// What backs a mapping as the config gives it.
struct Kind {
    backing: Backing,
    /// The memfd's name, for a memfd mapping.
    file: String,
    hugetlb: HugetlbPage,
    mempolicy: Option<MemPolicy>,
}

impl Kind {
    fn of(
        backing: Backing,
        memfd: &Option<String>,
        default_file: String,
        hugetlb: HugetlbPage,
        pol: &Option<MemPolicy>,
    ) -> Self {
        Self { backing, file: memfd.clone().unwrap_or(default_file), hugetlb, mempolicy: pol.clone() }
    }
}

/// The memfds mapped so far, by name.
type Memfds = HashMap<String, u32>;

/// Maps a VMA of its kind, split where actions need it, populated and made mergeable as
/// configured.
#[allow(clippy::too_many_arguments)]
fn add_region(
    sim: &mut Sim,
    config: &Config,
    mm: Entity,
    (process, name): (&str, &str),
    mib: u64,
    populate: Option<u32>,
    (mergeable, classes, hugepage): (bool, u32, Option<HugepageAdvice>),
    (kind, memfds): (Kind, &mut Memfds),
) -> Region {
    let pages = mib * PAGES_PER_MIB;
    let first = match kind.backing {
        Backing::Memfd => {
            let (vma, id) = sim.add_memfd_vma(mm, name, pages, memfds.get(&kind.file).copied());
            memfds.insert(kind.file, id);
            vma
        }
        Backing::Hugetlbfs => sim.add_hugetlb_vma(mm, name, pages, kind.hugetlb),
        Backing::Anon | Backing::GuestMemfd => sim.add_vma(mm, name, pages),
    };
    sim.madvise_hugepage(mm, first, hugepage);
    sim.set_backing(mm, first, kind.backing, kind.mempolicy);
    let cuts = config.vma_cuts(process, name);
    let mut pieces = vec![(first, 0)];
    for (n, &cut) in cuts.iter().enumerate() {
        let prev = pieces[n].1;
        pieces.push((sim.split_vma(mm, first + n, cut - prev), cut));
    }
    for &(vma, offset) in &pieces {
        if let Some(nid) = populate {
            sim.populate(mm, vma, nid as Nid);
        }
        if mergeable {
            sim.make_mergeable(mm, vma, classes, offset);
        }
    }
    Region { name: name.to_string(), base: sim.vma_base(mm, first), pages }
}

/// Reserves the hugetlb pool every hugetlbfs mapping needs, 1 GiB pages first, as the
/// kernel's command line would (`hugepagesz=1G hugepages=N hugepagesz=2M hugepages=M`).
fn reserve_hugetlb_pool(sim: &mut Sim, config: &Config) {
    let vmas = config.process.iter().flat_map(|p| p.vma.iter().map(|v| (v.backing, v.hugetlb_page, v.size_mib)));
    let all: Vec<_> = vmas.chain(config.vm.iter().map(|v| (v.backing, v.hugetlb_page, v.memory_mib))).collect();
    for size in [HugetlbPage::Size1G, HugetlbPage::Size2M] {
        let count: u64 = all
            .iter()
            .filter(|&&(b, s, _)| b == Backing::Hugetlbfs && s == size)
            .map(|(_, _, mib)| mib / size.mib())
            .sum();
        let reserved = sim.reserve_hugetlb(size, count);
        assert!(reserved, "config validation keeps the hugetlb pool within the nodes' memory");
    }
}

/// Builds the simulation a validated config describes.
pub fn build(config: &Config) -> Sim {
    let mut sim = Sim::new(config);
    let m = &config.machine;
    let mut placer = Placer::new(m.nodes, m.cpus_per_node);
    let mut named: Vec<NamedMm> = Vec::new();
    let mut memfds = Memfds::new();
    reserve_hugetlb_pool(&mut sim, config);
    for p in &config.process {
        let mm = sim.add_process(&p.name);
        if !p.cpuset_mems.is_empty() {
            sim.world.get_mut::<sim_core::mm::Mm>(mm).expect("just added").mems_allowed =
                p.cpuset_mems.iter().fold(0, |mask, &n| mask | 1 << n);
        }
        let regions: Vec<Region> = p
            .vma
            .iter()
            .map(|v| {
                let file = format!("{}/{}", p.name, v.name);
                let kind = Kind::of(v.backing, &v.memfd, file, v.hugetlb_page, &v.mempolicy);
                let ksm = (v.mergeable, v.content_classes, v.hugepage);
                add_region(
                    &mut sim,
                    config,
                    mm,
                    (&p.name, &v.name),
                    v.size_mib,
                    v.populate_node,
                    ksm,
                    (kind, &mut memfds),
                )
            })
            .collect();
        let mut first_thread = None;
        for (ti, t) in p.thread.iter().enumerate() {
            // A sleeping block may have no VMA: it touches no pages.
            let none = Region { name: String::new(), base: 0, pages: 0 };
            let region = regions.iter().find(|r| r.name == t.vma).unwrap_or(&none);
            let main = if ti == 0 { p.main_thread } else { MainThread::Idle };
            let threads = add_threads(&mut sim, &mut placer, m, mm, &p.name, region, t, None, main);
            first_thread = first_thread.or(threads.first().copied());
        }
        named.push(NamedMm { name: p.name.clone(), mm, regions, first_thread });
    }
    for vm in &config.vm {
        let mm = sim.add_process(&vm.name);
        let kind = Kind::of(vm.backing, &vm.memfd, format!("{}/ram", vm.name), vm.hugetlb_page, &vm.mempolicy);
        let ksm = (vm.mergeable, vm.content_classes, vm.hugepage);
        let ram = add_region(
            &mut sim,
            config,
            mm,
            (&vm.name, "ram"),
            vm.memory_mib,
            vm.populate_node,
            ksm,
            (kind, &mut memfds),
        );
        let ept = sim.add_secondary_mmu(&format!("{}/ept", vm.name), mm, ram.base, ram.pages, SmmuKind::Kvm);
        if vm.populate_ept {
            sim.populate_secondary(ept, mm, ram.base, ram.pages);
        }
        sim.set_numa_scan_offset(mm, vm.numa_scan_offset_mib * PAGES_PER_MIB);
        let vcpus = add_threads(&mut sim, &mut placer, m, mm, &vm.name, &ram, &vm.vcpus, Some(ept), MainThread::Idle);
        named.push(NamedMm { name: vm.name.clone(), mm, regions: vec![ram], first_thread: vcpus.first().copied() });
    }
    let find = |process: &str, vma: &str| {
        let n = named.iter().find(|n| n.name == process).expect("validated");
        (n.mm, n.regions.iter().find(|r| r.name == vma).cloned().expect("validated"), n.first_thread)
    };
    for d in &config.device {
        let (mm, region, first_thread) = find(&d.process, &d.vma);
        let spec = DeviceSpec {
            name: d.name.clone(),
            nid: d.node as Nid,
            mm,
            base: region.base,
            len: region.pages,
            mode: d.mode,
            gup_path: d.gup_path,
            map_size: d.map_size,
            write: d.access == Access::Write,
            owner: match d.gup_context {
                GupContext::Owner => first_thread,
                GupContext::Worker => None,
            },
            pattern: pattern::build(d.pattern, region.pages, d.hot_fraction, d.hot_probability),
            touch_lines: u64::from(d.touch_lines),
            think_ns: d.think_ns,
            quantum: d.quantum_us * NSEC_PER_USEC,
            fault_cost: d.fault_cost_ns,
            start: d.start_ms * NSEC_PER_MSEC,
            stop: d.stop_ms.map(|s| s * NSEC_PER_MSEC),
        };
        sim.add_device(spec);
    }
    for u in &config.userfaultfd {
        let (mm, region, _) = find(&u.process, &u.vma);
        let mode =
            if u.rwp_async { RwpMode::Async } else { RwpMode::Sync { latency: u.handler_latency_us * NSEC_PER_USEC } };
        sim.register_uffd_rwp(mm, region.base, region.pages, mode);
    }
    for a in &config.action {
        let (mm, region, _) = find(&a.process, &a.vma);
        let offset = a.offset_mib * PAGES_PER_MIB;
        let first = region.base + offset as PageIdx;
        let action = Action {
            syscall: a.syscall,
            mm,
            vma: sim.vma_of_page(mm, first).expect("the range starts inside its VMA"),
            first,
            pages: a.len_mib.map_or(region.pages - offset, |l| l * PAGES_PER_MIB),
            protect: a.protect_ms * NSEC_PER_MSEC,
            period: a.period_ms * NSEC_PER_MSEC,
            armed: false,
            idle_main: config.process.iter().any(|p| p.name == a.process && p.main_thread == MainThread::Idle),
        };
        sim.add_action(action, a.start_ms * NSEC_PER_MSEC);
    }
    sim
}

/// Adds the threads of block `t` working on `region` of `mm`; with `MainThread::First` the
/// block's first thread is the process's main thread.
#[allow(clippy::too_many_arguments)]
fn add_threads(
    sim: &mut Sim,
    placer: &mut Placer,
    m: &MachineConfig,
    mm: Entity,
    process: &str,
    region: &Region,
    t: &ThreadConfig,
    ept: Option<Entity>,
    main: MainThread,
) -> Vec<Entity> {
    actors::expand(process, t, region.pages, m, placer)
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let spec = ThreadSpec {
                name: a.name,
                cpu: a.start_cpu,
                affinity: Affinity(a.cpus),
                base: region.base + a.first_page as PageIdx,
                len: a.pages,
                // Never drawn from when the thread has no pages (len 0).
                pattern: pattern::build(t.pattern, a.pages.max(1), t.hot_fraction, t.hot_probability),
                touch_lines: u64::from(t.touch_lines),
                think_ns: t.think_ns,
                write_fraction: t.write_fraction,
                start: t.bursts.first().map_or(t.start_ms, |b| b[0]) * NSEC_PER_MSEC,
                stop: t.stop_ms.map(|s| s * NSEC_PER_MSEC),
                ept,
                schedule: run_schedule(t),
            };
            if i == 0 && main == MainThread::First { sim.add_main_thread(mm, spec) } else { sim.add_thread(mm, spec) }
        })
        .collect()
}

/// A sleeping block's schedule: `period_ms`/`run_us`, or its recorded `bursts`.
fn run_schedule(t: &ThreadConfig) -> Option<RunSchedule> {
    if !t.bursts.is_empty() {
        let bursts = t.bursts.iter().map(|&[at, run]| (at * NSEC_PER_MSEC, run * NSEC_PER_USEC)).collect();
        return Some(RunSchedule::recorded(bursts));
    }
    t.period_ms.zip(t.run_us).map(|(period, run)| {
        RunSchedule::Periodic(Periodic {
            period: period.saturating_mul(NSEC_PER_MSEC),
            run: run.saturating_mul(NSEC_PER_USEC),
        })
    })
}
