//! The discrete-event engine: simulated time, the event queue and the RNG streams.
//!
//! One run is single-threaded. Events are ordered by `(time, sequence)`, so two events at the
//! same instant run in the order they were scheduled, never in hash, entity or pointer order.

pub mod hugepages;
pub mod queue;
pub mod rng;

pub use queue::{Event, EventQueue};
pub use rng::{RngStream, stream};

pub use crate::units::{NSEC_PER_MSEC, NSEC_PER_SEC, NSEC_PER_USEC, Nanos};

/// Starts loading `slice[i]` into the cache (nothing when `i` is out of range): a touch
/// whose page is known ahead does not wait for memory when it comes.
#[inline]
pub fn prefetch<T>(slice: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = slice.get(i) {
        // SAFETY: a prefetch is a hint with no effect on memory; the pointer is valid.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((x as *const T).cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, i);
}
