//! Devices with a secondary MMU over process memory: DMA engines that fault translations in
//! through a driver's get_user_pages() and stay coherent through an MMU notifier, or that
//! pin their buffers for good (pin_user_pages(FOLL_LONGTERM), VFIO/RDMA style).
//!
//! HMM-based drivers (hmm_range_fault()) treat a protnone PTE as absent and always fault;
//! the notifier mode here models drivers that use GUP, which is what the GUP policy changes.

use bevy_ecs::prelude::*;

use crate::config::{DeviceMode, GupPath, MapSize};
use crate::engine::{Event, Nanos};
use crate::kernel::{Faulter, Kernel};
use crate::machine::{MAX_NODES, Nid};
use crate::mm::PageIdx;
use crate::mm::gup::{
    FOLL_FORCE, FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_UNLOCKABLE, FOLL_WRITE, GupError, get_user_pages,
};
use crate::mm::mmu_notifier::{SPTE_VALID, SPTE_WRITABLE, map_secondary, touch_secondary, touch_secondary_if};
use crate::sched::{AccessStream, Task, TaskNuma};
use crate::stats::Source;

/// Whose context the driver's GUP runs in.
#[derive(Clone, Copy, Debug)]
pub enum DriverContext {
    /// A kernel worker (no mm) running on `cpu`.
    Worker { pid: u32, cpu: u32 },
    /// The owning process's thread.
    Owner(Entity),
}

/// A device doing DMA to one VMA of a process through its secondary MMU.
#[derive(Component)]
pub struct Device {
    pub name: String,
    pub nid: Nid,
    pub mm: Entity,
    /// The buffer: global index of its first page, and its length.
    pub base: PageIdx,
    pub len: u64,
    pub smmu: Entity,
    pub mode: DeviceMode,
    pub gup_path: GupPath,
    pub map_size: MapSize,
    pub write: bool,
    pub context: DriverContext,
    pub access: AccessStream,
    pub touch_lines: u64,
    pub think_ns: Nanos,
    pub quantum: Nanos,
    pub fault_cost: Nanos,
    pub stop: Option<Nanos>,
    /// Pin mode: the buffer is pinned and mapped.
    pub pinned: bool,
}

impl Device {
    /// The driver's GUP flags. The short-term pins of process_vm_rw() and O_DIRECT are
    /// dropped when the copy is done, so they are modelled as a reference (FOLL_GET), not a
    /// held pin; O_DIRECT's GUP-fast attempt bails to slow GUP on a protnone PTE in every
    /// era but v6.2–v6.4 with FOLL_FORCE, which it does not pass, so it is not modelled.
    /// FOLL_UNLOCKABLE where the caller hands GUP a `locked`: process_vm_rw_single_vec()'s
    /// pin_user_pages_remote() and the slow path of pin_user_pages_fast() (O_DIRECT);
    /// /proc/PID/mem's get_user_page_vma_remote(), gupdev's get_user_pages_remote() and
    /// VFIO's vaddr_get_pfns() (6.12.118) pass NULL.
    fn gup_flags(&self) -> u32 {
        let write = if self.write { FOLL_WRITE } else { 0 };
        match (self.mode, self.gup_path) {
            (DeviceMode::Notifier, GupPath::ProcessVm | GupPath::ODirect) => FOLL_GET | FOLL_UNLOCKABLE | write,
            (DeviceMode::Notifier, GupPath::Driver) => FOLL_GET | write,
            (DeviceMode::Notifier, GupPath::ProcMem) => FOLL_GET | FOLL_FORCE | write,
            (DeviceMode::Pin, _) => FOLL_PIN | FOLL_LONGTERM | write,
        }
    }
}

/// Runs the driver's GUP for `page` in the device's context and maps the result.
fn driver_fault(
    k: &mut Kernel,
    d: &Device,
    tasks: &mut Query<(&Task, &mut TaskNuma)>,
    page: PageIdx,
) -> Result<Nanos, GupError> {
    let cost = match d.context {
        DriverContext::Worker { pid, cpu } => {
            let mut f = Faulter::kthread(k, pid, cpu, Source::Device);
            get_user_pages(k, d.mm, page, d.gup_flags(), &mut f)?
        }
        DriverContext::Owner(te) => {
            let (task, mut numa) = tasks.get_mut(te).expect("the owner thread exists");
            let mut f = Faulter::user(k, task, &mut numa, task.cpu, Source::Device, 0);
            get_user_pages(k, d.mm, page, d.gup_flags(), &mut f)?
        }
    };
    map_secondary(k, d.smmu, d.mm, page, d.write, d.map_size == MapSize::Pmd);
    Ok(cost)
}

