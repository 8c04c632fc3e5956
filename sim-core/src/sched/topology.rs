//! Scheduling domains, built from the machine as kernel/sched/topology.c builds them
//! (build_sched_domains(), sd_init(), sched_init_numa(), build_sched_groups(),
//! build_overlap_sched_groups(), cpu_attach_domain()), read in 6.1.192 and 6.12.117.
//!
//! Levels, bottom up: MC (cpu_coregroup_mask, the LLC), PKG (6.12) / DIE (6.1)
//! (cpu_cpu_mask: the CPU's node), NODE (sched_init_numa()'s identity level) and one NUMA
//! level per larger SLIT distance; the build stops at the first level spanning every CPU.
//! - SMT is not built: the machine models no SMT siblings (its level would span one CPU and
//!   be removed as degenerate anyway).
//! - CLS (CONFIG_SCHED_CLUSTER) is not built: it spans one CPU (no shared L2) and is degenerate.
//! - The LLC is the node: one last-level cache per node, as on the oracle's guests.
//! - x86 drops PKG/DIE when a package spans nodes (x86_has_numa_in_package); the model keeps
//!   it, which changes nothing: it spans the node, like MC, and is removed as degenerate.

use crate::config::KernelVersion;
use crate::machine::Topology;
use crate::version::Rules;

/// sd_flags.h bits, in the order debugfs prints them (6.12's order; 6.1 has no SD_CLUSTER,
/// which no level here sets, and names SD_SHARE_LLC SD_SHARE_PKG_RESOURCES).
pub const SD_BALANCE_NEWIDLE: u32 = 1 << 0;
pub const SD_BALANCE_EXEC: u32 = 1 << 1;
pub const SD_BALANCE_FORK: u32 = 1 << 2;
pub const SD_BALANCE_WAKE: u32 = 1 << 3;
pub const SD_WAKE_AFFINE: u32 = 1 << 4;
pub const SD_SHARE_CPUCAPACITY: u32 = 1 << 7;
pub const SD_SHARE_LLC: u32 = 1 << 9;
pub const SD_SERIALIZE: u32 = 1 << 10;
pub const SD_PREFER_SIBLING: u32 = 1 << 12;
pub const SD_OVERLAP: u32 = 1 << 13;
pub const SD_NUMA: u32 = 1 << 14;

/// Flags with SDF_NEEDS_GROUPS (SD_DEGENERATE_GROUPS_MASK): all but SD_WAKE_AFFINE.
const SD_DEGENERATE_GROUPS_MASK: u32 = !SD_WAKE_AFFINE & ((1 << 15) - 1);

/// node_reclaim_distance (RECLAIM_DISTANCE): NUMA levels beyond it lose fork, exec and
/// wake-affine balancing (sd_init()).
const RECLAIM_DISTANCE: u32 = 30;

fn flag_names(flags: u32, rules: &Rules) -> Vec<&'static str> {
    let names = [
        (SD_BALANCE_NEWIDLE, "SD_BALANCE_NEWIDLE"),
        (SD_BALANCE_EXEC, "SD_BALANCE_EXEC"),
        (SD_BALANCE_FORK, "SD_BALANCE_FORK"),
        (SD_BALANCE_WAKE, "SD_BALANCE_WAKE"),
        (SD_WAKE_AFFINE, "SD_WAKE_AFFINE"),
        (SD_SHARE_CPUCAPACITY, "SD_SHARE_CPUCAPACITY"),
        (SD_SHARE_LLC, rules.sd_share_llc_name),
        (SD_SERIALIZE, "SD_SERIALIZE"),
        (SD_PREFER_SIBLING, "SD_PREFER_SIBLING"),
        (SD_OVERLAP, "SD_OVERLAP"),
        (SD_NUMA, "SD_NUMA"),
    ];
    names.iter().filter(|(bit, _)| flags & bit != 0).map(|&(_, n)| n).collect()
}

/// One scheduling domain of one CPU, with the fields debugfs shows
/// (/sys/kernel/debug/sched/domains/cpuN/domainM/).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedDomain {
    pub name: &'static str,
    /// `sd->level`: the level's index in the chain as built, before degenerate levels go.
    pub level: usize,
    pub span: Vec<u32>,
    pub flags: Vec<&'static str>,
    pub imbalance_pct: u32,
    pub busy_factor: u32,
    /// Milliseconds.
    pub min_interval: u64,
    pub max_interval: u64,
    pub cache_nice_tries: u32,
    pub imb_numa_nr: u32,
}

/// A sched_group: a span the domain balances as one, and its child domain's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub span: Vec<u32>,
    pub flags: u32,
}

/// A domain as the balancer uses it: the debugfs view plus flag bits and groups (the local
/// group first, as sd->groups is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    pub sd: SchedDomain,
    pub flags: u32,
    pub groups: Vec<Group>,
}

impl Domain {
    pub fn spans(&self, cpu: u32) -> bool {
        self.sd.span.binary_search(&cpu).is_ok()
    }

    fn weight(&self) -> usize {
        self.sd.span.len()
    }
}

