//! `summary.json`: one type the simulator and the kernel oracle both fill, and every consumer
//! of a run (compare, sweep, merge, validate, the plots, the kernel command's brief) reads.

use std::borrow::Cow;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::SUMMARY;

/// One metric value: a count, or a ratio/rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Count(u64),
    Real(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Count(n) => n as f64,
            Value::Real(x) => x,
        }
    }

    /// The number as JSON writes it (a count without a fraction, a real with one).
    pub fn to_json(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// One group's named values (names built at run time for per-thread and per-domain ones).
pub type Group = Vec<(Cow<'static, str>, Value)>;

/// Named groups of named values, in a fixed order. Read back, a group's nested objects (a
/// kernel run's per-thread figures as written before they were flat) become dotted names,
/// and what is not a number is left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Groups(pub Vec<(Cow<'static, str>, Group)>);

impl Groups {
    /// The value of `group.name`.
    pub fn get(&self, dotted: &str) -> Option<Value> {
        let (group, name) = dotted.split_once('.')?;
        let (_, values) = self.0.iter().find(|(g, _)| g == group)?;
        values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// `group.name` → value, in order.
    pub fn flatten(&self) -> Vec<(String, Value)> {
        self.0.iter().flat_map(|(g, vals)| vals.iter().map(move |(n, v)| (format!("{g}.{n}"), *v))).collect()
    }

    /// Sets `group.name`, adding the group (last) or the name (last in its group) if new.
    pub fn set(&mut self, group: &'static str, name: impl Into<Cow<'static, str>>, v: Value) {
        let at = match self.0.iter().position(|(g, _)| g == group) {
            Some(at) => at,
            None => {
                self.0.push((Cow::Borrowed(group), Vec::new()));
                self.0.len() - 1
            }
        };
        let (name, values) = (name.into(), &mut self.0[at].1);
        match values.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => *old = v,
            None => values.push((name, v)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A group as a JSON object.
struct GroupRef<'a>(&'a [(Cow<'static, str>, Value)]);

impl Serialize for GroupRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Groups {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (g, vals) in &self.0 {
            m.serialize_entry(g, &GroupRef(vals))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Groups {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Objects;
        impl<'de> Visitor<'de> for Objects {
            type Value = Groups;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("groups of metrics")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Groups, A::Error> {
                let mut groups = Vec::new();
                while let Some((name, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if v.is_object() {
                        groups.push((Cow::Owned(name), group_of(&v)));
                    }
                }
                Ok(Groups(groups))
            }
        }
        d.deserialize_map(Objects)
    }
}

/// A JSON object's numbers as a group, nested objects' under dotted names.
fn group_of(object: &serde_json::Value) -> Group {
    flatten_numbers(object).into_iter().map(|(k, n)| (Cow::Owned(k), value_of(&n))).collect()
}

fn value_of(n: &Number) -> Value {
    n.as_u64().map_or_else(|| Value::Real(n.as_f64().unwrap_or(f64::NAN)), Value::Count)
}

/// One group as a field of its own: a JSON object of numbers.
mod group_field {
    use super::*;

    pub fn serialize<S: Serializer>(g: &Group, s: S) -> Result<S::Ok, S::Error> {
        GroupRef(g).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Group, D::Error> {
        Ok(group_of(&serde_json::Value::deserialize(d)?))
    }
}

/// What the summary says of the trace file, when the run was traced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub file: String,
    /// `ftrace` or `chrome-json`.
    pub format: Cow<'static, str>,
    /// Whose tracepoint formats it prints.
    pub kernel: Cow<'static, str>,
    pub events: u64,
    pub bytes: u64,
    /// False when the size bound stopped recording; `stopped` then says when.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// A run's `summary.json`: the header, the metric groups both sides share, and what only one
/// side has (the simulator's event count and trace; the kernel's release, the metrics it
/// could not measure and its own counters under the kernel's names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    /// `kernel.version`: the model's row of the version table.
    pub kernel_version: String,
    /// The GUP era in effect (the version's, or `kernel.gup_policy`'s override).
    pub gup_policy: String,
    /// `kernel.notifier`.
    pub notifier: String,
    /// The kernel release a kernel run measured; none for the simulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Simulated time, or the guest's workload time on a kernel.
    pub sim_time_ns: u64,
    /// Events the simulator dispatched; none on a kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// Wall-clock seconds the run took (the one field that differs between identical runs).
    pub wall_s: f64,
    /// The trace file, when a simulator run was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceSummary>,
    #[serde(flatten)]
    pub metrics: Groups,
    /// Kernel runs: every /proc/vmstat counter's change over the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "group_field")]
    pub kernel_vmstat: Group,
    /// Kernel runs: /sys/kernel/mm/ksm at the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "group_field")]
    pub kernel_ksm: Group,
    /// Kernel runs with gupdev: each secondary MMU's counters at the end, by its name.
    #[serde(default, skip_serializing_if = "Groups::is_empty")]
    pub kernel_gupdev: Groups,
    /// Kernel runs: the shared metrics (`group.name`) the kernel could not give.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_measured: Vec<String>,
}

impl Summary {
    /// Reads `dir/summary.json`; a missing, damaged or incomplete file is an error naming it.
    pub fn read(dir: &Path) -> Result<Summary, String> {
        let path = dir.join(SUMMARY);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The file's text: pretty JSON and a final newline.
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).expect("a summary is JSON") + "\n"
    }

    /// Every number, keyed `group.name` (or `name` at the top), in file order.
    pub fn numbers(&self) -> Vec<(String, Number)> {
        flatten_numbers(&serde_json::to_value(self).expect("a summary is JSON"))
    }

    /// [`Self::numbers`] as floats.
    pub fn values(&self) -> Vec<(String, f64)> {
        self.numbers().into_iter().map(|(k, n)| (k, n.as_f64().unwrap_or(f64::NAN))).collect()
    }
}

/// Every number in a JSON document, keyed by its dotted path, in document order.
fn flatten_numbers(v: &serde_json::Value) -> Vec<(String, Number)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, Number)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => out.push((prefix.to_string(), n.clone())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("numasim-summary-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SUMMARY), text).unwrap();
        dir
    }

    const HEADER: &str = r#""scenario": "s", "seed": 7, "kernel_version": "6.12", "gup_policy": "explicit",
        "notifier": "unconditional", "sim_time_ns": 5, "wall_s": 0.5"#;

    #[test]
    fn numbers_keep_file_order_and_dotted_names() {
        let text = format!(r#"{{{HEADER}, "vmstat": {{"b": 2, "a": 1.5}}, "not_measured": ["vmstat.c"]}}"#);
        let dir = dir_with("order", &text);
        let s = Summary::read(&dir).unwrap();
        let values = s.values();
        assert_eq!(values[..3], [("seed".into(), 7.0), ("sim_time_ns".into(), 5.0), ("wall_s".into(), 0.5)]);
        assert_eq!(values[3..], [("vmstat.b".into(), 2.0), ("vmstat.a".into(), 1.5)]);
        assert_eq!(s.not_measured, ["vmstat.c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A kernel run's per-thread figures were once nested objects: they read as the dotted
    /// names the simulator writes, and what is not a number is left out.
    #[test]
    fn nested_objects_in_a_group_read_as_dotted_names() {
        let text = format!(
            r#"{{{HEADER}, "source": "6.12.1", "thread": {{"p/w/0": {{"nr_migrations": 3, "node0_share": 0.25}}}},
            "kernel_gupdev": {{"d": {{"hint_faults": 4}}}}, "touches": {{"cpu": null}}}}"#
        );
        let dir = dir_with("nested", &text);
        let s = Summary::read(&dir).unwrap();
        assert_eq!(s.metrics.get("thread.p/w/0.nr_migrations"), Some(Value::Count(3)));
        assert_eq!(s.metrics.get("thread.p/w/0.node0_share"), Some(Value::Real(0.25)));
        assert_eq!(s.metrics.get("touches.cpu"), None);
        assert_eq!(s.kernel_gupdev.get("d.hint_faults"), Some(Value::Count(4)));
        assert_eq!(s.source.as_deref(), Some("6.12.1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What a side does not have is not written: a summary reads back to itself, and the
    /// simulator's carries no kernel field.
    #[test]
    fn a_summary_reads_back_to_itself_and_leaves_out_what_it_lacks() {
        let mut s = Summary { scenario: "s".into(), events: Some(9), ..Summary::default() };
        s.metrics.set("vmstat", "numa_hint_faults", Value::Count(3));
        s.metrics.set("locality", "cpu", Value::Real(1.0));
        let text = s.to_text();
        for absent in ["source", "not_measured", "kernel_vmstat", "kernel_ksm", "kernel_gupdev", "trace"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        assert!(text.contains("\"cpu\": 1.0"), "a real keeps its fraction: {text}");
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), s);
    }

    #[test]
    fn setting_a_metric_replaces_it_or_adds_it_last() {
        let mut g = Groups::default();
        g.set("a", "x", Value::Count(1));
        g.set("b", "y", Value::Count(2));
        g.set("a", "z", Value::Count(3));
        g.set("a", "x", Value::Count(4));
        let flat: Vec<String> = g.flatten().into_iter().map(|(k, v)| format!("{k}={}", v.to_json())).collect();
        assert_eq!(flat, ["a.x=4", "a.z=3", "b.y=2"]);
    }

    #[test]
    fn a_damaged_missing_or_incomplete_summary_is_an_error_naming_the_file() {
        let dir = dir_with("damaged", "{\"seed\": ");
        let err = Summary::read(&dir).err().unwrap();
        assert!(err.starts_with(&dir.join(SUMMARY).display().to_string()), "{err}");
        std::fs::write(dir.join(SUMMARY), r#"{"scenario": "s", "seed": 1}"#).unwrap();
        let err = Summary::read(&dir).err().unwrap();
        assert!(err.contains(SUMMARY) && err.contains("missing field"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Summary::read(&dir).err().unwrap();
        assert!(err.contains(SUMMARY), "{err}");
    }
}
