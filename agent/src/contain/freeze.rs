//! Freezing and thawing a cgroup through `cgroup.freeze`.
//!
//! Writing the file only asks; the cgroup is frozen when `cgroup.events`
//! says `frozen 1`, which can take long or never come (a process stuck in
//! uninterruptible sleep, an ancestor frozen by someone else). So each
//! change waits for the kernel's word with a deadline, and on timeout
//! writes the old value back: a pod is never left half frozen, nor
//! reported frozen when it is not.

use std::{
    fs,
    path::Path,
    time::{Instant, SystemTime},
};

use super::{
    events::{CgroupEvents, EventsWatch},
    ContainError,
};

/// The file that asks the kernel to freeze (1) or thaw (0) a cgroup.
pub const FREEZE_FILE: &str = "cgroup.freeze";

/// A state the kernel confirmed through `cgroup.events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub events: CgroupEvents,
    /// When `cgroup.events` was read saying so.
    pub verified_at: SystemTime,
}

/// Freezes the cgroup at `dir` and waits for `frozen 1` until `deadline`.
pub fn freeze(dir: &Path, deadline: Instant) -> Result<Settled, ContainError> {
    set(dir, true, deadline)
}

/// Thaws the cgroup at `dir` and waits for `frozen 0` until `deadline`.
pub fn thaw(dir: &Path, deadline: Instant) -> Result<Settled, ContainError> {
    set(dir, false, deadline)
}

/// Writes `cgroup.freeze` and waits until `cgroup.events` agrees; on
/// timeout restores what the file held before and reports the failure.
fn set(dir: &Path, frozen: bool, deadline: Instant) -> Result<Settled, ContainError> {
    let old = read_freeze(dir)?;
    let watch = EventsWatch::new(dir)?;
    write_freeze(dir, frozen)?;

    let started = Instant::now();
    let (events, held) = watch.wait(|e| e.present && e.frozen == frozen, deadline)?;
    if held {
        let verified_at = SystemTime::now();
        return Ok(Settled {
            events,
            verified_at,
        });
    }

    let restored = write_freeze(dir, old).map_err(|e| e.to_string()).err();
    Err(ContainError::NotSettled {
        path: dir.to_owned(),
        wanted: if frozen { "frozen 1" } else { "frozen 0" },
        waited: started.elapsed(),
        last: events,
        undo_failed: restored,
    })
}

/// What `cgroup.freeze` holds now.
pub fn read_freeze(dir: &Path) -> Result<bool, ContainError> {
    let path = dir.join(FREEZE_FILE);
    let text = fs::read_to_string(&path).map_err(|source| ContainError::Io {
        op: "read",
        path: path.clone(),
        source,
    })?;
    match text.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(ContainError::Malformed { path }),
    }
}

/// Asks the kernel to freeze or thaw `dir`.
pub fn write_freeze(dir: &Path, frozen: bool) -> Result<(), ContainError> {
    let path = dir.join(FREEZE_FILE);
    let value = if frozen { "1" } else { "0" };
    fs::write(&path, value).map_err(|source| ContainError::Io {
        op: "write",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::{thread, time::Duration};

    use super::*;
    use crate::contain::events::EVENTS_FILE;

    /// A directory laid out like a cgroup, with plain files.
    fn fake_cgroup(freeze: &str, events: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FREEZE_FILE), freeze).unwrap();
        fs::write(dir.path().join(EVENTS_FILE), events).unwrap();
        dir
    }

    /// Plays the kernel: once `cgroup.freeze` says 1, reports `frozen 1`.
    fn kernel_that_freezes(dir: &Path) -> thread::JoinHandle<()> {
        let dir = dir.to_owned();
        thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if read_freeze(&dir).unwrap_or(false) {
                    thread::sleep(Duration::from_millis(30));
                    fs::write(dir.join(EVENTS_FILE), "populated 1\nfrozen 1\n").unwrap();
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    }

    #[test]
    fn freeze_reports_frozen_once_the_kernel_says_so() {
        let cg = fake_cgroup("0\n", "populated 1\nfrozen 0\n");
        let kernel = kernel_that_freezes(cg.path());

        let deadline = Instant::now() + Duration::from_secs(10);
        let settled = freeze(cg.path(), deadline).unwrap();
        kernel.join().unwrap();

        assert!(settled.events.frozen && settled.events.populated);
        assert!(read_freeze(cg.path()).unwrap());
    }

    #[test]
    fn a_freeze_that_does_not_settle_is_undone_and_reported() {
        let cg = fake_cgroup("0\n", "populated 1\nfrozen 0\n");

        let deadline = Instant::now() + Duration::from_millis(150);
        let err = freeze(cg.path(), deadline).unwrap_err();

        match &err {
            ContainError::NotSettled {
                wanted,
                last,
                undo_failed,
                ..
            } => {
                assert_eq!(*wanted, "frozen 1");
                assert!(!last.frozen);
                assert_eq!(undo_failed, &None);
            }
            other => panic!("expected NotSettled, got {other:?}"),
        }
        assert!(!read_freeze(cg.path()).unwrap(), "old value written back");
        assert!(err.to_string().contains("frozen 1"), "{err}");
    }

    #[test]
    fn a_thaw_that_does_not_settle_leaves_the_freeze_request_as_it_was() {
        let cg = fake_cgroup("1\n", "populated 1\nfrozen 1\n");

        let deadline = Instant::now() + Duration::from_millis(100);
        let err = thaw(cg.path(), deadline).unwrap_err();

        assert!(matches!(
            err,
            ContainError::NotSettled {
                wanted: "frozen 0",
                ..
            }
        ));
        assert!(read_freeze(cg.path()).unwrap());
    }

    #[test]
    fn a_missing_cgroup_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = freeze(&dir.path().join("gone"), Instant::now()).unwrap_err();
        assert!(
            matches!(err, ContainError::Io { op: "read", .. }),
            "{err:?}"
        );
    }
}
