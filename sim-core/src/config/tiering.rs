//! The memory-tiering values of `[kernel]`: the `numa_balancing` mode and the promotion
//! sysctls' defaults (the CPU-less nodes are `[[machine.memory_node]]`).

use serde::{Deserialize, Serialize};

/// sysctl_numa_balancing_promote_rate_limit's default (kernel/sched/fair.c, 6.12, 7.3).
pub const PROMOTE_RATE_LIMIT_MBPS: u64 = 65536;
/// sysctl_numa_balancing_hot_threshold's default, MSEC_PER_SEC.
pub const HOT_THRESHOLD_MS: u64 = 1000;

/// `sysctl_numa_balancing_mode`: NUMA_BALANCING_NORMAL (1) and NUMA_BALANCING_MEMORY_TIERING
/// (2) bits (include/linux/sched/sysctl.h). Read as the sysctl is written (0 to 3) or as a
/// boolean; written back as a boolean for 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumaBalancing(u8);

impl NumaBalancing {
    pub const DISABLED: Self = Self(0);
    pub const NORMAL: Self = Self(1);
    pub const MEMORY_TIERING: Self = Self(2);

    /// Any mode: the sched_numa_balancing static key is on and task_numa_work() scans.
    pub fn enabled(self) -> bool {
        self.0 != 0
    }

    /// NUMA_BALANCING_NORMAL: top-tier pages are scanned and placed by locality.
    pub fn normal(self) -> bool {
        self.0 & Self::NORMAL.0 != 0
    }

    /// NUMA_BALANCING_MEMORY_TIERING: slow-tier pages are promoted by hotness.
    pub fn tiering(self) -> bool {
        self.0 & Self::MEMORY_TIERING.0 != 0
    }

    pub fn mode(self) -> u8 {
        self.0
    }
}

impl From<bool> for NumaBalancing {
    fn from(on: bool) -> Self {
        if on { Self::NORMAL } else { Self::DISABLED }
    }
}

impl Serialize for NumaBalancing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            0 | 1 => s.serialize_bool(self.0 == 1),
            n => s.serialize_u8(n),
        }
    }
}

impl<'de> Deserialize<'de> for NumaBalancing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        numa_balancing_mode(d)
    }
}

/// Reads `numa_balancing` as the sysctl is written (0, 1) or as a boolean.
fn numa_balancing_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NumaBalancing, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Bool(bool),
        Int(i64),
    }
    match Mode::deserialize(d)? {
        Mode::Bool(b) => Ok(b.into()),
        Mode::Int(n @ 0..=3) => Ok(NumaBalancing(n as u8)),
        Mode::Int(n) => {
            Err(serde::de::Error::custom(format!("numa_balancing must be 0 to 3 (or false/true), got {n}")))
        }
    }
}
