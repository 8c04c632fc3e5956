//! Secondary MMUs realised by the gupdev module (oracle/gupdev/): a device or a KVM-like vCPU
//! that reaches process memory through a page table of its own, fills what is missing through
//! GUP with the plan's flags and is kept coherent by gupdev's MMU notifier. One touch is an
//! ACCESS of one page, with a MAP first when the entry is missing (the device's fault).

use std::sync::atomic::Ordering;

use guest::{PAGE_SIZE, Pattern, Plan, SmmuPlan};

use crate::gupdev::{self, STATS_FIELDS};
use crate::pattern::{self, Rng};
use crate::shared::{self, Shared, SmmuSlot, ThreadSlot};
use crate::sys::{self, Result};

/// Pages a sequential toucher maps per miss: the ones it touches next (one GUP batch of the
/// module). A MAP from a kernel thread creates one (15–40 ms under TCG), which per page
/// would make a device far slower than the model's; the hinting faults are the same, one
/// per protnone page.
const FAULT_AROUND: u64 = 512;

/// Counters are published this long before each sample, so the sample sees them fresh.
const PUBLISH_LEAD_NS: u64 = 10_000_000;

/// Loads /gupdev.ko when the plan has secondary MMUs and checks its ABI. An error here is the
/// kernel refusing the module: the host reports it as bad input.
pub fn load_module(plan: &Plan) -> Result<()> {
    if plan.smmus.is_empty() {
        return Ok(());
    }
    sys::load_module(guest::GUPDEV_PATH, "")?;
    let dev = gupdev::Device::open().map_err(|e| format!("{}: {e}", gupdev::DEVICE))?;
    let v = dev.version().map_err(|e| format!("GUPDEV_IOC_VERSION: {e}"))?;
    if v.abi_version != gupdev::ABI_VERSION {
        return Err(format!("gupdev.ko has ABI version {}, the guest speaks {}", v.abi_version, gupdev::ABI_VERSION));
    }
    Ok(())
}

/// Pages gupdev devices still hold (references and pins), once every device is closed: 0
/// unless the module leaked.
pub fn held_pages() -> Result<u64> {
    gupdev::held_pages().map_err(|e| format!("/sys/module/gupdev/parameters/held_pages: {e}"))
}

/// One open, attached device.
pub struct Smmu {
    dev: gupdev::Device,
    plan: SmmuPlan,
    base: u64,
    len: u64,
    map_flags: u32,
    access_flags: u32,
    slot: &'static SmmuSlot,
}

impl Smmu {
    /// Opens device `si` of the plan over `pages` pages at `base` in process `pid` (0: ours).
    pub fn open(shared: &'static Shared, plan: &Plan, si: usize, pid: i32, base: u64, pages: u64) -> Result<Smmu> {
        let p = plan.smmus[si].clone();
        let err = |what: &str, e: std::io::Error| format!("{}: {what}: {e}", p.name);
        let dev = gupdev::Device::open().map_err(|e| err("open", e))?;
        let caps = dev.version().map_err(|e| err("GUPDEV_IOC_VERSION", e))?.caps;
        let len = pages * PAGE_SIZE;
        let node = p.kthread_node.map_or(-1, |n| n as i32);
        dev.attach(pid, p.notifier, base, len, node).map_err(|e| err("GUPDEV_IOC_ATTACH", e))?;
        let map_flags = map_flags(&p, caps);
        let access_flags = if p.write { gupdev::ACCESS_WRITE } else { 0 };
        Ok(Smmu { dev, plan: p, base, len, map_flags, access_flags, slot: &shared.smmus[si] })
    }

