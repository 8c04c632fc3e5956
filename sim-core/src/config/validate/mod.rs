//! Range and cross-reference checks serde cannot express; each error names its key.

mod backing;

use super::load::closest;
use super::{
    ActionConfig, Config, GupContext, Invalid, KernelConfig, MachineConfig, Syscall, ThreadConfig, UffdMode,
    UserfaultfdConfig, limits,
};
use crate::units::{MAX_ABSTRACT_DISTANCE, MAX_NODES};
use crate::version::Rules;

/// CPU-less nodes: a size, a latency, and room for them among MAX_NODES.
fn validate_memory_nodes(m: &MachineConfig) -> Result<(), Invalid> {
    let max = MAX_NODES as u32;
    check(
        m.nr_nodes() <= max,
        "machine.memory_node",
        format!("machine.nodes plus CPU-less nodes must be at most {max}, got {}", m.nr_nodes()),
    )?;
    for (i, n) in m.memory_node.iter().enumerate() {
        let at = |rest: &str| format!("machine.memory_node[{i}].{rest}");
        check(n.memory_mib >= 1, at("memory_mib"), "must be at least 1")?;
        check(n.latency_ns >= 1, at("latency_ns"), "must be at least 1")?;
        let max_adist = MAX_ABSTRACT_DISTANCE;
        check(
            n.abstract_distance.is_none_or(|a| a <= max_adist),
            at("abstract_distance"),
            format!("must be at most {max_adist}"),
        )?;
    }
    Ok(())
}

fn check(ok: bool, key: impl Into<String>, message: impl Into<String>) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err((key.into(), message.into())) }
}

/// Range and cross-reference checks serde cannot express.
pub fn validate(c: &Config) -> Result<(), Invalid> {
    let m = &c.machine;
    let max = MAX_NODES as u32;
    check((1..=max).contains(&m.nodes), "machine.nodes", format!("must be 1 to {max}, got {}", m.nodes))?;
    check(
        (1..=1024).contains(&m.cpus_per_node),
        "machine.cpus_per_node",
        format!("must be 1 to 1024, got {}", m.cpus_per_node),
    )?;
    check(m.memory_per_node_mib >= 1, "machine.memory_per_node_mib", "must be at least 1")?;
    check(m.local_latency_ns >= 1, "machine.local_latency_ns", "must be at least 1")?;
    validate_memory_nodes(m)?;
    if let Some(d) = &m.distance {
        let n = m.nr_nodes() as usize;
        check(
            d.len() == n && d.iter().all(|row| row.len() == n),
            "machine.distance",
            format!("must be {n} rows of {n} entries (machine.nodes plus machine.memory_node: {n})"),
        )?;
        for (i, row) in d.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let ok = if i == j { v == 10 } else { (11..=254).contains(&v) };
                check(
                    ok,
                    "machine.distance",
                    format!("entry [{i}][{j}] = {v}: the diagonal must be 10 and other entries 11 to 254"),
                )?;
            }
        }
    }
    let r = &c.run;
    check(r.duration_ms >= 1, "run.duration_ms", "must be at least 1")?;
    check(
        r.sample_ms >= 1 && r.sample_ms <= r.duration_ms,
        "run.sample_ms",
        format!("must be 1 to run.duration_ms ({})", r.duration_ms),
    )?;
    let k = &c.kernel;
    check(k.numa_balancing_scan_size_mb >= 1, "kernel.numa_balancing_scan_size_mb", "must be at least 1")?;
    // Both are unsigned ints in the kernel; the rate limit is shifted into pages.
    check(
        k.numa_balancing_promote_rate_limit_mbps <= u64::from(u32::MAX >> 8),
        "kernel.numa_balancing_promote_rate_limit_MBps",
        format!("must be at most {}", u32::MAX >> 8),
    )?;
    check(
        k.numa_balancing_hot_threshold_ms <= u64::from(u32::MAX >> 1),
        "kernel.numa_balancing_hot_threshold_ms",
        format!("must be at most {}", u32::MAX >> 1),
    )?;
    check(
        k.numa_balancing_scan_period_min_ms >= 1
            && k.numa_balancing_scan_period_min_ms <= k.numa_balancing_scan_period_max_ms,
        "kernel.numa_balancing_scan_period_min_ms",
        "must be at least 1 and at most numa_balancing_scan_period_max_ms",
    )?;
    check(k.quantum_us >= 1, "kernel.quantum_us", "must be at least 1")?;
    limits::check_arithmetic(c)?;
    limits::check_names(c)?;
    validate_processes(c)
}

