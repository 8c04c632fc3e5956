//! numasim's charts, drawn from result files (the summary, `timeseries.csv`,
//! `results.csv`, read through the `results` crate) with plotters. This crate knows the result
//! contract, not the simulator.
//!
//! Every chart is written twice, as PNG and SVG. Text uses an embedded DejaVu Sans, so
//! charts render on a machine without any fonts installed; colours follow the Okabe–Ito
//! palette, which stays distinguishable with the common forms of colour blindness.

pub mod chart;
pub mod data;
pub mod overlay;
pub mod render;
pub mod timeline;

pub use overlay::render_overlay;
pub use render::{render_comparison, render_run, render_sweep};
pub use timeline::render_timeline;

/// Errors name the file and what went wrong.
pub type Error = String;
