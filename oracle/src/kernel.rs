//! Which kernel to boot: Debian 12's newest 6.1 or 6.12 image (fetched with `apt-get
//! download` into the cache), a newer release from `trixie-backports` or `sid` (fetched with
//! the cache's own apt configuration: [`crate::apt`], [`crate::newer`]), or a user's own
//! bzImage, with its config checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use sim_core::config::KernelVersion;
use sim_core::release::Release;

use crate::apt::{Apt, SUITES};
use crate::buildroot::Compiler;
use crate::damage::{debian_entry, image_damage};
use crate::newer::{image_parts, link_merged_usr, newer_release, resolve_newer};
use crate::{OracleError, cache_lock, stop};

/// A kernel ready to boot.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    pub image: PathBuf,
    release: String,
    /// brd.ko for this kernel, uncompressed (None when brd is built in).
    pub brd: Option<PathBuf>,
    /// The build tree of a user's kernel (with Module.symvers), for building gupdev.ko;
    /// None for Debian's kernels, whose headers package is found by release.
    pub build_dir: Option<PathBuf>,
    /// Debian's headers package for this kernel (None for a user's image).
    pub headers_package: Option<String>,
    /// The compiler Debian's kernel was built with (its config's CONFIG_CC_VERSION_TEXT),
    /// which gupdev must be built with too.
    pub compiler: Option<Compiler>,
    /// The `kernel.version` of numasim whose rules this kernel's source has.
    sim_version: KernelVersion,
    /// Why `sim_version` stands in for a release the model's table has no row for.
    rules_note: Option<String>,
}

/// The Debian 12 kernel series the oracle knows, the package name pattern of each, and the
/// era its source has (read from the source, not the version number: Debian's 6.1.192 has
/// v6.2's gup_can_follow_protnone()).
struct Series {
    arg: &'static str,
    prefix: &'static str,
    suffix: &'static str,
    sim_version: KernelVersion,
}

const SERIES: [Series; 2] = [
    Series { arg: "6.1", prefix: "linux-image-6.1.0-", suffix: "-amd64", sim_version: KernelVersion::V6_1Debian12 },
    Series { arg: "6.12", prefix: "linux-image-6.12.", suffix: "+deb12-amd64", sim_version: KernelVersion::V6_12 },
];

/// Config options the oracle needs: one of the names of each entry must be `y` (`m` allowed
/// where a module is fine).
const REQUIRED: [(&[&str], &str); 13] = [
    (&["NUMA"], "NUMA nodes"),
    (&["NUMA_BALANCING"], "automatic NUMA balancing"),
    (&["ACPI_NUMA", "NUMA_EMU"], "NUMA topology from QEMU's SRAT"),
    (&["KSM"], "KSM"),
    (&["TRANSPARENT_HUGEPAGE"], "the THP sysfs switch the guest sets to never"),
    (&["BLK_DEV_RAM"], "the brd ramdisk O_DIRECT callers use"),
    (&["DEVTMPFS"], "/dev"),
    (&["SERIAL_8250_CONSOLE"], "the serial console"),
    (&["BLK_DEV_INITRD"], "the initramfs"),
    (&["DEBUG_FS"], "the scan knobs (debugfs sched/numa_balancing)"),
    (&["PROC_PAGE_MONITOR"], "/proc/PID/numa_maps"),
    (&["CROSS_MEMORY_ATTACH"], "process_vm_readv/writev"),
    (&["IO_URING"], "io_uring fixed buffers (long-term pins)"),
];

impl KernelSpec {
    /// The kernel release (`uname -r`), e.g. `6.12.117+deb12-amd64`.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// numasim's `kernel.version` for this kernel's rules.
    pub fn sim_version(&self) -> KernelVersion {
        self.sim_version
    }

    /// Said when the model has no rules of this release's own: which row stands in for them.
    pub fn rules_note(&self) -> Option<&str> {
        self.rules_note.as_deref()
    }

    /// The `--set` overrides that put the simulator in this kernel's era.
    pub fn sim_overrides(&self) -> Vec<String> {
        vec![format!("kernel.version={}", self.sim_version.name())]
    }
}

