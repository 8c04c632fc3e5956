//! The limits of a config that serde's types cannot express: every unit conversion and every
//! product of config values the simulator computes, done here with checked arithmetic, so
//! a value that would overflow, wrap or stop simulated time is an error naming its key
//! instead of a wrong run; and the memory a run will need, estimated before anything is
//! allocated. [`crate::config::validate`] calls [`check_arithmetic`]; [`crate::config::load`]
//! calls [`check_memory_budget`].

use super::{Backing, Config, DeviceConfig, Invalid, ThreadConfig};
use crate::units::{LOCAL_DISTANCE, NSEC_PER_MSEC, NSEC_PER_USEC, PAGES_PER_MIB, PageIdx, REMOTE_DISTANCE};

/// Longest simulated span, in ns: 2^62 ns (146 years). Times and costs stay below it, so a
/// sum of a few of them (a quantum's start plus its work, a period added to now) cannot
/// overflow a u64.
pub const MAX_TIME_NS: u64 = 1 << 62;

/// Bytes of page state per simulated page (`Pages`, see mm/mod.rs).
pub const PAGE_STATE_BYTES: u64 = 13;
/// Bytes per secondary-MMU entry.
const SMMU_ENTRY_BYTES: u64 = 4;
/// Bytes per thread (task, NUMA statistics, access stream), beyond per-node arrays.
const THREAD_BYTES: u64 = 2048;
/// Bytes per thread per node (numa_faults and friends).
const THREAD_NODE_BYTES: u64 = 64;
/// Bytes per time-series cell.
const SAMPLE_CELL_BYTES: u64 = 16;
/// Summary metrics in a time-series row, before node and thread gauges (an upper bound).
const SAMPLE_METRICS: u64 = 64;

fn err<T>(key: impl Into<String>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((key.into(), message.into()))
}

/// `value` (in `unit_ns` ns) in ns, if it is at most [`MAX_TIME_NS`].
fn to_ns(key: &str, value: u64, unit_ns: u64, unit: &str) -> Result<u64, Invalid> {
    match value.checked_mul(unit_ns).filter(|&ns| ns <= MAX_TIME_NS) {
        Some(ns) => Ok(ns),
        None => err(key, format!("{value} {unit} is more than the simulator's 2^62 ns (146 years)")),
    }
}

/// `mib` MiB in pages, if that many pages fit a page index.
fn to_pages(key: &str, mib: u64) -> Result<u64, Invalid> {
    match mib.checked_mul(PAGES_PER_MIB).filter(|&p| p <= u64::from(PageIdx::MAX)) {
        Some(pages) => Ok(pages),
        None => err(key, format!("{mib} MiB is more pages than the simulator can address (16 TiB in all)")),
    }
}

/// The product `a * b` of two config-derived values, if it stays below [`MAX_TIME_NS`].
fn product(key: &str, what: &str, a: u64, b: u64) -> Result<u64, Invalid> {
    match a.checked_mul(b).filter(|&p| p <= MAX_TIME_NS) {
        Some(p) => Ok(p),
        None => err(key, format!("{what} = {a} x {b} overflows the simulator's 2^62 ns")),
    }
}

