//! The GUP policies and their side effects, each under several seeds.

use crate::common;

use common::*;

const SEEDS: [&str; 3] = ["run.seed=1", "run.seed=2", "run.seed=3"];

fn run_with(name: &str, seed: &str, set: &[&str]) -> sim_core::sim::RunOutput {
    let mut all = vec![seed];
    all.extend_from_slice(set);
    run(&scenario(name, &all)).1
}

#[test]
fn mprotect_hazard_leaves_stale_mappings_only_with_explicit_and_smart() {
    for seed in SEEDS {
        let hazard = run_with("mprotect-hazard", seed, &["kernel.gup_policy=explicit", "kernel.notifier=smart"]);
        assert!(metric(&hazard, "stale.mappings_max") > 0.0, "{seed}");
        assert!(metric(&hazard, "stale.mapping_ns") > 0.0, "{seed}");
        assert!(metric(&hazard, "stale.accesses") > 0.0, "{seed}");
        assert!(column(&hazard, "stale.mappings").iter().any(|&n| n > 0.0), "{seed}: the gauge shows them");
        for safe in [
            ["kernel.gup_policy=explicit", "kernel.notifier=unconditional"],
            ["kernel.gup_policy=implicit", "kernel.notifier=smart"],
        ] {
            let out = run_with("mprotect-hazard", seed, &safe);
            assert_eq!(metric(&out, "stale.mappings_max"), 0.0, "{seed} {safe:?}");
            assert_eq!(metric(&out, "stale.accesses"), 0.0, "{seed} {safe:?}");
        }
    }
}

#[test]
fn a_reading_device_takes_hinting_faults_only_when_gup_honors_them() {
    for seed in SEEDS {
        let implicit = run_with("device-gup", seed, &["kernel.gup_policy=implicit"]);
        let explicit = run_with("device-gup", seed, &["kernel.gup_policy=explicit"]);
        assert!(metric(&implicit, "hint_faults_by_source.device") > 0.0, "{seed}");
        assert_eq!(metric(&explicit, "hint_faults_by_source.device"), 0.0, "{seed}");
        assert!(metric(&explicit, "vmstat.numa_hint_faults") > 0.0, "{seed}: the CPU still faults");
        // Honoring moves the buffer toward the device.
        assert!(metric(&implicit, "locality.device") > metric(&explicit, "locality.device"), "{seed}");
        for policy in ["kernel.gup_policy=implicit", "kernel.gup_policy=explicit"] {
            let write = run_with("device-gup", seed, &[policy, "device.0.access=write"]);
            assert!(metric(&write, "hint_faults_by_source.device") > 0.0, "{seed} {policy}: FOLL_WRITE always faults");
        }
    }
}

#[test]
fn kvm_guests_need_the_flag_only_under_the_explicit_policy() {
    for seed in SEEDS {
        let honor = run_with("kvm-guest", seed, &["kernel.gup_policy=explicit", "kvm.honor_numa_fault=true"]);
        let ignore = run_with("kvm-guest", seed, &["kernel.gup_policy=explicit", "kvm.honor_numa_fault=false"]);
        assert!(metric(&honor, "hint_faults_by_source.kvm") > 0.0, "{seed}");
        assert_eq!(metric(&ignore, "hint_faults_by_source.kvm"), 0.0, "{seed}");
        let (good, bad) = (tail_locality(&honor, "kvm"), tail_locality(&ignore, "kvm"));
        assert!(good > bad + 0.3, "{seed}: guest locality {good} with the flag, {bad} without");
        for policy in ["kernel.gup_policy=implicit", "kernel.gup_policy=implicit-all"] {
            let a = run_with("kvm-guest", seed, &[policy, "kvm.honor_numa_fault=true"]);
            let b = run_with("kvm-guest", seed, &[policy, "kvm.honor_numa_fault=false"]);
            assert_eq!(a.summary.metrics, b.summary.metrics, "{seed} {policy}: GUP sets the flag for everyone");
            assert_eq!(a.recorder.to_csv(), b.recorder.to_csv(), "{seed} {policy}");
        }
    }
}

/// KSM's smart scan (should_skip_rmap_item(), mm/ksm.c in 6.12.118, v6.7+): on 6.12 ksmd
/// passes over pages that stayed unmerged for several scans (one scan of this scenario takes
/// about 4 s: from the fifth the skips begin); 6.1.192 has no smart scan.
#[test]
fn ksmd_skips_pages_that_never_merge_from_6_7() {
    let on = |v: &str| run_with("ksm-protnone", SEEDS[0], &["run.duration_ms=30000", &format!("kernel.version={v}")]);
    let skipped = |o: &sim_core::sim::RunOutput| metric(o, "ksm.pages_skipped");
    assert!(skipped(&on("6.12")) > 0.0);
    assert_eq!(skipped(&on("6.1-debian12")), 0.0);
}

