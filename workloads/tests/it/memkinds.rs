//! Memory kinds (`backing`, `memfd`, `hugetlb_page`, `mempolicy`): each kind's scanner,
//! fault and migration rules as `sim-core/src/mm/backing.rs` states them, and the config's
//! refusals, each naming its key.

use crate::common;

use common::*;
use sim_core::config::{Source, load};
use sim_core::limits::{PAGE_STATE_BYTES, estimate_bytes};
use sim_core::machine::PgData;
use sim_core::mm::Mm;
use sim_core::sched::numa::TaskNuma;
use sim_core::sim::Sim;

/// Frames in use per node.
fn used(sim: &mut Sim) -> Vec<u64> {
    let mut q = sim.world.query::<&PgData>();
    let mut nodes: Vec<(u8, u64)> = q.iter(&sim.world).map(|p| (p.nid, p.present_pages - p.free_pages)).collect();
    nodes.sort_unstable();
    nodes.into_iter().map(|(_, u)| u).collect()
}

/// get_mm_rss() of the process named `name`.
fn rss(sim: &mut Sim, name: &str) -> u64 {
    let mut q = sim.world.query::<&Mm>();
    q.iter(&sim.world).find(|m| m.name == name).map(|m| m.rss).expect("the process exists")
}

/// Shared (not private) hinting faults in the memory rows of every thread's statistics of
/// the process with pid `tgid`: task_faults_idx(NUMA_MEM, nid, 0).
fn shared_faults(sim: &mut Sim, tgid: u32) -> i64 {
    let mm_of = |sim: &mut Sim, e| sim.world.get::<Mm>(e).map(|m| m.pid);
    let mut q = sim.world.query::<&TaskNuma>();
    let tasks: Vec<TaskNuma> = q.iter(&sim.world).cloned().collect();
    let nodes = 2;
    tasks
        .into_iter()
        .filter(|t| mm_of(sim, t.mm) == Some(tgid) && !t.numa_faults.is_empty())
        .map(|t| (0..nodes).map(|nid| t.numa_faults[2 * nid]).sum::<i64>())
        .sum()
}

fn pid_of(sim: &mut Sim, name: &str) -> u32 {
    let mut q = sim.world.query::<&Mm>();
    q.iter(&sim.world).find(|m| m.name == name).map(|m| m.pid).expect("the process exists")
}

const TWO_MAPPERS: &str = r#"
[run]
duration_ms = 4000

[[process]]
name = "a"
[[process.vma]]
name = "buf"
size_mib = 32
backing = "memfd"
memfd = "f"
populate_node = 0
[[process.thread]]
name = "t"
count = 2
cpus = [0, 1]
vma = "buf"

[[process]]
name = "b"
[[process.vma]]
name = "buf"
size_mib = 32
backing = "memfd"
memfd = "f"
[[process.thread]]
name = "t"
count = 2
cpus = [4, 5]
vma = "buf"
"#;

/// Two processes mapping one memfd use one set of frames, both count them in their RSS, and
/// their hinting faults on each other's pages are shared (TNF_SHARED); as two anonymous
/// VMAs each process has its own frames and no shared faults.
#[test]
fn a_memfd_mapped_by_two_processes_shares_its_frames_and_its_faults() {
    let (mut sim, out) = run(&config(TWO_MAPPERS, &[]));
    let pages = 32 * 256;
    assert_eq!(used(&mut sim).iter().sum::<u64>(), pages, "one set of frames");
    assert_eq!((rss(&mut sim, "a"), rss(&mut sim, "b")), (pages, pages));
    assert!(metric(&out, "vmstat.numa_hint_faults") > 0.0);
    let (a, b) = (pid_of(&mut sim, "a"), pid_of(&mut sim, "b"));
    assert!(shared_faults(&mut sim, a) + shared_faults(&mut sim, b) > 0, "TNF_SHARED faults across processes");
    assert!(joined_across(&mut sim) > 0, "task_numa_group() joins a thread to the other process's group");

    let anon = TWO_MAPPERS.replace("backing = \"memfd\"\nmemfd = \"f\"\n", "");
    let (mut sim, _) = run(&config(&anon, &["process.1.vma.0.populate_node=1"]));
    assert_eq!(used(&mut sim).iter().sum::<u64>(), 2 * pages, "two anonymous VMAs, two sets of frames");
    let (a, b) = (pid_of(&mut sim, "a"), pid_of(&mut sim, "b"));
    assert_eq!(shared_faults(&mut sim, a) + shared_faults(&mut sim, b), 0);
    assert_eq!(joined_across(&mut sim), 0);
}

