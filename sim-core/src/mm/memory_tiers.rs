//! Memory tiers (mm/memory-tiers.c, 6.12.118 and 7.3.4): nodes grouped by abstract
//! distance, which tier counts as the top one, and where reclaim demotes to.

use bevy_ecs::resource::Resource;

use crate::config::MachineConfig;
use crate::machine::{Nid, Topology};

pub use crate::units::{MAX_ABSTRACT_DISTANCE, MEMTIER_CHUNK_BITS, MEMTIER_CHUNK_SIZE};

/// MEMTIER_ADISTANCE_DRAM: the abstract distance of default DRAM, 4 × 128 + 64.
pub const MEMTIER_ADISTANCE_DRAM: u32 = 4 * MEMTIER_CHUNK_SIZE + (MEMTIER_CHUNK_SIZE >> 1);

/// The machine's memory tiers, fixed at boot (no hotplug).
#[derive(Resource, Debug, Clone, PartialEq, Eq)]
pub struct MemoryTiers {
    /// Per node: its abstract distance.
    adistance: Vec<u32>,
    /// top_tier_adistance: the last abstract distance of the lowest tier that holds a CPU node.
    top_tier_adistance: u32,
    /// Per node: node_demotion[node].preferred, then the rest of its lower_tier_mask, nearest
    /// first.
    demotion: Vec<Vec<Nid>>,
}

impl MemoryTiers {
    /// Models memory_tier_init(), set_node_memory_tier() and establish_demotion_targets():
    /// CPU nodes are default DRAM (MEMTIER_ADISTANCE_DRAM, the reference performance of
    /// hmat_set_default_dram_perf()); a CPU-less node takes its configured abstract distance
    /// (a driver's memory type) or, with `hmat` ([`crate::version::Rules::hmat_adistance`]),
    /// mt_perf_to_adistance() of its latency, else default DRAM's. Simplified: read and write
    /// latencies are equal and bandwidth is not modelled, so the bandwidth factor is 1.
    pub fn new(m: &MachineConfig, topo: &Topology, hmat: bool) -> Self {
        let from_perf = |n: &crate::config::MemoryNodeConfig| {
            if hmat { mt_perf_to_adistance(n.latency_ns, m.local_latency_ns) } else { MEMTIER_ADISTANCE_DRAM }
        };
        let adistance: Vec<u32> = (0..m.nr_nodes())
            .map(|nid| match nid.checked_sub(m.nodes).map(|i| &m.memory_node[i as usize]) {
                None => MEMTIER_ADISTANCE_DRAM,
                Some(n) => n.abstract_distance.unwrap_or_else(|| from_perf(n)),
            })
            .collect();
        let start = |nid: usize| adistance[nid] & !(MEMTIER_CHUNK_SIZE - 1);
        let mut tiers: Vec<u32> = (0..adistance.len()).map(start).collect();
        tiers.sort_unstable();
        tiers.dedup();
        let top_tier_adistance = (0..m.nodes as usize).map(start).max().unwrap_or(0) + MEMTIER_CHUNK_SIZE - 1;
        let demotion = (0..adistance.len())
            .map(|nid| {
                let mine = tiers.iter().position(|&t| t == start(nid)).expect("every node is in a tier");
                let Some(&next) = tiers.get(mine + 1) else { return Vec::new() };
                let mut lower: Vec<Nid> =
                    (0..adistance.len()).filter(|&n| start(n) > start(nid)).map(|n| n as Nid).collect();
                // The preferred nodes (the next tier's nearest) first, then the other lower
                // nodes by distance.
                lower.sort_by_key(|&n| (start(n as usize) != next, topo.distance(nid as Nid, n), n));
                lower
            })
            .collect();
        Self { adistance, top_tier_adistance, demotion }
    }

    /// Models node_is_toptier(): a node in a tier no lower than the lowest tier with CPUs.
    #[inline]
    pub fn node_is_toptier(&self, nid: Nid) -> bool {
        (self.adistance[nid as usize] & !(MEMTIER_CHUNK_SIZE - 1)) <= self.top_tier_adistance
    }

    /// Whether any node is below the top tier (promotion and demotion have somewhere to go).
    pub fn has_lower_tier(&self) -> bool {
        (0..self.adistance.len()).any(|n| !self.node_is_toptier(n as Nid))
    }

    /// Where demote_folio_list() allocates for a folio on `nid`: next_demotion_node() first,
    /// then the rest of node_get_allowed_targets(). Simplified: of several preferred nodes at
    /// one distance the lowest id is taken, where the kernel picks one at random.
    pub fn demotion_targets(&self, nid: Nid) -> &[Nid] {
        &self.demotion[nid as usize]
    }

