//! Reading result files.

use std::path::Path;

use crate::Error;

/// A CSV file as named columns of numbers (unparsable cells become NaN), plus the raw text
/// of every cell for label columns.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Self, Error> {
        let mut r = csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let header = r.headers().map_err(|e| format!("{}: {e}", path.display()))?.iter().map(String::from).collect();
        let rows = r
            .records()
            .map(|rec| rec.map(|rec| rec.iter().map(String::from).collect()))
            .collect::<Result<Vec<Vec<String>>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { header, rows })
    }

    pub fn has(&self, name: &str) -> bool {
        self.header.iter().any(|h| h == name)
    }

    /// Column `name` as numbers.
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        let i = self.header.iter().position(|h| h == name)?;
        Some(self.rows.iter().map(|r| r.get(i).and_then(|c| c.parse().ok()).unwrap_or(f64::NAN)).collect())
    }

    /// The time-series column `time_ms` in seconds.
    pub fn time_s(&self) -> Vec<f64> {
        self.column("time_ms").unwrap_or_default().into_iter().map(|t| t / 1000.0).collect()
    }

    /// Column `name` as text.
    pub fn labels(&self, name: &str) -> Option<Vec<String>> {
        let i = self.header.iter().position(|h| h == name)?;
        Some(self.rows.iter().map(|r| r.get(i).cloned().unwrap_or_default()).collect())
    }
}

/// `summary.json` flattened to `group.name` → value (numbers only), in file order.
pub fn read_summary(path: &Path) -> Result<Vec<(String, f64)>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(flatten_numbers(&v).into_iter().map(|(k, n)| (k, n.as_f64().unwrap_or(f64::NAN))).collect())
}

/// The value of `key` in a flattened summary.
pub fn get(summary: &[(String, f64)], key: &str) -> Option<f64> {
    summary.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Every number in a JSON document, keyed by its dotted path, in document order.
pub fn flatten_numbers(v: &serde_json::Value) -> Vec<(String, serde_json::Number)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Number)>) {
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

/// Mean and sample standard deviation.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_spread() {
        assert_eq!(mean_sd(&[2.0, 4.0, 6.0]), (4.0, 2.0));
        assert_eq!(mean_sd(&[5.0]), (5.0, 0.0));
    }
}
