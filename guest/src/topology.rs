//! What the scheduler's placement depends on and the guest's samples do not show: the CPUs
//! each cache is shared by and the sched domains built over them (QEMU's -smp and -numa
//! decide both), /proc/schedstat's per-domain load-balancing counters before and after the
//! run, and the workload processes' mappings beyond the scenario's VMAs (thread stacks,
//! malloc arenas, the binary's data), which 6.12's task_numa_work() walks one at a time. They go to the host once each as a [`guest::Frame::Files`].

use guest::TASKS_FILE;
use std::collections::BTreeMap;

const SCHEDSTATS: &str = "/proc/sys/kernel/sched_schedstats";

/// The files register_sd() (kernel/sched/debug.c) makes for each domain: the tunables
/// load_balance() and rebalance_domains() read (6.12 adds `groups_flags` and `level`; a file
/// the kernel lacks is left out).
const DOMAIN_FILES: [&str; 9] = [
    "name",
    "flags",
    "groups_flags",
    "level",
    "imbalance_pct",
    "cache_nice_tries",
    "busy_factor",
    "min_interval",
    "max_interval",
];

/// Every CPU's cache levels and sharing, every sched domain's name, flags and tunables
/// (debugfs, with CONFIG_SCHED_DEBUG), /proc/schedstat, each memory tier's node list, and each workload process's /proc/PID/maps keyed
/// `maps:<process>` (`processes`: name and pid). The domains' load-balancing counters
/// (lb_count, lb_gained, ...) count only with schedstats on, which the oracle's kernel
/// command line asks for (`schedstats=enable`; the sysctl's value is kept to show it).
pub fn at_start(cpus: u32, processes: &[(String, i32)]) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for cpu in 0..cpus {
        let cache = format!("/sys/devices/system/cpu/cpu{cpu}/cache");
        for index in subdirs(&cache, "index") {
            for f in ["level", "type", "shared_cpu_list"] {
                read_into(&mut files, &format!("{cache}/{index}/{f}"));
            }
        }
        let domains = format!("/sys/kernel/debug/sched/domains/cpu{cpu}");
        for domain in subdirs(&domains, "domain") {
            for f in DOMAIN_FILES {
                read_into(&mut files, &format!("{domains}/{domain}/{f}"));
            }
        }
    }
    read_into(&mut files, SCHEDSTATS);
    read_into(&mut files, "/proc/schedstat");
    for tier in subdirs(guest::MEMORY_TIERING_DIR, "memory_tier") {
        read_into(&mut files, &format!("{}/{tier}/nodelist", guest::MEMORY_TIERING_DIR));
    }
    files.insert(TASKS_FILE.into(), task_schedstats());
    for (name, pid) in processes {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            files.insert(format!("maps:{name}"), text.trim_end().to_string());
        }
    }
    files
}

/// /proc/schedstat and every task's run time once the workload has stopped.
pub fn at_end() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    read_into(&mut files, "/proc/schedstat");
    files.insert(TASKS_FILE.into(), task_schedstats());
    files
}

/// The task table ([`TASKS_FILE`]), from which the oracle tells the guest program's own CPU
/// time (pid 1) from kernel threads'; tasks that exit while it is read are left out.
fn task_schedstats() -> String {
    let mut lines = Vec::new();
    for pid in subdirs("/proc", "").into_iter().filter(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        for tid in subdirs(&format!("/proc/{pid}/task"), "") {
            let dir = format!("/proc/{pid}/task/{tid}");
            let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
            let (Some(stat), Some(status), Some(sched)) = (read("stat"), read("status"), read("schedstat")) else {
                continue;
            };
            let field =
                |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("-").to_string();
            // comm is in parentheses and may hold spaces; ppid is the second field after it.
            let comm = stat.get(stat.find('(').map_or(0, |i| i + 1)..stat.rfind(')').unwrap_or(0)).unwrap_or("?");
            let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).unwrap_or("-");
            let comm = comm.replace(' ', "_");
            lines.push(format!("{pid} {tid} {ppid} {} {comm} {}", field("Cpus_allowed_list:"), sched.trim()));
        }
    }
    lines.join("\n")
}

/// Names of `dir`'s entries that start with `prefix`, sorted (absent dir: none).
fn subdirs(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    names
}

/// Adds `path`'s text, trimmed, when it can be read.
fn read_into(files: &mut BTreeMap<String, String>, path: &str) {
    if let Ok(text) = std::fs::read_to_string(path) {
        files.insert(path.to_string(), text.trim_end().to_string());
    }
}
