//! Units, and the kernel's fixed sizes that the configuration is checked against. The bottom
//! floor: imports nothing, so the schema and the model both build on it.

/// Simulated time in nanoseconds since the start of the run.
pub type Nanos = u64;

pub const NSEC_PER_USEC: Nanos = 1_000;
pub const NSEC_PER_MSEC: Nanos = 1_000_000;
pub const NSEC_PER_SEC: Nanos = 1_000_000_000;

/// Pages in a MiB.
pub const PAGES_PER_MIB: u64 = 256;

/// Global page number: index into the model's page array.
pub type PageIdx = u32;

/// The SLIT value of a node to itself (LOCAL_DISTANCE in include/linux/topology.h).
pub const LOCAL_DISTANCE: u32 = 10;
/// The default distance between two different nodes (REMOTE_DISTANCE).
pub const REMOTE_DISTANCE: u32 = 20;

/// Most nodes a machine may have (`machine.nodes`).
pub const MAX_NODES: usize = 64;

/// MEMTIER_CHUNK_BITS (include/linux/memory-tiers.h): a tier spans 128 of abstract distance.
pub const MEMTIER_CHUNK_BITS: u32 = 7;
pub const MEMTIER_CHUNK_SIZE: u32 = 1 << MEMTIER_CHUNK_BITS;
/// Largest abstract distance a config may give (memory_tier ids stay below 2^16).
pub const MAX_ABSTRACT_DISTANCE: u32 = (1 << 16) * MEMTIER_CHUNK_SIZE - 1;
