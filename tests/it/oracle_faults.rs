//! The oracle under faults: a signal at each stage of `numasim kernel` and `numasim validate`
//! (download, unpack, gupdev build, guest build, boot) leaves no child running and no scratch file, and four runs on one
//! empty kernel cache all succeed. These run on stand-ins (tests/common/fake.rs) and boot
//! nothing; the last test stops real QEMU boots, only with NUMASIM_ORACLE=1.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use common::fake::FakeHost;
use common::{qemu_naming, running, s, scratch, skips_real_boot};

/// Waits up to `limit` for `ready`.
fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn send(child: &Child, sig: i32) {
    // SAFETY: a signal to a child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// The pid a stand-in wrote at `point`, once it is there.
fn pid_at(host: &FakeHost, point: &str, child: &mut Child) -> i32 {
    let file = host.dir.join(format!("{point}.pid"));
    let text = || std::fs::read_to_string(&file).unwrap_or_default();
    let there =
        wait_for(Duration::from_secs(60), || text().ends_with('\n') || child.try_wait().ok().flatten().is_some());
    assert!(there && text().ends_with('\n'), "numasim never reached {point}");
    text().trim().parse().unwrap()
}

/// What a stop by `sig` must show: the exit status, the child gone, what was said.
fn check_stopped(out: &Output, sig: i32, pid: i32, point: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    if sig == libc::SIGKILL {
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(128 + sig), "{point}: {err}");
        // The pid said is the group's leader: the program itself, or the shell it runs under.
        assert!(err.contains("killed") && err.contains("(pid "), "{point}: {err}");
        assert!(!err.contains("panicked") && !err.contains("error:"), "{point}: {err}");
    }
    // The death signal is asynchronous: the child goes a moment after numasim.
    assert!(wait_for(Duration::from_secs(5), || !running(pid)), "{point}: pid {pid} outlived numasim");
}

/// `numasim kernel` stopped by `sig` where the stand-in for `point` runs; None when the
/// stand-ins cannot be made here.
fn stop_kernel_run(point: &str, sig: i32) -> Option<(FakeHost, PathBuf)> {
    let host = common::fake::fake_host(&format!("stop-{point}-{sig}"))?;
    let out = host.dir.join("out");
    let mut cmd = match point {
        "build" => host.gupdev_run(&out),
        "guest" => host.guest_build_run(&out),
        _ => host.kernel_run(&out),
    };
    let mut child = cmd.env("FAKE_STOP", point).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = pid_at(&host, point, &mut child);
    send(&child, sig);
    check_stopped(&child.wait_with_output().unwrap(), sig, pid, point);
    assert!(!out.join(results::SUMMARY).exists(), "{point}: a summary after a stop");
    Some((host, out))
}

/// The stages a run is stopped at: the download and the unpack of the fake package, the
/// gupdev build (make) on a user's kernel tree, the guest's build (cargo), the boot.
const POINTS: [&str; 5] = ["download", "unpack", "build", "guest", "boot"];

/// SIGINT and SIGTERM: nothing left at all. A cache entry is there only once it was
/// unpacked whole.
#[test]
fn sigint_or_sigterm_at_each_stage_leaves_no_child_and_no_scratch() {
    for point in POINTS {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let Some((host, out)) = stop_kernel_run(point, sig) else { return };
            assert_eq!(host.scratch_left(&out), Vec::<PathBuf>::new(), "{point}, signal {sig}");
            let entry = host.cache().join(common::fake::PACKAGE);
            assert_eq!(entry.exists(), ["guest", "boot"].contains(&point), "{point}: a cache entry only when unpacked");
            let [scratch, module, lock] = host.gupdev_paths();
            assert!(!scratch.exists(), "{point}: gupdev's scratch build left");
            let _ = (std::fs::remove_dir_all(module), std::fs::remove_file(lock));
        }
    }
}