fn validate_processes(c: &Config) -> Result<(), Invalid> {
    let nodes = c.machine.nr_nodes();
    let mut total_mib = 0u64;
    for (pi, p) in c.process.iter().enumerate() {
        let at = |rest: &str| format!("process[{pi}].{rest}");
        check(!p.name.is_empty(), at("name"), "a process needs a name")?;
        check(
            c.process[..pi].iter().all(|q| q.name != p.name),
            at("name"),
            format!("process name `{}` is used twice", p.name),
        )?;
        for (vi, v) in p.vma.iter().enumerate() {
            let at = |rest: &str| format!("process[{pi}].vma[{vi}].{rest}");
            check(!v.name.is_empty(), at("name"), "a vma needs a name")?;
            check(
                p.vma[..vi].iter().all(|w| w.name != v.name),
                at("name"),
                format!("vma name `{}` is used twice in process `{}`", v.name, p.name),
            )?;
            check(v.size_mib >= 1, at("size_mib"), "must be at least 1")?;
            if let Some(n) = v.populate_node {
                check(n < nodes, at("populate_node"), node_range(n, nodes))?;
            }
            total_mib += v.size_mib;
        }
        for &n in &p.cpuset_mems {
            check(n < nodes, at("cpuset_mems"), node_range(n, nodes))?;
        }
        for (ti, t) in p.thread.iter().enumerate() {
            let at = |rest: &str| format!("process[{pi}].thread[{ti}].{rest}");
            validate_thread(t, &c.machine, &at)?;
            let names: Vec<&str> = p.vma.iter().map(|v| v.name.as_str()).collect();
            let no_pages = t.vma.is_empty() && (t.period_ms.is_some() || !t.bursts.is_empty());
            check(no_pages || names.contains(&t.vma.as_str()), at("vma"), unknown_name("vma", &t.vma, &names))?;
        }
    }
    for (vi, vm) in c.vm.iter().enumerate() {
        let at = |rest: &str| format!("vm[{vi}].{rest}");
        check(!vm.name.is_empty(), at("name"), "a vm needs a name")?;
        check(
            c.process.iter().all(|p| p.name != vm.name) && c.vm[..vi].iter().all(|w| w.name != vm.name),
            at("name"),
            format!("name `{}` is already used by a process or vm", vm.name),
        )?;
        check(vm.memory_mib >= 1, at("memory_mib"), "must be at least 1")?;
        check(!vm.populate_ept || vm.populate_node.is_some(), at("populate_ept"), "needs `populate_node`")?;
        check(
            vm.numa_scan_offset_mib < vm.memory_mib,
            at("numa_scan_offset_mib"),
            format!("{} is past the end of the guest memory ({} MiB)", vm.numa_scan_offset_mib, vm.memory_mib),
        )?;
        if let Some(n) = vm.populate_node {
            check(n < nodes, at("populate_node"), node_range(n, nodes))?;
        }
        validate_thread(&vm.vcpus, &c.machine, &|rest| at(&format!("vcpus.{rest}")))?;
        check(vm.vcpus.period_ms.is_none(), at("vcpus.period_ms"), "vCPU threads do not sleep")?;
        check(vm.vcpus.bursts.is_empty(), at("vcpus.bursts"), "vCPU threads do not sleep")?;
        total_mib += vm.memory_mib;
    }
    let mms: Vec<(&str, Vec<&str>)> = c
        .process
        .iter()
        .map(|p| (p.name.as_str(), p.vma.iter().map(|v| v.name.as_str()).collect()))
        .chain(c.vm.iter().map(|v| (v.name.as_str(), vec!["ram"])))
        .collect();
    let find_vma = |process: &str, vma: &str, at: &dyn Fn(&str) -> String| -> Result<(), Invalid> {
        let names: Vec<&str> = mms.iter().map(|m| m.0).collect();
        let Some((_, vmas)) = mms.iter().find(|m| m.0 == process) else {
            return Err((at("process"), unknown_name("process or vm", process, &names)));
        };
        check(vmas.contains(&vma), at("vma"), unknown_name("vma", vma, vmas))
    };
    for (di, d) in c.device.iter().enumerate() {
        let at = |rest: &str| format!("device[{di}].{rest}");
        check(!d.name.is_empty(), at("name"), "a device needs a name")?;
        check(d.node < nodes, at("node"), node_range(d.node, nodes))?;
        find_vma(&d.process, &d.vma, &at)?;
        if d.gup_context == GupContext::Owner {
            let threads = c.process.iter().find(|p| p.name == d.process).is_none_or(|p| !p.thread.is_empty());
            check(threads, at("gup_context"), format!("`owner` needs a thread in process `{}`", d.process))?;
        }
        check(d.quantum_us >= 1, at("quantum_us"), "must be at least 1")?;
        check_toucher(d.hot_fraction, d.hot_probability, d.touch_lines, d.start_ms, d.stop_ms, &at)?;
    }
    validate_opt_outs(&c.kernel, &mms)?;
    for (ui, u) in c.userfaultfd.iter().enumerate() {
        let at = |rest: &str| format!("userfaultfd[{ui}].{rest}");
        find_vma(&u.process, &u.vma, &at)?;
        validate_userfaultfd(c, ui, u, &at)?;
    }
    for (ai, a) in c.action.iter().enumerate() {
        let at = |rest: &str| format!("action[{ai}].{rest}");
        find_vma(&a.process, &a.vma, &at)?;
        let size = c.vma_size_mib(&a.process, &a.vma).expect("found above");
        check(a.offset_mib < size, at("offset_mib"), format!("must be below the VMA's size ({size} MiB)"))?;
        if let Some(len) = a.len_mib {
            check(
                len >= 1 && a.offset_mib + len <= size,
                at("len_mib"),
                format!("the range must be at least 1 MiB and end within the VMA ({size} MiB)"),
            )?;
        }
        if a.syscall == Syscall::UffdioRwprotect {
            validate_rwprotect(c, a, &at)?;
        } else if a.period_ms > 0 {
            check(
                a.protect_ms > 0 && a.protect_ms < a.period_ms,
                at("protect_ms"),
                "a periodic mprotect needs 0 < protect_ms < period_ms",
            )?;
        }
    }
    check(c.ksm.sleep_millisecs >= 1, "ksm.sleep_millisecs", "must be at least 1")?;
    check(c.aging.interval_ms >= 1, "aging.interval_ms", "must be at least 1")?;
    validate_tolerances(c)?;
    backing::check_kinds(c)?;
    let total_mib = total_mib - backing::shared_mib(c);
    let have = c.machine.total_memory_mib();
    check(total_mib <= have, "process", format!("the VMAs need {total_mib} MiB but the machine has {have} MiB"))
}

