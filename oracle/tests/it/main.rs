//! The oracle's integration tests, in one binary (`cargo test --test it`, or one
//! module: `cargo test --test it MODULE::`): a binary per file would link the crate and its
//! dependencies once for each.

mod gupdev_build;
mod smoke;
