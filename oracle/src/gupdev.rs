//! gupdev.ko (oracle/gupdev/) for the kernel the oracle boots: built by the module's own
//! `build.sh` against the release's headers (Debian's kernels: fetched into the kernel cache,
//! see [`crate::kernel::headers_tree`]) or the build tree beside a user's bzImage, into
//! `target/gupdev/<release>/`, and rebuilt only when a source file is newer than the module.
//! A Debian kernel built with a compiler the host lacks is built for in a build root of that
//! compiler ([`crate::buildroot`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use sim_core::config::Config;

use crate::buildroot::{self, Compiler};
use crate::kernel::headers_tree;
use crate::{KernelSpec, OracleError, cache_lock, plan, stop};

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gupdev")
}

/// Whether `cfg` can run on `k` as far as the module goes, said before QEMU is looked for or
/// anything is fetched: a scenario that needs gupdev on a user's image without its build tree
/// is bad input.
pub fn check_buildable(cfg: &Config, k: &KernelSpec) -> Result<(), OracleError> {
    if plan::plan_of(cfg)?.smmus.is_empty() {
        return Ok(());
    }
    if let Some(cc) = root_compiler(k) {
        return buildroot::check_host(cc);
    }
    match (&k.build_dir, &k.headers_package) {
        (Some(_), _) | (_, Some(_)) => Ok(()),
        _ => Err(no_build_tree(k)),
    }
}

/// The compiler of a Debian kernel that the host lacks, which a build root in the kernel cache
/// then provides: a module built by another compiler than the kernel's is not trusted.
fn root_compiler(k: &KernelSpec) -> Option<&Compiler> {
    let cc = k.compiler.as_ref()?;
    (k.build_dir.is_none() && k.headers_package.is_some() && !on_path(&cc.command)).then_some(cc)
}

fn no_build_tree(k: &KernelSpec) -> OracleError {
    OracleError::Input(format!(
        "{}: the scenario needs the gupdev module (a `driver` device or a [[vm]]), which is built against \
         the kernel's build tree: no Module.symvers found in the tree the image sits in (arch/x86/boot/) \
         or beside it; build the kernel with `make` and boot arch/x86/boot/bzImage from that tree",
        k.image.display()
    ))
}

/// The module for `k`, built if missing or older than its sources. A kernel it cannot be
/// built for (no build tree, no compiler, a failed build) is bad input. One run at a time
/// builds a release's module, in a scratch directory renamed into place when the build
/// succeeded: a killed build leaves no module that looks fresh.
pub fn module_for(k: &KernelSpec) -> Result<PathBuf, OracleError> {
    let src = source_dir();
    let modules = src.parent().and_then(Path::parent).expect("oracle/ is inside the workspace").join("target/gupdev");
    let _lock = cache_lock::lock_entry(&modules, k.release())?;
    let out = modules.join(k.release());
    let ko = out.join("gupdev.ko");
    if is_fresh(&ko, &src) {
        return Ok(ko);
    }
    let tree = match (&k.build_dir, &k.headers_package) {
        (Some(tree), _) => tree.clone(),
        (None, Some(_)) => headers_tree(k.release())?,
        (None, None) => return Err(no_build_tree(k)),
    };
    let what = format!("the gupdev build for {}", k.release());
    let tmp = stop::Scratch::new(modules.join(format!(".{}.tmp", k.release())));
    let _ = std::fs::remove_dir_all(tmp.path());
    let built = match root_compiler(k) {
        Some(cc) => build_in_root(cc, &tree, tmp.path(), &what)?,
        None => {
            check_compiler(&tree, k.release())?;
            stop::output(Command::new(src.join("build.sh")).arg(&tree).arg(tmp.path()), &what)
                .map_err(|e| OracleError::Input(format!("{}: {e}", src.join("build.sh").display())))?
        }
    };
    build_result(&built, k.release())?;
    let io = |e: std::io::Error| OracleError::Io(format!("{}: {e}", out.display()));
    match std::fs::remove_dir_all(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    std::fs::rename(tmp.path(), &out).map_err(io)?;
    Ok(ko)
}

/// build.sh run in the build root of the kernel's compiler against the headers tree `tree`
/// (`<entry>/usr/src/<name>`), writing into `out`.
fn build_in_root(cc: &Compiler, tree: &Path, out: &Path, what: &str) -> Result<std::process::Output, OracleError> {
    let (root, _lock) = buildroot::root_for(cc, &crate::kernel::cache_dir())?;
    let name = tree.file_name().and_then(|n| n.to_str()).expect("a headers tree has a name");
    let entry = tree.ancestors().nth(3).expect("a headers tree is <entry>/usr/src/<name>");
    std::fs::create_dir_all(out).map_err(|e| OracleError::Io(format!("{}: {e}", out.display())))?;
    stop::output(&mut buildroot::build_in_root(&root, entry, name, &source_dir(), out), what)
        .map_err(|e| OracleError::Input(format!("unshare: {e}: run `apt-get install -y util-linux`")))
}

/// The compiler the kernel was built with (its config's CONFIG_CC_VERSION_TEXT, e.g.
/// `x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14) 12.2.0`), which kbuild calls, and make.
fn check_compiler(tree: &Path, release: &str) -> Result<(), OracleError> {
    let config = std::fs::read_to_string(tree.join(".config")).unwrap_or_default();
    let cc = compiler_of(&config).unwrap_or_else(|| "gcc".to_string());
    let missing: Vec<&str> = [cc.as_str(), "make"].into_iter().filter(|tool| !on_path(tool)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|t| package_of(t)).collect();
    Err(OracleError::Input(format!(
        "the gupdev module for kernel {release} is built with {} (what the kernel was built with), not \
         installed: run `apt-get install -y --no-install-recommends {}`",
        missing.join(" and "),
        packages.join(" ")
    )))
}

/// The compiler a kernel config's CONFIG_CC_VERSION_TEXT names.
fn compiler_of(config: &str) -> Option<String> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT=\""))
        .and_then(|t| t.split_whitespace().next())
        .map(str::to_string)
}

