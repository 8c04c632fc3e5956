//! `[[vm]]` and `[kvm]`: KVM guests and the EPT's fault path.

use serde::{Deserialize, Serialize};

use super::{Backing, HugepageAdvice, HugetlbPage, MemPolicy, ThreadConfig, is_default};

/// A KVM guest: a process whose guest memory is one VMA, and vCPU threads that touch it
/// through the EPT/NPT (a secondary MMU).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    pub name: String,
    pub memory_mib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub populate_node: Option<u32>,
    pub mergeable: bool,
    pub content_classes: u32,
    /// madvise() THP advice on the guest memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugepage: Option<HugepageAdvice>,
    /// The vCPU threads (their `vma` is the guest memory and need not be given).
    pub vcpus: ThreadConfig,
    /// What backs the memory: `anon` (default), `memfd`, `hugetlbfs` or `guest_memfd` (a
    /// `[[vm]]` only, 6.18+).
    #[serde(skip_serializing_if = "is_default")]
    pub backing: Backing,
    /// For `memfd`: the file's name; mappings naming the same file share its pages (default:
    /// `<process>/<vma>`, and `<vm>/ram` for a VM's memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memfd: Option<String>,
    /// For `hugetlbfs`: the huge page size, `2M` (default) or `1G`.
    #[serde(skip_serializing_if = "is_default")]
    pub hugetlb_page: HugetlbPage,
    /// mbind() on the range: `{ mode = "bind" | "preferred" | "interleave", nodes = [...] }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mempolicy: Option<MemPolicy>,
    /// The EPT maps every page `populate_node` faulted in, writable, at the start: a guest
    /// that has written all its memory since boot (its own memset at boot, or a long run).
    /// Without it the EPT starts empty and maps what the vCPUs touch.
    #[serde(skip_serializing_if = "is_default")]
    pub populate_ept: bool,
    /// Where the NUMA scanner's pass stands when the run starts (mm->numa_scan_offset), in
    /// MiB from the start of the guest memory: a guest that has been running as long as the
    /// kernel takes to scan that far (docs/MODEL.md, "big-vm"). Simplified: the memory
    /// before it carries no history of the pass (no protnone PTE, no last_cpupid, no fault
    /// statistics), and the rest of the state starts as at boot.
    #[serde(skip_serializing_if = "is_default")]
    pub numa_scan_offset_mib: u64,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            memory_mib: 256,
            populate_node: None,
            mergeable: false,
            content_classes: 0,
            hugepage: None,
            vcpus: ThreadConfig::default(),
            backing: Backing::Anon,
            memfd: None,
            hugetlb_page: HugetlbPage::Size2M,
            mempolicy: None,
            populate_ept: false,
            numa_scan_offset_mib: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KvmConfig {
    /// KVM passes FOLL_HONOR_NUMA_FAULT in hva_to_pfn_slow() (patch 3 of the series); false
    /// models a KVM that never set it. Only matters under `gup_policy = "explicit"`.
    pub honor_numa_fault: bool,
    /// Cost of an EPT violation exit and kvm_faultin_pfn(), on top of GUP's work.
    pub ept_violation_cost_ns: u64,
}

impl Default for KvmConfig {
    fn default() -> Self {
        Self { honor_numa_fault: true, ept_violation_cost_ns: 3000 }
    }
}
