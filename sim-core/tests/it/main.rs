//! Sim-core's integration tests, in one binary (`cargo test --test it`, or one
//! module: `cargo test --test it MODULE::`): a binary per file would link the crate and its
//! dependencies once for each.

mod gup;
mod gup_path_table;
mod ksm;
mod numa;
mod sched_domains;
mod thp;
mod trace;
mod userfaultfd;
