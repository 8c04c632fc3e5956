//! The GUP path table of docs/ORACLE.md ("The GUP path table"), cell by cell: what the real kernels
//! did, under QEMU, when one access path from node 1 met a 64 MiB buffer (16384 pages) on
//! node 0 that one scan pass had made protnone. Each cell is (hinting faults, pages
//! migrated), the median of 3 rounds; the kernels' noise is 1–10 faults (an idle control
//! took 1–2), and on 6.1.192 about 13 pages were not yet protnone in 2 of 3 rounds.
//!
//! Columns: Debian's 6.1.192 (`kernel.version = "6.1-debian12"`), Debian's 6.12.117
//! (`"6.12"`), and 6.12 with "mm/gup: don't implicitly set FOLL_HONOR_NUMA_FAULT" reverted
//! (`"6.12"` with `gup_policy = "implicit-force"`, the v6.5 rule).

use bevy_ecs::entity::Entity;
use sim_core::config::{Config, GupPolicy, KernelVersion, MachineConfig};
use sim_core::kernel::{Faulter, Kernel};
use sim_core::mm::gup::{FOLL_FORCE, FOLL_GET, FOLL_PIN, FOLL_WRITE, get_user_pages};
use sim_core::mm::memory::handle_mm_fault;
use sim_core::mm::numa_balancing::change_prot_numa;
use sim_core::mm::{Mm, PageIdx};
use sim_core::sim::Sim;
use sim_core::stats::Source;

const PAGES: u64 = 16384;

/// How the access reaches the buffer.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// A CPU load from a thread on `nid` (handle_mm_fault() on each protnone PTE).
    Cpu(u8),
    /// A GUP caller on node 1 with these flags (a process of its own: its statistics are
    /// not the buffer owner's, like a kernel worker's).
    Gup(u32),
}

/// (hinting faults, pages migrated) on each of the three kernels.
type Measured = [(u64, u64); 3];

/// The rows: the path, its GUP flags, and what the kernels measured.
const TABLE: [(&str, Path, Measured); 9] = [
    ("CPU read from node 1", Path::Cpu(1), [(16395, 16386), (16394, 16386), (16393, 16385)]),
    ("CPU read from node 0 (local)", Path::Cpu(0), [(16389, 1), (16387, 1), (16388, 0)]),
    // process_vm_rw_single_vec(): pin_user_pages_remote(), FOLL_WRITE for writes.
    ("process_vm_readv", Path::Gup(FOLL_PIN), [(16372, 16372), (1, 0), (16386, 16386)]),
    ("process_vm_writev", Path::Gup(FOLL_PIN | FOLL_WRITE), [(16372, 16372), (16386, 16386), (16387, 16385)]),
    // mem_rw() → access_remote_vm() with FOLL_FORCE.
    ("/proc/PID/mem read", Path::Gup(FOLL_GET | FOLL_FORCE), [(1, 1), (0, 0), (16387, 16387)]),
    ("/proc/PID/mem write", Path::Gup(FOLL_GET | FOLL_FORCE | FOLL_WRITE), [(2, 2), (16385, 16385), (16387, 16386)]),
    // O_DIRECT: pin_user_pages_fast(), FOLL_WRITE when the read lands in the buffer.
    (
        "O_DIRECT read into the buffer",
        Path::Gup(FOLL_PIN | FOLL_WRITE),
        [(16391, 16386), (16392, 16387), (16393, 16386)],
    ),
    ("O_DIRECT write from the buffer", Path::Gup(FOLL_PIN), [(16391, 16386), (5, 1), (16392, 16387)]),
    ("idle (control)", Path::Gup(0), [(1, 1), (2, 1), (2, 1)]),
];

/// The kernels' spread: 1–10 faults of noise, plus the pages 6.1.192 had not yet made
/// protnone (13).
const TOLERANCE: u64 = 16;

fn columns() -> [(KernelVersion, Option<GupPolicy>); 3] {
    [
        (KernelVersion::V6_1Debian12, None),
        (KernelVersion::V6_12, None),
        (KernelVersion::V6_12, Some(GupPolicy::ImplicitForce)),
    ]
}

/// The buffer on node 0, made protnone by one change_prot_numa() pass (the owner has two
/// threads, so the scanner does not skip pages on its node).
fn protnone_buffer(version: KernelVersion, gup: Option<GupPolicy>) -> (Sim, Entity, PageIdx) {
    let mut config =
        Config { machine: MachineConfig { memory_per_node_mib: 256, ..Default::default() }, ..Default::default() };
    config.kernel.version = version;
    config.kernel.gup_policy = gup;
    let mut sim = Sim::new(&config);
    let mm = sim.add_process("owner");
    let vma = sim.add_vma(mm, "buf", PAGES);
    sim.populate(mm, vma, 0);
    let base = sim.vma_base(mm, vma);
    sim.world.get_mut::<Mm>(mm).unwrap().nr_threads = 2;
    let v = sim.world.get::<Mm>(mm).unwrap().vmas[vma].clone();
    let updated = sim.with_kernel(|k| change_prot_numa(k, mm, &v, v.start, v.end(), None)).pte_updates;
    assert_eq!(updated, PAGES);
    (sim, mm, base)
}

/// Runs `path` over every page; returns (hinting faults, pages migrated).
fn access(sim: &mut Sim, mm: Entity, base: PageIdx, path: Path) -> (u64, u64) {
    sim.with_kernel(|k: &mut Kernel| {
        for page in base..base + PAGES as PageIdx {
            match path {
                Path::Cpu(nid) => {
                    let cpu = u32::from(nid) * k.topo.cpus_per_node;
                    let mut f = Faulter::kthread(k, 500, cpu, Source::Cpu);
                    handle_mm_fault(k, mm, page, false, &mut f).unwrap();
                }
                Path::Gup(0) => {}
                Path::Gup(flags) => {
                    let mut f = Faulter::kthread(k, 501, k.topo.cpus_per_node, Source::Device);
                    get_user_pages(k, mm, page, flags, &mut f).unwrap();
                    *k.pages.pins_mut(page) = k.pages.pins(page).saturating_sub(u8::from(flags & FOLL_PIN != 0));
                }
            }
        }
        (k.counters.vmstat.numa_hint_faults, k.counters.vmstat.numa_pages_migrated)
    })
}

#[test]
fn every_cell_of_the_gup_path_table_matches_the_real_kernels() {
    let mut disagreements = Vec::new();
    for (row, path, kernel) in TABLE {
        for (col, (version, gup)) in columns().into_iter().enumerate() {
            let (mut sim, mm, base) = protnone_buffer(version, gup);
            let (faults, migrated) = access(&mut sim, mm, base, path);
            let (want_faults, want_migrated) = kernel[col];
            if faults.abs_diff(want_faults) > TOLERANCE || migrated.abs_diff(want_migrated) > TOLERANCE {
                disagreements.push(format!(
                    "{row} on {} {gup:?}: sim {faults}/{migrated}, kernel {want_faults}/{want_migrated}",
                    version.name()
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
