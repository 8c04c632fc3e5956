//! The kernel's load balancer as the guest saw it: how often each thread changed CPUs and
//! where it ran, /proc/schedstat's per-domain counters (show_schedstat(),
//! kernel/sched/stats.c) turned into numasim's `schedstat.<DOMAIN>.*` names, and the sched
//! domains debugfs describes (register_sd(), kernel/sched/debug.c), which the sched-domain
//! fixtures hold.

use std::collections::BTreeMap;

use guest::{Plan, Sample};
use serde::{Deserialize, Serialize};
use sim_core::sched::fair::{Idle, LB_FIELDS};

/// The twelve counters after the idle-type blocks, in show_schedstat()'s order. The sbe_*
/// and sbf_* ones have not been counted since 3.x (always 0), so they are left out of the
/// summary.
const TAIL_FIELDS: [&str; 12] = [
    "alb_count",
    "alb_failed",
    "alb_pushed",
    "sbe_count",
    "sbe_balanced",
    "sbe_pushed",
    "sbf_count",
    "sbf_balanced",
    "sbf_pushed",
    "ttwu_wake_remote",
    "ttwu_move_affine",
    "ttwu_move_balance",
];

/// Version 17 (6.13 on) prints four counters where `lb_imbalance` was, and the domain's name
/// after `domain<M>` (Documentation/scheduler/sched-stats.rst).
const LB_FIELDS_V17: [&str; 11] = [
    "lb_count",
    "lb_balanced",
    "lb_failed",
    "lb_imbalance_load",
    "lb_imbalance_util",
    "lb_imbalance_task",
    "lb_imbalance_misfit",
    "lb_gained",
    "lb_hot_gained",
    "lb_nobusyq",
    "lb_nobusyg",
];