/// The directory kernels are fetched into: `$NUMASIM_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/numasim/kernels`, else `~/.cache/numasim/kernels`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NUMASIM_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("numasim").join("kernels")
}

/// `6.1`, `6.12` (Debian 12's newest image of the series), a release of the newer suites
/// (`6.18`, `7.3`: the newest of that series; `7.2.13` or `7.3.4+deb13-amd64`: exactly that
/// one) or the path of a bzImage.
pub fn resolve_kernel(arg: &str) -> Result<KernelSpec, OracleError> {
    match SERIES.iter().find(|s| s.arg == arg) {
        Some(series) => resolve_debian(series, &cache_dir()),
        None if Path::new(arg).is_file() => resolve_user_image(Path::new(arg)),
        None if arg.starts_with(|c: char| c.is_ascii_digit()) => resolve_newer(arg, &cache_dir()),
        None => Err(OracleError::Input(format!(
            "--kernel `{arg}`: not 6.1, 6.12, a release of Debian's {} (6.18, 7.3, 7.2.13) or the path of a \
             kernel image (bzImage)",
            SUITES.join(" and ")
        ))),
    }
}

fn resolve_debian(series: &Series, cache: &Path) -> Result<KernelSpec, OracleError> {
    let package = newest_known(series).or_else(|| newest_cached(series, cache)).ok_or_else(|| {
        OracleError::Input(format!(
            "no Debian {} kernel package known to apt and none in {}: run `apt-get update` (the oracle then \
             fetches {}N{} with apt-get download)",
            series.arg,
            cache.display(),
            series.prefix,
            series.suffix
        ))
    })?;
    debian_spec(&package, cache, &Apt::host(), series.sim_version, None)
}

/// The cache entry of a Debian image package, fetched and unpacked when missing or damaged.
pub(crate) fn debian_spec(
    package: &str,
    cache: &Path,
    apt: &Apt,
    sim_version: KernelVersion,
    rules_note: Option<String>,
) -> Result<KernelSpec, OracleError> {
    let root = cache.join(package);
    let _lock = cache_lock::lock_entry(cache, package)?;
    let mut fetched = !root.join("boot").is_dir();
    if fetched {
        fetch_package(package, cache, apt)?;
    }
    let release = package.trim_start_matches("linux-image-").to_string();
    let brd = loop {
        match debian_entry(&root, &release)? {
            Ok(brd) => break brd,
            // Unpacked again from its .deb (downloaded again if that is damaged too).
            Err(d) if !fetched => {
                eprintln!("{}: {}: unpacking {package} again", d.file.display(), d.what);
                fetch_package(package, cache, apt)?;
                fetched = true;
            }
            Err(d) => {
                return Err(OracleError::Input(format!(
                    "{}: {}, in the package as fetched: delete {} and {} (numasim fetches them again) or check \
                     apt's source of {package}",
                    d.file.display(),
                    d.what,
                    root.display(),
                    cache.join("debs").join(format!("{package}_*.deb")).display()
                )));
            }
        }
    };
    let config = root.join("boot").join(format!("config-{release}"));
    check_config(&config, brd.is_some())?;
    Ok(KernelSpec {
        image: root.join("boot").join(format!("vmlinuz-{release}")),
        headers_package: Some(format!("linux-headers-{release}")),
        compiler: built_with(&config),
        release,
        brd,
        build_dir: None,
        sim_version,
        rules_note,
    })
}

/// The numeric parts of a package name, for ordering `6.12.99` before `6.12.117`.
pub(crate) fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

fn matches(series: &Series, name: &str) -> bool {
    name.strip_prefix(series.prefix)
        .and_then(|rest| rest.strip_suffix(series.suffix))
        .is_some_and(|mid| !mid.is_empty() && mid.bytes().all(|b| b.is_ascii_digit()))
}

/// The newest package of the series apt knows about.
fn newest_known(series: &Series) -> Option<String> {
    let out = stop::output(Command::new("apt-cache").args(["pkgnames", series.prefix]), "apt-cache pkgnames").ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| matches(series, n))
        .max_by_key(|n| version_key(n))
        .map(str::to_string)
}

