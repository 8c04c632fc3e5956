//! The built-in scenarios: the TOML files of `configs/`, embedded in the binary.

use std::path::Path;

use sim_core::config::{Config, ConfigError, Source, closest, load};

/// Name and text of every built-in scenario, `default` first.
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../configs/default.toml")),
    ("numa01", include_str!("../../configs/numa01.toml")),
    ("numa01-threadlocal", include_str!("../../configs/numa01-threadlocal.toml")),
    ("numa02", include_str!("../../configs/numa02.toml")),
    ("kvm-guest", include_str!("../../configs/kvm-guest.toml")),
    ("device-gup", include_str!("../../configs/device-gup.toml")),
    ("mprotect-hazard", include_str!("../../configs/mprotect-hazard.toml")),
    ("ksm-protnone", include_str!("../../configs/ksm-protnone.toml")),
    ("pinned-device", include_str!("../../configs/pinned-device.toml")),
    ("overload", include_str!("../../configs/overload.toml")),
    ("tiering", include_str!("../../configs/tiering.toml")),
    ("tiering-gup", include_str!("../../configs/tiering-gup.toml")),
    ("uffd-rwp", include_str!("../../configs/uffd-rwp.toml")),
    ("uffd-rwp-procmem", include_str!("../../configs/uffd-rwp-procmem.toml")),
    ("memfd-shared", include_str!("../../configs/memfd-shared.toml")),
    ("kvm-memfd", include_str!("../../configs/kvm-memfd.toml")),
    ("hugetlbfs", include_str!("../../configs/hugetlbfs.toml")),
    ("kvm-guest-memfd", include_str!("../../configs/kvm-guest-memfd.toml")),
];

/// Built-in scenarios at a real machine's scale: runnable by name, but too large for the
/// loops over [`BUILTIN`] (the invariant matrix, the fuzz driver's base configs), which
/// check or perturb every event of every page.
pub const LARGE: &[(&str, &str)] = &[("big-vm", include_str!("../../configs/big-vm.toml"))];

/// What to look at in a comparison of a built-in scenario across GUP eras or kernels.
pub fn guide(name: &str) -> &'static str {
    match name {
        "default" => {
            "Every policy difference at once. Under `explicit` the device takes no hinting faults (its read GUP \
             follows protnone PTEs), so its buffer stays where it was and `locality.device` drops; with the `smart` \
             notifier the mprotect(PROT_NONE) churn then leaves stale device mappings (`stale.*`), and pages look \
             young only through the device (`young.secondary_only_protnone`). KSM trips over protnone PTEs only \
             on kernels whose follow_page() refuses them (`--kernels 6.1-debian12,6.4`: `ksm.skipped_protnone`); \
             6.12's KSM does not use GUP, so the GUP eras alone leave it alone. KVM sets FOLL_HONOR_NUMA_FAULT \
             itself, so the guest's hinting faults and locality hardly change across policies."
        }
        "numa01" | "numa01-threadlocal" | "numa02" => {
            "No secondary MMU is involved: the GUP policy should change nothing, and any difference is a bug. Look \
             at locality over time (how fast balancing converges), numa_pte_updates (scan rate adapting) and \
             numa_pages_migrated against numa_hint_faults (how much the two-stage filter holds back)."
        }
        "kvm-guest" => {
            "KVM passes FOLL_HONOR_NUMA_FAULT, so the guest takes hinting faults through its EPT faults in every era \
             and its memory follows the vCPUs (`locality.kvm`). Rerun with `--set kvm.honor_numa_fault=false` to \
             see what patch 3 of the series protects: under `explicit` the guest then takes no hinting faults and \
             its memory never moves — unless the guest writes (`--set vm.0.vcpus.write_fraction=0.3`): a write \
             EPT fault uses FOLL_WRITE, which honors hinting faults whatever the flag says."
        }
        "device-gup" => {
            "The device reads through a driver's GUP. Under every era before `explicit` it takes hinting faults \
             (`hint_faults_by_source.device`) and pulls the buffer toward its node; under `explicit` it follows \
             protnone PTEs, takes none, and its locality stays where the CPU threads put it. With \
             `--set device.0.access=write` every policy faults (FOLL_WRITE always honors)."
        }
        "mprotect-hazard" => {
            "The hazard from the patch discussion. Under `explicit` the device maps pages whose PTEs are still \
             protnone; mprotect(PROT_NONE) then changes nothing in those PTEs, and the `smart` notifier skips \
             them: `stale.mappings` rises with each mprotect and the device keeps reading memory the process made \
             inaccessible (`stale.accesses`). Rerun with `--set kernel.notifier=unconditional` (what the kernel \
             does) and the stale mappings disappear."
        }
        "ksm-protnone" => {
            "Compare kernels here (`--kernels 6.1,6.1-debian12,6.4,6.12`): the GUP eras alone change nothing on \
             6.12, whose KSM walks page tables. On 6.4 ksmd's follow_page() fails on every protnone PTE, so \
             `ksm.skipped_protnone` grows and `ksm.pages_merged` falls behind; on Debian's 6.1.192 the scan walks \
             page tables but unstable-tree lookups still use follow_page(), and a protnone page on the search path \
             (the unique `heap` pages sit there) ends the search."
        }
        "pinned-device" => {
            "Read-only long-term pins. Under `explicit` the pins are taken on protnone PTEs without a hinting fault; \
             the CPU's hinting faults later try to migrate pinned pages and fail (`vmstat.pgmigrate_fail`). Under \
             the implicit policies the pinning GUP faults first, the pages move to the device's node before they \
             are pinned, and nothing fails."
        }
        "overload" => {
            "The load balancer against NUMA placement: three busy threads start on node 0's two CPUs with their \
             memory there. Load balancing moves one (sometimes two) to node 1's idle CPUs (`sched.nr_migrations`, \
             `thread.<name>.node1_share`, `schedstat.NUMA.lb_gained.*`); NUMA balancing first wants it back near \
             its memory, then moves its slice after it (`vmstat.numa_pages_migrated`: one slice, 32768 pages, per \
             thread that settled on node 1). The GUP policy changes nothing here."
        }
        "tiering" => {
            "Memory tiering. Compare modes (`numasim sweep` over `kernel.numa_balancing` 1, 2, 3): in mode 1 the \
             hot set on the slow node is placed by locality, and with node 0 full the migrations are refused \
             (`migrate_balanced_pgdat()`); in modes 2 and 3 hinting faults on the slow tier are promotion \
             candidates judged by their latency against the hot threshold (`vmstat.pgpromote_candidate`), a \
             refused promotion wakes node 0's kswapd, which demotes the cold set (`vmstat.pgdemote_kswapd`), and \
             the hot set moves up (`vmstat.pgpromote_success`, `node.0.used_pages`). Mode 2 leaves top-tier pages \
             unscanned (`hint_faults_by_tier.toptier`)."
        }
        "tiering-gup" => {
            "Who gets slow-tier memory promoted in memory-tiering mode. Promotion happens only in a hinting \
             fault. Compare GUP eras (`--set kernel.gup_policy=...`) and the device's path (`--set \
             device.0.gup_path=proc-mem`): the driver's read GUP faults up to v6.5 and follows the protnone PTE \
             from v6.6, so under `explicit` its buffer is never promoted (`locality.device` stays 0); a \
             /proc/PID/mem reader (FOLL_FORCE) faults only under v6.5's rule; KVM sets FOLL_HONOR_NUMA_FAULT and \
             its guest memory is promoted in every era (`locality.kvm`)."
        }
        "uffd-rwp" => {
            "7.3 only (no release before has userfaultfd RWP). In the RWP-registered guest memory \
             gup_can_follow_protnone() refuses every protnone PTE, so the /proc/PID/mem reader, which follows \
             NUMA hints on 6.12, takes hinting faults (`hint_faults_by_source.device`, \
             `numasim.uffd_rwp_gup_faults`); on an armed PTE it cannot wait for the handler and gets -EFAULT \
             (`numasim.uffd_rwp_gup_efaults`). Each re-arm turns the scanner's pending hints into RWP faults \
             (`numasim.uffd_rwp_hints_lost`), which NUMA balancing never counts, and the vCPUs' waits for the \
             handler cost them a third of their touches (docs/MODEL.md compares the scenario without its \
             tracker). Rerun with `--set userfaultfd.0.rwp_async=true`: the kernel resolves RWP faults itself \
             and the reader's -EFAULTs disappear."
        }
        "uffd-rwp-procmem" => {
            "uffd-rwp without a VM, so that `numasim kernel uffd-rwp-procmem --kernel 7.3` boots it (a `[[vm]]` \
             needs gupdev, which Debian 12 cannot build for 7.3): the same counters, with CPU threads instead \
             of vCPUs. On a real kernel `numasim.uffd_rwp_faults` is what the guest's handler thread resolved."
        }
        _ => "",
    }
}

