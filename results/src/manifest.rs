//! The manifests beside the runs of a comparison, a sweep and a validation, and their reader.

use std::path::Path;

use serde::de::DeserializeOwned;

/// `numasim compare`'s manifest: its groups of runs.
pub const COMPARE: &str = "compare.json";
/// `numasim sweep`'s manifest: its axes and runs.
pub const SWEEP: &str = "sweep.json";
/// `numasim validate`'s manifest: its cases and verdicts.
pub const VALIDATE: &str = "validate.json";

/// Reads the manifest `name` in `dir`; an error names the file and, when it does not parse,
/// says it is not `what`.
pub fn read<T: DeserializeOwned>(dir: &Path, name: &str, what: &str) -> Result<T, String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not {what}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_manifest_is_named_and_said_what_it_should_be() {
        let dir = std::env::temp_dir().join(format!("numasim-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SWEEP), "{\"axes\": [").unwrap();
        let err = read::<serde_json::Value>(&dir, SWEEP, "a sweep manifest").unwrap_err();
        assert!(
            err.starts_with(&dir.join(SWEEP).display().to_string()) && err.contains("not a sweep manifest"),
            "{err}"
        );
        let err = read::<serde_json::Value>(&dir, COMPARE, "a comparison manifest").unwrap_err();
        assert!(err.contains(COMPARE), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
