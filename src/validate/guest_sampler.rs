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

/// The stand-in the kernel runs gave: a light sample every period and, where the runs
/// recorded them, the numa_maps walks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StandIn {
    /// CPU time of a sample without a walk, per period.
    pub light_us: u64,
    /// A walk's CPU time and how often one came (mean over the runs).
    pub walk: Option<Walk>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Walk {
    pub run_us: u64,
    pub every_ms: u64,
}

/// One run's walks: how many, their CPU time in all (ns), and the run's length (ms).
struct RunWalks {
    count: f64,
    cpu_ns: f64,
    elapsed_ms: f64,
}

/// Adds the sampler to `config` from the kernel runs (each run's guest.json and time
/// series); returns what was added, or None when nothing was: no run has the figures, every
/// scenario thread is pinned, or the scenario has a process named `init`.
pub fn add(config: &mut Config, runs: &[(&serde_json::Value, &Table)]) -> Option<StandIn> {
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
    let total_us = mean(&per_run);
    let walks: Vec<RunWalks> = runs.iter().filter_map(|(guest, series)| run_walks(guest, series)).collect();
    let stand_in = shape(total_us, &walks, period_ms);
    let sampler = ThreadConfig {
        name: "sampler".into(),
        count: 1,
        node: Some(0),
        start_ms: period_ms,
        period_ms: Some(period_ms),
        run_us: Some(stand_in.light_us),
        ..ThreadConfig::default()
    };
    let mut thread = vec![sampler.clone()];
    if let Some(w) = stand_in.walk {
        thread.push(ThreadConfig {
            name: "walker".into(),
            start_ms: w.every_ms,
            period_ms: Some(w.every_ms),
            run_us: Some(w.run_us),
            ..sampler
        });
    }
    config.process.push(ProcessConfig {
        name: PROCESS.into(),
        vma: Vec::new(),
        thread,
        main_thread: MainThread::Idle,
        cpuset_mems: Vec::new(),
    });
    Some(stand_in)
}

/// Splits /init's CPU time per period (`total_us`) into the walks the runs recorded and the
/// light samples left; without walks, all of it is one run per period.
fn shape(total_us: f64, walks: &[RunWalks], period_ms: u64) -> StandIn {
    let cap =
        |us: f64, limit_ms: u64| (us.round() as u64).clamp(1, limit_ms.saturating_mul(1000).saturating_sub(1).max(1));
    let walks: Vec<&RunWalks> = walks.iter().filter(|w| w.count > 0.0 && w.elapsed_ms > 0.0).collect();
    if walks.is_empty() {
        return StandIn { light_us: cap(total_us, period_ms), walk: None };
    }
    let run_us = mean(&walks.iter().map(|w| w.cpu_ns / w.count / 1000.0).collect::<Vec<_>>());
    let every_ms = mean(&walks.iter().map(|w| w.elapsed_ms / w.count).collect::<Vec<_>>()).round() as u64;
    let every_ms = every_ms.max(period_ms);
    let walk_us_per_period =
        mean(&walks.iter().map(|w| w.cpu_ns / 1000.0 / w.elapsed_ms).collect::<Vec<_>>()) * period_ms as f64;
    StandIn {
        light_us: cap(total_us - walk_us_per_period, period_ms),
        walk: Some(Walk { run_us: cap(run_us, every_ms), every_ms }),
    }
}

/// The walks a run's time series recorded (runs from before the column have none).
fn run_walks(guest: &serde_json::Value, series: &Table) -> Option<RunWalks> {
    let column = series.column(oracle::results::SAMPLER_COLUMNS[1])?;
    let walks: Vec<f64> = column.into_iter().filter(|v| v.is_finite() && *v > 0.0).collect();
    let elapsed_ms = guest["elapsed_ms"].as_f64()?;
    Some(RunWalks { count: walks.len() as f64, cpu_ns: walks.iter().sum(), elapsed_ms })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
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

    fn light(us: u64) -> Option<StandIn> {
        Some(StandIn { light_us: us, walk: None })
    }

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
        assert_eq!(add(&mut config.clone(), &[(&guest, &series)]), light(150_000));
        // A run without the files does not count in the mean.
        let bare = serde_json::json!({"samples": 10});
        assert_eq!(add(&mut config.clone(), &[(&bare, &series), (&guest, &series)]), light(150_000));
        assert_eq!(add(&mut config.clone(), &[(&bare, &series)]), None);
        config.run.sample_ms = 100;
        assert_eq!(add(&mut config, &[(&guest, &series)]), light(99_999));
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
        assert_eq!(add(&mut config, &[(&guest, &series)]), light(10_000));
    }

    /// Where the runs recorded the sampler's numa_maps walks, the stand-in gets a walker
    /// with their mean CPU time and pace, and the light samples keep the rest of /init's
    /// share: 3 s over 30 s (10 ms per 100 ms), of which three walks of 200 ms every 10 s.
    #[test]
    fn the_walks_become_a_walker_and_the_rest_stays_light() {
        let table = |run: u64| format!("1 1 0 0-3 init {run} 5 9\n");
        let guest = serde_json::json!({
            "samples": 300,
            "elapsed_ms": 30_000,
            "files": {"start": {TASKS_FILE: table(0)}, "end": {TASKS_FILE: table(3_000_000_000)}},
        });
        let walk = oracle::results::SAMPLER_COLUMNS[1];
        let rows = [0, 200_000_000, 0, 200_000_000, 0, 200_000_000].map(|w| vec!["0".to_string(), w.to_string()]);
        let series = Table { header: vec!["time_ms".into(), walk.into()], rows: rows.to_vec() };
        let mut config = Config::default();
        config.run.sample_ms = 100;
        config.process.push(ProcessConfig {
            name: "p".into(),
            thread: vec![ThreadConfig { name: "w".into(), ..ThreadConfig::default() }],
            ..ProcessConfig::default()
        });
        let added = add(&mut config, &[(&guest, &series)]).unwrap();
        assert_eq!(added, StandIn { light_us: 8_000, walk: Some(Walk { run_us: 200_000, every_ms: 10_000 }) });
        let init = config.process.iter().find(|p| p.name == PROCESS).unwrap();
        let names: Vec<&str> = init.thread.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sampler", "walker"]);
        assert_eq!((init.thread[1].period_ms, init.thread[1].run_us), (Some(10_000), Some(200_000)));
    }
}
