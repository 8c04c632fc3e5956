//! The standard figures of a run, a comparison and a sweep.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::chart::{Figure, Panel, Plot, Series};
use crate::data::{get, mean_sd};
use results::Table;

const SOURCES: [(&str, &str); 3] = [("cpu", "CPU threads"), ("kvm", "KVM guests"), ("device", "devices")];
const FAULT_SOURCES: [(&str, &str); 4] = [
    ("cpu", "CPU threads"),
    ("kvm", "KVM (EPT faults)"),
    ("device", "devices (driver GUP)"),
    ("follow_page", "follow_page"),
];

/// The churn an invalidation costs secondary MMUs, per second: title and axis of each.
const CHURN: [(&str, &str, &str); 5] = [
    ("kvm.kvm_unmap_hva_range", "kvm_unmap_hva_range (KVM's invalidate_range_start calls)", "calls / s"),
    ("secondary_mmu.entries_zapped", "Entries zapped (4 KiB units)", "entries / s"),
    ("secondary_mmu.entries_refilled", "Entries refilled by secondary faults", "entries / s"),
    ("kvm.remote_tlb_flush", "remote_tlb_flush (KVM flushes that sent an IPI)", "flushes / s"),
    ("secondary_mmu.flush_ipis", "Flush IPIs to vCPUs", "IPIs / s"),
];

/// Totals compared across runs, with their axis labels.
const TOTALS: [(&str, &str); 14] = [
    ("locality.cpu", "CPU touch locality"),
    ("locality.kvm", "guest touch locality"),
    ("locality.device", "device touch locality"),
    ("vmstat.numa_hint_faults", "numa_hint_faults"),
    ("hint_faults_by_source.kvm", "hint faults (KVM)"),
    ("hint_faults_by_source.device", "hint faults (device)"),
    ("vmstat.numa_pages_migrated", "numa_pages_migrated"),
    ("vmstat.pgmigrate_fail", "pgmigrate_fail"),
    ("stale.mappings_max", "stale mappings (max)"),
    ("stale.accesses", "stale accesses"),
    ("ksm.pages_merged", "KSM pages merged"),
    ("ksm.skipped_protnone", "KSM skipped (protnone)"),
    ("young.secondary_only_protnone", "young via secondary only"),
    ("throughput.touches_per_s", "touches per second"),
];

/// A group's time series, averaged run by run (runs of one scenario share sample times).
struct Averaged {
    label: String,
    table: Table,
    runs: Vec<Table>,
}

impl Averaged {
    fn load(label: &str, dirs: &[PathBuf]) -> Result<Self, Error> {
        let runs = dirs.iter().map(|d| Table::read(&d.join(results::TIMESERIES))).collect::<Result<Vec<_>, _>>()?;
        let table = runs.first().cloned().unwrap_or_default();
        Ok(Self { label: label.to_string(), table, runs })
    }

    fn time_s(&self) -> Vec<f64> {
        self.table.time_s()
    }

    /// Column `name` averaged over the runs; `per_second` turns interval counts into rates.
    fn series(&self, name: &str, per_second: bool) -> Option<Series> {
        let cols: Vec<Vec<f64>> = self.runs.iter().filter_map(|t| t.column(name)).collect();
        let first = cols.first()?;
        let t = self.time_s();
        let points = (0..first.len())
            .map(|i| {
                let v = cols.iter().map(|c| c.get(i).copied().unwrap_or(f64::NAN)).sum::<f64>() / cols.len() as f64;
                let dt = if i == 0 { t[0] } else { t[i] - t[i - 1] };
                (t[i], if per_second && dt > 0.0 { v / dt } else { v })
            })
            .collect();
        Some(Series { label: self.label.clone(), points })
    }

    fn total(&self, name: &str) -> f64 {
        self.runs.iter().filter_map(|t| t.column(name)).flatten().filter(|v| v.is_finite()).sum()
    }
}

