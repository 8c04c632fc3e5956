//! The machine: NUMA nodes with their memory, CPUs on them, and the SLIT distances.

use bevy_ecs::component::Component;
use bevy_ecs::entity::Entity;
use bevy_ecs::resource::Resource;

use crate::config::MachineConfig;

pub use crate::units::{LOCAL_DISTANCE, MAX_NODES, REMOTE_DISTANCE};

/// Node id, as the kernel's `nid`.
pub type Nid = u8;
/// Marks a page that has no frame yet (never touched).
pub const NUMA_NO_NODE: Nid = u8::MAX;

/// The fixed shape of the machine, read by every mechanism.
#[derive(Resource, Debug, Clone)]
pub struct Topology {
    /// All nodes (nr_node_ids), CPU-less ones included.
    pub nr_nodes: u32,
    /// Nodes with CPUs (N_CPU), numbered first; the rest are CPU-less memory nodes.
    pub nr_cpu_nodes: u32,
    pub cpus_per_node: u32,
    /// SLIT distance from node a to node b (`node_distance()`), row by row.
    distance: Vec<u32>,
    /// Cost of one cache-line access from a CPU on node a to memory on node b.
    latency_ns: Vec<u64>,
    /// Per node, all nodes ordered by distance (the node's zonelist, node id breaking ties).
    zonelist: Vec<Vec<Nid>>,
    /// Node entities by nid, CPU entities by cpu id.
    pub node_entities: Vec<Entity>,
    pub cpu_entities: Vec<Entity>,
}

impl Topology {
    pub fn new(m: &MachineConfig) -> Self {
        let n = m.nr_nodes() as usize;
        let distance: Vec<u32> = (0..n * n)
            .map(|i| {
                let (a, b) = (i / n, i % n);
                match &m.distance {
                    Some(d) => d[a][b],
                    None if a == b => LOCAL_DISTANCE,
                    None => REMOTE_DISTANCE,
                }
            })
            .collect();
        // A CPU-less node is as far from every CPU node as its own latency says.
        let latency_ns = (0..n * n)
            .map(|i| match m.memory_node.get((i % n).wrapping_sub(m.nodes as usize)) {
                Some(mem) if i / n != i % n => mem.latency_ns,
                _ => m.local_latency_ns * u64::from(distance[i]) / u64::from(LOCAL_DISTANCE),
            })
            .collect();
        let zonelist = (0..n)
            .map(|a| {
                let mut order: Vec<Nid> = (0..n as Nid).collect();
                order.sort_by_key(|&b| (distance[a * n + b as usize], b));
                order
            })
            .collect();
        Self {
            nr_nodes: n as u32,
            nr_cpu_nodes: m.nodes,
            cpus_per_node: m.cpus_per_node,
            distance,
            latency_ns,
            zonelist,
            node_entities: Vec::new(),
            cpu_entities: Vec::new(),
        }
    }

    pub fn nr_cpus(&self) -> u32 {
        self.nr_cpu_nodes * self.cpus_per_node
    }

    /// The nodes with CPUs (for_each_node_state(nid, N_CPU)).
    pub fn cpu_nodes(&self) -> std::ops::Range<Nid> {
        0..self.nr_cpu_nodes as Nid
    }

    /// `node_state(nid, N_CPU)`.
    pub fn has_cpus(&self, nid: Nid) -> bool {
        u32::from(nid) < self.nr_cpu_nodes
    }

    /// Models numa_nearest_node(nid, N_CPU) (mm/mempolicy.c, 6.12, 7.3): `nid` if it has
    /// CPUs, else the nearest node that has, the lowest id of equals.
    pub fn nearest_cpu_node(&self, nid: Nid) -> Nid {
        if self.has_cpus(nid) {
            return nid;
        }
        self.cpu_nodes().min_by_key(|&c| (self.distance(nid, c), c)).unwrap_or(0)
    }

    /// `cpu_to_node()`: CPUs are numbered node by node.
    #[inline]
    pub fn cpu_to_node(&self, cpu: u32) -> Nid {
        (cpu / self.cpus_per_node) as Nid
    }

    /// `node_distance()`: the SLIT distance from node `a` to node `b`.
    pub fn distance(&self, a: Nid, b: Nid) -> u32 {
        self.distance[a as usize * self.nr_nodes as usize + b as usize]
    }

    /// Latency of one cache line read from node `from` to memory on node `to`.
    #[inline]
    pub fn latency(&self, from: Nid, to: Nid) -> u64 {
        self.latency_ns[from as usize * self.nr_nodes as usize + to as usize]
    }

