//! Reading the cgroup2 filesystem: ids, children, `cgroup.events`,
//! `cgroup.procs`.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{classify::components, Cgroup2, CgroupError};

impl Cgroup2 {
    /// The cgroup id of `rel`: on cgroup2 it is the directory's inode
    /// number, the same id the kernel's BPF helpers report.
    pub fn cgroup_id(&self, rel: &str) -> Result<u64, CgroupError> {
        let path = self.checked(rel)?;
        let meta = fs::metadata(&path).map_err(|source| io_error(&path, source))?;
        if !meta.is_dir() {
            let reason = "not a directory".to_owned();
            return Err(CgroupError::MalformedFile { path, reason });
        }
        Ok(meta.ino())
    }

    /// Whether any process lives in `rel` or below, from `cgroup.events`.
    pub fn populated(&self, rel: &str) -> Result<bool, CgroupError> {
        let path = self.checked(rel)?.join("cgroup.events");
        let text = read_text(&path)?;
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix("populated "));
        match value.map(str::trim) {
            Some("0") => Ok(false),
            Some("1") => Ok(true),
            _ => Err(CgroupError::MalformedFile {
                path,
                reason: "no populated 0|1 line".into(),
            }),
        }
    }

    /// Every process in `rel` and all its descendants (C04: processes may
    /// live below a container's own cgroup), sorted, without duplicates.
    /// Cgroups removed during the walk are skipped; `rel` itself must exist.
    pub fn pids_recursive(&self, rel: &str) -> Result<Vec<u32>, CgroupError> {
        let top = self.checked(rel)?;
        fs::metadata(&top).map_err(|source| io_error(&top, source))?;
        let mut pids = read_procs(&top)?.unwrap_or_default();
        let mut pending = subdirs(&top)?;

        while let Some(dir) = pending.pop() {
            pids.extend(read_procs(&dir)?.unwrap_or_default());
            pending.extend(subdirs(&dir)?);
        }

        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// The names of the child cgroups of `rel`, sorted; names that are not
    /// UTF-8 are skipped, as kubelet and the runtimes never make them.
    pub(crate) fn child_dirs(&self, rel: &str) -> Result<Vec<String>, CgroupError> {
        let path = self.checked(rel)?;
        let mut names: Vec<String> = subdirs(&path)?
            .into_iter()
            .filter_map(|dir| dir.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// [`Self::abs`], refusing paths that could climb out of the mount.
    fn checked(&self, rel: &str) -> Result<PathBuf, CgroupError> {
        components(rel)?;
        Ok(self.abs(rel))
    }
}

/// The PIDs in `dir/cgroup.procs`; `None` when the cgroup is gone or is
/// threaded (its processes are listed by its threaded domain instead).
fn read_procs(dir: &Path) -> Result<Option<Vec<u32>>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if gone(&err) || err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(None),
        Err(source) => return Err(io_error(&path, source)),
    };
    let pids = text.lines().map(|line| {
        line.trim().parse().map_err(|_| CgroupError::MalformedFile {
            path: path.clone(),
            reason: format!("bad pid {}", super::shown(line)),
        })
    });
    pids.collect::<Result<Vec<u32>, _>>().map(Some)
}

/// The child directories of `dir`; empty when `dir` vanished meanwhile.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if gone(&err) => return Ok(Vec::new()),
        Err(source) => return Err(io_error(dir, source)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        let is_dir = entry
            .file_type()
            .map_err(|source| io_error(&entry.path(), source))?;
        if is_dir.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Reads a whole small text file (a cgroup or `/proc` file).
pub(crate) fn read_text(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A cgroup removed under our feet: ENOENT, or ENODEV for a file of a
/// cgroup that is being destroyed.
pub(crate) fn gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENODEV)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::testutil::FakeTree;

    #[test]
    fn cgroup_id_is_the_directory_inode() {
        let tree = FakeTree::new();
        tree.mkdir("/a/b");
        let ino = fs::metadata(tree.root().join("a/b")).unwrap().ino();
        assert_eq!(tree.cgroup2().cgroup_id("/a/b").unwrap(), ino);
        assert_eq!(tree.cgroup2().cgroup_id("/a/b/").unwrap(), ino);
    }

    #[test]
    fn cgroup_id_errors_name_the_path() {
        let tree = FakeTree::new();
        tree.write("/f", "");
        let err = tree.cgroup2().cgroup_id("/missing").unwrap_err();
        assert!(
            matches!(&err, CgroupError::Io { path, .. } if path.ends_with("missing")),
            "{err}"
        );
        assert!(err.to_string().contains("missing"), "{err}");
        let err = tree.cgroup2().cgroup_id("/f").unwrap_err();
        assert!(matches!(err, CgroupError::MalformedFile { .. }), "{err}");
        let err = tree.cgroup2().cgroup_id("/a/../..").unwrap_err();
        assert!(matches!(err, CgroupError::MalformedPath { .. }), "{err}");
    }

    #[test]
    fn populated_reads_cgroup_events() {
        let tree = FakeTree::new();
        tree.write("/a/cgroup.events", "populated 1\nfrozen 0\n");
        tree.write("/b/cgroup.events", "frozen 0\npopulated 0\n");
        tree.write("/c/cgroup.events", "frozen 0\n");
        let cg = tree.cgroup2();
        assert!(cg.populated("/a").unwrap());
        assert!(!cg.populated("/b").unwrap());
        assert!(matches!(
            cg.populated("/c").unwrap_err(),
            CgroupError::MalformedFile { .. }
        ));
        assert!(matches!(
            cg.populated("/d").unwrap_err(),
            CgroupError::Io { .. }
        ));
    }

    #[test]
    fn c04_pids_recursive_covers_every_descendant() {
        let tree = FakeTree::new();
        tree.write("/pod/c1/cgroup.procs", "");
        tree.write("/pod/c1/container/cgroup.procs", "42\n");
        tree.write("/pod/c2/cgroup.procs", "7\n");
        tree.write("/pod/c2/inner/a/cgroup.procs", "100\n101\n");
        tree.write("/pod/c2/inner/b/cgroup.procs", "200\n7\n");
        tree.mkdir("/pod/c2/inner/empty");
        let cg = tree.cgroup2();
        assert_eq!(
            cg.pids_recursive("/pod").unwrap(),
            vec![7, 42, 100, 101, 200]
        );
        assert_eq!(cg.pids_recursive("/pod/c1").unwrap(), vec![42]);
        assert_eq!(
            cg.pids_recursive("/pod/c2/inner").unwrap(),
            vec![7, 100, 101, 200]
        );
    }

    #[test]
    fn pids_recursive_refuses_garbage_and_missing_tops() {
        let tree = FakeTree::new();
        tree.write("/pod/x/cgroup.procs", "12\nnot-a-pid\n");
        let cg = tree.cgroup2();
        assert!(matches!(
            cg.pids_recursive("/pod").unwrap_err(),
            CgroupError::MalformedFile { .. }
        ));
        assert!(matches!(
            cg.pids_recursive("/missing").unwrap_err(),
            CgroupError::Io { .. }
        ));
    }

    #[test]
    fn child_dirs_lists_directories_only() {
        let tree = FakeTree::new();
        tree.mkdir("/p/b");
        tree.mkdir("/p/a");
        tree.write("/p/cgroup.procs", "");
        assert_eq!(tree.cgroup2().child_dirs("/p").unwrap(), vec!["a", "b"]);
    }
}
