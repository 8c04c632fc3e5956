//! The releases of Debian's `trixie-backports` and `sid` suites: which package a `--kernel`
//! value selects among those the cache's own apt configuration knows, the parts a newer image
//! package is a metapackage over, and their merged-/usr layout linked to Debian 12's.

use std::path::Path;

use sim_core::config::KernelVersion;

use crate::OracleError;
use crate::apt::{Apt, SUITES};
use crate::kernel::{KernelSpec, debian_spec, version_key};

/// A release of the newer suites, from the cache's own apt lists (or, when those cannot be
/// fetched, from what the cache already holds).
pub(crate) fn resolve_newer(arg: &str, cache: &Path) -> Result<KernelSpec, OracleError> {
    if !could_be_newer(arg) {
        return Err(OracleError::Input(format!(
            "--kernel `{arg}`: not 6.1, 6.12, a series or release from 6.13 on that Debian's {} hold (6.18, \
             7.3, 7.2.13, 7.3.4+deb13-amd64) or the path of a kernel image (bzImage)",
            SUITES.join(" and ")
        )));
    }
    let apt = Apt::private(cache);
    let known = apt.as_ref().ok().and_then(|a| a.pkgnames("linux-image-")).unwrap_or_default();
    let cached: Vec<String> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| cache.join(n).join("boot").is_dir())
        .collect();
    let package = select_newer(arg, known.lines())
        .or_else(|| select_newer(arg, cached.iter().map(String::as_str)))
        .ok_or_else(|| match &apt {
            Err(e) => OracleError::Input(format!("--kernel `{arg}`: not in the kernel cache, and {e}")),
            Ok(_) => OracleError::Input(format!(
                "--kernel `{arg}`: no such release in Debian's {}, which hold {}",
                SUITES.join(" and "),
                newer_releases(known.lines()).join(", ")
            )),
        })?;
    let apt = apt.unwrap_or_else(|_| Apt::host());
    let (rules, note) = model_rules(&package);
    debian_spec(&package, cache, &apt, rules, note)
}

/// The model's rules for a newer image package: its release's own (`kernel.version` takes a
/// release, judged by the release table), or, for a release past every series the model
/// read, the newest row, said in the note.
fn model_rules(package: &str) -> (KernelVersion, Option<String>) {
    let own = newer_release(package).and_then(|(_, version)| version.parse::<KernelVersion>().ok());
    match own {
        Some(v) => (v, v.note()),
        None => {
            let newest = *KernelVersion::ALL.last().expect("the model has rows");
            let note = format!(
                "the model has no rules of its own for {}: kernel.version={} (its newest row) stands in",
                package.trim_start_matches("linux-image-"),
                newest.name()
            );
            (newest, Some(note))
        }
    }
}

/// Whether `arg` names what the newer suites may hold, said without asking them: a release
/// (`7.3.4+deb13-amd64`), or a series or version (`7.3`, `7.2.13`) from 6.13 on (older ones
/// are Debian 12's).
fn could_be_newer(arg: &str) -> bool {
    if newer_release(&format!("linux-image-{arg}")).is_some() {
        return true;
    }
    let parts: Option<Vec<u64>> = arg.split('.').map(|p| p.parse().ok()).collect();
    parts.is_some_and(|p| (2..=3).contains(&p.len()) && (p[0], p[1]) >= (6, 13))
}

/// The release of a newer suites' image package (`linux-image-7.3.4+deb13-amd64` →
/// `7.3.4+deb13-amd64`) and its upstream version (`7.3.4`).
pub(crate) fn newer_release(package: &str) -> Option<(&str, &str)> {
    let release = package.strip_prefix("linux-image-")?;
    let (version, deb) = release.strip_suffix("-amd64")?.split_once("+deb")?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = version.split('.').collect();
    (parts.len() == 3 && parts.iter().all(|p| numeric(p)) && numeric(deb)).then_some((release, version))
}

/// The package `arg` selects among `names`: a series (`7.3`) its newest release, a version
/// (`7.2.13`) or a release (`7.2.13+deb14-amd64`) exactly that one.
fn select_newer<'a>(arg: &str, names: impl Iterator<Item = &'a str>) -> Option<String> {
    let series = arg.matches('.').count() == 1;
    names
        .filter(|n| {
            newer_release(n).is_some_and(|(release, version)| {
                release == arg || version == arg || (series && version.starts_with(&format!("{arg}.")))
            })
        })
        .max_by_key(|n| version_key(n))
        .map(str::to_string)
}

