//! Helpers shared by the simulation tests.
#![allow(dead_code)]

use sim_core::config::{Config, Source, load};
use sim_core::sim::{RunOutput, Sim};

/// A config from TOML text with `--set` style overrides.
pub fn config(text: &str, set: &[&str]) -> Config {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    let mut c = load(&Source { origin: "test".into(), text: text.into() }, &set).unwrap_or_else(|e| panic!("{e}"));
    if c.name.is_empty() {
        c.name = "test".into();
    }
    c
}

/// A built-in scenario with overrides.
pub fn scenario(name: &str, set: &[&str]) -> Config {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    workloads::catalogue::resolve(name, &set).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds and runs `c`. (The invariant checks cost a pass over the pages per event, too slow
/// for these whole runs in CI; the invariants module and the fuzz driver run with them.)
pub fn run(c: &Config) -> (Sim, RunOutput) {
    let mut sim = workloads::build(c);
    let out = sim.run().unwrap_or_else(|e| panic!("{e}"));
    (sim, out)
}

/// A summary metric by its dotted name.
pub fn metric(out: &RunOutput, name: &str) -> f64 {
    out.summary.metrics.get(name).unwrap_or_else(|| panic!("no metric {name}")).as_f64()
}

/// Column `name` of the time series.
pub fn column(out: &RunOutput, name: &str) -> Vec<f64> {
    let i = out.recorder.header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"));
    out.recorder.rows.iter().map(|(_, r)| r[i].as_f64()).collect()
}

/// Locality of `source` touches over the last fifth of the run, weighted by touches.
pub fn tail_locality(out: &RunOutput, source: &str) -> f64 {
    let touches = column(out, &format!("touches.{source}"));
    let locality = column(out, &format!("locality.{source}"));
    let from = touches.len() * 4 / 5;
    let all: f64 = touches[from..].iter().sum();
    let local: f64 = touches[from..].iter().zip(&locality[from..]).map(|(t, l)| t * l).sum();
    local / all
}

/// Two threads on node 1 whose memory sits on node 0 (tests fill node 1 so pages cannot move).
pub const PULLED: &str = r#"
[run]
duration_ms = 20000

[machine]
cpus_per_node = 16

[[process]]
name = "app"

[[process.vma]]
name = "data"
size_mib = 256
populate_node = 0

[[process.thread]]
count = 2
node = 1
vma = "data"
slice = "private"
"#;

/// Two processes whose threads run on the node holding the other's memory, one CPU a node.
pub const CROSSED: &str = r#"
[run]
duration_ms = 10000

[machine]
cpus_per_node = 1

[[process]]
name = "a"

[[process.vma]]
name = "data"
size_mib = 64
populate_node = 1

[[process.thread]]
count = 2
node = 0
vma = "data"

[[process]]
name = "b"

[[process.vma]]
name = "data"
size_mib = 64
populate_node = 0

[[process.thread]]
count = 2
node = 1
vma = "data"
"#;