/// SIGKILL: the death signal takes the child along; what a download, an unpack or the gupdev
/// build left is scratch the next run removes before it succeeds (QEMU's files are in
/// memory: none).
#[test]
fn sigkill_at_each_stage_leaves_no_child_and_the_next_run_succeeds() {
    for point in POINTS {
        let Some((host, out)) = stop_kernel_run(point, libc::SIGKILL) else { return };
        if point == "boot" {
            assert_eq!(host.scratch_left(&out), Vec::<PathBuf>::new());
        }
        let mut again = if point == "build" { host.gupdev_run(&out) } else { host.kernel_run(&out) };
        let again = again.output().unwrap();
        assert!(again.status.success(), "{point}: {}", String::from_utf8_lossy(&again.stderr));
        assert_eq!(host.scratch_left(&out), Vec::<PathBuf>::new(), "{point}");
        let [scratch, module, lock] = host.gupdev_paths();
        assert!(!scratch.exists(), "{point}: gupdev's scratch build left");
        let _ = (std::fs::remove_dir_all(module), std::fs::remove_file(lock));
    }
}

/// validate over two kernels with --repeat: a SIGTERM during a boot stops it the same way and
/// leaves no validate.json.
#[test]
fn sigterm_during_a_repeated_validate_leaves_no_child_and_no_manifest() {
    let Some(host) = common::fake::fake_host("stop-validate") else { return };
    let image = common::fake::fake_bzimage(&host.dir, common::fake::FULL_CONFIG);
    let out = host.dir.join("out");
    let mut child = host
        .numasim(&["validate", "numa02", "--kernel", &format!("6.1,{image}"), "--repeat", "2", "--out", s(&out)])
        .env("FAKE_STOP", "boot")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = pid_at(&host, "boot", &mut child);
    send(&child, libc::SIGTERM);
    check_stopped(&child.wait_with_output().unwrap(), libc::SIGTERM, pid, "validate");
    assert!(!out.join("validate.json").exists());
    assert_eq!(host.scratch_left(&out.join("6.1").join("kernel")), Vec::<PathBuf>::new());
}

/// Four runs at once on an empty cache: one fetches and unpacks the package under the entry's
/// lock, the others wait for it; all four boot (the stand-in) and succeed.
#[test]
fn four_runs_on_one_empty_cache_all_succeed() {
    let Some(host) = common::fake::fake_host("shared-cache") else { return };
    let children: Vec<(PathBuf, Child)> = (0..4)
        .map(|i| {
            let out = host.dir.join(format!("out-{i}"));
            let child = host
                .kernel_run(&out)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (out, child)
        })
        .collect();
    for (out, child) in children {
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success(), "{}: {}", out.display(), String::from_utf8_lossy(&done.stderr));
        assert!(out.join(results::SUMMARY).is_file());
        assert_eq!(host.scratch_left(&out), Vec::<PathBuf>::new());
    }
    let debs: Vec<_> = std::fs::read_dir(host.cache().join("debs")).unwrap().collect();
    assert_eq!(debs.len(), 1, "one download for four runs");
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Both sides write through the result contract's one writer: when the time series cannot
/// be renamed into place (a non-empty directory holds its name), the simulator's run and the
/// kernel's each fail naming it and leave no temporary file and no summary. The kernel run
/// clears its directory before it boots, so the stand-in QEMU makes the obstacle.
#[test]
fn a_result_file_that_cannot_be_renamed_fails_both_sides_and_leaves_no_temporary_file() {
    let Some(host) = common::fake::fake_host("blocked-series") else { return };
    let blocked = |out: &Path| out.join(results::TIMESERIES).join("x");
    let sim = host.dir.join("sim");
    std::fs::create_dir_all(blocked(&sim)).unwrap();
    let kernel = host.dir.join("kernel");
    let qemu = host.dir.join("bin/qemu-system-x86_64");
    let script = std::fs::read_to_string(&qemu).unwrap();
    let obstacle = format!("mkdir -p '{}'\n", s(&blocked(&kernel)));
    common::fake::write_script(&qemu, &script.replacen("#!/bin/sh\n", &format!("#!/bin/sh\n{obstacle}"), 1));
    let runs = [
        host.numasim(&["run", "numa02", "--out", s(&sim), "--set", "run.duration_ms=1000"]).output().unwrap(),
        host.kernel_run(&kernel).output().unwrap(),
    ];
    for (out, run) in [&sim, &kernel].into_iter().zip(runs) {
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{}: {err}", out.display());
        assert!(err.contains(s(&out.join(results::TIMESERIES))), "{err}");
        let left = listing(out);
        assert!(!left.iter().any(|f| f.starts_with('.')), "{}: temporary files left: {left:?}", out.display());
        assert!(!left.iter().any(|f| f == results::SUMMARY), "{}: {left:?}", out.display());
        assert!(left.iter().any(|f| f == results::CONFIG), "{}: the files before the series: {left:?}", out.display());
    }
}

