//! A "pod" made of plain cgroups, for the kernel cases: `<top>/pod` with
//! nested container cgroups, `<top>/outside` beside it, and a v1 `pids`
//! limit on the pod so that its fork loops stay bounded. Everything is
//! killed and removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use stockade_agent::cgroup::Cgroup2;
use stockade_integration::sys;

/// Most processes the pod may hold (C09); the fork loops hit it.
pub const PIDS_MAX: u32 = 500;

/// A loop that forks sleeping children as fast as it can (C09).
pub const FORK_LOOP: &str = "while true; do sleep 100 & done";

/// A process that double-forks and calls setsid: its grandchild is
/// orphaned, in a session of its own (C09).
pub const DOUBLE_FORK: &str = "( setsid sh -c 'sleep 1000 & exec sleep 1000' & ) ; exec sleep 1000";

/// The v1 pids hierarchy, when mounted.
const PIDS_V1: &str = "/sys/fs/cgroup/pids";

pub struct Lab {
    mount: PathBuf,
    top: PathBuf,
    pids_top: Option<PathBuf>,
    children: Vec<Child>,
}

impl Lab {
    pub fn new() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("stk-contain-{}-{n}", std::process::id());
        let mount = sys::cgroup2_mount()?;
        let top = mount.join(&name);
        fs::create_dir(&top).with_context(|| format!("mkdir {}", top.display()))?;
        let mut lab = Self {
            mount,
            top,
            pids_top: None,
            children: Vec::new(),
        };
        fs::create_dir(lab.top.join("pod"))?;
        fs::create_dir(lab.top.join("outside"))?;
        lab.limit_pids(&name)?;
        // Killed processes are orphans; this machine's init reaps hundreds
        // of them slowly, and the v1 pids limit counts them until then. As
        // their subreaper, the test reaps them at once.
        nix::sys::prctl::set_child_subreaper(true)?;
        Ok(lab)
    }

    /// The v1 pids limit of the pod; a fork loop without it could take
    /// every PID of the machine, so its absence is a failure.
    fn limit_pids(&mut self, name: &str) -> Result<()> {
        if !Path::new(PIDS_V1).join("pids.max").exists() && !Path::new(PIDS_V1).is_dir() {
            bail!("no v1 pids hierarchy at {PIDS_V1}: fork loops would be unbounded");
        }
        let top = Path::new(PIDS_V1).join(name);
        fs::create_dir(&top)?;
        self.pids_top = Some(top.clone());
        fs::create_dir(top.join("pod"))?;
        fs::write(top.join("pod/pids.max"), PIDS_MAX.to_string())?;
        Ok(())
    }

    pub fn cgroups(&self) -> Cgroup2 {
        Cgroup2::at(self.mount.clone())
    }

    /// `sub` (below the top) relative to the cgroup2 mount, as the agent
    /// names cgroups.
    pub fn rel(&self, sub: &str) -> String {
        let rel = self.top.strip_prefix(&self.mount).unwrap_or(&self.top);
        format!("/{}/{sub}", rel.display())
    }

    pub fn dir(&self, sub: &str) -> PathBuf {
        self.top.join(sub)
    }

    /// Runs `script` with `sh` in cgroup `sub` (created if needed), and in
    /// the pod's pids limit when `sub` is in the pod. Returns its PID.
    pub fn spawn(&mut self, sub: &str, script: &str) -> Result<u32> {
        let dir = self.top.join(sub);
        fs::create_dir_all(&dir)?;
        let limit = match (&self.pids_top, sub.starts_with("pod")) {
            (Some(top), true) => top.join("pod").display().to_string(),
            _ => String::new(),
        };
        let join = r#"echo $$ > "$1/cgroup.procs" && { [ -z "$2" ] || echo $$ > "$2/cgroup.procs"; } && exec sh -c "$3""#;
        let child = Command::new("sh")
            .args(["-c", join, "join"])
            .arg(&dir)
            .arg(limit)
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Processes in `sub` and below.
    pub fn pids(&self, sub: &str) -> Result<Vec<u32>> {
        Ok(self.cgroups().pids_recursive(&self.rel(sub))?)
    }

    /// Waits until `sub` holds at least `n` processes.
    pub fn wait_for(&self, sub: &str, n: usize, within: Duration) -> Result<usize> {
        let started = Instant::now();
        loop {
            let count = self.pids(sub)?.len();
            if count >= n {
                return Ok(count);
            }
            if started.elapsed() > within {
                bail!("{sub} holds {count} processes after {within:?}, wanted {n}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reaps every exited child and orphan, until the pod's pids limit
    /// counts none of them (or 5 s have passed).
    pub fn reap(&mut self) -> Result<()> {
        self.children.clear();
        let current = self.pids_top.as_ref().map(|t| t.join("pod/pids.current"));
        let started = Instant::now();
        loop {
            reap_exited();
            let counted = match &current {
                Some(path) => fs::read_to_string(path)?.trim().parse::<u32>()?,
                None => 0,
            };
            if counted == 0 {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("the pod's pids limit still counts {counted} processes");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::write(self.top.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let events = fs::read_to_string(self.top.join("cgroup.events")).unwrap_or_default();
            if !events.contains("populated 1") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        reap_exited();
        let _ = nix::sys::prctl::set_child_subreaper(false);
        for dir in [Some(&self.top), self.pids_top.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = sys::remove_cgroup_tree(dir) {
                eprintln!("lab cleanup: {e:#}");
            }
        }
    }
}

/// Reaps every child that has exited (ours and the orphans we adopted).
fn reap_exited() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
