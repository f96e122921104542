//! Small host helpers the harness shares: commands with deadlines, the mount
//! table, cgroup hierarchies.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Runs `cmd` to completion, killing it (by its PID) if it outlives
/// `timeout`. Stdin is closed; stdout and stderr are captured.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader
        .join()
        .map_err(|_| anyhow!("stdout reader of {shown} panicked"))?;
    let stderr = err_reader
        .join()
        .map_err(|_| anyhow!("stderr reader of {shown} panicked"))?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `program args` with a 20 s deadline and fails, quoting its stderr,
/// unless it exits 0.
pub fn run_ok(program: &str, args: &[&str]) -> Result<Output> {
    let out = run_with_timeout(Command::new(program).args(args), Duration::from_secs(20))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `ip args...`
pub fn ip(args: &[&str]) -> Result<()> {
    run_ok("ip", args).map(|_| ())
}

/// Whether a network interface of this name exists in our network namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether process `pid` exists (zombies count).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: String,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount table of this process.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let fs_type = right.next().unwrap_or_default().to_owned();
        let super_options = right.nth(1).unwrap_or_default().to_owned();
        entries.push(MountEntry {
            mount_point: PathBuf::from(unescape(mount_point)),
            fs_type,
            super_options,
        });
    }
    Ok(entries)
}

/// Every cgroup hierarchy mounted here: the cgroup2 one and each v1
/// controller (named hierarchies such as `name=systemd` included).
pub fn cgroup_mounts() -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = mounts()?
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    out.dedup();
    Ok(out)
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on most nodes,
/// `/sys/fs/cgroup/unified` in the hybrid layout).
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or_else(|| anyhow!("no cgroup2 hierarchy in /proc/self/mountinfo"))
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Lazily unmounts everything at or below `dir`. Returns what it could not
/// unmount.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    // Stacked mounts on one point need one unmount each.
    for _ in 0..4 {
        let points = match mounts_under(dir) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{e:#}"));
                return failures;
            }
        };
        if points.is_empty() {
            return Vec::new();
        }
        for point in points {
            if let Err(e) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
                failures.push(format!("umount {}: {e}", point.display()));
            }
        }
    }
    failures
}

/// Removes the cgroup directory `dir` and every cgroup below it, deepest
/// first (cgroup directories hold only control files, so `rmdir` is the way
/// to delete them). A missing `dir` is success. A directory that is busy
/// (its last process still exiting) is retried for up to 2 s in all.
pub fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    remove_cgroup_tree_until(dir, Instant::now() + Duration::from_secs(2))
}

fn remove_cgroup_tree_until(dir: &Path, deadline: Instant) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree_until(&entry.path(), deadline)?;
        }
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).with_context(|| format!("rmdir {}", dir.display())),
        }
    }
}

/// PIDs of the processes whose command line holds `arg` as one whole
/// argument (used to find the shims of one containerd by its unique socket
/// path).
pub fn pids_with_arg(arg: &[u8]) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|a| a == arg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn finds_a_cgroup2_mount() {
        let m = cgroup2_mount().unwrap();
        assert!(m.join("cgroup.procs").exists(), "{}", m.display());
    }
}