/// Real QEMU, Debian's 6.1: SIGINT while the kernel boots (1 s after QEMU started), SIGTERM
/// and SIGKILL while the guest runs (the kernel boots in about 5 s under TCG here; the run
/// lasts 20 s). QEMU is gone with numasim, and only the console is left in the directory.
#[test]
fn a_signal_to_numasim_stops_real_qemu_at_boot_and_mid_run() {
    if skips_real_boot("QEMU signal", "6.1") {
        return;
    }
    for (sig, after) in [(libc::SIGINT, 1), (libc::SIGTERM, 10), (libc::SIGKILL, 10)] {
        let dir = scratch(&format!("stop-qemu-{sig}"));
        let child = common::stoppable(&mut std::process::Command::new(env!("CARGO_BIN_EXE_numasim")))
            .args(["kernel", "numa02", "--kernel", "6.1", "--out", s(&dir)])
            .args(["--set", "machine.cpus_per_node=1", "--set", "process.0.vma.0.size_mib=16"])
            .args(["--set", "run.duration_ms=20000"])
            .env("NUMASIM_ACCEL", "tcg")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = wait_for(Duration::from_secs(120), || !qemu_naming(&dir).is_empty());
        assert!(started, "signal {sig}: QEMU never started");
        std::thread::sleep(Duration::from_secs(after));
        let qemu = qemu_naming(&dir);
        assert_eq!(qemu.len(), 1, "one QEMU for this run: {qemu:?}");
        send(&child, sig);
        let out = child.wait_with_output().unwrap();
        check_stopped(&out, sig, qemu[0], "QEMU");
        assert_eq!(qemu_naming(&dir), Vec::<i32>::new());
        let left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(left.iter().all(|f| f == "console.log"), "signal {sig}: {left:?}");
    }
}

fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

/// A cache entry damaged after its fetch (an image cut short or zeroed, brd.ko gone) is
/// unpacked again from its .deb, and a .deb cut short is downloaded again: each run says what
/// it found and boots.
#[test]
fn a_damaged_cache_entry_is_fetched_again() {
    use common::fake::{PACKAGE, RELEASE};
    let Some(host) = common::fake::fake_host("damaged-entry") else { return };
    let out = host.dir.join("out");
    let run = || host.kernel_run(&out).output().unwrap();
    assert!(run().status.success());
    let entry = host.cache().join(PACKAGE);
    let image = entry.join(format!("boot/vmlinuz-{RELEASE}"));
    let brd = entry.join(format!("lib/modules/{RELEASE}/kernel/drivers/block/brd.ko"));
    let deb = std::fs::read_dir(host.cache().join("debs")).unwrap().next().unwrap().unwrap().path();
    let short = || cut(&image, 600);
    let zeroed = || std::fs::write(&image, vec![0u8; 1024]).unwrap();
    let no_brd = || std::fs::remove_file(&brd).unwrap();
    let short_deb = || {
        std::fs::remove_dir_all(&entry).unwrap();
        cut(&deb, std::fs::metadata(&deb).unwrap().len() / 2);
    };
    let damages: [(&str, &dyn Fn(), &Path); 4] = [
        ("cut short: 600 bytes", &short, &image),
        ("no Linux boot header", &zeroed, &image),
        ("missing, though the config builds brd as a module", &no_brd, &brd),
        ("does not unpack", &short_deb, &deb),
    ];
    for (what, damage, file) in damages {
        damage();
        let again = run();
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(again.status.success(), "{what}: {err}");
        assert!(err.contains(&format!("{}: {what}", file.display())) && err.contains(" again"), "{err}");
        assert!(out.join(results::SUMMARY).is_file());
    }
}

/// A package whose image is damaged as fetched is refused with exit status 2, naming the
/// file and the entry to delete, before anything boots; so is a user's image cut short.
#[test]
fn an_image_damaged_at_its_source_is_refused_before_booting() {
    let Some(host) = common::fake::fake_host("damaged-source") else { return };
    let mut image = common::fake::bzimage_bytes(common::fake::RELEASE);
    image[0x1f4] = 1;
    common::fake::build_deb(&host.dir, &image);
    let out = host.dir.join("out");
    let refused = host.kernel_run(&out).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    let entry = host.cache().join(common::fake::PACKAGE);
    assert!(err.contains("vmlinuz-6.1.0-99-amd64: cut short"), "{err}");
    assert!(err.contains(&format!("delete {}", entry.display())), "{err}");
    assert!(!out.join("console.log").exists(), "booted");
    let user = host.dir.join("user");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("bzImage"), &image).unwrap();
    std::fs::write(user.join("config"), common::fake::FULL_CONFIG).unwrap();
    let refused = host.numasim(&["kernel", "numa02", "--kernel", s(&user.join("bzImage"))]).output().unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("bzImage: cut short: 1024 bytes where its boot header counts 1040"), "{err}");
}

