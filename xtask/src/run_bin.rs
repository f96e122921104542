//! `demo` and `bench`: build the workspace binaries, then run one of the
//! programs in the integration crate that drive them.

use std::{path::Path, process::ExitCode};

use crate::{process, setup};

/// Builds everything with `profile` and runs `target/<profile>/<bin>`.
pub fn run(
    root: &Path,
    task: &str,
    bin: &str,
    release: bool,
    args: &[String],
) -> anyhow::Result<ExitCode> {
    setup::require_root(task)?;
    setup::run()?;

    let mut build = process::cargo();
    build
        .current_dir(root)
        .args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    process::run(&mut build)?;

    let profile = if release { "release" } else { "debug" };
    let exe = root.join("target").join(profile).join(bin);
    let ok = process::succeeds(std::process::Command::new(exe).args(args).current_dir(root))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