/// The NUMA balancing opt-outs name processes, vms and their VMAs (`mms`: each with its
/// VMAs' names).
fn validate_opt_outs(k: &KernelConfig, mms: &[(&str, Vec<&str>)]) -> Result<(), Invalid> {
    let names: Vec<&str> = mms.iter().map(|m| m.0).collect();
    for (i, p) in k.no_numa_balancing_processes.iter().enumerate() {
        let at = format!("kernel.no_numa_balancing_processes[{i}]");
        check(names.contains(&p.as_str()), at, unknown_name("process or vm", p, &names))?;
    }
    for (i, v) in k.no_numa_balancing_vmas.iter().enumerate() {
        let at = format!("kernel.no_numa_balancing_vmas[{i}]");
        let Some((process, vma)) = v.split_once('/') else {
            return Err((at, format!("`{v}` must be `process/vma`")));
        };
        let Some((_, vmas)) = mms.iter().find(|m| m.0 == process) else {
            return Err((at, unknown_name("process or vm", process, &names)));
        };
        check(vmas.contains(&vma), at, unknown_name("vma", vma, vmas))?;
    }
    Ok(())
}

/// What UFFDIO_REGISTER_MODE_RWP needs: a release with RWP, one registration per VMA, and a
/// VMA the model can track (4 KiB pages, not mergeable).
fn validate_userfaultfd(
    c: &Config,
    ui: usize,
    u: &UserfaultfdConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    let version = c.kernel.version;
    check(
        Rules::of(version, None).uffd_rwp,
        at("mode"),
        format!("UFFDIO_REGISTER_MODE_RWP is new in 7.3; kernel.version {version} does not have it"),
    )?;
    check(
        c.userfaultfd[..ui].iter().all(|w| (w.process.as_str(), w.vma.as_str()) != (&u.process, &u.vma)),
        at("vma"),
        format!("vma `{}` of `{}` is registered twice", u.vma, u.process),
    )?;
    let (hugepage, mergeable) = c.vma_advice(&u.process, &u.vma);
    check(
        !c.kernel.transparent_hugepage.allows(hugepage),
        at("vma"),
        "RWP over THPs (do_huge_pmd_uffd_rwp()) is not modelled: give the VMA hugepage = \"nohugepage\" \
         or set kernel.transparent_hugepage = \"never\"",
    )?;
    check(!mergeable, at("vma"), "RWP on a mergeable (KSM) VMA is not modelled")?;
    if !u.rwp_async {
        check(u.handler_latency_us >= 1, at("handler_latency_us"), "must be at least 1")?;
    }
    Ok(())
}

