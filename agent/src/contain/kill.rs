//! Killing every process of a cgroup and its descendants (C04, C09, C10).
//!
//! `cgroup.kill` (Linux 5.14) kills the whole subtree at once, processes
//! forked meanwhile included, from outside every PID namespace, so a
//! container's PID 1 dies like any other process. Where the kernel lacks
//! it, the fallback freezes the cgroup so that nothing can fork, sends
//! SIGKILL to each process found in it and below, then thaws. Either way
//! the cgroup is reported empty only once `cgroup.events` says
//! `populated 0`.

use std::{
    collections::BTreeSet,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use super::{
    events::{CgroupEvents, EventsWatch},
    freeze::{read_freeze, write_freeze},
    ContainError,
};
use crate::cgroup::{parse_proc_cgroup, Cgroup2};

/// The file whose write of `1` kills the cgroup's whole subtree.
pub const KILL_FILE: &str = "cgroup.kill";

/// How long the fallback waits for its freeze before signalling anyway
/// (signals kill a half-frozen process as well; the freeze only stops
/// forks racing with the scan).
const FALLBACK_FREEZE_WAIT: Duration = Duration::from_millis(500);

/// How long the fallback waits for `populated 0` before scanning again
/// for processes it has not signalled yet.
const FALLBACK_RESCAN: Duration = Duration::from_millis(100);

/// How a kill is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillMethod {
    /// One write to `cgroup.kill`.
    CgroupKill,
    /// Freeze, SIGKILL each process found, thaw.
    FreezeSignal,
}

impl KillMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupKill => "cgroup.kill",
            Self::FreezeSignal => "freeze-signal",
        }
    }
}

/// `cgroup.kill` when the kernel has it, unless a method is forced (by
/// configuration, or by a test of the fallback).
pub fn choose(kernel_has_cgroup_kill: bool, forced: Option<KillMethod>) -> KillMethod {
    match (forced, kernel_has_cgroup_kill) {
        (Some(method), _) => method,
        (None, true) => KillMethod::CgroupKill,
        (None, false) => KillMethod::FreezeSignal,
    }
}

/// A kill the kernel confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Killed {
    pub method: KillMethod,
    /// Distinct processes signalled one by one (fallback only).
    pub signalled: u32,
    pub events: CgroupEvents,
    /// When `cgroup.events` said `populated 0`, or the cgroup was gone.
    pub verified_at: SystemTime,
}

/// Kills everything in cgroup `rel` (relative to the mount) and below,
/// and waits for `populated 0` until `deadline`.
pub fn kill(
    cgroups: &Cgroup2,
    rel: &str,
    method: KillMethod,
    deadline: Instant,
) -> Result<Killed, ContainError> {
    let dir = cgroups.abs(rel);
    let watch = EventsWatch::new(&dir)?;
    let started = Instant::now();
    let (events, signalled) = match method {
        KillMethod::CgroupKill => (kill_file(&dir, &watch, deadline)?, 0),
        KillMethod::FreezeSignal => freeze_signal(cgroups, rel, &watch, deadline)?,
    };
    if events.populated {
        return Err(ContainError::StillPopulated {
            path: dir,
            waited: started.elapsed(),
            left: cgroups.pids_recursive(rel).map(|p| p.len()).unwrap_or(0),
        });
    }
    Ok(Killed {
        method,
        signalled,
        events,
        verified_at: SystemTime::now(),
    })
}

fn kill_file(
    dir: &Path,
    watch: &EventsWatch,
    deadline: Instant,
) -> Result<CgroupEvents, ContainError> {
    let path = dir.join(KILL_FILE);
    match fs::write(&path, "1") {
        Ok(()) => {}
        // Removed since the watch was set: nothing left to kill.
        Err(err) if super::events::gone(&err) && !dir.exists() => return Ok(CgroupEvents::GONE),
        Err(source) => {
            return Err(ContainError::Io {
                op: "write",
                path,
                source,
            })
        }
    }
    Ok(watch.wait(|e| !e.populated, deadline)?.0)
}

/// The fallback: freeze, signal until empty, and always put
/// `cgroup.freeze` back as it was, also on failure.
fn freeze_signal(
    cgroups: &Cgroup2,
    rel: &str,
    watch: &EventsWatch,
    deadline: Instant,
) -> Result<(CgroupEvents, u32), ContainError> {
    let dir = cgroups.abs(rel);
    let was_frozen = read_freeze(&dir)?;
    write_freeze(&dir, true)?;
    let freeze_by = deadline.min(Instant::now() + FALLBACK_FREEZE_WAIT);
    let frozen = watch.wait(|e| e.frozen || !e.populated, freeze_by);

    let result = frozen.and_then(|_| signal_until_empty(cgroups, rel, watch, deadline));

    let restored = match write_freeze(&dir, was_frozen) {
        Err(ContainError::Io { source, .. }) if super::events::gone(&source) => Ok(()),
        other => other,
    };
    let (events, signalled) = result?;
    restored?;
    Ok((events, signalled))
}

