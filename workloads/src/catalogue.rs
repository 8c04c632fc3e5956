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
];

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
    match BUILTIN.iter().find(|(name, _)| *name == arg) {
        Some((name, text)) => Ok(Source { origin: format!("built-in scenario `{name}`"), text: text.to_string() }),
        None => {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
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
        for (name, _) in BUILTIN {
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
