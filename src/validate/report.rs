//! report.md of a validation: the verdict per case and kernel, then each case's tables,
//! disagreements, touch-rate matching and overlay plots.

use std::fmt::Write as _;

use super::compare::{self, Verdict};
use super::{Manifest, Outcome};

/// The command that reproduces a validation.
pub fn command_line(scenario: &Option<String>, all: bool, kernels: &[String], set: &[String], repeat: u32) -> String {
    let what = if all { "--all".to_string() } else { scenario.clone().unwrap_or_default() };
    let sets: String = set.iter().map(|s| format!(" --set {s}")).collect();
    let repeat = if repeat > 1 { format!(" --repeat {repeat}") } else { String::new() };
    format!("numasim validate {what} --kernel {}{repeat}{sets}", kernels.join(","))
}

pub fn markdown(m: &Manifest) -> String {
    let mut r = format!(
        "# numasim validate\n\nReproduce with `{}` ({:.0} s on this machine).\n\n\
         Each case ran on the real kernel under QEMU, then in the sim under that kernel's rules with each \
         thread block's and device's think time set to the touch rate the guest measured. A judged metric agrees when \
         |sim - kernel| <= abs + rel * |kernel|; each tolerance's reason is in the case file \
         (configs/validate/). `not measured`: the kernel cannot give it (never shown as 0).{}\n\n\
         ## Verdicts\n\n| case | {} |\n|---|{}\n",
        m.command,
        m.wall_s,
        repeat_note(m.repeat),
        m.kernels.join(" | "),
        "---|".repeat(m.kernels.len())
    );
    for c in &m.cases {
        // By kernel, not by position: a shard holds some of a case's kernels, and `--all`
        // skips a case on a kernel that cannot run it.
        let absent = if m.shard.is_some() { "another shard" } else { "skipped" };
        let cell = |k: &String| c.outcomes.iter().find(|o| &o.kernel == k).map_or(absent.into(), verdict_cell);
        let cells: Vec<String> = m.kernels.iter().map(cell).collect();
        let _ = writeln!(r, "| {} | {} |", c.case, cells.join(" | "));
    }
    for c in &m.cases {
        let _ = writeln!(r, "\n## {}\n\n{}\n", c.case, c.description);
        for o in &c.outcomes {
            case_section(&mut r, o);
        }
    }
    r
}

/// The machine a validation ran on, for the head of a `--report` file.
pub struct Host {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// /proc/cpuinfo's `model name`.
    pub cpu: String,
    pub cores: usize,
}

impl Host {
    pub fn this_machine() -> Host {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown CPU")
            .to_string();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Host { date: utc_date(now), cpu, cores }
    }
}