/// With `shmem_enabled = always` a memfd's 2 MiB blocks are THPs in its page cache: one folio
/// per block for both mappers (one set of frames), mapped by PMD in each (`thp_file_mapped`
/// twice per folio). On 6.12 the scanner changes them at the PMD and their hinting faults are
/// shared; 6.1 never scans them. The default, `never`, keeps 4 KiB pages.
#[test]
fn a_memfd_thp_is_one_folio_mapped_by_pmd_in_every_mapper() {
    let (pages, blocks) = (32 * 256, 16.0);
    let (mut sim, out) = run(&config(TWO_MAPPERS, &["kernel.shmem_enabled=always", "kernel.version=6.12"]));
    assert_eq!(metric(&out, "vmstat.thp_file_alloc"), blocks);
    assert_eq!(metric(&out, "vmstat.thp_file_mapped"), 2.0 * blocks, "each mapper maps each THP by PMD");
    assert_eq!(used(&mut sim).iter().sum::<u64>(), pages, "one set of frames");
    assert_eq!((rss(&mut sim, "a"), rss(&mut sim, "b")), (pages, pages));
    let huge = metric(&out, "vmstat.numa_huge_pte_updates");
    assert!(huge > 0.0, "change_huge_pmd() on the memfd's PMDs");
    assert_eq!(metric(&out, "vmstat.numa_pte_updates"), huge * 512.0, "no 4 KiB PTE in a THP-backed memfd");
    let (a, b) = (pid_of(&mut sim, "a"), pid_of(&mut sim, "b"));
    assert!(shared_faults(&mut sim, a) + shared_faults(&mut sim, b) > 0, "TNF_SHARED on a PMD fault");

    let (_, out) = run(&config(TWO_MAPPERS, &["kernel.shmem_enabled=always", "kernel.version=6.1-debian12"]));
    assert_eq!(metric(&out, "vmstat.thp_file_alloc"), blocks);
    assert_eq!(metric(&out, "vmstat.numa_huge_pte_updates"), 0.0, "6.1 never scans a memfd");

    let (_, out) = run(&config(TWO_MAPPERS, &["kernel.version=6.12"]));
    assert_eq!(metric(&out, "vmstat.numa_huge_pte_updates"), 0.0);
    assert!(out.summary.metrics.get("vmstat.thp_file_alloc").is_none(), "reported only when shmem THPs may be");
}

/// `advise` gives THPs to the faults of a VMA with MADV_HUGEPAGE only; `force` and
/// `within_size` to every whole block of the file. The populating mapper decides.
#[test]
fn shmem_enabled_advise_needs_madv_hugepage_on_the_faulting_vma() {
    let thps = |set: &[&str]| {
        let mut set = set.to_vec();
        set.extend(["run.duration_ms=10", "run.sample_ms=10"]);
        metric(&run(&config(TWO_MAPPERS, &set)).1, "vmstat.thp_file_alloc")
    };
    let advised = "process.0.vma.0.hugepage=madvise";
    assert_eq!(thps(&["kernel.shmem_enabled=advise"]), 0.0);
    assert_eq!(thps(&["kernel.shmem_enabled=advise", "process.1.vma.0.hugepage=madvise"]), 0.0, "b faults none");
    assert_eq!(thps(&["kernel.shmem_enabled=advise", advised]), 16.0);
    assert_eq!(thps(&["kernel.shmem_enabled=force"]), 16.0);
    assert_eq!(thps(&["kernel.shmem_enabled=within_size"]), 16.0);
}

