//! `numasim bench`: simulator speed and memory at two machine scales, each beside the ceiling
//! of a plain random read-modify-write loop over as many pages, measured in the same run.

use std::time::Instant;

use rayon::prelude::*;

use sim_core::config::{Config, PatternKind, ProcessConfig, Slice, Thp, ThreadConfig, VmaConfig};
use sim_core::engine::hugepages::reserve_exact_huge;
use sim_core::engine::stream;
use sim_core::mm::Pages;
use sim_core::sched::fair::LoadBalance;

/// A machine and a numa02-style workload to time.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Scale {
    /// 2 nodes x 4 CPUs x 32 GiB, 60 GiB populated (30 GiB with THP), 2 s simulated.
    Small,
    /// 8 nodes x 32 CPUs x 64 GiB, a 256 GiB buffer (60 GiB with THP), 10 s simulated.
    Large,
    /// The `big-vm` scenario as it is: 2 nodes x 96 CPUs x 1 TiB, 172 vCPUs over 1470 GiB of
    /// memfd memory that a daemon maps too, 5 s simulated (a memfd has 4 KiB pages under
    /// any `transparent_hugepage`, so `--thp` runs it again unchanged).
    BigVm,
}

impl Scale {
    fn config(self, thp: bool) -> Config {
        let mut c = Config { name: "bench".into(), ..Config::default() };
        let (nodes, cpus, gib, buffer_mib, seconds) = match self {
            Scale::Small => (2, 4, 32, 32 * 1024 * 2 * 15 / 16, 2),
            Scale::Large => (8, 32, 64, 256 * 1024, 10),
            Scale::BigVm => {
                return workloads::catalogue::resolve("big-vm", &[]).expect("the built-in big-vm scenario resolves");
            }
        };
        c.run.duration_ms = seconds * 1000;
        c.machine.nodes = nodes;
        c.machine.cpus_per_node = cpus;
        c.machine.memory_per_node_mib = gib * 1024;
        let buffer_mib = if thp {
            c.kernel.transparent_hugepage = Thp::Always;
            // THPs come from the faulting node alone (no fallback to other nodes), so the
            // THP case populates what node 0 holds: all of it THP-backed.
            gib * 1024 * 15 / 16
        } else {
            buffer_mib
        };
        c.process.push(ProcessConfig {
            name: "bench".into(),
            vma: vec![VmaConfig {
                name: "heap".into(),
                size_mib: buffer_mib,
                populate_node: Some(0),
                ..Default::default()
            }],
            thread: vec![ThreadConfig {
                name: "worker".into(),
                count_per_cpu: Some(1),
                vma: "heap".into(),
                slice: Slice::Private,
                pattern: PatternKind::Uniform,
                ..Default::default()
            }],
            ..Default::default()
        });
        c
    }
}

/// What one case measured, for the side-by-side table.
struct Figures {
    run_s: f64,
    /// CPU time of the simulating thread.
    run_cpu_s: f64,
    /// load_balance() passes.
    passes: u64,
    /// CPU time of the simulating thread per touch.
    ns_per_touch: f64,
    ratio: f64,
    bytes_per_page: f64,
}

pub fn run(scales: &[Scale], thp: bool, trace: bool, balance: bool) {
    for &scale in scales {
        let four_k = run_one(scale, false, true);
        if balance {
            balance_cost(scale, &four_k);
        }
        if trace {
            run_traced(scale, false, four_k.run_s);
        }
        if thp {
            let huge = run_one(scale, true, true);
            if trace {
                run_traced(scale, true, huge.run_s);
            }
            println!("== {scale:?}: 4 KiB pages vs THP always");
            println!("{:<34}{:>12}{:>12}", "", "4 KiB", "THP");
            println!("{:<34}{:>12.2}{:>12.2}", "CPU ns per touch", four_k.ns_per_touch, huge.ns_per_touch);
            println!("{:<34}{:>12.2}{:>12.2}", "ratio to the raw loop (CPU)", four_k.ratio, huge.ratio);
            println!(
                "{:<34}{:>12.3}{:>12.3}",
                "page state, bytes per 4 KiB page", four_k.bytes_per_page, huge.bytes_per_page
            );
        }
    }
}

