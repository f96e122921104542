//! Preparing a fresh Debian or Ubuntu machine for the build and the tests:
//! packages, then the bpffs and tracefs mounts. Safe to run again.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};

use crate::process;

/// Every package the build and the tests use.
const PACKAGES: &[&str] = &[
    "clang-19",
    "llvm-19",
    "libbpf-dev",
    "bpftool",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    "iproute2",
    "iputils-ping",
    "kubectl",
    "gcc",
    "libc6-dev",
];

/// Versioned LLVM packages and what to install where the distribution
/// has no such package.
const UNVERSIONED: &[(&str, &str)] = &[("clang-19", "clang"), ("llvm-19", "llvm")];

/// Filesystems the agent and its tests need: (mount point, type).
const MOUNTS: &[(&str, &str)] = &[("/sys/fs/bpf", "bpf"), ("/sys/kernel/tracing", "tracefs")];

pub fn run() -> anyhow::Result<()> {
    require_root("setup")?;
    install_missing_packages()?;
    mount_missing_filesystems()
}

/// Fails with a clear message unless this process runs as root.
pub fn require_root(task: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("`cargo xtask {task}` installs packages and mounts filesystems: run it as root");
    }
    Ok(())
}

fn install_missing_packages() -> anyhow::Result<()> {
    let missing = not_installed(PACKAGES.iter().map(|p| p.to_string()));
    if missing.is_empty() {
        eprintln!("setup: all {} packages are installed", PACKAGES.len());
        return Ok(());
    }

    process::run(Command::new("apt-get").arg("update"))?;
    let missing = not_installed(missing.into_iter().map(available_or_unversioned));
    if missing.is_empty() {
        return Ok(());
    }
    process::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
}

fn not_installed(packages: impl Iterator<Item = String>) -> Vec<String> {
    packages.filter(|p| !is_installed(p)).collect()
}

fn is_installed(package: &str) -> bool {
    let status = process::output(Command::new("dpkg").args(["-s", package]));
    // `dpkg -s` also succeeds for a removed package whose config files remain.
    status.is_some_and(|s| s.lines().any(|l| l == "Status: install ok installed"))
}

/// `package`, or its unversioned name when the archive has no `package`.
fn available_or_unversioned(package: String) -> String {
    let Some((_, fallback)) = UNVERSIONED.iter().find(|(p, _)| *p == package) else {
        return package;
    };
    if has_candidate(&package) {
        return package;
    }
    eprintln!("setup: the archive has no {package}; installing {fallback} instead");
    eprintln!("setup: cargo xtask ebpf accepts it only if it is LLVM 19");
    fallback.to_string()
}

fn has_candidate(package: &str) -> bool {
    let policy = process::output(Command::new("apt-cache").args(["policy", package]));
    policy.is_some_and(|p| {
        let candidate = p.lines().find_map(|l| l.trim().strip_prefix("Candidate:"));
        candidate.is_some_and(|c| c.trim() != "(none)")
    })
}

fn mount_missing_filesystems() -> anyhow::Result<()> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    for &(point, fstype) in MOUNTS {
        if is_mounted(&mountinfo, point, fstype) {
            continue;
        }
        eprintln!("setup: mounting {fstype} at {point}");
        mount(
            Some(fstype),
            Path::new(point),
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("cannot mount {fstype} at {point}"))?;
    }
    Ok(())
}

/// Whether `/proc/self/mountinfo` text lists a `fstype` mount at `point`.
fn is_mounted(mountinfo: &str, point: &str, fstype: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mount_point = line.split(' ').nth(4);
        // The filesystem type is the first field after the " - " separator.
        let kind = line
            .split_once(" - ")
            .and_then(|(_, rest)| rest.split(' ').next());
        mount_point == Some(point) && kind == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
23 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
45 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpf rw
46 23 0:13 / /sys/kernel/tracing rw,relatime shared:9 - tracefs tracefs rw
";

    #[test]
    fn a_listed_mount_of_the_right_type_counts_as_mounted() {
        assert!(is_mounted(MOUNTINFO, "/sys/fs/bpf", "bpf"));
        assert!(is_mounted(MOUNTINFO, "/sys/kernel/tracing", "tracefs"));
    }

    #[test]
    fn a_mount_point_with_another_type_or_absent_is_not_mounted() {
        assert!(!is_mounted(MOUNTINFO, "/sys/fs/bpf", "tracefs"));
        assert!(!is_mounted(MOUNTINFO, "/sys/kernel/debug", "debugfs"));
    }
}