/// One topology level (struct sched_domain_topology_level).
#[derive(Clone, Copy)]
enum Level {
    Mc,
    Pkg,
    /// sched_init_numa()'s level `i`: nodes within `sched_domains_numa_distance[i]`.
    Numa(usize),
}

/// The unique SLIT distances between nodes with CPUs, ascending (sched_init_numa()'s
/// for_each_cpu_node_but(), 6.12 and 7.3: CPU-less nodes make no level).
fn numa_distances(topo: &Topology) -> Vec<u32> {
    let nodes = topo.cpu_nodes();
    let mut d: Vec<u32> = nodes.clone().flat_map(|a| nodes.clone().map(move |b| topo.distance(a, b))).collect();
    d.sort_unstable();
    d.dedup();
    d
}

/// `tl->mask(cpu)`: sd_numa_mask() for NUMA levels, the node for MC and PKG/DIE.
fn level_mask(topo: &Topology, distances: &[u32], tl: Level, cpu: u32) -> Vec<u32> {
    let nid = topo.cpu_to_node(cpu);
    match tl {
        Level::Mc | Level::Pkg => topo.node_cpus(nid).collect(),
        Level::Numa(i) => topo
            .cpu_nodes()
            .filter(|&k| topo.distance(nid, k) <= distances[i])
            .flat_map(|k| topo.node_cpus(k))
            .collect(),
    }
}

/// sd_init(): a level's domain for `cpu`, before groups and imb_numa_nr.
fn sd_init(topo: &Topology, distances: &[u32], rules: &Rules, tl: Level, cpu: u32, level: usize) -> Domain {
    let span = level_mask(topo, distances, tl, cpu);
    let weight = span.len() as u64;
    let (name, tl_flags) = match tl {
        Level::Mc => ("MC", SD_SHARE_LLC),
        Level::Pkg => (rules.pkg_domain_name, 0),
        Level::Numa(0) => ("NODE", 0),
        Level::Numa(_) => ("NUMA", SD_NUMA),
    };
    let mut flags =
        SD_BALANCE_NEWIDLE | SD_BALANCE_EXEC | SD_BALANCE_FORK | SD_WAKE_AFFINE | SD_PREFER_SIBLING | tl_flags;
    let mut imbalance_pct = 117;
    let cache_nice_tries = if flags & SD_SHARE_CPUCAPACITY != 0 {
        imbalance_pct = 110;
        0
    } else if flags & SD_SHARE_LLC != 0 {
        imbalance_pct = 117;
        1
    } else if flags & SD_NUMA != 0 {
        flags &= !SD_PREFER_SIBLING;
        flags |= SD_SERIALIZE;
        if let Level::Numa(i) = tl
            && distances[i] > RECLAIM_DISTANCE
        {
            flags &= !(SD_BALANCE_EXEC | SD_BALANCE_FORK | SD_WAKE_AFFINE);
        }
        2
    } else {
        1
    };
    // SDTL_OVERLAP: the NUMA levels above NODE.
    if matches!(tl, Level::Numa(i) if i > 0) {
        flags |= SD_OVERLAP;
    }
    let sd = SchedDomain {
        name,
        level,
        span,
        flags: Vec::new(),
        imbalance_pct,
        busy_factor: 16,
        min_interval: weight,
        max_interval: 2 * weight,
        cache_nice_tries,
        imb_numa_nr: 0,
    };
    Domain { sd, flags, groups: Vec::new() }
}

/// SMT and CLS: x86's default topology (build_sched_topology(), Debian's config sets
/// CONFIG_SCHED_SMT and CONFIG_SCHED_CLUSTER) builds them below MC; they span one CPU here and
/// are removed as degenerate, but build_sched_domain()'s `sd->level = child->level + 1`
/// counts them (6.12's debugfs prints MC at level 2 and the first NUMA level at 5).
const LEVELS_BELOW_MC: usize = 2;

/// Every CPU's chain as build_sched_domains() builds it: a level per topology level until
/// one spans the machine.
fn build_chains(topo: &Topology, rules: &Rules) -> Vec<Vec<Domain>> {
    let distances = numa_distances(topo);
    let levels: Vec<Level> = [Level::Mc, Level::Pkg].into_iter().chain((0..distances.len()).map(Level::Numa)).collect();
    let nr_cpus = topo.nr_cpus() as usize;
    (0..topo.nr_cpus())
        .map(|cpu| {
            let mut chain: Vec<Domain> = Vec::new();
            for &tl in &levels {
                let mut d = sd_init(topo, &distances, rules, tl, cpu, LEVELS_BELOW_MC + chain.len());
                // "Fixup, ensure @sd has at least @child CPUs."
                if let Some(child) = chain.last() {
                    let mut span = d.sd.span.clone();
                    span.extend(&child.sd.span);
                    span.sort_unstable();
                    span.dedup();
                    d.sd.span = span;
                }
                let done = d.weight() == nr_cpus;
                chain.push(d);
                if done {
                    break;
                }
            }
            chain
        })
        .collect()
}

