//! `numasim kernel`: what cannot run is refused with exit status 2 before anything boots;
//! a guest that hangs is ended by the timeout (that one boots QEMU: only with NUMASIM_ORACLE=1).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::fake::{FULL_CONFIG, fake_bzimage, guest_frames, write_script};
use common::{numasim, s, scratch, skips_real_boot};

fn rejected_with(out: std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A [[vm]] or a `driver` device runs in the gupdev module, built against the kernel: an
/// image without its build tree is refused before anything boots.
#[test]
fn a_scenario_needing_gupdev_on_a_kernel_it_cannot_be_built_for_is_refused() {
    let dir = scratch("kernel-gupdev");
    let image = fake_bzimage(&dir, FULL_CONFIG);
    let out = dir.join("out");
    let args = ["--set", "vm.0.memory_mib=16", "--out", s(&out)];
    rejected_with(numasim(&[&["kernel", "kvm-guest", "--kernel", &image][..], &args[..]].concat()), "Module.symvers");
    assert!(!out.join(results::SUMMARY).exists());
}

#[test]
fn a_guest_too_big_for_the_host_is_refused_before_booting() {
    // 1 TiB: within what the simulator can address and budget, far beyond this host for QEMU.
    let args = ["--set", "machine.memory_per_node_mib=1048576", "--set", "process.0.vma.0.size_mib=1048576"];
    rejected_with(numasim(&[&["kernel", "numa02", "--kernel", "6.12"][..], &args[..]].concat()), "the guest needs");
}

#[test]
fn an_unknown_kernel_or_a_file_that_is_no_bzimage_is_refused() {
    rejected_with(numasim(&["kernel", "numa02", "--kernel", "latest"]), "not 6.1, 6.12, a release of");
    let dir = scratch("kernel-not-bzimage");
    std::fs::write(dir.join("vmlinux"), b"not a kernel").unwrap();
    rejected_with(numasim(&["kernel", "numa02", "--kernel", s(&dir.join("vmlinux"))]), "not a bzImage");
}

#[test]
fn a_kernel_lacking_options_is_refused_naming_each() {
    let dir = scratch("kernel-config");
    let image = fake_bzimage(&dir, &FULL_CONFIG.replace("CONFIG_KSM=y\n", "").replace("CONFIG_NUMA_BALANCING=y\n", ""));
    let out = numasim(&["kernel", "numa02", "--kernel", &image]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    rejected_with(out, "CONFIG_KSM");
    assert!(err.contains("CONFIG_NUMA_BALANCING") && !err.contains("CONFIG_DEVTMPFS"), "{err}");
}

/// `numasim CMD SCENARIO --kernel <a fake image>` with QEMU off PATH: refused with the
/// apt-get line; returns its stderr and the run's directory.
fn refused_without_qemu(name: &str, cmd: &str, scenario: &str) -> (String, std::path::PathBuf) {
    let dir = scratch(name);
    let image = fake_bzimage(&dir, FULL_CONFIG);
    let out = Command::new(env!("CARGO_BIN_EXE_numasim"))
        .args([cmd, scenario, "--kernel", &image, "--out", s(&dir.join("out"))])
        .env("PATH", s(&dir))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    rejected_with(out, "apt-get install -y --no-install-recommends qemu-system-x86");
    (err, dir.join("out"))
}

#[test]
fn missing_qemu_is_refused_with_the_apt_get_line() {
    let (_, out) = refused_without_qemu("kernel-no-qemu", "kernel", "numa02");
    assert!(!out.join(results::SUMMARY).exists());
}

/// validate finds QEMU missing before it looks for the kernel's headers to build gupdev.
#[test]
fn validate_of_a_device_case_names_missing_qemu_before_the_modules_headers() {
    let (err, _) = refused_without_qemu("validate-no-qemu", "validate", "gupdev-device-gup");
    assert!(!err.contains("headers"), "{err}");
}

#[test]
fn a_guest_past_its_timeout_is_killed_and_its_console_shown() {
    if skips_real_boot("timeout", "6.12") {
        return;
    }
    let dir = scratch("kernel-timeout");
    let out = Command::new(env!("CARGO_BIN_EXE_numasim"))
        .args(["kernel", "numa02", "--kernel", "6.12", "--set", "machine.cpus_per_node=1"])
        .args(["--set", "process.0.vma.0.size_mib=16", "--out", s(&dir)])
        .env("NUMASIM_KERNEL_TIMEOUT_S", "3")
        .env("NUMASIM_ACCEL", "tcg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not finish within 3 s") && err.contains("last lines of the guest console"), "{err}");
    assert!(!dir.join(results::SUMMARY).exists());
}

#[test]
fn kernel_trace_options_that_cannot_apply_are_refused_before_booting() {
    let dir = scratch("kernel-trace-bad");
    let t = s(&dir.join("t.txt")).to_string();
    rejected_with(numasim(&["kernel", "numa02", "--trace", &t, "--trace-kernel", "6.1"]), "prints its own");
    rejected_with(
        numasim(&["kernel", "numa02", "--trace", &t, "--trace-events", "numasim:*"]),
        "none of these is a kernel tracepoint",
    );
    assert!(!dir.join("t.txt").exists());
}

/// The real kernel's tracepoints, recorded through tracefs in the guest: the trace file is
/// complete, its migrations add up to the kernel's own counter, and every event kind it shares
/// with the sim's trace of the same config prints the same fields in the same order.
#[test]
fn a_kernel_trace_holds_the_tracepoints_with_the_fields_the_sim_prints() {
    if skips_real_boot("kernel trace", "6.12") {
        return;
    }
    use sim_core::trace::parse::count_events;
    let dir = scratch("kernel-trace");
    let set =
        ["--set", "machine.cpus_per_node=1", "--set", "process.0.vma.0.size_mib=64", "--set", "run.duration_ms=8000"];
    let (kdir, ktrace, strace) = (dir.join("kernel"), dir.join("kernel.txt"), dir.join("sim.txt"));
    let out = Command::new(env!("CARGO_BIN_EXE_numasim"))
        .args(["kernel", "numa02", "--kernel", "6.12", "--out", s(&kdir), "--trace", s(&ktrace)])
        .args(["--trace-events", "*:*,sched:sched_switch"])
        .args(set)
        .env("NUMASIM_ACCEL", "tcg")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sim =
        numasim(&[&["run", "numa02", "--out", s(&dir.join("sim")), "--trace", s(&strace)][..], &set[..]].concat());
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let text = std::fs::read_to_string(&ktrace).unwrap();
    assert!(text.lines().last().unwrap().starts_with("# numasim: end of trace"), "complete");
    let (k, sm) = (count_events(&text), count_events(&std::fs::read_to_string(&strace).unwrap()));
    assert_eq!(k.unparsed, 0);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kdir.join(results::SUMMARY)).unwrap()).unwrap();
    let counted = summary["vmstat"]["pgmigrate_success"].as_i64().unwrap();
    let traced = k.sums["mm_migrate_pages.nr_succeeded"];
    // vmstat is sampled from the workload's start to its last sample; tracing runs a moment longer.
    assert!(counted > 0 && (traced - counted).abs() <= 64.max(counted / 50), "trace {traced}, vmstat {counted}");
    let shared: Vec<&String> = k.keys.keys().filter(|e| sm.keys.contains_key(*e)).collect();
    assert!(shared.iter().any(|e| *e == "mm_migrate_pages"), "{shared:?}");
    for e in shared {
        assert_eq!(k.keys[e], sm.keys[e], "fields of {e}: kernel vs sim");
    }
    let formats = std::fs::read_to_string(kdir.join("trace-formats.txt")).unwrap();
    assert_eq!(
        formats.matches("print fmt:").count(),
        8,
        "the seven tracepoints of Linux 6.12 the sim also prints, and sched_switch"
    );
    // sched_switch, named, is there and kept to the scenario's own tasks.
    let switches: Vec<&str> = text.lines().filter(|l| l.contains(" sched_switch: ")).collect();
    assert!(!switches.is_empty(), "no sched_switch");
    for l in switches {
        assert!(l.contains("prev_comm=numa02") || l.contains("next_comm=numa02"), "{l}");
    }
}

