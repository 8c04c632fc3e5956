//! The scenario configuration: the TOML schema, its defaults, `--set` overrides and validation.
//!
//! Every section rejects unknown keys. Errors name the dotted key, the line in the file (when
//! the key is in the file) and, for a misspelt key or value, the closest valid one.
//!
//! The schema is a file per section (`machine.rs`, `kernel.rs`, ...), loading is `load.rs`,
//! the checks are `validate/` and `limits.rs`. Nothing here imports the model: the units and
//! the kernel's fixed sizes the checks need are in `units.rs`, the release rules in
//! `version.rs`, both below this module.

mod action;
mod backing;
mod device;
mod kernel;
pub mod limits;
mod load;
mod machine;
mod process;
mod scanners;
mod tiering;
mod tolerance;
mod validate;
mod vm;

use serde::{Deserialize, Serialize};

pub use self::action::{ActionConfig, Syscall, UffdMode, UserfaultfdConfig};
pub use self::backing::{Backing, HugetlbPage, MemPolicy, MpolMode};
pub use self::device::{Access, DeviceConfig, DeviceMode, GupContext, GupPath, MapSize};
pub use self::kernel::{HugepageAdvice, KernelConfig, NotifierMode, ShmemEnabled, Thp};
pub use self::load::{ConfigError, Source, closest, line_of, load, locate_key, to_toml};
pub use self::machine::{MachineConfig, MemoryNodeConfig};
pub use self::process::{MainThread, PatternKind, ProcessConfig, Slice, ThreadConfig, VmaConfig};
pub use self::scanners::{AgingConfig, KsmConfig};
pub use self::tiering::{HOT_THRESHOLD_MS, NumaBalancing, PROMOTE_RATE_LIMIT_MBPS};
pub use self::tolerance::{ToleranceConfig, ValidateConfig};
pub use self::validate::validate;
pub use self::vm::{KvmConfig, VmConfig};
pub use crate::release::KernelVersion;
use crate::units::PAGES_PER_MIB;
pub use crate::version::GupPolicy;

/// A failed check: the dotted key, and what is wrong with its value.
type Invalid = (String, String);

/// Whether a key holds its default, so the resolved config leaves it out.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A whole scenario.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Scenario name; results go to `out/<name>/` by default.
    pub name: String,
    /// One line saying what the scenario shows (`numasim scenarios` prints it).
    pub description: String,
    pub run: RunConfig,
    pub machine: MachineConfig,
    pub kernel: KernelConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub process: Vec<ProcessConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vm: Vec<VmConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device: Vec<DeviceConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub action: Vec<ActionConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub userfaultfd: Vec<UserfaultfdConfig>,
    pub kvm: KvmConfig,
    pub ksm: KsmConfig,
    pub aging: AgingConfig,
    /// How `numasim validate` judges this scenario against a real kernel; the simulation
    /// ignores it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate: Option<ValidateConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    pub duration_ms: u64,
    /// Length of one time-series interval.
    pub sample_ms: u64,
    /// Simulator memory the run may use; without it, the machine's available memory
    /// (see [`limits::check_memory_budget`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_gib: Option<f64>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { seed: 1, duration_ms: 10_000, sample_ms: 100, max_memory_gib: None }
    }
}

impl Config {
    /// Size of VMA `vma` of process (or vm) `process`, if both exist.
    pub fn vma_size_mib(&self, process: &str, vma: &str) -> Option<u64> {
        let in_process =
            self.process.iter().find(|p| p.name == process).and_then(|p| p.vma.iter().find(|v| v.name == vma));
        in_process
            .map(|v| v.size_mib)
            .or_else(|| self.vm.iter().find(|v| v.name == process && vma == "ram").map(|v| v.memory_mib))
    }

    /// The THP advice and KSM flag of VMA `vma` of `process` (or of a vm's `ram`).
    pub fn vma_advice(&self, process: &str, vma: &str) -> (Option<HugepageAdvice>, bool) {
        let in_process =
            self.process.iter().find(|p| p.name == process).and_then(|p| p.vma.iter().find(|v| v.name == vma));
        in_process.map(|v| (v.hugepage, v.mergeable)).unwrap_or_else(|| {
            self.vm.iter().find(|v| v.name == process).map_or((None, false), |v| (v.hugepage, v.mergeable))
        })
    }

    /// Page offsets where actions cut VMA `vma` of `process` (sorted, inside the VMA).
    pub fn vma_cuts(&self, process: &str, vma: &str) -> Vec<u64> {
        let size = self.vma_size_mib(process, vma).unwrap_or(0) * PAGES_PER_MIB;
        let mut cuts: Vec<u64> = self
            .action
            .iter()
            .filter(|a| a.process == process && a.vma == vma && a.syscall != Syscall::UffdioRwprotect)
            .flat_map(|a| {
                let start = a.offset_mib * PAGES_PER_MIB;
                [start, a.len_mib.map_or(size, |l| start + l * PAGES_PER_MIB)]
            })
            .filter(|&c| c > 0 && c < size)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }
}
