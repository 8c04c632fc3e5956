//! The result contract shared by the simulator and the kernel oracle: the names of a run
//! directory's files and the one writer of them. Every file is written under a temporary
//! name in the same directory and renamed into place; `summary.json` is removed first and
//! written last, so a directory with a summary holds one complete run. [`Summary`] is what
//! both sides write into `summary.json` and every consumer reads back; [`Table`] reads
//! `timeseries.csv`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub mod manifest;
mod series;
mod summary;

pub use series::Table;
pub use summary::{Group, Groups, Summary, TraceSummary, Value};

/// A run's totals and identity; its presence marks a run complete.
pub const SUMMARY: &str = "summary.json";
/// The sampled metrics, one row per sample.
pub const TIMESERIES: &str = "timeseries.csv";
/// The resolved configuration the run used.
pub const CONFIG: &str = "config.toml";
/// The kernel side's facts about the guest and its boot.
pub const GUEST: &str = "guest.json";
/// The kernel side's hashes of the other files, checked before a run is reused.
pub const CHECKSUMS: &str = "checksums.txt";

/// Every result file a run directory may hold, summary first (the order they are removed in).
pub const RUN_FILES: [&str; 5] = [SUMMARY, CONFIG, TIMESERIES, GUEST, CHECKSUMS];

/// Writes `contents` to `dir/name` through a temporary file and a rename. `hold` is given
/// the temporary path and its answer is kept while the file exists: a caller's way to have
/// it removed on a signal too. On any failure the temporary file is removed.
pub fn write_atomic<G>(dir: &Path, name: &str, contents: &[u8], hold: impl FnOnce(PathBuf) -> G) -> io::Result<()> {
    let target = dir.join(name);
    let tmp = Temp(dir.join(format!(".{name}.tmp")));
    let _held = hold(tmp.0.clone());
    let result = fs::write(&tmp.0, contents).and_then(|()| fs::rename(&tmp.0, &target));
    result.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", target.display())))
}

/// Writes a run into `dir` (created if missing): an earlier summary is removed, then each of
/// `files` in order and, last, `summary`, every one through [`write_atomic`].
pub fn write_run<G>(
    dir: &Path,
    files: &[(&str, &[u8])],
    summary: &[u8],
    hold: impl Fn(PathBuf) -> G,
) -> io::Result<()> {
    let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(at)?;
    // An older summary must not vouch for files this run is about to replace.
    remove_if_present(&dir.join(SUMMARY)).map_err(at)?;
    for (name, contents) in files {
        write_atomic(dir, name, contents, &hold)?;
    }
    write_atomic(dir, SUMMARY, summary, &hold)
}

/// Removes every result file of an earlier run from `dir`, summary first; other files stay.
pub fn clear(dir: &Path) -> io::Result<()> {
    for path in RUN_FILES.iter().map(|f| dir.join(f)) {
        remove_if_present(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A temporary file, removed when dropped; after a successful rename there is nothing left
/// to remove.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("numasim-results-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_run_is_written_whole_and_replaces_an_earlier_summary() {
        let dir = scratch("whole");
        fs::write(dir.join(SUMMARY), "old").unwrap();
        write_run(&dir, &[(CONFIG, b"c"), (TIMESERIES, b"t")], b"s", |_| ()).unwrap();
        assert_eq!(listing(&dir), [CONFIG, SUMMARY, TIMESERIES]);
        assert_eq!(fs::read(dir.join(SUMMARY)).unwrap(), b"s");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file_and_no_summary() {
        let dir = scratch("fail");
        fs::write(dir.join(SUMMARY), "old").unwrap();
        // A non-empty directory where the series goes: its temporary file is written and
        // the rename fails.
        fs::create_dir_all(dir.join(TIMESERIES).join("x")).unwrap();
        let held = std::cell::RefCell::new(Vec::new());
        let err =
            write_run(&dir, &[(CONFIG, b"c"), (TIMESERIES, b"t")], b"s", |p| held.borrow_mut().push(p)).unwrap_err();
        assert!(err.to_string().contains(&dir.join(TIMESERIES).display().to_string()), "{err}");
        assert_eq!(listing(&dir), [CONFIG, TIMESERIES]);
        assert_eq!(held.borrow().len(), 2, "each temporary file is offered to the caller");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_parent_that_is_a_file_fails_with_its_name_and_writes_nothing() {
        let dir = scratch("parent");
        fs::write(dir.join("file"), "x").unwrap();
        let err = write_run(&dir.join("file/run"), &[(CONFIG, b"c")], b"s", |_| ()).unwrap_err();
        assert!(err.to_string().contains("file/run"), "{err}");
        assert_eq!(listing(&dir), ["file"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clearing_removes_the_result_files_and_nothing_else() {
        let dir = scratch("clear");
        for f in RUN_FILES.iter().chain(&["console.log"]) {
            fs::write(dir.join(f), "x").unwrap();
        }
        clear(&dir).unwrap();
        assert_eq!(listing(&dir), ["console.log"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