/// The newest package of the series already extracted in the cache (works offline).
fn newest_cached(series: &Series, cache: &Path) -> Option<String> {
    std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| matches(series, n) && cache.join(n).join("boot").is_dir())
        .max_by_key(|n| version_key(n))
}

/// `apt-get download` the package (and the parts a newer image package is a metapackage
/// over) into `cache/debs` and `dpkg-deb -x` them to `cache/<package>`. A .deb that does not
/// unpack because it is damaged (cut short) is downloaded again, once.
fn fetch_package(package: &str, cache: &Path, apt: &Apt) -> Result<(), OracleError> {
    let debs = cache.join("debs");
    let release = package.trim_start_matches("linux-image-");
    let fixup = |root: &Path| link_merged_usr(root, release);
    unpack_downloaded(|| download_image(package, &debs, apt), cache, package, fixup)
}

/// `download`'s .debs unpacked into `cache/<entry>`; when that fails and some .deb does not
/// read to its end, those are removed, downloaded again and the whole unpacked again, once.
pub(crate) fn unpack_downloaded(
    download: impl Fn() -> Result<Vec<PathBuf>, OracleError>,
    cache: &Path,
    entry: &str,
    fixup: impl Fn(&Path) -> Result<(), OracleError>,
) -> Result<(), OracleError> {
    let all = download()?;
    match unpack(&all, cache, entry, &fixup) {
        Err(e) => {
            let damaged: Vec<&PathBuf> = all.iter().filter(|d| deb_is_damaged(d)).collect();
            if damaged.is_empty() {
                return Err(e);
            }
            for deb in damaged {
                eprintln!("{}: does not unpack ({e}): downloading it again", deb.display());
                std::fs::remove_file(deb).map_err(|e| OracleError::Io(format!("{}: {e}", deb.display())))?;
            }
            unpack(&download()?, cache, entry, fixup)
        }
        ok => ok,
    }
}

/// The image package's .deb and those of the parts it depends on at its own version.
fn download_image(package: &str, debs: &Path, apt: &Apt) -> Result<Vec<PathBuf>, OracleError> {
    let main = download(package, debs, apt)?;
    let release = package.trim_start_matches("linux-image-");
    let mut all = vec![main.clone()];
    // 6.18.15's image package depends on a linux-base-<release> neither suite holds (nor
    // provides); it carries its config itself.
    let parts = image_parts(&control_field(&main, "Depends")?, release);
    for part in parts.into_iter().filter(|p| find_deb(debs, p).is_some() || apt.knows(p)) {
        all.push(download(&part, debs, apt)?);
    }
    Ok(all)
}