/// A node without a free 2 MiB block above its watermark gives a shmem fault a 4 KiB page
/// (`thp_file_fallback`), unless the faulting VMA has MADV_HUGEPAGE, whose fault may reclaim
/// and so takes the nearest node with room (vma_thp_gfp_mask()), as an anonymous THP does.
#[test]
fn a_full_node_falls_back_to_4_kib_unless_the_vma_has_madv_hugepage() {
    let short =
        ["kernel.shmem_enabled=always", "machine.memory_per_node_mib=24", "run.duration_ms=10", "run.sample_ms=10"];
    let (mut sim, out) = run(&config(TWO_MAPPERS, &short));
    let (alloc, fallback) = (metric(&out, "vmstat.thp_file_alloc"), metric(&out, "vmstat.thp_file_fallback"));
    assert!(alloc > 0.0 && fallback > 0.0, "node 0 holds some THPs, then falls back: {alloc}, {fallback}");
    assert_eq!(used(&mut sim).iter().sum::<u64>(), 32 * 256, "every page still has one frame");
    let mut advised = short.to_vec();
    advised.push("process.0.vma.0.hugepage=madvise");
    let (mut sim, out) = run(&config(TWO_MAPPERS, &advised));
    assert_eq!(metric(&out, "vmstat.thp_file_fallback"), 0.0);
    assert_eq!(metric(&out, "vmstat.thp_file_alloc"), 16.0);
    assert!(used(&mut sim)[1] > 0, "the rest went to node 1");
}

/// A misplaced memfd THP migrates whole on 6.12 (migrate_misplaced_folio() has no mapcount
/// test for a swap-backed folio), and its source frames are freed: one set of frames stays.
#[test]
fn a_migrating_memfd_thp_moves_for_every_mapper() {
    let set = ["kernel.shmem_enabled=always", "kernel.version=6.12", "run.duration_ms=8000"];
    let (mut sim, out) = run(&config(TWO_MAPPERS, &set));
    let moved = metric(&out, "vmstat.thp_migration_success");
    assert!(moved > 0.0, "b's threads on node 1 pull THPs");
    assert_eq!(metric(&out, "vmstat.numa_pages_migrated"), moved * 512.0, "whole THPs only");
    assert_eq!(used(&mut sim).iter().sum::<u64>(), 32 * 256, "a migration frees the source folio");
}

/// 6.1's vma_policy_mof() has no task-policy fallback for shmem: the memfd is never
/// scanned there, while 6.12 scans it.
#[test]
fn a_memfd_is_unsuitable_for_the_scanner_on_6_1() {
    let (_, out) = run(&config(TWO_MAPPERS, &["kernel.version=6.1-debian12"]));
    assert_eq!(metric(&out, "vmstat.numa_pte_updates"), 0.0);
    assert_eq!(metric(&out, "vmstat.numa_pages_migrated"), 0.0);
    let (_, out) = run(&config(TWO_MAPPERS, &["kernel.version=6.12"]));
    assert!(metric(&out, "vmstat.numa_pte_updates") > 0.0);
}

