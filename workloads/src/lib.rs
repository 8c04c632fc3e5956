//! Scenarios: the built-in catalogue, and building a simulation from a config.

pub mod catalogue;
pub mod pattern;

use bevy_ecs::entity::Entity;
use sim_core::config::{Access, Config, GupContext, MachineConfig, Slice, ThreadConfig};
use sim_core::engine::{NSEC_PER_MSEC, NSEC_PER_USEC};
use sim_core::machine::Nid;
use sim_core::mm::mmu_notifier::SmmuKind;
use sim_core::mm::mprotect::Action;
use sim_core::sched::Affinity;
use sim_core::sim::{DeviceSpec, PAGES_PER_MIB, Sim, ThreadSpec};

/// An address space as the config names it: its mm, VMA names and first thread.
struct NamedMm {
    name: String,
    mm: Entity,
    vmas: Vec<String>,
    first_thread: Option<Entity>,
}

/// Builds the simulation a validated config describes.
pub fn build(config: &Config) -> Sim {
    let mut sim = Sim::new(config);
    let m = &config.machine;
    let mut placer = Placer::new(m.nodes, m.cpus_per_node);
    let mut named: Vec<NamedMm> = Vec::new();
    for p in &config.process {
        let mm = sim.add_process(&p.name);
        for v in &p.vma {
            let idx = sim.add_vma(mm, &v.name, v.size_mib * PAGES_PER_MIB);
            if let Some(nid) = v.populate_node {
                sim.populate(mm, idx, nid as Nid);
            }
            if v.mergeable {
                sim.make_mergeable(mm, idx, v.content_classes);
            }
        }
        let mut first_thread = None;
        for t in &p.thread {
            let vma = p.vma.iter().position(|v| v.name == t.vma).expect("validated");
            let threads = add_threads(&mut sim, &mut placer, m, mm, &p.name, vma, p.vma[vma].size_mib, t, None);
            first_thread = first_thread.or(threads.first().copied());
        }
        named.push(NamedMm {
            name: p.name.clone(),
            mm,
            vmas: p.vma.iter().map(|v| v.name.clone()).collect(),
            first_thread,
        });
    }
    for vm in &config.vm {
        let mm = sim.add_process(&vm.name);
        let ram = sim.add_vma(mm, "ram", vm.memory_mib * PAGES_PER_MIB);
        if let Some(nid) = vm.populate_node {
            sim.populate(mm, ram, nid as Nid);
        }
        if vm.mergeable {
            sim.make_mergeable(mm, ram, vm.content_classes);
        }
        let ept = sim.add_secondary_mmu(&format!("{}/ept", vm.name), mm, ram, SmmuKind::Notifier);
        let vcpus = add_threads(&mut sim, &mut placer, m, mm, &vm.name, ram, vm.memory_mib, &vm.vcpus, Some(ept));
        named.push(NamedMm {
            name: vm.name.clone(),
            mm,
            vmas: vec!["ram".into()],
            first_thread: vcpus.first().copied(),
        });
    }
    let find = |process: &str, vma: &str| {
        let n = named.iter().find(|n| n.name == process).expect("validated");
        (n.mm, n.vmas.iter().position(|v| v == vma).expect("validated"), n.first_thread)
    };
    for d in &config.device {
        let (mm, vma, first_thread) = find(&d.process, &d.vma);
        let pages = sim.vma_pages(mm, vma);
        let spec = DeviceSpec {
            name: d.name.clone(),
            nid: d.node as Nid,
            mm,
            vma,
            mode: d.mode,
            write: d.access == Access::Write,
            owner: match d.gup_context {
                GupContext::Owner => first_thread,
                GupContext::Worker => None,
            },
            pattern: pattern::build(d.pattern, pages, d.hot_fraction, d.hot_probability),
            touch_lines: u64::from(d.touch_lines),
            think_ns: d.think_ns,
            quantum: d.quantum_us * NSEC_PER_USEC,
            fault_cost: d.fault_cost_ns,
            start: d.start_ms * NSEC_PER_MSEC,
            stop: d.stop_ms.map(|s| s * NSEC_PER_MSEC),
        };
        sim.add_device(spec);
    }
    for a in &config.action {
        let (mm, vma, _) = find(&a.process, &a.vma);
        let action = Action {
            syscall: a.syscall,
            mm,
            vma,
            protect: a.protect_ms * NSEC_PER_MSEC,
            period: a.period_ms * NSEC_PER_MSEC,
        };
        sim.add_action(action, a.start_ms * NSEC_PER_MSEC);
    }
    sim
}

/// Adds the threads of block `t` working on VMA `vma` (of `vma_mib`) of `mm`.
#[allow(clippy::too_many_arguments)]
fn add_threads(
    sim: &mut Sim,
    placer: &mut Placer,
    m: &MachineConfig,
    mm: Entity,
    process: &str,
    vma: usize,
    vma_mib: u64,
    t: &ThreadConfig,
    ept: Option<Entity>,
) -> Vec<Entity> {
    let vma_pages = vma_mib * PAGES_PER_MIB;
    let n = u64::from(t.threads(m));
    (0..n)
        .map(|i| {
            let (first, len) = match t.slice {
                Slice::Whole => (0, vma_pages),
                Slice::Private => (i * vma_pages / n, ((i + 1) * vma_pages / n - i * vma_pages / n).max(1)),
            };
            let cpu = match &t.cpus {
                Some(cpus) => cpus[i as usize % cpus.len()],
                None => placer.next(t.node),
            };
            let spec = ThreadSpec {
                name: format!("{process}/{}/{i}", t.name),
                cpu,
                affinity: Affinity(t.cpus.clone()),
                vma,
                first,
                len,
                pattern: pattern::build(t.pattern, len, t.hot_fraction, t.hot_probability),
                touch_lines: u64::from(t.touch_lines),
                think_ns: t.think_ns,
                start: t.start_ms * NSEC_PER_MSEC,
                stop: t.stop_ms.map(|s| s * NSEC_PER_MSEC),
                ept,
            };
            sim.add_thread(mm, spec)
        })
        .collect()
}

/// Initial thread placement: a given node's CPUs in turn, or all nodes round-robin.
struct Placer {
    nodes: u32,
    cpus_per_node: u32,
    next_node: u32,
    next_on_node: Vec<u32>,
}

impl Placer {
    fn new(nodes: u32, cpus_per_node: u32) -> Self {
        Self { nodes, cpus_per_node, next_node: 0, next_on_node: vec![0; nodes as usize] }
    }

    fn next(&mut self, node: Option<u32>) -> u32 {
        let nid = node.unwrap_or_else(|| {
            let n = self.next_node;
            self.next_node = (n + 1) % self.nodes;
            n
        });
        let slot = &mut self.next_on_node[nid as usize];
        let cpu = nid * self.cpus_per_node + *slot % self.cpus_per_node;
        *slot += 1;
        cpu
    }
}
