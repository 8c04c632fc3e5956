//! `numasim kernel`: a scenario on a real kernel under QEMU (the `oracle` crate), written as
//! the same result files as `run`, with the usual plots.

use std::path::PathBuf;

use oracle::OracleError;
use sim_core::config::KernelVersion;
use workloads::validation;

use crate::Failure;
use crate::trace::{self, TraceArgs};

pub fn run(
    scenario: &str,
    kernel: &str,
    set: &[String],
    out: Option<PathBuf>,
    trace_args: &TraceArgs,
    retries: u32,
) -> Result<(), Failure> {
    let config = validation::resolve_scenario(scenario, set)?;
    // What cannot run at all is said before anything is fetched or booted.
    oracle::preflight(&config).map_err(failure)?;
    if trace_args.trace_kernel.is_some() {
        return Err(Failure::Input("--trace-kernel: a real kernel prints its own tracepoint formats".into()));
    }
    // The trace options are checked before a kernel is fetched; its formats are known after.
    let mut request = trace::request(trace_args, KernelVersion::V6_12)?;
    let trace_plan = request.as_ref().map(|r| trace::tracefs_plan(r, &config)).transpose()?;
    let spec = oracle::resolve_kernel(kernel).map_err(failure)?;
    if let Some(note) = spec.rules_note() {
        eprintln!("sim rules: {note}");
    }
    if let Some(r) = request.as_mut() {
        r.options.version = trace::formats_of(spec.sim_version());
    }
    // The kernel's own inputs (its features, can the module be built for it?) come before the
    // host's tools.
    oracle::check_release(&config, spec.release(), spec.sim_version()).map_err(failure)?;
    oracle::gupdev::check_buildable(&config, &spec).map_err(failure)?;
    oracle::qemu::qemu_binary().map_err(failure)?;
    let dir =
        out.unwrap_or_else(|| PathBuf::from("out").join(format!("{}-kernel-{}", config.name, kernel_label(kernel))));
    eprintln!(
        "booting {} ({}) for {} ms of {}",
        spec.release(),
        spec.image.display(),
        config.run.duration_ms,
        config.name
    );
    let run = oracle::run_traced(&config, &spec, &dir, trace_plan, retries).map_err(failure)?;
    plots::render_run(&dir).map_err(Failure::Io)?;
    print_brief(&run)?;
    if let (Some(req), Some(t)) = (&request, &run.trace) {
        let written = trace::write_kernel_run(req, t, &config, &run)?;
        trace::print_written(&written);
    }
    Ok(())
}

/// `6.12` stays `6.12`; a path becomes its file name.
pub fn kernel_label(kernel: &str) -> String {
    std::path::Path::new(kernel).file_name().map_or(kernel.to_string(), |n| n.to_string_lossy().into_owned())
}

pub fn failure(e: OracleError) -> Failure {
    match e {
        OracleError::Input(m) => Failure::Input(m),
        OracleError::Io(_) | OracleError::Guest { .. } => Failure::Io(e.to_string()),
    }
}

fn print_brief(run: &oracle::KernelRun) -> Result<(), Failure> {
    let summary = results::Summary::read(&run.dir).map_err(Failure::Io)?;
    println!(
        "{}: {} on {} ({}), boot {:.1} s, workload {:.1} s guest time, {:.1} s wall",
        summary.scenario,
        run.release,
        run.accel.name(),
        summary.kernel_version,
        run.boot_s,
        run.elapsed_ms as f64 / 1e3,
        run.wall_s
    );
    println!("  host: {}", run.host.describe());
    for r in &run.retried {
        println!("  attempt {} failed and was booted again: {} (console: {})", r.attempt, r.reason, r.console);
    }
    let brief = ["vmstat", "touches", "ksm", "throughput"];
    for (group, values) in summary.metrics.0.iter().filter(|(g, _)| brief.contains(&g.as_ref())) {
        for (name, v) in values.iter().filter(|(_, v)| v.as_f64() != 0.0) {
            println!("  {:40} {}", format!("{group}.{name}"), v.to_json());
        }
    }
    println!("results in {}", run.dir.display());
    Ok(())
}
