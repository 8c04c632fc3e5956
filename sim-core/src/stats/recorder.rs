//! The time-series recorder: one row per sample interval, counters as interval deltas.

use bevy_ecs::prelude::*;

use super::Counters;
use super::summary::{Span, Value, metrics};
use crate::engine::{Event, EventQueue, NSEC_PER_MSEC, Nanos};
use crate::machine::PgData;
use crate::sched::Task;

/// Closed intervals so far and what the next one is measured against.
#[derive(Resource, Default)]
pub struct Recorder {
    pub interval: Nanos,
    last: Counters,
    last_time: Nanos,
    /// Threads whose node is recorded, with their column names.
    pub tracked: Vec<(String, Entity)>,
    pub header: Vec<String>,
    pub rows: Vec<(Nanos, Vec<Value>)>,
}

impl Recorder {
    pub fn new(interval: Nanos) -> Self {
        Self { interval, ..Default::default() }
    }

    /// `timeseries.csv`: `time_ms`, then every metric of the interval.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("time_ms");
        for h in &self.header {
            out.push(',');
            out.push_str(h);
        }
        out.push('\n');
        for (t, values) in &self.rows {
            out.push_str(&format!("{}", *t as f64 / NSEC_PER_MSEC as f64));
            for v in values {
                match v {
                    Value::Count(n) => out.push_str(&format!(",{n}")),
                    Value::Real(x) => out.push_str(&format!(",{x}")),
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Whether the rows carry the promotion limiter's state: memory-tiering mode on a machine
/// with a tier below the top one.
fn promotion_state_recorded(world: &World) -> bool {
    world.resource::<crate::kernel::Sysctl>().0.numa_balancing.tiering()
        && world.resource::<crate::mm::memory_tiers::MemoryTiers>().has_lower_tier()
}

/// Closes the interval ending now: appends a row and, unless the run is over, schedules the
/// next sample.
pub fn sample(world: &mut World) {
    let now = world.resource::<EventQueue>().now();
    // Gauges: pages in use on each node, in memory-tiering mode with a lower tier each
    // node's hot threshold and promotion candidates, then the node each tracked thread runs on.
    let mut gauges = Vec::new();
    let tiering = promotion_state_recorded(world);
    {
        let rec = world.resource::<Recorder>();
        let topo = world.resource::<crate::machine::Topology>();
        for e in &topo.node_entities {
            let pgdat = world.get::<PgData>(*e).expect("every node has a PgData");
            gauges.push(Value::Count(pgdat.present_pages - pgdat.free_pages));
        }
        for e in topo.node_entities.iter().filter(|_| tiering) {
            let nbp = world.get::<PgData>(*e).expect("every node has a PgData").nbp;
            gauges.extend([Value::Count(u64::from(nbp.threshold)), Value::Count(nbp.pgpromote_candidate)]);
        }
        for (_, e) in &rec.tracked {
            let cpu = world.get::<Task>(*e).map_or(0, |t| t.cpu);
            gauges.push(Value::Count(u64::from(topo.cpu_to_node(cpu))));
        }
    }
    let nr_nodes = world.resource::<crate::machine::Topology>().nr_nodes;
    world.resource_scope(|world, mut rec: Mut<Recorder>| {
        let counters = world.resource_mut::<Counters>().accrue_stale(now).clone();
        let d = counters.since(&rec.last);
        let groups = metrics(&d, now - rec.last_time, Span::Interval);
        let flat = groups.flatten();
        if rec.header.is_empty() {
            rec.header = flat.iter().map(|(k, _)| k.clone()).collect();
            let mut nodes: Vec<String> = (0..nr_nodes).map(|n| format!("node.{n}.used_pages")).collect();
            for n in (0..nr_nodes).filter(|_| tiering) {
                nodes.extend([format!("node.{n}.nbp_threshold_ms"), format!("node.{n}.pgpromote_candidate")]);
            }
            let tasks: Vec<String> = rec.tracked.iter().map(|(n, _)| format!("task.{n}.nid")).collect();
            rec.header.extend(nodes.into_iter().chain(tasks));
        }
        let mut row: Vec<Value> = flat.into_iter().map(|(_, v)| v).collect();
        row.extend(gauges);
        rec.rows.push((now, row));
        rec.last = counters;
        rec.last_time = now;
        let interval = rec.interval;
        world.resource_mut::<EventQueue>().schedule_in(interval, Event::Sample);
    });
}
