//! Stand-ins for what the oracle calls, so its plumbing runs without booting: a bzImage with a
//! boot header, a Debian kernel package built with dpkg-deb, and on PATH an `apt-cache` that
//! knows it, an `apt-get download` that hands it out, a `dpkg-deb` and a `qemu-system-x86_64`
//! whose guest reports a short run; a kernel build tree with a `make` that "builds" gupdev,
//! and a `cargo` that "builds" the guest. With `FAKE_STOP=download|unpack|boot|build|guest`
//! that program writes its pid to `<point>.pid` and sleeps instead, for a test to stop
//! numasim there.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::s;

/// Every option the oracle requires.
pub const FULL_CONFIG: &str = "CONFIG_NUMA=y\nCONFIG_NUMA_BALANCING=y\nCONFIG_ACPI_NUMA=y\nCONFIG_KSM=y\n\
    CONFIG_TRANSPARENT_HUGEPAGE=y\nCONFIG_BLK_DEV_RAM=y\nCONFIG_DEVTMPFS=y\nCONFIG_SERIAL_8250_CONSOLE=y\n\
    CONFIG_BLK_DEV_INITRD=y\nCONFIG_DEBUG_FS=y\nCONFIG_PROC_PAGE_MONITOR=y\nCONFIG_CROSS_MEMORY_ATTACH=y\n\
    CONFIG_IO_URING=y\n";

/// The bytes of a bzImage whose boot header names `release`.
pub fn bzimage_bytes(release: &str) -> Vec<u8> {
    let mut image = vec![0u8; 0x400];
    // One setup sector after the boot sector, no protected-mode code: 1 KiB in all.
    image[0x1f1] = 1;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    let name = format!("{release} ");
    image[0x300..0x300 + name.len()].copy_from_slice(name.as_bytes());
    image
}

/// A file with a bzImage boot header whose release is `6.12.0-test`, and `config` beside it.
pub fn fake_bzimage(dir: &Path, config: &str) -> String {
    std::fs::write(dir.join("bzImage"), bzimage_bytes("6.12.0-test")).unwrap();
    std::fs::write(dir.join("config"), config).unwrap();
    s(&dir.join("bzImage")).to_string()
}

/// What a guest of kernel `release` that ran one second reports on its data port, one frame
/// a line.
pub fn guest_frames(release: &str) -> String {
    let sample = |t: u64| {
        format!(
            "{{\"Sample\":{{\"t_ms\":{t},\"vmstat\":{{\"numa_hint_faults\":{t}}},\"ksm\":{{}},\"vmas\":[],\"threads\":[]}}}}"
        )
    };
    let frames = [
        format!("{{\"Hello\":{{\"release\":\"{release}\",\"uptime_s\":1.5}}}}"),
        "{\"Started\":{\"setup_ms\":10}}".to_string(),
        sample(0),
        sample(1000),
        "{\"Done\":{\"elapsed_ms\":1000}}".to_string(),
    ];
    frames.join("\n") + "\n"
}

/// The package the fake apt knows: Debian 12's 6.1 series, as the oracle names it.
pub const PACKAGE: &str = "linux-image-6.1.0-99-amd64";
pub const RELEASE: &str = "6.1.0-99-amd64";

pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory with the fake programs in `bin/`, the package in `pkg.deb` and an empty
/// kernel cache in `cache/`. QEMU's stand-in sends the guest frames in `frames.jsonl`, or in
/// `<file>.frames` beside a file it is given (a user's kernel image of another release).
pub struct FakeHost {
    pub dir: PathBuf,
}

