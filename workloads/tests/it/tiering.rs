//! Memory tiering: promotion by hinting faults in numa_balancing modes 2 and 3, kswapd's
//! demotion, the promotion rate limit, and which GUP users get slow-tier memory promoted.

use crate::common;

use common::*;

/// Pages of the hot set of `tiering` (48 MiB) and of each buffer of `tiering-gup` (32 MiB).
const HOT_PAGES: f64 = 48.0 * 256.0;
const BUFFER_PAGES: f64 = 32.0 * 256.0;

fn tiering(mode: u8, set: &[&str]) -> sim_core::sim::RunOutput {
    let mode = format!("kernel.numa_balancing={mode}");
    let mut all = vec![mode.as_str()];
    all.extend_from_slice(set);
    run(&scenario("tiering", &all)).1
}

#[test]
fn modes_2_and_3_promote_the_hot_set_and_demote_the_cold_one_mode_1_does_neither() {
    let normal = tiering(1, &[]);
    assert_eq!(metric(&normal, "vmstat.pgpromote_success"), 0.0);
    assert_eq!(metric(&normal, "vmstat.pgpromote_candidate"), 0.0);
    assert_eq!(metric(&normal, "vmstat.pgdemote_kswapd"), 0.0, "only a refused promotion wakes kswapd here");
    assert!(metric(&normal, "hint_faults_by_tier.lower") > 0.0, "mode 1 scans the slow tier too");
    for mode in [2, 3] {
        let out = tiering(mode, &[]);
        let promoted = metric(&out, "vmstat.pgpromote_success");
        assert!(promoted > 0.95 * HOT_PAGES && promoted <= HOT_PAGES, "mode {mode}: {promoted}");
        assert!(metric(&out, "vmstat.pgpromote_candidate") >= promoted, "mode {mode}");
        assert!(metric(&out, "vmstat.pgdemote_kswapd") > 0.0, "mode {mode}: the fast tier was full");
        assert!(metric(&out, "locality.cpu") > 0.5 + metric(&normal, "locality.cpu"), "mode {mode}");
        let toptier = metric(&out, "hint_faults_by_tier.toptier");
        if mode == 2 {
            assert_eq!(toptier, 0.0, "mode 2 leaves top-tier pages unscanned");
        } else {
            assert!(toptier > 0.0, "mode 3 scans them too");
        }
    }
}

/// A CPU-less node runs nothing and the promotion state is in the time series.
#[test]
fn no_thread_runs_on_the_cpu_less_node_and_the_limiter_state_is_recorded() {
    let out = tiering(2, &[]);
    assert_eq!(metric(&out, "thread.app/worker/0.node1_share"), 0.0);
    assert_eq!(metric(&out, "thread.app/worker/1.node1_share"), 0.0);
    let candidates = column(&out, "node.0.pgpromote_candidate");
    assert_eq!(*candidates.last().expect("rows"), metric(&out, "vmstat.pgpromote_candidate"));
    assert!(column(&out, "node.0.nbp_threshold_ms").iter().any(|&t| t > 0.0), "the threshold was set");
    assert!(column(&out, "node.1.pgpromote_candidate").iter().all(|&c| c == 0.0), "nothing promotes to node 1");
}

/// numa_balancing_promote_rate_limit_MBps = 1 is 256 pages a second: promotions stop at
/// 256 per one-second window (10 s, and a window may straddle the end), candidates go on
/// being counted.
#[test]
fn the_rate_limit_caps_promotions_per_second() {
    let out = tiering(2, &["kernel.numa_balancing_promote_rate_limit_MBps=1"]);
    let promoted = metric(&out, "vmstat.pgpromote_success");
    assert!(promoted > 0.0 && promoted <= 256.0 * 11.0, "{promoted}");
    assert!(metric(&out, "vmstat.pgpromote_candidate") > promoted);
}

/// A hot threshold of 0 ms: no hint-fault latency is below it, nothing is promoted.
#[test]
fn a_zero_hot_threshold_promotes_nothing() {
    let out = tiering(2, &["kernel.numa_balancing_hot_threshold_ms=0"]);
    assert_eq!(metric(&out, "vmstat.pgpromote_success"), 0.0);
    assert!(metric(&out, "hint_faults_by_tier.lower") > 0.0);
}

