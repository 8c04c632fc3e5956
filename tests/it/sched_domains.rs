//! The model's sched domains against the kernels': each fixture of tests/fixtures/sched-domains
//! is one boot of a Debian kernel under QEMU on one guest topology, read from debugfs
//! (register_sd(), kernel/sched/debug.c) and /proc/schedstat's domain spans. For every CPU,
//! sim_core::sched::topology::sched_domains() must give the same domains, lowest first, with
//! the degenerate levels removed as cpu_attach_domain() removes them.

use std::path::Path;

use oracle::schedstat::{DomainFixture, KernelDomain};
use sim_core::config::MachineConfig;
use sim_core::machine::Topology;
use sim_core::sched::topology::{SchedDomain, sched_domains};

fn fixtures() -> Vec<(String, DomainFixture)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sched-domains");
    let mut out: Vec<(String, DomainFixture)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What both sides say of a domain; flags as a sorted set (debugfs prints them in bit order).
type Seen = (String, Vec<u32>, Vec<String>, u32, u32, u64, u64, u32);

fn model(d: &SchedDomain) -> Seen {
    let mut flags: Vec<String> = d.flags.iter().map(|f| f.to_string()).collect();
    flags.sort();
    let (name, span) = (d.name.to_string(), d.span.clone());
    (name, span, flags, d.imbalance_pct, d.busy_factor, d.min_interval, d.max_interval, d.cache_nice_tries)
}

fn kernel(d: &KernelDomain) -> Seen {
    let mut flags = d.flags.clone();
    flags.sort();
    (
        d.name.clone(),
        d.span.clone(),
        flags,
        d.imbalance_pct,
        d.busy_factor,
        d.min_interval,
        d.max_interval,
        d.cache_nice_tries,
    )
}

#[test]
fn there_is_a_fixture_for_each_kernel_on_each_topology() {
    let names: Vec<String> = fixtures().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 4, "6.1 and 6.12 on 2x2 and 4x1: {names:?}");
}

#[test]
fn the_models_domains_are_the_kernels_on_every_cpu() {
    for (file, f) in fixtures() {
        let machine = MachineConfig { nodes: f.nodes, cpus_per_node: f.cpus_per_node, ..MachineConfig::default() };
        let topo = Topology::new(&machine);
        for (cpu, want) in f.cpus.iter().enumerate() {
            let got = sched_domains(&topo, f.sim_version, cpu as u32);
            let got: Vec<Seen> = got.iter().map(model).collect();
            let want: Vec<Seen> = want.iter().map(kernel).collect();
            assert_eq!(got, want, "{file}, cpu{cpu}");
        }
    }
}

/// sd->level counts the topology levels built below a domain, degenerate ones included;
/// debugfs prints it from 6.12 on.
#[test]
fn the_models_levels_are_the_kernels_where_debugfs_prints_them() {
    for (file, f) in fixtures() {
        let machine = MachineConfig { nodes: f.nodes, cpus_per_node: f.cpus_per_node, ..MachineConfig::default() };
        let topo = Topology::new(&machine);
        for (cpu, want) in f.cpus.iter().enumerate() {
            let got = sched_domains(&topo, f.sim_version, cpu as u32);
            for (g, w) in got.iter().zip(want) {
                if let Some(level) = w.level {
                    assert_eq!(g.level, level, "{file}, cpu{cpu}, {}", w.name);
                }
            }
        }
    }
}
