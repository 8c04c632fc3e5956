//! A Debian build root in the kernel cache for a kernel whose compiler the host lacks (6.18
//! and 7.3 were built with trixie's `x86_64-linux-gnu-gcc-14`, 7.2.13 with sid's gcc-16;
//! Debian 12 has gcc-12, and those compilers need their own suite's libc). The root holds the
//! kernel's compiler at the exact Debian version its CONFIG_CC_VERSION_TEXT names, make,
//! binutils, a shell and the tools and libraries kbuild and the headers' prebuilt
//! `linux-kbuild` programs run. Its packages are resolved against an empty dpkg status by an
//! apt configuration private to the cache (one per suite, `cache/apt-<suite>`), downloaded
//! into `cache/debs` and unpacked with `dpkg-deb -x` into the flock'd entry
//! `cache/buildroot-<package>_<version>`: nothing is installed on the host and its apt
//! sources are never read for these suites. gupdev is then built by the module's own
//! `build.sh` under `chroot(8)` in a private mount namespace (`unshare --mount`) where the
//! headers entry, the module's sources, the output directory, /dev and a /proc are mounted.
//!
//! Simplification: no maintainer script runs in the root; the one link they make that kbuild
//! needs (`awk`, an alternative) is made by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::Apt;
use crate::damage::Damage;
use crate::kernel::{download_all, unpack_downloaded};
use crate::{OracleError, cache_lock, stop};

/// The suites a compiler's exact version is looked for in, in order.
const SUITES: [&str; 2] = ["trixie", "sid"];

/// Besides the compiler: what kbuild runs for an external module (make, a shell, coreutils,
/// sed, grep, awk, find, cmp), `pahole`, the libraries the headers' `linux-kbuild` programs
/// (modpost, objtool) link (linux-kbuild-7.3.4+deb13's Depends), and base-files for the
/// merged-/usr links (`/bin` → `usr/bin`, `/lib64` → `usr/lib64`) the programs are found by.
const TOOLS: [&str; 14] = [
    "make",
    "bash",
    "dash",
    "coreutils",
    "sed",
    "grep",
    "mawk",
    "findutils",
    "diffutils",
    "pahole",
    "libelf1t64",
    "libssl3t64",
    "zlib1g",
    "base-files",
];

/// Where the root's mounts go, inside it.
const HEADERS: &str = "numasim/headers";
const SOURCES: &str = "numasim/src";
const OUT: &str = "numasim/out";

/// The compiler a kernel's config names: `x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0`
/// (6.1's says `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`).
#[derive(Clone, Debug, PartialEq)]
pub struct Compiler {
    /// The first line of `<command> --version`, as CONFIG_CC_VERSION_TEXT keeps it.
    pub text: String,
    /// `x86_64-linux-gnu-gcc-14`.
    pub command: String,
    /// The Debian package and version that ship it: `gcc-14`, `14.2.0-19`.
    pub package: String,
    pub version: String,
}

impl Compiler {
    /// The compiler of a kernel config, if its CONFIG_CC_VERSION_TEXT names a Debian build of
    /// `gcc-N` or `<triplet>-gcc-N`.
    pub fn of_config(config: &str) -> Option<Compiler> {
        let text = config.lines().find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT=\""))?.strip_suffix('"')?;
        let command = text.split_whitespace().next()?;
        let package = command.strip_prefix("x86_64-linux-gnu-").unwrap_or(command);
        let version = text.split_once("(Debian ")?.1.split_once(')')?.0;
        (package.starts_with("gcc-") && !version.is_empty()).then(|| Compiler {
            text: text.to_string(),
            command: command.to_string(),
            package: package.to_string(),
            version: version.to_string(),
        })
    }

    /// The cache entry of the root that holds this compiler.
    fn entry(&self) -> String {
        format!("buildroot-{}_{}", self.package, self.version)
    }

    /// Whether `--version` output is this compiler's: its first line is the config's text.
    fn is_version(&self, version_output: &str) -> bool {
        version_output.lines().next().map(str::trim_end) == Some(self.text.as_str())
    }
}

/// Whether this host can build in a root: root's privileges for chroot and a mount
/// namespace, and util-linux's `unshare` and coreutils' `chroot`. What is missing, said.
pub fn check_host(compiler: &Compiler) -> Result<(), OracleError> {
    // SAFETY: geteuid() has no preconditions.
    let needs = host_needs(crate::gupdev::on_path, unsafe { libc::geteuid() } == 0);
    if needs.is_empty() {
        return Ok(());
    }
    Err(OracleError::Input(format!(
        "the gupdev module must be built with the kernel's own compiler, {}, which this host lacks; numasim \
         builds it in a Debian build root in the kernel cache, which needs {}",
        compiler.text,
        needs.join(" and ")
    )))
}