/// The answer of `tiering-gup`: promotion needs a hinting fault, so a GUP user's slow-tier
/// memory is promoted only in the eras where its GUP honours protnone PTEs (MODEL.md's era
/// table); KVM honours them in all four.
#[test]
fn slow_tier_memory_read_through_gup_is_promoted_only_where_gup_faults() {
    let promoted = |era: &str, path: &str| {
        let (era, path) = (format!("kernel.gup_policy={era}"), format!("device.0.gup_path={path}"));
        let out = run(&scenario("tiering-gup", &[&era, &path])).1;
        assert!(tail_locality(&out, "kvm") > 0.9, "{era}: KVM's guest memory is promoted");
        let device = tail_locality(&out, "device") > 0.9;
        assert_eq!(device, metric(&out, "hint_faults_by_source.device") > 0.0, "{era} {path}");
        let both = if device { 2.0 } else { 1.0 };
        assert_eq!(metric(&out, "vmstat.pgpromote_success"), both * BUFFER_PAGES, "{era} {path}");
        device
    };
    for (era, driver, proc_mem) in [
        ("implicit", true, false),
        ("implicit-all", true, false),
        ("implicit-force", true, true),
        ("explicit", false, false),
    ] {
        assert_eq!(promoted(era, "driver"), driver, "{era}: the driver's read GUP");
        assert_eq!(promoted(era, "proc-mem"), proc_mem, "{era}: /proc/PID/mem");
    }
}

#[test]
fn a_thread_on_a_cpu_less_node_is_refused_naming_the_key() {
    let err = workloads::catalogue::resolve("tiering", &["process.0.thread.0.node=1".into()]).unwrap_err();
    assert!(err.to_string().contains("process[0].thread[0].node"), "{err}");
}

/// Promotion and demotion keep the page census: every page's node is in the machine, each
/// node's free pages match the frames on it, secondary MMUs point at current frames.
#[test]
fn promotion_and_demotion_keep_the_invariants() {
    for (name, mode) in [("tiering", "2"), ("tiering", "3"), ("tiering-gup", "2")] {
        let mode = format!("kernel.numa_balancing={mode}");
        let c = scenario(name, &["run.duration_ms=3000", &mode]);
        let mut sim = workloads::build(&c);
        sim.set_check_invariants(true);
        let out = sim.run().unwrap_or_else(|e| panic!("{name} {mode}: {e}"));
        assert!(metric(&out, "vmstat.pgpromote_success") > 0.0, "{name} {mode}: the checks saw promotions");
    }
}

/// Same config and seed, same results: kswapd's clock and the limiter hold no hidden state.
#[test]
fn tiered_runs_are_deterministic() {
    let c = scenario("tiering", &["run.duration_ms=3000", "kernel.numa_balancing=3"]);
    let (_, a) = run(&c);
    let (_, b) = run(&c);
    assert_eq!(a.recorder.to_csv(), b.recorder.to_csv());
    assert_eq!(a.summary.metrics, b.summary.metrics);
}

/// Bad tiering input names its key; a tiered config survives its own TOML.
#[test]
fn bad_tiering_keys_are_named_and_the_config_round_trips() {
    for (set, key) in [
        ("machine.memory_node.0.latency_ns=0", "machine.memory_node[0].latency_ns"),
        ("machine.memory_node.0.memory_mib=0", "machine.memory_node[0].memory_mib"),
        ("machine.distance=[[10]]", "machine.distance"),
        ("kernel.numa_balancing_promote_rate_limit_MBps=99999999999", "kernel.numa_balancing_promote_rate_limit_MBps"),
        ("process.0.vma.0.populate_node=2", "process[0].vma[0].populate_node"),
    ] {
        let err = workloads::catalogue::resolve("tiering", &[set.into()]).unwrap_err().to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
    let c = scenario("tiering", &["kernel.numa_balancing=3", "kernel.numa_balancing_hot_threshold_ms=20"]);
    assert_eq!(config(&sim_core::config::to_toml(&c), &[]), c);
}

/// A page kswapd demotes while RWP-armed comes back armed: remove_migration_pte() (7.3.4,
/// mm/migrate.c) keeps the migration entry's uffd bit and, in a VM_UFFD_RWP VMA, restores
/// PAGE_NONE under it, where a NUMA hint's protnone is lost. The cold set, armed at 100 ms
/// and never touched again, is what kswapd demotes; the invariant checks find any marker
/// left on an accessible PTE.
#[test]
fn a_demoted_rwp_armed_page_stays_armed() {
    let rwp = "\n[[userfaultfd]]\nprocess = \"app\"\nvma = \"cold\"\nrwp_async = true\n\n\
               [[action]]\nsyscall = \"uffdio-rwprotect\"\nprocess = \"app\"\nvma = \"cold\"\nstart_ms = 100\nprotect_ms = 0\n";
    let text = include_str!("../../../configs/tiering.toml").to_string() + rwp;
    let src = sim_core::config::Source { origin: "tiering with an armed cold set".into(), text };
    let c = sim_core::config::load(&src, &["run.duration_ms=3000".to_string()]).unwrap_or_else(|e| panic!("{e}"));
    let mut sim = workloads::build(&c);
    sim.set_check_invariants(true);
    let out = sim.run().unwrap_or_else(|e| panic!("{e}"));
    assert!(metric(&out, "vmstat.pgdemote_kswapd") > 0.0, "kswapd demoted armed pages");
    assert_eq!(metric(&out, "numasim.uffd_rwp_faults"), 0.0, "nothing touched the cold set");
}
