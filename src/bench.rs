//! `numasim bench`: simulator speed and memory on a large machine, beside a baseline of a
//! plain array read-modify-write loop over the same number of pages.

use std::time::Instant;

use sim_core::config::{Config, PatternKind, ProcessConfig, Slice, ThreadConfig, VmaConfig};
use sim_core::engine::stream;
use sim_core::mm::Pages;

pub fn run(gib_per_node: u64, seconds: u64) {
    let mut c = Config { name: "bench".into(), ..Config::default() };
    c.run.duration_ms = seconds * 1000;
    c.machine.nodes = 2;
    c.machine.memory_per_node_mib = gib_per_node * 1024;
    let vma_mib = gib_per_node * 1024 * 2 * 15 / 16;
    c.process.push(ProcessConfig {
        name: "bench".into(),
        vma: vec![VmaConfig { name: "heap".into(), size_mib: vma_mib, populate_node: Some(0), ..Default::default() }],
        thread: vec![ThreadConfig {
            name: "worker".into(),
            count_per_cpu: Some(1),
            vma: "heap".into(),
            slice: Slice::Private,
            pattern: PatternKind::Uniform,
            ..Default::default()
        }],
    });
    let t = Instant::now();
    let mut sim = workloads::build(&c);
    let build_s = t.elapsed().as_secs_f64();
    let pages = sim.world.resource::<Pages>().len() as u64;
    let page_bytes = sim.world.resource::<Pages>().bytes() as u64;
    let t = Instant::now();
    let out = sim.run().expect("the bench scenario runs to its end");
    let run_s = t.elapsed().as_secs_f64();
    let metric = |name: &str| out.summary.metrics.get(name).map_or(0.0, |v| v.as_f64());
    let touches = ["touches.cpu", "touches.kvm", "touches.device"].iter().map(|k| metric(k) as u64).sum::<u64>();

    let baseline_ns = baseline(pages as usize, touches.min(200_000_000));
    println!("machine: 2 nodes x {gib_per_node} GiB, {pages} simulated pages populated");
    println!("build: {build_s:.2} s");
    println!("run: {seconds} s simulated in {run_s:.2} s, {touches} touches, {} events", out.summary.events);
    println!("touches per second: {:.3e}", touches as f64 / run_s);
    println!("events per second: {:.3e}", out.summary.events as f64 / run_s);
    println!("ns per touch: {:.2} (baseline array read-modify-write: {baseline_ns:.2})", run_s * 1e9 / touches as f64);
    println!(
        "page state: {:.2} bytes per page, {:.1} MiB",
        page_bytes as f64 / pages as f64,
        page_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "numa_hint_faults: {}, numa_pages_migrated: {}",
        metric("vmstat.numa_hint_faults"),
        metric("vmstat.numa_pages_migrated"),
    );
}

/// ns per random read-modify-write of one byte in an array of `len` bytes, with the same
/// random stream the simulator draws page numbers from.
fn baseline(len: usize, ops: u64) -> f64 {
    let mut arr = vec![0u8; len];
    let mut rng = stream(1, "baseline");
    let t = Instant::now();
    for _ in 0..ops {
        let i = rng.below(len as u64) as usize;
        arr[i] = arr[i].wrapping_add(1);
    }
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    std::hint::black_box(&arr);
    ns
}
