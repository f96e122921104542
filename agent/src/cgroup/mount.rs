//! Finding the cgroup2 mount in `/proc/self/mountinfo`.

use std::path::PathBuf;

use procfs::process::{MountInfo, Process};

use super::{Cgroup2, CgroupError};

impl Cgroup2 {
    /// The cgroup2 hierarchy as this process's mount namespace shows it:
    /// `/sys/fs/cgroup` on most nodes, `/sys/fs/cgroup/unified` on hybrid
    /// hosts. Never assumed.
    pub fn discover() -> Result<Self, CgroupError> {
        let mounts = Process::myself()
            .and_then(|me| me.mountinfo())
            .map_err(|source| CgroupError::Mountinfo { source })?;
        pick_mount(&mounts.0).map(Self::at)
    }
}

/// The first cgroup2 mount of the hierarchy's root. A mount of a
/// subdirectory (bind-mounted into a container) is refused: the paths in
/// `/proc/PID/cgroup` would not be relative to it.
fn pick_mount(mounts: &[MountInfo]) -> Result<PathBuf, CgroupError> {
    let mut cgroup2 = mounts.iter().filter(|m| m.fs_type == "cgroup2").peekable();
    let first = cgroup2
        .peek()
        .map(|m| (m.mount_point.clone(), m.root.clone()));
    match cgroup2.find(|m| m.root == "/") {
        Some(mount) => Ok(unescape(&mount.mount_point.to_string_lossy())),
        None => match first {
            Some((mount_point, root)) => Err(CgroupError::MountNotAtRoot { mount_point, root }),
            None => Err(CgroupError::NoCgroup2Mount),
        },
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and the like).
fn unescape(text: &str) -> PathBuf {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.as_bytes();
    while let Some((&first, rest)) = bytes.split_first() {
        let octal = rest.get(..3).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (first, octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                bytes = &rest[3..];
            }
            _ => {
                out.push(first);
                bytes = rest;
            }
        }
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(lines: &[&str]) -> Vec<MountInfo> {
        lines
            .iter()
            .map(|line| MountInfo::from_line(line).unwrap())
            .collect()
    }

    const TMPFS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755";
    const V1: &str = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";

    #[test]
    fn finds_the_hybrid_mount() {
        let unified = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let found = pick_mount(&mounts(&[TMPFS, V1, unified])).unwrap();
        assert_eq!(found, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn prefers_a_mount_of_the_root_and_unescapes_it() {
        let sub = "50 23 0:38 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let root = "51 23 0:38 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw";
        let found = pick_mount(&mounts(&[sub, root])).unwrap();
        assert_eq!(found, PathBuf::from("/run/my cgroup"));
    }

    #[test]
    fn refuses_a_mount_of_a_subdirectory_only() {
        let sub = "50 23 0:38 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let err = pick_mount(&mounts(&[sub])).unwrap_err();
        assert!(matches!(&err, CgroupError::MountNotAtRoot { root, .. } if root == "/kubepods"));
    }

    #[test]
    fn no_cgroup2_mount_is_an_error() {
        let err = pick_mount(&mounts(&[TMPFS, V1])).unwrap_err();
        assert!(matches!(err, CgroupError::NoCgroup2Mount), "{err}");
    }

    #[test]
    fn unescape_leaves_other_backslashes() {
        assert_eq!(unescape("/a\\134b\\9x\\"), PathBuf::from("/a\\b\\9x\\"));
    }

    #[test]
    fn discover_finds_a_cgroup2_directory_here() {
        // Every supported host mounts cgroup2 (KERNEL-NOTES.md).
        let cg = Cgroup2::discover().unwrap();
        assert!(
            cg.root().join("cgroup.procs").is_file(),
            "{}",
            cg.root().display()
        );
    }
}