/// The CPU and task the driver runs in (`current` for its trace events).
fn driver_current(d: &Device, tasks: &Query<(&Task, &mut TaskNuma)>) -> (u32, u32) {
    match d.context {
        DriverContext::Worker { pid, cpu } => (cpu, pid),
        DriverContext::Owner(te) => tasks.get(te).map_or((0, 0), |(t, _)| (t.cpu, t.pid)),
    }
}

/// Pin mode: pin_user_pages(FOLL_LONGTERM) over the whole buffer and map it.
fn pin_buffer(k: &mut Kernel, d: &Device, tasks: &mut Query<(&Task, &mut TaskNuma)>) {
    for page in d.base..d.base + d.len as PageIdx {
        // A failed pin (PROT_NONE or unmapped buffer) leaves the page unmapped; DMA to it
        // then faults like a notifier device would.
        let _ = driver_fault(k, d, tasks, page);
    }
}

/// Pin mode, at stop: unpin_user_pages() and unmap.
fn unpin_buffer(k: &mut Kernel, d: &Device) {
    let Kernel { smmus, pages, .. } = k;
    let mut s = smmus.get_mut(d.smmu).expect("devices own a secondary MMU");
    let base = s.base;
    for i in 0..s.entries().len() {
        if s.entries()[i] & SPTE_VALID != 0 {
            let slot = pages.slot(base + i as PageIdx);
            let pins = pages.slots.pins_mut(slot);
            *pins = pins.saturating_sub(1);
            s.zap(i..i + 1);
        }
    }
}

/// Handler of [`Event::DeviceTick`]: one quantum of DMA. A touch without a usable entry is
/// a translation fault resolved by the driver; an access through a stale entry is counted.
pub fn device_tick(
    In(e): In<Entity>,
    mut k: Kernel,
    mut devices: Query<&mut Device>,
    mut tasks: Query<(&Task, &mut TaskNuma)>,
) {
    let mut d = devices.get_mut(e).expect("ticking devices exist");
    let now = k.now();
    let (cpu, pid) = driver_current(&d, &tasks);
    k.trace_current(cpu, pid, now);
    if d.stop.is_some_and(|stop| now >= stop) {
        if d.pinned {
            unpin_buffer(&mut k, &d);
            d.pinned = false;
        }
        return;
    }
    if d.mode == DeviceMode::Pin && !d.pinned {
        pin_buffer(&mut k, &d, &mut tasks);
        d.pinned = true;
    }
    let need = SPTE_VALID | if d.write { SPTE_WRITABLE } else { 0 };
    let cost = k.topo.touch_costs(d.nid, d.touch_lines, d.think_ns);
    let (mut elapsed, mut touches, mut local) = (0, 0, 0);
    while elapsed < d.quantum {
        let touch = d.access.next_touch();
        let page = d.base + touch.offset;
        let frame_nid = match touch_secondary_if(&mut k, d.smmu, page, need, Some(d.base + touch.ahead)) {
            Some(nid) => nid,
            None => {
                elapsed += d.fault_cost.max(1);
                match driver_fault(&mut k, &d, &mut tasks, page) {
                    Ok(cost) => elapsed += cost,
                    // The caller waits its think time before the next access, as after
                    // one that succeeded (the guest's callers spin it after either).
                    Err(GupError::Fault) => {
                        elapsed += d.think_ns;
                        continue;
                    }
                }
                touch_secondary(&mut k, d.smmu, page)
            }
        };
        elapsed += cost[frame_nid as usize % MAX_NODES];
        touches += 1;
        local += u64::from(frame_nid == d.nid);
    }
    k.counters.touch(Source::Device, touches, local);
    k.queue.schedule_in(elapsed, Event::DeviceTick(e));
}