/// The idle types' names in the order a schedstat version prints them, and the counters of
/// each: enum cpu_idle_type (include/linux/sched/idle.h) is CPU_IDLE, CPU_NOT_IDLE,
/// CPU_NEWLY_IDLE up to 6.9 (version 15) and __CPU_NOT_IDLE, CPU_IDLE, CPU_NEWLY_IDLE from
/// 6.10 (versions 16 and 17).
fn idle_types(version: u32) -> Result<([&'static str; 3], &'static [&'static str]), String> {
    let not_idle_first = [Idle::NotIdle.name(), Idle::Idle.name(), Idle::NewlyIdle.name()];
    match version {
        15 => Ok(([Idle::Idle.name(), Idle::NotIdle.name(), Idle::NewlyIdle.name()], &LB_FIELDS)),
        16 => Ok((not_idle_first, &LB_FIELDS)),
        17 => Ok((not_idle_first, &LB_FIELDS_V17)),
        v => Err(format!(
            "/proc/schedstat version {v}: numasim reads versions 15 (Linux up to 6.9), 16 (6.10 to 6.12) and 17 \
             (6.13 on), whose idle-type order and counters it knows"
        )),
    }
}

/// How often thread `i` changed CPUs over the run: the delta of its se.nr_migrations, which
/// set_task_cpu() counts for every move (load balancing, wake-up placement, NUMA placement).
/// A thread the first sample did not see yet started after it, so from 0; a thread that
/// exited counts up to its last sample.
pub fn thread_moves(s: &[Sample], i: usize) -> Option<u64> {
    let get = |smp: &Sample| smp.threads.get(i)?.sched.get("se.nr_migrations").copied();
    let last = s.iter().rev().find_map(get)?;
    Some(last.saturating_sub(get(&s[0]).unwrap_or(0)).max(0) as u64)
}

/// The share of thread `i`'s runtime on each node: each interval's runtime delta on the
/// node of the CPU the interval's closing sample found it on (stat's `processor`). One
/// simplification: a thread that changed node within an interval has all of it counted on
/// the later node. None for a thread that did not run.
pub fn node_shares(plan: &Plan, s: &[Sample], i: usize) -> Option<Vec<f64>> {
    let runtime = |smp: &Sample| smp.threads.get(i).and_then(|t| t.sched.get(guest::RUNTIME_KEY).copied());
    let mut ns = vec![0.0; plan.nodes as usize];
    for w in s.windows(2) {
        let (Some(before), Some(after), Some(t)) = (runtime(&w[0]), runtime(&w[1]), w[1].threads.get(i)) else {
            continue;
        };
        if let Some(slot) = u32::try_from(t.cpu).ok().and_then(|c| ns.get_mut((c / plan.cpus_per_node) as usize)) {
            *slot += (after - before).max(0) as f64;
        }
    }
    let total: f64 = ns.iter().sum();
    (total > 0.0).then(|| ns.iter().map(|n| n / total).collect())
}

/// One `domain<M>` line of /proc/schedstat.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainStats {
    pub cpu: u32,
    /// M: the domain's place from the CPU up (debugfs's `domain<M>`).
    pub index: usize,
    pub span: Vec<u32>,
    /// `lb_count.idle`, ..., `alb_count`, ...: every counter but sbe_* and sbf_*.
    pub counters: BTreeMap<String, u64>,
}

/// /proc/schedstat's domain lines, with each idle type named by its version's order.
pub fn parse(text: &str) -> Result<Vec<DomainStats>, String> {
    let mut lines = text.lines();
    let version = lines
        .next()
        .and_then(|l| l.strip_prefix("version "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("/proc/schedstat: the first line is not `version <n>`")?;
    let (itypes, lb_fields) = idle_types(version)?;
    let mut cpu = None;
    let mut out = Vec::new();
    for line in lines {
        let mut words = line.split_whitespace();
        let Some(head) = words.next() else { continue };
        if let Some(c) = head.strip_prefix("cpu") {
            cpu = Some(c.parse().map_err(|_| format!("/proc/schedstat: bad line `{line}`"))?);
        } else if let Some(m) = head.strip_prefix("domain") {
            let bad = || format!("/proc/schedstat: bad domain line `{line}`");
            let index = m.parse().map_err(|_| bad())?;
            if version >= 17 {
                words.next().ok_or_else(bad)?;
            }
            let span = cpumask(words.next().ok_or_else(bad)?).ok_or_else(bad)?;
            let values: Vec<u64> = words.map(str::parse).collect::<Result<_, _>>().map_err(|_| bad())?;
            if values.len() != 3 * lb_fields.len() + TAIL_FIELDS.len() {
                return Err(bad());
            }
            let names = itypes.iter().flat_map(|i| lb_fields.iter().map(move |f| format!("{f}.{i}")));
            let counters = names
                .chain(TAIL_FIELDS.iter().map(|f| f.to_string()))
                .zip(values)
                .filter(|(n, _)| !n.starts_with("sbe_") && !n.starts_with("sbf_"))
                .collect();
            out.push(DomainStats { cpu: cpu.ok_or_else(bad)?, index, span, counters });
        }
    }
    Ok(out)
}

/// The sum over CPUs of /proc/schedstat's rq_cpu_time (the 7th field of a `cpu<N>` line,
/// show_schedstat()), in nanoseconds.
pub fn rq_cpu_time_ns(schedstat: &str) -> Option<u64> {
    schedstat
        .lines()
        .filter(|l| l.starts_with("cpu"))
        .map(|l| l.split_whitespace().nth(7).and_then(|f| f.parse::<u64>().ok()))
        .sum()
}

/// The run time of `pid`'s threads in a task table ([`guest::TASKS_FILE`]: `pid tid ppid
/// cpus comm run wait slices` per line), in nanoseconds; None when it lists none.
pub fn process_run_ns(table: &str, pid: u32) -> Option<u64> {
    let pid = pid.to_string();
    let runs = table.lines().filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() == 8 && f[0] == pid).then(|| f[5].parse::<u64>().ok())?
    });
    runs.reduce(|a, b| a + b)
}

/// The CPUs of a `%*pb` cpumask: hex, most significant first, 32-bit groups split by commas.
fn cpumask(hex: &str) -> Option<Vec<u32>> {
    let digits: Vec<u32> = hex.chars().filter(|c| *c != ',').map(|c| c.to_digit(16)).collect::<Option<_>>()?;
    let mut cpus = Vec::new();
    for (i, d) in digits.iter().rev().enumerate() {
        cpus.extend((0..4).filter(|b| d & (1 << b) != 0).map(|b| i as u32 * 4 + b));
    }
    Some(cpus)
}

/// The debugfs directory of CPU `cpu`'s `index`-th domain.
fn domain_dir(cpu: u32, index: usize) -> String {
    format!("/sys/kernel/debug/sched/domains/cpu{cpu}/domain{index}")
}

