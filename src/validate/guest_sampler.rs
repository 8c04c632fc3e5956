//! The guest's sampler as a sleeping thread. The oracle's guest program (/init) wakes every
//! `run.sample_ms`, reads the kernel's counters and sleeps again; on a CPU where a workload
//! thread runs, the thread waits on the run queue meanwhile, and an idle CPU may pull it
//! (the task migrations the kernel runs show). The sim gets a process `init` with one
//! periodic thread that touches no pages.
//! - Its run time per period is /init's own CPU share over the run (its threads'
//!   /proc/PID/task/TID/schedstat run time, start to end, over the run's length) times the
//!   period, averaged over the runs. Measured on Debian's 6.1 and 6.12 under TCG (numa02,
//!   2×2): /init ran 28 % and 25 % of one CPU; every kernel thread together 3 % and 1 %
//!   (rcu_preempt, migration/N, kworkers), which the model leaves out.
//! - A run recorded without the task table gives instead all CPU time outside the
//!   scenario's threads (/proc/schedstat's per-CPU run time less the threads' runtime) per
//!   sample: an upper bound, kernel threads included.
//! - It starts on node 0 (the guest boots on CPU 0), unpinned, and first wakes one period
//!   after the start: /init takes the baseline sample before it releases the threads.
//! - It is added only where a scenario thread is free to move (no `cpus`): only there can it
//!   change placement. Where every thread is pinned, the CPU time it takes from a thread is
//!   already in that thread's touch rate, which validate fits the think time to.
//! - The kernel's `sched.nr_migrations` counts the scenario's threads, so the stand-in's
//!   moves are left out of the sim's ([`PROCESS`] for `Side::leave_out_process`).

use oracle::TASKS_FILE;
use oracle::schedstat::{process_run_ns, rq_cpu_time_ns};
use results::Table;
use sim_core::config::{Config, MainThread, ProcessConfig, ThreadConfig};

/// The process name of the stand-in.
pub const PROCESS: &str = "init";

/// Adds the sampler to `config` from the kernel runs (each run's guest.json and time
/// series); returns its run time per period in microseconds (the mean over the runs that
/// have the figures), or None when nothing was added: no run has them, every scenario
/// thread is pinned, or the scenario has a process named `init`.
pub fn add(config: &mut Config, runs: &[(&serde_json::Value, &Table)]) -> Option<u64> {
    let free = config.process.iter().flat_map(|p| &p.thread).any(|t| t.cpus.is_none());
    if !free || config.process.iter().any(|p| p.name == PROCESS) {
        return None;
    }
    let period_ms = config.run.sample_ms;
    let per_run: Vec<f64> = runs
        .iter()
        .filter_map(|(guest, series)| {
            init_us_per_period(guest, period_ms).or_else(|| other_us_per_sample(guest, series))
        })
        .collect();
    if per_run.is_empty() {
        return None;
    }
    let mean = per_run.iter().sum::<f64>() / per_run.len() as f64;
    let run_us = (mean.round() as u64).clamp(1, period_ms.saturating_mul(1000).saturating_sub(1).max(1));
    let sampler = ThreadConfig {
        name: "sampler".into(),
        count: 1,
        node: Some(0),
        start_ms: period_ms,
        period_ms: Some(period_ms),
        run_us: Some(run_us),
        ..ThreadConfig::default()
    };
    config.process.push(ProcessConfig {
        name: PROCESS.into(),
        vma: Vec::new(),
        thread: vec![sampler],
        main_thread: MainThread::Idle,
        cpuset_mems: Vec::new(),
    });
    Some(run_us)
}

/// One run's /init CPU time per `period_ms`, in microseconds, from the guest's task table
/// (pid 1's threads, start to end).
fn init_us_per_period(guest: &serde_json::Value, period_ms: u64) -> Option<f64> {
    let files = &guest["files"];
    let start = process_run_ns(files["start"][TASKS_FILE].as_str()?, 1)?;
    let end = process_run_ns(files["end"][TASKS_FILE].as_str()?, 1)?;
    let elapsed_ms = guest["elapsed_ms"].as_f64().filter(|&ms| ms > 0.0)?;
    Some(end.checked_sub(start)? as f64 / 1000.0 / elapsed_ms * period_ms as f64)
}

