//! Running many independent simulations in parallel: one run per task, `--jobs` threads,
//! a progress bar on a terminal and plain lines otherwise. Runs never share state, so the
//! results do not depend on the number of jobs or on the order they finish in.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sim_core::config::Config;

use crate::{Failure, output};

/// One simulation to run and the directory its results go to.
pub struct Job {
    pub dir: PathBuf,
    pub config: Config,
}

/// Runs one job and writes its results; `check` runs the invariant checks after every event.
pub fn run_one(job: &Job, check: bool) -> Result<sim_core::sim::RunOutput, Failure> {
    let mut sim = workloads::build(&job.config);
    sim.set_check_invariants(check);
    let out = sim.run().map_err(|e| Failure::Sim(format!("{}: {e}", job.dir.display())))?;
    output::write_run(&job.dir, &job.config, &out).map_err(|e| Failure::Io(e.to_string()))?;
    Ok(out)
}

/// Runs `jobs` on `threads` threads and writes each run's results. Returns the first
/// failure, after every run has finished.
pub fn run_all(jobs: &[Job], threads: usize, what: &str, check: bool) -> Result<(), Failure> {
    if jobs.is_empty() {
        return Ok(());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| Failure::Io(format!("cannot start {threads} threads: {e}")))?;
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = ProgressBar::new(jobs.len() as u64);
        let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} runs, {elapsed} elapsed, ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<(), Failure>> = pool.install(|| {
        jobs.par_iter()
            .map(|job| {
                let r = run_one(job, check).map(drop);
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if tty {
                    bar.inc(1);
                } else {
                    let secs = start.elapsed().as_secs_f64();
                    let eta = secs / n as f64 * (jobs.len() - n) as f64;
                    eprintln!(
                        "{what}: {n}/{} runs done ({secs:.1} s, ETA {eta:.0} s): {}",
                        jobs.len(),
                        job.dir.display()
                    );
                }
                r
            })
            .collect()
    });
    bar.finish_and_clear();
    results.into_iter().collect()
}

/// Default parallelism: every core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