/// Every conversion and product of config values the simulator computes, checked. Runs
/// after the range checks of the machine, run and kernel sections, before the cross
/// references (which add page counts up).
pub fn check_arithmetic(c: &Config) -> Result<(), Invalid> {
    let run_ns = to_ns("run.duration_ms", c.run.duration_ms, NSEC_PER_MSEC, "ms")?;
    to_ns("run.sample_ms", c.run.sample_ms, NSEC_PER_MSEC, "ms")?;
    if let Some(gib) = c.run.max_memory_gib
        && !(gib.is_finite() && gib > 0.0)
    {
        return err("run.max_memory_gib", format!("must be a positive number of GiB, got {gib}"));
    }
    let m = &c.machine;
    m.memory_per_node_mib
        .checked_mul(PAGES_PER_MIB)
        .and_then(|p| p.checked_mul(u64::from(m.nodes)))
        .and_then(|p| p.checked_mul(4 * 16))
        .ok_or_else(|| {
            let message = "the machine's memory in KiB x 16 (calculate_min_free_kbytes()) overflows a u64";
            ("machine.memory_per_node_mib".to_string(), message.to_string())
        })?;
    let max_distance = m.distance.iter().flatten().flatten().copied().max().unwrap_or(REMOTE_DISTANCE);
    let latency = product(
        "machine.local_latency_ns",
        "local_latency_ns x distance",
        m.local_latency_ns,
        u64::from(max_distance),
    )? / u64::from(LOCAL_DISTANCE);
    check_thread_counts(c)?;
    check_kernel(c, run_ns)?;
    for (pi, p) in c.process.iter().enumerate() {
        for (vi, v) in p.vma.iter().enumerate() {
            to_pages(&format!("process[{pi}].vma[{vi}].size_mib"), v.size_mib)?;
            check_content_classes(&format!("process[{pi}].vma[{vi}].content_classes"), v.content_classes)?;
        }
        for (ti, t) in p.thread.iter().enumerate() {
            check_thread(t, latency, &format!("process[{pi}].thread[{ti}]"))?;
        }
    }
    for (vi, vm) in c.vm.iter().enumerate() {
        to_pages(&format!("vm[{vi}].memory_mib"), vm.memory_mib)?;
        check_content_classes(&format!("vm[{vi}].content_classes"), vm.content_classes)?;
        check_thread(&vm.vcpus, latency, &format!("vm[{vi}].vcpus"))?;
    }
    for (di, d) in c.device.iter().enumerate() {
        check_device(d, c, latency, run_ns, &format!("device[{di}]"))?;
    }
    for (ai, a) in c.action.iter().enumerate() {
        let at = |key: &str| format!("action[{ai}].{key}");
        to_pages(&at("offset_mib"), a.offset_mib)?;
        if let Some(len) = a.len_mib {
            to_pages(&at("len_mib"), len)?;
        }
        to_ns(&at("start_ms"), a.start_ms, NSEC_PER_MSEC, "ms")?;
        let protect = to_ns(&at("protect_ms"), a.protect_ms, NSEC_PER_MSEC, "ms")?;
        let period = to_ns(&at("period_ms"), a.period_ms, NSEC_PER_MSEC, "ms")?;
        product(&at("period_ms"), "start_ms + period_ms", 1, (a.start_ms * NSEC_PER_MSEC).saturating_add(period))?;
        product(&at("protect_ms"), "start_ms + protect_ms", 1, (a.start_ms * NSEC_PER_MSEC).saturating_add(protect))?;
    }
    to_ns("ksm.sleep_millisecs", c.ksm.sleep_millisecs, NSEC_PER_MSEC, "ms")?;
    let pages = u64::from(c.ksm.pages_to_scan);
    product("ksm.scan_cost_ns", "pages_to_scan x scan_cost_ns", pages, c.ksm.scan_cost_ns)?;
    product("ksm.merge_cost_ns", "pages_to_scan x merge_cost_ns", pages, c.ksm.merge_cost_ns)?;
    if c.ksm.pages_to_scan > KSM_MAX_PAGES_TO_SCAN {
        return err(
            "ksm.pages_to_scan",
            format!(
                "{} pages per wake-up: at most {KSM_MAX_PAGES_TO_SCAN} are simulated (ksmd would loop over the mergeable pages many times per wake-up)",
                c.ksm.pages_to_scan
            ),
        );
    }
    to_ns("aging.interval_ms", c.aging.interval_ms, NSEC_PER_MSEC, "ms")?;
    check_total_pages(c)
}

/// Most pages ksmd scans per wake-up; the kernel takes any unsigned int, but a pass of
/// billions of pages per wake-up would stop a run for hours.
pub const KSM_MAX_PAGES_TO_SCAN: u32 = 1 << 24;

