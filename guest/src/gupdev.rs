//! Bindings to /dev/gupdev, the oracle's secondary-MMU test device (oracle/gupdev/gupdev.h;
//! oracle/gupdev/README.md documents it): plain `libc::ioctl` wrappers. Structs mirror the C
//! layouts field for field; the ioctl numbers are computed the way <asm-generic/ioctl.h>
//! does, and the size asserts pin both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

pub const ABI_VERSION: u32 = 3;
pub const DEVICE: &str = "/dev/gupdev";
pub const MAX_PAGES: u64 = 1 << 20;

pub const CAP_HONOR_NUMA_FAULT: u32 = 1 << 0;
pub const CAP_IMPLICIT_NUMA_FAULT: u32 = 1 << 1;

pub const NOTIFIER_NONE: u32 = 0;
pub const NOTIFIER_UNCONDITIONAL: u32 = 1;
pub const NOTIFIER_SMART: u32 = 2;

pub const MAP_WRITE: u32 = 1 << 0;
pub const MAP_HONOR_NUMA_FAULT: u32 = 1 << 1;
pub const MAP_PIN_LONGTERM: u32 = 1 << 2;
pub const MAP_KTHREAD: u32 = 1 << 3;

pub const ACCESS_WRITE: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Version {
    pub abi_version: u32,
    pub caps: u32,
    pub release: [u8; 64],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Attach {
    pub pid: i32,
    pub notifier: u32,
    pub start: u64,
    pub length: u64,
    pub node: i32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Map {
    pub start: u64,
    pub length: u64,
    pub flags: u32,
    pub reserved: u32,
    pub mapped: u64,
    pub hint_faults: u64,
    pub hint_faults_local: u64,
    pub pages_migrated: u64,
    pub retries: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Range {
    pub start: u64,
    pub length: u64,
    pub dropped: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    pub start: u64,
    pub length: u64,
    pub flags: u32,
    pub reserved: u32,
    pub accessed: u64,
    pub stale: u64,
    pub invalid: u64,
    pub sum: u64,
}

/// Counters; the `stale_*` and `young_secondary_only_protnone` fields are numasim's
/// `stale.mappings_max`, `stale.mapping_ns`, `stale.accesses`, `young.secondary_only_protnone`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub entries_valid: u64,
    pub entries_pinned: u64,
    pub entries_ref: u64,
    pub invalidations: u64,
    pub invalidations_protection_vma: u64,
    pub entries_dropped: u64,
    pub entries_skipped: u64,
    pub stale_mappings: u64,
    pub stale_mappings_max: u64,
    pub stale_mapping_ns: u64,
    pub stale_accesses: u64,
    pub accesses: u64,
    pub young_clear_calls: u64,
    pub young_test_calls: u64,
    pub young_answered: u64,
    pub young_secondary_only_protnone: u64,
    pub hint_faults: u64,
    pub hint_faults_local: u64,
    pub pages_migrated: u64,
    pub map_retries: u64,
    pub invalidations_clear: u64,
    pub invalidations_unmap: u64,
    pub invalidations_other: u64,
    pub entries_refilled: u64,
}

const MAGIC: u64 = 0xB7;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc<T>(dir: u64, nr: u64) -> u64 {
    (dir << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (MAGIC << 8) | nr
}

pub const IOC_VERSION: u64 = ioc::<Version>(IOC_READ, 0);
pub const IOC_ATTACH: u64 = ioc::<Attach>(IOC_WRITE, 1);
pub const IOC_MAP: u64 = ioc::<Map>(IOC_READ | IOC_WRITE, 2);
pub const IOC_UNMAP: u64 = ioc::<Range>(IOC_READ | IOC_WRITE, 3);
pub const IOC_ACCESS: u64 = ioc::<Access>(IOC_READ | IOC_WRITE, 4);
pub const IOC_STATS: u64 = ioc::<Stats>(IOC_READ, 5);

const _: () = assert!(IOC_VERSION == 0x8048_b700 && IOC_ATTACH == 0x4020_b701);
const _: () = assert!(IOC_MAP == 0xc040_b702 && IOC_UNMAP == 0xc018_b703);
const _: () = assert!(IOC_ACCESS == 0xc038_b704 && IOC_STATS == 0x80c0_b705);

/// One device: an open file of /dev/gupdev (closing it drops every entry and pin).
pub struct Device {
    file: File,
}

impl Device {
    pub fn open() -> io::Result<Device> {
        Ok(Device { file: OpenOptions::new().read(true).write(true).open(DEVICE)? })
    }

    fn ioctl<T>(&self, cmd: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a live #[repr(C)] value of the size encoded in `cmd`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg as *mut T) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    pub fn version(&self) -> io::Result<Version> {
        let mut v = Version { abi_version: 0, caps: 0, release: [0; 64] };
        self.ioctl(IOC_VERSION, &mut v)?;
        Ok(v)
    }

    /// Binds the device to `pid`'s mm (0: the caller's) over `[start, start + length)`.
    pub fn attach(&self, pid: i32, notifier: u32, start: u64, length: u64, node: i32) -> io::Result<()> {
        let mut a = Attach { pid, notifier, start, length, node, reserved: 0 };
        self.ioctl(IOC_ATTACH, &mut a)
    }

    /// Maps through GUP. On error the kernel still filled `mapped` and the fault deltas,
    /// but they are not returned here: use [`Device::map_raw`] to see them.
    pub fn map(&self, start: u64, length: u64, flags: u32) -> io::Result<Map> {
        let mut m = Map { start, length, flags, ..Map::default() };
        self.map_raw(&mut m).map(|()| m)
    }

    pub fn map_raw(&self, m: &mut Map) -> io::Result<()> {
        self.ioctl(IOC_MAP, m)
    }

    pub fn unmap(&self, start: u64, length: u64) -> io::Result<u64> {
        let mut r = Range { start, length, dropped: 0 };
        self.ioctl(IOC_UNMAP, &mut r)?;
        Ok(r.dropped)
    }

    pub fn access(&self, start: u64, length: u64, flags: u32) -> io::Result<Access> {
        let mut a = Access { start, length, flags, ..Access::default() };
        self.ioctl(IOC_ACCESS, &mut a)?;
        Ok(a)
    }

    pub fn stats(&self) -> io::Result<Stats> {
        let mut s = Stats::default();
        self.ioctl(IOC_STATS, &mut s)?;
        Ok(s)
    }
}

/// Pages every gupdev device holds (references and pins): 0 when all are closed.
pub fn held_pages() -> io::Result<u64> {
    let s = std::fs::read_to_string("/sys/module/gupdev/parameters/held_pages")?;
    s.trim().parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// gupdev_stats fields, in the C struct's order (gupdev.h).
pub const STATS_FIELDS: [&str; 24] = [
    "entries_valid",
    "entries_pinned",
    "entries_ref",
    "invalidations",
    "invalidations_protection_vma",
    "entries_dropped",
    "entries_skipped",
    "stale_mappings",
    "stale_mappings_max",
    "stale_mapping_ns",
    "stale_accesses",
    "accesses",
    "young_clear_calls",
    "young_test_calls",
    "young_answered",
    "young_secondary_only_protnone",
    "hint_faults",
    "hint_faults_local",
    "pages_migrated",
    "map_retries",
    "invalidations_clear",
    "invalidations_unmap",
    "invalidations_other",
    "entries_refilled",
];
