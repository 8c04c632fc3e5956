//! Figures from what the result files hold: a summary's values, a mean and its spread.

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