fn line_panel(groups: &[Averaged], column: &str, per_second: bool, title: &str, y_label: &str) -> Panel {
    Panel {
        title: title.to_string(),
        x_label: "simulated time (s)".into(),
        y_label: y_label.into(),
        plot: Plot::Lines {
            series: groups.iter().filter_map(|g| g.series(column, per_second)).collect(),
            categories: None,
        },
    }
}

/// Draws figure `name`, or, with nothing to show, removes an old one of that name so a
/// result directory never shows a figure from an earlier run.
fn save(out: &Path, name: &str, title: &str, panels: Vec<Panel>, columns: usize) -> Result<Vec<PathBuf>, Error> {
    let base = out.join(name);
    if panels.is_empty() {
        for ext in ["png", "svg"] {
            match std::fs::remove_file(base.with_extension(ext)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", base.display())),
                _ => {}
            }
        }
        return Ok(Vec::new());
    }
    Figure { title: title.to_string(), panels, columns }.save(&base)
}

/// The figures of one run directory.
pub fn render_run(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let summary = results::Summary::read(dir)?.values();
    let label = format!("seed {}", get(&summary, "seed").unwrap_or(0.0));
    let mut files = render_comparison(dir, &[(label, vec![dir.to_path_buf()])])?;
    files.extend(render_placement(dir)?);
    files.extend(render_memory(dir)?);
    Ok(files)
}

/// Memory in use on each node over time (`node.*.used_pages`): where migration moves pages.
fn render_memory(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let table = Table::read(&dir.join(results::TIMESERIES))?;
    let t = table.time_s();
    let series: Vec<Series> = table
        .header
        .iter()
        .filter(|h| h.starts_with("node.") && h.ends_with(".used_pages"))
        .map(|h| Series {
            label: h.trim_end_matches(".used_pages").replace('.', " "),
            points: t
                .iter()
                .zip(table.column(h).unwrap_or_default())
                .map(|(&t, p)| (t, p * 4096.0 / (1 << 20) as f64))
                .collect(),
        })
        .collect();
    if series.is_empty() {
        return Ok(Vec::new());
    }
    let panel = Panel {
        title: "Memory in use on each node".into(),
        x_label: "simulated time (s)".into(),
        y_label: "MiB".into(),
        plot: Plot::Lines { series, categories: None },
    };
    save(dir, "memory", "Memory placement", vec![panel], 1)
}

/// Most threads drawn in the placement figure; more would not be readable.
const MAX_PLACEMENT_LINES: usize = 16;

/// The node each thread ran on over time (`task.*.nid` columns): how task placement moved
/// threads while balancing converged. Lines are offset a little so threads on one node
/// stay apart.
fn render_placement(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let table = Table::read(&dir.join(results::TIMESERIES))?;
    let t = table.time_s();
    let threads: Vec<&String> = table.header.iter().filter(|h| h.starts_with("task.") && h.ends_with(".nid")).collect();
    let n = threads.len().min(MAX_PLACEMENT_LINES);
    let series: Vec<Series> = threads
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, h)| {
            let nid = table.column(h).unwrap_or_default();
            let offset = (i as f64 - n as f64 / 2.0) * 0.3 / n.max(1) as f64;
            Series {
                label: h.trim_start_matches("task.").trim_end_matches(".nid").to_string(),
                points: t.iter().zip(nid).map(|(&t, nid)| (t, nid + offset)).collect(),
            }
        })
        .collect();
    if series.is_empty() {
        return Ok(Vec::new());
    }
    let title = if threads.len() > n {
        format!("Node of each thread (first {n} of {})", threads.len())
    } else {
        "Node of each thread".to_string()
    };
    let panel = Panel {
        title,
        x_label: "simulated time (s)".into(),
        y_label: "NUMA node".into(),
        plot: Plot::Lines { series, categories: None },
    };
    save(dir, "placement", "Task placement", vec![panel], 1)
}

