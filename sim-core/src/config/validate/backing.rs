//! The config checks of the memory kinds (`backing`, `memfd`, `hugetlb_page`, `mempolicy`):
//! each error names its key.

use super::check;
use crate::config::{Backing, Config, HugepageAdvice, HugetlbPage, Invalid, MemPolicy, MpolMode, VmConfig, VmaConfig};
use crate::version::Rules;

/// The kind keys of one mapping, whether a process's VMA or a VM's memory.
struct Mapping<'a> {
    /// The key prefix (`process[0].vma[1]`, `vm[0]`).
    at: String,
    /// The VMA's name (`ram` for a VM's memory).
    vma: String,
    /// The memfd name a `memfd` mapping maps.
    file: String,
    size_mib: u64,
    backing: Backing,
    memfd: &'a Option<String>,
    hugetlb_page: HugetlbPage,
    mempolicy: &'a Option<MemPolicy>,
    mergeable: bool,
    hugepage: Option<HugepageAdvice>,
    populate: bool,
}

impl Mapping<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.at)
    }
}

fn vma_mapping<'a>(pi: usize, p: &str, vi: usize, v: &'a VmaConfig) -> Mapping<'a> {
    Mapping {
        at: format!("process[{pi}].vma[{vi}]"),
        vma: v.name.clone(),
        file: v.memfd.clone().unwrap_or_else(|| format!("{p}/{}", v.name)),
        size_mib: v.size_mib,
        backing: v.backing,
        memfd: &v.memfd,
        hugetlb_page: v.hugetlb_page,
        mempolicy: &v.mempolicy,
        mergeable: v.mergeable,
        hugepage: v.hugepage,
        populate: v.populate_node.is_some(),
    }
}

fn vm_mapping(i: usize, v: &VmConfig) -> Mapping<'_> {
    Mapping {
        at: format!("vm[{i}]"),
        vma: "ram".into(),
        file: v.memfd.clone().unwrap_or_else(|| format!("{}/ram", v.name)),
        size_mib: v.memory_mib,
        backing: v.backing,
        memfd: &v.memfd,
        hugetlb_page: v.hugetlb_page,
        mempolicy: &v.mempolicy,
        mergeable: v.mergeable,
        hugepage: v.hugepage,
        populate: v.populate_node.is_some(),
    }
}

/// Every mapping with its owner's name: the processes' VMAs, then the VMs' memory.
fn mappings(c: &Config) -> Vec<(String, Mapping<'_>)> {
    let procs = c.process.iter().enumerate();
    let vmas = procs.flat_map(|(pi, p)| {
        p.vma.iter().enumerate().map(move |(vi, v)| (p.name.clone(), vma_mapping(pi, &p.name, vi, v)))
    });
    vmas.chain(c.vm.iter().enumerate().map(|(i, v)| (v.name.clone(), vm_mapping(i, v)))).collect()
}

/// MiB counted twice by summing every mapping's size: the second and later mappings of a
/// memfd map the first one's pages.
pub fn shared_mib(c: &Config) -> u64 {
    let all = mappings(c);
    let repeat = |i: usize, m: &Mapping| all[..i].iter().any(|(_, n)| n.backing == Backing::Memfd && n.file == m.file);
    all.iter()
        .enumerate()
        .filter(|(i, (_, m))| m.backing == Backing::Memfd && repeat(*i, m))
        .map(|(_, (_, m))| m.size_mib)
        .sum()
}

/// Checks every mapping's kind keys, the memfds' sizes, the hugetlb pool and the devices and
/// actions that need anonymous memory.
pub fn check_kinds(c: &Config) -> Result<(), Invalid> {
    let rules = Rules::of(c.kernel.version, None);
    let all = mappings(c);
    for (i, (owner, m)) in all.iter().enumerate() {
        check_mapping(c, m, &rules)?;
        if m.backing == Backing::Memfd {
            let first = all[..i].iter().find(|(_, n)| n.backing == Backing::Memfd && n.file == m.file);
            if let Some((first_owner, first)) = first {
                check(first_owner != owner, m.key("memfd"), format!("`{owner}` maps memfd `{}` twice", m.file))?;
                check(
                    first.size_mib == m.size_mib,
                    m.key(if m.at.starts_with("vm") { "memory_mib" } else { "size_mib" }),
                    format!(
                        "memfd `{}` is {} MiB ({}); every mapping of it maps all of it",
                        m.file, first.size_mib, first.at
                    ),
                )?;
            }
        }
    }
    check_pool(c, &all)?;
    check_users(c, &all)
}

