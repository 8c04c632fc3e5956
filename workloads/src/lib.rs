//! Scenarios: the built-in catalogue, and building a simulation from a config.

pub mod catalogue;
pub mod pattern;

use sim_core::config::{Config, Slice};
use sim_core::engine::NSEC_PER_MSEC;
use sim_core::machine::Nid;
use sim_core::sched::Affinity;
use sim_core::sim::{PAGES_PER_MIB, Sim, ThreadSpec};

/// Builds the simulation a validated config describes.
pub fn build(config: &Config) -> Sim {
    let mut sim = Sim::new(config);
    let m = &config.machine;
    let mut placer = Placer::new(m.nodes, m.cpus_per_node);
    for p in &config.process {
        let mm = sim.add_process(&p.name);
        for v in &p.vma {
            let idx = sim.add_vma(mm, &v.name, v.size_mib * PAGES_PER_MIB);
            if let Some(nid) = v.populate_node {
                sim.populate(mm, idx, nid as Nid);
            }
        }
        for t in &p.thread {
            let vma = p.vma.iter().position(|v| v.name == t.vma).expect("validated");
            let vma_pages = p.vma[vma].size_mib * PAGES_PER_MIB;
            let n = u64::from(t.threads(m));
            for i in 0..n {
                let (first, len) = match t.slice {
                    Slice::Whole => (0, vma_pages),
                    Slice::Private => (i * vma_pages / n, (i + 1) * vma_pages / n - i * vma_pages / n),
                };
                let cpu = match &t.cpus {
                    Some(cpus) => cpus[i as usize % cpus.len()],
                    None => placer.next(t.node),
                };
                let spec = ThreadSpec {
                    name: format!("{}/{}/{i}", p.name, t.name),
                    cpu,
                    affinity: Affinity(t.cpus.clone()),
                    vma,
                    first,
                    len: len.max(1),
                    pattern: pattern::build(t.pattern, len.max(1), t.hot_fraction, t.hot_probability),
                    touch_lines: u64::from(t.touch_lines),
                    think_ns: t.think_ns,
                    start: t.start_ms * NSEC_PER_MSEC,
                    stop: t.stop_ms.map(|s| s * NSEC_PER_MSEC),
                    ept: None,
                };
                sim.add_thread(mm, spec);
            }
        }
    }
    sim
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
