//! The memory the guest's processes share and how they use it: where each process put its
//! VMAs, each thread's id and touch count, each gupdev device's counters, and the start and
//! stop of the run.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use crate::sys::{Result, mmap_anon, sleep_ns};

/// A process slot's state once its process set up, or failed to.
pub const READY: u32 = 1;
pub const FAILED: u32 = 2;

/// Memory the guest's processes share (mapped MAP_SHARED before they are forked): the start
/// signal, where each process put its VMAs and each thread's id and touch count.
#[repr(C)]
pub struct Shared {
    /// CLOCK_MONOTONIC at the workload's start; 0 until then.
    pub go_ns: AtomicU64,
    pub stop: AtomicU32,
    pub procs: [ProcSlot; guest::MAX_PROCESSES],
    pub threads: [ThreadSlot; guest::MAX_THREADS],
    pub smmus: [SmmuSlot; guest::MAX_SMMUS],
    /// RWP faults the userfaultfd handler threads resolved.
    pub uffd_rwp_faults: AtomicU64,
    /// Sync RWP faults the workload threads timed, and their summed round trips.
    pub uffd_rwp_waits: AtomicU64,
    pub uffd_rwp_wait_ns: AtomicU64,
    /// /proc/PID/mem reads that failed with EIO.
    pub proc_mem_eio: AtomicU64,
}

/// A gupdev device's counters as its users last read them (GUPDEV_IOC_STATS).
#[repr(C, align(64))]
pub struct SmmuSlot {
    /// Non-zero once the device was attached and read.
    pub valid: AtomicU32,
    pub stats: [AtomicU64; crate::gupdev::STATS_FIELDS.len()],
}

#[repr(C)]
pub struct ProcSlot {
    pub pid: AtomicI32,
    /// 1 when set up, 2 when setting up failed.
    pub state: AtomicU32,
    pub vma_base: [AtomicU64; guest::MAX_VMAS],
}

#[repr(C, align(64))]
pub struct ThreadSlot {
    pub pid: AtomicI32,
    pub tid: AtomicI32,
    pub touches: AtomicU64,
    /// RWP faults of this thread the handler resolved (matched by the message's ptid), which
    /// tells the thread that its last access waited for the handler.
    pub uffd_rwp_faults: AtomicU64,
}

impl Shared {
    /// Maps a zeroed `Shared` (all atomics start at 0).
    pub fn map() -> Result<&'static Shared> {
        let len = std::mem::size_of::<Shared>();
        let p = mmap_anon(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)?;
        // SAFETY: the mapping is zeroed, large enough, page-aligned and never unmapped; all
        // fields are atomics, for which zero is a valid value.
        Ok(unsafe { &*(p as *const Shared) })
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed) != 0
    }

    /// Ends the run: sets `stop` and wakes every [`Shared::wait_stopped`] waiter.
    pub fn stop_run(&self) {
        self.stop.store(1, std::sync::atomic::Ordering::Release);
        // SAFETY: a futex wake on an aligned u32 of this MAP_SHARED mapping (not
        // FUTEX_PRIVATE: the waiters are in other processes).
        unsafe { libc::syscall(libc::SYS_futex, self.stop.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
    }

    /// Blocks until the run ends without waking meanwhile (a futex wait on `stop`): a thread
    /// that polled would touch its stack after every scan pass and take hinting faults that an
    /// idle thread does not.
    pub fn wait_stopped(&self) {
        while !self.stopped() {
            // SAFETY: as in stop_run(); it returns at once (EAGAIN) when `stop` is no longer 0,
            // and a signal (EINTR) or spurious wake-up loops.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.stop.as_ptr(),
                    libc::FUTEX_WAIT,
                    0,
                    std::ptr::null::<libc::timespec>(),
                )
            };
        }
    }
}

/// Waits until the workload starts and returns its start time.
pub fn wait_go(shared: &Shared) -> u64 {
    loop {
        let go = shared.go_ns.load(std::sync::atomic::Ordering::Acquire);
        if go != 0 {
            return go;
        }
        sleep_ns(1_000_000);
    }
}

/// When a thread started at `go` stops: at its own `stop_ms` when that is inside the run,
/// otherwise when init ends the run (after the last sample, so the sample still sees it).
pub fn stop_time(go: u64, stop_ms: Option<u64>, duration_ms: u64) -> u64 {
    stop_ms.filter(|&s| s < duration_ms).map_or(u64::MAX, |s| go + s * 1_000_000)
}

/// CPUs of `node`: QEMU numbers them node by node.
pub fn node_cpus(plan: &guest::Plan, node: u32) -> Vec<u32> {
    (node * plan.cpus_per_node..(node + 1) * plan.cpus_per_node).collect()
}

#[cfg(test)]
mod tests {
    use super::Shared;

    #[test]
    fn a_thread_waiting_for_the_stop_sleeps_until_the_run_is_stopped() {
        let shared = Shared::map().unwrap();
        let waiter = std::thread::spawn(move || shared.wait_stopped());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "returned before the run stopped");
        shared.stop_run();
        waiter.join().unwrap();
        shared.wait_stopped();
    }
}
