//! gupdev.ko (oracle/gupdev/) for the kernel the oracle boots: built by the module's own
//! `build.sh` against the release's headers package (Debian's kernels) or the build tree
//! beside a user's bzImage, into `target/gupdev/<release>/`, and rebuilt only when a source
//! file is newer than the module.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::{KernelSpec, OracleError};

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gupdev")
}

/// The module for `k`, built if missing or older than its sources. A kernel it cannot be
/// built for (no headers package, no build tree, a failed build) is bad input.
pub fn module_for(k: &KernelSpec) -> Result<PathBuf, OracleError> {
    let src = source_dir();
    let out = src.parent().and_then(Path::parent).expect("oracle/ is inside the workspace").join("target/gupdev");
    let out = out.join(k.release());
    let ko = out.join("gupdev.ko");
    if is_fresh(&ko, &src) {
        return Ok(ko);
    }
    let target = match (&k.build_dir, &k.headers_package) {
        (Some(tree), _) => tree.display().to_string(),
        (None, Some(_)) => k.release().to_string(),
        (None, None) => {
            return Err(OracleError::Input(format!(
                "{}: the scenario needs the gupdev module (a `driver` device or a [[vm]]), which is built against \
                 the kernel's build tree: no Module.symvers found in the tree the image sits in (arch/x86/boot/) \
                 or beside it; build the kernel with `make` and boot arch/x86/boot/bzImage from that tree",
                k.image.display()
            )));
        }
    };
    let built = Command::new(src.join("build.sh"))
        .arg(&target)
        .arg(&out)
        .output()
        .map_err(|e| OracleError::Input(format!("{}: {e}", src.join("build.sh").display())))?;
    build_result(&built, k.release())?;
    Ok(ko)
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

    /// build.sh itself refuses a release whose headers are not installed, naming the package.
    #[test]
    fn a_kernel_without_headers_is_bad_input_naming_the_package() {
        let out = Command::new(source_dir().join("build.sh"))
            .arg("6.12.999+deb12-amd64")
            .arg(std::env::temp_dir().join(format!("gupdev-none-{}", std::process::id())))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let Err(OracleError::Input(msg)) = build_result(&out, "6.12.999+deb12-amd64") else { panic!("must fail") };
        assert!(msg.contains("apt-get install linux-headers-6.12.999+deb12-amd64"), "{msg}");
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