/// The end-minus-start deltas of every counter, summed over the CPUs per domain name (the
/// debugfs `name` of the CPU's domain at that place: MC, PKG or DIE, NUMA, ...). `start`
/// holds the debugfs files too. A domain debugfs does not name (no CONFIG_SCHED_DEBUG) is
/// left out rather than given a name the kernel does not use.
pub fn deltas(
    start: &BTreeMap<String, String>,
    end_text: &str,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>, String> {
    let before = parse(start.get("/proc/schedstat").ok_or("no /proc/schedstat from the run's start")?)?;
    let after = parse(end_text)?;
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for a in &after {
        let Some(name) = start.get(&format!("{}/name", domain_dir(a.cpu, a.index))) else { continue };
        let b = before.iter().find(|b| (b.cpu, b.index) == (a.cpu, a.index));
        let sums = out.entry(name.clone()).or_default();
        for (k, v) in &a.counters {
            let was = b.and_then(|b| b.counters.get(k)).copied().unwrap_or(0);
            *sums.entry(k.clone()).or_default() += v.saturating_sub(was);
        }
    }
    Ok(out)
}

/// One sched domain of one CPU as the kernel built it: debugfs's files and the span
/// /proc/schedstat prints. `level` is sd->level (debugfs prints it from 6.12 on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelDomain {
    pub index: usize,
    pub level: Option<usize>,
    pub name: String,
    pub span: Vec<u32>,
    pub flags: Vec<String>,
    pub imbalance_pct: u32,
    pub busy_factor: u32,
    pub min_interval: u64,
    pub max_interval: u64,
    pub cache_nice_tries: u32,
}

/// A sched-domain fixture: the domains of every CPU of one boot, and where they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainFixture {
    /// Date, kernel release, topology and QEMU command line of the boot.
    pub comment: String,
    pub release: String,
    /// The model's version of that kernel (oracle::KernelSpec::sim_version()).
    pub sim_version: sim_core::config::KernelVersion,
    pub nodes: u32,
    pub cpus_per_node: u32,
    /// Indexed by CPU; each CPU's domains lowest first.
    pub cpus: Vec<Vec<KernelDomain>>,
}

/// Every CPU's domains from the files the guest read at the start (guest.json's
/// `files.start`): debugfs's per-domain files and /proc/schedstat's spans.
pub fn kernel_domains(start: &BTreeMap<String, String>, cpus: u32) -> Result<Vec<Vec<KernelDomain>>, String> {
    let stats = parse(start.get("/proc/schedstat").ok_or("no /proc/schedstat from the run's start")?)?;
    (0..cpus)
        .map(|cpu| {
            stats.iter().filter(|d| d.cpu == cpu).map(|d| debugfs_domain(start, d)).collect::<Result<Vec<_>, _>>()
        })
        .collect()
}

