//! `[validate]`: how `numasim validate` judges a scenario against a real kernel.

use serde::{Deserialize, Serialize};

/// `[validate]`: what `numasim validate` compares with a real kernel, and how closely.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// One tolerance per judged metric; metrics without one are shown, not judged.
    pub tolerance: Vec<ToleranceConfig>,
}

/// Sim and kernel agree on `metric` when |sim - kernel| <= abs + rel * |kernel|.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToleranceConfig {
    /// A dotted result name (`vmstat.numa_hint_faults`) or a derived one (docs/ORACLE.md, "Derived metrics").
    pub metric: String,
    pub abs: f64,
    pub rel: f64,
    /// Why this much: the kernel's noise and what the model simplifies.
    pub reason: String,
}
