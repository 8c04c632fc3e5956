//! The memory kinds of a config as the guest builds them: a `memfd` VMA maps, MAP_SHARED, a
//! memfd init creates before it forks (every mapper of one name maps the same file, as a
//! vhost-user or virtiofs daemon maps a guest's RAM); a `hugetlbfs` VMA is
//! mmap(MAP_HUGETLB) of 2 MiB pages from the pool that `hugepages=` reserves on the kernel
//! command line, node by node as numasim's boot reserves it. guest_memfd needs a real VM, a
//! memory policy needs mbind() and 1 GiB pages a pool the guest's small nodes did not give:
//! the guest builds none of them.

use guest::{MemfdPlan, ProcessPlan, VmaBacking};
use sim_core::config::{Backing, Config, HugetlbPage, MemPolicy};

use crate::OracleError;

/// One mapping of the config: where it sits in the plan and what backs it.
struct Mapping<'a> {
    /// The key prefix (`process[0].vma[1]`, `vm[0]`).
    at: String,
    /// Plan indices: process (VMs after the processes) and VMA.
    process: usize,
    vma: usize,
    /// The memfd's name (`<process>/<vma>` or `<vm>/ram` unless `memfd` names it).
    file: String,
    backing: Backing,
    hugetlb_page: HugetlbPage,
    mempolicy: &'a Option<MemPolicy>,
    populates: bool,
}

fn mappings(c: &Config) -> Vec<Mapping<'_>> {
    let mut out = Vec::new();
    for (pi, p) in c.process.iter().enumerate() {
        for (vi, v) in p.vma.iter().enumerate() {
            out.push(Mapping {
                at: format!("process[{pi}].vma[{vi}]"),
                process: pi,
                vma: vi,
                file: v.memfd.clone().unwrap_or_else(|| format!("{}/{}", p.name, v.name)),
                backing: v.backing,
                hugetlb_page: v.hugetlb_page,
                mempolicy: &v.mempolicy,
                populates: v.populate_node.is_some(),
            });
        }
    }
    for (i, v) in c.vm.iter().enumerate() {
        out.push(Mapping {
            at: format!("vm[{i}]"),
            process: c.process.len() + i,
            vma: 0,
            file: v.memfd.clone().unwrap_or_else(|| format!("{}/ram", v.name)),
            backing: v.backing,
            hugetlb_page: v.hugetlb_page,
            mempolicy: &v.mempolicy,
            populates: v.populate_node.is_some(),
        });
    }
    out
}

/// Sets the backing of every VMA of `processes` (the plan's, VMs after the config's
/// processes) and returns the memfds init creates; refuses what the guest cannot build.
pub fn assign(c: &Config, processes: &mut [ProcessPlan]) -> Result<Vec<MemfdPlan>, OracleError> {
    let all = mappings(c);
    let mut memfds: Vec<MemfdPlan> = Vec::new();
    for m in &all {
        if m.mempolicy.is_some() {
            return Err(OracleError::Input(format!(
                "{}.mempolicy: the guest does not mbind() its VMAs; memory policies run in the model",
                m.at
            )));
        }
        let plan = &mut processes[m.process].vmas[m.vma];
        plan.backing = match m.backing {
            Backing::Anon => VmaBacking::Anon,
            Backing::Hugetlbfs if m.hugetlb_page == HugetlbPage::Size1G => {
                return Err(OracleError::Input(format!(
                    "{}.hugetlb_page = \"1G\": the guest's pool of 1 GiB pages came out empty (mmap ENOMEM in a 6.12 \
                     boot with `hugepagesz=1G hugepages=0:1,1:0` and 1280 MiB nodes); the oracle builds 2M pages only",
                    m.at
                )));
            }
            Backing::Hugetlbfs => VmaBacking::Hugetlb { page_kib: m.hugetlb_page.mib() * 1024 },
            Backing::Memfd => VmaBacking::Memfd { file: memfd_index(&mut memfds, &all, m, plan.pages) },
            Backing::GuestMemfd => {
                return Err(OracleError::Input(format!(
                    "{}.backing = \"guest_memfd\": the guest runs no VM (KVM is a gupdev toucher); guest_memfd runs \
                     in the model",
                    m.at
                )));
            }
        };
    }
    Ok(memfds)
}

/// The index of `m`'s memfd in `memfds`, added on its first mapping.
fn memfd_index(memfds: &mut Vec<MemfdPlan>, all: &[Mapping], m: &Mapping, pages: u64) -> usize {
    if let Some(i) = memfds.iter().position(|f| f.name == m.file) {
        return i;
    }
    let populated = all.iter().any(|n| n.backing == Backing::Memfd && n.file == m.file && n.populates);
    memfds.push(MemfdPlan { name: m.file.clone(), pages, populated });
    memfds.len() - 1
}

