//! Devices realised as user-space GUP callers: each path reaches the buffer through a
//! different get_user_pages() flavour, from a thread bound to the device's node (a hinting
//! fault taken in GUP migrates the page toward the caller).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use guest::{PAGE_SIZE, RemoteCaller, RemotePath, ThreadPlan, page_content};

use crate::pattern::{self, Rng};
use crate::shared::{self, Shared, ThreadSlot};
use crate::sys::{self, Result};

/// The brd ramdisk O_DIRECT callers use.
const RAMDISK: &str = "/dev/ram0";
const RAMDISK_PAGES: u64 = guest::RAMDISK_KIB * 1024 / PAGE_SIZE;

/// Runs remote caller `ci` (in a process of its own, forked before any buffer existed, so
/// no page is COW-shared with the owner: COW-shared pages are never made protnone).
pub fn run_remote(shared: &'static Shared, plan: &guest::Plan, ci: usize, slot_index: usize) -> Result<()> {
    let c = &plan.remote_callers[ci];
    sys::set_name(&c.name);
    let slot = &shared.threads[slot_index];
    slot.pid.store(std::process::id() as i32, Ordering::Relaxed);
    slot.tid.store(sys::gettid(), Ordering::Relaxed);
    let nr_cpus = plan.nodes * plan.cpus_per_node;
    sys::set_affinity(&crate::shared::node_cpus(plan, c.node), nr_cpus)?;
    shared.procs[plan.processes.len() + ci].pid.store(std::process::id() as i32, Ordering::Relaxed);
    shared.procs[plan.processes.len() + ci].state.store(crate::shared::READY, Ordering::Release);
    let go = shared::wait_go(shared);
    sys::sleep_until(go + c.start_ms * 1_000_000);
    let stop = shared::stop_time(go, c.stop_ms, plan.duration_ms);
    let owner = &shared.procs[c.process];
    let pid = owner.pid.load(Ordering::Relaxed);
    let base = owner.vma_base[c.vma].load(Ordering::Relaxed) as usize;
    let pages = plan.processes[c.process].vmas[c.vma].pages;
    let classes = plan.processes[c.process].vmas[c.vma].content_classes;
    let salt = ((c.process as u64) << 8) | c.vma as u64;
    let seed = plan.seed ^ 0xd1ce ^ ((slot_index as u64) << 32);
    if let RemotePath::Smmu { smmu } = c.path {
        let dev = crate::smmu::Smmu::open(shared, plan, smmu, pid, base as u64, pages)?;
        let walk = crate::smmu::Walk { first_page: 0, pages, pattern: c.pattern, think_ns: c.think_ns, stop, seed };
        return crate::smmu::touch_loop(shared, plan, &dev, &walk, slot);
    }
    let mem = match c.path {
        RemotePath::ProcMem => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/{pid}/mem"))
                .map_err(|e| format!("/proc/{pid}/mem: {e}"))?,
        ),
        RemotePath::ProcessVm | RemotePath::Smmu { .. } => None,
    };
    let len = c.touch_lines.clamp(1, 64) as usize * 64;
    let mut buf = vec![0u64; len / 8];
    let mut rng = Rng(seed);
    let (mut pos, mut n) = (0, 0u64);
    while !shared.stopped() && sys::now_ns() < stop {
        let page = pattern::next_page(c.pattern, pages, &mut pos, &mut rng);
        let addr = base + (page * PAGE_SIZE) as usize;
        buf[0] = page_content(salt, page, classes);
        match remote_access(c, pid, addr, &mut buf, mem.as_ref()) {
            Ok(()) => {
                n += 1;
                slot.touches.store(n, Ordering::Relaxed);
            }
            Err(Some(libc::EIO)) if mem.is_some() => {
                shared.proc_mem_eio.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        pattern::spin_ns(c.think_ns);
    }
    Ok(())
}

/// One access of `buf.len()` bytes at `addr` in process `pid`; the errno when it failed (the
/// range is PROT_NONE to a non-FOLL_FORCE caller, unmapped, or GUP faulted with -EFAULT),
/// None for a short transfer.
fn remote_access(
    c: &RemoteCaller,
    pid: i32,
    addr: usize,
    buf: &mut [u64],
    mem: Option<&std::fs::File>,
) -> std::result::Result<(), Option<i32>> {
    let bytes = std::mem::size_of_val(buf);
    let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: bytes };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: bytes };
    // SAFETY: both iovecs describe valid memory of `bytes` bytes (the remote one in the
    // other process, checked by the kernel); pread/pwrite get our own buffer.
    let r = unsafe {
        match (c.path, c.write, mem) {
            (RemotePath::ProcessVm, false, _) => libc::process_vm_readv(pid, &local, 1, &remote, 1, 0),
            (RemotePath::ProcessVm, true, _) => libc::process_vm_writev(pid, &local, 1, &remote, 1, 0),
            (RemotePath::ProcMem, false, Some(f)) => {
                libc::pread(f.as_raw_fd(), local.iov_base, bytes, addr as libc::off_t)
            }
            (RemotePath::ProcMem, true, Some(f)) => {
                libc::pwrite(f.as_raw_fd(), local.iov_base, bytes, addr as libc::off_t)
            }
            (RemotePath::ProcMem, _, None) | (RemotePath::Smmu { .. }, _, _) => -1,
        }
    };
    match r {
        r if r == bytes as isize => Ok(()),
        -1 => Err(std::io::Error::last_os_error().raw_os_error()),
        _ => Err(None),
    }
}