fn check_mapping(c: &Config, m: &Mapping, rules: &Rules) -> Result<(), Invalid> {
    let vm = m.at.starts_with("vm");
    let b = m.backing;
    check(b != Backing::GuestMemfd || vm, m.key("backing"), "guest_memfd backs a [[vm]]'s memory only")?;
    check(
        b != Backing::GuestMemfd || rules.guest_memfd,
        m.key("backing"),
        format!(
            "guest_memfd with a memory policy needs kernel.version 6.18 or later (got `{}`)",
            c.kernel.version.name()
        ),
    )?;
    check(m.memfd.is_none() || b == Backing::Memfd, m.key("memfd"), "names a file only with backing = \"memfd\"")?;
    check(
        m.hugetlb_page == HugetlbPage::Size2M || b == Backing::Hugetlbfs,
        m.key("hugetlb_page"),
        "applies only with backing = \"hugetlbfs\"",
    )?;
    if b != Backing::Anon {
        let kind = b.name();
        check(
            !m.mergeable,
            m.key("mergeable"),
            format!("KSM merges private anonymous memory only; ksm_madvise() leaves a {kind} mapping alone"),
        )?;
        let advice_ok = match b {
            Backing::Memfd => m.hugepage != Some(HugepageAdvice::Nohugepage),
            _ => m.hugepage.is_none(),
        };
        check(
            advice_ok,
            m.key("hugepage"),
            if b == Backing::Memfd {
                "MADV_NOHUGEPAGE on a memfd is not modelled (\"madvise\" is, for shmem_enabled = \"advise\")".into()
            } else {
                format!(
                    "THP advice applies to anonymous memory and memfds; {kind} memory has 4 KiB or its own huge pages"
                )
            },
        )?;
    }
    check(
        !(m.populate && b == Backing::GuestMemfd),
        m.key("populate_node"),
        "guest_memfd pages are placed at the vCPU's first fault (use mempolicy)",
    )?;
    if b == Backing::Hugetlbfs {
        let mib = m.hugetlb_page.mib();
        check(
            m.size_mib.is_multiple_of(mib),
            m.key(if vm { "memory_mib" } else { "size_mib" }),
            format!("a hugetlbfs mapping is a whole number of {mib} MiB pages"),
        )?;
    }
    if let Some(pol) = m.mempolicy {
        let nodes = c.machine.nodes;
        check(!pol.nodes.is_empty(), m.key("mempolicy.nodes"), "needs at least one node")?;
        let bad = pol.nodes.iter().find(|&&n| n >= nodes);
        check(
            bad.is_none(),
            m.key("mempolicy.nodes"),
            format!("node {} is not below machine.nodes ({nodes})", bad.unwrap_or(&0)),
        )?;
        check(
            pol.mode != MpolMode::Preferred || pol.nodes.len() == 1,
            m.key("mempolicy.nodes"),
            "`preferred` takes one node",
        )?;
    }
    Ok(())
}

/// The boot-time pool must fit: 1 GiB pages first, then 2 MiB ones, round-robin over the
/// nodes as the reservation at boot makes them.
fn check_pool(c: &Config, all: &[(String, Mapping)]) -> Result<(), Invalid> {
    let mut free = vec![c.machine.memory_per_node_mib; c.machine.nodes as usize];
    for size in [HugetlbPage::Size1G, HugetlbPage::Size2M] {
        let mut huge = all.iter().filter(|(_, m)| m.backing == Backing::Hugetlbfs && m.hugetlb_page == size);
        let count: u64 = huge.clone().map(|(_, m)| m.size_mib / size.mib()).sum();
        if !reserve(&mut free, size.mib(), count) {
            let at = huge.next_back().map_or_else(String::new, |(_, m)| m.key("hugetlb_page"));
            let msg = format!("{count} huge pages of {} MiB do not fit the nodes' memory", size.mib());
            return Err((at, msg));
        }
    }
    Ok(())
}

/// Takes `count` pages of `mib` round-robin from `free` (per node), passing over full nodes.
pub fn reserve(free: &mut [u64], mib: u64, count: u64) -> bool {
    let mut next = 0;
    for _ in 0..count {
        let Some(n) = (0..free.len()).map(|i| (next + i) % free.len()).find(|&n| free[n] >= mib) else {
            return false;
        };
        free[n] -= mib;
        next = (n + 1) % free.len();
    }
    true
}

/// Devices need GUP (not on guest_memfd memory); mprotect/munmap actions need anonymous
/// memory (mprotect() and munmap() of one mapper of a memfd are not modelled).
fn check_users(c: &Config, all: &[(String, Mapping)]) -> Result<(), Invalid> {
    let backing = |process: &str, vma: &str| {
        let named = |(owner, m): &&(String, Mapping)| owner == process && m.vma == vma;
        all.iter().find(named).map_or(Backing::Anon, |(_, m)| m.backing)
    };
    for (di, d) in c.device.iter().enumerate() {
        check(
            backing(&d.process, &d.vma) != Backing::GuestMemfd,
            format!("device[{di}].process"),
            "guest_memfd memory has no user mapping for a driver's GUP",
        )?;
    }
    for (ai, a) in c.action.iter().enumerate() {
        let b = backing(&a.process, &a.vma);
        check(
            b == Backing::Anon,
            format!("action[{ai}].vma"),
            format!("mprotect/munmap actions apply to anonymous VMAs, not {}", b.name()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reserve;

    #[test]
    fn the_pool_is_reserved_round_robin_passing_over_full_nodes() {
        let mut free = vec![1024, 3000];
        assert!(reserve(&mut free, 1024, 3));
        assert_eq!(free, [0, 952]);
        assert!(!reserve(&mut free, 1024, 1));
    }
}