/// Comparison figures in `out`: one line (or bar) per group, time series averaged over the
/// group's runs. Returns the files written.
pub fn render_comparison(out: &Path, groups: &[(String, Vec<PathBuf>)]) -> Result<Vec<PathBuf>, Error> {
    let groups: Vec<Averaged> = groups.iter().map(|(l, d)| Averaged::load(l, d)).collect::<Result<_, _>>()?;
    let any = |col: &str| groups.iter().any(|g| g.total(col) > 0.0);
    let mut files = Vec::new();

    let panels = SOURCES
        .iter()
        .filter(|(s, _)| any(&format!("touches.{s}")))
        .map(|(s, name)| {
            line_panel(&groups, &format!("locality.{s}"), false, &format!("Touches by {name}"), "share local")
        })
        .collect();
    files.extend(save(out, "locality", "Locality: share of touches served by the toucher's node", panels, 1)?);

    let panels = FAULT_SOURCES
        .iter()
        .filter(|(s, _)| any(&format!("hint_faults_by_source.{s}")))
        .map(|(s, name)| line_panel(&groups, &format!("hint_faults_by_source.{s}"), true, name, "hinting faults / s"))
        .collect();
    files.extend(save(out, "hint-faults", "NUMA hinting faults per second, by who took them", panels, 1)?);

    let mut panels = vec![line_panel(&groups, "vmstat.numa_pte_updates", true, "numa_pte_updates", "PTEs / s")];
    for (col, title) in
        [("vmstat.numa_pages_migrated", "numa_pages_migrated"), ("vmstat.pgmigrate_fail", "pgmigrate_fail")]
    {
        if any(col) {
            panels.push(line_panel(&groups, col, true, title, "pages / s"));
        }
    }
    files.extend(save(out, "migrations", "Scanning and migration", panels, 1)?);

    let panels = CHURN
        .iter()
        .filter(|(col, ..)| any(col))
        .map(|(col, title, y_label)| line_panel(&groups, col, true, title, y_label))
        .collect();
    files.extend(save(out, "secondary-mmu", "Secondary-MMU churn per second", panels, 1)?);

    let panels = if any("stale.mappings") || any("stale.accesses") {
        vec![
            line_panel(&groups, "stale.mappings", false, "Stale secondary-MMU entries (gauge)", "entries"),
            line_panel(&groups, "stale.accesses", true, "Accesses through stale entries", "accesses / s"),
        ]
    } else {
        Vec::new()
    };
    files.extend(save(out, "stale", "Stale secondary mappings", panels, 1)?);

    files.extend(save_totals(out, &groups)?);
    Ok(files)
}

/// Bars of run totals per group (from the time series, so it needs no summaries).
fn save_totals(out: &Path, groups: &[Averaged]) -> Result<Vec<PathBuf>, Error> {
    let mut panels = Vec::new();
    for (metric, name) in TOTALS {
        let values: Vec<f64> = groups
            .iter()
            .map(|g| {
                if let Some(src) = metric.strip_prefix("locality.") {
                    let touches = g.total(&format!("touches.{src}"));
                    let local: f64 = g
                        .runs
                        .iter()
                        .filter_map(|t| {
                            Some(
                                t.column(&format!("touches.{src}"))?
                                    .iter()
                                    .zip(t.column(metric)?)
                                    .map(|(a, b)| a * b)
                                    .sum::<f64>(),
                            )
                        })
                        .sum();
                    if touches > 0.0 { local / touches } else { 0.0 }
                } else if metric == "stale.mappings_max" {
                    g.runs.iter().filter_map(|t| t.column("stale.mappings")).flatten().fold(0.0, f64::max)
                } else if metric == "throughput.touches_per_s" {
                    let touches: f64 = SOURCES.iter().map(|(s, _)| g.total(&format!("touches.{s}"))).sum();
                    let secs = g.time_s().last().copied().unwrap_or(1.0) * g.runs.len() as f64;
                    touches / secs
                } else {
                    g.total(metric) / g.runs.len().max(1) as f64
                }
            })
            .collect();
        if values.iter().any(|v| *v != 0.0) {
            panels.push(Panel {
                title: name.to_string(),
                x_label: String::new(),
                y_label: String::new(),
                plot: Plot::Bars { labels: groups.iter().map(|g| g.label.clone()).collect(), values },
            });
        }
    }
    save(out, "totals", "Run totals (mean over seeds)", panels, 3)
}