/// KSM trips over protnone PTEs where follow_page() refuses them (v6.2–v6.4's
/// gup_can_follow_protnone()): on 6.4 both the scan (scan_get_next_rmap_item()) and the
/// unstable-tree lookup (get_mergeable_page()) use follow_page(); on Debian's 6.1.192 only
/// the lookup does (the scan walks page tables); 6.1 and 6.12 follow protnone PTEs.
#[test]
fn ksm_skips_protnone_pages_on_kernels_whose_follow_page_refuses_them() {
    for seed in SEEDS {
        let on = |v: &str| run_with("ksm-protnone", seed, &[&format!("kernel.version={v}")]);
        let (v61, debian, v64, v612) = (on("6.1"), on("6.1-debian12"), on("6.4"), on("6.12"));
        let skipped = |o| metric(o, "ksm.skipped_protnone");
        let merged = |o| metric(o, "ksm.pages_merged");
        assert!(skipped(&v64) > 0.0 && skipped(&debian) > 0.0, "{seed}");
        assert_eq!(skipped(&v61), 0.0, "{seed}");
        assert_eq!(skipped(&v612), 0.0, "{seed}");
        assert!(merged(&v64) < merged(&v612) && merged(&v64) < merged(&v61), "{seed}");
        assert!(merged(&debian) <= merged(&v612), "{seed}");
        // A what-if of v6.2's GUP rule on 6.12 leaves KSM alone: 6.12's KSM does not use GUP.
        let what_if = run_with("ksm-protnone", seed, &["kernel.gup_policy=implicit-all"]);
        assert_eq!(skipped(&what_if), 0.0, "{seed}");
    }
}

/// Unique pages ksmd scanned first fill the unstable tree; on 6.1.192 every later search
/// that meets a protnone page on its path gives up, so merging stalls while 6.12 merges
/// (from the second pass, once checksums held still: a pass of 65536 pages takes 2.6 s).
#[test]
fn a_protnone_page_on_the_unstable_tree_path_stops_the_search_on_6_1_debian() {
    const HEAP_FIRST: &str = r#"
[run]
duration_ms = 10000
[ksm]
run = true
pages_to_scan = 500
[[process]]
name = "app"
[[process.vma]]
name = "heap"
size_mib = 128
populate_node = 0
mergeable = true
[[process.vma]]
name = "cache"
size_mib = 128
populate_node = 0
mergeable = true
content_classes = 64
[[process.thread]]
count = 2
node = 1
vma = "heap"
think_ns = 50000
"#;
    let on = |v: &str| run(&config(HEAP_FIRST, &[&format!("kernel.version={v}")])).1;
    let (debian, v612) = (on("6.1-debian12"), on("6.12"));
    assert!(metric(&debian, "ksm.skipped_protnone") > 0.0);
    assert_eq!(metric(&v612, "ksm.skipped_protnone"), 0.0);
    assert!(metric(&debian, "ksm.pages_merged") * 2.0 < metric(&v612, "ksm.pages_merged"));
}

#[test]
fn read_only_pins_on_protnone_ptes_make_migrations_fail() {
    for seed in SEEDS {
        let explicit = run_with("pinned-device", seed, &["kernel.gup_policy=explicit"]);
        let implicit = run_with("pinned-device", seed, &["kernel.gup_policy=implicit"]);
        let (e, i) = (metric(&explicit, "vmstat.pgmigrate_fail"), metric(&implicit, "vmstat.pgmigrate_fail"));
        assert!(e > i, "{seed}: pgmigrate_fail {e} under explicit, {i} under implicit");
        // Pins are by design: never counted as stale.
        assert_eq!(metric(&explicit, "stale.mappings_max"), 0.0);
    }
}