/// O_DIRECT I/O between pages of the thread's range and the ramdisk until `stop`: the block
/// layer pins the user pages (pin_user_pages_fast(), FOLL_WRITE when reading into them).
pub fn odirect_loop(
    shared: &Shared,
    t: &ThreadPlan,
    base: usize,
    write_buffer: bool,
    stop: u64,
    slot: &ThreadSlot,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(RAMDISK)
        .map_err(|e| format!("{RAMDISK}: {e}"))?;
    let mut rng = Rng(0x0d1 ^ u64::from(t.start_cpu));
    let (mut pos, mut n) = (0, 0u64);
    while !shared.stopped() && sys::now_ns() < stop {
        let page = t.first_page + pattern::next_page(t.pattern, t.pages, &mut pos, &mut rng);
        let addr = (base + (page * PAGE_SIZE) as usize) as *mut libc::c_void;
        let off = ((page % RAMDISK_PAGES) * PAGE_SIZE) as libc::off_t;
        let len = PAGE_SIZE as usize;
        // SAFETY: addr is a page of the thread's VMA (the kernel checks the mapping).
        let r = unsafe {
            if write_buffer {
                libc::pread(disk.as_raw_fd(), addr, len, off)
            } else {
                libc::pwrite(disk.as_raw_fd(), addr, len, off)
            }
        };
        if r == len as isize {
            n += 1;
            slot.touches.store(n, Ordering::Relaxed);
        }
        pattern::spin_ns(t.think_ns);
    }
    Ok(())
}

/// Registers `pages` at `base` as one io_uring fixed buffer (FOLL_LONGTERM pin) and holds the
/// pin until `stop`.
pub fn hold_pin(shared: &Shared, base: usize, pages: u64, stop: u64) -> Result<()> {
    // struct io_uring_params (120 bytes); zeroed asks for the defaults.
    let mut params = [0u8; 120];
    // SAFETY: a valid params buffer of the size the kernel expects (struct io_uring_params).
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(sys::os_err("io_uring_setup"));
    }
    let iov = libc::iovec { iov_base: base as *mut libc::c_void, iov_len: (pages * PAGE_SIZE) as usize };
    const IORING_REGISTER_BUFFERS: u32 = 0;
    // SAFETY: one valid iovec over our own VMA.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_register, fd as i32, IORING_REGISTER_BUFFERS, &iov, 1u32) };
    if r < 0 {
        return Err(sys::os_err("io_uring_register(IORING_REGISTER_BUFFERS)"));
    }
    while !shared.stopped() && sys::now_ns() < stop {
        sys::sleep_ns(1_000_000);
    }
    // SAFETY: closing our own io_uring fd unpins the buffer.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