/// The kernel command line that reserves the hugetlbfs VMAs' 2 MiB pages at boot (empty
/// without any): `hugepagesz=2M hugepages=NODE:COUNT,...`, the counts per node round-robin
/// from node 0 as numasim's hugetlb_reserve() takes them, so the kernel and the model start
/// from the same pools (hugepages_setup() takes the node form from 5.16; without it 6.12
/// splits the count over parallel boot threads that each start at node 0).
/// Simplified: a node without room is not passed over, as the model's boot passes it.
pub fn boot_args(c: &Config) -> String {
    let huge = mappings(c).into_iter().filter(|m| m.backing == Backing::Hugetlbfs);
    let count: u64 = huge.map(|m| vma_mib(c, &m) / HugetlbPage::Size2M.mib()).sum();
    if count == 0 {
        return String::new();
    }
    let nodes = u64::from(c.machine.nodes);
    let per_node: Vec<String> =
        (0..nodes).map(|n| format!("{n}:{}", count / nodes + u64::from(n < count % nodes))).collect();
    format!(" hugepagesz=2M hugepages={}", per_node.join(","))
}

fn vma_mib(c: &Config, m: &Mapping) -> u64 {
    match c.process.get(m.process) {
        Some(p) => p.vma[m.vma].size_mib,
        None => c.vm[m.process - c.process.len()].memory_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let src = sim_core::config::Source { origin: "test".into(), text: text.into() };
        sim_core::config::load(&src, &[]).expect("valid test config")
    }

    const SHARED: &str = "[[process]]\nname = \"a\"\n[[process.vma]]\nname = \"ring\"\nsize_mib = 8\nbacking = \"memfd\"\n\
        memfd = \"r\"\n[[process.vma]]\nname = \"heap\"\nsize_mib = 4\n[[process]]\nname = \"b\"\n[[process.vma]]\n\
        name = \"ring\"\nsize_mib = 8\nbacking = \"memfd\"\nmemfd = \"r\"\npopulate_node = 1\n";

    #[test]
    fn the_mappers_of_one_memfd_share_one_file_populated_if_any_populates() {
        let plan = crate::plan::plan_of(&config(SHARED)).unwrap();
        assert_eq!(plan.memfds, [MemfdPlan { name: "r".into(), pages: 2048, populated: true }]);
        let backing = |p: usize, v: usize| plan.processes[p].vmas[v].backing;
        assert_eq!(
            (backing(0, 0), backing(0, 1), backing(1, 0)),
            (VmaBacking::Memfd { file: 0 }, VmaBacking::Anon, VmaBacking::Memfd { file: 0 })
        );
        let unpopulated = config(&SHARED.replace("populate_node = 1\n", ""));
        assert!(!crate::plan::plan_of(&unpopulated).unwrap().memfds[0].populated);
    }

    #[test]
    fn a_vms_memfd_is_its_ram_and_a_daemon_maps_it_by_name() {
        let c = config(
            "[[vm]]\nname = \"g\"\nmemory_mib = 8\nbacking = \"memfd\"\n[vm.vcpus]\ncount = 1\n[[process]]\nname = \"d\"\n\
             [[process.vma]]\nname = \"ram\"\nsize_mib = 8\nbacking = \"memfd\"\nmemfd = \"g/ram\"\n",
        );
        let plan = crate::plan::plan_of(&c).unwrap();
        assert_eq!(plan.memfds.len(), 1);
        assert_eq!(plan.memfds[0].name, "g/ram");
        assert!(plan.processes.iter().all(|p| p.vmas[0].backing == VmaBacking::Memfd { file: 0 }));
    }

    #[test]
    fn hugetlbfs_pages_are_reserved_per_node_round_robin_and_1g_pages_are_refused() {
        let c = config(
            "[machine]\nnodes = 2\nmemory_per_node_mib = 4096\n[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"a\"\n\
             size_mib = 10\nbacking = \"hugetlbfs\"\n[[process.vma]]\nname = \"b\"\nsize_mib = 4\nbacking = \"hugetlbfs\"\n",
        );
        assert_eq!(boot_args(&c), " hugepagesz=2M hugepages=0:4,1:3");
        let plan = crate::plan::plan_of(&c).unwrap();
        assert!(plan.processes[0].vmas.iter().all(|v| v.backing == VmaBacking::Hugetlb { page_kib: 2048 }));
        assert_eq!(boot_args(&config(SHARED)), "");
        let gib = config(
            "[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"a\"\nsize_mib = 1024\nbacking = \"hugetlbfs\"\n\
             hugetlb_page = \"1G\"\n",
        );
        let Err(OracleError::Input(msg)) = crate::plan::plan_of(&gib) else { panic!("1G pages must be refused") };
        assert!(msg.contains("process[0].vma[0].hugetlb_page"), "{msg}");
    }

    #[test]
    fn guest_memfd_and_memory_policies_are_refused_with_their_keys() {
        let c = config(
            "[kernel]\nversion = \"7.3\"\n[[vm]]\nname = \"g\"\nmemory_mib = 8\nbacking = \"guest_memfd\"\n\
             [vm.vcpus]\ncount = 1\n",
        );
        let Err(OracleError::Input(msg)) = crate::plan::plan_of(&c) else { panic!("guest_memfd must be refused") };
        assert!(msg.contains("vm[0].backing"), "{msg}");
        let c = config(
            "[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"a\"\nsize_mib = 4\n\
             mempolicy = { mode = \"bind\", nodes = [0] }\n",
        );
        let Err(OracleError::Input(msg)) = crate::plan::plan_of(&c) else { panic!("mbind must be refused") };
        assert!(msg.contains("process[0].vma[0].mempolicy"), "{msg}");
    }
}
