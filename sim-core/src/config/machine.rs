//! `[machine]`: the nodes, their CPUs, memory and distances.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MachineConfig {
    /// Nodes with CPUs and memory (numbered first).
    pub nodes: u32,
    pub cpus_per_node: u32,
    pub memory_per_node_mib: u64,
    /// SLIT distances, a row per node (CPU-less nodes included) of as many entries; default
    /// 10 local, 20 remote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<Vec<Vec<u32>>>,
    /// Latency of one cache-line access to local memory; remote access costs
    /// `local_latency_ns * distance / 10`.
    pub local_latency_ns: u64,
    /// CPU-less memory nodes (CXL or PMEM expanders), numbered after the CPU nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_node: Vec<MemoryNodeConfig>,
}

/// A node with memory and no CPUs (N_MEMORY without N_CPU).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryNodeConfig {
    pub memory_mib: u64,
    /// Latency of one cache-line access from any CPU node: what HMAT reports as the read
    /// and the write latency from the node's best initiator.
    pub latency_ns: u64,
    /// The node's abstract distance as a driver's memory type would set it (dax kmem's
    /// MEMTIER_DEFAULT_DAX_ADISTANCE is 640); otherwise computed from the latency as
    /// mt_perf_to_adistance() does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstract_distance: Option<u32>,
}

impl Default for MemoryNodeConfig {
    fn default() -> Self {
        Self { memory_mib: 1024, latency_ns: 250, abstract_distance: None }
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            nodes: 2,
            cpus_per_node: 4,
            memory_per_node_mib: 1024,
            distance: None,
            local_latency_ns: 100,
            memory_node: Vec::new(),
        }
    }
}

impl MachineConfig {
    /// All nodes, CPU-less ones included (nr_node_ids).
    pub fn nr_nodes(&self) -> u32 {
        self.nodes + self.memory_node.len() as u32
    }

    /// Memory of node `nid` in MiB.
    pub fn node_memory_mib(&self, nid: u32) -> u64 {
        match nid.checked_sub(self.nodes) {
            Some(i) => self.memory_node[i as usize].memory_mib,
            None => self.memory_per_node_mib,
        }
    }

    /// Memory of the whole machine in MiB.
    pub fn total_memory_mib(&self) -> u64 {
        (0..self.nr_nodes()).map(|n| self.node_memory_mib(n)).sum()
    }
}