/// Sweep figures from `results.csv` in `dir`: each metric that varies against the first
/// swept parameter, one line per value of the second (averaged over the others), and a
/// heatmap when two parameters are swept.
pub fn render_sweep(dir: &Path, axes: &[String]) -> Result<Vec<PathBuf>, Error> {
    let table = Table::read(&dir.join("results.csv"))?;
    let Some(x_axis) = axes.first() else { return Ok(Vec::new()) };
    let xs = distinct(&table.labels(x_axis).unwrap_or_default());
    let line_axis = axes.get(1);
    let ls = line_axis.map(|a| distinct(&table.labels(a).unwrap_or_default())).unwrap_or_else(|| vec![String::new()]);
    let mut files = Vec::new();
    for (metric, name) in TOTALS {
        let file = format!("sweep-{}", metric.replace('.', "-"));
        let values = table.column(metric).unwrap_or_default();
        if values.iter().all(|v| *v == values[0]) {
            save(dir, &file, "", Vec::new(), 1)?;
            continue;
        }
        let x_labels = table.labels(x_axis).unwrap_or_default();
        let l_labels = line_axis.and_then(|a| table.labels(a)).unwrap_or_else(|| vec![String::new(); values.len()]);
        let cell = |x: &str, l: &str| {
            let v: Vec<f64> =
                (0..values.len()).filter(|&i| x_labels[i] == x && l_labels[i] == l).map(|i| values[i]).collect();
            mean_sd(&v).0
        };
        let series = ls
            .iter()
            .map(|l| Series {
                label: match line_axis {
                    Some(a) => format!("{a} = {l}"),
                    None => name.to_string(),
                },
                points: xs.iter().enumerate().map(|(i, x)| (i as f64, cell(x, l))).collect(),
            })
            .collect();
        let mut panels = vec![Panel {
            title: format!("{name} against {x_axis}"),
            x_label: x_axis.clone(),
            y_label: name.to_string(),
            plot: Plot::Lines { series, categories: Some(xs.clone()) },
        }];
        if let Some(a) = line_axis {
            panels.push(Panel {
                title: format!("{name}: {a} by {x_axis}"),
                x_label: x_axis.clone(),
                y_label: a.clone(),
                plot: Plot::Heatmap {
                    rows: ls.clone(),
                    cols: xs.clone(),
                    values: ls.iter().map(|l| xs.iter().map(|x| cell(x, l)).collect()).collect(),
                },
            });
        }
        files.extend(save(dir, &file, &format!("Sweep: {name}"), panels, 2)?);
    }
    Ok(files)
}

/// Distinct values in first-seen order.
fn distinct(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A comparison draws the churn figure only when some group's secondary MMUs were
    /// invalidated, and removes an old one otherwise.
    #[test]
    fn the_churn_figure_is_drawn_only_when_a_secondary_mmu_was_invalidated() {
        let dir = std::env::temp_dir().join(format!("numasim-churn-{}", std::process::id()));
        let header = "time_ms,touches.cpu,kvm.kvm_unmap_hva_range,secondary_mmu.flush_ipis\n";
        for (sub, rows) in [("churn", "100,5,3,171\n200,5,0,0\n"), ("quiet", "100,5,0,0\n200,5,0,0\n")] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join(results::TIMESERIES), format!("{header}{rows}")).unwrap();
        }
        let figure = dir.join("secondary-mmu.png");
        let churn = vec![("on".to_string(), vec![dir.join("churn")]), ("off".to_string(), vec![dir.join("quiet")])];
        render_comparison(&dir, &churn).unwrap();
        assert!(figure.is_file());
        render_comparison(&dir, &churn[1..]).unwrap();
        assert!(!figure.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
