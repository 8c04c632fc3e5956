//! `[[device]]`: DMA devices with a secondary MMU.

use serde::{Deserialize, Serialize};

use super::PatternKind;

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
}

/// How a device keeps its view of process memory.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceMode {
    /// Faults pages in with get_user_pages() and keeps them coherent through an MMU
    /// (interval) notifier, like ODP RDMA or an accelerator with its own page table.
    Notifier,
    /// pin_user_pages(FOLL_LONGTERM) at setup, like VFIO type1 or RDMA without ODP.
    Pin,
}

/// Whose context the driver's GUP runs in.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GupContext {
    /// A kernel worker thread on the device's node (no mm: no task statistics).
    Worker,
    /// The process's first thread (e.g. an ioctl): its CPU, node and statistics.
    Owner,
}

/// The user-space GUP path a notifier-mode device stands for: what its accesses are when
/// the oracle realises the scenario on a real kernel, and the GUP flags the model uses.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GupPath {
    /// process_vm_readv()/process_vm_writev(): pin_user_pages_remote(), FOLL_WRITE for writes.
    ProcessVm,
    /// O_DIRECT I/O on the buffer: pin_user_pages_fast(), FOLL_WRITE when reading into it.
    ODirect,
    /// /proc/PID/mem: access_remote_vm() with FOLL_FORCE (and FOLL_WRITE for writes).
    ProcMem,
    /// A driver's get_user_pages_remote() into its own page table, kept by an MMU notifier:
    /// the model's device itself; the oracle realises it with the gupdev module.
    Driver,
}

/// The largest mapping a device's page table makes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum MapSize {
    /// 4 KiB entries only.
    #[serde(rename = "4k")]
    Base,
    /// A 2 MiB entry where the host maps a THP (as KVM's EPT does), 4 KiB elsewhere.
    #[serde(rename = "2m")]
    Pmd,
}

/// A DMA device with a secondary MMU over one VMA of a process.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    pub name: String,
    /// The node the device is attached to.
    pub node: u32,
    pub process: String,
    pub vma: String,
    pub access: Access,
    pub mode: DeviceMode,
    /// The GUP path of a `notifier` device (ignored for `pin`).
    pub gup_path: GupPath,
    pub gup_context: GupContext,
    pub map_size: MapSize,
    pub pattern: PatternKind,
    pub hot_fraction: f64,
    pub hot_probability: f64,
    pub touch_lines: u32,
    pub think_ns: u64,
    /// DMA time per device event.
    pub quantum_us: u64,
    /// Device-side cost of a translation fault (round trip to the driver), on top of the
    /// kernel's fault work.
    pub fault_cost_ns: u64,
    pub start_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<u64>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            node: 0,
            process: String::new(),
            vma: String::new(),
            access: Access::Read,
            mode: DeviceMode::Notifier,
            gup_context: GupContext::Worker,
            gup_path: GupPath::ProcessVm,
            map_size: MapSize::Base,
            pattern: PatternKind::Uniform,
            hot_fraction: 0.1,
            hot_probability: 0.9,
            touch_lines: 16,
            think_ns: 0,
            quantum_us: 1000,
            fault_cost_ns: 5000,
            start_ms: 0,
            stop_ms: None,
        }
    }
}
