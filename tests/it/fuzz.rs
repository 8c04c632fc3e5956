//! A bounded fuzz driver of configs and `--set` strings, generated from the schema (the keys
//! of every built-in scenario's resolved config, plus the optional ones) and mutated: wrong
//! types, edges (0, -1, u32/u64 max, NaN, infinities), unknown keys, deep nesting, truncated
//! and shuffled files, huge but valid sizes.
//!
//! Every case must end in a config or a `ConfigError` naming a key or a line, never a panic
//! (overflow checks are on in test builds, so a wrapped value panics too). A config that
//! loads is run, shortened to at most `RUN_MS`, with `--check-invariants`: the run must
//! reach its end (no stall, no broken invariant), in at most `CASE_CPU` of CPU time, with
//! finite metrics and exactly the simulated time asked for. One case in `CLI_EVERY` also goes
//! through the binary under a memory limit and a timeout, which must exit 0 or 2.
//!
//! CI runs `NUMASIM_FUZZ_CASES` (default 1500) cases; the long run is
//! `NUMASIM_FUZZ_CASES=100000 cargo test --test it fuzz:: -- --nocapture` (seed: `NUMASIM_FUZZ_SEED`).
//! Every failure is printed with its case number; `NUMASIM_FUZZ_CASE=N` runs case N alone.

use crate::common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::{Duration, Instant};

use sim_core::config::{Config, Source, load, to_toml, validate};
use sim_core::engine::{NSEC_PER_MSEC, RngStream, stream};
use sim_core::limits::estimate_bytes;
use workloads::catalogue::BUILTIN;

/// Longest simulated run of a case.
const RUN_MS: u64 = 40;
/// CPU-time limit of one case (CPU time, not wall time: the harness may share a loaded
/// machine).
const CASE_CPU: Duration = Duration::from_secs(20);
/// Wall-clock time after which a case counts as hung, however loaded the machine.
const HANG_WALL: Duration = Duration::from_secs(600);
/// CPU seconds and wall seconds a case run through the binary may take.
const CLI_CPU_S: &str = "60";
const CLI_WALL_S: &str = "900";
/// Simulator memory a case may use in process (the harness's memory limit).
const CASE_BYTES: u64 = 256 << 20;
/// Address-space limit of a case run through the binary.
const CLI_ADDRESS_SPACE: &str = "4294967296";
/// One case in this many also runs through the binary.
const CLI_EVERY: u64 = 250;

/// Keys the resolved configs leave out when unset, as `--set` suffixes of a table.
const OPTIONAL: &[&str] = &[
    "run.max_memory_gib",
    "machine.distance",
    "process.0.vma.0.populate_node",
    "process.0.thread.0.count_per_node",
    "process.0.thread.0.count_per_cpu",
    "process.0.thread.0.node",
    "process.0.thread.0.cpus",
    "process.0.thread.0.stop_ms",
    "process.0.thread.0.period_ms",
    "process.0.thread.0.run_us",
    "process.0.vma.0.backing",
    "process.0.vma.0.memfd",
    "process.0.vma.0.hugetlb_page",
    "process.0.vma.0.mempolicy",
    "vm.0.populate_node",
    "vm.0.backing",
    "vm.0.memfd",
    "vm.0.mempolicy",
    "vm.0.vcpus.count_per_node",
    "vm.0.vcpus.cpus",
    "device.0.stop_ms",
    "action.0.len_mib",
];

/// Edge values, as `--set` writes them.
const EDGES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "10",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709",
    "1048576",
    "16777215",
    "16777216",
    "nan",
    "inf",
    "-inf",
    "0.0",
    "0.5",
    "1.0",
    "1.5",
    "-0.5",
    "1e308",
    "1e-300",
    "true",
    "false",
    "\"\"",
    "word",
    "\"a,b\"",
    "\"a\\nb\"",
    "\"x\\\"y\"",
    "[]",
    "[0]",
    "[1, 2]",
    "[[10, 20], [20, 10]]",
    "[[10]]",
    "{}",
    "{ a = 1 }",
    "implicit",
    "implicit-all",
    "explicit",
    "smart",
    "pin",
    "write",
    "owner",
    "private",
    "hot-cold",
    "sequential",
    "munmap",
    "memfd",
    "hugetlbfs",
    "guest_memfd",
    "2M",
    "1G",
    "{ mode = \"bind\", nodes = [0] }",
    "{ mode = \"interleave\", nodes = [0, 1] }",
    "{ mode = \"preferred\", nodes = [7] }",
];

