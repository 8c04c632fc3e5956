//! The guest's sampler as a sleeping thread. The oracle's guest program (/init) wakes every
//! `run.sample_ms`, reads the kernel's counters and sleeps again; on a CPU where a workload
//! thread runs, the thread waits on the run queue meanwhile, and an idle CPU may pull it
//! (the task migrations the kernel runs show). The sim gets a process `init` with one
//! sleeping thread that touches no pages.
//! - Where the runs recorded the sampler's CPU time per sample (`guest.sampler.cpu_ns`), it
//!   replays one run's samples at their recorded times with their recorded CPU time. Traced
//!   on 6.1 and 6.12 (numa02, 2×2), a worker moved most often after waiting behind a long
//!   sample, and /init fell behind its 100 ms period (111–175 samples in 30 s instead of
//!   300) and then sampled back to back: a burst pattern a mean cannot give.
//! - Runs recorded without that column give /init's own CPU share spread evenly: its
//!   threads' /proc/PID/task/TID/schedstat run time, start to end, over the run's length,
//!   times the period, averaged over the runs; without the task table either, all CPU time
//!   outside the scenario's threads (/proc/schedstat's per-CPU run time less the threads'
//!   runtime) per sample, an upper bound, kernel threads included. Kernel threads (3 % and
//!   1 % of a CPU on numa02) are left out.
//! - It starts, unpinned, on the node the replayed run's /init took its first sample on
//!   (`guest.sampler.nid`), else on node 0 (the guest boots on CPU 0); it first wakes one
//!   period after the start (or at its first recorded sample): /init takes the baseline
//!   sample before it releases the threads. Where /init sits decides whether it competes
//!   with the workers: in overload on 6.12.118 it sampled on node 1 beside the one worker
//!   the balancer moved there, and the two workers left on node 0 never waited behind it.
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

/// The stand-in the kernel runs gave.
#[derive(Clone, Debug, PartialEq)]
pub enum StandIn {
    /// /init's CPU share spread evenly: `run_us` every period (runs recorded without the
    /// sampler's own CPU time per sample).
    Even { run_us: u64 },
    /// One run's samples replayed: the run (its index), how many samples, their CPU time,
    /// and the node /init sampled on first (None from a run recorded without it).
    Replay { run: usize, samples: usize, cpu_ms: u64, node: Option<u32> },
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
    let mut sampler = ThreadConfig { name: "sampler".into(), count: 1, node: Some(0), ..ThreadConfig::default() };
    let stand_in = match median_recorded(runs) {
        Some((run, bursts)) => {
            let cpu_ms = bursts.iter().map(|b| b[1]).sum::<u64>() / 1000;
            let node = first_sample_node(runs[run].1).filter(|&n| n < config.machine.nodes);
            sampler.node = Some(node.unwrap_or(0));
            sampler.bursts = bursts;
            StandIn::Replay { run, samples: sampler.bursts.len(), cpu_ms, node }
        }
        None => {
            let per_run: Vec<f64> = runs
                .iter()
                .filter_map(|(guest, series)| {
                    init_us_per_period(guest, period_ms).or_else(|| other_us_per_sample(guest, series))
                })
                .collect();
            if per_run.is_empty() {
                return None;
            }
            let cap = period_ms.saturating_mul(1000).saturating_sub(1).max(1);
            let run_us = (mean(&per_run).round() as u64).clamp(1, cap);
            (sampler.start_ms, sampler.period_ms, sampler.run_us) = (period_ms, Some(period_ms), Some(run_us));
            StandIn::Even { run_us }
        }
    };
    config.process.push(ProcessConfig {
        name: PROCESS.into(),
        vma: Vec::new(),
        thread: vec![sampler],
        main_thread: MainThread::Idle,
        cpuset_mems: Vec::new(),
    });
    Some(stand_in)
}

/// Of the runs whose time series has the sampler's CPU time per sample, the one with the
/// median total (the lower of two middles): its samples as `[at_ms, run_us]` bursts. One
/// run's pattern, not a mean, because what moves a worker is when the sampler runs long:
/// the kernels' /init fell behind its period and then sampled back to back.
fn median_recorded(runs: &[(&serde_json::Value, &Table)]) -> Option<(usize, Vec<[u64; 2]>)> {
    let mut recorded: Vec<(usize, Vec<[u64; 2]>)> =
        runs.iter().enumerate().filter_map(|(i, (_, series))| sample_bursts(series).map(|b| (i, b))).collect();
    let total = |b: &[[u64; 2]]| b.iter().map(|x| x[1]).sum::<u64>();
    recorded.sort_by_key(|(i, b)| (total(b), *i));
    let middle = recorded.len().checked_sub(1)? / 2;
    Some(recorded.swap_remove(middle))
}

/// A run's samples as bursts: each row's time and the sampler's CPU time since the row
/// before (the sample's reads, its numa_maps walk when it made one, and the last frame's
/// send). None when the run predates the column or no sample took CPU time.
fn sample_bursts(series: &Table) -> Option<Vec<[u64; 2]>> {
    let cpu_ns = series.column(oracle::results::SAMPLER_COLUMNS[0])?;
    let time_ms = series.column("time_ms")?;
    let bursts: Vec<[u64; 2]> = time_ms
        .iter()
        .zip(&cpu_ns)
        .filter(|(t, c)| t.is_finite() && **t >= 0.0 && c.is_finite() && **c >= 1000.0)
        .map(|(t, c)| [t.round() as u64, (c / 1000.0).round() as u64])
        .collect();
    (!bursts.is_empty()).then_some(bursts)
}

