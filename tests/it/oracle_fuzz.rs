//! A bounded fuzz of the oracle's command line, as tests/it/fuzz.rs does for configs: `kernel`
//! and `validate` with their options drawn from pools of good and bad values (`--kernel`
//! files that are no kernel, kernels without a config or lacking options, images cut short;
//! scenarios the guest cannot hold; tolerances on unknown metrics; `--repeat`, `--retries`
//! and `--reuse` combinations; trace options refused before a boot), run on the stand-ins of
//! tests/common/fake.rs. The stand-in guest records no trace: a traced run is a real boot's.
//!
//! Every case must exit 0, 2 or 3 within `CASE_LIMIT`, say why on stderr when it fails,
//! never panic, and leave no QEMU behind. With NUMASIM_ORACLE=1 one case in `REAL_EVERY`
//! boots Debian's 6.1 for real (a short numa02 or validation case).
//!
//! `NUMASIM_ORACLE_FUZZ_CASES` (default 40) cases from `NUMASIM_FUZZ_SEED`; every failure is
//! printed with its case number and command line.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fake::{FULL_CONFIG, bzimage_bytes};
use common::{oracle_missing, qemu_naming, s};

const CASE_LIMIT: Duration = Duration::from_secs(120);
const REAL_EVERY: u64 = 20;

/// xorshift64*: the same cases for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// Kernels: the fake package and a good image first, then a series the fake apt does not
/// know, unknown series, files that are no kernel image, images cut short, without a config
/// or lacking options.
fn kernel_files(dir: &Path) -> Vec<String> {
    let k = dir.join("kernels");
    std::fs::create_dir_all(&k).unwrap();
    let image = |name: &str, bytes: &[u8], config: Option<&str>| {
        let d = k.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bzImage"), bytes).unwrap();
        if let Some(c) = config {
            std::fs::write(d.join("config"), c).unwrap();
        }
        s(&d.join("bzImage")).to_string()
    };
    let good = bzimage_bytes("6.12.0-test");
    let mut short = good.clone();
    short[0x1f4] = 9;
    vec![
        "6.1".into(),
        image("good", &good, Some(FULL_CONFIG)),
        "6.12".into(),
        "6.7".into(),
        String::new(),
        ",".into(),
        image("no-config", &good, None),
        image("lacking", &good, Some(&FULL_CONFIG.replace("CONFIG_NUMA=y\n", ""))),
        image("short", &short, Some(FULL_CONFIG)),
        image("zeroed", &[0; 4096], Some(FULL_CONFIG)),
        image("tiny", b"MZ", Some(FULL_CONFIG)),
        s(&k).to_string(),
        s(&k.join("absent")).to_string(),
    ]
}

const SCENARIOS: &[&str] = &[
    "numa02",
    "gup-proc-mem-read",
    "gup-process-vm-readv",
    "overload",
    "kvm-guest",
    "device-gup",
    "gupdev-device-gup",
    "no-such-case",
    "",
];

/// Options that are good, bad or cannot apply, one `--set` or flag each.
const SETS: &[&[&str]] = &[
    &["--set", "run.duration_ms=300"],
    &["--set", "run.duration_ms=0"],
    &["--set", "run.duration_ms=-5"],
    &["--set", "machine.nodes=64"],
    &["--set", "machine.cpus_per_node=40"],
    &["--set", "machine.memory_per_node_mib=1048576", "--set", "process.0.vma.0.size_mib=1048576"],
    &["--set", "process.0.vma.0.size_mib=0"],
    &["--set", "validate.tolerance.0.metric=vmstat.no_such_counter"],
    &["--set", "validate.tolerance.0.metric="],
    &["--set", "validate.tolerance.0.rel=-1"],
    &["--set", "validate.tolerance.9.metric=vmstat.numa_hint_faults"],
    &["--set", "kernel.version=9.9"],
    &["--set", "no.such.key=1"],
    &["--set", "=="],
    &["--retries", "0"],
    &["--retries", "-1"],
    &["--retries", "99999999999"],
    &["--trace-events", "numasim:*"],
    &["--trace-kernel", "6.1"],
];