/// What a build in a root needs that this host lacks: the tools (with their package) and root.
fn host_needs(on_path: impl Fn(&str) -> bool, root: bool) -> Vec<String> {
    let tools = [("unshare", "util-linux"), ("chroot", "coreutils")];
    let mut needs: Vec<String> =
        tools.iter().filter(|(t, _)| !on_path(t)).map(|(t, package)| format!("`{t}` ({package})")).collect();
    if !root {
        needs.push("root's privileges (chroot and a private mount namespace)".to_string());
    }
    needs
}

/// The build root holding `compiler`, made once (and again when damaged) under its entry's lock.
/// The lock is held while the caller builds in it.
pub fn root_for(compiler: &Compiler, cache: &Path) -> Result<(PathBuf, cache_lock::EntryLock), OracleError> {
    let entry = compiler.entry();
    let lock = cache_lock::lock_entry(cache, &entry)?;
    let root = cache.join(&entry);
    let mut made = false;
    loop {
        match root_damage(&root, compiler) {
            None => return Ok((root, lock)),
            Some(d) if !made => {
                if root.exists() {
                    eprintln!("{}: {}: making the build root {entry} again", d.file.display(), d.what);
                }
                make_root(compiler, cache)?;
                made = true;
            }
            Some(d) => {
                return Err(OracleError::Input(format!(
                    "the build root {} for {}: {}: {}",
                    root.display(),
                    compiler.text,
                    d.file.display(),
                    d.what
                )));
            }
        }
    }
}

/// What is wrong with a root, if anything: a tool missing, or a compiler that does not say
/// the config's version text when run inside it.
fn root_damage(root: &Path, compiler: &Compiler) -> Option<Damage> {
    let cc = root.join("usr/bin").join(&compiler.command);
    for file in [cc.clone(), root.join("usr/bin/make"), root.join("usr/bin/bash"), root.join("usr/bin/awk")] {
        if !file.is_file() {
            return Some(Damage::new(&file, "missing"));
        }
    }
    let mut cmd = Command::new("chroot");
    cmd.arg(root).arg(&compiler.command).arg("--version");
    match stop::output(&mut cmd, "chroot") {
        Ok(out) if out.status.success() && compiler.is_version(&String::from_utf8_lossy(&out.stdout)) => None,
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let said = stdout.lines().next().unwrap_or("");
            let why = if stderr.trim().is_empty() { String::new() } else { format!(" ({})", stderr.trim()) };
            Some(Damage::new(&cc, format!("says `{said}` where the kernel's config names `{}`{why}", compiler.text)))
        }
        Err(e) => Some(Damage::new(&cc, format!("chroot: {e}"))),
    }
}

/// Resolves, downloads and unpacks the root's packages into its entry.
fn make_root(compiler: &Compiler, cache: &Path) -> Result<(), OracleError> {
    let (suite, apt) = suite_with(compiler, cache)?;
    eprintln!("making a {suite} build root for {} in {}", compiler.text, cache.join(compiler.entry()).display());
    let packages = resolve(compiler, &apt)?;
    let debs = cache.join("debs");
    unpack_downloaded(|| download_all(&packages, &debs, &apt), cache, &compiler.entry(), fix_root)
}

/// The first suite whose lists hold the compiler's package at the config's version.
fn suite_with(compiler: &Compiler, cache: &Path) -> Result<(&'static str, Apt), OracleError> {
    let wanted = format!("{}={}", compiler.package, compiler.version);
    let mut tried = Vec::new();
    for suite in SUITES {
        match Apt::private_for(cache, &format!("apt-{suite}"), &[suite]) {
            Ok(apt) if apt.knows(&wanted) => return Ok((suite, apt)),
            Ok(_) => tried.push(format!("{suite} has no {wanted}")),
            Err(e) => tried.push(format!("{suite}: {e}")),
        }
    }
    Err(OracleError::Input(format!(
        "the gupdev module must be built with {}, and no suite holds it: {}",
        compiler.text,
        tried.join("; ")
    )))
}