impl FakeHost {
    pub fn new(dir: PathBuf) -> FakeHost {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        std::fs::write(dir.join("frames.jsonl"), guest_frames(RELEASE)).unwrap();
        std::fs::write(dir.join("guest"), "a guest binary").unwrap();
        build_deb(&dir, &bzimage_bytes(RELEASE));
        let stop = |point: &str| {
            format!(
                "if [ \"$FAKE_STOP\" = {point} ]; then echo $$ > '{d}/{point}.pid'; exec sleep 60; fi\n",
                d = s(&dir)
            )
        };
        write_script(&bin.join("apt-cache"), &format!("#!/bin/sh\necho {PACKAGE}\n"));
        write_script(
            &bin.join("apt-get"),
            &format!(
                "#!/bin/sh\n[ \"$1\" = download ] || exit 100\n\
                 [ \"$2\" = {PACKAGE} ] || {{ echo \"E: Unable to locate package $2\" >&2; exit 100; }}\n\
                 {}sleep 0.3\ncp '{d}/pkg.deb' ./{PACKAGE}_6.1.999-1_amd64.deb\n",
                stop("download"),
                d = s(&dir)
            ),
        );
        let real_dpkg = which("dpkg-deb").expect("dpkg-deb is installed (see fake_host)");
        write_script(
            &bin.join("dpkg-deb"),
            &format!("#!/bin/sh\nif [ \"$1\" = -x ]; then\n{}fi\nexec {real_dpkg} \"$@\"\n", stop("unpack")),
        );
        write_script(
            &bin.join("qemu-system-x86_64"),
            &format!(
                "#!/bin/sh\nn=0\nframes='{d}/frames.jsonl'\n\
                 for a in \"$@\"; do case \"$a\" in file:*) n=$((n+1)); eval \"port$n=\\${{a#file:}}\";; esac; \
                 [ -f \"$a.frames\" ] && frames=\"$a.frames\"; done\n\
                 printf '[    0.5] Run /init as init process\\n' > \"$port1\"\n{}\
                 cp \"$frames\" \"$port2\"\n: > \"$port3\"\n",
                stop("boot"),
                d = s(&dir)
            ),
        );
        write_script(
            &bin.join("make"),
            &format!(
                "#!/bin/sh\n{}for a in \"$@\"; do case \"$a\" in M=*) out=${{a#M=}};; esac; done\n\
                 printf '\\177ELF\\002' > \"$out/gupdev.ko\"\n",
                stop("build")
            ),
        );
        write_script(&bin.join("fake-cc"), "#!/bin/sh\n");
        write_script(&bin.join("fake-cargo"), &format!("#!/bin/sh\n{}exit 1\n", stop("guest")));
        FakeHost { dir }
    }

    /// The release of [`build_tree`](Self::build_tree)'s kernel, this host's own: gupdev
    /// builds into `target/gupdev/<release>/`, which tests running at once must not share.
    pub fn tree_release(&self) -> String {
        format!("6.12.0-{}", self.dir.file_name().unwrap().to_string_lossy())
    }

    /// gupdev's output and lock for [`tree_release`](Self::tree_release) in the workspace's
    /// target directory: its scratch build, the module, the lock.
    pub fn gupdev_paths(&self) -> [PathBuf; 3] {
        let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gupdev");
        let release = self.tree_release();
        [modules.join(format!(".{release}.tmp")), modules.join(&release), modules.join(format!("{release}.lock"))]
    }

