//! One workload process: its VMAs carved out of a PROT_NONE reservation, populated by first
//! touch on their node, its threads touching them, and its mprotect/munmap actions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use guest::{ActionKind, ActionPlan, PAGE_SIZE, ProcessPlan, ThreadPlan, Touch, VmaBacking, VmaPlan, page_content};

use crate::pattern::{self, Rng};
use crate::shared::{self, FAILED, READY, Shared, node_cpus};
use crate::smmu::{Smmu, Walk};
use crate::sys::{self, Result};
use crate::uffd::Uffd;

/// The reservation holding this process's VMAs, for the SIGSEGV handler.
static RESERVED_START: AtomicUsize = AtomicUsize::new(0);
static RESERVED_END: AtomicUsize = AtomicUsize::new(0);
static SHARED: AtomicUsize = AtomicUsize::new(0);
/// The plan's memfds, by index, as init created them before forking.
static MEMFDS: OnceLock<Vec<i32>> = OnceLock::new();

/// Creates the plan's memfds (in init, before any fork, so that every process inherits them).
pub fn create_memfds(plan: &guest::Plan) -> Result<()> {
    let fds = plan.memfds.iter().map(|m| sys::memfd(&m.name, m.pages * PAGE_SIZE)).collect::<Result<Vec<_>>>()?;
    MEMFDS.set(fds).map_err(|_| "the memfds were created twice".to_string())
}

/// A VMA as mapped: its address and plan.
#[derive(Clone, Copy)]
struct Mapped<'a> {
    base: usize,
    plan: &'a VmaPlan,
    salt: u64,
}

/// Runs process `pi` of the plan (in a forked child); returns when its threads are done.
pub fn run_process(shared: &'static Shared, plan: &'static guest::Plan, pi: usize, first_slot: usize) -> Result<()> {
    let p = &plan.processes[pi];
    let nr_cpus = plan.nodes * plan.cpus_per_node;
    let slot = &shared.procs[pi];
    sys::set_name(&p.name);
    slot.pid.store(std::process::id() as i32, Ordering::Relaxed);
    let vmas = map_vmas(p, pi)?;
    install_segv_handler(shared);
    for (vi, v) in vmas.iter().enumerate() {
        if let Some(node) = v.plan.populate_node {
            populate(v, plan, node)?;
        }
        slot.vma_base[vi].store(v.base as u64, Ordering::Relaxed);
    }
    let uffds = register_uffds(shared, &vmas)?;
    let smmus = open_smmus(shared, plan, pi, &vmas)?;
    p.threads
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let (t, v, ts) = (t.clone(), vmas[t.vma], &shared.threads[first_slot + ti]);
            let seed = plan.seed ^ ((first_slot + ti) as u64) << 32;
            let (base, salt, classes, populated) = (v.base, v.salt, v.plan.content_classes, populated(plan, v.plan));
            let waits_for_handler = v.plan.uffd_rwp == Some(false);
            let smmu = match t.touch {
                Touch::Smmu { smmu } => smmus.iter().find(|(i, _)| *i == smmu).map(|(_, d)| Arc::clone(d)),
                _ => None,
            };
            std::thread::spawn(move || {
                ts.pid.store(std::process::id() as i32, Ordering::Relaxed);
                ts.tid.store(sys::gettid(), Ordering::Relaxed);
                let page = Page { base, salt, classes, populated, waits_for_handler };
                let ctx = ThreadCtx { shared, plan, nr_cpus, seed, slot: ts, smmu };
                if let Err(e) = run_thread(&ctx, &t, page) {
                    eprintln!("numasim-guest: {}: {e}", t.name);
                    shared.procs[pi].state.store(FAILED, Ordering::Release);
                }
            })
        })
        .count();
    slot.state.store(READY, Ordering::Release);
    let go = shared::wait_go(shared);
    run_actions(shared, &p.actions, &vmas, &uffds, go, plan.duration_ms)?;
    // Threads blocked on a PROT_NONE or unmapped range never return: end with the run, not
    // with the last thread (the process's exit ends them). Asleep until then, as numasim's
    // idle main thread is.
    shared.wait_stopped();
    Ok(())
}