fn debugfs_domain(files: &BTreeMap<String, String>, d: &DomainStats) -> Result<KernelDomain, String> {
    let dir = domain_dir(d.cpu, d.index);
    let text = |f: &str| files.get(&format!("{dir}/{f}")).ok_or(format!("{dir}/{f}: not read"));
    let num = |f: &str| text(f)?.trim().parse::<u64>().map_err(|e| format!("{dir}/{f}: {e}"));
    Ok(KernelDomain {
        index: d.index,
        level: text("level").ok().and_then(|l| l.trim().parse().ok()),
        name: text("name")?.trim().to_string(),
        span: d.span.clone(),
        flags: text("flags")?.split_whitespace().map(String::from).collect(),
        imbalance_pct: num("imbalance_pct")? as u32,
        busy_factor: num("busy_factor")? as u32,
        min_interval: num("min_interval")?,
        max_interval: num("max_interval")?,
        cache_nice_tries: num("cache_nice_tries")? as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture's text without its leading `#` comment lines.
    fn body(fixture: &str) -> String {
        fixture.lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_cpumask_is_hex_most_significant_first_in_comma_groups() {
        assert_eq!(cpumask("3"), Some(vec![0, 1]));
        assert_eq!(cpumask("c"), Some(vec![2, 3]));
        assert_eq!(cpumask("00000001,00000010"), Some(vec![4, 32]));
        assert_eq!(cpumask("x"), None);
    }

    #[test]
    fn an_unknown_version_is_refused_by_number() {
        let e = parse("version 18\ntimestamp 1\ncpu0 0 0 0 0 0 0 0 0 0\n").unwrap_err();
        assert!(e.contains("version 18") && e.contains("15") && e.contains("17"), "{e}");
        assert!(parse("timestamp 1\n").unwrap_err().contains("version"));
    }

    /// /proc/schedstat at the start and the end of one boot each (see their comment lines).
    const BOOTS: [(&str, &str); 4] = [
        (
            include_str!("../../tests/fixtures/schedstat/6.1.0-57-amd64-2x2-start.txt"),
            include_str!("../../tests/fixtures/schedstat/6.1.0-57-amd64-2x2-end.txt"),
        ),
        (
            include_str!("../../tests/fixtures/schedstat/6.1.0-57-amd64-4x1-start.txt"),
            include_str!("../../tests/fixtures/schedstat/6.1.0-57-amd64-4x1-end.txt"),
        ),
        (
            include_str!("../../tests/fixtures/schedstat/6.12.118+deb12-amd64-2x2-start.txt"),
            include_str!("../../tests/fixtures/schedstat/6.12.118+deb12-amd64-2x2-end.txt"),
        ),
        (
            include_str!("../../tests/fixtures/schedstat/6.12.118+deb12-amd64-4x1-start.txt"),
            include_str!("../../tests/fixtures/schedstat/6.12.118+deb12-amd64-4x1-end.txt"),
        ),
    ];
    const V15_DOMAINS: &str = include_str!("../../tests/fixtures/sched-domains/6.1.0-57-amd64-2x2.json");

    /// Sums `counter` over every domain line.
    fn total(stats: &[DomainStats], counter: &str) -> u64 {
        stats.iter().map(|d| d.counters[counter]).sum()
    }

    /// cpu0's first domain line of 7.3.4's /proc/schedstat after a numa02 boot (2 nodes × 4 CPUs).
    #[test]
    fn version_17_names_its_domains_and_splits_the_imbalance() {
        let text = "version 17\ntimestamp 4294896683\ncpu0 0 0 1965 656 1166 892 11842927095 1720734027 1225\n\
            domain0 MC 0f 65 56 7 2110 0 0 0 2 0 0 56 281 277 1 0 0 6 0 3 0 0 277 22 16 2 0 0 6 0 4 0 0 16 \
            0 0 0 0 0 0 0 0 0 204 1 0\n";
        let d = parse(text).unwrap();
        assert_eq!((d[0].index, d[0].span.clone()), (0, vec![0, 1, 2, 3]));
        let c = &d[0].counters;
        assert_eq!((c["lb_count.busy"], c["lb_imbalance_load.busy"], c["lb_nobusyg.busy"]), (65, 2110, 56));
        assert_eq!((c["lb_count.idle"], c["lb_gained.idle"], c["lb_count.newidle"]), (281, 3, 22));
        assert_eq!(c["ttwu_wake_remote"], 204);
        assert!(!c.contains_key("lb_imbalance.busy"), "version 17 has no lb_imbalance");
    }

    #[test]
    fn version_15_prints_the_idle_block_first() {
        let stats = parse(&body(BOOTS[0].0)).unwrap();
        assert_eq!(stats.len(), 8, "4 CPUs of 2 domains");
        let d = &stats[0];
        assert_eq!((d.cpu, d.index, d.span.as_slice()), (0, 0, &[0, 1][..]));
        assert_eq!(stats[1].span, [0, 1, 2, 3]);
        // cpu0's first line: 230 224 2 6 4 0 0 224 | 64 64 0 0 0 0 0 64 | 18 15 2 3 1 0 0 15 | ... 27 2 0
        assert_eq!(
            (d.counters["lb_count.idle"], d.counters["lb_count.busy"], d.counters["lb_count.newidle"]),
            (230, 64, 18)
        );
        assert_eq!((d.counters["lb_nobusyg.idle"], d.counters["lb_imbalance.idle"]), (224, 6));
        assert_eq!((d.counters["ttwu_wake_remote"], d.counters["ttwu_move_affine"]), (27, 2));
        assert_eq!(d.counters.len(), 3 * 8 + 6, "sbe_* and sbf_* are left out");
    }

    /// What tells the two orders apart in real text: after an idle boot the CPUs have
    /// balanced as idle CPUs far more often than as busy ones, and while four workers keep
    /// the four CPUs busy the busy balancing dominates. Read in the wrong order, 6.12's text
    /// would say the opposite.
    #[test]
    fn both_versions_show_idle_balancing_at_boot_and_busy_balancing_under_load() {
        for (start, end) in BOOTS {
            let (a, b) = (parse(&body(start)).unwrap(), parse(&body(end)).unwrap());
            assert!(total(&a, "lb_count.idle") > 2 * total(&a, "lb_count.busy"), "{start}");
            let delta = |k: &str| total(&b, k) - total(&a, k);
            assert!(delta("lb_count.busy") > 2 * delta("lb_count.idle"), "{end}");
        }
    }

    #[test]
    fn deltas_are_summed_over_cpus_by_the_domains_debugfs_name() {
        let fixture: DomainFixture = serde_json::from_str(V15_DOMAINS).unwrap();
        let mut start: BTreeMap<String, String> = fixture
            .cpus
            .iter()
            .enumerate()
            .flat_map(|(cpu, ds)| {
                ds.iter().map(move |d| (format!("{}/name", domain_dir(cpu as u32, d.index)), d.name.clone()))
            })
            .collect();
        start.insert("/proc/schedstat".into(), body(BOOTS[0].0));
        let d = deltas(&start, &body(BOOTS[0].1)).unwrap();
        assert_eq!(d.keys().collect::<Vec<_>>(), ["MC", "NUMA"]);
        // cpu0..3's MC lines: idle lb_count 230→253, 875→889, 238→261, 199→224.
        assert_eq!(d["MC"]["lb_count.idle"], 23 + 14 + 23 + 25);
        start.retain(|k, _| !k.contains("/cpu3/"));
        let without = deltas(&start, &body(BOOTS[0].1)).unwrap();
        assert_eq!(without["MC"]["lb_count.idle"], 23 + 14 + 23, "a domain debugfs does not name is left out");
    }

    /// The debugfs files and /proc/schedstat of a fixture's boot, as the guest reports them.
    fn files_of(f: &DomainFixture, schedstat: &str) -> BTreeMap<String, String> {
        let mut files = BTreeMap::from([("/proc/schedstat".to_string(), body(schedstat))]);
        for (cpu, ds) in f.cpus.iter().enumerate() {
            for d in ds {
                let dir = domain_dir(cpu as u32, d.index);
                let level = d.level.map(|l| ("level", l.to_string()));
                let numbers = [
                    ("imbalance_pct", d.imbalance_pct.to_string()),
                    ("busy_factor", d.busy_factor.to_string()),
                    ("min_interval", d.min_interval.to_string()),
                    ("max_interval", d.max_interval.to_string()),
                    ("cache_nice_tries", d.cache_nice_tries.to_string()),
                ];
                let text = [("name", d.name.clone()), ("flags", d.flags.join(" "))];
                for (f, v) in numbers.into_iter().chain(text).chain(level) {
                    files.insert(format!("{dir}/{f}"), v);
                }
            }
        }
        files
    }

    /// kernel_domains() (what guest.json's `sched_domains` holds) reads a boot's files back
    /// into its fixture; a missing tunable is an error naming the file.
    #[test]
    fn the_domains_read_from_a_boots_files_are_its_fixture() {
        let f: DomainFixture = serde_json::from_str(V15_DOMAINS).unwrap();
        let mut files = files_of(&f, BOOTS[0].0);
        assert_eq!(kernel_domains(&files, 4).unwrap(), f.cpus);
        files.remove("/sys/kernel/debug/sched/domains/cpu2/domain1/busy_factor");
        let e = kernel_domains(&files, 4).unwrap_err();
        assert!(e.contains("cpu2/domain1/busy_factor"), "{e}");
    }

    /// The domains of each CPU in a fixture are nested, lowest first, and span their CPU.
    #[test]
    fn every_fixtures_domains_nest_around_their_cpu() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sched-domains");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let f: DomainFixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(f.cpus.len() as u32, f.nodes * f.cpus_per_node, "{}", path.display());
            for (cpu, ds) in f.cpus.iter().enumerate() {
                assert!(!ds.is_empty() && ds.iter().all(|d| d.span.contains(&(cpu as u32))), "{}", path.display());
                assert!(ds.windows(2).all(|w| w[0].span.len() < w[1].span.len() && w[1].index == w[0].index + 1));
            }
            seen += 1;
        }
        assert!(seen >= 1, "no fixture in {}", dir.display());
    }
}
