//! Writing result files. Every file is written under a temporary name and renamed into
//! place, and the summary comes last: a directory with a summary holds a complete run.

use std::io;
use std::path::Path;

use sim_core::config::{Config, to_toml};
use sim_core::sim::RunOutput;

/// Writes `contents` to `dir/name` through the result contract's atomic writer.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    // Removed when dropped, and by a SIGINT or SIGTERM to `kernel` or `validate`.
    results::write_atomic(dir, name, contents, oracle::stop::Scratch::new)
}

/// Writes config.toml, timeseries.csv and, last, the summary.
pub fn write_run(dir: &Path, config: &Config, out: &RunOutput) -> io::Result<()> {
    let json = out.summary.to_text();
    let (toml, csv) = (to_toml(config), out.recorder.to_csv());
    let files: [(&str, &[u8]); 2] = [(results::CONFIG, toml.as_bytes()), (results::TIMESERIES, csv.as_bytes())];
    results::write_run(dir, &files, json.as_bytes(), oracle::stop::Scratch::new)
}

/// One screen of what happened, for a person at a terminal.
pub fn print_brief(dir: &Path, out: &RunOutput) {
    let s = &out.summary;
    println!(
        "{}: {} s simulated in {:.2} s ({} events), seed {}, gup_policy {}, notifier {}",
        s.scenario,
        s.sim_time_ns as f64 / 1e9,
        s.wall_s,
        s.events.unwrap_or(0),
        s.seed,
        s.gup_policy,
        s.notifier
    );
    for (name, value) in s.metrics.flatten() {
        let v = value.as_f64();
        if v != 0.0 {
            println!("  {name:40} {}", fmt_value(v));
        }
    }
    if let Some(t) = &s.trace {
        crate::trace::print_written(t);
    }
    println!("results in {}", dir.display());
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.4}") }
}
