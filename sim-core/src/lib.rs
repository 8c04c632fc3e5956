//! numasim's engine and its model of the machine and the kernel.
//!
//! Modules mirror the kernel's source tree, so an mm developer finds `mm/gup.rs` where they
//! would look for mm/gup.c. [`sim::Sim`] is the entry point: build a machine from a
//! [`config::Config`], add processes and threads (the `workloads` crate does this from a
//! scenario), then [`sim::Sim::run`].

pub mod config;
pub mod debug_vm;
pub mod device;
pub mod engine;
pub mod kernel;
pub mod kvm;
pub mod machine;
pub mod mm;
pub mod release;
pub mod sched;
pub mod sim;
pub mod stats;
pub mod trace;
pub mod units;
pub mod version;

pub use config::limits;
