//! One expansion of a scenario's thread blocks into actors, which the model's builder
//! ([`crate::build`]) and the oracle's guest plan both use: a thread's name, the CPU it
//! starts on, its affinity and its pages must be the same on both sides, or the per-thread
//! comparisons of `numasim validate` compare different threads.

use sim_core::config::{MachineConfig, Slice, ThreadConfig};

/// One thread of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `process/block/i`.
    pub name: String,
    pub start_cpu: u32,
    /// The CPUs it may run on; None: all.
    pub cpus: Option<Vec<u32>>,
    /// Its pages in the block's VMA: the first (relative to the VMA) and how many; 0 pages
    /// for a block without a VMA.
    pub first_page: u64,
    pub pages: u64,
}

/// The threads of block `t` of `process` over a VMA of `vma_pages` pages, each starting on
/// its pinned CPU or where `placer` puts it.
pub fn expand(process: &str, t: &ThreadConfig, vma_pages: u64, m: &MachineConfig, placer: &mut Placer) -> Vec<Actor> {
    let n = u64::from(t.threads(m));
    (0..n)
        .map(|i| {
            let (first_page, pages) = if vma_pages == 0 { (0, 0) } else { thread_range(t.slice, i, n, vma_pages) };
            let start_cpu = match &t.cpus {
                Some(cpus) => cpus[i as usize % cpus.len()],
                None => placer.next(t.node),
            };
            Actor { name: format!("{process}/{}/{i}", t.name), start_cpu, cpus: t.cpus.clone(), first_page, pages }
        })
        .collect()
}

/// The pages (first, count) thread `i` of a block of `n` touches in a VMA of `vma_pages`.
pub fn thread_range(slice: Slice, i: u64, n: u64, vma_pages: u64) -> (u64, u64) {
    match slice {
        Slice::Whole => (0, vma_pages),
        Slice::Private => (i * vma_pages / n, ((i + 1) * vma_pages / n - i * vma_pages / n).max(1)),
    }
}

/// Initial thread placement: a given node's CPUs in turn, or all nodes round-robin.
pub struct Placer {
    nodes: u32,
    cpus_per_node: u32,
    next_node: u32,
    next_on_node: Vec<u32>,
}

impl Placer {
    pub fn new(nodes: u32, cpus_per_node: u32) -> Self {
        Self { nodes, cpus_per_node, next_node: 0, next_on_node: vec![0; nodes as usize] }
    }

    /// The CPU the next thread starts on (on `node` when given).
    pub fn next(&mut self, node: Option<u32>) -> u32 {
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
