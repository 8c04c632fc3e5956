//! Overlays: several result directories of one scenario on one axis per metric — the sim
//! and a real kernel in `numasim validate`. A column a run lacks (a counter the kernel
//! cannot measure) gives no line, never a line at 0.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::chart::{Figure, Panel, Plot, Series};
use results::Table;

/// Cumulative counters overlaid, with their panel titles.
const CUMULATIVE: [(&str, &str); 2] = [
    ("vmstat.numa_hint_faults", "hinting faults (cumulative)"),
    ("vmstat.numa_pages_migrated", "pages migrated (cumulative)"),
];

/// Draws `name.png`/`.svg` in `out`: cumulative hinting faults, cumulative migrations and
/// pages per node, one line per labelled run (per node and run for the pages).
pub fn render_overlay(out: &Path, name: &str, title: &str, runs: &[(String, PathBuf)]) -> Result<Vec<PathBuf>, Error> {
    let tables = runs
        .iter()
        .map(|(label, dir)| Ok((label.as_str(), Table::read(&dir.join(results::TIMESERIES))?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let mut panels: Vec<Panel> = CUMULATIVE
        .iter()
        .map(|(column, what)| {
            panel(what, "count", tables.iter().filter_map(|(l, t)| cumulative(l, t, column)).collect())
        })
        .collect();
    panels.push(panel("pages per node", "pages", tables.iter().flat_map(|(l, t)| per_node(l, t)).collect()));
    panels.retain(|p| matches!(&p.plot, Plot::Lines { series, .. } if !series.is_empty()));
    if panels.is_empty() {
        return Ok(Vec::new());
    }
    Figure { title: title.to_string(), panels, columns: 1 }.save(&out.join(name))
}

fn panel(title: &str, y_label: &str, series: Vec<Series>) -> Panel {
    Panel {
        title: title.to_string(),
        x_label: "time (s; guest time for a kernel)".into(),
        y_label: y_label.into(),
        plot: Plot::Lines { series, categories: None },
    }
}

/// The running sum of an interval column.
fn cumulative(label: &str, t: &Table, column: &str) -> Option<Series> {
    let values = t.column(column)?;
    let mut sum = 0.0;
    let points = t
        .time_s()
        .into_iter()
        .zip(values)
        .map(|(x, v)| {
            if v.is_finite() {
                sum += v;
            }
            (x, sum)
        })
        .collect();
    Some(Series { label: label.to_string(), points })
}

fn per_node(label: &str, t: &Table) -> Vec<Series> {
    let nodes = t.header.iter().filter(|h| h.starts_with("node.") && h.ends_with(".used_pages"));
    nodes
        .filter_map(|h| {
            let node = h.trim_start_matches("node.").trim_end_matches(".used_pages");
            let points = t.time_s().into_iter().zip(t.column(h)?).collect();
            Some(Series { label: format!("{label} node {node}"), points })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(header: &[&str], rows: &[&[&str]]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: rows.iter().map(|r| r.iter().map(|s| s.to_string()).collect()).collect(),
        }
    }

    #[test]
    fn counters_accumulate_and_a_missing_column_gives_no_line() {
        let t = table(&["time_ms", "vmstat.numa_hint_faults"], &[&["100", "3"], &["200", "0"], &["300", "4"]]);
        let s = cumulative("sim", &t, "vmstat.numa_hint_faults").unwrap();
        assert_eq!(s.points, vec![(0.1, 3.0), (0.2, 3.0), (0.3, 7.0)]);
        assert!(cumulative("kernel", &t, "vmstat.numa_pages_migrated").is_none());
        assert!(per_node("kernel", &t).is_empty());
    }

    #[test]
    fn an_overlay_draws_both_runs_and_nothing_for_runs_without_series() {
        let dir = std::env::temp_dir().join(format!("numasim-overlay-{}", std::process::id()));
        for (sub, text) in [
            ("a", "time_ms,vmstat.numa_hint_faults,node.0.used_pages\n100,5,10\n200,5,8\n"),
            ("b", "time_ms,node.0.used_pages\n100,9\n200,7\n"),
            ("c", "time_ms\n100\n"),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("timeseries.csv"), text).unwrap();
        }
        let runs = vec![("sim".to_string(), dir.join("a")), ("kernel".to_string(), dir.join("b"))];
        let files = render_overlay(&dir, "overlay", "t", &runs).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|f| f.is_file()));
        let none = render_overlay(&dir, "empty", "t", &[("k".to_string(), dir.join("c"))]).unwrap();
        assert!(none.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
