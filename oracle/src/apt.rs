//! Which apt configuration fetches a kernel: the host's for Debian 12's own kernels, or one
//! private to the kernel cache for the newer kernels of `trixie-backports` and `sid`. The
//! private one has its own sources list, lists, cache and status under `<cache>/apt`, and
//! `apt-get update` runs on it alone: the host's apt sources and lists are never changed.
//!
//! The Release files of both suites are checked against the host's
//! `/usr/share/keyrings/debian-archive-keyring.gpg` (Debian 12's keyring package already holds
//! the trixie archive keys), named with `[signed-by=...]`; signatures are never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::{OracleError, cache_lock, stop};

/// The suites the newer kernels come from.
pub const SUITES: [&str; 2] = ["trixie-backports", "sid"];

/// The keyring the private sources list names for the suites' Release files.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where the host's Debian mirror is named (deb822), and the mirror when it names none.
const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Lists older than this are fetched again: the suites move daily.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The `-o` options apt-get and apt-cache run with (none for the host's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct Apt {
    options: Vec<String>,
}

impl Apt {
    pub fn host() -> Apt {
        Apt { options: Vec::new() }
    }

    /// The configuration private to `cache` for the newer kernels' suites, its lists fetched
    /// when missing or a day old.
    pub fn private(cache: &Path) -> Result<Apt, OracleError> {
        Apt::private_for(cache, "apt", &SUITES)
    }

    /// A configuration private to `cache` in `cache/<name>` over `suites` alone, kept like
    /// [`Apt::private`]'s.
    pub fn private_for(cache: &Path, name: &str, suites: &[&str]) -> Result<Apt, OracleError> {
        let dir = cache.join(name);
        let apt = Apt::in_dir(&dir);
        let _lock = cache_lock::lock_entry(cache, name)?;
        let stamp = dir.join("updated");
        if is_stale(&stamp) {
            let host = std::fs::read_to_string(HOST_SOURCES).unwrap_or_default();
            write_layout(&dir, &sources_list(&mirror_of(&host), suites))?;
            eprintln!("apt-get update of the kernel cache's own sources ({})", suites.join(", "));
            let mut cmd = apt.command("apt-get");
            // The AppStream metadata the host may ask for is no use to a kernel fetch.
            cmd.args(["-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false", "update"]);
            let out = stop::output(&mut cmd, "apt-get update")
                .map_err(|e| OracleError::Input(format!("apt-get update: {e}")))?;
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() || err.lines().any(update_failed) {
                return Err(OracleError::Io(format!(
                    "apt-get update of {} failed: {}",
                    dir.join("sources.list").display(),
                    err.trim()
                )));
            }
            // apt dates the lists by the archive's clock; the stamp says when they were fetched.
            std::fs::write(&stamp, "").map_err(|e| OracleError::Io(format!("{}: {e}", stamp.display())))?;
        }
        Ok(apt)
    }

    fn in_dir(dir: &Path) -> Apt {
        let d = |p: &str| dir.join(p).display().to_string();
        let options = [
            ("Dir::Etc::sourcelist", d("sources.list")),
            ("Dir::Etc::sourceparts", "-".to_string()),
            ("Dir::State::Lists", d("lists")),
            ("Dir::Cache", d("cache")),
            ("Dir::State::status", d("status")),
        ];
        Apt { options: options.iter().flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")]).collect() }
    }

    /// `tool` (apt-get, apt-cache) with this configuration's options.
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(&self.options);
        cmd
    }

