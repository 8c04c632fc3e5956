//! userfaultfd read-write protection (7.3's include/uapi/linux/userfaultfd.h): a VMA
//! registered with UFFDIO_REGISTER_MODE_RWP, armed by UFFDIO_RWPROTECT, and (sync mode) a
//! handler thread that resolves each fault over its page, as a working-set tracker does.

use std::sync::atomic::Ordering;

use guest::PAGE_SIZE;

use crate::shared::Shared;
use crate::sys::{Result, os_err};

const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
const UFFD_FEATURE_RWP: u64 = 1 << 17;
const UFFD_FEATURE_RWP_ASYNC: u64 = 1 << 18;
const UFFDIO_REGISTER_MODE_RWP: u64 = 1 << 3;
const UFFDIO_RWPROTECT_MODE_RWP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// `_IOWR(UFFDIO, nr, size)`.
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_RWPROTECT: u64 = iowr(0x09, 24);

/// A userfaultfd over one VMA.
pub struct Uffd {
    fd: i32,
}

fn ioctl(fd: i32, request: u64, arg: &mut [u64], what: &str) -> Result<()> {
    // SAFETY: `arg` is the ioctl's struct of u64 fields, as large as `request` encodes.
    let r = unsafe { libc::ioctl(fd, request as libc::c_ulong, arg.as_mut_ptr()) };
    if r < 0 { Err(os_err(what)) } else { Ok(()) }
}

impl Uffd {
    /// userfaultfd(), UFFDIO_API with UFFD_FEATURE_RWP (and RWP_ASYNC), and UFFDIO_REGISTER
    /// with UFFDIO_REGISTER_MODE_RWP over `len` bytes at `addr`. Not UFFD_USER_MODE_ONLY:
    /// GUP's faults (another process's /proc/PID/mem read) must reach the handler too.
    /// UFFD_FEATURE_THREAD_ID puts the faulting thread's id in each message, so the handler
    /// can tell that thread its access waited (userfault_msg()).
    pub fn register_rwp(addr: usize, len: usize, rwp_async: bool) -> Result<Self> {
        // SAFETY: a plain system call.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as i32;
        if fd < 0 {
            return Err(os_err("userfaultfd()"));
        }
        let features = UFFD_FEATURE_RWP | UFFD_FEATURE_THREAD_ID | if rwp_async { UFFD_FEATURE_RWP_ASYNC } else { 0 };
        ioctl(fd, UFFDIO_API, &mut [UFFD_API, features, 0], "UFFDIO_API with UFFD_FEATURE_RWP")?;
        let mut reg = [addr as u64, len as u64, UFFDIO_REGISTER_MODE_RWP, 0];
        ioctl(fd, UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_RWP")?;
        Ok(Self { fd })
    }

    /// UFFDIO_RWPROTECT over `len` bytes at `addr`: arm (`rwp`) or resolve and wake.
    pub fn rwprotect(&self, addr: usize, len: usize, rwp: bool) -> Result<()> {
        let mode = if rwp { UFFDIO_RWPROTECT_MODE_RWP } else { 0 };
        ioctl(self.fd, UFFDIO_RWPROTECT, &mut [addr as u64, len as u64, mode], "UFFDIO_RWPROTECT")
    }

    /// The handler thread's loop: each RWP fault message (struct uffd_msg, 32 bytes; the
    /// address at offset 16, the faulting thread's id at 24) is counted, for the run and
    /// for its thread, and its page resolved, until the run stops. The thread's count moves
    /// before the wake, so the woken thread sees it.
    pub fn handle(&self, shared: &Shared) -> Result<()> {
        let mut msg = [0u8; 32];
        while !shared.stopped() {
            let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 10) } <= 0 {
                continue;
            }
            // SAFETY: reads at most 32 bytes into `msg`.
            let n = unsafe { libc::read(self.fd, msg.as_mut_ptr().cast(), msg.len()) };
            if n != msg.len() as isize || msg[0] != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let addr = u64::from_ne_bytes(msg[16..24].try_into().expect("8 bytes")) as usize;
            let page = addr & !(PAGE_SIZE as usize - 1);
            let ptid = i32::from_ne_bytes(msg[24..28].try_into().expect("4 bytes"));
            shared.uffd_rwp_faults.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = shared.threads.iter().find(|t| t.tid.load(Ordering::Relaxed) == ptid) {
                t.uffd_rwp_faults.fetch_add(1, Ordering::Release);
            }
            self.rwprotect(page, PAGE_SIZE as usize, false)?;
        }
        Ok(())
    }
}