    /// A kernel build tree (`.config`, Module.symvers, the release) with its bzImage at
    /// `arch/x86/boot/bzImage`, whose path is returned: gupdev builds against it with the
    /// stand-in make.
    pub fn build_tree(&self) -> String {
        let tree = self.dir.join("linux");
        std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
        std::fs::create_dir_all(tree.join("include/config")).unwrap();
        let config = format!("{FULL_CONFIG}CONFIG_CC_VERSION_TEXT=\"fake-cc (stand-in) 1\"\n");
        std::fs::write(tree.join(".config"), config).unwrap();
        std::fs::write(tree.join("Module.symvers"), "").unwrap();
        std::fs::write(tree.join("include/config/kernel.release"), self.tree_release() + "\n").unwrap();
        let image = tree.join("arch/x86/boot/bzImage");
        std::fs::write(&image, bzimage_bytes(&self.tree_release())).unwrap();
        s(&image).to_string()
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// `numasim args` on this host.
    pub fn numasim(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_numasim"));
        let path = format!("{}:{}", s(&self.dir.join("bin")), std::env::var("PATH").unwrap_or_default());
        cmd.args(args)
            .env("PATH", path)
            .env("NUMASIM_KERNEL_CACHE", self.cache())
            .env("NUMASIM_GUEST", self.dir.join("guest"))
            .env("NUMASIM_ACCEL", "tcg")
            .env("NUMASIM_KERNEL_TIMEOUT_S", "30")
            .env_remove("FAKE_STOP");
        super::stoppable(&mut cmd);
        cmd
    }

    /// `numasim kernel numa02 --kernel 6.1`, short, into `out`.
    pub fn kernel_run(&self, out: &Path) -> Command {
        self.numasim(&["kernel", "numa02", "--kernel", "6.1", "--out", s(out), "--set", "run.duration_ms=1000"])
    }

    /// [`kernel_run`](Self::kernel_run) that builds the guest (with the stand-in cargo).
    pub fn guest_build_run(&self, out: &Path) -> Command {
        let mut cmd = self.kernel_run(out);
        cmd.env_remove("NUMASIM_GUEST").env("CARGO", self.dir.join("bin/fake-cargo"));
        cmd
    }

    /// `numasim kernel kvm-guest` on [`build_tree`](Self::build_tree)'s image: gupdev is built.
    pub fn gupdev_run(&self, out: &Path) -> Command {
        let image = self.build_tree();
        self.numasim(&["kernel", "kvm-guest", "--kernel", &image, "--out", s(out), "--set", "run.duration_ms=1000"])
    }

    /// Files and directories under the cache and `out` whose name starts with a dot.
    pub fn scratch_left(&self, out: &Path) -> Vec<PathBuf> {
        let mut left = Vec::new();
        for d in [self.cache(), self.cache().join("debs"), out.to_path_buf()] {
            for e in std::fs::read_dir(&d).into_iter().flatten().filter_map(|e| e.ok()) {
                if e.file_name().to_string_lossy().starts_with('.') {
                    left.push(e.path());
                }
            }
        }
        left
    }
}

fn which(tool: &str) -> Option<String> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .map(|p| s(&p).to_string())
}

/// A [`FakeHost`] in a fresh directory, or None (the reason printed) without dpkg-deb, which
/// builds and unpacks its package.
pub fn fake_host(name: &str) -> Option<FakeHost> {
    if which("dpkg-deb").is_none() {
        eprintln!("skipping {name}: dpkg-deb is not installed (apt-get install -y dpkg)");
        return None;
    }
    Some(FakeHost::new(super::scratch(name)))
}

/// `pkg.deb`: the image `image`, its config and brd.ko.
pub fn build_deb(dir: &Path, image: &[u8]) {
    let root = dir.join("pkg");
    let modules = root.join(format!("lib/modules/{RELEASE}/kernel/drivers/block"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {PACKAGE}\nVersion: 6.1.999-1\nArchitecture: amd64\nMaintainer: numasim tests <t@example.org>\n\
             Description: a stand-in kernel\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join(format!("boot/vmlinuz-{RELEASE}")), image).unwrap();
    std::fs::write(root.join(format!("boot/config-{RELEASE}")), FULL_CONFIG.replace("BLK_DEV_RAM=y", "BLK_DEV_RAM=m"))
        .unwrap();
    let mut brd = b"\x7fELF\x02\x01\x01".to_vec();
    brd.resize(4096, 0);
    std::fs::write(modules.join("brd.ko"), brd).unwrap();
    let out = Command::new("dpkg-deb")
        .args(["-b", "--root-owner-group", "-Zgzip"])
        .arg(&root)
        .arg(dir.join("pkg.deb"))
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb -b: {}", String::from_utf8_lossy(&out.stderr));
}
