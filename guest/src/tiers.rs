//! The memory tiers the kernel built (mm/memory-tiers.c's sysfs,
//! /sys/devices/virtual/memory_tiering/memory_tierN/nodelist), and whether each CPU-less
//! node landed below every CPU node: otherwise nothing is promoted or demoted and a tiering
//! scenario has nothing to measure.

use std::collections::BTreeMap;

use guest::MEMORY_TIERING_DIR as TIERS_DIR;

/// Each node's tier id (the N of memory_tierN, adistance / MEMTIER_CHUNK_SIZE).
pub fn node_tiers() -> BTreeMap<u32, u32> {
    let Ok(dir) = std::fs::read_dir(TIERS_DIR) else { return BTreeMap::new() };
    let mut tiers = BTreeMap::new();
    for entry in dir.filter_map(|e| e.ok()) {
        let name = entry.file_name().into_string().unwrap_or_default();
        let Some(tier) = name.strip_prefix("memory_tier").and_then(|t| t.parse().ok()) else { continue };
        let list = std::fs::read_to_string(entry.path().join("nodelist")).unwrap_or_default();
        tiers.extend(parse_nodelist(&list).into_iter().map(|n| (n, tier)));
    }
    tiers
}

/// A cpulist-style node list: `0`, `0-1`, `0,2-3`.
fn parse_nodelist(list: &str) -> Vec<u32> {
    let range = |r: &str| -> Vec<u32> {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) => (a..=b).collect(),
            _ => Vec::new(),
        }
    };
    list.trim().split(',').filter(|r| !r.is_empty()).flat_map(range).collect()
}

/// Why the CPU-less nodes (`cpu_nodes..cpu_nodes + memory_nodes`) are not a lower tier, if
/// they are not: a node in the lowest CPU node's tier or above is a top tier
/// (node_is_toptier()).
pub fn check_lower(tiers: &BTreeMap<u32, u32>, cpu_nodes: u32, memory_nodes: u32) -> Result<(), String> {
    let top = (0..cpu_nodes).filter_map(|n| tiers.get(&n)).max().copied();
    for n in cpu_nodes..cpu_nodes + memory_nodes {
        match (tiers.get(&n), top) {
            (Some(&t), Some(top)) if t > top => {}
            (t, _) => {
                let at = t.map_or("no memory tier".to_string(), |t| format!("memory_tier{t}"));
                return Err(format!(
                    "the kernel put CPU-less node {n} in {at}, not below DRAM's (memory_tier{}): nothing to \
                     promote or demote ({TIERS_DIR})",
                    top.map_or("?".into(), |t| t.to_string())
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_expand_ranges() {
        assert_eq!(parse_nodelist("0-1,3\n"), [0, 1, 3]);
        assert_eq!(parse_nodelist("2"), [2]);
        assert!(parse_nodelist("\n").is_empty());
    }

    /// 6.12.118 and 6.1.192 under QEMU's HMAT with node 1 at 250 ns (docs/ORACLE.md).
    #[test]
    fn a_cpu_less_node_in_drams_tier_is_refused() {
        let split = BTreeMap::from([(0, 4), (1, 11)]);
        assert!(check_lower(&split, 1, 1).is_ok());
        let one = BTreeMap::from([(0, 4), (1, 4)]);
        let e = check_lower(&one, 1, 1).unwrap_err();
        assert!(e.contains("node 1 in memory_tier4") && e.contains("memory_tier4)"), "{e}");
        assert!(check_lower(&BTreeMap::new(), 1, 1).unwrap_err().contains("no memory tier"));
    }
}