const VALIDATE_FLAGS: &[&[&str]] = &[
    &["--repeat", "2"],
    &["--repeat", "0"],
    &["--repeat", "x"],
    &["--reuse"],
    &["--all"],
    &["--report", "/nonexistent-dir/report.md"],
    &["--shard", "1/2"],
    &["--shard", "3/2"],
];

fn case_args(rng: &mut Rng, kernels: &[String], out: &Path) -> Vec<String> {
    let validate = rng.chance(2);
    let mut args = vec![if validate { "validate" } else { "kernel" }.to_string(), rng.pick(SCENARIOS).to_string()];
    // Half the cases on a kernel that boots, so that the options meet a run.
    let choices = if rng.chance(2) { 2 } else { kernels.len() as u64 };
    let kernel = &kernels[(rng.next() % choices) as usize];
    let kernel = if validate && rng.chance(3) { format!("6.1,{kernel}") } else { kernel.clone() };
    args.extend(["--kernel".into(), kernel, "--out".into(), s(out).into()]);
    args.extend(["--set".into(), "run.duration_ms=500".into()]);
    for _ in 0..rng.next() % 3 {
        args.extend(SETS[(rng.next() % SETS.len() as u64) as usize].iter().map(|a| a.to_string()));
    }
    if validate {
        for _ in 0..rng.next() % 2 {
            args.extend(
                VALIDATE_FLAGS[(rng.next() % VALIDATE_FLAGS.len() as u64) as usize].iter().map(|a| a.to_string()),
            );
        }
    }
    args
}

/// Runs `cmd` to its end or `CASE_LIMIT`: exit code, stderr.
fn run_bounded(cmd: &mut Command) -> Result<(Option<i32>, String), String> {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > CASE_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {} s", CASE_LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn judge(code: Option<i32>, err: &str) -> Result<(), String> {
    if err.contains("panicked") {
        return Err(format!("a panic: {err}"));
    }
    match code {
        Some(0) => Ok(()),
        Some(2 | 3) if !err.trim().is_empty() => Ok(()),
        other => Err(format!("exit {other:?}: {err}")),
    }
}

#[test]
fn the_oracles_command_line_exits_0_2_or_3_with_a_message_and_leaves_no_qemu() {
    let cases: u64 = std::env::var("NUMASIM_ORACLE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let seed: u64 = std::env::var("NUMASIM_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0a11);
    let real = std::env::var("NUMASIM_ORACLE").as_deref() == Ok("1") && oracle_missing("6.1").is_none();
    let Some(host) = common::fake::fake_host("oracle-fuzz") else { return };
    let kernels = kernel_files(&host.dir);
    let mut rng = Rng(seed | 1);
    let mut failures = Vec::new();
    let mut exits = std::collections::BTreeMap::new();
    for case in 0..cases {
        let out = host.dir.join(format!("out-{}", case % 3));
        let args = case_args(&mut rng, &kernels, &out);
        let boots = real && case % REAL_EVERY == REAL_EVERY - 1;
        let mut cmd = if boots {
            let mut c = Command::new(env!("CARGO_BIN_EXE_numasim"));
            let scenario = if case % 2 == 0 { "numa02" } else { "gup-proc-mem-read" };
            c.args([&args[0], scenario, "--kernel", "6.1", "--out", s(&out)])
                .args(["--set", "run.duration_ms=1000", "--set", "machine.cpus_per_node=1"])
                .env("NUMASIM_ACCEL", "tcg");
            c
        } else {
            host.numasim(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let verdict = run_bounded(&mut cmd).and_then(|(code, err)| {
            *exits.entry(code).or_insert(0) += 1;
            judge(code, &err)
        });
        let left = qemu_naming(&out);
        if let Err(why) = verdict {
            failures.push(format!("case {case}: {cmd:?}: {why}"));
        } else if !left.is_empty() {
            failures.push(format!("case {case}: {cmd:?}: QEMU left running: {left:?}"));
        }
    }
    eprintln!("oracle fuzz: {cases} cases, exit statuses {exits:?}");
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n\n"));
}