/// `ProcSlot::state` values.
/// Maps every VMA at its own place in one PROT_NONE reservation, at least a guard page apart
/// (adjacent anonymous VMAs with equal flags would merge) and aligned to 2 MiB (so THP, when
/// enabled, can back all of it) or to its huge page size.
fn map_vmas(p: &ProcessPlan, pi: usize) -> Result<Vec<Mapped<'_>>> {
    let span = |v: &VmaPlan| ((v.pages * PAGE_SIZE) as usize + PAGE_SIZE as usize).next_multiple_of(alignment(v));
    let len = p.vmas.iter().map(|v| span(v) + alignment(v)).sum::<usize>() + PAGE_SIZE as usize;
    let res = sys::mmap_anon(0, len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_NORESERVE)? as usize;
    RESERVED_START.store(res, Ordering::Relaxed);
    RESERVED_END.store(res + len, Ordering::Relaxed);
    let mut at = res + PAGE_SIZE as usize;
    let mut out = Vec::new();
    for (vi, v) in p.vmas.iter().enumerate() {
        at = at.next_multiple_of(alignment(v));
        let bytes = (v.pages * PAGE_SIZE) as usize;
        let base = map_vma(v, at)?;
        if v.mergeable {
            sys::madvise(base, bytes, libc::MADV_MERGEABLE, "madvise(MADV_MERGEABLE)")?;
        }
        match v.hugepage {
            Some(true) => sys::madvise(base, bytes, libc::MADV_HUGEPAGE, "madvise(MADV_HUGEPAGE)")?,
            Some(false) => sys::madvise(base, bytes, libc::MADV_NOHUGEPAGE, "madvise(MADV_NOHUGEPAGE)")?,
            None => {}
        }
        out.push(Mapped { base: base as usize, plan: v, salt: ((pi as u64) << 8) | vi as u64 });
        at += span(v);
    }
    Ok(out)
}

fn alignment(v: &VmaPlan) -> usize {
    const HUGE: usize = 2 << 20;
    match v.backing {
        VmaBacking::Hugetlb { page_kib } => (page_kib as usize * 1024).max(HUGE),
        VmaBacking::Anon | VmaBacking::Memfd { .. } => HUGE,
    }
}

/// mmap()s `v` at `at` as its backing says.
fn map_vma(v: &VmaPlan, at: usize) -> Result<*mut u8> {
    let (bytes, rw) = ((v.pages * PAGE_SIZE) as usize, libc::PROT_READ | libc::PROT_WRITE);
    match v.backing {
        VmaBacking::Anon => sys::mmap_anon(at, bytes, rw, libc::MAP_PRIVATE | libc::MAP_FIXED),
        VmaBacking::Memfd { file } => {
            let fd = MEMFDS
                .get()
                .and_then(|fds| fds.get(file))
                .ok_or(format!("{}: memfd {file} was not created", v.name))?;
            sys::mmap_shared(at, bytes, rw, *fd)
        }
        VmaBacking::Hugetlb { page_kib } => {
            // MAP_HUGE_* is log2 of the page size above MAP_HUGE_SHIFT.
            let size = ((page_kib * 1024).trailing_zeros() as i32) << libc::MAP_HUGE_SHIFT;
            let flags = libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_HUGETLB | size;
            sys::mmap_anon(at, bytes, rw, flags).map_err(|e| format!("{}: {e} (the hugetlb pool is short?)", v.name))
        }
    }
}

/// Whether `v`'s pages are there before the start: populated by this process, or, for a
/// memfd, by another of its mappers.
fn populated(plan: &guest::Plan, v: &VmaPlan) -> bool {
    let by_another = match v.backing {
        VmaBacking::Memfd { file } => plan.memfds.get(file).is_some_and(|m| m.populated),
        VmaBacking::Anon | VmaBacking::Hugetlb { .. } => false,
    };
    v.populate_node.is_some() || by_another
}