    /// The memory_tier id of node `nid` (/sys/devices/virtual/memory_tiering/memory_tierN).
    pub fn tier_id(&self, nid: Nid) -> u32 {
        self.adistance[nid as usize] >> MEMTIER_CHUNK_BITS
    }

    /// The node's abstract distance.
    pub fn adistance(&self, nid: Nid) -> u32 {
        self.adistance[nid as usize]
    }
}

/// Models mt_perf_to_adistance() (mm/memory-tiers.c) with equal read and write latencies and
/// equal bandwidths: MEMTIER_ADISTANCE_DRAM × (2 × latency) / (2 × DRAM latency).
pub fn mt_perf_to_adistance(latency_ns: u64, dram_latency_ns: u64) -> u32 {
    let adist = u64::from(MEMTIER_ADISTANCE_DRAM) * (2 * latency_ns) / (2 * dram_latency_ns);
    adist.min(u64::from(MAX_ABSTRACT_DISTANCE)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemoryNodeConfig;

    fn machine(memory_node: Vec<MemoryNodeConfig>) -> (MachineConfig, Topology) {
        let m = MachineConfig { nodes: 2, cpus_per_node: 2, memory_node, local_latency_ns: 100, ..Default::default() };
        let t = Topology::new(&m);
        (m, t)
    }

    fn cxl(latency_ns: u64) -> MemoryNodeConfig {
        MemoryNodeConfig { latency_ns, ..Default::default() }
    }

    /// A node 2.5 times as slow as DRAM: 576 × 2.5 = 1440, tier 11, below the DRAM tier 4, as
    /// 6.12.118 and 7.3.4 put it under QEMU's HMAT (ORACLE.md, "Memory tiers under QEMU's HMAT").
    #[test]
    fn a_slow_cpu_less_node_is_a_lower_tier_with_demotion_from_both_dram_nodes() {
        let (m, t) = machine(vec![cxl(250)]);
        let tiers = MemoryTiers::new(&m, &t, true);
        assert_eq!((tiers.adistance(2), tiers.tier_id(0), tiers.tier_id(2)), (1440, 4, 11));
        assert!(tiers.node_is_toptier(0) && tiers.node_is_toptier(1) && !tiers.node_is_toptier(2));
        assert_eq!(tiers.demotion_targets(0), &[2]);
        assert_eq!(tiers.demotion_targets(1), &[2]);
        assert!(tiers.demotion_targets(2).is_empty());
    }

    /// 110 ns against 100: 633, still in DRAM's chunk [512, 640): one tier, nothing to demote
    /// to (the "every node lands in one tier" case; 6.12.118 under QEMU's HMAT agrees).
    #[test]
    fn a_node_within_the_dram_chunk_shares_the_top_tier() {
        let (m, t) = machine(vec![cxl(110)]);
        let tiers = MemoryTiers::new(&m, &t, true);
        assert_eq!(tiers.adistance(2), 633);
        assert!(!tiers.has_lower_tier());
        assert!(tiers.demotion_targets(0).is_empty());
    }

    /// Before v6.7 only a driver's memory type (an explicit abstract distance) sets a tier:
    /// 6.1.192 under QEMU's HMAT keeps a 250 ns node in memory_tier4 with DRAM.
    #[test]
    fn without_hmat_a_cpu_less_node_is_default_dram() {
        let (m, t) = machine(vec![cxl(250), MemoryNodeConfig { abstract_distance: Some(640), ..cxl(250) }]);
        let tiers = MemoryTiers::new(&m, &t, false);
        assert_eq!((tiers.tier_id(2), tiers.tier_id(3)), (4, 5));
        assert!(tiers.node_is_toptier(2) && !tiers.node_is_toptier(3));
        assert_eq!(tiers.demotion_targets(0), &[3]);
    }

    /// Two lower tiers: DRAM demotes to the next one only first, which demotes to the last.
    #[test]
    fn demotion_goes_to_the_next_tier_first() {
        let slow = MemoryNodeConfig { abstract_distance: Some(2000), ..cxl(250) };
        let (m, t) = machine(vec![cxl(250), slow]);
        let tiers = MemoryTiers::new(&m, &t, true);
        assert_eq!(tiers.demotion_targets(0), &[2, 3]);
        assert_eq!(tiers.demotion_targets(2), &[3]);
        assert!(!tiers.node_is_toptier(3));
    }
}
