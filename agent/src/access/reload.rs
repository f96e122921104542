//! Values loaded from files and reloaded when a file changes, so that
//! certificates and the access configuration rotate without a restart.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

/// One version of a file. A rewrite in place, a rename over it and a
/// Kubernetes Secret volume flipping its `..data` symlink each change it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    // `metadata` follows symlinks: the target's version is what counts.
    let meta = fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// A value built from `paths`, kept until one of them changes and a new
/// value loads without error.
pub struct Watched<T> {
    paths: Vec<PathBuf>,
    current: RwLock<Arc<T>>,
    /// The versions of the files last tried, loaded or not: a broken file
    /// is tried again only once it changes again.
    tried: Mutex<Vec<Option<Stamp>>>,
}

impl<T> Watched<T> {
    /// Loads the first value; the files are stamped before they are read,
    /// so that a change made while loading is seen at the next check.
    pub fn load<E>(paths: Vec<PathBuf>, load: impl FnOnce() -> Result<T, E>) -> Result<Self, E> {
        let stamps = paths.iter().map(stamp).collect();
        let value = load()?;
        Ok(Self {
            paths,
            current: RwLock::new(Arc::new(value)),
            tried: Mutex::new(stamps),
        })
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        // Every write is one assignment of a whole Arc: a poisoned lock
        // still holds a complete value.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads when a file changed since the last try. `None` when nothing
    /// changed; on error the value in force stays.
    pub fn reload_if_changed<E>(
        &self,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Option<Result<(), E>> {
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(stamp).collect();
        {
            let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
            if *tried == stamps {
                return None;
            }
            *tried = stamps;
        }
        Some(load().map(|value| {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
        }))
    }

    /// The files this value comes from.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &PathBuf) -> Result<String, std::io::Error> {
        fs::read_to_string(path)
    }

    #[test]
    fn a_changed_file_is_reloaded_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        fs::write(&path, "one").unwrap();
        let watched = Watched::load(vec![path.clone()], || read(&path)).unwrap();

        assert!(watched.reload_if_changed(|| read(&path)).is_none());
        let next = dir.path().join("next");
        fs::write(&next, "two").unwrap();
        fs::rename(&next, &path).unwrap();

        assert!(matches!(
            watched.reload_if_changed(|| read(&path)),
            Some(Ok(()))
        ));
        assert_eq!(*watched.current(), "two");
    }

    #[test]
    fn a_broken_file_keeps_the_value_in_force_until_it_changes_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        fs::write(&path, "good").unwrap();
        let parse = |p: &PathBuf| match read(p) {
            Ok(text) if text.starts_with("good") => Ok(text),
            _ => Err("broken"),
        };
        let watched = Watched::load(vec![path.clone()], || parse(&path)).unwrap();

        fs::write(&path, "bad!").unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, "bad!!").unwrap();
        assert_eq!(
            watched.reload_if_changed(|| parse(&path)),
            Some(Err("broken"))
        );
        assert_eq!(*watched.current(), "good");
        assert!(watched.reload_if_changed(|| parse(&path)).is_none());

        fs::write(&path, "good again").unwrap();
        assert_eq!(watched.reload_if_changed(|| parse(&path)), Some(Ok(())));
        assert_eq!(*watched.current(), "good again");
    }
}
