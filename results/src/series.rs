//! The reader of `timeseries.csv` (and of any other CSV of numbers a run writes).

use std::path::Path;

/// A CSV file as named columns of numbers (unparsable cells become NaN), plus the raw text
/// of every cell for label columns.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Self, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_as_numbers_or_nan_and_a_missing_file_is_named() {
        let dir = std::env::temp_dir().join(format!("numasim-series-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(crate::TIMESERIES);
        std::fs::write(&path, "time_ms,node,faults\n500,n0,3\n1000,n1,x\n").unwrap();
        let t = Table::read(&path).unwrap();
        assert_eq!(t.time_s(), [0.5, 1.0]);
        assert_eq!(t.labels("node").unwrap(), ["n0", "n1"]);
        let faults = t.column("faults").unwrap();
        assert!(faults[0] == 3.0 && faults[1].is_nan());
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Table::read(&path).unwrap_err();
        assert!(err.contains(crate::TIMESERIES), "{err}");
    }
}
