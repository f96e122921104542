//! A fake cgroup tree in a temporary directory, removed on drop.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::Cgroup2;

pub(crate) struct FakeTree {
    root: PathBuf,
}

impl FakeTree {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("stockade-cgroup-test-{}-{n}", std::process::id());
        let root = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cgroup2(&self) -> Cgroup2 {
        Cgroup2::at(self.root.clone())
    }

    /// Creates directory `rel` and its parents.
    pub fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.root.join(rel.trim_start_matches('/'))).unwrap();
    }

    /// Writes file `rel`, creating its parents.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// The inode of directory `rel`.
    pub fn ino(&self, rel: &str) -> u64 {
        fs::metadata(self.root.join(rel.trim_start_matches('/')))
            .unwrap()
            .ino()
    }
}

impl Drop for FakeTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
