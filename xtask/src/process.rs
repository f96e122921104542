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
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