    /// One touch of page `page`: true when the device reached it (through its entry, mapped
    /// first when missing, with the `around` pages after it). False when GUP refused (a
    /// PROT_NONE or unmapped range).
    fn touch(&self, page: u64, around: u64) -> bool {
        let addr = self.base + page * PAGE_SIZE;
        match self.dev.access(addr, PAGE_SIZE, self.access_flags) {
            Ok(a) if a.accessed == 1 => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        self.dev.map(addr, around * PAGE_SIZE, self.map_flags).is_ok()
            && self.dev.access(addr, PAGE_SIZE, self.access_flags).is_ok_and(|a| a.accessed == 1)
    }

    /// Stores the device's counters where init samples them.
    fn publish(&self) {
        let Ok(s) = self.dev.stats() else { return };
        for (cell, v) in self.slot.stats.iter().zip(stats_values(&s)) {
            cell.store(v, Ordering::Relaxed);
        }
        self.slot.valid.store(1, Ordering::Release);
    }
}

/// MAP flags of `p` on a kernel with `caps`. FOLL_HONOR_NUMA_FAULT only exists from v6.5;
/// where it does not, every GUP without FOLL_FORCE honours hinting faults, so leaving it out
/// keeps the meaning (GUPDEV_CAP_IMPLICIT_NUMA_FAULT).
fn map_flags(p: &SmmuPlan, caps: u32) -> u32 {
    let mut f = 0;
    if p.write {
        f |= gupdev::MAP_WRITE;
    }
    if p.honor_numa_fault && caps & gupdev::CAP_HONOR_NUMA_FAULT != 0 {
        f |= gupdev::MAP_HONOR_NUMA_FAULT;
    }
    if p.kthread_node.is_some() {
        f |= gupdev::MAP_KTHREAD;
    }
    if p.pin {
        f |= gupdev::MAP_PIN_LONGTERM;
    }
    f
}

fn stats_values(s: &gupdev::Stats) -> [u64; STATS_FIELDS.len()] {
    [
        s.entries_valid,
        s.entries_pinned,
        s.entries_ref,
        s.invalidations,
        s.invalidations_protection_vma,
        s.entries_dropped,
        s.entries_skipped,
        s.stale_mappings,
        s.stale_mappings_max,
        s.stale_mapping_ns,
        s.stale_accesses,
        s.accesses,
        s.young_clear_calls,
        s.young_test_calls,
        s.young_answered,
        s.young_secondary_only_protnone,
        s.hint_faults,
        s.hint_faults_local,
        s.pages_migrated,
        s.map_retries,
        s.invalidations_clear,
        s.invalidations_unmap,
        s.invalidations_other,
        s.entries_refilled,
    ]
}

/// What a toucher of a secondary MMU touches, and for how long.
pub struct Walk {
    pub first_page: u64,
    pub pages: u64,
    pub pattern: Pattern,
    pub think_ns: u64,
    pub stop: u64,
    pub seed: u64,
}

/// Touches pages of `w` through `smmu` until `w.stop` or the end of the run, publishing the
/// device's counters before each sample. A pinning device pins the whole range first.
pub fn touch_loop(shared: &Shared, plan: &Plan, smmu: &Smmu, w: &Walk, slot: &ThreadSlot) -> Result<()> {
    if smmu.plan.pin {
        smmu.dev
            .map(smmu.base, smmu.len, smmu.map_flags)
            .map_err(|e| format!("{}: GUPDEV_IOC_MAP (long-term pin): {e}", smmu.plan.name))?;
    }
    let go = shared::wait_go(shared);
    let sample_ns = plan.sample_ms.max(1) * 1_000_000;
    let mut next_publish = go;
    let mut rng = Rng(w.seed);
    let (mut pos, mut n) = (0, 0u64);
    while !shared.stopped() && sys::now_ns() < w.stop {
        let off = pattern::next_page(w.pattern, w.pages, &mut pos, &mut rng);
        if smmu.touch(w.first_page + off, fault_around(w.pattern, w.pages - off)) {
            n += 1;
            slot.touches.store(n, Ordering::Relaxed);
        }
        pattern::spin_ns(w.think_ns);
        let now = sys::now_ns();
        if now >= next_publish {
            smmu.publish();
            next_publish = publish_time(go, now, sample_ns);
        }
    }
    smmu.publish();
    Ok(())
}

/// Pages to map on a miss with `left` pages of the range from the missed one on.
fn fault_around(pattern: Pattern, left: u64) -> u64 {
    match pattern {
        Pattern::Sequential => left.min(FAULT_AROUND),
        Pattern::Uniform | Pattern::HotCold { .. } => 1,
    }
}

/// The next publishing time after `now`: [`PUBLISH_LEAD_NS`] before the next sample.
fn publish_time(go: u64, now: u64, sample_ns: u64) -> u64 {
    let k = (now + PUBLISH_LEAD_NS - go) / sample_ns + 1;
    go + k * sample_ns - PUBLISH_LEAD_NS.min(sample_ns / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kthread_node: Option<u32>, honor: bool, write: bool) -> SmmuPlan {
        SmmuPlan {
            name: "device/d".into(),
            kind: guest::SmmuKind::Device,
            process: 0,
            vma: 0,
            notifier: gupdev::NOTIFIER_SMART,
            kthread_node,
            write,
            honor_numa_fault: honor,
            pin: false,
        }
    }

    #[test]
    fn honor_numa_fault_is_passed_only_where_the_kernel_has_the_flag() {
        let p = plan(None, true, false);
        assert_eq!(map_flags(&p, gupdev::CAP_HONOR_NUMA_FAULT), gupdev::MAP_HONOR_NUMA_FAULT);
        assert_eq!(map_flags(&p, gupdev::CAP_IMPLICIT_NUMA_FAULT), 0);
        let w = plan(Some(1), false, true);
        assert_eq!(map_flags(&w, gupdev::CAP_HONOR_NUMA_FAULT), gupdev::MAP_WRITE | gupdev::MAP_KTHREAD);
    }

    #[test]
    fn only_a_sequential_toucher_maps_ahead_and_never_past_its_range() {
        assert_eq!(fault_around(Pattern::Sequential, 1000), FAULT_AROUND);
        assert_eq!(fault_around(Pattern::Sequential, 3), 3);
        assert_eq!(fault_around(Pattern::Uniform, 1000), 1);
    }

    #[test]
    fn counters_are_published_just_before_each_sample() {
        let ms = 1_000_000;
        assert_eq!(publish_time(0, 0, 100 * ms), 90 * ms);
        assert_eq!(publish_time(0, 90 * ms, 100 * ms), 190 * ms);
        assert_eq!(publish_time(1000, 1000 + 95 * ms, 100 * ms), 1000 + 190 * ms);
    }
}
