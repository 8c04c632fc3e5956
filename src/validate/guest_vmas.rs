//! The guest process's mappings beyond the scenario's VMAs. Besides the VMAs the plan maps,
//! a workload process in the guest has thread stacks, malloc arenas and the binary's data
//! (its /proc/PID/maps, which the guest sends at the start). On 6.12 they change how fast
//! the scanner comes back to the workload's memory: task_numa_work() (kernel/sched/fair.c,
//! 6.12.117) skips a VMA the scanning task has not faulted in (pid_inactive) and, when it
//! reaches the end having skipped one, forces a scan of the next such VMA only — "Only force
//! scan within one VMA at a time" — and stops there. Each mapping no worker faults in then
//! costs one scan period before the pass ends, mm->numa_scan_seq moves on and the workload's
//! VMA is scanned again (numa01: about ten of them past its buffer, and the scanning stops
//! for 10-20 s). The sim gets each such mapping as an empty VMA in its place.

use sim_core::config::{Config, VmaConfig};

/// One line of /proc/PID/maps: start and end address, permissions, path (empty: anonymous).
#[derive(Clone, Debug, PartialEq)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    path: String,
}

/// Gives every process of `config` the guest's mappings task_numa_work() would consider, as
/// empty VMAs placed around the scenario's in address order; returns how many it added. A
/// process whose maps are missing, or whose VMAs cannot all be found in them by size, is
/// left as it is.
pub fn add(config: &mut Config, guest: &serde_json::Value) -> usize {
    let mut added = 0;
    for p in &mut config.process {
        let Some(text) = guest["files"]["start"][format!("maps:{}", p.name)].as_str() else { continue };
        let maps: Vec<Mapping> = text.lines().filter_map(parse).collect();
        let Some(placed) = place(&p.vma, &maps) else { continue };
        let mut layout: Vec<(u64, VmaConfig)> =
            p.vma.drain(..).zip(placed.iter().map(|m| m.start)).map(|(v, a)| (a, v)).collect();
        for m in maps.iter().filter(|m| scanned(m) && !placed.contains(m)) {
            let mib = (m.end - m.start).div_ceil(1 << 20);
            layout.push((m.start, guest_vma(m.start, mib)));
            added += 1;
        }
        layout.sort_by_key(|(a, _)| *a);
        p.vma = layout.into_iter().map(|(_, v)| v).collect();
    }
    added
}

/// An empty, untouched VMA of `mib` MiB named after its guest address.
fn guest_vma(start: u64, mib: u64) -> VmaConfig {
    VmaConfig {
        name: format!("guest-{start:x}"),
        size_mib: mib.max(1),
        populate_node: None,
        mergeable: false,
        content_classes: 0,
        hugepage: None,
        ..Default::default()
    }
}

/// The mapping of each scenario VMA: the first not yet taken of its exact size.
fn place<'a>(vmas: &[VmaConfig], maps: &'a [Mapping]) -> Option<Vec<&'a Mapping>> {
    let mut taken: Vec<&Mapping> = Vec::new();
    for v in vmas {
        let bytes = v.size_mib << 20;
        let m = maps.iter().find(|m| m.end - m.start == bytes && !taken.contains(m))?;
        taken.push(m);
    }
    Some(taken)
}

/// Whether task_numa_work() gets as far as the pid check with this mapping: not
/// inaccessible (`---p`), not read-only file-backed (shared_ro), not a special mapping the
/// vma_migratable() test turns away ([vvar], [vdso], [vsyscall]).
fn scanned(m: &Mapping) -> bool {
    let (read, write, exec) = (m.perms.starts_with('r'), m.perms[1..].starts_with('w'), m.perms[2..].starts_with('x'));
    let special = m.path.starts_with("[v");
    let file = !m.path.is_empty() && !m.path.starts_with('[');
    (read || write || exec) && !special && !(file && read && !write)
}

/// `start-end perms offset dev inode [path]`.
fn parse(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let perms = f.next()?.to_string();
    let path = f.nth(3).unwrap_or("").to_string();
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    (perms.len() == 4).then_some(())?;
    Some(Mapping { start: hex(start)?, end: hex(end)?, perms, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of numa01's /proc/PID/maps in the 6.12 guest: the binary, a malloc arena, a
    /// thread stack and its guard page, the 512 MiB buffer, the stack, vvar and vdso.
    const MAPS: &str = "\
555555554000-555555600000 r--p 00000000 00:02 5  /init
555555600000-555555800000 r-xp 000ac000 00:02 5  /init
555555e03000-555555e25000 rw-p 00000000 00:00 0  [heap]
7f8378000000-7f8378021000 rw-p 00000000 00:00 0
7f8378021000-7f837c000000 ---p 00000000 00:00 0
7f838e9fc000-7f838e9fd000 ---p 00000000 00:00 0
7f838e9fd000-7f838ebfd000 rw-p 00000000 00:00 0
7f838f400000-7f83af400000 rw-p 00000000 00:00 0
7f83af9f0000-7f83afa59000 r--p 00000000 00:02 7  /etc/data
7f83afbac000-7f83afbb3000 rw-p 00000000 00:02 7  /etc/data
7fff42318000-7fff42339000 rw-p 00000000 00:00 0  [stack]
7fff423fc000-7fff42400000 r--p 00000000 00:00 0  [vvar]
7fff42400000-7fff42402000 r-xp 00000000 00:00 0  [vdso]";

    /// The heap, the arena, the thread stack, the writable file mapping and the stack come
    /// in as empty VMAs, in address order around the buffer; the rest is skipped before
    /// the pid check.
    #[test]
    fn the_mappings_the_scanner_walks_come_in_around_the_buffer() {
        let mut c = workloads::validation::resolve("numa01", &[]).unwrap();
        let guest = serde_json::json!({"files": {"start": {"maps:numa01": MAPS}}});
        assert_eq!(add(&mut c, &guest), 5);
        let names: Vec<&str> = c.process[0].vma.iter().map(|v| v.name.as_str()).collect();
        let want = [
            "guest-555555e03000",
            "guest-7f8378000000",
            "guest-7f838e9fd000",
            "shared",
            "guest-7f83afbac000",
            "guest-7fff42318000",
        ];
        assert_eq!(names, want);
        let sizes: Vec<u64> = c.process[0].vma.iter().map(|v| v.size_mib).collect();
        assert_eq!(sizes, [1, 1, 2, 512, 1, 1]);
        assert!(c.process[0].vma.iter().filter(|v| v.name != "shared").all(|v| v.populate_node.is_none()));
    }

    /// Without maps, or with maps that lack a mapping of a scenario VMA's size, nothing moves.
    #[test]
    fn a_process_whose_buffer_is_not_in_the_maps_keeps_its_vmas() {
        let mut c = workloads::validation::resolve("numa01", &[]).unwrap();
        let before = c.process[0].vma.clone();
        assert_eq!(add(&mut c, &serde_json::json!({})), 0);
        let small = serde_json::json!({"files": {"start": {"maps:numa01": MAPS.lines().take(4).collect::<Vec<_>>().join("\n")}}});
        assert_eq!(add(&mut c, &small), 0);
        assert_eq!(c.process[0].vma, before);
    }
}