/// The record bound of a traced bench run.
const TRACE_BENCH_BYTES: u64 = 512 << 20;

/// The same run with every event recorded, then written as ftrace text and as Chrome JSON
/// (to nowhere: the cost is formatting, not the disk): what tracing on costs.
fn run_traced(scale: Scale, thp: bool, plain_s: f64) {
    use sim_core::trace::{Kind, TpVersion, TraceOptions};
    let c = scale.config(thp);
    let mut sim = workloads::build(&c);
    let events = "*:*".to_string();
    sim.enable_trace(TraceOptions {
        kinds: Kind::ALL.to_vec(),
        events,
        version: TpVersion::V6_12,
        max_bytes: TRACE_BENCH_BYTES,
    });
    let t = Instant::now();
    let out = sim.run().expect("the bench scenario runs to its end");
    let run_s = t.elapsed().as_secs_f64();
    let trace = out.trace.as_ref().expect("tracing was on");
    let time_write = |write: fn(
        &sim_core::trace::Trace,
        &mut dyn std::io::Write,
    ) -> std::io::Result<sim_core::trace::output::Written>| {
        let t = Instant::now();
        let w = write(trace, &mut std::io::sink()).expect("writing to a sink cannot fail");
        (t.elapsed().as_secs_f64(), w)
    };
    let (text_s, text) = time_write(sim_core::trace::output::write_ftrace);
    let (json_s, json) = time_write(sim_core::trace::chrome::write_chrome);
    println!(
        "traced (all events, bound {} MiB{}): run {run_s:.2} s ({:+.0} % against untraced), {} events recorded",
        TRACE_BENCH_BYTES >> 20,
        if trace.stopped().is_some() { ", reached: recording stopped" } else { "" },
        (run_s / plain_s - 1.0) * 100.0,
        trace.records().len()
    );
    let per_event = |s: f64, n: u64| s * 1e9 / n.max(1) as f64;
    println!(
        "trace output: ftrace text {:.1} MiB in {text_s:.2} s ({:.0} ns per event), Chrome JSON {:.1} MiB in {json_s:.2} s ({:.0} ns per event)",
        text.bytes as f64 / (1 << 20) as f64,
        per_event(text_s, text.events),
        json.bytes as f64 / (1 << 20) as f64,
        per_event(json_s, json.events)
    );
}

/// The same run without load balancing, beside `with`: what the balancer costs per pass.
fn balance_cost(scale: Scale, with: &Figures) {
    let without = run_one(scale, false, false);
    let cost_s = with.run_cpu_s - without.run_cpu_s;
    println!("== {scale:?}: load balancing on vs off (CPU s of the simulating thread)");
    println!(
        "on {:.2} s, off {:.2} s: {:+.1} %, {:.1} us per load_balance() pass ({} passes)",
        with.run_cpu_s,
        without.run_cpu_s,
        cost_s / without.run_cpu_s * 100.0,
        cost_s * 1e6 / with.passes.max(1) as f64,
        with.passes
    );
}