/// The kernel section: the scan sysctls are `unsigned int` in the kernel
/// (`sysctl_numa_balancing_scan_*` in kernel/sched/fair.c), the quantum must fit the run,
/// and a full scan window's PTE cost must not overflow.
fn check_kernel(c: &Config, run_ns: u64) -> Result<(), Invalid> {
    let k = &c.kernel;
    for (key, v) in [
        ("kernel.numa_balancing_scan_delay_ms", k.numa_balancing_scan_delay_ms),
        ("kernel.numa_balancing_scan_period_min_ms", k.numa_balancing_scan_period_min_ms),
        ("kernel.numa_balancing_scan_period_max_ms", k.numa_balancing_scan_period_max_ms),
        ("kernel.numa_balancing_scan_size_mb", k.numa_balancing_scan_size_mb),
    ] {
        if v > u64::from(u32::MAX) {
            return err(key, format!("{v} does not fit the kernel's unsigned int sysctl (at most {})", u32::MAX));
        }
    }
    let quantum = to_ns("kernel.quantum_us", k.quantum_us, NSEC_PER_USEC, "us")?;
    if quantum > run_ns {
        return err(
            "kernel.quantum_us",
            format!("{} us is longer than the run ({} ms)", k.quantum_us, c.run.duration_ms),
        );
    }
    for (key, v) in [
        ("kernel.hint_fault_cost_ns", k.hint_fault_cost_ns),
        ("kernel.migrate_cost_ns", k.migrate_cost_ns),
        ("kernel.pte_scan_cost_ns", k.pte_scan_cost_ns),
        ("kernel.tlb_flush_cost_ns", k.tlb_flush_cost_ns),
        ("kvm.ept_violation_cost_ns", c.kvm.ept_violation_cost_ns),
    ] {
        to_ns(key, v, 1, "ns")?;
    }
    // task_numa_work() walks up to 8 x scan_size pages and charges 32x the cost to node_stamp.
    let walked = (k.numa_balancing_scan_size_mb << 8) * 8 * 32;
    product(
        "kernel.pte_scan_cost_ns",
        "pte_scan_cost_ns x 256 x 32 pages of a scan window",
        k.pte_scan_cost_ns,
        walked,
    )?;
    // And a TLB flush per change_prot_numa() call: one per VMA and per 2 MiB step of the 8 x
    // scan_size window at most, twice over when the pid filter forces a second round.
    let vmas = c.process.iter().map(|p| p.vma.len() as u64).max().unwrap_or(0).max(1);
    let calls = 2 * (vmas + 2 + 4 * k.numa_balancing_scan_size_mb) * 32;
    product(
        "kernel.tlb_flush_cost_ns",
        "tlb_flush_cost_ns x 32 x the change_prot_numa() calls of one walk",
        k.tlb_flush_cost_ns,
        calls,
    )?;
    // init_numa_balancing() staggers thread i by scan_delay x (i + 1) ms.
    let threads = max_threads_per_mm(c);
    product(
        "kernel.numa_balancing_scan_delay_ms",
        "numa_balancing_scan_delay_ms in ns x threads of one mm",
        k.numa_balancing_scan_delay_ms * NSEC_PER_MSEC,
        threads.saturating_add(1),
    )?;
    product(
        "kernel.numa_balancing_scan_period_max_ms",
        "numa_balancing_scan_period_max_ms in ns x threads of one mm",
        k.numa_balancing_scan_period_max_ms * NSEC_PER_MSEC,
        threads.saturating_add(1),
    )?;
    Ok(())
}

/// Threads of the largest mm (saturating: an overflowing count is reported per block).
fn max_threads_per_mm(c: &Config) -> u64 {
    let per_process = c
        .process
        .iter()
        .map(|p| p.thread.iter().map(|t| thread_count(t, c).unwrap_or(u64::MAX)).fold(0, u64::saturating_add));
    let per_vm = c.vm.iter().map(|v| thread_count(&v.vcpus, c).unwrap_or(u64::MAX));
    per_process.chain(per_vm).max().unwrap_or(0)
}

/// Threads a block expands to, if the count fits a u32 (`ThreadConfig::threads`).
fn thread_count(t: &ThreadConfig, c: &Config) -> Option<u64> {
    let m = &c.machine;
    let n = match (t.count_per_cpu, t.count_per_node) {
        (Some(per_cpu), _) => per_cpu.checked_mul(m.nodes)?.checked_mul(m.cpus_per_node)?,
        (None, Some(per_node)) => per_node.checked_mul(m.nodes)?,
        (None, None) => t.count,
    };
    Some(u64::from(n))
}

/// Every thread block's count fits a u32 (`ThreadConfig::threads` multiplies).
fn check_thread_counts(c: &Config) -> Result<(), Invalid> {
    let blocks =
        c.process.iter().enumerate().flat_map(|(pi, p)| {
            p.thread.iter().enumerate().map(move |(ti, t)| (format!("process[{pi}].thread[{ti}]"), t))
        });
    let vcpus = c.vm.iter().enumerate().map(|(vi, v)| (format!("vm[{vi}].vcpus"), &v.vcpus));
    for (key, t) in blocks.chain(vcpus) {
        if thread_count(t, c).is_none() {
            let set = if t.count_per_cpu.is_some() { "count_per_cpu" } else { "count_per_node" };
            return err(format!("{key}.{set}"), "the thread count overflows (more than 2^32 threads)");
        }
    }
    Ok(())
}