    /// The cost of one touch of `lines` cache lines plus `think_ns` from node `from`, by the
    /// node of the memory touched: computed once per quantum, read once per touch.
    pub fn touch_costs(&self, from: Nid, lines: u64, think_ns: u64) -> [u64; MAX_NODES] {
        let mut cost = [0; MAX_NODES];
        for (to, c) in cost.iter_mut().enumerate().take(self.nr_nodes as usize) {
            *c = lines * self.latency(from, to as Nid) + think_ns;
        }
        cost
    }

    /// Nodes in allocation fallback order for an allocation on `nid`.
    pub fn zonelist(&self, nid: Nid) -> &[Nid] {
        &self.zonelist[nid as usize]
    }

    /// CPUs of node `nid` (none on a CPU-less node).
    pub fn node_cpus(&self, nid: Nid) -> std::ops::Range<u32> {
        if !self.has_cpus(nid) {
            return 0..0;
        }
        let first = u32::from(nid) * self.cpus_per_node;
        first..first + self.cpus_per_node
    }
}

/// A memory node (struct pglist_data, reduced to what placement needs).
#[derive(Component, Debug, Clone)]
pub struct PgData {
    pub nid: Nid,
    pub present_pages: u64,
    pub free_pages: u64,
    pub wmark: crate::mm::page_alloc::Watermarks,
    /// The promotion rate limiter and hot threshold (memory-tiering mode).
    pub nbp: crate::sched::promotion::Nbp,
    /// kswapd's reclaim state for this node.
    pub kswapd: crate::mm::vmscan::Kswapd,
}

/// A CPU and its run queue (one thread runs per quantum; see sched/mod.rs).
#[derive(Component, Debug, Clone, Default)]
pub struct Cpu {
    pub id: u32,
    pub nid: Nid,
    /// Runnable threads, the one that ran least recently at the front (the order of the
    /// kernel's rq->cfs_tasks, read from its tail); a thread that takes the CPU goes to the
    /// back.
    pub runqueue: std::collections::VecDeque<Entity>,
    /// Threads asleep whose last CPU this is: their decaying PELT averages still count here
    /// (the cfs_rq's blocked load) until they wake.
    pub blocked: Vec<Entity>,
    /// A CpuTick event is queued for this CPU.
    pub ticking: bool,
    /// pid and mm of the thread running now (cpu_rq(cpu)->curr), for task_numa_group().
    pub curr: Option<(u32, Entity)>,
    /// The thread whose quantum is in progress and when that quantum ends (the next
    /// CpuTick): the load balancer cannot detach it before then.
    pub running: Option<(Entity, crate::engine::Nanos)>,
    /// The thread that has the CPU (cfs_rq->curr between context switches) and how long it
    /// has run since it took it (`sched/fair/slice.rs`); always a thread of `runqueue`
    /// (`dequeue_task()` ends the turn).
    pub turn: Option<(Entity, crate::engine::Nanos)>,
}

impl Cpu {
    /// rq->curr: the thread in its turn, else the next to run.
    pub fn curr_task(&self) -> Option<Entity> {
        self.turn.map(|(e, _)| e).or_else(|| self.runqueue.front().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_scales_with_distance() {
        let m = MachineConfig {
            nodes: 3,
            distance: Some(vec![vec![10, 16, 32], vec![16, 10, 21], vec![32, 21, 10]]),
            local_latency_ns: 90,
            ..Default::default()
        };
        let t = Topology::new(&m);
        assert_eq!(t.latency(0, 0), 90);
        assert_eq!(t.latency(0, 1), 144);
        assert_eq!(t.latency(0, 2), 288);
        assert_eq!(t.zonelist(0), &[0, 1, 2]);
        assert_eq!(t.zonelist(2), &[2, 1, 0]);
    }

    #[test]
    fn a_cpu_less_node_has_its_own_latency_and_no_cpus() {
        let m = MachineConfig {
            nodes: 2,
            cpus_per_node: 2,
            memory_node: vec![crate::config::MemoryNodeConfig { latency_ns: 300, ..Default::default() }],
            ..Default::default()
        };
        let t = Topology::new(&m);
        assert_eq!((t.nr_nodes, t.nr_cpus()), (3, 4));
        assert_eq!((t.latency(0, 2), t.latency(1, 2), t.latency(0, 1)), (300, 300, 200));
        assert!(t.node_cpus(2).is_empty());
        assert_eq!(t.nearest_cpu_node(2), 0);
        assert_eq!(t.zonelist(1), &[1, 0, 2]);
    }
}