/// Each mapper of a memfd has its own page table over the shared frames: the daemon's scan
/// makes only its own PTEs protnone and tells only its own mm's secondary MMUs, so with the
/// guest opted out of NUMA balancing its EPT is never invalidated for a protection change
/// and its vCPUs take no hinting fault, however much the daemon's scanner changes. The
/// guest's memfd VMA opted out alone does the same.
#[test]
fn one_mapper_s_scan_leaves_the_other_mapper_s_ptes_and_secondary_mmus() {
    for knob in ["kernel.no_numa_balancing_processes=[\"guest\"]", "kernel.no_numa_balancing_vmas=[\"guest/ram\"]"] {
        let out = run(&scenario("kvm-memfd", &["run.duration_ms=4000", knob])).1;
        assert!(metric(&out, "vmstat.numa_pte_updates") > 0.0, "{knob}: the daemon scans the memfd");
        assert!(metric(&out, "hint_faults_by_source.cpu") > 0.0, "{knob}: the daemon faults on its own PTEs");
        assert_eq!(metric(&out, "secondary_mmu.invalidate_protection_vma"), 0.0, "{knob}: the guest's not scanned");
        assert_eq!(metric(&out, "hint_faults_by_source.kvm"), 0.0, "{knob}: the guest's PTEs are never protnone");
        assert!(metric(&out, "touches.kvm") > 0.0);
    }
}

/// `metric` of 1.5 s of kvm-memfd with `set`, the daemon's mm left unscanned so that only the
/// guest's own first pass counts.
fn guest_scan_metric(set: &str, metric_name: &str) -> f64 {
    let set = ["run.duration_ms=1500", "kernel.no_numa_balancing_processes=[\"daemon\"]", set];
    metric(&run(&scenario("kvm-memfd", &set)).1, metric_name)
}

/// `numa_scan_offset_mib` starts the guest's first pass part-way (mm->numa_scan_offset): its
/// first task_numa_work() changes the PTEs from there to the end of the guest memory only,
/// and the pass ends there (reset_ptenuma_scan()).
#[test]
fn a_vm_s_first_scan_starts_at_its_numa_scan_offset() {
    let updates = |offset: &str| guest_scan_metric(offset, "vmstat.numa_pte_updates");
    assert_eq!(updates("vm.0.numa_scan_offset_mib=0"), 65536.0);
    assert_eq!(updates("vm.0.numa_scan_offset_mib=192"), 16384.0);
}

/// `populate_ept` maps all the guest memory into the EPT before the run: the first scan's
/// MMU_NOTIFY_PROTECTION_VMA zaps an entry for every page of the 256 MiB, where an EPT that
/// starts empty holds only the pages the vCPUs touched.
#[test]
fn a_populated_ept_loses_an_entry_for_every_page_the_first_scan_covers() {
    let zapped = |populate: &str| guest_scan_metric(populate, "secondary_mmu.entries_zapped");
    assert_eq!(zapped("vm.0.populate_ept=true"), 65536.0);
    assert!(zapped("vm.0.populate_ept=false") < 65536.0);
}

/// The memory estimate counts the pages of a memfd two processes map once, and a protnone
/// bit per page for each mapper: two anonymous VMAs of the same size need a second set.
#[test]
fn the_memory_estimate_counts_a_shared_memfd_once() {
    let pages = 32 * 256;
    let shared = estimate_bytes(&config(TWO_MAPPERS, &[]));
    let anon = estimate_bytes(&config(&TWO_MAPPERS.replace("backing = \"memfd\"\nmemfd = \"f\"\n", ""), &[]));
    assert_eq!(anon - shared, pages * PAGE_STATE_BYTES - 2 * pages / 8);
}

/// Threads in another process's numa group.
fn joined_across(sim: &mut Sim) -> usize {
    let mut q = sim.world.query::<&TaskNuma>();
    q.iter(&sim.world).filter(|t| t.in_group && t.group_mm.is_some()).count()
}

