//! Building the kernel programs into the committed object, and checking
//! that the committed object is exactly what its source builds to.
//!
//! The build must give the same bytes in any folder: clang runs inside
//! `agent-ebpf` with relative paths, the debug paths are mapped to `.`, and
//! `llvm-strip -g` drops the DWARF (aya needs only `.BTF` and `.BTF.ext`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::process;

/// The crate holding the C source, relative to the workspace root.
const CRATE_DIR: &str = "agent-ebpf";
/// Relative to [`CRATE_DIR`].
const SOURCE: &str = "src/stockade.bpf.c";
/// Relative to [`CRATE_DIR`].
const OBJECT: &str = "obj/stockade.bpf.o";
/// Another LLVM version emits other bytes, so the check would report a
/// stale object that is not: only this one is accepted.
const LLVM_MAJOR: &str = "19";

/// Rebuilds the committed object in place.
pub fn rebuild(root: &Path) -> anyhow::Result<()> {
    let out = root.join(CRATE_DIR).join(OBJECT);
    build(root, &out)?;
    eprintln!("built {CRATE_DIR}/{OBJECT}");
    Ok(())
}

/// Builds into a temporary folder and compares with the committed object.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let fresh = tmp.path().join("stockade.bpf.o");
    build(root, &fresh)?;

    let committed = root.join(CRATE_DIR).join(OBJECT);
    let committed =
        fs::read(&committed).with_context(|| format!("cannot read {}", committed.display()))?;
    if fs::read(&fresh)? != committed {
        bail!("{CRATE_DIR}/{OBJECT} is stale: run cargo xtask ebpf and commit it");
    }
    eprintln!("{CRATE_DIR}/{OBJECT} is up to date");
    Ok(())
}

/// Compiles and strips the object into `out`.
fn build(root: &Path, out: &Path) -> anyhow::Result<()> {
    let dir = root.join(CRATE_DIR);
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", dir.display()))?;
    let out = absolute(out)?;
    let clang = find_llvm_tool("clang")?;
    let strip = find_llvm_tool("llvm-strip")?;

    process::run(
        Command::new(clang)
            .current_dir(&dir)
            .args(clang_args(&dir, &out)),
    )?;
    process::run(Command::new(strip).arg("-g").arg(&out))
}

/// The flags of the one reproducible build; `out` is only where it lands.
fn clang_args(dir: &Path, out: &Path) -> Vec<String> {
    let flags = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"];
    let includes = ["-I", "include", "-I/usr/include/x86_64-linux-gnu"];
    let mut args: Vec<String> = flags
        .iter()
        .chain(&includes)
        .map(|s| s.to_string())
        .collect();
    args.push(format!("-fdebug-prefix-map={}=.", dir.display()));
    args.push("-fdebug-compilation-dir=.".into());
    args.extend([
        "-c".into(),
        SOURCE.into(),
        "-o".into(),
        out.display().to_string(),
    ]);
    args
}

/// `name-19`, or the unversioned `name` when it is LLVM 19 too.
fn find_llvm_tool(name: &str) -> anyhow::Result<String> {
    let candidates = [format!("{name}-{LLVM_MAJOR}"), name.to_string()];
    for candidate in &candidates {
        let version = process::output(Command::new(candidate).arg("--version"));
        if version.is_some_and(|v| v.contains(&format!("version {LLVM_MAJOR}."))) {
            return Ok(candidate.clone());
        }
    }
    bail!(
        "no LLVM {LLVM_MAJOR} {name} found (tried {}): run cargo xtask setup",
        candidates.join(", ")
    )
}

/// Clang runs in another folder, so a relative `out` must be resolved first.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clang_args_name_the_source_relative_and_map_the_folder_to_dot() {
        let args = clang_args(Path::new("/x/agent-ebpf"), Path::new("/tmp/o.o"));

        assert!(args.contains(&"-fdebug-prefix-map=/x/agent-ebpf=.".to_string()));
        assert!(args.contains(&"-fdebug-compilation-dir=.".to_string()));
        assert!(args.windows(2).any(|w| w == ["-c", SOURCE]));
        assert!(args.windows(2).any(|w| w == ["-o", "/tmp/o.o"]));
    }
}
