//! The discrete-event engine: simulated time, the event queue and the RNG streams.
//!
//! One run is single-threaded. Events are ordered by `(time, sequence)`, so two events at the
//! same instant run in the order they were scheduled, never in hash, entity or pointer order.

pub mod hugepages;
pub mod queue;
pub mod rng;

pub use queue::{Event, EventQueue};
pub use rng::{RngStream, stream};

/// Simulated time in nanoseconds since the start of the run.
pub type Nanos = u64;

pub const NSEC_PER_USEC: Nanos = 1_000;
pub const NSEC_PER_MSEC: Nanos = 1_000_000;
pub const NSEC_PER_SEC: Nanos = 1_000_000_000;
