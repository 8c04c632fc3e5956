//! The guest program, built static. A `.cargo/config.toml` rustflag would apply to every crate
//! of the workspace (and crt-static breaks proc-macro builds), so the host builds the guest
//! crate alone, on demand, with its own RUSTFLAGS and target dir: `cargo build --locked
//! --release -p guest --target x86_64-unknown-linux-gnu` into `target/guest/`. Cargo makes a
//! rebuild of an unchanged guest a no-op. `NUMASIM_GUEST` names a prebuilt binary instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{OracleError, stop};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The static guest binary, built if needed.
pub fn guest_binary() -> Result<PathBuf, OracleError> {
    if let Some(p) = std::env::var_os("NUMASIM_GUEST") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(OracleError::Input(format!("NUMASIM_GUEST={}: no such file", p.display())))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("oracle/ is inside the workspace");
    if !workspace.join("guest/Cargo.toml").is_file() {
        return Err(OracleError::Input(format!(
            "the guest's sources ({}) are gone: set NUMASIM_GUEST to a static numasim-guest binary",
            workspace.join("guest").display()
        )));
    }
    let target_dir = workspace.join("target/guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "--release", "-p", "guest", "--target", TARGET])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static -C strip=symbols")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let out = stop::output(&mut cmd, "the guest's build (cargo)")
        .map_err(|e| OracleError::Input(format!("building the guest needs cargo: {e}")))?;
    if !out.status.success() {
        return Err(OracleError::Io(format!(
            "building the static guest failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(target_dir.join(TARGET).join("release/numasim-guest"))
}