/// First-touches every page of `v` from a thread bound to `node`'s CPUs, writing its
/// content; a CPU-less node's pages come from a thread on node 0 whose memory policy binds
/// them to the node, and which exits with its policy, so that the workload's threads keep the
/// default policy that NUMA balancing migrates under.
fn populate(v: &Mapped<'_>, plan: &guest::Plan, node: u32) -> Result<()> {
    let cpu_less = node >= plan.nodes;
    let (cpus, nr_cpus) = (node_cpus(plan, if cpu_less { 0 } else { node }), plan.nodes * plan.cpus_per_node);
    let m = *v;
    let (base, salt, classes, pages) = (m.base, m.salt, m.plan.content_classes, m.plan.pages);
    std::thread::spawn(move || {
        sys::set_affinity(&cpus, nr_cpus)?;
        if cpu_less {
            sys::bind_memory(node)?;
        }
        let page = Page { base, salt, classes, populated: true, waits_for_handler: false };
        for i in 0..pages {
            page.fill(i);
        }
        Ok(())
    })
    .join()
    .map_err(|_| "the populating thread panicked".to_string())?
}

/// How to reach and fill the pages of one VMA.
#[derive(Clone, Copy)]
struct Page {
    base: usize,
    salt: u64,
    classes: u32,
    populated: bool,
    /// Registered for sync RWP: the thread times the accesses the handler resolved.
    waits_for_handler: bool,
}

impl Page {
    fn ptr(&self, page: u64) -> *mut u64 {
        (self.base + (page * PAGE_SIZE) as usize) as *mut u64
    }

    /// Writes the page's content (its first word; the rest stays zero).
    fn fill(&self, page: u64) {
        // SAFETY: page is inside the mapped VMA; a PROT_NONE range is caught by the handler.
        unsafe { std::ptr::write_volatile(self.ptr(page), page_content(self.salt, page, self.classes)) };
    }

    /// Reads `lines` cache lines of the page.
    fn read(&self, page: u64, lines: u32) -> u64 {
        let p = self.ptr(page);
        (0..lines as usize)
            // SAFETY: as in fill(); offsets stay inside the page (64 lines of 64 bytes).
            .map(|l| unsafe { std::ptr::read_volatile(p.add((l % 64) * 8)) })
            .fold(0, u64::wrapping_add)
    }
}

/// What a workload thread runs with besides its plan.
struct ThreadCtx {
    shared: &'static Shared,
    plan: &'static guest::Plan,
    nr_cpus: u32,
    seed: u64,
    slot: &'static shared::ThreadSlot,
    /// The secondary MMU a [`Touch::Smmu`] thread touches through.
    smmu: Option<Arc<Smmu>>,
}

fn run_thread(c: &ThreadCtx, t: &ThreadPlan, page: Page) -> Result<()> {
    let (shared, slot) = (c.shared, c.slot);
    sys::set_name(&t.name);
    sys::set_affinity(&[t.start_cpu], c.nr_cpus)?;
    let go = shared::wait_go(shared);
    sys::sleep_until(go + t.start_ms * 1_000_000);
    sys::set_affinity(&t.cpus, c.nr_cpus)?;
    let stop = shared::stop_time(go, t.stop_ms, c.plan.duration_ms);
    match (t.touch, &c.smmu) {
        (Touch::Cpu, _) => cpu_loop(shared, t, page, stop, slot, c.seed),
        (Touch::ODirect { write_buffer }, _) => {
            crate::remote::odirect_loop(shared, t, page.base, write_buffer, stop, slot)
        }
        (Touch::LongtermPin, _) => crate::remote::hold_pin(shared, page.base, t.pages, stop),
        (Touch::Smmu { .. }, Some(smmu)) => {
            let walk = Walk {
                first_page: t.first_page,
                pages: t.pages,
                pattern: t.pattern,
                think_ns: t.think_ns,
                stop,
                seed: c.seed,
            };
            crate::smmu::touch_loop(shared, c.plan, smmu, &walk, slot)
        }
        (Touch::Smmu { smmu }, None) => Err(format!("{}: secondary MMU {smmu} was not opened", t.name)),
    }
}