/// KSM content classes are kept in 16 bits per page.
fn check_content_classes(key: &str, classes: u32) -> Result<(), Invalid> {
    if classes > u32::from(u16::MAX) - 1 {
        return err(key, format!("{classes} content classes: at most {} are simulated", u16::MAX - 1));
    }
    Ok(())
}

/// A touch costs `touch_lines x latency + think_ns`; it and the lifetime must stay in range.
fn touch_cost(key: &str, lines: u32, latency: u64, think_ns: u64) -> Result<u64, Invalid> {
    let lines_cost = product(&format!("{key}.touch_lines"), "touch_lines x remote latency", u64::from(lines), latency)?;
    let think = to_ns(&format!("{key}.think_ns"), think_ns, 1, "ns")?;
    product(&format!("{key}.think_ns"), "touch cost + think_ns", 1, lines_cost + think)
}

fn check_lifetime(key: &str, start_ms: u64, stop_ms: Option<u64>) -> Result<(), Invalid> {
    to_ns(&format!("{key}.start_ms"), start_ms, NSEC_PER_MSEC, "ms")?;
    if let Some(stop) = stop_ms {
        to_ns(&format!("{key}.stop_ms"), stop, NSEC_PER_MSEC, "ms")?;
    }
    Ok(())
}

fn check_thread(t: &ThreadConfig, latency: u64, key: &str) -> Result<(), Invalid> {
    touch_cost(key, t.touch_lines, latency, t.think_ns)?;
    for (i, &[at_ms, run_us]) in t.bursts.iter().enumerate() {
        let at = format!("{key}.bursts[{i}]");
        product(
            &at,
            "at_ms + run_us",
            1,
            to_ns(&at, at_ms, NSEC_PER_MSEC, "ms")?.saturating_add(to_ns(&at, run_us, NSEC_PER_USEC, "us")?),
        )?;
    }
    check_lifetime(key, t.start_ms, t.stop_ms)
}

fn check_device(d: &DeviceConfig, c: &Config, latency: u64, run_ns: u64, key: &str) -> Result<(), Invalid> {
    let quantum = to_ns(&format!("{key}.quantum_us"), d.quantum_us, NSEC_PER_USEC, "us")?;
    if quantum > run_ns {
        return err(
            format!("{key}.quantum_us"),
            format!("{} us is longer than the run ({} ms)", d.quantum_us, c.run.duration_ms),
        );
    }
    to_ns(&format!("{key}.fault_cost_ns"), d.fault_cost_ns, 1, "ns")?;
    touch_cost(key, d.touch_lines, latency, d.think_ns)?;
    check_lifetime(key, d.start_ms, d.stop_ms)
}

/// All VMAs together must fit the page index.
fn check_total_pages(c: &Config) -> Result<(), Invalid> {
    let total: u64 = simulated_pages(c);
    if total > u64::from(PageIdx::MAX) {
        return err(
            "process",
            format!("the VMAs hold {total} pages in all; the simulator addresses at most {}", PageIdx::MAX),
        );
    }
    Ok(())
}

/// Pages of every VMA and guest memory (saturating).
fn simulated_pages(c: &Config) -> u64 {
    let mut files = std::collections::HashSet::new();
    // A memfd's second mapping maps the first one's pages: count each file once.
    let own_pages = |(backing, file, mib): (Backing, String, u64)| {
        (backing != Backing::Memfd || files.insert(file)).then_some(mib.saturating_mul(PAGES_PER_MIB))
    };
    memory_mappings(c).filter_map(own_pages).fold(0, u64::saturating_add)
}

/// Every mapping's kind, file name (a memfd's, by the rule of `backing_check.rs`) and size.
fn memory_mappings(c: &Config) -> impl Iterator<Item = (Backing, String, u64)> + '_ {
    let vmas = c.process.iter().flat_map(|p| {
        p.vma
            .iter()
            .map(|v| (v.backing, v.memfd.clone().unwrap_or_else(|| format!("{}/{}", p.name, v.name)), v.size_mib))
    });
    let vms =
        c.vm.iter().map(|v| (v.backing, v.memfd.clone().unwrap_or_else(|| format!("{}/ram", v.name)), v.memory_mib));
    vmas.chain(vms)
}