/// A stand-in for qemu-system-x86_64 on PATH: boot N (counted in `boots`) writes the console
/// and, once past the first `fail` boots, the frames of `frames.jsonl` to the data port and
/// exits as a powered-off guest does; the failing boots print an RCU stall and hang until the
/// oracle's timeout kills them.
fn fake_qemu(dir: &Path, fail: u32) {
    let script = format!(
        "#!/bin/sh\n\
         n=0\n\
         for a in \"$@\"; do case \"$a\" in file:*) n=$((n+1)); eval \"port$n=\\${{a#file:}}\";; esac; done\n\
         boots=$(cat '{d}/boots' 2>/dev/null || echo 0); boots=$((boots+1)); echo $boots > '{d}/boots'\n\
         if [ $boots -le {fail} ]; then\n\
           printf '[   23.236289] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\\n' > \"$port1\"\n\
           exec sleep 60\n\
         fi\n\
         printf '[    0.5] Run /init as init process\\n' > \"$port1\"\n\
         cp '{d}/frames.jsonl' \"$port2\"\n\
         : > \"$port3\"\n",
        d = s(dir)
    );
    let path = dir.join("qemu-system-x86_64");
    write_script(&path, &script);
    std::fs::write(dir.join("frames.jsonl"), guest_frames("6.12.0-test")).unwrap();
}