/// Opens the secondary MMUs this process's threads touch through, one per device (a VM's
/// vCPUs share their VM's, as they share its EPT), attached to the process's own mm.
fn open_smmus(
    shared: &'static Shared,
    plan: &guest::Plan,
    pi: usize,
    vmas: &[Mapped<'_>],
) -> Result<Vec<(usize, Arc<Smmu>)>> {
    let mut out: Vec<(usize, Arc<Smmu>)> = Vec::new();
    for t in &plan.processes[pi].threads {
        let Touch::Smmu { smmu } = t.touch else { continue };
        if out.iter().any(|(i, _)| *i == smmu) {
            continue;
        }
        let v = &vmas[plan.smmus[smmu].vma];
        out.push((smmu, Arc::new(Smmu::open(shared, plan, smmu, 0, v.base as u64, v.plan.pages)?)));
    }
    Ok(out)
}

/// CPU touches until `stop`: pages by pattern, `touch_lines` loads each, a store for the share
/// of writes and for the first touch of a page nobody populated.
fn cpu_loop(
    shared: &Shared,
    t: &ThreadPlan,
    page: Page,
    stop: u64,
    slot: &shared::ThreadSlot,
    seed: u64,
) -> Result<()> {
    let mut rng = Rng(seed);
    let mut touched = vec![0u64; if page.populated { 0 } else { t.pages.div_ceil(64) as usize }];
    let (mut pos, mut n, mut sink) = (0, 0u64, 0u64);
    while !shared.stopped() {
        let off = pattern::next_page(t.pattern, t.pages, &mut pos, &mut rng);
        let p = t.first_page + off;
        let first = !page.populated && touched[(off / 64) as usize] & (1 << (off % 64)) == 0;
        if first {
            touched[(off / 64) as usize] |= 1 << (off % 64);
        }
        let before = page.waits_for_handler.then(|| (slot.uffd_rwp_faults.load(Ordering::Acquire), sys::now_ns()));
        if first || (t.write_fraction > 0.0 && rng.chance(t.write_fraction)) {
            page.fill(p);
        }
        sink = sink.wrapping_add(page.read(p, t.touch_lines));
        if let Some((handled, at)) = before {
            record_rwp_wait(shared, slot, handled, at);
        }
        n += 1;
        slot.touches.store(n, Ordering::Relaxed);
        pattern::spin_ns(t.think_ns);
        if n % 64 == 0 && sys::now_ns() >= stop {
            break;
        }
    }
    std::hint::black_box(sink);
    Ok(())
}

/// Adds an access's time (fault, handler, wake and retry, plus the few loads of the touch
/// itself) to the run's RWP round trips when the handler resolved a fault of this thread
/// since `handled` was read: a sync RWP fault blocks the thread until that wake.
fn record_rwp_wait(shared: &Shared, slot: &shared::ThreadSlot, handled: u64, at: u64) {
    if slot.uffd_rwp_faults.load(Ordering::Acquire) != handled {
        shared.uffd_rwp_waits.fetch_add(1, Ordering::Relaxed);
        shared.uffd_rwp_wait_ns.fetch_add(sys::now_ns() - at, Ordering::Relaxed);
    }
}

/// Registers every VMA the plan asks for with userfaultfd RWP, after populating, and starts a
/// handler thread for each sync one. One userfaultfd per VMA, by VMA index.
fn register_uffds(shared: &'static Shared, vmas: &[Mapped<'_>]) -> Result<Vec<Option<Arc<Uffd>>>> {
    vmas.iter()
        .map(|v| {
            let Some(rwp_async) = v.plan.uffd_rwp else { return Ok(None) };
            let uffd = Arc::new(Uffd::register_rwp(v.base, (v.plan.pages * PAGE_SIZE) as usize, rwp_async)?);
            if !rwp_async {
                let handler = Arc::clone(&uffd);
                std::thread::spawn(move || {
                    if let Err(e) = handler.handle(shared) {
                        eprintln!("numasim-guest: userfaultfd handler: {e}");
                    }
                });
            }
            Ok(Some(uffd))
        })
        .collect()
}