/// `validate --reuse` takes a kernel run only as it was written: guest.json or the summary
/// edited since is bad input naming the file and what to delete; untouched, it is reused.
#[test]
fn an_edited_run_that_reuse_would_take_is_refused() {
    let Some(host) = common::fake::fake_host("reuse-edited") else { return };
    let out = host.dir.join("out");
    let validate = |extra: &[&str]| {
        let args = [&["validate", "numa02", "--kernel", "6.1", "--out", s(&out)][..], extra].concat();
        host.numasim(&args).output().unwrap()
    };
    let first = validate(&[]);
    assert!(matches!(first.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&first.stderr));
    let run = out.join("6.1").join("kernel");
    let again = validate(&["--reuse"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(matches!(again.status.code(), Some(0 | 3)) && err.contains("reusing"), "{err}");
    for file in ["guest.json", results::SUMMARY] {
        let path = run.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("1", "2", 1)).unwrap();
        let refused = validate(&["--reuse"]);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(&format!("{}: changed since the kernel run wrote it", path.display())), "{err}");
        assert!(err.contains(&format!("delete {}", run.display())), "{err}");
        std::fs::write(&path, text).unwrap();
    }
}

/// `validate --shard I/N` runs its slice of the (case, kernel) pairs; `numasim merge` judges
/// the slices whole without booting, with the rows of an unsharded validation, and refuses
/// a shard given twice or a set that misses pairs before writing anything.
#[test]
fn sharded_validation_merges_into_the_whole_one() {
    let Some(host) = common::fake::fake_host("validate-shards") else { return };
    let image = common::fake::fake_bzimage(&host.dir, common::fake::FULL_CONFIG);
    std::fs::write(format!("{image}.frames"), common::fake::guest_frames("6.12.0-test")).unwrap();
    let kernels = format!("6.1,{image}");
    let validate = |out: &Path, extra: &[&str]| {
        let args = [&["validate", "numa02", "--kernel", &kernels, "--set", "run.duration_ms=1000"][..], extra].concat();
        let out = host.numasim(&[&args[..], &["--out", s(out)]].concat()).output().unwrap();
        assert!(matches!(out.status.code(), Some(0 | 3)), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let [whole, one, two, merged] = ["whole", "one", "two", "merged"].map(|d| host.dir.join(d));
    validate(&whole, &[]);
    validate(&one, &["--shard", "1/2"]);
    validate(&two, &["--shard", "2/2"]);
    let manifest = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("validate.json")).unwrap()).unwrap()
    };
    let outcomes = |m: &serde_json::Value| m["cases"][0]["outcomes"].as_array().unwrap().clone();
    assert_eq!((outcomes(&manifest(&one)).len(), outcomes(&manifest(&two)).len()), (1, 1));
    let merge = |dirs: &[&Path], out: &Path| {
        let args: Vec<&str> = ["merge"].into_iter().chain(dirs.iter().map(|d| s(d))).chain(["--out", s(out)]).collect();
        host.numasim(&args).output().unwrap()
    };
    let twice = merge(&[&one, &one], &merged);
    assert_eq!(twice.status.code(), Some(2), "{}", String::from_utf8_lossy(&twice.stderr));
    let short = merge(&[&two], &merged);
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(short.status.code() == Some(2) && err.contains("1 of the validation's 2"), "{err}");
    assert!(!merged.exists(), "a refused merge writes nothing");
    let out = merge(&[&one, &two], &merged);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 3)) && !err.contains("booting"), "{err}");
    let (whole, merged) = (outcomes(&manifest(&whole)), outcomes(&manifest(&merged)));
    assert_eq!(merged.len(), 2);
    for (w, m) in whole.iter().zip(&merged) {
        assert_eq!((&w["kernel"], &w["rows"]), (&m["kernel"], &m["rows"]), "the merge judges as the whole run did");
    }
}