#[test]
fn pages_look_young_through_a_secondary_mmu_only_where_it_follows_protnone() {
    for seed in SEEDS {
        let young = |o: &sim_core::sim::RunOutput| metric(o, "young.secondary_only_protnone");
        assert!(young(&run_with("device-gup", seed, &["kernel.gup_policy=explicit"])) > 0.0);
        assert_eq!(young(&run_with("device-gup", seed, &["kernel.gup_policy=implicit"])), 0.0);
        assert_eq!(young(&run_with("device-gup", seed, &["kernel.gup_policy=implicit-all"])), 0.0);
        assert!(
            young(&run_with("kvm-guest", seed, &["kernel.gup_policy=explicit", "kvm.honor_numa_fault=false"])) > 0.0
        );
        assert_eq!(young(&run_with("kvm-guest", seed, &["kernel.gup_policy=explicit"])), 0.0);
        assert_eq!(young(&run_with("kvm-guest", seed, &["kernel.gup_policy=implicit"])), 0.0);
    }
}

#[test]
fn the_default_scenario_shows_every_policy_difference() {
    let run_policy =
        |p: &str| run(&scenario("default", &[&format!("kernel.gup_policy={p}"), "run.duration_ms=6000"])).1;
    let (implicit, explicit) = (run_policy("implicit"), run_policy("explicit"));
    let all = run(&scenario("default", &["kernel.version=6.4", "run.duration_ms=6000"])).1;
    assert!(metric(&implicit, "hint_faults_by_source.device") > 0.0);
    assert_eq!(metric(&explicit, "hint_faults_by_source.device"), 0.0);
    assert!(metric(&implicit, "hint_faults_by_source.kvm") > 0.0);
    assert!(metric(&explicit, "stale.accesses") > 0.0);
    assert_eq!(metric(&implicit, "stale.accesses"), 0.0);
    assert!(metric(&all, "ksm.skipped_protnone") > 0.0);
    assert_eq!(metric(&implicit, "ksm.skipped_protnone"), 0.0);
}

#[test]
fn a_fault_taken_inside_gup_pulls_the_page_toward_the_caller() {
    // The driver's GUP from a worker on the device's node pulls the buffer there; from the
    // owning thread on node 0 it leaves the buffer where it is.
    for seed in SEEDS {
        let worker = run_with("device-gup", seed, &["kernel.gup_policy=implicit", "device.0.gup_context=worker"]);
        let owner = run_with("device-gup", seed, &["kernel.gup_policy=implicit", "device.0.gup_context=owner"]);
        assert!(metric(&owner, "hint_faults_by_source.device") > 0.0, "{seed}");
        assert!(metric(&worker, "locality.device") > 0.4, "{seed}");
        assert_eq!(metric(&owner, "locality.device"), 0.0, "{seed}");
        assert_eq!(metric(&owner, "vmstat.numa_pages_migrated"), 0.0, "{seed}");
    }
}

#[test]
fn mprotect_on_part_of_a_vma_splits_it_and_only_that_part_goes_stale() {
    let set = ["kernel.gup_policy=explicit", "kernel.notifier=smart", "action.0.offset_mib=16", "action.0.len_mib=16"];
    let c = scenario("mprotect-hazard", &set);
    let mut sim = workloads::build(&c);
    {
        let mut q = sim.world.query::<&sim_core::mm::Mm>();
        let mm = q.iter(&sim.world).next().unwrap();
        let pieces: Vec<u64> = mm.vmas.iter().map(|v| v.pages).collect();
        assert_eq!(pieces, vec![4096, 4096, 8192], "split_vma() at 16 MiB and 32 MiB");
        assert!(mm.vmas.windows(2).all(|w| w[0].end() == w[1].start && w[0].base + w[0].pages as u32 == w[1].base));
    }
    let out = sim.run().unwrap_or_else(|e| panic!("{e}"));
    let max = metric(&out, "stale.mappings_max");
    assert!(max > 0.0 && max <= 4096.0, "only the 16 MiB range can go stale: {max}");
    assert!(metric(&out, "stale.accesses") > 0.0);
}

#[test]
fn ksm_merging_within_nodes_keeps_memory_local() {
    // Twin buffers, one on each node, each read by a thread there. merge_across_nodes=1 (the
    // default) maps the far buffer to stable pages on node 0 (scanned first); per-node trees
    // only merge pages that sit on the same node.
    const TWINS: &str = r#"
[ksm]
run = true
pages_to_scan = 250
[[process]]
name = "app"
[[process.vma]]
name = "near"
size_mib = 64
populate_node = 0
mergeable = true
content_classes = 64
[[process.vma]]
name = "far"
size_mib = 64
populate_node = 1
mergeable = true
content_classes = 64
[[process.thread]]
name = "near"
node = 0
vma = "near"
think_ns = 50000
[[process.thread]]
name = "far"
node = 1
vma = "far"
think_ns = 50000
"#;
    let across = run(&config(TWINS, &["ksm.merge_across_nodes=true"])).1;
    let per_node = run(&config(TWINS, &["ksm.merge_across_nodes=false"])).1;
    assert!(metric(&per_node, "ksm.pages_merged") > 0.0);
    assert!(
        metric(&per_node, "locality.cpu") > metric(&across, "locality.cpu") + 0.2,
        "{} vs {}",
        metric(&per_node, "locality.cpu"),
        metric(&across, "locality.cpu")
    );
}