/// The node of the run's first sample that says where the sampler ran.
fn first_sample_node(series: &Table) -> Option<u32> {
    let nid = series.column(oracle::results::SAMPLER_COLUMNS[2])?;
    nid.into_iter().find(|n| n.is_finite() && *n >= 0.0).map(|n| n as u32)
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
    use sim_core::config::VmaConfig;

    fn even(us: u64) -> Option<StandIn> {
        Some(StandIn::Even { run_us: us })
    }

    fn schedstat(times: &[u64]) -> String {
        let mut s = String::from("version 16\ntimestamp 1\n");
        for (i, t) in times.iter().enumerate() {
            s += &format!("cpu{i} 0 0 1 2 3 4 {t} 5 6\ndomain0 3 1 2\n");
        }
        s
    }

    fn scenario(sample_ms: u64) -> Config {
        let mut config = Config::default();
        config.run.sample_ms = sample_ms;
        config.process.push(ProcessConfig {
            name: "p".into(),
            vma: vec![VmaConfig { name: "buf".into(), size_mib: 1, ..VmaConfig::default() }],
            thread: vec![ThreadConfig { name: "w".into(), vma: "buf".into(), ..ThreadConfig::default() }],
            ..ProcessConfig::default()
        });
        config
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
        let mut config = scenario(1000);
        config.process[0].thread[0].cpus = Some(vec![0]);
        assert_eq!(add(&mut config.clone(), &[(&guest, &series)]), None, "every thread pinned");
        config.process[0].thread[0].cpus = None;
        assert_eq!(add(&mut config.clone(), &[(&guest, &series)]), even(150_000));
        // A run without the files does not count in the mean.
        let bare = serde_json::json!({"samples": 10});
        assert_eq!(add(&mut config.clone(), &[(&bare, &series), (&guest, &series)]), even(150_000));
        assert_eq!(add(&mut config.clone(), &[(&bare, &series)]), None);
        config.run.sample_ms = 100;
        assert_eq!(add(&mut config, &[(&guest, &series)]), even(99_999));
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
        assert_eq!(add(&mut scenario(100), &[(&guest, &series)]), even(10_000));
    }

    fn recorded(samples: &[(u64, u64)]) -> Table {
        let rows = samples.iter().map(|(t, cpu)| vec![t.to_string(), cpu.to_string(), "0".into()]);
        let header = ["time_ms", oracle::results::SAMPLER_COLUMNS[0], oracle::results::SAMPLER_COLUMNS[1]];
        Table { header: header.map(String::from).to_vec(), rows: rows.collect() }
    }

    /// A run recorded with the sampler's node per sample (`nids`, "" where the guest could not
    /// say).
    fn recorded_on(samples: &[(u64, u64)], nids: &[&str]) -> Table {
        let mut t = recorded(samples);
        t.header.push(oracle::results::SAMPLER_COLUMNS[2].into());
        t.rows.iter_mut().zip(nids).for_each(|(r, n)| r.push(n.to_string()));
        t
    }

    /// The stand-in starts on the node the replayed run's /init first sampled on; a node the
    /// machine lacks, or a run without the column, leaves it on node 0.
    #[test]
    fn the_stand_in_starts_where_the_kernels_sampler_ran() {
        let guest = serde_json::json!({"elapsed_ms": 30_000});
        let start = |series: &Table| {
            let mut config = scenario(100);
            config.machine.nodes = 2;
            let added = add(&mut config, &[(&guest, series)]).unwrap();
            let init = config.process.iter().find(|p| p.name == PROCESS).unwrap();
            (added, init.thread[0].node)
        };
        let samples = [(0, 2_000_000), (100, 3_000_000)];
        let replay = |node| StandIn::Replay { run: 0, samples: 2, cpu_ms: 5, node };
        assert_eq!(start(&recorded_on(&samples, &["", "1"])), (replay(Some(1)), Some(1)));
        assert_eq!(start(&recorded_on(&samples, &["0", "1"])), (replay(Some(0)), Some(0)));
        assert_eq!(start(&recorded_on(&samples, &["3", "3"])), (replay(None), Some(0)));
        assert_eq!(start(&recorded(&samples)), (replay(None), Some(0)));
    }

    /// Runs with the sampler's CPU time per sample give a replay of the run with the median
    /// total, at its recorded times; a sample that took under a microsecond is no burst. A
    /// run without the column counts for nothing, even where it has a task table.
    #[test]
    fn the_median_run_is_replayed_burst_by_burst() {
        let guest = serde_json::json!({"elapsed_ms": 30_000});
        let light = recorded(&[(100, 5_000_000), (200, 5_000_000)]);
        let middle = recorded(&[(137, 52_309_088), (219, 400), (4802, 598_806_914), (5502, 56_175_786)]);
        let heavy = recorded(&[(100, 900_000_000)]);
        let old = Table { header: vec!["time_ms".into()], rows: vec![vec!["0".into()]] };
        let runs = [(&guest, &heavy), (&guest, &old), (&guest, &middle), (&guest, &light)];
        let mut config = scenario(100);
        let added = add(&mut config, &runs).unwrap();
        assert_eq!(added, StandIn::Replay { run: 2, samples: 3, cpu_ms: 707, node: None });
        let init = config.process.iter().find(|p| p.name == PROCESS).unwrap();
        let t = &init.thread[0];
        assert_eq!(t.bursts, [[137, 52_309], [4802, 598_807], [5502, 56_176]]);
        assert_eq!((t.period_ms, t.run_us, t.start_ms, t.node), (None, None, 0, Some(0)));
        sim_core::config::validate(&config).unwrap();
    }
}