/// Pages of memfd mappings, each mapper's: every mapper keeps a protnone bit per page.
fn memfd_mapper_pages(c: &Config) -> u64 {
    let memfd = memory_mappings(c).filter(|(b, _, _)| *b == Backing::Memfd);
    memfd.map(|(_, _, mib)| mib.saturating_mul(PAGES_PER_MIB)).fold(0, u64::saturating_add)
}

/// The simulator memory a run of `c` needs, in bytes (an estimate, rounded up): page
/// state, secondary-MMU tables, threads and the time series.
pub fn estimate_bytes(c: &Config) -> u64 {
    let pages = simulated_pages(c);
    let nodes = u64::from(c.machine.nodes);
    let vm_pages = c.vm.iter().map(|v| v.memory_mib.saturating_mul(PAGES_PER_MIB));
    let device_pages =
        c.device.iter().filter_map(|d| c.vma_size_mib(&d.process, &d.vma)).map(|m| m.saturating_mul(PAGES_PER_MIB));
    let smmu_entries = vm_pages.chain(device_pages).fold(0, u64::saturating_add);
    let threads = c
        .process
        .iter()
        .flat_map(|p| p.thread.iter())
        .chain(c.vm.iter().map(|v| &v.vcpus))
        .map(|t| thread_count(t, c).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    let rows = c.run.duration_ms / c.run.sample_ms.max(1) + 1;
    let columns = SAMPLE_METRICS + nodes + threads;
    pages
        .saturating_mul(PAGE_STATE_BYTES)
        .saturating_add(memfd_mapper_pages(c) / 8)
        .saturating_add(smmu_entries.saturating_mul(SMMU_ENTRY_BYTES))
        .saturating_add(threads.saturating_mul(THREAD_BYTES + THREAD_NODE_BYTES * nodes))
        .saturating_add(rows.saturating_mul(columns).saturating_mul(SAMPLE_CELL_BYTES))
}

const GIB: f64 = (1u64 << 30) as f64;

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The machine's available memory in bytes (MemAvailable in /proc/meminfo), if known.
pub fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses a config whose estimated memory exceeds `run.max_memory_gib` or, without it,
/// the machine's available memory.
pub fn check_memory_budget(c: &Config) -> Result<(), Invalid> {
    let need = estimate_bytes(c);
    let (budget, what) = match (c.run.max_memory_gib, machine_memory_bytes()) {
        (Some(gib), _) => ((gib * GIB).min(u64::MAX as f64) as u64, format!("run.max_memory_gib = {gib}")),
        (None, Some(avail)) => (avail, format!("this machine has {} available", human_bytes(avail))),
        (None, None) => return Ok(()),
    };
    if need > budget {
        return err(
            "run.max_memory_gib",
            format!(
                "the run needs about {} of simulator memory (page state, secondary MMUs, threads, time series) but {what}; raise run.max_memory_gib to run it anyway",
                human_bytes(need)
            ),
        );
    }
    Ok(())
}

/// Names end up in CSV headers, file names and error messages: a comma, a quote or a
/// control character (a newline) would break them, so such names are refused.
pub fn check_names(c: &Config) -> Result<(), Invalid> {
    let mut names: Vec<(String, &str)> = vec![("name".into(), c.name.as_str())];
    for (pi, p) in c.process.iter().enumerate() {
        names.push((format!("process[{pi}].name"), &p.name));
        names
            .extend(p.vma.iter().enumerate().map(|(vi, v)| (format!("process[{pi}].vma[{vi}].name"), v.name.as_str())));
        names.extend(
            p.thread.iter().enumerate().map(|(ti, t)| (format!("process[{pi}].thread[{ti}].name"), t.name.as_str())),
        );
    }
    for (vi, vm) in c.vm.iter().enumerate() {
        names.push((format!("vm[{vi}].name"), &vm.name));
        names.push((format!("vm[{vi}].vcpus.name"), &vm.vcpus.name));
    }
    names.extend(c.device.iter().enumerate().map(|(di, d)| (format!("device[{di}].name"), d.name.as_str())));
    for (key, name) in names {
        if let Some(bad) = name.chars().find(|&ch| ch == ',' || ch == '"' || ch.is_control()) {
            return err(
                key,
                format!("name {name:?} contains {bad:?}: names may not contain commas, quotes or control characters"),
            );
        }
    }
    Ok(())
}
