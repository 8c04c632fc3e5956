//! The memory-kind keys of a `[[process.vma]]` or a `[[vm]]`: `backing`, `hugetlb_page`,
//! `mempolicy` (what each kind does is in `mm/backing.rs`).

use serde::{Deserialize, Serialize};

/// What backs a VMA (`backing` on a `[[process.vma]]` or a `[[vm]]`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    /// mmap(MAP_PRIVATE | MAP_ANONYMOUS).
    #[default]
    Anon,
    /// memfd_create() mapped MAP_SHARED: shmem, mappable by another process.
    Memfd,
    /// A hugetlbfs file (or MAP_HUGETLB): pages from the boot-time pool.
    Hugetlbfs,
    /// KVM's guest_memfd (6.18+): guest memory no user page table maps.
    GuestMemfd,
}

impl Backing {
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anon => "anon",
            Backing::Memfd => "memfd",
            Backing::Hugetlbfs => "hugetlbfs",
            Backing::GuestMemfd => "guest_memfd",
        }
    }
}

/// The huge page size of a hugetlbfs VMA (`hugetlb_page`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum HugetlbPage {
    #[default]
    #[serde(rename = "2M")]
    Size2M,
    #[serde(rename = "1G")]
    Size1G,
}

impl HugetlbPage {
    /// 4 KiB pages per huge page.
    pub fn pages(self) -> u64 {
        match self {
            HugetlbPage::Size2M => 512,
            HugetlbPage::Size1G => 512 * 512,
        }
    }

    pub fn mib(self) -> u64 {
        self.pages() / 256
    }
}

/// mbind() modes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MpolMode {
    /// MPOL_BIND: the nearest allowed node to the faulting CPU.
    Bind,
    /// MPOL_PREFERRED: the one node given.
    Preferred,
    /// MPOL_INTERLEAVE: page by page over the nodes.
    Interleave,
}

/// A VMA's memory policy (`mempolicy = { mode = "...", nodes = [...] }`), as mbind() sets it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemPolicy {
    pub mode: MpolMode,
    pub nodes: Vec<u32>,
}