/// The source of a scenario argument: a file if a path is given or exists, else a built-in.
pub fn source(arg: &str) -> Result<Source, ConfigError> {
    let path = Path::new(arg);
    let looks_like_path = arg.ends_with(".toml") || arg.contains('/') || path.exists();
    if looks_like_path {
        return std::fs::read_to_string(path).map(|text| Source { origin: arg.to_string(), text }).map_err(|e| {
            ConfigError {
                origin: arg.to_string(),
                line: None,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }
        });
    }
    match BUILTIN.iter().chain(LARGE).find(|(name, _)| *name == arg) {
        Some((name, text)) => Ok(Source { origin: format!("built-in scenario `{name}`"), text: text.to_string() }),
        None => {
            let names: Vec<&str> = BUILTIN.iter().chain(LARGE).map(|(n, _)| *n).collect();
            let hint = closest(arg, &names).map_or_else(
                || format!(" (built-in: {}; or give a path to a .toml file)", names.join(", ")),
                |best| format!("; did you mean `{best}`?"),
            );
            Err(ConfigError {
                origin: arg.to_string(),
                line: None,
                key: String::new(),
                message: format!("no such file or built-in scenario{hint}"),
            })
        }
    }
}

/// Loads a scenario (built-in name or path) with `--set` overrides applied. A scenario
/// without a `name` takes the argument's (file stem or built-in name).
pub fn resolve(arg: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    let src = source(arg)?;
    let mut config = load(&src, overrides)?;
    if config.name.is_empty() {
        config.name = Path::new(arg).file_stem().map_or(arg.to_string(), |s| s.to_string_lossy().into_owned());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_scenario_loads_and_is_named_after_its_file() {
        for (name, _) in BUILTIN.iter().chain(LARGE) {
            let c = resolve(name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&c.name, name);
            assert!(!c.description.is_empty(), "{name} needs a description");
        }
    }

    #[test]
    fn unknown_scenarios_get_a_suggestion() {
        let e = resolve("numa2", &[]).unwrap_err();
        assert!(e.message.contains("did you mean `numa02`"), "{e}");
    }
}
