//! Building the kernel programs into the committed objects, and checking
//! that each committed object is exactly what its source builds to.
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
/// Each C source and the object it builds to, relative to [`CRATE_DIR`]:
/// the isolation programs and the exec guard.
const OBJECTS: &[(&str, &str)] = &[
    ("src/stockade.bpf.c", "obj/stockade.bpf.o"),
    ("src/guard.bpf.c", "obj/guard.bpf.o"),
];
/// Another LLVM version emits other bytes, so the check would report a
/// stale object that is not: only this one is accepted.
const LLVM_MAJOR: &str = "19";

/// Rebuilds every committed object in place.
pub fn rebuild(root: &Path) -> anyhow::Result<()> {
    for (source, object) in OBJECTS {
        build(root, source, &root.join(CRATE_DIR).join(object))?;
        eprintln!("built {CRATE_DIR}/{object}");
    }
    Ok(())
}

/// Builds every object into a temporary folder and compares each with the
/// committed one; fails naming every stale object.
pub fn check(root: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let mut stale = Vec::new();
    for (source, object) in OBJECTS {
        let fresh = tmp.path().join(object.replace('/', "_"));
        build(root, source, &fresh)?;
        let committed = root.join(CRATE_DIR).join(object);
        let committed =
            fs::read(&committed).with_context(|| format!("cannot read {}", committed.display()))?;
        if fs::read(&fresh)? != committed {
            stale.push(format!("{CRATE_DIR}/{object}"));
        } else {
            eprintln!("{CRATE_DIR}/{object} is up to date");
        }
    }
    if !stale.is_empty() {
        bail!(
            "{} stale: run cargo xtask ebpf and commit",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Compiles `source` and strips the object into `out`.
fn build(root: &Path, source: &str, out: &Path) -> anyhow::Result<()> {
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
            .args(clang_args(&dir, source, &out)),
    )?;
    process::run(Command::new(strip).arg("-g").arg(&out))
}

/// The flags of the one reproducible build; `out` is only where it lands.
fn clang_args(dir: &Path, source: &str, out: &Path) -> Vec<String> {
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
        source.into(),
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
        let source = OBJECTS[0].0;
        let args = clang_args(Path::new("/x/agent-ebpf"), source, Path::new("/tmp/o.o"));

        assert!(args.contains(&"-fdebug-prefix-map=/x/agent-ebpf=.".to_string()));
        assert!(args.contains(&"-fdebug-compilation-dir=.".to_string()));
        assert!(args.windows(2).any(|w| w == ["-c", source]));
        assert!(args.windows(2).any(|w| w == ["-o", "/tmp/o.o"]));
    }

    #[test]
    fn every_object_has_its_own_source_and_name() {
        for (i, (source, object)) in OBJECTS.iter().enumerate() {
            assert!(source.starts_with("src/") && source.ends_with(".bpf.c"));
            let stem = source.trim_start_matches("src/").trim_end_matches(".c");
            assert_eq!(*object, format!("obj/{stem}.o"));
            assert!(OBJECTS[i + 1..]
                .iter()
                .all(|(s, o)| s != source && o != object));
        }
    }
}