fn signal_until_empty(
    cgroups: &Cgroup2,
    rel: &str,
    watch: &EventsWatch,
    deadline: Instant,
) -> Result<(CgroupEvents, u32), ContainError> {
    let mut signalled = BTreeSet::new();
    loop {
        for pid in pids_or_none(cgroups, rel)? {
            if signal_if_within(rel, pid)? {
                signalled.insert(pid);
            }
        }
        let slice = deadline.min(Instant::now() + FALLBACK_RESCAN);
        let (events, empty) = watch.wait(|e| !e.populated, slice)?;
        if empty || Instant::now() >= deadline {
            let count = u32::try_from(signalled.len()).unwrap_or(u32::MAX);
            return Ok((events, count));
        }
    }
}

/// The processes of the subtree; none when the cgroup is gone.
fn pids_or_none(cgroups: &Cgroup2, rel: &str) -> Result<Vec<u32>, ContainError> {
    match cgroups.pids_recursive(rel) {
        Ok(pids) => Ok(pids),
        Err(err) if err.is_gone() => Ok(Vec::new()),
        Err(source) => Err(ContainError::Cgroup { source }),
    }
}

/// Sends SIGKILL to `pid` only if it lives in cgroup `top` or below.
///
/// The process is pinned with a pidfd before its cgroup is read, and the
/// signal goes through that pidfd: if the PID was reused by a process
/// outside the pod meanwhile, the check refuses it, and if it was reused
/// after the check, the signal reaches only the (dead) process we pinned.
fn signal_if_within(top: &str, pid: u32) -> Result<bool, ContainError> {
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(source) => return Err(ContainError::Signal { pid, source }),
    };
    let Some(path) = unified_cgroup(pid) else {
        return Ok(false);
    };
    if !is_within(&path, top) {
        tracing::debug!(pid, cgroup = %path, "left a process that moved out of the target");
        return Ok(false);
    }
    match pidfd_kill(&pidfd) {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(source) => Err(ContainError::Signal { pid, source }),
    }
}

/// The cgroup2 path of `pid`, or `None` if it is gone or unreadable.
fn unified_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let lines = parse_proc_cgroup(&text).ok()?;
    lines
        .into_iter()
        .find(|line| line.is_unified())
        .map(|line| line.path)
}

/// Whether cgroup `path` is `top` or below it, name by name (so `/a/pod1`
/// does not contain `/a/pod10`). Paths that climb (`..`) never match.
pub fn is_within(path: &str, top: &str) -> bool {
    let parts = |p: &'_ str| -> Option<Vec<String>> {
        let names: Vec<String> = p
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        (!names.iter().any(|c| c == "..")).then_some(names)
    };
    match (parts(path), parts(top)) {
        (Some(path), Some(top)) => !top.is_empty() && path.starts_with(&top),
        _ => false,
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) takes a PID and flags by value and returns a
    // new descriptor or -1; it reads and writes no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing
    // else owns it, so OwnedFd may close it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with an open descriptor we own for the
    // duration of the call; a null siginfo is allowed and means "as
    // kill(2)", so no memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_kill_is_chosen_when_the_kernel_has_it() {
        assert_eq!(choose(true, None), KillMethod::CgroupKill);
        assert_eq!(choose(false, None), KillMethod::FreezeSignal);
    }

    #[test]
    fn a_forced_method_wins_over_the_probe() {
        let forced = Some(KillMethod::FreezeSignal);
        assert_eq!(choose(true, forced), KillMethod::FreezeSignal);
        let forced = Some(KillMethod::CgroupKill);
        assert_eq!(choose(false, forced), KillMethod::CgroupKill);
    }

    #[test]
    fn within_compares_whole_names() {
        assert!(is_within("/kubepods/pod1", "/kubepods/pod1"));
        assert!(is_within("/kubepods/pod1/c/inner/a", "/kubepods/pod1"));
        assert!(is_within("/kubepods/pod1/", "kubepods//pod1"));
        assert!(!is_within("/kubepods/pod10/c", "/kubepods/pod1"));
        assert!(!is_within("/kubepods", "/kubepods/pod1"));
        assert!(!is_within("/other/x", "/kubepods/pod1"));
    }

    #[test]
    fn within_refuses_climbing_paths_and_the_root() {
        assert!(!is_within("/kubepods/pod1/../pod2", "/kubepods/pod1"));
        assert!(!is_within("/../x", "/"));
        assert!(!is_within("/anything", "/"));
    }

    #[test]
    fn a_process_that_does_not_exist_is_not_signalled() {
        // PIDs above the kernel's pid_max never exist.
        let signalled = signal_if_within("/x", 0x7fff_fff0).unwrap();
        assert!(!signalled);
    }

    #[test]
    fn this_process_is_not_signalled_for_a_cgroup_it_is_not_in() {
        let me = std::process::id();
        let top = "/stockade-no-such-cgroup-for-tests";
        assert!(!signal_if_within(top, me).unwrap());
    }
}
