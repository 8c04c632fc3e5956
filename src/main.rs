//! numasim: the command-line front end. The simulator lives in `sim-core`, the scenarios in
//! `workloads`, the charts in `plots`; this binary parses arguments, runs, and writes files.

mod bench;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sim_core::config::{ConfigError, to_toml};
use workloads::catalogue;

#[derive(Parser)]
#[command(name = "numasim", version, about = "Deterministic simulator of NUMA balancing and GUP policies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario and write summary.json, timeseries.csv and config.toml.
    Run {
        /// A built-in scenario name or a path to a .toml file.
        #[arg(default_value = "default")]
        scenario: String,
        /// Override a config key, e.g. --set kernel.gup_policy=explicit (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Output directory (default: out/<scenario>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate a scenario and print the resolved config.
    Check {
        scenario: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List the built-in scenarios.
    Scenarios,
    /// Measure simulator speed and memory on a large machine.
    Bench {
        /// GiB of memory per node (two nodes).
        #[arg(long, default_value_t = 32)]
        gib_per_node: u64,
        /// Simulated seconds to run.
        #[arg(long, default_value_t = 2)]
        seconds: u64,
    },
}

/// What went wrong, and which exit status says so.
enum Failure {
    /// Bad input from the user: exit status 2.
    Input(String),
    /// The run could not write its results: exit status 1.
    Io(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Input(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { scenario, set, out } => run(&scenario, &set, out),
        Command::Check { scenario, set } => {
            catalogue::resolve(&scenario, &set).map(|c| print!("{}", to_toml(&c))).map_err(Failure::from)
        }
        Command::Scenarios => {
            for (name, _) in catalogue::BUILTIN {
                let c = catalogue::resolve(name, &[]).expect("built-in scenarios are valid");
                println!("{name:20} {}", c.description);
            }
            Ok(())
        }
        Command::Bench { gib_per_node, seconds } => {
            bench::run(gib_per_node, seconds);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Io(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(scenario: &str, set: &[String], out: Option<PathBuf>) -> Result<(), Failure> {
    let config = catalogue::resolve(scenario, set)?;
    let dir = out.unwrap_or_else(|| PathBuf::from("out").join(&config.name));
    let result = workloads::build(&config).run();
    output::write_run(&dir, &config, &result).map_err(|e| Failure::Io(format!("{}: {e}", dir.display())))?;
    output::print_brief(&dir, &result);
    Ok(())
}
