//! report.md of a validation: the verdict per case and kernel, then each case's tables,
//! disagreements, touch-rate matching and overlay plots.

use std::fmt::Write as _;

use super::compare::{self, Verdict};
use super::{Manifest, Outcome};

/// The command that reproduces a validation.
pub fn command_line(scenario: &Option<String>, all: bool, kernels: &[String], set: &[String]) -> String {
    let what = if all { "--all".to_string() } else { scenario.clone().unwrap_or_default() };
    let sets: String = set.iter().map(|s| format!(" --set {s}")).collect();
    format!("numasim validate {what} --kernel {}{sets}", kernels.join(","))
}

pub fn markdown(m: &Manifest) -> String {
    let mut r = format!(
        "# numasim validate\n\nReproduce with `{}` ({:.0} s on this machine).\n\n\
         Each case ran on the real kernel under QEMU, then in the sim under that kernel's rules with each \
         thread block's and device's think time set to the touch rate the guest measured. A judged metric agrees when \
         |sim - kernel| <= abs + rel * |kernel|; each tolerance's reason is in the case file \
         (configs/validate/). `not measured`: the kernel cannot give it (never shown as 0).\n\n\
         ## Verdicts\n\n| case | {} |\n|---|{}\n",
        m.command,
        m.wall_s,
        m.kernels.join(" | "),
        "---|".repeat(m.kernels.len())
    );
    for c in &m.cases {
        let cells: Vec<String> = c.outcomes.iter().map(verdict_cell).collect();
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

fn verdict_cell(o: &Outcome) -> String {
    if o.error.is_some() {
        return "run failed".into();
    }
    let outside = o.rows.iter().filter(|r| r.verdict == Verdict::Outside).count();
    if outside == 0 { "agrees".into() } else { format!("**{outside} disagreement(s)**") }
}

fn case_section(r: &mut String, o: &Outcome) {
    let _ = writeln!(r, "### {} ({})\n", o.kernel, o.release);
    if let Some(e) = &o.error {
        let _ = writeln!(r, "The kernel run failed:\n\n```\n{e}\n```\n");
        return;
    }
    let _ = writeln!(
        r,
        "Sim rules: `{}`. QEMU accel {}, boot to init {:.1} s, whole kernel run {:.0} s.\n",
        o.sim_rules.join(" "),
        o.accel,
        o.boot_s,
        o.kernel_wall_s
    );
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
            "- `{}` costs (fit over {} thread-intervals): {:.1} µs per touch, {:.0} µs per hinting fault, {:.0} µs per migrated page; sim kernel.hint_fault_cost_ns and migrate_cost_ns from them",
            m.block,
            m.intervals,
            m.touch_ns / 1e3,
            m.fault_ns / 1e3,
            m.migration_ns / 1e3
        );
    }
    if let Some(k) = &o.ksmd {
        let _ = writeln!(
            r,
            "- ksmd: first pass {:.1} s, then {:.0} merges/s of {:.0} pages/s looked at; sim ksm.scan_cost_ns = {}, ksm.merge_cost_ns = {}",
            k.first_pass_s, k.merges_per_s, k.scanned_per_s, k.scan_cost_ns, k.merge_cost_ns
        );
    }
    let _ = writeln!(r, "\n```\n{}```\n", compare::table(&o.rows, &crate::kernel_cmd::kernel_label(&o.kernel)));
    let outside: Vec<_> = o.rows.iter().filter(|r| r.verdict == Verdict::Outside).collect();
    if !outside.is_empty() {
        let _ = writeln!(r, "Disagreements:\n");
        for row in outside {
            let reason = row.tolerance.as_ref().map_or("", |t| t.reason.as_str());
            let _ = writeln!(
                r,
                "- `{}`: sim {} vs kernel {} (tolerance reason: {reason})",
                row.metric,
                serde_json::to_string(&row.sim).unwrap_or_default(),
                serde_json::to_string(&row.kernel).unwrap_or_default()
            );
        }
        r.push('\n');
    }
    let _ = writeln!(r, "![overlay]({}/overlay.png)\n", o.dir);
}