/// Every package of the root at its version: apt-get's simulated install over an empty
/// status (`-s`), which lists each as `Inst name (version ...)`.
fn resolve(compiler: &Compiler, apt: &Apt) -> Result<Vec<String>, OracleError> {
    let mut cmd = apt.command("apt-get");
    cmd.args(["-s", "--no-install-recommends", "install"])
        .arg(format!("{}={}", compiler.package, compiler.version))
        .args(TOOLS);
    let out = stop::output(&mut cmd, "apt-get -s install").map_err(|e| OracleError::Input(format!("apt-get: {e}")))?;
    let packages = installs(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() || packages.is_empty() {
        return Err(OracleError::Io(format!(
            "apt-get cannot resolve a build root for {}: {}",
            compiler.text,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(packages)
}

/// `name=version` of each `Inst` line of `apt-get -s install`.
fn installs(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("Inst ")?.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.strip_prefix('(')?;
            Some(format!("{name}={version}"))
        })
        .collect()
}

/// The alternative link maintainer scripts would make, and the root's mount points.
fn fix_root(root: &Path) -> Result<(), OracleError> {
    let io = |p: PathBuf, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
    let awk = root.join("usr/bin/awk");
    if !awk.exists() {
        std::os::unix::fs::symlink("mawk", &awk).map_err(|e| io(awk, e))?;
    }
    for dir in [HEADERS, SOURCES, OUT, "dev", "proc", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| io(root.join(dir), e))?;
    }
    Ok(())
}

/// `build.sh` of `sources` run in `root` against the headers entry `headers` (its tree at
/// `usr/src/<tree>`), writing into `out`.
pub fn build_in_root(root: &Path, headers: &Path, tree: &str, sources: &Path, out: &Path) -> Command {
    // The mounts go with the namespace when the build ends, killed or not.
    let script = format!(
        "mount --bind \"$1\" \"$0/{HEADERS}\" && mount --bind \"$2\" \"$0/{SOURCES}\" && \
         mount --bind \"$3\" \"$0/{OUT}\" && mount --rbind /dev \"$0/dev\" && mount -t proc proc \"$0/proc\" && \
         exec chroot \"$0\" /usr/bin/bash /{SOURCES}/build.sh /{HEADERS}/usr/src/{tree} /{OUT}"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--fork", "--", "sh", "-c", &script]).arg(root).arg(headers).arg(sources).arg(out);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_names_its_compiler_package_and_version() {
        let cc = Compiler::of_config(
            "CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"\nCONFIG_CC_IS_GCC=y\n",
        )
        .unwrap();
        assert_eq!(cc.command, "x86_64-linux-gnu-gcc-14");
        assert_eq!((cc.package.as_str(), cc.version.as_str()), ("gcc-14", "14.2.0-19"));
        assert_eq!(cc.entry(), "buildroot-gcc-14_14.2.0-19");
        let sid = Compiler::of_config("CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0\"\n");
        assert_eq!(sid.map(|c| c.version), Some("16.2.0-4".to_string()));
        let bookworm = Compiler::of_config("CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\n");
        assert_eq!(bookworm.map(|c| (c.command, c.package)), Some(("gcc-12".to_string(), "gcc-12".to_string())));
        assert_eq!(Compiler::of_config("CONFIG_CC_VERSION_TEXT=\"gcc (GCC) 14.2.1 20250110\"\n"), None, "not Debian's");
        assert_eq!(Compiler::of_config("CONFIG_CC_VERSION_TEXT=\"Debian clang version 19.1.7\"\n"), None);
        assert_eq!(Compiler::of_config("CONFIG_CC_IS_GCC=y\n"), None);
    }

    /// `--version` of trixie's gcc-14 and of sid's newer build of the same major.
    #[test]
    fn only_the_configs_exact_version_text_is_the_kernels_compiler() {
        let cc = Compiler::of_config("CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"\n")
            .unwrap();
        assert!(cc.is_version(
            "x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\nCopyright (C) 2024 Free Software Foundation, Inc.\n"
        ));
        assert!(!cc.is_version("x86_64-linux-gnu-gcc-14 (Debian 14.4.0-3) 14.4.0\n"));
        assert!(!cc.is_version(""));
    }

    #[test]
    fn a_host_without_the_tools_or_root_is_told_what_it_lacks() {
        assert!(host_needs(|_| true, true).is_empty());
        assert_eq!(
            host_needs(|t| t != "unshare", false),
            ["`unshare` (util-linux)", "root's privileges (chroot and a private mount namespace)"]
        );
        assert_eq!(host_needs(|_| false, true), ["`unshare` (util-linux)", "`chroot` (coreutils)"]);
    }

    #[test]
    fn a_simulated_install_lists_each_package_at_its_version() {
        let sim = "NOTE: This is only a simulation!\nInst gcc-14-base (14.2.0-19 Debian:13.8/stable [amd64])\n\
                   Inst libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64])\n\
                   Conf libc6 (2.41-12+deb13u5 Debian:13.8/stable [amd64])\nInst make (4.4.1-2 Debian:13.8/stable [amd64])\n";
        assert_eq!(installs(sim), ["gcc-14-base=14.2.0-19", "libc6=2.41-12+deb13u5", "make=4.4.1-2"]);
    }

    #[test]
    fn a_root_without_its_compiler_is_damaged_naming_it() {
        let root = std::env::temp_dir().join(format!("oracle-buildroot-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        let cc = Compiler::of_config("CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0\"\n")
            .unwrap();
        let d = root_damage(&root, &cc).unwrap();
        assert!(d.file.ends_with("usr/bin/x86_64-linux-gnu-gcc-14") && d.what == "missing", "{}", d.what);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
