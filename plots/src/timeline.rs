//! A per-CPU timeline of a Chrome JSON trace (`run --trace FILE.json`): one row per CPU,
//! grouped by node, a bar per run of a task coloured by task, and a mark where
//! sched_move_numa or sched_swap_numa put a task. It draws what the Perfetto UI shows on the
//! trace's CPU tracks, for machines where the UI cannot be reached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

use crate::Error;
use crate::chart::{FONT, PALETTE, register_font, write_atomic};

/// Track ids the trace writer gives CPU tracks (sim-core/src/trace/chrome.rs).
const CPU_TID_BASE: u64 = 3_000_000;

/// What the timeline shows, read from the trace.
#[derive(Debug, Default)]
struct Timeline {
    /// (name, node) per CPU.
    cpus: BTreeMap<u64, (String, u64)>,
    /// (cpu, start s, end s, task) per run.
    runs: Vec<(u64, f64, f64, String)>,
    /// (time s, destination cpu) per task move.
    moves: Vec<(f64, u64)>,
    title: String,
}

fn read(path: &Path) -> Result<Timeline, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not Chrome JSON: {e}", path.display()))?;
    let events = v["traceEvents"].as_array().ok_or_else(|| format!("{}: no traceEvents array", path.display()))?;
    let mut t =
        Timeline { title: v["metadata"]["numasim"].as_str().unwrap_or("trace").to_string(), ..Default::default() };
    let secs = |e: &Value, k: &str| e[k].as_f64().unwrap_or(0.0) / 1e6;
    for e in events {
        let tid = e["tid"].as_u64().unwrap_or(0);
        let cpu = tid.checked_sub(CPU_TID_BASE);
        match (e["ph"].as_str(), e["name"].as_str(), cpu) {
            (Some("M"), Some("thread_name"), Some(cpu)) => {
                let node = e["pid"].as_u64().unwrap_or(0).saturating_sub(1_000_000);
                t.cpus.insert(cpu, (e["args"]["name"].as_str().unwrap_or("").to_string(), node));
            }
            (Some("X"), Some(task), Some(cpu)) => {
                let start = secs(e, "ts");
                t.runs.push((cpu, start, start + secs(e, "dur"), task.to_string()));
            }
            (Some("i"), Some("sched_move_numa" | "sched_swap_numa"), _) => {
                if let Some(dst) = e["args"]["dst_cpu"].as_u64() {
                    t.moves.push((secs(e, "ts"), dst));
                }
            }
            _ => {}
        }
    }
    if t.cpus.is_empty() {
        return Err(format!("{}: no CPU tracks (is it a numasim Chrome JSON trace?)", path.display()));
    }
    Ok(t)
}

/// Draws `trace`'s timeline to `base`.png and `base`.svg; returns both paths.
pub fn render_timeline(trace: &Path, base: &Path) -> Result<Vec<PathBuf>, Error> {
    register_font();
    let t = read(trace)?;
    let size = (1400, 140 + 26 * t.cpus.len() as u32);
    // Appended, not set: a base like `numa02-6.12` has no extension to replace.
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
    let (png, svg) = (with("png"), with("svg"));
    write_atomic(&png, |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        draw(&t, &root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    })?;
    write_atomic(&svg, |tmp| {
        let root = SVGBackend::new(tmp, size).into_drawing_area();
        draw(&t, &root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    })?;
    Ok(vec![png, svg])
}

fn draw<DB: DrawingBackend>(
    t: &Timeline,
    root: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let end = t.runs.iter().map(|r| r.2).chain(t.moves.iter().map(|m| m.0)).fold(1e-3, f64::max);
    let rows = t.cpus.len() as f64;
    let labels: Vec<String> = t.cpus.values().map(|(name, node)| format!("{name} (node {node})")).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(&t.title, (FONT, 20).into_font())
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(150)
        // Room on the right for the legend, clear of the bars.
        .build_cartesian_2d(0.0..end * 1.3, rows..0.0)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("time (s)")
        .y_labels(labels.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor();
            if (y - i - 0.5).abs() < 1e-6 { labels.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
        })
        .label_style((FONT, 13).into_font())
        .draw()?;
    let row: BTreeMap<u64, f64> = t.cpus.keys().enumerate().map(|(i, c)| (*c, i as f64)).collect();
    let mut tasks: Vec<&str> = t.runs.iter().map(|r| r.3.as_str()).collect();
    tasks.sort();
    tasks.dedup();
    let colour = |task: &str| PALETTE[tasks.binary_search(&task).unwrap_or(0) % (PALETTE.len() - 1)];
    for (i, task) in tasks.iter().enumerate() {
        let c = colour(task);
        let bars = t.runs.iter().filter(|r| r.3 == *task).filter_map(|(cpu, s, e, _)| {
            let y = row.get(cpu)?;
            Some(Rectangle::new([(*s, y + 0.15), (*e, y + 0.85)], c.filled()))
        });
        let label = chart.draw_series(bars)?.label(*task);
        if i < 24 {
            label.legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        }
    }
    let marks =
        t.moves.iter().filter_map(|(ts, cpu)| Some(TriangleMarker::new((*ts, row.get(cpu)? + 0.5), 6, BLACK.filled())));
    chart
        .draw_series(marks)?
        .label("sched_move_numa / sched_swap_numa")
        .legend(|(x, y)| TriangleMarker::new((x + 7, y), 5, BLACK.filled()));
    // Node boundaries.
    let nodes: Vec<u64> = t.cpus.values().map(|(_, n)| *n).collect();
    for (i, w) in nodes.windows(2).enumerate() {
        if w[0] != w[1] {
            let y = i as f64 + 1.0;
            chart.draw_series(std::iter::once(PathElement::new([(0.0, y), (end * 1.01, y)], BLACK.stroke_width(2))))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13).into_font())
        .draw()?;
    Ok(())
}
