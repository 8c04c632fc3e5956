//! Writing result files. Every file is written under a temporary name and renamed into
//! place, and `summary.json` comes last: a directory with a summary holds a complete run.

use std::fs;
use std::io;
use std::path::Path;

use sim_core::config::{Config, to_toml};
use sim_core::sim::RunOutput;

/// Writes `contents` to `dir/name` atomically (temp file + rename); a failed write (a full
/// disk) removes the temporary file, so nothing half-written is left.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    // Removed when dropped, and by a SIGINT or SIGTERM to `kernel` or `validate`.
    let tmp = oracle::stop::Scratch::new(dir.join(format!(".{name}.tmp")));
    let result = fs::write(tmp.path(), contents).and_then(|()| fs::rename(tmp.path(), dir.join(name)));
    result.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display())))
}

/// Writes config.toml, timeseries.csv and, last, summary.json.
pub fn write_run(dir: &Path, config: &Config, out: &RunOutput) -> io::Result<()> {
    let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(at)?;
    // An older summary must not vouch for files this run is about to replace.
    match fs::remove_file(dir.join("summary.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(e)),
        _ => {}
    }
    write_atomic(dir, "config.toml", to_toml(config).as_bytes())?;
    write_atomic(dir, "timeseries.csv", out.recorder.to_csv().as_bytes())?;
    let json = serde_json::to_string_pretty(&out.summary).map_err(io::Error::other)?;
    write_atomic(dir, "summary.json", (json + "\n").as_bytes())
}

/// One screen of what happened, for a person at a terminal.
pub fn print_brief(dir: &Path, out: &RunOutput) {
    let s = &out.summary;
    println!(
        "{}: {} s simulated in {:.2} s ({} events), seed {}, gup_policy {}, notifier {}",
        s.scenario,
        s.sim_time_ns as f64 / 1e9,
        s.wall_s,
        s.events,
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