    /// Whether a suite holds `package` (`name` or `name=version`) as a package of its own.
    pub fn knows(&self, package: &str) -> bool {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", "--no-all-versions", package]);
        stop::output(&mut cmd, "apt-cache show").is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    /// `apt-cache pkgnames prefix`.
    pub fn pkgnames(&self, prefix: &str) -> Option<String> {
        let out = stop::output(self.command("apt-cache").args(["pkgnames", prefix]), "apt-cache pkgnames").ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// apt-get update exits 0 with a `W:` for a suite it could not fetch or verify.
fn update_failed(stderr_line: &str) -> bool {
    ["E:", "W: GPG error", "W: Failed to fetch", "W: Some index files failed"]
        .iter()
        .any(|p| stderr_line.starts_with(p))
}

/// The lists are missing (no stamp of a successful update) or a day old.
fn is_stale(stamp: &Path) -> bool {
    let fetched = std::fs::metadata(stamp).and_then(|m| m.modified()).ok();
    fetched.is_none_or(|t| SystemTime::now().duration_since(t).is_ok_and(|age| age > LISTS_MAX_AGE))
}

/// The directories apt wants, an empty status (no package counts as installed) and the list.
fn write_layout(dir: &Path, sources: &str) -> Result<(), OracleError> {
    let io = |p: PathBuf, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(dir.join(sub), e))?;
    }
    std::fs::write(dir.join("status"), "").map_err(|e| io(dir.join("status"), e))?;
    std::fs::write(dir.join("sources.list"), sources).map_err(|e| io(dir.join("sources.list"), e))
}

/// The first `URIs:` of the host's deb822 sources that is Debian's main archive (not its
/// security archive), else deb.debian.org.
pub fn mirror_of(deb822: &str) -> String {
    deb822
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|u| !u.trim_end_matches('/').ends_with("-security"))
        .unwrap_or(DEFAULT_MIRROR)
        .trim_end_matches('/')
        .to_string()
}

/// One `deb` line per suite, main only, each naming the keyring its Release is checked with.
pub fn sources_list(mirror: &str, suites: &[&str]) -> String {
    suites.iter().map(|s| format!("deb [signed-by={KEYRING}] {mirror} {s} main\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's deb822 file, as the host has it.
    const HOST: &str = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
        URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\n\
        URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn the_private_list_names_the_hosts_mirror_both_suites_and_the_keyring() {
        assert_eq!(mirror_of(HOST), "http://deb.debian.org/debian");
        let security_first = "URIs: http://mirror.example/debian-security/\n\nURIs: http://mirror.example/debian/\n";
        assert_eq!(mirror_of(security_first), "http://mirror.example/debian");
        assert_eq!(mirror_of(""), DEFAULT_MIRROR);
        assert_eq!(
            sources_list("http://m/debian", &SUITES),
            format!(
                "deb [signed-by={KEYRING}] http://m/debian trixie-backports main\ndeb [signed-by={KEYRING}] http://m/debian sid main\n"
            )
        );
    }

    #[test]
    fn the_private_options_point_every_apt_directory_into_the_cache() {
        let apt = Apt::in_dir(Path::new("/c/apt"));
        let o = apt.options.join(" ");
        for want in [
            "-o Dir::Etc::sourcelist=/c/apt/sources.list",
            "-o Dir::Etc::sourceparts=-",
            "-o Dir::State::Lists=/c/apt/lists",
            "-o Dir::Cache=/c/apt/cache",
            "-o Dir::State::status=/c/apt/status",
        ] {
            assert!(o.contains(want), "{o}");
        }
        assert!(Apt::host().options.is_empty());
    }

    /// apt-get update's stderr when a suite's key is unknown or the mirror cannot be reached.
    #[test]
    fn an_update_that_could_not_fetch_or_verify_a_suite_fails() {
        assert!(update_failed(
            "W: GPG error: http://deb.debian.org/debian sid InRelease: The following signatures couldn't be verified"
        ));
        assert!(update_failed(
            "W: Failed to fetch http://deb.debian.org/debian/dists/sid/InRelease  Could not resolve 'deb.debian.org'"
        ));
        assert!(update_failed("E: The repository 'http://deb.debian.org/debian sid InRelease' is not signed."));
        assert!(!update_failed(
            "W: Download is performed unsandboxed as root as file '/c/apt/lists/partial/x' couldn't be accessed by user '_apt'."
        ));
    }

    #[test]
    fn lists_never_fetched_are_stale_and_fresh_ones_are_not() {
        let stamp = std::env::temp_dir().join(format!("oracle-apt-stamp-{}", std::process::id()));
        assert!(is_stale(&stamp));
        std::fs::write(&stamp, "").unwrap();
        assert!(!is_stale(&stamp));
        std::fs::remove_file(&stamp).unwrap();
    }
}