/// The newer suites' releases among `names`, oldest first.
fn newer_releases<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut releases: Vec<&str> = names.filter_map(|n| newer_release(n).map(|(r, _)| r)).collect();
    releases.sort_by_key(|r| version_key(r));
    releases.into_iter().map(str::to_string).collect()
}

/// A newer image package is a metapackage: `linux-binary-<release>` holds the kernel,
/// `linux-modules-<release>` the modules and `linux-base-<release>` the config, each pinned
/// `(= version)`. Debian 12's image packages depend on none of them.
pub(crate) fn image_parts(depends: &str, release: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|d| {
            let d = d.trim();
            let name = d.split_whitespace().next()?;
            let part = ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| name.strip_prefix(p) == Some(release));
            let version = d.split_once("(=").map(|(_, v)| v.trim().trim_end_matches(')').trim());
            part.then(|| version.map_or(name.to_string(), |v| format!("{name}={v}")))
        })
        .collect()
}

/// The merged-/usr layout of the newer packages (`usr/lib/modules/<release>/{vmlinuz,config}`,
/// modules under `usr/lib/modules`) linked into the one Debian 12's have (`boot/vmlinuz-<release>`,
/// `boot/config-<release>`, `lib/modules`), which the damage checks and brd's lookup read.
pub(crate) fn link_merged_usr(root: &Path, release: &str) -> Result<(), OracleError> {
    let io = |p: &Path, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
    let modules = Path::new("usr/lib/modules").join(release);
    if root.join("usr/lib/modules").is_dir() && !root.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).map_err(|e| io(&root.join("lib"), e))?;
    }
    let boot = root.join("boot");
    std::fs::create_dir_all(&boot).map_err(|e| io(&boot, e))?;
    for (file, name) in [("vmlinuz", "vmlinuz"), ("config", "config")] {
        let link = boot.join(format!("{name}-{release}"));
        if !link.exists() && root.join(&modules).join(file).is_file() {
            std::os::unix::fs::symlink(Path::new("..").join(&modules).join(file), &link).map_err(|e| io(&link, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A release the model's table covers takes its own rules (7.3.4 is the 7.3 row, 7.2.13
    /// the 7.2 row's, 6.18.15 the 6.18 row's series); one past every series read takes the
    /// newest row and says so.
    #[test]
    fn a_newer_release_takes_the_models_rules_for_it() {
        let (v, _) = model_rules("linux-image-7.3.4+deb13-amd64");
        assert_eq!(v.row_of().name, "7.3");
        let (v, _) = model_rules("linux-image-7.2.13+deb14-amd64");
        assert_eq!(v.row_of().name, "7.2");
        let (v, _) = model_rules("linux-image-6.18.15+deb13-amd64");
        assert_eq!(v.row_of().name, "6.18");
        let (v, note) = model_rules("linux-image-9.1.2+deb15-amd64");
        assert_eq!(v, *KernelVersion::ALL.last().unwrap());
        assert!(note.unwrap().contains("stands in"));
    }

    /// `apt-cache pkgnames linux-image-` on the private configuration (2026-12-06), cut down.
    const PKGNAMES: &str = "linux-image-6.18.9+deb13-amd64\nlinux-image-7.3.4+deb13-cloud-amd64\n\
        linux-image-6.18.15+deb13-amd64\nlinux-image-7.2.13+deb14-amd64\nlinux-image-7.2.9+deb13-amd64\n\
        linux-image-7.3.4+deb13-amd64\nlinux-image-7.3.4+deb13-amd64-dbg\nlinux-image-amd64\n\
        linux-image-6.18.15+deb13-rt-amd64\nlinux-image-7.2.12+deb13-amd64\n";

    #[test]
    fn a_series_takes_its_newest_release_and_a_release_selects_exactly() {
        let pick = |arg: &str| select_newer(arg, PKGNAMES.lines());
        assert_eq!(pick("6.18").as_deref(), Some("linux-image-6.18.15+deb13-amd64"));
        assert_eq!(pick("7.3").as_deref(), Some("linux-image-7.3.4+deb13-amd64"));
        assert_eq!(pick("7.2").as_deref(), Some("linux-image-7.2.13+deb14-amd64"), "by number: 13 after 9 and 12");
        assert_eq!(pick("7.2.9").as_deref(), Some("linux-image-7.2.9+deb13-amd64"));
        assert_eq!(pick("7.2.13+deb14-amd64").as_deref(), Some("linux-image-7.2.13+deb14-amd64"));
        assert_eq!(pick("7.2.1"), None, "a version is not a prefix of 7.2.12");
        assert_eq!(pick("7.30"), None);
        assert_eq!(pick("7"), None);
        assert_eq!(
            newer_releases(PKGNAMES.lines()),
            [
                "6.18.9+deb13-amd64",
                "6.18.15+deb13-amd64",
                "7.2.9+deb13-amd64",
                "7.2.12+deb13-amd64",
                "7.2.13+deb14-amd64",
                "7.3.4+deb13-amd64"
            ]
        );
        assert_eq!(newer_release("linux-image-6.12.118+deb12-amd64"), Some(("6.12.118+deb12-amd64", "6.12.118")));
        assert_eq!(newer_release("linux-image-6.1.0-57-amd64"), None);
    }

    #[test]
    fn what_the_newer_suites_cannot_hold_is_refused_without_asking_them() {
        for arg in ["6.18", "7.3", "7.2.13", "6.13", "7.3.4+deb13-amd64", "6.12.57+deb13-amd64"] {
            assert!(could_be_newer(arg), "{arg}");
        }
        for arg in ["5.0", "6.7", "6.12.1", "7", "7.3.4.1", "7.x", "7.3-rc1"] {
            assert!(!could_be_newer(arg), "{arg}");
        }
        let Err(OracleError::Input(msg)) = resolve_newer("6.7", Path::new("/nonexistent")) else { panic!("refused") };
        assert!(msg.contains("--kernel `6.7`") && msg.contains("6.13 on"), "{msg}");
    }

    /// The Depends of `apt-cache show` for 7.3.4's metapackage and 6.18.15's image package.
    #[test]
    fn a_metapackage_brings_its_binary_modules_and_base_at_its_own_version() {
        let meta = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-amd64 \
                    (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), \
                    linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)";
        assert_eq!(
            image_parts(meta, "7.3.4+deb13-amd64"),
            [
                "linux-base-7.3.4+deb13-amd64=7.3.4-1~bpo13+1",
                "linux-binary-7.3.4+deb13-amd64=7.3.4-1~bpo13+1",
                "linux-modules-7.3.4+deb13-amd64=7.3.4-1~bpo13+1"
            ]
        );
        let whole = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod, \
                     linux-base-6.18.15+deb13-amd64 (= 6.18.15-1~bpo13+1)";
        assert_eq!(image_parts(whole, "6.18.15+deb13-amd64"), ["linux-base-6.18.15+deb13-amd64=6.18.15-1~bpo13+1"]);
        assert!(image_parts("kmod, linux-base (>= 4.3~), initramfs-tools", "6.1.0-57-amd64").is_empty());
        assert!(image_parts(meta, "7.3.4+deb13-cloud-amd64").is_empty(), "another flavour's parts are not ours");
    }

    #[test]
    fn the_merged_usr_layout_is_linked_where_the_checks_look() {
        let root = std::env::temp_dir().join(format!("oracle-merged-{}", std::process::id()));
        let modules = root.join("usr/lib/modules/7.3.4+deb13-amd64");
        std::fs::create_dir_all(modules.join("kernel/drivers/block")).unwrap();
        std::fs::write(modules.join("vmlinuz"), "image").unwrap();
        std::fs::write(modules.join("config"), "CONFIG_NUMA=y\n").unwrap();
        link_merged_usr(&root, "7.3.4+deb13-amd64").unwrap();
        assert_eq!(std::fs::read_to_string(root.join("boot/vmlinuz-7.3.4+deb13-amd64")).unwrap(), "image");
        assert_eq!(std::fs::read_to_string(root.join("boot/config-7.3.4+deb13-amd64")).unwrap(), "CONFIG_NUMA=y\n");
        assert!(root.join("lib/modules/7.3.4+deb13-amd64/kernel/drivers/block").is_dir());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