/// One run's CPU time outside the scenario's threads per sample, in microseconds.
fn other_us_per_sample(guest: &serde_json::Value, series: &Table) -> Option<f64> {
    let cpu_ns = rq_cpu_time_ns(guest["files"]["end"]["/proc/schedstat"].as_str()?)?
        .checked_sub(rq_cpu_time_ns(guest["files"]["start"]["/proc/schedstat"].as_str()?)?)?;
    let threads_ns: f64 = series
        .header
        .iter()
        .filter(|h| h.starts_with("kernel.task.") && h.ends_with(".runtime_ns"))
        .filter_map(|h| series.column(h))
        .flatten()
        .filter(|v| v.is_finite())
        .sum();
    let samples = guest["samples"].as_u64().filter(|&n| n > 0)?;
    Some((cpu_ns as f64 - threads_ns).max(0.0) / samples as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedstat(times: &[u64]) -> String {
        let mut s = String::from("version 16\ntimestamp 1\n");
        for (i, t) in times.iter().enumerate() {
            s += &format!("cpu{i} 0 0 1 2 3 4 {t} 5 6\ndomain0 3 1 2\n");
        }
        s
    }

    /// 4 s of CPU time of which the threads ran 2.5 s, over 10 samples: 150 ms each, which a
    /// 100 ms period cuts to just under the period; runs without the figures are left out.
    #[test]
    fn the_sampler_gets_the_cpu_time_outside_the_threads() {
        let guest = serde_json::json!({
            "samples": 10,
            "files": {
                "start": {"/proc/schedstat": schedstat(&[1_000_000_000, 0])},
                "end": {"/proc/schedstat": schedstat(&[3_000_000_000, 2_000_000_000])},
            }
        });
        let series = Table {
            header: vec!["time_ms".into(), "kernel.task.p/w/0.runtime_ns".into()],
            rows: vec![vec!["0".into(), "500000000".into()], vec!["100".into(), "2000000000".into()]],
        };
        let mut config = Config::default();
        config.run.sample_ms = 1000;
        let worker = ThreadConfig { name: "w".into(), cpus: Some(vec![0]), ..ThreadConfig::default() };
        config.process.push(ProcessConfig {
            name: "p".into(),
            vma: Vec::new(),
            thread: vec![worker],
            ..ProcessConfig::default()
        });
        assert_eq!(add(&mut config.clone(), &[(&guest, &series)]), None, "every thread pinned");
        config.process[0].thread[0].cpus = None;
        assert_eq!(add(&mut config.clone(), &[(&guest, &series)]), Some(150_000));
        // A run without the files does not count in the mean.
        let bare = serde_json::json!({"samples": 10});
        assert_eq!(add(&mut config.clone(), &[(&bare, &series), (&guest, &series)]), Some(150_000));
        assert_eq!(add(&mut config.clone(), &[(&bare, &series)]), None);
        config.run.sample_ms = 100;
        assert_eq!(add(&mut config, &[(&guest, &series)]), Some(99_999));
        let t = &config.process.last().unwrap().thread[0];
        assert_eq!((t.period_ms, t.run_us, t.vma.as_str()), (Some(100), Some(99_999), ""));
        assert_eq!(add(&mut config, &[(&guest, &series)]), None, "one sampler");
    }

    /// With the task table, /init's own threads count: 3 s of its run time over a 30 s run
    /// is 10 % of each 100 ms period, whatever the kernel threads ran.
    #[test]
    fn the_task_table_gives_the_guest_programs_own_share() {
        let table = |init: [u64; 2], kworker: u64| {
            format!(
                "1 1 0 0-3 init {} 5 9\n1 7 0 0-3 init {} 5 9\n12 12 2 0 kworker/0:1 {kworker} 1 1",
                init[0], init[1]
            )
        };
        let guest = serde_json::json!({
            "samples": 250,
            "elapsed_ms": 30_000,
            "files": {
                "start": {TASKS_FILE: table([1_000_000_000, 0], 0), "/proc/schedstat": schedstat(&[0])},
                "end": {TASKS_FILE: table([3_500_000_000, 500_000_000], 9_000_000_000), "/proc/schedstat": schedstat(&[20_000_000_000])},
            }
        });
        let series = Table { header: vec!["time_ms".into()], rows: Vec::new() };
        let mut config = Config::default();
        config.run.sample_ms = 100;
        config.process.push(ProcessConfig {
            name: "p".into(),
            vma: Vec::new(),
            thread: vec![ThreadConfig { name: "w".into(), ..ThreadConfig::default() }],
            ..ProcessConfig::default()
        });
        assert_eq!(add(&mut config, &[(&guest, &series)]), Some(10_000));
    }
}
