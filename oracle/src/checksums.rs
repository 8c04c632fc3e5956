//! `checksums.txt` of a kernel run: the FNV-1a hash of each result file, written before
//! the summary. A run directory `validate --reuse` would take is checked against it, so a
//! result file edited (or damaged) since the run wrote it is not taken for what the kernel did.
//!
//! Simplification: FNV-1a finds edits and damage, not a forgery (anyone can recompute it).

use std::path::Path;

pub const FILE: &str = ::results::CHECKSUMS;

/// One line per file: the hash in hex, two spaces, the name (as sha256sum prints).
pub fn text(files: &[(&str, &[u8])]) -> String {
    files.iter().map(|(name, data)| format!("{:016x}  {name}\n", guest::fnv1a(guest::FNV_OFFSET, data))).collect()
}

/// What a run directory's checksums say: Ok(false) when it has none (written before they
/// were), Err naming the first file whose contents no longer match.
pub fn verify(dir: &Path) -> Result<bool, String> {
    let Ok(list) = std::fs::read_to_string(dir.join(FILE)) else { return Ok(false) };
    for line in list.lines() {
        let (hash, name) = line.split_once("  ").ok_or_else(|| format!("{}: not a checksum line: {line}", FILE))?;
        let path = dir.join(name);
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if format!("{:016x}", guest::fnv1a(guest::FNV_OFFSET, &data)) != hash {
            return Err(format!("{}: changed since the kernel run wrote it ({} says otherwise)", path.display(), FILE));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_file_fails_the_check_and_a_directory_without_checksums_has_none() {
        let dir = std::env::temp_dir().join(format!("oracle-checksums-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(verify(&dir), Ok(false));
        std::fs::write(dir.join("guest.json"), "{\"boot_s\": 4.0}\n").unwrap();
        std::fs::write(dir.join(FILE), text(&[("guest.json", b"{\"boot_s\": 4.0}\n")])).unwrap();
        assert_eq!(verify(&dir), Ok(true));
        std::fs::write(dir.join("guest.json"), "{\"boot_s\": 5.0}\n").unwrap();
        let err = verify(&dir).unwrap_err();
        assert!(err.contains("guest.json: changed since the kernel run wrote it"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
