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

/// The value of `key` in a flattened summary.
pub fn get(summary: &[(String, f64)], key: &str) -> Option<f64> {
    summary.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
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
