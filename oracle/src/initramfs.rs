//! The initramfs: a cpio "newc" archive (the format the kernel unpacks, see
//! Documentation/driver-api/early-userspace/buffer-format.rst) with the guest as /init.

/// Builds a newc archive of `dirs` (created first, in order) and `files` (path, mode, bytes).
pub fn newc(dirs: &[&str], files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1;
    for d in dirs {
        entry(&mut out, ino, d, 0o040_755, &[]);
        ino += 1;
    }
    for (name, mode, data) in files {
        entry(&mut out, ino, name, 0o100_000 | mode, data);
        ino += 1;
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
    let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cpio(1) itself lists what we wrote, when it is installed.
    #[test]
    fn cpio_reads_the_archive_back() {
        let archive = newc(&["dev", "proc"], &[("init", 0o755, b"#!/bin/sh\n"), ("plan.json", 0o644, b"{}")]);
        assert_eq!(&archive[..6], b"070701");
        assert_eq!(archive.len() % 4, 0);
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("skipping the cpio(1) cross-check: cpio is not installed");
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "dev\nproc\ninit\nplan.json\n");
    }
}
