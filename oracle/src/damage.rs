//! Damaged kernel inputs, found before anything boots: an image cut short or zeroed (its
//! boot header, and the size the header promises), a kernel config or brd.ko gone from a
//! cache entry, a brd.ko cut short (its ELF section table past the end).
//!
//! Simplification: the sizes are the ones the headers promise; a file damaged inside, at its
//! full length, passes (QEMU or the guest's finit_module() then fails the boot).

use std::path::{Path, PathBuf};

use crate::OracleError;
use crate::kernel::extract_brd;

/// What is wrong with a bzImage, if anything: no boot header, shorter than the setup sectors
/// and protected-mode code its header counts (`setup_sects`, `syssize`; Documentation/arch/
/// x86/boot.rst), or a header naming another release than `release`.
pub fn image_damage(bytes: &[u8], release: Option<&str>) -> Option<String> {
    if bytes.get(0x202..0x206) != Some(b"HdrS") {
        return Some(format!("no Linux boot header (not a kernel image, or zeroed): {} bytes", bytes.len()));
    }
    // setup_sects 0 means 4 (boot.rst).
    let setup = match bytes[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u32::from_le_bytes(bytes[0x1f4..0x1f8].try_into().expect("4 bytes"));
    let whole = (setup + 1) * 512 + u64::from(syssize) * 16;
    if (bytes.len() as u64) < whole {
        return Some(format!("cut short: {} bytes where its boot header counts {whole}", bytes.len()));
    }
    match (crate::kernel::bzimage_release(bytes), release) {
        (Some(found), Some(want)) if found != want => {
            Some(format!("its boot header names release {found}, not {want}"))
        }
        _ => None,
    }
}

/// What is wrong with an x86-64 ELF object (a kernel module), if anything.
pub fn module_damage(bytes: &[u8]) -> Option<String> {
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return Some(format!("not a 64-bit ELF module (zeroed or replaced): {} bytes", bytes.len()));
    }
    let u16_at = |at: usize| bytes.get(at..at + 2).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    let shoff = bytes.get(0x28..0x30).map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let end = shoff.saturating_add(u16_at(0x3a) * u16_at(0x3c));
    ((bytes.len() as u64) < end)
        .then(|| format!("cut short: {} bytes where its section table ends at {end}", bytes.len()))
}

/// A file of a cache entry and what is wrong with it.
pub struct Damage {
    pub file: PathBuf,
    pub what: String,
}

impl Damage {
    pub fn new(file: &Path, what: impl Into<String>) -> Damage {
        Damage { file: file.to_path_buf(), what: what.into() }
    }
}

/// Reads `file` and asks `check` what is wrong with it (a missing file is damage too).
pub fn file_damage(file: &Path, check: impl Fn(&[u8]) -> Option<String>) -> Option<Damage> {
    match std::fs::read(file) {
        Ok(bytes) => check(&bytes).map(|what| Damage::new(file, what)),
        Err(e) => Some(Damage::new(file, e.to_string())),
    }
}

/// The brd.ko of a Debian entry, or what is damaged in it: its image, its config, or the brd
/// module the config says is one.
pub(crate) fn debian_entry(root: &Path, release: &str) -> Result<Result<Option<PathBuf>, Damage>, OracleError> {
    let boot = root.join("boot");
    if let Some(d) = file_damage(&boot.join(format!("vmlinuz-{release}")), |b| image_damage(b, Some(release))) {
        return Ok(Err(d));
    }
    let config = boot.join(format!("config-{release}"));
    let Ok(text) = std::fs::read_to_string(&config) else { return Ok(Err(Damage::new(&config, "missing"))) };
    let brd = extract_brd(root, release)?;
    match &brd {
        None if text.lines().any(|l| l == "CONFIG_BLK_DEV_RAM=m") => {
            let dir = root.join("lib/modules").join(release).join("kernel/drivers/block");
            return Ok(Err(Damage::new(&dir.join("brd.ko"), "missing, though the config builds brd as a module")));
        }
        Some(ko) => {
            if let Some(d) = file_damage(ko, module_damage) {
                // The decompressed copy is made again from the package's module.
                let _ = std::fs::remove_file(root.join("brd.ko"));
                return Ok(Err(d));
            }
        }
        None => {}
    }
    Ok(Ok(brd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize, syssize: u32) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0x1f1] = 1;
        b[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300..0x305].copy_from_slice(b"6.1 \0");
        b
    }

    #[test]
    fn an_image_cut_short_zeroed_or_of_another_release_is_damaged() {
        assert_eq!(image_damage(&image(1024 + 160, 10), Some("6.1")), None);
        assert_eq!(image_damage(&image(1024 + 200, 10), None), None, "a signature may follow");
        let short = image_damage(&image(1024 + 100, 10), None).unwrap();
        assert!(short.contains("cut short: 1124 bytes") && short.contains("1184"), "{short}");
        assert!(image_damage(&vec![0; 4096], None).unwrap().contains("no Linux boot header"));
        assert!(image_damage(&image(1184, 10), Some("6.12")).unwrap().contains("names release 6.1, not 6.12"));
    }

    #[test]
    fn a_module_cut_short_or_zeroed_is_damaged() {
        let mut m = b"\x7fELF\x02\x01\x01".to_vec();
        m.resize(0x400, 0);
        m[0x28..0x30].copy_from_slice(&0x300u64.to_le_bytes());
        m[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        m[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        assert_eq!(module_damage(&m), None);
        assert!(module_damage(&m[..0x3ff]).unwrap().contains("section table ends at 1024"));
        assert!(module_damage(&[0; 0x400]).unwrap().contains("not a 64-bit ELF"));
    }
}