/// Carries out the process's mprotect/munmap/UFFDIO_RWPROTECT actions at their times, in
/// time order.
fn run_actions(
    shared: &Shared,
    actions: &[ActionPlan],
    vmas: &[Mapped<'_>],
    uffds: &[Option<Arc<Uffd>>],
    go: u64,
    duration_ms: u64,
) -> Result<()> {
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (ai, a) in actions.iter().enumerate() {
        match a.kind {
            ActionKind::Munmap => events.push((a.start_ms, ai, true)),
            ActionKind::Mprotect { protect_ms, period_ms } | ActionKind::Rwprotect { protect_ms, period_ms } => {
                let mut at = a.start_ms;
                while at < duration_ms {
                    events.push((at, ai, true));
                    if protect_ms > 0 {
                        events.push((at + protect_ms, ai, false));
                    }
                    let rearm = matches!(a.kind, ActionKind::Rwprotect { .. }) && period_ms > 0;
                    if period_ms == 0 || protect_ms == 0 && !rearm {
                        break;
                    }
                    at += period_ms;
                }
            }
        }
    }
    events.sort();
    for (at, ai, on) in events {
        if at >= duration_ms || shared.stopped() {
            break;
        }
        sys::sleep_until(go + at * 1_000_000);
        let a = &actions[ai];
        let addr = vmas[a.vma].base + (a.first_page * PAGE_SIZE) as usize;
        let len = (a.pages * PAGE_SIZE) as usize;
        match (a.kind, on) {
            (ActionKind::Munmap, _) => sys::munmap(addr, len)?,
            (ActionKind::Rwprotect { .. }, on) => {
                let uffd = uffds[a.vma].as_ref().ok_or("UFFDIO_RWPROTECT on a VMA without userfaultfd")?;
                uffd.rwprotect(addr, len, on)?;
            }
            (_, true) => sys::mprotect(addr, len, libc::PROT_NONE)?,
            (_, false) => sys::mprotect(addr, len, libc::PROT_READ | libc::PROT_WRITE)?,
        }
    }
    Ok(())
}

/// A touch of a PROT_NONE or unmapped range waits (like numasim's blocked thread): the
/// handler sleeps a millisecond and returns to retry the access; once the run is over the
/// thread exits. A fault outside the reservation is a bug: the default action ends the process.
fn install_segv_handler(shared: &'static Shared) {
    SHARED.store(shared as *const Shared as usize, Ordering::Relaxed);
    // SAFETY: sigaction with a handler that only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
    }
}

extern "C" fn on_segv(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let inside = (RESERVED_START.load(Ordering::Relaxed)..RESERVED_END.load(Ordering::Relaxed)).contains(&addr);
    // SAFETY: SHARED was set before the handler was installed and is never unmapped.
    let shared = unsafe { &*(SHARED.load(Ordering::Relaxed) as *const Shared) };
    // SAFETY: signal(), nanosleep() and exit() are async-signal-safe.
    unsafe {
        if !inside {
            libc::signal(libc::SIGSEGV, libc::SIG_DFL);
            return;
        }
        if shared.stopped() {
            libc::syscall(libc::SYS_exit, 0);
        }
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
        libc::nanosleep(&ts, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two mappings of one memfd are one set of pages: a store through one is a load through
    /// the other, and the pages another mapper populated count as populated.
    #[test]
    fn two_mappings_of_one_memfd_share_their_pages() {
        let memfd = guest::MemfdPlan { name: "t".into(), pages: 4, populated: true };
        let plan = guest::Plan { memfds: vec![memfd], ..guest::Plan::default() };
        create_memfds(&plan).unwrap();
        let v = VmaPlan { name: "m".into(), pages: 4, backing: VmaBacking::Memfd { file: 0 }, ..VmaPlan::default() };
        let len = 16 * PAGE_SIZE as usize;
        let res = sys::mmap_anon(0, len, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_NORESERVE).unwrap() as usize;
        let (a, b) = (map_vma(&v, res).unwrap(), map_vma(&v, res + 8 * PAGE_SIZE as usize).unwrap());
        let page = PAGE_SIZE as usize;
        // SAFETY: both mappings are 4 pages long and readable and writable.
        unsafe { std::ptr::write_volatile(a.add(page) as *mut u64, 42) };
        // SAFETY: as above.
        assert_eq!(unsafe { std::ptr::read_volatile(b.add(page) as *const u64) }, 42);
        assert!(populated(&plan, &v) && !populated(&plan, &VmaPlan::default()));
    }
}