/// Times one untraced run, with the load balancer on or off.
fn run_one(scale: Scale, thp: bool, load_balance: bool) -> Figures {
    let mut c = scale.config(thp);
    c.kernel.load_balance = load_balance;
    let m = &c.machine;
    let pages_label = if thp { "THP always" } else { "4 KiB pages" };
    println!(
        "== {scale:?}: {} nodes x {} CPUs x {} GiB, {pages_label}{}",
        m.nodes,
        m.cpus_per_node,
        m.memory_per_node_mib / 1024,
        if load_balance { "" } else { ", kernel.load_balance = false" }
    );
    let t = Instant::now();
    let mut sim = workloads::build(&c);
    let build_s = t.elapsed().as_secs_f64();
    let pages = sim.world.resource::<Pages>().len() as u64;
    let (t, cpu) = (Instant::now(), thread_cpu_s());
    let out = sim.run().expect("the bench scenario runs to its end");
    let (run_s, run_cpu_s) = (t.elapsed().as_secs_f64(), thread_cpu_s() - cpu);
    // After the run: a 4 KiB fault or a split expands a THP's chunk as the run goes.
    let page_bytes = sim.world.resource::<Pages>().bytes() as u64;
    let metric = |name: &str| out.summary.metrics.get(name).map_or(0.0, |v| v.as_f64());
    let touches = ["touches.cpu", "touches.kvm", "touches.device"].iter().map(|k| metric(k) as u64).sum::<u64>();
    let sim_s = c.run.duration_ms as f64 / 1000.0;
    let ns_per_touch = run_s * 1e9 / touches as f64;
    let ops = touches.min(200_000_000);
    let ceiling = Ceiling::measure(pages as usize, ops, true);
    let ceiling_4k = Ceiling::measure(pages as usize, ops, false);
    println!("build: {build_s:.2} s for {pages} simulated pages");
    println!(
        "run: {sim_s} s simulated in {run_s:.2} s: {:.3} simulated s per wall s ({:.3} per CPU s of this thread)",
        sim_s / run_s,
        sim_s / run_cpu_s
    );
    println!("touches: {touches}, {:.3e} per s; events: {}", touches as f64 / run_s, out.summary.events.unwrap_or(0));
    println!(
        "ns per touch: {ns_per_touch:.2} ({:.2} CPU); raw random read-modify-write over {pages} pages: {:.2} ({:.2} CPU), \
         {:.2} ({:.2} CPU) without huge pages; ratio {:.2} ({:.2} CPU)",
        run_cpu_s * 1e9 / touches as f64,
        ceiling.wall_ns,
        ceiling.cpu_ns,
        ceiling_4k.wall_ns,
        ceiling_4k.cpu_ns,
        ceiling.wall_ns / ns_per_touch,
        ceiling.cpu_ns * touches as f64 / (run_cpu_s * 1e9),
    );
    println!(
        "page state: {:.2} bytes per page, {:.1} MiB; peak RSS so far: {}",
        page_bytes as f64 / pages as f64,
        page_bytes as f64 / (1 << 20) as f64,
        peak_rss().map_or("unknown".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0))
    );
    println!(
        "numa_hint_faults: {}, numa_pages_migrated: {}, thp_migration_success: {}",
        metric("vmstat.numa_hint_faults"),
        metric("vmstat.numa_pages_migrated"),
        metric("vmstat.thp_migration_success"),
    );
    let passes = sim.world.resource::<LoadBalance>().passes;
    println!("load balancing: {passes} load_balance() passes, {} task migrations", metric("sched.nr_migrations"));
    // The table compares CPU time: on a shared machine wall time mostly measures the load.
    let cpu_ns_per_touch = run_cpu_s * 1e9 / touches as f64;
    let ratio = ceiling.cpu_ns / cpu_ns_per_touch;
    Figures {
        run_s,
        run_cpu_s,
        passes,
        ns_per_touch: cpu_ns_per_touch,
        ratio,
        bytes_per_page: page_bytes as f64 / pages as f64,
    }
}

/// Runs of the sweep [`sweep`] times: seeds of `default`, 3 simulated seconds each.
const SWEEP_RUNS: u64 = 12;
/// Rounds of the sweep: each times `--jobs 1` and `--jobs 2` back to back, in alternating
/// order, because this shared host's speed drifts by a third within minutes and a single
/// pair measured once gave anything from 1.5x to 2.5x.
const SWEEP_ROUNDS: usize = 5;

