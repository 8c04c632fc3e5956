//! Thin wrappers over the system calls the guest makes, each turning -1 into an error that
//! names the call.

use std::ffi::CString;
use std::io;

pub type Result<T> = std::result::Result<T, String>;

/// Formats the last OS error for `what`.
pub fn os_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("paths have no NUL")
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The calling thread's CPU time in nanoseconds (its sum_exec_runtime).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU this thread runs on, if the kernel can say.
pub fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu() takes no arguments.
    u32::try_from(unsafe { libc::sched_getcpu() }).ok()
}

pub fn sleep_ns(ns: u64) {
    std::thread::sleep(std::time::Duration::from_nanos(ns));
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) {
    let now = now_ns();
    if deadline_ns > now {
        sleep_ns(deadline_ns - now);
    }
}

pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Binds the calling thread to `cpus` (all CPUs when empty).
pub fn set_affinity(cpus: &[u32], nr_cpus: u32) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let all: Vec<u32> = (0..nr_cpus).collect();
    for &c in if cpus.is_empty() { &all[..] } else { cpus } {
        // SAFETY: c < CPU_SETSIZE (at most 1024 CPUs per node times 64 nodes is checked by the host).
        unsafe { libc::CPU_SET(c as usize, &mut set) };
    }
    // SAFETY: set is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 { Err(os_err(&format!("sched_setaffinity({cpus:?})"))) } else { Ok(()) }
}

/// Binds the calling thread's allocations to `node` (set_mempolicy(MPOL_BIND)): a CPU-less
/// node has no CPU whose first touch would place them there.
pub fn bind_memory(node: u32) -> Result<()> {
    let mask: u64 = 1 << node;
    // SAFETY: the mask is one word and maxnode (64) says so.
    let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, libc::MPOL_BIND, &mask as *const u64, 64u64) };
    if r != 0 {
        return Err(os_err(&format!("set_mempolicy(MPOL_BIND, node {node})")));
    }
    Ok(())
}

pub fn mount(src: &str, target: &str, fstype: &str) -> Result<()> {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f) = (cstr(src), cstr(target), cstr(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        return Err(os_err(&format!("mount {fstype} on {target}")));
    }
    Ok(())
}

/// An anonymous mapping; `shared` for memory the guest's processes share.
pub fn mmap_anon(addr: usize, len: usize, prot: i32, flags: i32) -> Result<*mut u8> {
    // SAFETY: an anonymous mapping; MAP_FIXED is only used inside our own reservation.
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED { Err(os_err(&format!("mmap({len} bytes)"))) } else { Ok(p as *mut u8) }
}

/// A memfd of `len` bytes, left open for the children forked after it to map.
pub fn memfd(name: &str, len: u64) -> Result<i32> {
    // SAFETY: memfd_create takes a NUL-terminated name and returns a descriptor or -1.
    let fd = unsafe { libc::memfd_create(cstr(name).as_ptr(), 0) };
    if fd < 0 {
        return Err(os_err(&format!("memfd_create({name})")));
    }
    // SAFETY: fd was just opened.
    if unsafe { libc::ftruncate(fd, len as libc::off_t) } < 0 {
        return Err(os_err(&format!("ftruncate(memfd {name}, {len})")));
    }
    Ok(fd)
}

pub fn mmap_shared(addr: usize, len: usize, prot: i32, fd: i32) -> Result<*mut u8> {
    let flags = libc::MAP_SHARED | libc::MAP_FIXED;
    // SAFETY: a file mapping placed inside our own reservation (MAP_FIXED).
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED { Err(os_err(&format!("mmap(memfd, {len} bytes)"))) } else { Ok(p as *mut u8) }
}

pub fn madvise(addr: *mut u8, len: usize, advice: i32, what: &str) -> Result<()> {
    // SAFETY: the range is one of our mappings.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    if r < 0 { Err(os_err(what)) } else { Ok(()) }
}

pub fn mprotect(addr: usize, len: usize, prot: i32) -> Result<()> {
    // SAFETY: the range is one of our mappings.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    if r < 0 { Err(os_err("mprotect")) } else { Ok(()) }
}

pub fn munmap(addr: usize, len: usize) -> Result<()> {
    // SAFETY: the range is one of our mappings and no Rust reference points into it.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    if r < 0 { Err(os_err("munmap")) } else { Ok(()) }
}

/// Loads a kernel module from `path` with `params` (finit_module(2)).
pub fn load_module(path: &str, params: &str) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let p = cstr(params);
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd and a NUL-terminated parameter string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), p.as_ptr(), 0) };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(os_err(&format!("finit_module({path})")));
    }
    Ok(())
}

pub fn fork() -> Result<i32> {
    // SAFETY: the caller is single-threaded when it forks (init, before any thread starts).
    let pid = unsafe { libc::fork() };
    if pid < 0 { Err(os_err("fork")) } else { Ok(pid) }
}

/// Waits for any child; None when there are none left.
pub fn wait_child() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: status is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
    (pid > 0).then_some((pid, status))
}

pub fn exit_process(code: i32) -> ! {
    // SAFETY: ends the process without running the parent's atexit handlers twice.
    unsafe { libc::_exit(code) }
}

pub fn poweroff() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    exit_process(1)
}

/// Opens serial port `path` (major 4, `minor`) for writing, in raw mode. The node is made by
/// hand: devtmpfs may not be mounted yet.
pub fn open_serial(path: &str, minor: u32) -> Result<std::fs::File> {
    let _ = std::fs::create_dir_all("/dev");
    let c = cstr(path);
    // SAFETY: a valid path; an existing node makes mknod fail harmlessly.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(4, minor)) };
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("{path}: {e}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data filled by tcgetattr on our own fd.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(f.as_raw_fd(), &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t);
    }
    Ok(f)
}

/// Waits until everything written to serial port `f` has left it (before power-off).
pub fn drain(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd of ours.
    unsafe { libc::tcdrain(f.as_raw_fd()) };
}

/// Names the calling thread (its comm, which traces print; the kernel keeps 15 bytes).
pub fn set_name(name: &str) {
    let c = cstr(&name.chars().take(15).collect::<String>());
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
}
