//! The validation catalogue: the cases `numasim validate` runs on the sim and on a real
//! kernel, the TOML files of `configs/validate/`, embedded in the binary. Each is a scenario
//! with a `[validate]` section of tolerances.

use sim_core::config::{Config, ConfigError, Source, load};

use crate::catalogue;

/// Name and text of every validation case, in the order `validate --all` runs them.
pub const CASES: &[(&str, &str)] = &[
    ("numa02", include_str!("../../configs/validate/numa02.toml")),
    ("numa01", include_str!("../../configs/validate/numa01.toml")),
    ("numa02-4node", include_str!("../../configs/validate/numa02-4node.toml")),
    ("numa02-thp", include_str!("../../configs/validate/numa02-thp.toml")),
    ("overload", include_str!("../../configs/validate/overload.toml")),
    ("gup-cpu-read-local", include_str!("../../configs/validate/gup-cpu-read-local.toml")),
    ("gup-cpu-read-remote", include_str!("../../configs/validate/gup-cpu-read-remote.toml")),
    ("gup-proc-mem-read", include_str!("../../configs/validate/gup-proc-mem-read.toml")),
    ("gup-proc-mem-write", include_str!("../../configs/validate/gup-proc-mem-write.toml")),
    ("gup-process-vm-readv", include_str!("../../configs/validate/gup-process-vm-readv.toml")),
    ("gup-process-vm-writev", include_str!("../../configs/validate/gup-process-vm-writev.toml")),
    ("gup-o-direct-read-into", include_str!("../../configs/validate/gup-o-direct-read-into.toml")),
    ("gup-o-direct-write-from", include_str!("../../configs/validate/gup-o-direct-write-from.toml")),
    ("ksm-protnone", include_str!("../../configs/validate/ksm-protnone.toml")),
    ("mprotect-toggle", include_str!("../../configs/validate/mprotect-toggle.toml")),
    ("gupdev-device-gup", include_str!("../../configs/validate/gupdev-device-gup.toml")),
    ("gupdev-device-gup-free", include_str!("../../configs/validate/gupdev-device-gup-free.toml")),
    ("gupdev-mprotect-smart", include_str!("../../configs/validate/gupdev-mprotect-smart.toml")),
    ("gupdev-mprotect-unconditional", include_str!("../../configs/validate/gupdev-mprotect-unconditional.toml")),
    ("gupdev-kvm-honor", include_str!("../../configs/validate/gupdev-kvm-honor.toml")),
    ("gupdev-kvm-no-honor", include_str!("../../configs/validate/gupdev-kvm-no-honor.toml")),
    ("gupdev-kvm-memfd", include_str!("../../configs/validate/gupdev-kvm-memfd.toml")),
    ("gupdev-kvm-memfd-no-honor", include_str!("../../configs/validate/gupdev-kvm-memfd-no-honor.toml")),
    ("gupdev-kvm-memfd-daemon", include_str!("../../configs/validate/gupdev-kvm-memfd-daemon.toml")),
    ("gupdev-pin-part-thp", include_str!("../../configs/validate/gupdev-pin-part-thp.toml")),
    ("gupdev-pin-part-memfd", include_str!("../../configs/validate/gupdev-pin-part-memfd.toml")),
    ("memfd-shared-pull", include_str!("../../configs/validate/memfd-shared-pull.toml")),
    ("memfd-thp-shared-pull", include_str!("../../configs/validate/memfd-thp-shared-pull.toml")),
    ("hugetlbfs-unscanned", include_str!("../../configs/validate/hugetlbfs-unscanned.toml")),
    ("tiering-promote", include_str!("../../configs/validate/tiering-promote.toml")),
    ("uffd-rwp-proc-mem", include_str!("../../configs/validate/uffd-rwp-proc-mem.toml")),
];

/// A validation case by name, else a scenario (built-in or path) as `numasim run` takes it.
pub fn resolve(arg: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    match CASES.iter().find(|(name, _)| *name == arg) {
        Some((name, text)) => {
            let src = Source { origin: format!("validation case `{name}`"), text: text.to_string() };
            load(&src, overrides)
        }
        None => catalogue::resolve(arg, overrides),
    }
}

/// A scenario as `numasim run` and `numasim kernel` take it: a built-in scenario or a path,
/// else a validation case by name. Where a case shares a built-in's name (numa02, numa01,
/// overload, ksm-protnone) the built-in keeps it there, as before; `validate` takes the case.
pub fn resolve_scenario(arg: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    let builtin = catalogue::BUILTIN.iter().any(|(name, _)| *name == arg);
    let case = CASES.iter().any(|(name, _)| *name == arg);
    if case && !builtin && !std::path::Path::new(arg).exists() {
        resolve(arg, overrides)
    } else {
        catalogue::resolve(arg, overrides)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_and_kernel_take_a_case_by_name_and_a_built_in_keeps_its_own() {
        let case = resolve_scenario("gup-proc-mem-read", &[]).unwrap();
        assert_eq!(case, resolve("gup-proc-mem-read", &[]).unwrap());
        assert_eq!(resolve_scenario("numa02", &[]).unwrap(), catalogue::resolve("numa02", &[]).unwrap());
        assert_ne!(resolve("numa02", &[]).unwrap(), catalogue::resolve("numa02", &[]).unwrap(), "two numa02s");
        assert!(resolve_scenario("gup-proc-mem-reed", &[]).is_err());
    }

    #[test]
    fn every_case_loads_under_its_own_name_with_judged_metrics_and_reasons() {
        for (name, _) in CASES {
            let c = resolve(name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&c.name, name);
            assert!(!c.description.is_empty(), "{name} needs a description");
            let v = c.validate.unwrap_or_else(|| panic!("{name} has no [validate] section"));
            assert!(!v.tolerance.is_empty(), "{name} judges nothing");
        }
    }

    #[test]
    fn a_name_that_is_no_case_falls_back_to_the_scenarios() {
        assert_eq!(resolve("device-gup", &[]).unwrap().name, "device-gup");
        assert!(resolve("numa2", &[]).unwrap_err().message.contains("did you mean"));
    }
}
