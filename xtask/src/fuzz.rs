//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` for a while
//! each, adding what they find to the kept corpus in `fuzz/corpus/`.
//!
//! Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install
//! nightly`, `cargo install cargo-fuzz`); the test command does not run
//! this, it replays the kept corpus on stable (`agent/tests/fuzz.rs`).

use std::{path::Path, process::Command};

use anyhow::{bail, Context};

use crate::process;

/// The targets, as `fuzz/Cargo.toml` names them.
const TARGETS: [&str; 4] = [
    "cgroup_path",
    "proc_cgroup",
    "isolate_request",
    "containment_request",
];

pub fn run(root: &Path, seconds: u32, only: Option<&str>) -> anyhow::Result<()> {
    let fuzz = root.join("fuzz");
    let has_fuzz = process::output(Command::new("cargo").args(["+nightly", "fuzz", "--version"]));
    if has_fuzz.is_none() {
        bail!(
            "cargo-fuzz on a nightly toolchain is needed: `rustup toolchain install nightly` \
             and `cargo install cargo-fuzz`"
        );
    }
    let targets: Vec<&str> = match only {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target {name}; the targets are {TARGETS:?}"),
        None => TARGETS.to_vec(),
    };
    for target in targets {
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        process::run(
            Command::new("cargo")
                .current_dir(&fuzz)
                .args(["+nightly", "fuzz", "run", "-O", target])
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-max_len=4096"),
        )?;
    }
    Ok(())
}