/// UFFDIO_RWPROTECT needs a release with RWP and a VMA registered for it (-ENOENT otherwise).
fn validate_rwprotect(c: &Config, a: &ActionConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    let version = c.kernel.version;
    check(
        Rules::of(version, None).uffd_rwp,
        at("syscall"),
        format!("UFFDIO_RWPROTECT is new in 7.3; kernel.version {version} does not have it"),
    )?;
    check(
        c.userfaultfd.iter().any(|u| u.process == a.process && u.vma == a.vma && u.mode == UffdMode::Rwp),
        at("vma"),
        format!(
            "no [[userfaultfd]] registers vma `{}` of `{}` in mode \"rwp\" (UFFDIO_RWPROTECT returns -ENOENT)",
            a.vma, a.process
        ),
    )?;
    if a.period_ms > 0 {
        check(
            a.protect_ms < a.period_ms,
            at("protect_ms"),
            "a periodic UFFDIO_RWPROTECT needs protect_ms < period_ms (0: the handler alone resolves)",
        )?;
    }
    Ok(())
}

fn validate_tolerances(c: &Config) -> Result<(), Invalid> {
    let Some(v) = &c.validate else { return Ok(()) };
    for (i, t) in v.tolerance.iter().enumerate() {
        let at = |rest: &str| format!("validate.tolerance[{i}].{rest}");
        check(!t.metric.is_empty(), at("metric"), "a tolerance names its metric")?;
        check(
            v.tolerance[..i].iter().all(|u| u.metric != t.metric),
            at("metric"),
            format!("`{}` has two tolerances", t.metric),
        )?;
        for (key, x) in [("abs", t.abs), ("rel", t.rel)] {
            check(x.is_finite() && x >= 0.0, at(key), format!("must be a finite number >= 0, got {x}"))?;
        }
        check(!t.reason.trim().is_empty(), at("reason"), "a tolerance says why it is that wide")?;
    }
    Ok(())
}