#[test]
fn munmap_frees_the_buffer_and_leaves_no_stale_mappings_even_with_a_smart_notifier() {
    let set = [
        "kernel.gup_policy=explicit",
        "kernel.notifier=smart",
        "action.0.syscall=munmap",
        "action.0.start_ms=3000",
        "action.0.period_ms=0",
    ];
    let (_, out) = run(&scenario("mprotect-hazard", &set));
    assert_eq!(metric(&out, "stale.mappings_max"), 0.0);
    assert_eq!(metric(&out, "stale.accesses"), 0.0);
    // After the unmap nothing touches the buffer any more: the device's faults fail and
    // the producers take SIGSEGV.
    let device = column(&out, "touches.device");
    let cpu = column(&out, "touches.cpu");
    assert!(device[..29].iter().all(|&t| t > 0.0) && device[31..].iter().all(|&t| t == 0.0));
    assert!(cpu[31..].iter().all(|&t| t == 0.0));
    for node in ["node.0.used_pages", "node.1.used_pages"] {
        assert_eq!(column(&out, node).last(), Some(&0.0), "{node}: all frames freed");
    }
}

#[test]
fn writes_break_ksm_sharing() {
    let read = run(&scenario("ksm-protnone", &[])).1;
    let write = run(&scenario("ksm-protnone", &["process.0.thread.0.write_fraction=0.2"])).1;
    assert_eq!(metric(&read, "vmstat.cow_ksm"), 0.0);
    assert!(metric(&write, "vmstat.cow_ksm") > 0.0);
    // The copies are made on the writers' node, so the readers/writers on node 1 gain.
    assert!(metric(&write, "locality.cpu") > metric(&read, "locality.cpu"));
}

#[test]
fn guest_writes_take_hinting_faults_even_without_the_flag() {
    // FOLL_WRITE always honors: a KVM that never set FOLL_HONOR_NUMA_FAULT still gets
    // hinting faults from the guest's write faults.
    let set = ["kernel.gup_policy=explicit", "kvm.honor_numa_fault=false"];
    let reads = run(&scenario("kvm-guest", &set)).1;
    let writes = run(&scenario("kvm-guest", &[set[0], set[1], "vm.0.vcpus.write_fraction=0.3"])).1;
    assert_eq!(metric(&reads, "hint_faults_by_source.kvm"), 0.0);
    assert!(metric(&writes, "hint_faults_by_source.kvm") > 0.0);
    assert!(tail_locality(&writes, "kvm") > tail_locality(&reads, "kvm") + 0.5);
}

#[test]
fn ksmd_time_per_merge_lengthens_its_period() {
    // ksm_scan_thread() sleeps after each batch, so a batch of 250 merges at 1 ms each
    // stretches a 20 ms period to 270 ms: the second pass merges about a tenth as fast.
    let merged = |cost: &str| metric(&run(&scenario("ksm-protnone", &[cost])).1, "ksm.pages_merged");
    let (free, costly) = (merged("ksm.merge_cost_ns=0"), merged("ksm.merge_cost_ns=1000000"));
    assert!(costly > 0.0 && costly * 5.0 < free, "{costly} merges at 1 ms each vs {free} for free");
}

/// A /proc/PID/mem read that fails (-EFAULT on an armed page of a sync RWP VMA: no
/// FOLL_UNLOCKABLE, so handle_userfault() cannot wait) is followed by the reader's think time,
/// as a read that succeeded is: with 1 ms between reads, at most one attempt a millisecond.
#[test]
fn a_failed_gup_read_waits_the_readers_think_time_too() {
    for seed in SEEDS {
        let out = run_with("uffd-rwp-procmem", seed, &["run.duration_ms=3000", "device.0.think_ns=1000000"]);
        let efaults = metric(&out, "numasim.uffd_rwp_gup_efaults");
        let attempts = efaults + metric(&out, "touches.device");
        assert!(efaults > 500.0, "{seed}: armed from 1.5 s, most reads fail: {efaults}");
        assert!(attempts <= 3000.0, "{seed}: {attempts} reads in 3 s, 1 ms apart");
    }
}
