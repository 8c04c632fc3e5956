//! The one reader of `summary.json`, for every consumer of a run: compare, sweep, merge,
//! validate, the plots and the kernel command's brief.

use std::path::{Path, PathBuf};

use serde_json::{Number, Value};

use crate::SUMMARY;

/// A run's summary as written, with the path it was read from for error messages.
pub struct Summary {
    path: PathBuf,
    json: Value,
}

impl Summary {
    /// Reads `dir/summary.json`; a missing or damaged file is an error naming it.
    pub fn read(dir: &Path) -> Result<Summary, String> {
        let path = dir.join(SUMMARY);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Summary { path, json })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The document itself, for the fields a consumer reads by name.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Every number, keyed `group.name` (or `name` at the top), in file order.
    pub fn numbers(&self) -> Vec<(String, Number)> {
        flatten_numbers(&self.json)
    }

    /// [`Self::numbers`] as floats.
    pub fn values(&self) -> Vec<(String, f64)> {
        self.numbers().into_iter().map(|(k, n)| (k, n.as_f64().unwrap_or(f64::NAN))).collect()
    }

    /// The metrics the kernel side could not measure (none on the simulator's side).
    pub fn not_measured(&self) -> Vec<String> {
        let listed = self.json["not_measured"].as_array();
        listed.map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
    }
}

/// Every number in a JSON document, keyed by its dotted path, in document order.
pub fn flatten_numbers(v: &Value) -> Vec<(String, Number)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Number)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            Value::Number(n) => out.push((prefix.to_string(), n.clone())),
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

    fn dir_with(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("numasim-summary-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SUMMARY), text).unwrap();
        dir
    }

    #[test]
    fn numbers_keep_file_order_and_dotted_names() {
        let dir =
            dir_with("order", r#"{"seed": 7, "vmstat": {"b": 2, "a": 1.5}, "not_measured": ["vmstat.c"], "s": "x"}"#);
        let s = Summary::read(&dir).unwrap();
        assert_eq!(s.values(), [("seed".into(), 7.0), ("vmstat.b".into(), 2.0), ("vmstat.a".into(), 1.5)]);
        assert_eq!(s.not_measured(), ["vmstat.c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_or_missing_summary_is_an_error_naming_the_file() {
        let dir = dir_with("damaged", "{\"seed\": ");
        let err = Summary::read(&dir).err().unwrap();
        assert!(err.starts_with(&dir.join(SUMMARY).display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Summary::read(&dir).err().unwrap();
        assert!(err.contains(SUMMARY), "{err}");
    }
}