fn validate_thread(t: &ThreadConfig, m: &MachineConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    let cpus = m.nodes * m.cpus_per_node;
    check(t.threads(m) >= 1, at("count"), "a thread block needs at least one thread")?;
    if let Some(n) = t.node {
        check(n < m.nodes, at("node"), node_range(n, m.nodes))?;
    }
    if let Some(list) = &t.cpus {
        check(!list.is_empty(), at("cpus"), "must list at least one CPU")?;
        for &cpu in list {
            check(cpu < cpus, at("cpus"), format!("CPU {cpu} does not exist: the machine has CPUs 0 to {}", cpus - 1))?;
        }
    }
    check((0.0..=1.0).contains(&t.write_fraction), at("write_fraction"), "must be in [0, 1]")?;
    validate_period(t, at)?;
    check_toucher(t.hot_fraction, t.hot_probability, t.touch_lines, t.start_ms, t.stop_ms, at)
}

/// `period_ms` and `run_us` come together, and the run fits in the period; or `bursts`
/// alone, in time order.
fn validate_period(t: &ThreadConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    if !t.bursts.is_empty() {
        return validate_bursts(t, at);
    }
    match (t.period_ms, t.run_us) {
        (None, None) => Ok(()),
        (Some(_), None) => Err((at("run_us"), "a thread with `period_ms` needs `run_us`".into())),
        (None, Some(_)) => Err((at("period_ms"), "a thread with `run_us` needs `period_ms`".into())),
        (Some(period), Some(run)) => {
            check(period >= 1, at("period_ms"), "must be at least 1")?;
            let period_us = period.saturating_mul(1000);
            check(
                run >= 1 && run < period_us,
                at("run_us"),
                format!("must be at least 1 and below the period ({period_us} us)"),
            )
        }
    }
}

fn validate_bursts(t: &ThreadConfig, at: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    let alone = t.period_ms.is_none() && t.run_us.is_none();
    check(alone, at("bursts"), "`bursts` replaces `period_ms` and `run_us`: give one or the other")?;
    check(t.start_ms == 0, at("start_ms"), "a thread with `bursts` starts at its first burst")?;
    let mut last_ms = 0;
    for (i, &[at_ms, run_us]) in t.bursts.iter().enumerate() {
        check(at_ms >= last_ms, at(&format!("bursts[{i}]")), format!("at {at_ms} ms is before the burst before it"))?;
        check(run_us >= 1, at(&format!("bursts[{i}]")), "run_us must be at least 1")?;
        last_ms = at_ms;
    }
    Ok(())
}

/// The keys threads and devices share: the hot-cold pattern, the touch size, the lifetime.
fn check_toucher(
    hot_fraction: f64,
    hot_probability: f64,
    touch_lines: u32,
    start_ms: u64,
    stop_ms: Option<u64>,
    at: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    check(hot_fraction > 0.0 && hot_fraction <= 1.0, at("hot_fraction"), "must be in (0, 1]")?;
    check((0.0..=1.0).contains(&hot_probability), at("hot_probability"), "must be in [0, 1]")?;
    check(touch_lines >= 1, at("touch_lines"), "must be at least 1")?;
    if let Some(stop) = stop_ms {
        check(stop > start_ms, at("stop_ms"), "must be after start_ms")?;
    }
    Ok(())
}

fn node_range(n: u32, nodes: u32) -> String {
    format!("node {n} does not exist: the machine has nodes 0 to {}", nodes - 1)
}

fn unknown_name(what: &str, given: &str, names: &[&str]) -> String {
    let mut msg = format!("no {what} named `{given}`");
    if let Some(best) = closest(given, names) {
        msg += &format!("; did you mean `{best}`?");
    } else if !names.is_empty() {
        msg += &format!(" (there are: {})", names.join(", "));
    }
    msg
}