/// task_numa_work() skips a hugetlbfs VMA (is_vm_hugetlb_page()): no PTE updates, no hinting
/// faults, no migration (the pool reserved half the huge pages on each node, so half stay
/// remote); the same VMA anonymous is scanned and pulled to its remote users.
#[test]
fn hugetlbfs_is_never_scanned_or_migrated() {
    let text = r#"
[run]
duration_ms = 4000
[[process]]
name = "huge"
[[process.vma]]
name = "buf"
size_mib = 32
backing = "hugetlbfs"
populate_node = 0
[[process.thread]]
name = "w"
count = 2
cpus = [4, 5]
vma = "buf"
"#;
    let (mut sim, out) = run(&config(text, &[]));
    assert_eq!(metric(&out, "vmstat.numa_pte_updates"), 0.0);
    assert_eq!(metric(&out, "vmstat.numa_hint_faults"), 0.0);
    assert_eq!(metric(&out, "vmstat.numa_pages_migrated"), 0.0);
    let local = metric(&out, "locality.cpu");
    assert_eq!(rss(&mut sim, "huge"), 0, "hugetlb pages are not in get_mm_rss()");

    let (_, out) = run(&config(&text.replace("backing = \"hugetlbfs\"\n", ""), &[]));
    assert!(metric(&out, "vmstat.numa_pages_migrated") > 0.0, "the same VMA anonymous moves");
    assert!(metric(&out, "locality.cpu") > local, "and its touches get more local");
}

/// guest_memfd: the vCPUs' EPT faults allocate by the interleave policy, take no hinting
/// faults and move nothing.
#[test]
fn guest_memfd_follows_its_policy_and_takes_no_hinting_faults() {
    let (mut sim, out) = run(&scenario("kvm-guest-memfd", &["run.duration_ms=3000"]));
    assert!(metric(&out, "touches.kvm") > 0.0);
    assert_eq!(metric(&out, "vmstat.numa_hint_faults"), 0.0);
    assert_eq!(metric(&out, "vmstat.numa_pte_updates"), 0.0);
    assert_eq!(metric(&out, "vmstat.numa_pages_migrated"), 0.0);
    let used = used(&mut sim);
    // Interleaved by page offset; the vCPUs touch most pages, not all.
    assert!(used[0] > 0 && used[0].abs_diff(used[1]) * 100 <= used[0], "interleaved: {used:?}");
    assert_eq!(rss(&mut sim, "guest"), 0, "guest_memfd pages are mapped by no process");
}

/// An mbind() policy makes vma_policy_mof() false: the VMA is skipped and its pages stay on
/// the policy's node.
#[test]
fn a_vma_with_a_policy_is_not_scanned() {
    let text = r#"
[run]
duration_ms = 3000
[[process]]
name = "p"
[[process.vma]]
name = "buf"
size_mib = 16
mempolicy = { mode = "bind", nodes = [0] }
[[process.thread]]
name = "t"
count = 2
cpus = [4, 5]
vma = "buf"
write_fraction = 1.0
"#;
    let (mut sim, out) = run(&config(text, &[]));
    assert_eq!(metric(&out, "vmstat.numa_pte_updates"), 0.0);
    assert_eq!(used(&mut sim), [16 * 256, 0]);
    let (mut sim, out) = run(&config(&text.replace("mempolicy = { mode = \"bind\", nodes = [0] }\n", ""), &[]));
    assert!(metric(&out, "vmstat.numa_pte_updates") > 0.0);
    assert_eq!(used(&mut sim), [0, 16 * 256], "first touch on the threads' node");
}

/// change_pte_range() makes a pinned page of a shared mapping protnone up to 6.18 and leaves
/// it from 6.19 (folio_can_map_prot_numa()), as the what-if `prot_numa_skip_pinned` does on
/// 6.12; a private mapping's pinned pages are left on both.
#[test]
fn pinned_memfd_pages_are_made_protnone_until_6_19() {
    let updates_with = |version: &str, backing: &str, skip_pinned: bool| {
        let set = [
            "run.duration_ms=6000".to_string(),
            format!("kernel.version={version}"),
            format!("process.0.vma.0.backing={backing}"),
            format!("kernel.prot_numa_skip_pinned={skip_pinned}"),
        ];
        let set: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
        metric(&run(&scenario("pinned-device", &set)).1, "vmstat.numa_pte_updates")
    };
    let updates = |version: &str, backing: &str| updates_with(version, backing, false);
    let (memfd_6_12, memfd_7_3) = (updates("6.12", "memfd"), updates("7.3", "memfd"));
    let (anon_6_12, anon_7_3) = (updates("6.12", "anon"), updates("7.3", "anon"));
    assert!(memfd_6_12 > memfd_7_3, "6.12 {memfd_6_12}, 7.3 {memfd_7_3}");
    assert!(memfd_6_12 > anon_6_12, "memfd {memfd_6_12}, anon {anon_6_12}");
    assert_eq!(anon_6_12, anon_7_3);
    let skipped_6_12 = updates_with("6.12", "memfd", true);
    assert!(skipped_6_12 < memfd_6_12, "the what-if on 6.12: {skipped_6_12} of {memfd_6_12}");
}