/// `numasim kernel` with the fake QEMU: `fail` stalled boots, `retries` allowed; an earlier
/// complete run already sits in the output directory.
fn boot_with_stalls(name: &str, fail: u32, retries: &str) -> (std::process::Output, std::path::PathBuf) {
    let dir = scratch(name);
    let image = fake_bzimage(&dir, FULL_CONFIG);
    fake_qemu(&dir, fail);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for f in [results::SUMMARY, "config.toml", "guest.json", "timeseries.csv"] {
        std::fs::write(out.join(f), "from an earlier run").unwrap();
    }
    let path = format!("{}:{}", s(&dir), std::env::var("PATH").unwrap_or_default());
    let output = Command::new(env!("CARGO_BIN_EXE_numasim"))
        .args(["kernel", "numa02", "--kernel", &image, "--out", s(&out), "--retries", retries])
        .args(["--set", "run.duration_ms=1000", "--set", "process.0.vma.0.size_mib=16"])
        .env("PATH", path)
        .env("NUMASIM_GUEST", dir.join("config"))
        .env("NUMASIM_ACCEL", "tcg")
        .env("NUMASIM_KERNEL_TIMEOUT_S", "1")
        .output()
        .unwrap();
    (output, dir)
}

#[test]
fn a_guest_that_stalls_is_booted_again_and_the_retry_is_reported_beside_the_results() {
    let (out, dir) = boot_with_stalls("kernel-retry", 1, "1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("attempt 1 failed") && err.contains("RCU stall"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("boots")).unwrap().trim(), "2");
    let run = dir.join("out");
    let guest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("guest.json")).unwrap()).unwrap();
    let retried = guest["retried"].as_array().unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["attempt"], 1);
    let reason = retried[0]["reason"].as_str().unwrap();
    assert!(reason.contains("hung (timeout)") && reason.contains("RCU stall"), "{reason}");
    let kept = std::fs::read_to_string(run.join(retried[0]["console"].as_str().unwrap())).unwrap();
    assert!(kept.contains("rcu_preempt detected stalls"), "{kept}");
    assert!(std::fs::read_to_string(run.join("console.log")).unwrap().contains("Run /init"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(results::SUMMARY)).unwrap()).unwrap();
    assert_eq!(summary["source"], "6.12.0-test");
    let host = &guest["host_load"];
    assert!(host["cpus"].as_u64().unwrap() >= 1, "{host}");
    assert!(
        host["others_busy_cpus"].as_f64().unwrap() >= 0.0 && host["qemu_busy_cpus"].as_f64().unwrap() >= 0.0,
        "{host}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("attempt 1 failed and was booted again"));
    assert!(stdout.contains("  host: other work kept "), "{stdout}");
}

/// The second failure fails the run as before, and nothing of the earlier run in the
/// directory, nor of the failed attempts, can pass for a result.
#[test]
fn a_guest_that_stalls_again_fails_the_run_and_leaves_no_result_behind() {
    for (fail, retries, boots) in [(2, "1", "2"), (1, "0", "1")] {
        let (out, dir) = boot_with_stalls(&format!("kernel-retry-fails-{retries}"), fail, retries);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("did not finish within 1 s") && err.contains("rcu_preempt detected stalls"), "{err}");
        assert_eq!(retries == "1", err.contains("attempt 1 failed: the guest hung"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join("boots")).unwrap().trim(), boots);
        for f in [results::SUMMARY, "config.toml", "guest.json", "timeseries.csv"] {
            assert!(!dir.join("out").join(f).exists(), "{f} left behind");
        }
    }
}

/// `kernel` takes a validation case by name, as `validate` does (here on stand-ins for apt and
/// QEMU: the case's config is what lands in the run directory).
#[test]
fn kernel_takes_a_validation_case_by_name() {
    let Some(host) = common::fake::fake_host("kernel-case") else { return };
    let out = host.dir.join("out");
    let run = host.numasim(&["kernel", "gup-proc-mem-read", "--kernel", "6.1", "--out", s(&out)]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("name = \"gup-proc-mem-read\""), "{config}");
}
