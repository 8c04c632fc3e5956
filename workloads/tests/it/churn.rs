//! Secondary-MMU churn: the counters agree with each other, with the time series and with
//! what the scenario does; each NUMA balancing remedy knob changes what it is for and nothing
//! else.

use crate::common;

use common::*;
use sim_core::sim::RunOutput;

/// The `secondary_mmu` and `kvm` counters of a run, by name.
fn churn(out: &RunOutput) -> Vec<(String, f64)> {
    let groups = out.summary.metrics.flatten().into_iter();
    let churn = groups.filter(|(n, _)| ["secondary_mmu.", "kvm.", "per_scan_pass."].iter().any(|g| n.starts_with(g)));
    churn.map(|(n, v)| (n, v.as_f64())).collect()
}

/// Everything a run reports but the wall-clock time.
fn results(out: &RunOutput) -> (String, String) {
    let mut s = out.summary.clone();
    s.wall_s = 0.0;
    (serde_json::to_string(&s).expect("a summary serializes"), out.recorder.to_csv())
}

fn kvm_guest(set: &[&str]) -> RunOutput {
    let mut all = vec!["run.duration_ms=4000"];
    all.extend_from_slice(set);
    run(&scenario("kvm-guest", &all)).1
}

/// A guest on the other node than its memory: every scan pass invalidates the EPT
/// (MMU_NOTIFY_PROTECTION_VMA), every migration again (MMU_NOTIFY_CLEAR); the vCPUs refault
/// what was zapped, and each flush interrupts the vCPUs running on other CPUs.
#[test]
fn a_guest_s_churn_counters_agree_with_each_other() {
    let out = kvm_guest(&[]);
    let m = |name: &str| metric(&out, name);
    let invalidations = m("secondary_mmu.invalidate_protection_vma") + m("secondary_mmu.invalidate_clear");
    assert!(m("secondary_mmu.invalidate_protection_vma") > 0.0 && m("secondary_mmu.invalidate_clear") > 0.0);
    assert_eq!(m("secondary_mmu.invalidate_unmap"), 0.0, "kvm-guest unmaps nothing");
    assert_eq!(m("kvm.kvm_unmap_hva_range"), invalidations, "KVM traces every invalidation of its mm");
    let (zapped, refilled) = (m("secondary_mmu.entries_zapped"), m("secondary_mmu.entries_refilled"));
    assert!(refilled > 0.0 && refilled <= zapped, "refilled {refilled}, zapped {zapped}");
    let flushes = m("secondary_mmu.tlb_flushes");
    assert!(flushes > 0.0 && flushes <= invalidations);
    assert_eq!(m("kvm.remote_tlb_flush_requests"), flushes, "the EPT is the only secondary MMU");
    let (ipis, sent) = (m("secondary_mmu.flush_ipis"), m("kvm.remote_tlb_flush"));
    assert!(sent > 0.0 && sent <= flushes && ipis >= sent);
    assert!(ipis <= 3.0 * flushes, "four vCPUs: at most three others to interrupt, {ipis} IPIs for {flushes} flushes");
    let passes = m("secondary_mmu.scan_passes");
    assert!(passes > 0.0);
    assert_eq!(m("per_scan_pass.entries_zapped"), zapped / passes);
    assert_eq!(m("per_scan_pass.invalidations"), invalidations / passes);
    for (name, total) in churn(&out).into_iter().filter(|(n, _)| !n.starts_with("per_scan_pass.")) {
        let series: f64 = column(&out, &name).iter().sum();
        assert_eq!(series, total, "{name}: the time series adds up to the summary");
    }
}

#[test]
fn without_numa_balancing_a_guest_causes_no_churn() {
    let out = kvm_guest(&["kernel.numa_balancing=0"]);
    assert!(churn(&out).iter().all(|(_, v)| *v == 0.0), "{:?}", churn(&out));
    assert!(metric(&out, "touches.kvm") > 0.0);
}

/// MMU_NOTIFIER_RANGE_NUMA: the EPT keeps its entries through every scan; only migrations
/// zap (one 4 KiB entry each, MMU_NOTIFY_CLEAR), and only entries the vCPUs had not mapped
/// yet meet a protnone PTE. The protection changes still reach KVM and count as kept.
#[test]
fn range_numa_keeps_the_ept_through_numa_protection_changes() {
    let on = kvm_guest(&[]);
    let kept = kvm_guest(&["kernel.mmu_notifier_range_numa=true"]);
    let m = |out: &RunOutput, name: &str| metric(out, name);
    let protection = m(&kept, "secondary_mmu.invalidate_protection_vma");
    assert!(protection > 0.0);
    assert_eq!(m(&kept, "secondary_mmu.range_numa_kept"), protection);
    assert_eq!(m(&on, "secondary_mmu.range_numa_kept"), 0.0);
    let clears = m(&kept, "secondary_mmu.invalidate_clear");
    assert!(m(&kept, "secondary_mmu.entries_zapped") <= clears, "only migrations zap");
    assert!(m(&on, "secondary_mmu.entries_zapped") > m(&on, "secondary_mmu.invalidate_clear"), "scans zap too");
    assert_eq!(m(&kept, "kvm.kvm_unmap_hva_range"), clears, "a kept range is not traced");
    let faults = |out: &RunOutput| m(out, "hint_faults_by_source.kvm");
    assert!(faults(&kept) < faults(&on) / 2.0, "guest hinting faults: {} kept, {} zapped", faults(&kept), faults(&on));
}