/// Bad kind keys are refused naming the key.
#[test]
fn bad_memory_kinds_are_refused_naming_the_key() {
    let vm = "[[vm]]\nname = \"g\"\nmemory_mib = 64\n[vm.vcpus]\ncount = 1\n";
    let proc = "[[process]]\nname = \"p\"\n[[process.vma]]\nname = \"b\"\nsize_mib = 8\n";
    let cases: &[(String, &[&str], &str, &str)] = &[
        (vm.to_string(), &["vm[0].backing=guest_memfd", "kernel.version=6.12"], "vm[0].backing", "6.18"),
        (proc.to_string(), &["process[0].vma[0].backing=guest_memfd"], "process[0].vma[0].backing", "[[vm]]"),
        (proc.to_string(), &["process[0].vma[0].memfd=x"], "process[0].vma[0].memfd", "memfd"),
        (
            proc.to_string(),
            &["process[0].vma[0].backing=hugetlbfs", "process[0].vma[0].size_mib=7"],
            "size_mib",
            "2 MiB",
        ),
        (proc.to_string(), &["process[0].vma[0].hugetlb_page=1G"], "hugetlb_page", "hugetlbfs"),
        (vm.to_string(), &["vm[0].numa_scan_offset_mib=64"], "vm[0].numa_scan_offset_mib", "past the end"),
        (vm.to_string(), &["vm[0].populate_ept=true"], "vm[0].populate_ept", "populate_node"),
        (
            proc.to_string(),
            &["process[0].vma[0].backing=memfd", "process[0].vma[0].mergeable=true"],
            "mergeable",
            "KSM",
        ),
        (
            format!("{proc}mempolicy = {{ mode = \"bind\", nodes = [5] }}\n"),
            &[],
            "process[0].vma[0].mempolicy.nodes",
            "node 5",
        ),
        (format!("{proc}mempolicy = {{ mode = \"preferred\", nodes = [0, 1] }}\n"), &[], "mempolicy.nodes", "one node"),
        (
            format!(
                "{proc}backing = \"memfd\"\nmemfd = \"f\"\n{}",
                proc.replace("\"p\"", "\"q\"").replace("8", "16") + "backing = \"memfd\"\nmemfd = \"f\"\n"
            ),
            &[],
            "process[1].vma[0].size_mib",
            "8 MiB",
        ),
        (
            format!("{proc}backing = \"memfd\"\n[[action]]\nprocess = \"p\"\nvma = \"b\"\nsyscall = \"munmap\"\n"),
            &[],
            "action[0].vma",
            "anonymous",
        ),
        (
            format!("{proc}backing = \"hugetlbfs\"\nhugetlb_page = \"1G\"\nsize_mib = 4096\n")
                .replace("size_mib = 8\n", ""),
            &[],
            "hugetlb_page",
            "do not fit",
        ),
    ];
    for (text, set, key, says) in cases {
        // `--set` addresses array entries as `process.0`; errors name them `process[0]`.
        let set: Vec<String> = set.iter().map(|s| s.replace('[', ".").replace(']', "")).collect();
        let err = load(&Source { origin: "t".into(), text: text.clone() }, &set).expect_err(text).to_string();
        assert!(err.contains(key) && err.contains(says), "{text} {set:?}: {err}");
    }
}
