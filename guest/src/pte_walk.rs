//! Timing a PTE walk before the workload starts. task_numa_work() (kernel/sched/fair.c, 6.1
//! and 6.12) charges the task 32 times the CPU time its scan took (`p->node_stamp += 32 *
//! diff`), so the walk's cost sets when the next scan pass comes; under TCG a walk is some
//! thousand times slower than on hardware. The walk timed is mprotect()'s change_protection()
//! over populated PTEs, the walk change_prot_numa() makes (without its per-folio checks).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use guest::{PAGE_SIZE, Plan, PteWalk, Touch};

use crate::sys::{self, Result};

/// Pages walked: 8 MiB of base pages (madvise(MADV_NOHUGEPAGE)).
const PAGES: u64 = 2048;
/// Round trips timed; their medians are reported (the first one also warms the caches).
const ROUND_TRIPS: usize = 5;

/// Times mprotect(PROT_READ) and back over a populated scratch mapping of [`PAGES`] pages and
/// of one page from a thread on CPU 0, with as many other vCPUs spinning as the plan has
/// busy threads (at most all others): their difference is the PTEs' share, the one page's
/// the flushes'. Init runs it before forking: the threads are gone when it returns.
pub fn time_pte_walk(plan: &Plan) -> Result<PteWalk> {
    let nr_cpus = plan.nodes * plan.cpus_per_node;
    let busy_cpus = busy_threads(plan).min(nr_cpus.saturating_sub(1) as usize) as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (1..=busy_cpus)
        .map(|cpu| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let bound = sys::set_affinity(&[cpu], nr_cpus);
                while bound.is_ok() && !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
                bound
            })
        })
        .collect();
    let timed = std::thread::spawn(move || {
        sys::set_affinity(&[0], nr_cpus)?;
        Ok::<_, String>((walk_round_trips(PAGES)?, walk_round_trips(1)?))
    })
    .join()
    .map_err(|_| "the PTE-walk timing thread panicked".to_string());
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        s.join().map_err(|_| "a spinning thread panicked".to_string())??;
    }
    let ((mut cpu, mut wall), (mut one_cpu, mut one_wall)) = timed??;
    Ok(PteWalk {
        pages: PAGES,
        busy_cpus,
        round_trips: ROUND_TRIPS as u32,
        cpu_ns: median(&mut cpu),
        wall_ns: median(&mut wall),
        one_page_cpu_ns: Some(median(&mut one_cpu)),
        one_page_wall_ns: Some(median(&mut one_wall)),
    })
}

/// Threads that keep a vCPU busy during the run: every toucher and GUP caller but the
/// long-term pins, which only hold their pages.
fn busy_threads(plan: &Plan) -> usize {
    let touchers = plan.processes.iter().flat_map(|p| &p.threads).filter(|t| t.touch != Touch::LongtermPin);
    touchers.count() + plan.remote_callers.len()
}

/// The CPU and wall time of each round trip over a freshly populated mapping of `pages`.
fn walk_round_trips(pages: u64) -> Result<(Vec<u64>, Vec<u64>)> {
    let len = (pages * PAGE_SIZE) as usize;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let base = sys::mmap_anon(0, len, rw, libc::MAP_PRIVATE)?;
    sys::madvise(base, len, libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)")?;
    for i in 0..pages as usize {
        // SAFETY: inside the mapping just made, which nothing else uses.
        unsafe { std::ptr::write_volatile(base.add(i * PAGE_SIZE as usize), 1u8) };
    }
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..ROUND_TRIPS {
        let (c0, w0) = (sys::thread_cpu_ns(), sys::now_ns());
        sys::mprotect(base as usize, len, libc::PROT_READ)?;
        sys::mprotect(base as usize, len, rw)?;
        cpu.push(sys::thread_cpu_ns() - c0);
        wall.push(sys::now_ns() - w0);
    }
    sys::munmap(base as usize, len)?;
    Ok((cpu, wall))
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_over_populated_ptes_takes_cpu_time() {
        for pages in [1, PAGES] {
            let (cpu, wall) = walk_round_trips(pages).unwrap();
            assert_eq!((cpu.len(), wall.len()), (ROUND_TRIPS, ROUND_TRIPS));
            assert!(cpu.iter().all(|&c| c > 0), "{cpu:?}");
            let beyond = cpu.iter().zip(&wall).any(|(c, w)| *c > *w + 1_000_000);
            assert!(!beyond, "CPU time beyond wall time: {cpu:?} {wall:?}");
        }
    }

    #[test]
    fn the_median_is_the_middle_round_trip() {
        assert_eq!(median(&mut [9, 1, 5, 7, 3]), 5);
    }
}