/// Sweep throughput: the same independent runs (results not written) on one thread and on
/// two, as `numasim sweep --jobs 1` and `--jobs 2` run them, in runs per wall second, with
/// the CPU time the process used (on a shared machine, wall time over CPU time says how much
/// of the cores it had). Each round gives a ratio; the median of the rounds is the figure.
/// Each round also times two copies of a compute-bound loop one after the other and at once
/// ([`host_loop`]): what two threads give any code that keeps its core busy on this host,
/// the ceiling for runs that do.
pub fn sweep() {
    let configs: Vec<Config> = (1..=SWEEP_RUNS)
        .map(|seed| {
            let set = [format!("run.seed={seed}"), "run.duration_ms=3000".to_string()];
            workloads::catalogue::resolve("default", &set).expect("the built-in default scenario resolves")
        })
        .collect();
    println!("== sweep: {SWEEP_RUNS} runs of `default` (3 s simulated each), {SWEEP_ROUNDS} rounds");
    let pools = [1, 2].map(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("a thread pool starts"));
    let (mut ratios, mut host) = (Vec::new(), Vec::new());
    for round in 0..SWEEP_ROUNDS {
        let loops = |i: usize| {
            let t = Instant::now();
            std::hint::black_box(pools[i].install(|| [1, 2].par_iter().map(|&s| host_loop(s)).sum::<u64>()));
            t.elapsed().as_secs_f64()
        };
        let (alone, paired) = (loops(0), loops(1));
        host.push(alone / paired);
        let mut rate = [0.0; 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (t, cpu) = (Instant::now(), process_cpu_s());
            let events: u64 = pools[i].install(|| {
                configs
                    .par_iter()
                    .map(|c| workloads::build(c).run().expect("the sweep's runs end").summary.events.unwrap_or(0))
                    .sum()
            });
            let (wall, cpu) = (t.elapsed().as_secs_f64(), process_cpu_s() - cpu);
            rate[i] = SWEEP_RUNS as f64 / wall;
            println!(
                "round {round}, --jobs {}: {wall:.2} s wall, {cpu:.2} s CPU, {:.2} runs per s ({events} events)",
                i + 1,
                rate[i]
            );
        }
        ratios.push(rate[1] / rate[0]);
    }
    for (what, mut r) in [("throughput on 2 threads", ratios), ("a compute-bound loop on 2 threads", host)] {
        let shown: Vec<String> = r.iter().map(|r| format!("{r:.2}")).collect();
        r.sort_by(f64::total_cmp);
        println!(
            "{what}: {:.2}x that on 1 (median of {SWEEP_ROUNDS} rounds: {})",
            r[SWEEP_ROUNDS / 2],
            shown.join(", ")
        );
    }
}

/// A loop that keeps its core busy: random read-modify-writes of a 256 KiB array (in the
/// core's L2) with the simulator's random stream, about half a second of CPU.
fn host_loop(seed: u64) -> u64 {
    const LEN: usize = 256 << 10;
    let (mut arr, mut rng) = (vec![0u8; LEN], stream(seed, "host"));
    for _ in 0..150_000_000u64 {
        let i = rng.below(LEN as u64) as usize;
        arr[i] = arr[i].wrapping_add(1);
    }
    arr.iter().map(|&b| u64::from(b)).sum()
}

/// The ceiling: ns per random read-modify-write of one byte in an array of one byte per
/// page, with the same random stream the simulator draws page numbers from, in wall and in
/// CPU time. `huge`: the array is allocated as the page state is (on huge pages).
struct Ceiling {
    wall_ns: f64,
    cpu_ns: f64,
}

impl Ceiling {
    fn measure(len: usize, ops: u64, huge: bool) -> Self {
        let mut arr = Vec::new();
        if huge {
            reserve_exact_huge(&mut arr, len);
            arr.resize(len, 0u8);
        } else {
            arr = vec![0u8; len];
        }
        let mut rng = stream(1, "baseline");
        let (t, cpu) = (Instant::now(), thread_cpu_s());
        for _ in 0..ops {
            let i = rng.below(len as u64) as usize;
            arr[i] = arr[i].wrapping_add(1);
        }
        let (wall_s, cpu_s) = (t.elapsed().as_secs_f64(), thread_cpu_s() - cpu);
        std::hint::black_box(&arr);
        Self { wall_ns: wall_s * 1e9 / ops as f64, cpu_ns: cpu_s * 1e9 / ops as f64 }
    }
}

/// CPU time this thread has used, in seconds: unlike wall time, it leaves out the time other
/// work on a shared machine held the core.
fn thread_cpu_s() -> f64 {
    cpu_clock_s(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time all threads of the process have used, in seconds.
fn process_cpu_s() -> f64 {
    cpu_clock_s(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock_s(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime() writes the timespec it is given.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The process's peak resident set (VmHWM in /proc/self/status), in KiB.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