/// `x86_64-linux-gnu-gcc-12` comes in Debian's `gcc-12`.
fn package_of(tool: &str) -> &str {
    tool.strip_prefix("x86_64-linux-gnu-").unwrap_or(tool)
}

pub(crate) fn on_path(tool: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file())
}

/// build.sh's outcome: exit 2 names the headers package to install; any failure is a
/// kernel the module cannot be built for.
fn build_result(out: &std::process::Output, release: &str) -> Result<(), OracleError> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    Err(OracleError::Input(format!(
        "the scenario needs the gupdev module (a `driver` device or a [[vm]]), which cannot be built for kernel \
         {release}:\n{tail}"
    )))
}

/// The module exists and no source (C, headers, Kbuild, build.sh) is newer.
fn is_fresh(ko: &Path, src: &Path) -> bool {
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let Some(built) = mtime(ko) else { return false };
    let newest = std::fs::read_dir(src)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter_map(|p| mtime(&p))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    newest <= built
}

#[cfg(test)]
mod tests {
    use super::*;

    /// build.sh itself refuses a release whose headers are nowhere, naming the package.
    #[test]
    fn a_kernel_without_headers_is_bad_input_naming_the_package() {
        let out = Command::new(source_dir().join("build.sh"))
            .arg("6.12.999+deb12-amd64")
            .arg(std::env::temp_dir().join(format!("gupdev-none-{}", std::process::id())))
            .env("NUMASIM_KERNEL_CACHE", std::env::temp_dir().join(format!("gupdev-no-cache-{}", std::process::id())))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let Err(OracleError::Input(msg)) = build_result(&out, "6.12.999+deb12-amd64") else { panic!("must fail") };
        assert!(msg.contains("linux-headers-6.12.999+deb12-amd64"), "{msg}");
    }

    /// A tree whose compiler is not on PATH is refused naming the Debian package to install.
    #[test]
    fn a_missing_compiler_is_bad_input_naming_the_package() {
        let dir = std::env::temp_dir().join(format!("gupdev-cc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = "CONFIG_CC_VERSION_TEXT=\"x86_64-linux-gnu-gcc-97 (Debian 97.1.0-1) 97.1.0\"\n";
        std::fs::write(dir.join(".config"), text).unwrap();
        let Err(OracleError::Input(msg)) = check_compiler(&dir, "6.12.0-test") else { panic!("must fail") };
        assert!(
            msg.contains("x86_64-linux-gnu-gcc-97") && msg.contains("install -y --no-install-recommends gcc-97"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_module_older_than_a_source_is_rebuilt() {
        let dir = std::env::temp_dir().join(format!("gupdev-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ko = dir.join("out.ko");
        assert!(!is_fresh(&ko, &dir), "no module yet");
        std::fs::write(dir.join("a.c"), "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&ko, "").unwrap();
        assert!(is_fresh(&ko, &dir));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("a.c"), "int x;").unwrap();
        assert!(!is_fresh(&ko, &dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
