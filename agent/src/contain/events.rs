//! Reading a cgroup's `cgroup.events`, and waiting until it says what an
//! order needs.
//!
//! The kernel notifies every change of `cgroup.events` as a modification
//! of the file (inotify `IN_MODIFY`, at most one every 10 ms per cgroup),
//! so a wait sleeps in `poll` until the file changes or the deadline
//! passes, and never re-reads the file on a timer.

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify},
};

use super::ContainError;

/// The file that reports whether a cgroup is populated and frozen.
pub const EVENTS_FILE: &str = "cgroup.events";

/// What `cgroup.events` says, or that the cgroup is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEvents {
    /// Some process lives in the cgroup or below.
    pub populated: bool,
    /// Every process of the cgroup and below is frozen.
    pub frozen: bool,
    /// False when the cgroup was removed; it then holds no process.
    pub present: bool,
}

impl CgroupEvents {
    /// A cgroup that no longer exists: removing a cgroup needs it empty.
    pub const GONE: Self = Self {
        populated: false,
        frozen: false,
        present: false,
    };

    /// Reads the text of `cgroup.events`. `populated` must be there;
    /// `frozen` is absent on kernels without the cgroup2 freezer (< 5.2).
    pub fn parse(text: &str) -> Option<Self> {
        let mut populated = None;
        let mut frozen = false;
        for line in text.lines() {
            match line.trim().split_once(' ') {
                Some(("populated", value)) => populated = Some(flag(value)?),
                Some(("frozen", value)) => frozen = flag(value)?,
                _ => {}
            }
        }
        Some(Self {
            populated: populated?,
            frozen,
            present: true,
        })
    }
}

fn flag(value: &str) -> Option<bool> {
    match value.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Reads `dir/cgroup.events`; a removed cgroup reads as [`CgroupEvents::GONE`].
pub fn read(dir: &Path) -> Result<CgroupEvents, ContainError> {
    let path = dir.join(EVENTS_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => CgroupEvents::parse(&text).ok_or(ContainError::Malformed { path }),
        Err(err) if gone(&err) => Ok(CgroupEvents::GONE),
        Err(source) => Err(ContainError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// A cgroup removed under our feet: ENOENT, or ENODEV for a file of a
/// cgroup being destroyed.
pub(crate) fn gone(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENODEV)
}

/// A watch on one cgroup's `cgroup.events`, set up before the first read
/// so that no change between the read and the wait is missed.
pub struct EventsWatch {
    dir: PathBuf,
    inotify: Option<Inotify>,
}

impl EventsWatch {
    /// Watches `dir/cgroup.events`. A cgroup already gone gives a watch
    /// that always reads [`CgroupEvents::GONE`].
    pub fn new(dir: &Path) -> Result<Self, ContainError> {
        let path = dir.join(EVENTS_FILE);
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|errno| inotify_error(&path, errno))?;
        let flags = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF;
        let inotify = match inotify.add_watch(&path, flags) {
            Ok(_) => Some(inotify),
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENODEV) => None,
            Err(errno) => return Err(inotify_error(&path, errno)),
        };
        Ok(Self {
            dir: dir.to_owned(),
            inotify,
        })
    }

    /// Waits until `want` holds for what `cgroup.events` says, or until
    /// `deadline`. Returns the last reading either way, and whether `want`
    /// held.
    pub fn wait(
        &self,
        want: impl Fn(&CgroupEvents) -> bool,
        deadline: Instant,
    ) -> Result<(CgroupEvents, bool), ContainError> {
        loop {
            let now = read(&self.dir)?;
            if want(&now) {
                return Ok((now, true));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !now.present {
                return Ok((now, false));
            }
            self.sleep_until_change(left)?;
        }
    }

    /// Sleeps until the file changes or `left` has passed, and drains the
    /// queued notifications.
    fn sleep_until_change(&self, left: Duration) -> Result<(), ContainError> {
        let Some(inotify) = &self.inotify else {
            return Ok(());
        };
        let path = self.dir.join(EVENTS_FILE);
        // Whole milliseconds, rounded up so that a wait never spins at 0.
        let millis = left.as_millis().saturating_add(1).min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(millis as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(inotify_error(&path, errno)),
        }
        match inotify.read_events() {
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(errno) => Err(inotify_error(&path, errno)),
        }
    }
}

fn inotify_error(path: &Path, errno: nix::errno::Errno) -> ContainError {
    ContainError::Io {
        op: "watch",
        path: path.to_owned(),
        source: std::io::Error::from(errno),
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn parse_reads_populated_and_frozen() {
        let e = CgroupEvents::parse("populated 1\nfrozen 0\n").unwrap();
        assert_eq!((e.populated, e.frozen, e.present), (true, false, true));
        let e = CgroupEvents::parse("frozen 1\npopulated 0\n").unwrap();
        assert_eq!((e.populated, e.frozen), (false, true));
    }

    #[test]
    fn parse_accepts_a_kernel_without_the_freezer() {
        let e = CgroupEvents::parse("populated 1\n").unwrap();
        assert!(e.populated && !e.frozen);
    }

    #[test]
    fn parse_refuses_garbage() {
        assert_eq!(CgroupEvents::parse("frozen 1\n"), None);
        assert_eq!(CgroupEvents::parse("populated yes\n"), None);
        assert_eq!(CgroupEvents::parse("populated 1\nfrozen 2\n"), None);
        assert_eq!(CgroupEvents::parse(""), None);
    }

    #[test]
    fn a_missing_cgroup_reads_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let gone_dir = dir.path().join("removed");
        assert_eq!(read(&gone_dir).unwrap(), CgroupEvents::GONE);
        let watch = EventsWatch::new(&gone_dir).unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let (events, held) = watch.wait(|e| !e.populated, far).unwrap();
        assert!(held);
        assert!(!events.present);
    }

    #[test]
    fn a_malformed_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(EVENTS_FILE), "nonsense\n").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains(EVENTS_FILE), "{err}");
    }

    #[test]
    fn wait_wakes_on_a_change_well_before_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(EVENTS_FILE);
        fs::write(&file, "populated 1\nfrozen 0\n").unwrap();
        let watch = EventsWatch::new(dir.path()).unwrap();
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            fs::write(&file, "populated 1\nfrozen 1\n").unwrap();
        });

        let started = Instant::now();
        let deadline = started + Duration::from_secs(20);
        let (events, held) = watch.wait(|e| e.frozen, deadline).unwrap();
        writer.join().unwrap();

        assert!(held && events.frozen);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_gives_up_at_the_deadline_with_the_last_reading() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(EVENTS_FILE), "populated 1\nfrozen 0\n").unwrap();
        let watch = EventsWatch::new(dir.path()).unwrap();

        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        let (events, held) = watch.wait(|e| e.frozen, deadline).unwrap();

        assert!(!held);
        assert!(events.populated && !events.frozen);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