/// The opt-outs: a process opted out never scans; a VMA opted out is walked past.
#[test]
fn an_opted_out_guest_is_never_made_protnone() {
    for knob in ["kernel.no_numa_balancing_processes=[\"guest\"]", "kernel.no_numa_balancing_vmas=[\"guest/ram\"]"] {
        let out = kvm_guest(&[knob]);
        assert_eq!(metric(&out, "vmstat.numa_pte_updates"), 0.0, "{knob}");
        assert!(churn(&out).iter().filter(|(n, _)| n != "secondary_mmu.scan_passes").all(|(_, v)| *v == 0.0), "{knob}");
        let passes = metric(&out, "secondary_mmu.scan_passes");
        assert_eq!(passes > 0.0, knob.contains("vmas"), "{knob}: only the VMA opt-out leaves the scanner running");
    }
}

/// Opting out another process's VMAs, or a process without secondary MMUs, changes nothing
/// for the guest (but the scan passes, which count every mm's).
#[test]
fn an_opt_out_changes_only_what_it_names() {
    let text = "[[vm]]\nname = \"guest\"\nmemory_mib = 64\npopulate_node = 0\n[vm.vcpus]\ncount = 2\nnode = 1\n\
        [[process]]\nname = \"other\"\n[[process.vma]]\nname = \"buf\"\nsize_mib = 16\npopulate_node = 0\n\
        [[process.thread]]\nname = \"t\"\ncount = 1\nnode = 1\nvma = \"buf\"\n[run]\nduration_ms = 3000\n";
    let base = run(&config(text, &[])).1;
    let by_vma = run(&config(text, &["kernel.no_numa_balancing_vmas=[\"other/buf\"]"])).1;
    let by_process = run(&config(text, &["kernel.no_numa_balancing_processes=[\"other\"]"])).1;
    assert!(metric(&base, "vmstat.numa_pte_updates") > metric(&by_vma, "vmstat.numa_pte_updates"));
    let guest = |out: &RunOutput| {
        let mut c = churn(out);
        c.retain(|(n, _)| n != "secondary_mmu.scan_passes" && !n.starts_with("per_scan_pass."));
        c
    };
    assert!(guest(&base).iter().any(|(_, v)| *v > 0.0));
    assert_eq!(guest(&by_vma), guest(&base));
    assert_eq!(guest(&by_process), guest(&base));
    assert!(metric(&by_process, "secondary_mmu.scan_passes") < metric(&base, "secondary_mmu.scan_passes"));
    assert_eq!(metric(&by_vma, "touches.kvm"), metric(&base, "touches.kvm"));
}

/// The remedy knobs off are the model without them; each on changes nothing where it has
/// nothing to act on: no pins (skip-pinned) or no secondary MMU (range-numa).
#[test]
fn a_knob_with_nothing_to_act_on_changes_nothing() {
    let base = results(&kvm_guest(&[]));
    assert_eq!(results(&kvm_guest(&["kernel.prot_numa_skip_pinned=false"])), base);
    assert_eq!(
        results(&kvm_guest(&["kernel.prot_numa_skip_pinned=true", "kernel.transparent_hugepage=always"])),
        results(&kvm_guest(&["kernel.transparent_hugepage=always"])),
        "KVM takes references, not pins"
    );
    let numa02 = |set: &[&str]| results(&run(&scenario("numa02", &[&["run.duration_ms=3000"], set].concat())).1);
    assert_eq!(numa02(&["kernel.mmu_notifier_range_numa=true"]), numa02(&[]));
}

/// A long-term pinned buffer backed by THPs: up to 6.18 change_huge_pmd() makes the pinned
/// THPs protnone (then their hinting faults fail to migrate them); the knob, and 6.19+
/// without it, leave them alone.
#[test]
fn skip_pinned_spares_pinned_thps_before_6_19_and_is_what_7_3_does() {
    let pinned = |set: &[&str]| {
        let base = ["run.duration_ms=6000", "kernel.transparent_hugepage=always"];
        run(&scenario("pinned-device", &[&base[..], set].concat())).1
    };
    let huge = |out: &RunOutput| metric(out, "vmstat.numa_huge_pte_updates");
    let (v6_12, skipped) =
        (pinned(&["kernel.version=6.12"]), pinned(&["kernel.version=6.12", "kernel.prot_numa_skip_pinned=true"]));
    assert!(huge(&skipped) < huge(&v6_12), "{} pinned-THP updates spared", huge(&v6_12) - huge(&skipped));
    assert!(metric(&skipped, "vmstat.pgmigrate_fail") < metric(&v6_12, "vmstat.pgmigrate_fail"));
    assert_eq!(
        results(&pinned(&["kernel.version=7.3", "kernel.prot_numa_skip_pinned=true"])),
        results(&pinned(&["kernel.version=7.3"])),
        "7.3 skips pinned THPs already"
    );
}

#[test]
fn an_opt_out_of_an_unknown_name_is_refused_with_its_key() {
    for (set, key) in [
        ("kernel.no_numa_balancing_processes=[\"gust\"]", "kernel.no_numa_balancing_processes[0]"),
        ("kernel.no_numa_balancing_vmas=[\"guest/rom\"]", "kernel.no_numa_balancing_vmas[0]"),
        ("kernel.no_numa_balancing_vmas=[\"guest\"]", "kernel.no_numa_balancing_vmas[0]"),
    ] {
        let e = workloads::catalogue::resolve("kvm-guest", &[set.to_string()]).expect_err(set);
        assert!(e.to_string().contains(key), "{set}: {e}");
    }
}
