//! Reading ftrace text back: `trace-cmd report` output (numasim's or a real kernel's) and the
//! tracefs `trace` file, whose lines carry an extra latency column (`d..2.`).
//!
//! A line is `COMM-PID [CPU] [FLAGS] SECONDS: EVENT: FIELDS`; a comm may hold spaces and
//! dashes, so the pid is the digits after the last dash before the CPU column.

use std::collections::BTreeMap;

/// One event line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    pub comm: &'a str,
    /// The timestamp in nanoseconds (printed as seconds with microseconds, or nanoseconds).
    pub ts: u64,
    pub pid: u32,
    pub cpu: u32,
    pub event: &'a str,
    pub fields: &'a str,
}

/// Parses one line; `None` for headers, notes and anything that is not an event.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let open = line.find(" [")?;
    let close = open + line[open..].find(']')?;
    let cpu = line[open + 2..close].trim().parse().ok()?;
    let task = line[..open].trim();
    let dash = task.rfind('-')?;
    let pid = task[dash + 1..].trim().parse().ok()?;
    let comm = task[..dash].trim();
    let rest = &line[close + 1..];
    // The timestamp is the first word ending in ':' that parses as seconds.
    let colon = rest.find(": ")?;
    let ts = parse_seconds(rest[..colon].split_whitespace().last()?)?;
    let rest = rest[colon + 2..].trim_start();
    let (event, fields) = match rest.find(':') {
        Some(i) => (&rest[..i], rest[i + 1..].trim()),
        None => return None,
    };
    if event.is_empty() || event.contains(' ') {
        return None;
    }
    Some(Line { comm, ts, pid, cpu, event, fields })
}

/// `sec.frac` as nanoseconds, exactly: no float rounding for long uptimes.
fn parse_seconds(s: &str) -> Option<u64> {
    let (sec, frac) = s.split_once('.')?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scale = 10u64.pow(9 - frac.len() as u32);
    sec.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(frac.parse::<u64>().ok()? * scale)
}

/// The `key=value` pairs of a field string, in order (TP_printk's literal text, such as
/// sched_switch's `==>`, is no pair).
pub fn field_pairs(fields: &str) -> impl Iterator<Item = (&str, &str)> {
    fields.split_whitespace().filter_map(|kv| kv.split_once('='))
}

/// The value of field `key`.
pub fn field<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    field_pairs(fields).find_map(|(k, v)| (k == key).then_some(v))
}

/// The `key=value` pairs of a field string whose value is a number.
pub fn numeric_fields(fields: &str) -> impl Iterator<Item = (&str, i64)> {
    field_pairs(fields).filter_map(|(k, v)| Some((k, v.parse::<i64>().ok()?)))
}

/// Per event name, how many events; and per `event.nr_*` field, the sum (the kernel names
/// counts it reports `nr_*`, as mm_migrate_pages does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: BTreeMap<String, u64>,
    pub sums: BTreeMap<String, i64>,
    /// Per event name, the field names of its first line, in order.
    pub keys: BTreeMap<String, Vec<String>>,
    /// Lines that were neither an event nor a header or note.
    pub unparsed: u64,
}

/// The field names of a field string, in order.
pub fn field_keys(fields: &str) -> Vec<String> {
    field_pairs(fields).map(|(k, _)| k.to_string()).collect()
}

/// Counts the events of an ftrace text file.
pub fn count_events(text: &str) -> Counts {
    let mut c = Counts::default();
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty()
            || t.starts_with('#')
            || t.starts_with("cpus=")
            || t.starts_with("version")
            || t.starts_with("CPU ")
        {
            continue;
        }
        let Some(l) = parse_line(line) else {
            c.unparsed += 1;
            continue;
        };
        *c.events.entry(l.event.to_string()).or_default() += 1;
        c.keys.entry(l.event.to_string()).or_insert_with(|| field_keys(l.fields));
        for (k, v) in numeric_fields(l.fields).filter(|(k, _)| k.starts_with("nr_")) {
            *c.sums.entry(format!("{}.{k}", l.event)).or_default() += v;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trace_cmd_report_and_tracefs_lines() {
        let report = "  numa02/worker/1-1003  [001]     2.004512: sched_move_numa:      pid=1003 tgid=1001 ngid=1001 src_cpu=1 src_nid=0 dst_cpu=5 dst_nid=1";
        let l = parse_line(report).unwrap();
        assert_eq!((l.comm, l.pid, l.cpu, l.event), ("numa02/worker/1", 1003, 1, "sched_move_numa"));
        assert!(l.fields.starts_with("pid=1003 "));
        assert_eq!(l.ts, 2_004_512_000);
        let tracefs = "       a.out-4242    [003] d..2.  1234.567890: mm_migrate_pages: nr_succeeded=1 nr_failed=0 nr_thp_succeeded=0 nr_thp_failed=0 nr_thp_split=0 nr_split=0 mode=MIGRATE_ASYNC reason=numa_misplaced";
        let l = parse_line(tracefs).unwrap();
        assert_eq!((l.comm, l.pid, l.cpu, l.event), ("a.out", 4242, 3, "mm_migrate_pages"));
        assert_eq!(l.ts, 1_234_567_890_000);
        let c = count_events(&format!("# tracer: nop\ncpus=4\n{report}\n{tracefs}\n{tracefs}\ngarbage\n"));
        assert_eq!(c.events["sched_move_numa"], 1);
        assert_eq!(c.events["mm_migrate_pages"], 2);
        assert_eq!(c.sums["mm_migrate_pages.nr_succeeded"], 2);
        assert_eq!(c.unparsed, 1);
        assert_eq!(c.keys["sched_move_numa"], ["pid", "tgid", "ngid", "src_cpu", "src_nid", "dst_cpu", "dst_nid"]);
    }
}
