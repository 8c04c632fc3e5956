//! `[ksm]` and `[aging]`: the background scanners.

use serde::{Deserialize, Serialize};

/// /sys/kernel/mm/ksm/.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KsmConfig {
    pub run: bool,
    pub pages_to_scan: u32,
    pub sleep_millisecs: u64,
    /// Merge identical pages on different nodes into one (the kernel's default), or only
    /// within a node.
    pub merge_across_nodes: bool,
    /// ksmd's CPU time per page it looks at (calc_checksum(), the tree searches). 0: on real
    /// hardware it is under a microsecond, nothing beside `sleep_millisecs`.
    pub scan_cost_ns: u64,
    /// ksmd's CPU time per merge (write_protect_page() and replace_page(), each with a TLB
    /// flush of every CPU running the mm). 0 for the same reason; under QEMU's TCG the
    /// cross-CPU flushes take milliseconds, and `numasim validate` sets both costs from the
    /// pace the kernel's ksmd kept.
    pub merge_cost_ns: u64,
}

impl Default for KsmConfig {
    fn default() -> Self {
        Self {
            run: false,
            pages_to_scan: 100,
            sleep_millisecs: 20,
            merge_across_nodes: true,
            scan_cost_ns: 0,
            merge_cost_ns: 0,
        }
    }
}

/// The page-aging scanner (folio_referenced() over primary and secondary MMUs).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgingConfig {
    pub enabled: bool,
    pub interval_ms: u64,
}

impl Default for AgingConfig {
    fn default() -> Self {
        Self { enabled: false, interval_ms: 1000 }
    }
}
