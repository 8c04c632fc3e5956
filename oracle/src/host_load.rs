//! How busy the host was while a guest ran. Under TCG a vCPU advances only while a host CPU
//! runs its thread, and the guest's clock does not wait for it: other work on the host
//! stretches the guest's timeslices and delays its ticks, and with them the kernel's
//! balancing and scanning (the scheduler cases moved workers 24 times on an idle host and
//! 36–71 times on a loaded one). A run's record says how much of the host it had, so that
//! runs are judged against runs made under a similar load.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The host's load over one boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    /// The host's CPUs.
    pub cpus: u32,
    /// /proc/loadavg's one-minute figure when QEMU started.
    pub loadavg_start: f64,
    /// Host CPUs busy on average with anything but this QEMU over the boot.
    pub others_busy_cpus: f64,
    /// Host CPUs this QEMU kept busy on average over the boot.
    pub qemu_busy_cpus: f64,
}

impl HostLoad {
    /// One line for reports: "other work kept 0.4 of 2 host CPUs busy (QEMU 1.6, load 1.1 at
    /// the start)".
    pub fn describe(&self) -> String {
        format!(
            "other work kept {:.1} of {} host CPUs busy (QEMU {:.1}, load {:.1} at the start)",
            self.others_busy_cpus, self.cpus, self.qemu_busy_cpus, self.loadavg_start
        )
    }
}

/// Reads the host's and one process's CPU time at the start of a boot and while it runs.
pub struct Meter {
    pid: u32,
    cpus: u32,
    loadavg_start: f64,
    start: Option<CpuTimes>,
    /// The process's ticks at the start and when last read (/proc/PID is gone once it has
    /// been reaped).
    ticks: (u64, u64),
}

impl Meter {
    pub fn start(pid: u32) -> Meter {
        let start = read_to_string("/proc/stat").and_then(|s| CpuTimes::parse(&s));
        let loadavg_start = read_to_string("/proc/loadavg").and_then(|s| parse_loadavg(&s)).unwrap_or(f64::NAN);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let ticks = read_process_ticks(pid).unwrap_or(0);
        Meter { pid, cpus, loadavg_start, start, ticks: (ticks, ticks) }
    }

    /// Reads the process's CPU time again; call it until the process exits.
    pub fn sample(&mut self) {
        if let Some(t) = read_process_ticks(self.pid) {
            self.ticks.1 = t;
        }
    }

    /// The load over the boot; NaN shares where /proc could not be read.
    pub fn finish(&self) -> HostLoad {
        let end = read_to_string("/proc/stat").and_then(|s| CpuTimes::parse(&s));
        let (others, qemu) = match (self.start, end) {
            (Some(a), Some(b)) if b.total > a.total => {
                let elapsed = (b.total - a.total) as f64 / f64::from(self.cpus);
                let busy = b.busy.saturating_sub(a.busy) as f64;
                let qemu = (self.ticks.1.saturating_sub(self.ticks.0) as f64).min(busy);
                ((busy - qemu) / elapsed, qemu / elapsed)
            }
            _ => (f64::NAN, f64::NAN),
        };
        HostLoad { cpus: self.cpus, loadavg_start: self.loadavg_start, others_busy_cpus: others, qemu_busy_cpus: qemu }
    }
}

fn read_to_string(path: &str) -> Option<String> {
    std::fs::read_to_string(Path::new(path)).ok()
}

/// The first line of /proc/stat, in USER_HZ ticks summed over the host's CPUs.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// `cpu user nice system idle iowait irq softirq steal guest guest_nice`: guest time is
    /// already inside user and nice (account_guest_time()), so it is not added again.
    fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|v| v.parse().ok()).collect::<Option<_>>()?;
        let total: u64 = f.iter().sum();
        let idle = f[3] + f.get(4).copied().unwrap_or(0);
        Some(CpuTimes { busy: total - idle, total })
    }
}

fn read_process_ticks(pid: u32) -> Option<u64> {
    read_to_string(&format!("/proc/{pid}/stat")).and_then(|s| process_ticks(&s))
}

/// utime + stime of /proc/PID/stat (fields 14 and 15), counted after the command name, which
/// may hold spaces and parentheses.
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn parse_loadavg(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait_and_counts_guest_time_once() {
        let t = CpuTimes::parse("cpu  100 5 50 1000 20 1 2 3 40 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(t, CpuTimes { busy: 161, total: 1181 });
    }

    #[test]
    fn a_process_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "1298 (qemu (x) 86) R 1281 1298 1 0 -1 4194560 1 0 0 0 700 300 0 0 20 0 9 0";
        assert_eq!(process_ticks(stat), Some(1000));
    }

    #[test]
    fn the_meter_sees_this_process_use_cpu() {
        let mut m = Meter::start(std::process::id());
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        m.sample();
        let load = m.finish();
        assert!(load.qemu_busy_cpus > 0.3, "{load:?}");
        assert!(load.loadavg_start >= 0.0 && load.cpus >= 1, "{load:?}");
    }
}