/// One field of a .deb's control file.
fn control_field(deb: &Path, field: &str) -> Result<String, OracleError> {
    let out = stop::output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field), "dpkg-deb -f").map_err(|e| {
        OracleError::Input(format!("dpkg-deb: {e}: run `apt-get install -y --no-install-recommends dpkg`"))
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `deb` is damaged: dpkg-deb ran and could not read its files to their end
/// (`--fsys-tarfile`, which needs no tar). One that failed to unpack for another reason (no
/// tar, a full disk) is kept.
fn deb_is_damaged(deb: &Path) -> bool {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("--fsys-tarfile").arg(deb);
    stop::status(&mut cmd, "dpkg-deb --fsys-tarfile").is_ok_and(|s| !s.success())
}

/// The build tree of Debian's headers for `release`, fetched into the cache when missing:
/// `linux-headers-<release>` with the `-common` and `linux-kbuild` packages it depends on,
/// unpacked into one root, `cache/linux-headers-<release>/usr/src/linux-headers-<release>`.
pub fn headers_tree(release: &str) -> Result<PathBuf, OracleError> {
    let cache = cache_dir();
    let package = format!("linux-headers-{release}");
    let tree = cache.join(&package).join("usr/src").join(&package);
    let _lock = cache_lock::lock_entry(&cache, &package)?;
    if !tree.join("Makefile").is_file() {
        // The newer suites' releases are known only to the cache's own apt configuration.
        let newer = newer_release(&format!("linux-image-{release}")).is_some();
        let apt = if newer { Apt::private(&cache)? } else { Apt::host() };
        if newer && !apt.knows(&package) {
            return Err(headers_not_held(&package));
        }
        fetch_headers(&package, &cache, &apt)?;
    }
    Ok(tree)
}

/// Whether the headers of a newer suites' `release` are in the cache or the suites, said
/// before anything boots: 6.18.15's image is in trixie-backports without its headers. When
/// the suites cannot be asked, the fetch says why later.
pub fn headers_held(release: &str) -> Result<(), OracleError> {
    let cache = cache_dir();
    let package = format!("linux-headers-{release}");
    let cached = cache.join(&package).join("usr/src").join(&package).join("Makefile").is_file();
    if cached || newer_release(&format!("linux-image-{release}")).is_none() {
        return Ok(());
    }
    match Apt::private(&cache) {
        Ok(apt) if !apt.knows(&package) => Err(headers_not_held(&package)),
        _ => Ok(()),
    }
}

fn headers_not_held(package: &str) -> OracleError {
    OracleError::Input(format!(
        "the scenario needs the gupdev module (a `driver` device or a [[vm]]), built against {package}, which \
         neither {} holds: run it on a release whose headers they hold",
        SUITES.join(" nor ")
    ))
}

fn fetch_headers(package: &str, cache: &Path, apt: &Apt) -> Result<(), OracleError> {
    let debs = cache.join("debs");
    let main = download(package, &debs, apt)?;
    let mut all = vec![main.clone()];
    for dep in build_dependencies(&main)? {
        all.push(download(&dep, &debs, apt)?);
    }
    unpack(&all, cache, package, |root| relocate_headers(root, package))
}

/// The packages a headers package needs to build a module: its `-common` tree and the kbuild
/// tools (`name=version` when it pins one). The compiler it names is checked, not fetched.
fn build_dependencies(deb: &Path) -> Result<Vec<String>, OracleError> {
    let depends = control_field(deb, "Depends")?;
    let wanted: Vec<String> = depends.split(',').filter_map(|d| pinned_dependency(d.split('|').next()?)).collect();
    if wanted.iter().any(|w| w.starts_with("linux-kbuild-")) && wanted.iter().any(|w| w.contains("-common")) {
        Ok(wanted)
    } else {
        Err(OracleError::Io(format!("{}: no -common and linux-kbuild among its Depends: {depends}", deb.display())))
    }
}

/// `linux-headers-X-common (= V)` → `linux-headers-X-common=V`; a `>=` pin is taken as the
/// exact version too (Debian builds the kbuild package with the headers). Other packages: None.
fn pinned_dependency(dep: &str) -> Option<String> {
    let dep = dep.trim();
    let name = dep.split_whitespace().next()?;
    let wanted = name.starts_with("linux-kbuild-") || (name.starts_with("linux-headers-") && name.ends_with("-common"));
    if !wanted {
        return None;
    }
    let version = dep.split_once('(').and_then(|(_, v)| v.trim_end_matches(')').split_whitespace().nth(1));
    Some(version.map_or(name.to_string(), |v| format!("{name}={v}")))
}

/// The arch tree's Makefile includes the `-common` one by its absolute /usr/src path: made
/// relative (make runs in the arch tree), so the unpacked root builds where it lies, or
/// mounted anywhere in a build root. Every
/// symlink under usr/src must resolve inside the root.
fn relocate_headers(root: &Path, package: &str) -> Result<(), OracleError> {
    let src = root.join("usr/src");
    let makefile = src.join(package).join("Makefile");
    let io = |p: &Path, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
    let text = std::fs::read_to_string(&makefile).map_err(|e| io(&makefile, e))?;
    // 7.3's also names its own directory as KBUILD_OUTPUT, by the same absolute path.
    let relative =
        text.replace("include /usr/src/", "include ../").replace("KBUILD_OUTPUT=/usr/src/", "KBUILD_OUTPUT=../");
    std::fs::write(&makefile, relative).map_err(|e| io(&makefile, e))?;
    match link_leaving(&src, root) {
        Some(link) => Err(OracleError::Io(format!(
            "{}: a symlink that does not resolve inside the unpacked headers",
            link.display()
        ))),
        None => Ok(()),
    }
}

/// The first symlink under `dir` that is dangling or resolves outside `root`.
fn link_leaving(dir: &Path, root: &Path) -> Option<PathBuf> {
    let root = root.canonicalize().ok()?;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let path = entry.path();
        let kind = entry.file_type().ok()?;
        if kind.is_symlink() {
            if !path.canonicalize().is_ok_and(|t| t.starts_with(&root)) {
                return Some(path);
            }
        } else if kind.is_dir()
            && let Some(bad) = link_leaving(&path, &root)
        {
            return Some(bad);
        }
    }
    None
}

/// `package` (or `name=version`) as a .deb in `debs`, downloaded when missing.
fn download(package: &str, debs: &Path, apt: &Apt) -> Result<PathBuf, OracleError> {
    let mut got = download_all(&[package.to_string()], debs, apt)?;
    Ok(got.remove(0))
}

/// `packages` (each `name` or `name=version`) as .debs in `debs`, the missing ones downloaded by
/// one apt-get. apt-get runs in a scratch directory and each .deb is renamed in whole, so a
/// killed download leaves nothing that passes for a package.
pub(crate) fn download_all(packages: &[String], debs: &Path, apt: &Apt) -> Result<Vec<PathBuf>, OracleError> {
    let missing: Vec<&String> = packages.iter().filter(|p| find_deb(debs, p).is_none()).collect();
    if !missing.is_empty() {
        let partial = stop::Scratch::new(debs.join(format!(".partial-{}", std::process::id())));
        let partial = partial.path();
        let io = |p: &Path, e: std::io::Error| OracleError::Io(format!("{}: {e}", p.display()));
        remove_abandoned_downloads(debs);
        std::fs::create_dir_all(partial).map_err(|e| io(partial, e))?;
        run_tool(apt.command("apt-get").arg("download").args(&missing).current_dir(partial), "apt-get download")?;
        for package in missing {
            let got = find_deb(partial, package).ok_or_else(|| {
                OracleError::Io(format!("apt-get download {package} left no .deb in {}", partial.display()))
            })?;
            let deb = debs.join(got.file_name().expect("a .deb has a name"));
            std::fs::rename(&got, &deb).map_err(|e| io(&got, e))?;
        }
    }
    Ok(packages.iter().filter_map(|p| find_deb(debs, p)).collect())
}

/// The scratch directories of downloads whose process is gone (killed mid-download).
fn remove_abandoned_downloads(debs: &Path) {
    let Ok(entries) = std::fs::read_dir(debs) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(".partial-").and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p == std::process::id() || !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `dpkg-deb -x` each of `debs` into a scratch root, `fixup` it, then rename it to
/// `cache/<entry>` in one step (what is there is complete).
fn unpack(
    debs: &[PathBuf],
    cache: &Path,
    entry: &str,
    fixup: impl Fn(&Path) -> Result<(), OracleError>,
) -> Result<(), OracleError> {
    let tmp = stop::Scratch::new(cache.join(format!(".{entry}.tmp")));
    let tmp = tmp.path();
    let _ = std::fs::remove_dir_all(tmp);
    for deb in debs {
        run_tool(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tmp), "dpkg-deb -x")?;
    }
    fixup(tmp)?;
    let dest = cache.join(entry);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(tmp, &dest).map_err(|e| OracleError::Io(format!("{}: {e}", tmp.display())))
}

/// The .deb of `package` (`name` or `name=version`) in `dir`.
fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = match package.split_once('=') {
        Some((name, version)) => format!("{name}_{}_", version.replace(':', "%3a")),
        None => format!("{package}_"),
    };
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")))
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<(), OracleError> {
    let out = stop::output(cmd, what).map_err(|e| {
        OracleError::Input(format!("{what}: {e}: run `apt-get install -y --no-install-recommends apt dpkg xz-utils`"))
    })?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else if err.contains("Unable to locate package") || err.contains("has no installation candidate") {
        // A package apt's lists do not hold is a missing part, not a failed transfer.
        Err(OracleError::Input(format!("{what} failed: {}: run `apt-get update`", err.trim())))
    } else {
        Err(OracleError::Io(format!("{what} failed: {}", err.trim())))
    }
}

/// brd.ko from the package's modules, decompressed next to them (the guest loads it with
/// finit_module(), which on these kernels takes an uncompressed module).
pub(crate) fn extract_brd(root: &Path, release: &str) -> Result<Option<PathBuf>, OracleError> {
    let dir = root.join("lib/modules").join(release).join("kernel/drivers/block");
    let out = root.join("brd.ko");
    if out.is_file() {
        return Ok(Some(out));
    }
    let plain = dir.join("brd.ko");
    if plain.is_file() {
        return Ok(Some(plain));
    }
    for (ext, tool) in [("xz", "xz"), ("zst", "zstd")] {
        let packed = dir.join(format!("brd.ko.{ext}"));
        if packed.is_file() {
            let data = stop::output(Command::new(tool).arg("-dc").arg(&packed), tool).map_err(|e| {
                OracleError::Input(format!(
                    "{tool}: {e}: run `apt-get install -y --no-install-recommends xz-utils zstd`"
                ))
            })?;
            if !data.status.success() {
                return Err(OracleError::Io(format!("{tool} -dc {} failed", packed.display())));
            }
            // Renamed in whole: a killed write leaves no short brd.ko to boot.
            let tmp = stop::Scratch::new(root.join(".brd.ko.tmp"));
            std::fs::write(tmp.path(), data.stdout)
                .and_then(|_| std::fs::rename(tmp.path(), &out))
                .map_err(|e| OracleError::Io(format!("{}: {e}", out.display())))?;
            return Ok(Some(out));
        }
    }
    Ok(None)
}

/// A user's bzImage: its release from the setup header, its config from beside it.
fn resolve_user_image(image: &Path) -> Result<KernelSpec, OracleError> {
    let bytes = std::fs::read(image).map_err(|e| OracleError::Input(format!("{}: {e}", image.display())))?;
    let release = bzimage_release(&bytes).ok_or_else(|| {
        OracleError::Input(format!("{}: not a bzImage (no Linux boot protocol header)", image.display()))
    })?;
    if let Some(what) = image_damage(&bytes, None) {
        return Err(OracleError::Input(format!("{}: {what}: copy the image from its build again", image.display())));
    }
    let config = user_config(image, &release).ok_or_else(|| {
        OracleError::Input(format!(
            "{}: no kernel config found beside it (looked for config-{release}, config, .config and the build \
             tree's .config); copy the build's .config next to the image",
            image.display()
        ))
    })?;
    check_config(&config, false)?;
    let build_dir = build_tree(image);
    Ok(KernelSpec {
        image: image.to_path_buf(),
        sim_version: era_of(&release),
        rules_note: None,
        compiler: None,
        release,
        brd: None,
        build_dir,
        headers_package: None,
    })
}

/// The release string the boot protocol header points at (`kernel_version` at 0x20e).
pub(crate) fn bzimage_release(b: &[u8]) -> Option<String> {
    if b.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let at = u16::from_le_bytes([*b.get(0x20e)?, *b.get(0x20f)?]) as usize + 0x200;
    let s = b.get(at..)?;
    let end = s.iter().position(|&c| c == 0 || c == b' ')?;
    String::from_utf8(s[..end].to_vec()).ok()
}

/// The build tree of `arch/x86/boot/bzImage` (or of an image beside the tree's root), when
/// it was built (Module.symvers): what gupdev.ko is built against.
fn build_tree(image: &Path) -> Option<PathBuf> {
    let dir = image.parent()?;
    let tree = dir.parent().and_then(Path::parent).and_then(Path::parent);
    [tree, Some(dir)].into_iter().flatten().find(|t| t.join("Module.symvers").is_file()).map(Path::to_path_buf)
}

fn user_config(image: &Path, release: &str) -> Option<PathBuf> {
    let dir = image.parent()?;
    let mut candidates = vec![dir.join(format!("config-{release}")), dir.join("config"), dir.join(".config")];
    // arch/x86/boot/bzImage in a build tree.
    if let Some(tree) = dir.parent().and_then(Path::parent).and_then(Path::parent) {
        candidates.push(tree.join(".config"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The `kernel.version` of a user kernel's release: the release itself, judged by the
/// release table (sim-core's `release.rs`, `version.rs`) as `kernel.version = "X.Y.Z"` is,
/// so a release between two read rows takes the older one's rules. A release before the
/// oldest row takes the oldest, one past the newest series the newest. (A stable backport
/// can move a kernel to a later era, as Debian's 6.1 shows: say `--set kernel.version`.)
fn era_of(release: &str) -> KernelVersion {
    let v = version_key(release);
    let part = |i: usize| v.get(i).map_or(0, |&n| u32::try_from(n).unwrap_or(u32::MAX));
    let (oldest, newest) = (KernelVersion::ALL[0], KernelVersion::ALL[KernelVersion::ALL.len() - 1]);
    match format!("{}.{}.{}", part(0), part(1), part(2)).parse::<KernelVersion>() {
        Ok(k) => k,
        Err(_) if Release::new(part(0), part(1), part(2)) < oldest.release() => oldest,
        Err(_) => newest,
    }
}

/// The compiler a kernel's config says built it.
fn built_with(config: &Path) -> Option<Compiler> {
    std::fs::read_to_string(config).ok().and_then(|t| Compiler::of_config(&t))
}

/// Checks the options the oracle needs and names every missing one.
fn check_config(path: &Path, brd_module: bool) -> Result<(), OracleError> {
    let text = std::fs::read_to_string(path).map_err(|e| OracleError::Input(format!("{}: {e}", path.display())))?;
    let value = |name: &str| {
        let key = format!("CONFIG_{name}=");
        text.lines().find_map(|l| l.strip_prefix(&key).map(str::to_string))
    };
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(names, _)| {
            !names.iter().any(|n| match value(n).as_deref() {
                Some("y") => true,
                Some("m") => *n == "BLK_DEV_RAM" && brd_module,
                _ => false,
            })
        })
        .map(|(names, why)| format!("CONFIG_{} ({why})", names.join(" or CONFIG_")))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OracleError::Input(format!("{}: the kernel lacks {}", path.display(), missing.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_wins_by_number_not_by_text() {
        let s = &SERIES[1];
        let names =
            ["linux-image-6.12.99+deb12-amd64", "linux-image-6.12.117+deb12-amd64", "linux-image-6.12.9+deb12-amd64"];
        assert_eq!(names.iter().max_by_key(|n| version_key(n)), Some(&"linux-image-6.12.117+deb12-amd64"));
        assert!(matches(s, names[0]));
        assert!(!matches(s, "linux-image-6.12.117+deb12-amd64-unsigned"));
        assert!(!matches(s, "linux-image-6.12.117+deb12-rt-amd64"));
        assert!(matches(&SERIES[0], "linux-image-6.1.0-57-amd64"));
        assert!(!matches(&SERIES[0], "linux-image-6.1.0-57-cloud-amd64"));
    }

    #[test]
    fn a_config_missing_options_names_each_of_them() {
        let dir = std::env::temp_dir().join(format!("oracle-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        let all: String = REQUIRED.iter().map(|(n, _)| format!("CONFIG_{}=y\n", n[0])).collect();
        std::fs::write(&path, &all).unwrap();
        assert_eq!(check_config(&path, false), Ok(()));
        let text = all.replace("CONFIG_KSM=y\n", "").replace("CONFIG_BLK_DEV_RAM=y", "CONFIG_BLK_DEV_RAM=m");
        std::fs::write(&path, text).unwrap();
        let Err(OracleError::Input(msg)) = check_config(&path, false) else { panic!("must fail") };
        assert!(msg.contains("CONFIG_KSM") && msg.contains("CONFIG_BLK_DEV_RAM"), "{msg}");
        assert!(!msg.contains("CONFIG_NUMA_BALANCING"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The Depends of Debian's 6.1.0-57 headers: the -common tree pinned exactly, kbuild by `>=`.
    #[test]
    fn a_headers_package_needs_its_common_tree_and_kbuild_at_its_own_version() {
        let depends = "linux-headers-6.1.0-57-common (= 6.1.192-3), linux-kbuild-6.1 (>= 6.1.192-3), \
                       linux-compiler-gcc-12-x86";
        let wanted: Vec<String> = depends.split(',').filter_map(pinned_dependency).collect();
        assert_eq!(wanted, ["linux-headers-6.1.0-57-common=6.1.192-3", "linux-kbuild-6.1=6.1.192-3"]);
        assert_eq!(pinned_dependency(" linux-kbuild-6.12.118+deb12").as_deref(), Some("linux-kbuild-6.12.118+deb12"));
        let dir = std::env::temp_dir().join(format!("oracle-debs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("linux-kbuild-6.1_6.1.176-1_amd64.deb"), "").unwrap();
        assert_eq!(find_deb(&dir, "linux-kbuild-6.1=6.1.192-3"), None, "an older kbuild is not the one pinned");
        assert!(find_deb(&dir, "linux-kbuild-6.1=6.1.176-1").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A download killed midway leaves only its scratch directory, which no lookup sees and
    /// the next download removes.
    #[test]
    fn a_killed_download_leaves_nothing_that_passes_for_a_package() {
        let debs = std::env::temp_dir().join(format!("oracle-killed-{}", std::process::id()));
        let dead = debs.join(format!(".partial-{}", u32::MAX - 1));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("linux-kbuild-6.1_6.1.192-3_amd64.deb"), "trunc").unwrap();
        assert_eq!(find_deb(&debs, "linux-kbuild-6.1=6.1.192-3"), None);
        remove_abandoned_downloads(&debs);
        assert!(!dead.exists());
        std::fs::remove_dir_all(&debs).unwrap();
    }

    /// 7.3.4's arch Makefile names its own directory and the -common one by absolute paths.
    #[test]
    fn the_headers_makefile_is_made_to_build_wherever_it_lies() {
        let root = std::env::temp_dir().join(format!("oracle-relocate-{}", std::process::id()));
        let package = "linux-headers-7.3.4+deb13-amd64";
        std::fs::create_dir_all(root.join("usr/src").join(package)).unwrap();
        let makefile = root.join("usr/src").join(package).join("Makefile");
        std::fs::write(
            &makefile,
            "KBUILD_OUTPUT=/usr/src/linux-headers-7.3.4+deb13-amd64\n\
             include /usr/src/linux-headers-7.3.4+deb13-common/Makefile\n",
        )
        .unwrap();
        relocate_headers(&root, package).unwrap();
        assert_eq!(
            std::fs::read_to_string(&makefile).unwrap(),
            "KBUILD_OUTPUT=../linux-headers-7.3.4+deb13-amd64\ninclude ../linux-headers-7.3.4+deb13-common/Makefile\n"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_symlink_leaving_the_unpacked_headers_is_found() {
        let root = std::env::temp_dir().join(format!("oracle-links-{}", std::process::id()));
        let tree = root.join("usr/src/linux-headers-x");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::create_dir_all(root.join("usr/lib/kbuild/scripts")).unwrap();
        std::os::unix::fs::symlink("../../lib/kbuild/scripts", tree.join("scripts")).unwrap();
        assert_eq!(link_leaving(&root.join("usr/src"), &root), None);
        std::os::unix::fs::symlink("/usr/lib", tree.join("tools")).unwrap();
        assert_eq!(link_leaving(&root.join("usr/src"), &root), Some(tree.join("tools")));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn user_kernels_get_the_rules_of_their_release() {
        let row = |r: &str| era_of(r).row_of().name;
        assert_eq!((era_of("6.12.0-rc1+").name(), row("6.12.0-rc1+")), ("6.12.0", "6.12"));
        assert_eq!(row("6.5.3"), "6.5");
        assert_eq!(row("6.1.0"), "6.1");
        assert_eq!(row("6.8.1-custom"), "6.6");
        // Past 6.12 the rows read since: 6.13 takes 6.12's rules, 6.19 the 7.2 row's (which
        // stands for 6.19-7.2), 7.3.4 its own.
        assert_eq!((row("6.13.2"), row("6.18.9"), row("6.19.1"), row("7.3.4")), ("6.12", "6.18", "7.2", "7.3"));
        // v6.2 has v6.2's GUP rule and not v6.4's VMA filter: the 6.1.192 row's rules.
        assert_eq!(row("6.2.16"), "6.1-debian12");
        assert_eq!((row("5.15.0"), row("9.0.1")), ("6.1", "7.3"));
    }
}
