//! Running the tools the tasks drive, echoing each command line first.

use std::process::Command;

use anyhow::{bail, Context};

/// Runs `cmd` with inherited output and fails unless it exits with 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    if succeeds(cmd)? {
        return Ok(());
    }
    bail!("`{}` failed", describe(cmd))
}

/// Runs `cmd` with inherited output; tells whether it exited with 0.
pub fn succeeds(cmd: &mut Command) -> anyhow::Result<bool> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    Ok(status.success())
}

/// Runs `cmd` quietly and returns its standard output, or `None` when it
/// could not start or exited with an error.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as a person would type it.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    words.join(" ")
}

/// The cargo that runs this task, so nested builds use the same toolchain.
///
/// `cargo run` gives xtask the variables of its own package
/// (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, ...); passed on, they change the
/// environment that build scripts see and make the nested build redo
/// crates that the outer build just made. So they are removed.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let package_var = key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            );
        if package_var {
            cmd.env_remove(key);
        }
    }
    cmd
}
