//! `[[action]]` and `[[userfaultfd]]`: the system calls a workload makes on its VMAs.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Syscall {
    /// mprotect(PROT_NONE) on the VMA, and back to PROT_READ|PROT_WRITE after `protect_ms`.
    Mprotect,
    /// munmap() of the VMA.
    Munmap,
    /// UFFDIO_RWPROTECT with UFFDIO_RWPROTECT_MODE_RWP over the range of an RWP-registered
    /// VMA (7.3), and without it after `protect_ms`; it splits no VMA.
    UffdioRwprotect,
}

/// UFFDIO_REGISTER modes. Only read-write protection is modelled.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UffdMode {
    /// UFFDIO_REGISTER_MODE_RWP (7.3).
    #[default]
    Rwp,
}

/// A userfaultfd registered over one VMA, and the thread that handles its faults.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UserfaultfdConfig {
    pub process: String,
    pub vma: String,
    pub mode: UffdMode,
    /// UFFD_FEATURE_RWP_ASYNC: the kernel resolves RWP faults itself and no handler runs.
    pub rwp_async: bool,
    /// Sync mode: from an RWP fault until the handler thread's UFFDIO_RWPROTECT over the
    /// page wakes the faulting thread.
    pub handler_latency_us: u64,
}

impl Default for UserfaultfdConfig {
    fn default() -> Self {
        Self {
            process: String::new(),
            vma: String::new(),
            mode: UffdMode::Rwp,
            rwp_async: false,
            handler_latency_us: 20,
        }
    }
}

/// A system call the workload makes on a range of a VMA, once or periodically. A range
/// smaller than the VMA splits it (split_vma()) when the process is built.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActionConfig {
    pub syscall: Syscall,
    pub process: String,
    pub vma: String,
    /// Start of the range within the VMA.
    pub offset_mib: u64,
    /// Length of the range; the rest of the VMA when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len_mib: Option<u64>,
    pub start_ms: u64,
    /// How long the VMA stays PROT_NONE (mprotect); 0 keeps it so.
    pub protect_ms: u64,
    /// Repeat every `period_ms` (mprotect); 0 means once.
    pub period_ms: u64,
}

impl Default for ActionConfig {
    fn default() -> Self {
        Self {
            syscall: Syscall::Mprotect,
            process: String::new(),
            vma: String::new(),
            offset_mib: 0,
            len_mib: None,
            start_ms: 1000,
            protect_ms: 100,
            period_ms: 0,
        }
    }
}