/// The classes of bad input the fuzzer must cover; the long run and CI's slice must generate each.
const CLASSES: &[&str] = &[
    "edge 0",
    "edge -1",
    "edge u32 max",
    "edge u64 max",
    "edge NaN",
    "wrong type",
    "huge value",
    "unknown key",
    "optional key",
    "malformed --set",
    "deep nesting: key",
    "deep nesting: arrays",
    "deep nesting: tables",
    "truncated file",
    "lines dropped, doubled or swapped",
    "refused by the memory budget",
];

/// A case's random stream, and the classes of input it generated.
struct Gen {
    rng: RngStream,
    classes: Vec<&'static str>,
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    fn mark(&mut self, class: &'static str) {
        debug_assert!(CLASSES.contains(&class), "{class}");
        self.classes.push(class);
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Every leaf key of a TOML table, `--set` style (`process.0.vma.0.size_mib`), with its value.
fn leaves(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(&key, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(|v| v.is_table()) && !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                leaves(&format!("{prefix}.{i}"), v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// A scenario to mutate: its resolved text and its keys.
struct Base {
    text: String,
    keys: Vec<(String, toml::Value)>,
}

/// The built-in scenarios, resolved and shrunk (small VMAs, a short run) so that a case
/// that loads runs in milliseconds; mutations may make them big again.
fn bases() -> Vec<Base> {
    BUILTIN
        .iter()
        .map(|(name, _)| {
            let mut c = workloads::catalogue::resolve(name, &[]).expect("built-in scenarios are valid");
            shrink(&mut c);
            let text = to_toml(&c);
            let table: toml::Value = toml::from_str(&text).expect("resolved configs parse");
            let mut keys = Vec::new();
            leaves("", &table, &mut keys);
            Base { text, keys }
        })
        .collect()
}

fn shrink(c: &mut Config) {
    for v in c.process.iter_mut().flat_map(|p| p.vma.iter_mut()) {
        v.size_mib = v.size_mib.min(8);
    }
    for vm in &mut c.vm {
        vm.memory_mib = vm.memory_mib.min(8);
    }
    for a in &mut c.action {
        a.offset_mib = a.offset_mib.min(4);
        a.len_mib = a.len_mib.map(|l| l.min(4));
        a.start_ms = a.start_ms.min(10);
        a.period_ms = a.period_ms.min(20);
        a.protect_ms = a.protect_ms.min(a.period_ms.saturating_sub(1)).max(1);
    }
    c.run.duration_ms = RUN_MS;
    c.run.sample_ms = 10;
    c.kernel.numa_balancing_scan_delay_ms = c.kernel.numa_balancing_scan_delay_ms.min(5);
    c.kernel.numa_balancing_scan_period_min_ms = c.kernel.numa_balancing_scan_period_min_ms.min(5);
    c.ksm.sleep_millisecs = 2;
}

/// A value for `key`: an edge, the base value scaled, or a random integer.
fn value(g: &mut Gen, base: &toml::Value) -> String {
    match g.below(4) {
        0 | 1 => {
            let edge = *g.pick(EDGES);
            mark_edge(g, base, edge);
            edge.to_string()
        }
        2 => match base {
            toml::Value::Integer(n) => {
                let shift = g.below(40);
                if shift >= 20 {
                    g.mark("huge value");
                }
                (n.saturating_mul(1 << shift)).to_string()
            }
            toml::Value::Float(x) => format!("{}", x * (g.below(5) as f64 - 1.0)),
            other => other.to_string(),
        },
        _ => (g.rng.below(u64::MAX) >> g.below(64)).to_string(),
    }
}

/// Notes which class an edge value given to a key whose value was `base` falls in.
fn mark_edge(g: &mut Gen, base: &toml::Value, edge: &str) {
    let class = match edge {
        "0" => Some("edge 0"),
        "-1" => Some("edge -1"),
        "4294967295" => Some("edge u32 max"),
        "18446744073709551615" => Some("edge u64 max"),
        "nan" => Some("edge NaN"),
        _ => None,
    };
    if let Some(class) = class {
        g.mark(class);
    }
    let number = edge.parse::<f64>().is_ok();
    let wrong = match base {
        toml::Value::Integer(_) | toml::Value::Float(_) => !number,
        toml::Value::String(_) | toml::Value::Boolean(_) => number,
        _ => false,
    };
    if wrong {
        g.mark("wrong type");
    }
}

/// A key nobody defined: a typo, a made-up section, an index out of range, deep nesting.
fn unknown_key(g: &mut Gen, base: &Base) -> String {
    let (key, _) = g.pick(&base.keys);
    g.mark("unknown key");
    match g.below(6) {
        0 => format!("{key}x"),
        1 => format!("{}.{}", key.split('.').next().unwrap_or("run"), g.pick(&["nodez", "seeed", "x", ""])),
        2 => format!("process.{}.name", 5 + g.below(100)),
        3 => {
            let parts = 1 + g.below(40);
            if parts > 16 {
                g.mark("deep nesting: key");
            }
            (0..parts).map(|i| format!("k{i}")).collect::<Vec<_>>().join(".")
        }
        4 => format!("{key}.deeper.still"),
        _ => g.pick(&["", ".", "..", "run..seed", "process.-1.name", "=", "device.x.name"]).to_string(),
    }
}

/// One `--set` string.
fn assignment(g: &mut Gen, base: &Base) -> String {
    match g.below(10) {
        0 => format!("{}={}", unknown_key(g, base), g.pick(EDGES)),
        1 => {
            g.mark("optional key");
            format!("{}={}", g.pick(OPTIONAL), g.pick(EDGES))
        }
        2 => {
            g.mark("malformed --set");
            g.pick(&["run.seed", "noequals", "=5", "run.seed=", "run.seed==1"]).to_string()
        }
        _ => {
            let (key, v) = g.pick(&base.keys).clone();
            format!("{key}={}", value(g, &v))
        }
    }
}

/// The file text, mutated sometimes: truncated, a line dropped, duplicated or swapped in,
/// or nested deep.
fn text(g: &mut Gen, base: &Base) -> String {
    let text = &base.text;
    match g.below(12) {
        0 => {
            g.mark("truncated file");
            let mut cut = g.below(text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].to_string()
        }
        1 | 2 => {
            g.mark("lines dropped, doubled or swapped");
            let mut lines: Vec<&str> = text.lines().collect();
            let i = g.below(lines.len());
            match g.below(3) {
                0 => drop(lines.remove(i)),
                1 => lines.insert(i, lines[i]),
                _ => {
                    let j = g.below(lines.len());
                    lines.swap(i, j);
                }
            }
            lines.join("\n")
        }
        3 => {
            g.mark("deep nesting: arrays");
            format!("{text}\nnested = {}1{}\n", "[".repeat(g.below(300)), "]".repeat(g.below(300)))
        }
        4 => {
            g.mark("deep nesting: tables");
            format!("[{}]\nx = 1\n{text}", (0..1 + g.below(60)).map(|i| format!("t{i}")).collect::<Vec<_>>().join("."))
        }
        _ => text.clone(),
    }
}

/// The message and location of the last panic, for the failure report.
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn last_panic() -> String {
    LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default()
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime() writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is supported on Linux");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What one case came to.
#[derive(Default)]
struct Tally {
    cases: u64,
    rejected: u64,
    ran: u64,
    over_budget: u64,
    cli: u64,
    /// Cases that generated each class of input.
    classes: std::collections::BTreeMap<&'static str, u64>,
}

/// Loads one case in process, checks how it failed or runs it.
fn run_case(g: &mut Gen, bases: &[Base], tally: &mut Tally, case: u64) -> Result<(), String> {
    let base = g.pick(bases);
    let text = text(g, base);
    let sets: Vec<String> = (0..g.below(4)).map(|_| assignment(g, base)).collect();
    let describe = || format!("case {case}: --set {sets:?}\n--- file ---\n{text}");
    *RUNNING.lock().unwrap() = Some((case, Instant::now(), describe()));
    let src = Source { origin: "fuzz.toml".into(), text: text.clone() };
    let loaded = catch_unwind(AssertUnwindSafe(|| load(&src, &sets)))
        .map_err(|_| format!("load panicked: {}\n{}", last_panic(), describe()))?;
    let config = match loaded {
        Err(e) if e.key.is_empty() && e.line.is_none() => {
            return Err(format!("error names no key and no line: {e}\n{}", describe()));
        }
        Err(e) => {
            if e.key == "run.max_memory_gib" {
                g.mark("refused by the memory budget");
            }
            tally.rejected += 1;
            return cli_case(tally, case, &text, &sets, 2);
        }
        Ok(c) => c,
    };
    cli_case(tally, case, &text, &sets, 0)?;
    let mut c = config;
    c.run.duration_ms = c.run.duration_ms.min(RUN_MS);
    c.run.sample_ms = c.run.sample_ms.min(c.run.duration_ms);
    if validate(&c).is_err() || estimate_bytes(&c) > CASE_BYTES {
        tally.over_budget += 1;
        return Ok(());
    }
    if c.name.is_empty() {
        c.name = "fuzz".into();
    }
    let cpu = thread_cpu_time();
    let out = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = workloads::build(&c);
        sim.set_check_invariants(true);
        sim.run()
    }))
    .map_err(|_| format!("run panicked: {}\n{}", last_panic(), describe()))?
    .map_err(|e| format!("run failed: {e}\n{}", describe()))?;
    tally.ran += 1;
    let took = thread_cpu_time() - cpu;
    if took > CASE_CPU {
        return Err(format!("took {took:?} of CPU time: {}", describe()));
    }
    let expected = u128::from(c.run.duration_ms) * u128::from(NSEC_PER_MSEC);
    if u128::from(out.summary.sim_time_ns) != expected {
        return Err(format!("simulated {} ns, asked for {expected}: {}", out.summary.sim_time_ns, describe()));
    }
    if let Some((name, _)) = out.summary.metrics.flatten().into_iter().find(|(_, v)| !v.as_f64().is_finite()) {
        return Err(format!("metric {name} is not finite: {}", describe()));
    }
    Ok(())
}

/// Every `CLI_EVERY`-th case also goes through `numasim run` (loaded ones, shortened) or
/// `numasim check` (rejected ones), under an address-space limit and a timeout; it must
/// exit with `want`.
fn cli_case(tally: &mut Tally, case: u64, text: &str, sets: &[String], want: i32) -> Result<(), String> {
    if !case.is_multiple_of(CLI_EVERY) {
        return Ok(());
    }
    tally.cli += 1;
    let dir = common::scratch(&format!("fuzz-{case}"));
    let file = dir.join("case.toml");
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let mut args: Vec<String> = vec![env!("CARGO_BIN_EXE_numasim").into()];
    if want == 0 {
        args.extend(["run".into(), common::s(&file).into(), "--check-invariants".into(), "--out".into()]);
        args.push(common::s(&dir.join("out")).into());
    } else {
        args.extend(["check".into(), common::s(&file).into()]);
    }
    for s in sets {
        args.extend(["--set".into(), s.clone()]);
    }
    if want == 0 {
        args.extend(["--set".into(), format!("run.duration_ms={RUN_MS}"), "--set".into(), "run.sample_ms=10".into()]);
    }
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={CLI_ADDRESS_SPACE}")).arg(format!("--cpu={CLI_CPU_S}")).arg("timeout").arg(CLI_WALL_S);
    cmd.args(&args);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("fuzz: prlimit/timeout not available ({e}): the binary runs without limits");
            Command::new(&args[0]).args(&args[1..]).output().map_err(|e| e.to_string())?
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let code = out.status.code();
    // A shortened run may become invalid (a quantum longer than 40 ms): exit 2 is fine then.
    let fine = code == Some(want) || (want == 0 && code == Some(2));
    if !fine {
        return Err(format!(
            "case {case}: `{}` exited {code:?}, expected {want}: {}",
            args[1..].join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The case running now, for the watchdog: its number, when it started and how to reproduce it.
static RUNNING: std::sync::Mutex<Option<(u64, Instant, String)>> = std::sync::Mutex::new(None);

/// How to run one case again on its own.
fn reproduce(seed: u64, case: u64) -> String {
    format!("NUMASIM_FUZZ_SEED={seed} NUMASIM_FUZZ_CASE={case} cargo test --test it fuzz:: -- --nocapture")
}

/// A case that runs past `HANG_WALL` is a hang: the watchdog prints it, with the failures
/// found so far, and ends the process (a thread stuck in a loop cannot be stopped otherwise).
fn watchdog(seed: u64, failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let running = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
            if let Some((case, start, describe)) = running.filter(|(_, start, _)| start.elapsed() > HANG_WALL) {
                for f in failures.lock().map(|f| f.clone()).unwrap_or_default() {
                    eprintln!("fuzz failure: {f}\n");
                }
                eprintln!(
                    "fuzz: case {case} hangs ({:.0} s of wall time); reproduce: {}\n{describe}",
                    start.elapsed().as_secs_f64(),
                    reproduce(seed, case)
                );
                std::process::exit(101);
            }
        }
    });
}

#[test]
fn no_case_panics_hangs_or_wraps() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("NUMASIM_FUZZ_SEED").unwrap_or(1);
    let cases = match env("NUMASIM_FUZZ_CASE") {
        Some(one) => one..one + 1,
        None => 0..env("NUMASIM_FUZZ_CASES").unwrap_or(1500),
    };
    let bases = bases();
    let mut tally = Tally::default();
    // Panics are caught and reported per case with where they happened; the default hook
    // would print each one. Other tests of the binary keep the hook they had.
    let hook = std::sync::Arc::new(std::panic::take_hook());
    let (fuzzer, others) = (std::thread::current().id(), hook.clone());
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == fuzzer {
            *LAST_PANIC.lock().unwrap() = info.to_string();
        } else {
            others(info);
        }
    }));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    watchdog(seed, failures.clone());
    let start = Instant::now();
    for case in cases {
        tally.cases += 1;
        // Each case draws from its own stream, so that one case reproduces alone.
        let mut g = Gen { rng: stream(seed, &format!("fuzz case {case}")), classes: Vec::new() };
        let result = run_case(&mut g, &bases, &mut tally, case);
        g.classes.sort_unstable();
        g.classes.dedup();
        for class in g.classes {
            *tally.classes.entry(class).or_default() += 1;
        }
        if let Err(e) = result {
            let failure = format!("{e}\nreproduce: {}", reproduce(seed, case));
            eprintln!("fuzz failure: {failure}\n");
            failures.lock().unwrap().push(failure);
        }
        *RUNNING.lock().unwrap() = None;
        if (case + 1).is_multiple_of(10_000) {
            let found = failures.lock().unwrap().len();
            eprintln!("fuzz: {} cases, {found} failures, {:.0} s", case + 1, start.elapsed().as_secs_f64());
        }
    }
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| hook(info)));
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "fuzz: {} cases in {:.1} s (seed {seed}): {} rejected with exit 2, {} ran with invariants, {} loaded but over the harness's limits after shortening, {} through the binary; {} failures",
        tally.cases,
        start.elapsed().as_secs_f64(),
        tally.rejected,
        tally.ran,
        tally.over_budget,
        tally.cli,
        failures.len()
    );
    let classes: Vec<String> = CLASSES.iter().map(|c| format!("{c}: {}", tally.classes.get(c).unwrap_or(&0))).collect();
    eprintln!("fuzz: cases per class of input: {}", classes.join(", "));
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
    if tally.cases >= 1500 {
        let missing: Vec<&&str> = CLASSES.iter().filter(|c| !tally.classes.contains_key(*c)).collect();
        assert!(missing.is_empty(), "no case generated {missing:?}");
    }
}