/// The groups of CPU `cpu`'s domain at index `lvl` (build_sched_groups() and
/// build_overlap_sched_groups()): from `cpu` on, wrapping, each not yet covered CPU's
/// domain at this level contributes its child's span (find_descended_sibling() when that
/// child reaches outside the span), or its own span at the bottom.
fn build_groups(chains: &[Vec<Domain>], cpu: u32, lvl: usize) -> Vec<Group> {
    let span = &chains[cpu as usize][lvl].sd.span;
    let start = span.iter().position(|&c| c == cpu).unwrap_or(0);
    let mut covered: Vec<u32> = Vec::new();
    let mut groups = Vec::new();
    for &i in span[start..].iter().chain(&span[..start]) {
        if covered.contains(&i) {
            continue;
        }
        let sibling = &chains[i as usize];
        if lvl >= sibling.len() || !sibling[lvl].spans(i) {
            continue;
        }
        let mut child = lvl.checked_sub(1);
        while let Some(c) = child
            && !sibling[c].sd.span.iter().all(|x| span.binary_search(x).is_ok())
        {
            child = c.checked_sub(1);
        }
        let group = match child {
            Some(c) => Group { span: sibling[c].sd.span.clone(), flags: sibling[c].flags },
            None => Group { span: vec![i], flags: 0 },
        };
        covered.extend(&group.span);
        groups.push(group);
    }
    groups
}

/// build_sched_domains()'s imb_numa_nr: from the first level above the LLC, imbalance up
/// to 12.5 % of a single-LLC node (at least 1) or one task per LLC, scaled up at higher
/// levels by their span over the first NUMA level's.
fn set_imb_numa_nr(chain: &mut [Domain]) {
    let (mut imb, mut imb_span) = (0u32, 1usize);
    for i in 0..chain.len() {
        let child_llc = i > 0 && chain[i - 1].flags & SD_SHARE_LLC != 0;
        if chain[i].flags & SD_SHARE_LLC == 0 && child_llc {
            let nr_llcs = chain[i].weight() / chain[i - 1].weight();
            imb = if nr_llcs == 1 { (chain[i].weight() >> 3) as u32 } else { nr_llcs as u32 };
            imb = imb.max(1);
            chain[i].sd.imb_numa_nr = imb;
            let top = chain[i + 1..].iter().find(|d| d.flags & SD_NUMA != 0);
            imb_span = top.map_or(chain[i].weight(), Domain::weight);
        } else {
            let factor = (chain[i].weight() / imb_span).max(1) as u32;
            chain[i].sd.imb_numa_nr = imb * factor;
        }
    }
}

/// sd_degenerate().
fn sd_degenerate(d: &Domain) -> bool {
    if d.weight() == 1 {
        return true;
    }
    if d.flags & SD_DEGENERATE_GROUPS_MASK != 0 && d.groups.len() > 1 {
        return false;
    }
    d.flags & SD_WAKE_AFFINE == 0
}

/// sd_parent_degenerate().
fn sd_parent_degenerate(d: &Domain, parent: &Domain) -> bool {
    if sd_degenerate(parent) {
        return true;
    }
    if d.sd.span != parent.sd.span {
        return false;
    }
    let mut pflags = parent.flags;
    if parent.groups.len() == 1 {
        pflags &= !SD_DEGENERATE_GROUPS_MASK;
    }
    pflags & !d.flags == 0
}

/// cpu_attach_domain()'s pruning: drop degenerate parents (passing SD_PREFER_SIBLING down),
/// then a degenerate bottom level.
fn remove_degenerate(mut chain: Vec<Domain>) -> Vec<Domain> {
    let mut i = 0;
    while i + 1 < chain.len() {
        if sd_parent_degenerate(&chain[i], &chain[i + 1]) {
            let parent = chain.remove(i + 1);
            chain[i].flags |= parent.flags & SD_PREFER_SIBLING;
        } else {
            i += 1;
        }
    }
    if chain.first().is_some_and(sd_degenerate) {
        chain.remove(0);
    }
    chain
}

/// Every CPU's domains, lowest first, as the balancer walks them (for_each_domain()).
pub fn build_domains(topo: &Topology, version: KernelVersion) -> Vec<Vec<Domain>> {
    let rules = Rules::of(version, None);
    let mut chains = build_chains(topo, &rules);
    let groups: Vec<Vec<Vec<Group>>> = (0..topo.nr_cpus())
        .map(|cpu| (0..chains[cpu as usize].len()).map(|lvl| build_groups(&chains, cpu, lvl)).collect())
        .collect();
    for (chain, groups) in chains.iter_mut().zip(groups) {
        for (d, g) in chain.iter_mut().zip(groups) {
            d.groups = g;
        }
        set_imb_numa_nr(chain);
    }
    chains
        .into_iter()
        .map(|chain| {
            let mut chain = remove_degenerate(chain);
            for d in &mut chain {
                d.sd.flags = flag_names(d.flags, &rules);
            }
            chain
        })
        .collect()
}

/// The domains of `cpu`, lowest first, degenerate levels removed, as debugfs lists them.
pub fn sched_domains(topo: &Topology, version: KernelVersion, cpu: u32) -> Vec<SchedDomain> {
    build_domains(topo, version).swap_remove(cpu as usize).into_iter().map(|d| d.sd).collect()
}
