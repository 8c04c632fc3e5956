//! One numasim at a time per cache entry: fetching and unpacking a kernel or its headers,
//! probing the accelerator for a release, building gupdev for it. Each happens under an
//! exclusive `flock(2)` on `<entry>.lock` beside the entry; a second run waits for the lock,
//! then finds the entry complete and uses it. The lock goes with its holder, SIGKILL included,
//! so a killed fetch never blocks the next run. The lock files stay (removing one would let
//! two runs hold locks on different files of one name).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::OracleError;

/// Held until dropped.
pub struct EntryLock {
    _file: File,
}

/// Takes the lock of `dir/entry`, waiting (and saying so) while another run holds it.
pub fn lock_entry(dir: &Path, entry: &str) -> Result<EntryLock, OracleError> {
    let path = dir.join(format!("{entry}.lock"));
    let io = |e: std::io::Error| OracleError::Io(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        eprintln!("waiting for another numasim to finish {entry} (lock {})", path.display());
        flock(&file, libc::LOCK_EX).map_err(io)?;
    }
    Ok(EntryLock { _file: file })
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this function borrows.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let dir = std::env::temp_dir().join(format!("oracle-lock-{}", std::process::id()));
        let first = lock_entry(&dir, "entry").unwrap();
        let again = OpenOptions::new().write(true).open(dir.join("entry.lock")).unwrap();
        assert!(flock(&again, libc::LOCK_EX | libc::LOCK_NB).is_err(), "held");
        drop(first);
        assert!(flock(&again, libc::LOCK_EX | libc::LOCK_NB).is_ok(), "released");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