/// `YYYY-MM-DD` of a Unix time (days to civil date, proleptic Gregorian).
fn utc_date(unix_s: u64) -> String {
    let z = (unix_s / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// [`markdown`] with a table at its top saying when, on what host, under which accelerator and
/// on which kernel releases it ran: the file `--report` writes.
pub fn with_header(m: &Manifest, host: &Host) -> String {
    let mut accels: Vec<&str> = outcomes(m).filter(|o| o.error.is_none()).map(|o| o.accel.as_str()).collect();
    accels.sort_unstable();
    accels.dedup();
    let mut releases: Vec<String> = outcomes(m).map(|o| format!("{} ({})", o.kernel, o.release)).collect();
    releases.dedup();
    let body = markdown(m);
    let body = body.strip_prefix("# numasim validate\n\n").unwrap_or(&body);
    format!(
        "# numasim validate\n\n| | |\n|---|---|\n| date | {} (UTC) |\n| host | {}, {} cores |\n| accelerator | {} |\n\
         | kernels | {} |\n\n{body}",
        host.date,
        host.cpu,
        host.cores,
        if accels.is_empty() { "none (every kernel run failed)".to_string() } else { accels.join(", ") },
        releases.join(", ")
    )
}

fn outcomes(m: &Manifest) -> impl Iterator<Item = &Outcome> {
    m.cases.iter().flat_map(|c| &c.outcomes)
}

/// What judging against repeated runs means, when the case ran more than once.
fn repeat_note(repeat: u32) -> String {
    if repeat <= 1 {
        return String::new();
    }
    format!(
        " Each kernel ran each case {repeat} times: the kernel column is the mean of the runs, the next \
         their min–max, and a judged metric agrees when min - (abs + rel * |min|) <= sim <= max + (abs + rel * |max|)."
    )
}

fn verdict_cell(o: &Outcome) -> String {
    if o.error.is_some() {
        return "run failed".into();
    }
    let outside = o.rows.iter().filter(|r| r.verdict == Verdict::Outside).count();
    if outside == 0 { "agrees".into() } else { format!("**{outside} disagreement(s)**") }
}

/// The host's load during a kernel run, for its line; nothing for a run recorded without it.
fn host_clause(host: &Option<oracle::host_load::HostLoad>) -> String {
    host.map_or(String::new(), |h| format!("; {}", h.describe()))
}

fn case_section(r: &mut String, o: &Outcome) {
    let _ = writeln!(r, "### {} ({})\n", o.kernel, o.release);
    if let Some(e) = &o.error {
        let _ = writeln!(r, "The kernel run failed:\n\n```\n{e}\n```\n");
        return;
    }
    let _ = writeln!(
        r,
        "Sim rules: `{}`. QEMU accel {}, boot to init {:.1} s, whole kernel run {:.0} s{}.\n",
        o.sim_rules.join(" "),
        o.accel,
        o.boot_s,
        o.kernel_wall_s,
        host_clause(&o.host)
    );
    for run in &o.kernel_runs {
        let reused = if run.reused { ", reused" } else { "" };
        let _ = writeln!(
            r,
            "- kernel run `{}`: boot to init {:.1} s, {:.0} s{}{reused}",
            run.dir,
            run.boot_s,
            run.kernel_wall_s,
            host_clause(&run.host)
        );
    }
    for t in &o.retried {
        let _ = writeln!(
            r,
            "- kernel run {}, attempt {} failed and was booted again: {} (console: `{}`)",
            t.run, t.attempt, t.reason, t.console
        );
    }
    for c in &o.calibration {
        let _ = writeln!(
            r,
            "- `{}`: guest {:.0} touches/s per thread; think_ns {} -> {} (period scaled by {:.3} after a first sim run)",
            c.block, c.guest_touches_per_s, c.think_ns_before, c.think_ns_after, c.scale
        );
    }
    if o.guest_vmas > 0 {
        let _ = writeln!(
            r,
            "- the guest process's other mappings (thread stacks, arenas, the binary's data): {} empty VMAs in the sim",
            o.guest_vmas
        );
    }
    if let Some(m) = &o.migration {
        let _ = writeln!(
            r,
            "- `{}` costs (fit over {} thread-intervals): {:.1} µs per touch, {:.0} µs per hinting fault, {} per migrated page; sim kernel.hint_fault_cost_ns and migrate_cost_ns from them",
            m.block,
            m.intervals,
            m.touch_ns / 1e3,
            m.fault_ns / 1e3,
            m.migration_ns
                .map_or("too few migrations to fit, the case's cost".to_string(), |b| format!("{:.0} µs", b / 1e3))
        );
    }
    if let Some(k) = &o.ksmd {
        let _ = writeln!(
            r,
            "- ksmd: first pass {:.1} s, then {:.0} merges/s of {:.0} pages/s looked at; sim ksm.scan_cost_ns = {}, ksm.merge_cost_ns = {}",
            k.first_pass_s, k.merges_per_s, k.scanned_per_s, k.scan_cost_ns, k.merge_cost_ns
        );
    }
    if let Some(c) = &o.pte_scan {
        let runs: Vec<String> = c
            .per_run
            .iter()
            .map(|r| match r.ns_per_call {
                Some(call) => format!("{:.0} ns + {:.1} ms", r.ns_per_pte, call / 1e6),
                None => format!("{:.0} ns", r.ns_per_pte),
            })
            .collect();
        let _ = writeln!(
            r,
            "- PTE walk (mprotect round trips at setup): {:.0} ns CPU per PTE{} (runs: {}); sim kernel.pte_scan_cost_ns = {}{}",
            c.ns_per_pte,
            c.ns_per_call.map_or(String::new(), |n| format!(" and {:.1} ms per call", n / 1e6)),
            runs.join(", "),
            c.pte_scan_cost_ns,
            c.tlb_flush_cost_ns.map_or(String::new(), |n| format!(", kernel.tlb_flush_cost_ns = {n}"))
        );
    }
    if let Some(u) = &o.uffd {
        let runs: Vec<String> = u.per_run_ns.iter().map(|ns| format!("{:.0} µs", ns / 1e3)).collect();
        let _ = writeln!(
            r,
            "- sync RWP fault to wake: {:.0} µs over {} timed faults (runs: {}); sim userfaultfd handler_latency_us = {}",
            u.round_trip_ns / 1e3,
            u.waits,
            runs.join(", "),
            u.handler_latency_us
        );
    }
    if let Some(v) = &o.vcpus {
        let _ = writeln!(
            r,
            "- `{}`: {:.1} µs per touch, {:.0} µs per migrated page ({:.0} pages, waits included); sim kernel.migrate_cost_ns = {}",
            v.block,
            v.touch_ns / 1e3,
            v.migration_ns / 1e3,
            v.migrated,
            v.migrate_cost_ns
        );
    }
    if let Some(f) = &o.faults {
        let _ = writeln!(
            r,
            "- device: {:.0} ns per touch without hint faults, {:.0} ns while {:.2} pages migrated per touch; sim kernel.migrate_cost_ns = {}",
            f.quiet_ns_per_touch, f.migrating_ns_per_touch, f.migrated_per_touch, f.migrate_cost_ns
        );
    }
    let _ = writeln!(r, "\n```\n{}```\n", compare::table(&o.rows, &crate::kernel_cmd::kernel_label(&o.kernel)));
    let outside: Vec<_> = o.rows.iter().filter(|r| r.verdict == Verdict::Outside).collect();
    if !outside.is_empty() {
        let _ = writeln!(r, "Disagreements:\n");
        for row in outside {
            let reason = row.tolerance.as_ref().map_or("", |t| t.reason.as_str());
            let spread = row.kernel_spread.map_or(String::new(), |s| format!(" (runs {})", compare::spread_text(s)));
            let _ = writeln!(
                r,
                "- `{}`: sim {} vs kernel {}{spread} (tolerance reason: {reason})",
                row.metric,
                serde_json::to_string(&row.sim).unwrap_or_default(),
                serde_json::to_string(&row.kernel).unwrap_or_default()
            );
        }
        r.push('\n');
    }
    let _ = writeln!(r, "![overlay]({}/overlay.png)\n", o.dir);
}

#[cfg(test)]
mod tests {
    use super::super::{CaseResult, Manifest, Outcome, Retried, RunRecord};
    use super::*;
    use crate::validate::compare::{Cell, Row, Spread};

    fn outcome(runs: u32) -> Outcome {
        let cells = [Cell::Value(7763.0), Cell::Value(9963.0)];
        let row = Row {
            metric: "vmstat.numa_pages_migrated".into(),
            sim: Cell::Value(13554.0),
            kernel: Cell::Value(8863.0),
            ratio: Some(13554.0 / 8863.0),
            tolerance: Some(sim_core::config::ToleranceConfig {
                metric: "vmstat.numa_pages_migrated".into(),
                abs: 128.0,
                rel: 0.05,
                reason: "each page moves at most once".into(),
            }),
            verdict: Verdict::Outside,
            kernel_runs: if runs > 1 { cells.to_vec() } else { Vec::new() },
            kernel_spread: (runs > 1).then_some(Spread { min: 7763.0, max: 9963.0 }),
        };
        Outcome {
            kernel: "6.1".into(),
            release: "6.1.0-57-amd64".into(),
            dir: "6.1".into(),
            accel: "tcg".into(),
            boot_s: 4.9,
            kernel_wall_s: 25.0,
            host: None,
            sim_rules: vec!["kernel.version=6.1-debian12".into()],
            calibration: Vec::new(),
            ksmd: None,
            migration: None,
            vcpus: None,
            pte_scan: None,
            uffd: None,
            guest_vmas: 0,
            faults: None,
            rows: vec![row],
            agree: false,
            error: None,
            kernel_runs: (1..=runs)
                .filter(|_| runs > 1)
                .map(|i| RunRecord {
                    dir: if i == 1 { "6.1/kernel".into() } else { format!("6.1/kernel-{i}") },
                    boot_s: 4.9,
                    kernel_wall_s: 25.0,
                    host: (i == 2).then_some(oracle::host_load::HostLoad {
                        cpus: 2,
                        loadavg_start: 1.04,
                        others_busy_cpus: 0.26,
                        qemu_busy_cpus: 1.71,
                    }),
                    reused: i == 1,
                })
                .collect(),
            retried: vec![Retried {
                run: runs,
                attempt: 1,
                reason: "the guest hung (timeout); the console shows an RCU stall".into(),
                console: "6.1/kernel/console.attempt-1.log".into(),
            }],
        }
    }

    fn manifest(repeat: u32) -> Manifest {
        Manifest {
            command: command_line(&Some("mprotect-toggle".into()), false, &["6.1".into()], &[], repeat),
            request: super::super::shard::Request {
                scenario: Some("mprotect-toggle".into()),
                all: false,
                kernels: vec!["6.1".into()],
                set: Vec::new(),
                repeat,
                trace: false,
            },
            shard: None,
            skipped: Vec::new(),
            kernels: vec!["6.1".into()],
            repeat,
            wall_s: 1.0,
            cases: vec![CaseResult {
                case: "mprotect-toggle".into(),
                description: "d".into(),
                outcomes: vec![outcome(repeat)],
            }],
        }
    }

    /// A case `--all` skipped on the first kernel keeps its verdict under the second.
    #[test]
    fn a_skipped_kernel_leaves_its_own_cell() {
        let mut m = manifest(1);
        m.kernels = vec!["6.1".into(), "6.12".into()];
        m.cases[0].outcomes[0].kernel = "6.12".into();
        let md = markdown(&m);
        let row = md.lines().find(|l| l.starts_with("| mprotect-toggle |")).unwrap();
        let first = verdict_cell(&m.cases[0].outcomes[0]);
        assert_eq!(row, format!("| mprotect-toggle | skipped | {first} |"), "{md}");
    }

    #[test]
    fn the_report_gives_the_spread_each_run_and_each_retried_boot_with_its_reason() {
        let md = markdown(&manifest(2));
        assert!(md.contains("`numasim validate mprotect-toggle --kernel 6.1 --repeat 2`"), "{md}");
        assert!(md.contains("min - (abs + rel * |min|) <= sim <= max + (abs + rel * |max|)"), "{md}");
        assert!(
            md.contains(
                "- kernel run `6.1/kernel-2`: boot to init 4.9 s, 25 s; other work kept 0.3 of 2 host CPUs busy \
                 (QEMU 1.7, load 1.0 at the start)\n"
            ),
            "{md}"
        );
        assert!(md.contains("- kernel run `6.1/kernel`: boot to init 4.9 s, 25 s, reused"), "{md}");
        assert!(
            md.contains(
                "- kernel run 2, attempt 1 failed and was booted again: the guest hung (timeout); the console \
                 shows an RCU stall (console: `6.1/kernel/console.attempt-1.log`)"
            ),
            "{md}"
        );
        assert!(md.contains("sim 13554.0 vs kernel 8863.0 (runs 7763–9963)"), "{md}");
        assert!(md.contains("6.1 min–max (2 runs)"), "{md}");
    }

    #[test]
    fn a_report_file_starts_with_date_host_accelerator_and_releases() {
        let host = Host { date: utc_date(1_796_515_200 - 1), cpu: "Example CPU @ 2.0GHz".into(), cores: 2 };
        assert_eq!(host.date, "2026-12-05");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        let md = with_header(&manifest(1), &host);
        let head: Vec<&str> = md.lines().take(8).collect();
        assert_eq!(head[0], "# numasim validate");
        assert!(head.contains(&"| date | 2026-12-05 (UTC) |"), "{md}");
        assert!(head.contains(&"| host | Example CPU @ 2.0GHz, 2 cores |"), "{md}");
        assert!(head.contains(&"| accelerator | tcg |"), "{md}");
        assert!(head.contains(&"| kernels | 6.1 (6.1.0-57-amd64) |"), "{md}");
        assert_eq!(md.matches("# numasim validate").count(), 1, "{md}");
        assert!(md.contains("## Verdicts"), "the report follows: {md}");
    }

    #[test]
    fn one_run_reports_as_before_but_still_says_a_boot_was_retried() {
        let md = markdown(&manifest(1));
        assert!(md.contains("`numasim validate mprotect-toggle --kernel 6.1`"), "{md}");
        assert!(!md.contains("min–max") && !md.contains("kernel run `"), "{md}");
        assert!(md.contains("sim 13554.0 vs kernel 8863.0 (tolerance reason"), "{md}");
        assert!(md.contains("- kernel run 1, attempt 1 failed and was booted again"), "{md}");
        let json = serde_json::to_value(manifest(1)).unwrap();
        assert!(json.get("repeat").is_none() && json["cases"][0]["outcomes"][0].get("kernel_runs").is_none());
        assert_eq!(serde_json::to_value(manifest(2)).unwrap()["repeat"], 2);
    }
}
