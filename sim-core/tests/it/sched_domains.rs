//! Sched domains as kernel/sched/topology.c (6.1.192, 6.12.117) builds them: the expected
//! values are worked out from build_sched_domains(), sd_init(), sched_init_numa() and
//! cpu_attach_domain() by hand, not read back from the model.

use sim_core::config::{KernelVersion, MachineConfig};
use sim_core::machine::Topology;
use sim_core::sched::topology::{SchedDomain, sched_domains};

fn topo(nodes: u32, cpus_per_node: u32, distance: Option<Vec<Vec<u32>>>) -> Topology {
    Topology::new(&MachineConfig { nodes, cpus_per_node, distance, ..Default::default() })
}

/// What a domain's flags file, name and numbers must say.
fn want(
    name: &'static str,
    level: usize,
    span: std::ops::Range<u32>,
    flags: &[&'static str],
    cache_nice_tries: u32,
    imb_numa_nr: u32,
) -> SchedDomain {
    let w = span.len() as u64;
    SchedDomain {
        name,
        level,
        span: span.collect(),
        flags: flags.to_vec(),
        imbalance_pct: 117,
        busy_factor: 16,
        min_interval: w,
        max_interval: 2 * w,
        cache_nice_tries,
        imb_numa_nr,
    }
}

const MC_612: &[&str] = &[
    "SD_BALANCE_NEWIDLE",
    "SD_BALANCE_EXEC",
    "SD_BALANCE_FORK",
    "SD_WAKE_AFFINE",
    "SD_SHARE_LLC",
    "SD_PREFER_SIBLING",
];
const MC_61: &[&str] = &[
    "SD_BALANCE_NEWIDLE",
    "SD_BALANCE_EXEC",
    "SD_BALANCE_FORK",
    "SD_WAKE_AFFINE",
    "SD_SHARE_PKG_RESOURCES",
    "SD_PREFER_SIBLING",
];
const NUMA: &[&str] = &[
    "SD_BALANCE_NEWIDLE",
    "SD_BALANCE_EXEC",
    "SD_BALANCE_FORK",
    "SD_WAKE_AFFINE",
    "SD_SERIALIZE",
    "SD_OVERLAP",
    "SD_NUMA",
];
/// A NUMA level beyond node_reclaim_distance (30) loses exec, fork and wake-affine.
const NUMA_FAR: &[&str] = &["SD_BALANCE_NEWIDLE", "SD_SERIALIZE", "SD_OVERLAP", "SD_NUMA"];

/// 2 nodes of 2 CPUs: MC, PKG/DIE and NODE span the node (the last two are degenerate), NUMA
/// spans all; imb_numa_nr = max(1, 2 >> 3) = 1.
#[test]
fn two_nodes_of_two_cpus() {
    let t = topo(2, 2, None);
    let numa = want("NUMA", 5, 0..4, NUMA, 2, 1);
    assert_eq!(sched_domains(&t, KernelVersion::V6_12, 0), vec![want("MC", 2, 0..2, MC_612, 1, 0), numa.clone()]);
    assert_eq!(sched_domains(&t, KernelVersion::V6_1Debian12, 3), vec![want("MC", 2, 2..4, MC_61, 1, 0), numa]);
}

/// numa02-4node's guest: 4 nodes of 1 CPU, all 20 apart. Every level below NUMA spans one
/// CPU and goes; NUMA's imb_numa_nr is PKG's 1 times 4 / 4.
#[test]
fn four_nodes_of_one_cpu() {
    let d = vec![vec![10, 20, 20, 20], vec![20, 10, 20, 20], vec![20, 20, 10, 20], vec![20, 20, 20, 10]];
    let t = topo(4, 1, Some(d));
    for v in [KernelVersion::V6_1, KernelVersion::V6_12] {
        assert_eq!(sched_domains(&t, v, 2), vec![want("NUMA", 5, 0..4, NUMA, 2, 1)], "{v:?}");
    }
}

/// Three SLIT distances (10, 20, 40): two NUMA levels; the outer one is past
/// node_reclaim_distance and its imb_numa_nr doubles with its span (8 / 4).
#[test]
fn three_distances_give_two_numa_levels() {
    let d = vec![vec![10, 20, 40, 40], vec![20, 10, 40, 40], vec![40, 40, 10, 20], vec![40, 40, 20, 10]];
    let t = topo(4, 2, Some(d));
    let got = sched_domains(&t, KernelVersion::V6_12, 5);
    assert_eq!(
        got,
        vec![
            want("MC", 2, 4..6, MC_612, 1, 0),
            want("NUMA", 5, 4..8, NUMA, 2, 1),
            want("NUMA", 6, 0..8, NUMA_FAR, 2, 2)
        ]
    );
}

/// One node: MC spans the machine, so the build stops there and nothing is NUMA.
#[test]
fn one_node_is_one_mc_domain() {
    let t = topo(1, 4, None);
    assert_eq!(sched_domains(&t, KernelVersion::V6_12, 1), vec![want("MC", 2, 0..4, MC_612, 1, 0)]);
}

/// 6.1 names the LLC flag SD_SHARE_PKG_RESOURCES, 6.12 SD_SHARE_LLC.
#[test]
fn names_follow_the_kernel_version() {
    let t = topo(2, 4, None);
    let flags = |v| sched_domains(&t, v, 0)[0].flags.clone();
    assert!(flags(KernelVersion::V6_1).contains(&"SD_SHARE_PKG_RESOURCES"));
    assert!(flags(KernelVersion::V6_12).contains(&"SD_SHARE_LLC"));
}
