//! The workloads crate's integration tests, in one binary (`cargo test --test it`, or one
//! module: `cargo test --test it MODULE::`): a binary per file would link the crate and its
//! dependencies once for each.

mod churn;
mod common;
mod gup_policies;
mod invariants;
mod machine;
mod memkinds;
mod numa_balancing;
mod tiering;
mod trace;
