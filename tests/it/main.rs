//! The command line's integration tests, in one binary (`cargo test --test it`, or one
//! module: `cargo test --test it MODULE::`): a binary per file would link the crate and its
//! dependencies once for each.

mod cli;
mod common;
mod fuzz;
mod gupdev;
mod kernel_cli;
mod newer_kernels;
mod oracle_faults;
mod oracle_fuzz;
mod reliability;
mod sched_domains;
mod trace_cli;
mod validate;
mod workflow;
