//! `stk-bench kill [RUNS]`: how long killing a pod takes when it keeps
//! forking, by `cgroup.kill` and by walking its PID list and signalling
//! each process, in the same run.
//!
//! The "pod" is a cgroup this bench makes, `<cgroup2>/stk-bench-kill-<pid>`,
//! limited to [`POPULATION`] processes by the v1 pids controller, filled by
//! a loop that forks sleeping children as fast as it can; every run kills
//! it full. A kill ends when `cgroup.events` says `populated 0`. The PID
//! walk reads `cgroup.procs` of the pod and its descendants, sends SIGKILL
//! to each process, and starts over until none is left: what a tool
//! without cgroup.kill does. Each method's median and worst over the runs
//! are reported.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::{
    signal::{kill, Signal},
    wait::{waitpid, WaitPidFlag, WaitStatus},
};
use stockade_agent::{
    cgroup::Cgroup2,
    contain::{
        events::{self, EventsWatch},
        kill::{self as cgkill, KillMethod},
    },
};

/// Processes in the pod when it is killed.
const POPULATION: usize = 1000;
const FORK_LOOP: &str = "while true; do sleep 100 & done";
const PIDS_V1: &str = "/sys/fs/cgroup/pids";
const DEADLINE: Duration = Duration::from_secs(30);

pub fn run(runs: usize) -> Result<String> {
    let pod = BenchPod::create()?;
    let (mut by_file, mut by_walk, mut rounds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        pod.fill()?;
        by_file.push(pod.kill_by_file()?);
        pod.settle()?;
        pod.fill()?;
        let (took, walked) = pod.kill_by_walk()?;
        by_walk.push(took);
        rounds.push(walked);
        pod.settle()?;
    }
    rounds.sort_unstable();
    Ok(format!(
        "kill of a pod of {POPULATION} processes that keeps forking, {runs} runs each\n{}\n{}\n\
         pid walk rounds (scan + signal all) needed: median {}, worst {}",
        super::summary("cgroup.kill", &mut by_file),
        super::summary("walk pid list + SIGKILL each", &mut by_walk),
        rounds[rounds.len() / 2],
        rounds[rounds.len() - 1],
    ))
}

/// The bench's pod cgroup and its pids limit; removed on drop.
struct BenchPod {
    cgroups: Cgroup2,
    rel: String,
    dir: PathBuf,
    limit: PathBuf,
    loops: std::cell::RefCell<Vec<Child>>,
}

impl BenchPod {
    fn create() -> Result<Self> {
        let mount = super::cgroup2_mount()?;
        let name = format!("stk-bench-kill-{}", std::process::id());
        ensure!(
            Path::new(PIDS_V1).is_dir(),
            "no v1 pids hierarchy at {PIDS_V1}: a fork loop would be unbounded"
        );
        let pod = Self {
            cgroups: Cgroup2::at(mount.clone()),
            rel: format!("/{name}"),
            dir: mount.join(&name),
            limit: Path::new(PIDS_V1).join(&name),
            loops: std::cell::RefCell::new(Vec::new()),
        };
        fs::create_dir(&pod.dir).context("cannot make the bench cgroup")?;
        fs::create_dir(&pod.limit).context("cannot make the bench pids cgroup")?;
        fs::write(pod.limit.join("pids.max"), POPULATION.to_string())?;
        // The killed processes are orphans; reaping them here keeps the
        // pids limit's count honest between runs.
        nix::sys::prctl::set_child_subreaper(true)?;
        Ok(pod)
    }

    /// Starts the fork loop and waits until the pod is full.
    fn fill(&self) -> Result<()> {
        let join =
            r#"echo $$ > "$1/cgroup.procs" && echo $$ > "$2/cgroup.procs" && exec sh -c "$3""#;
        let child = Command::new("sh")
            .args(["-c", join, "join"])
            .arg(&self.dir)
            .arg(&self.limit)
            .arg(FORK_LOOP)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.loops.borrow_mut().push(child);
        let started = Instant::now();
        while self.cgroups.pids_recursive(&self.rel)?.len() < POPULATION * 95 / 100 {
            if started.elapsed() > DEADLINE {
                bail!("the pod did not fill within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn kill_by_file(&self) -> Result<Duration> {
        let started = Instant::now();
        cgkill::kill(
            &self.cgroups,
            &self.rel,
            KillMethod::CgroupKill,
            started + DEADLINE,
        )?;
        Ok(started.elapsed())
    }

    /// Signals every listed process, again and again, until the pod is
    /// empty. Returns the time and the number of rounds.
    fn kill_by_walk(&self) -> Result<(Duration, usize)> {
        let watch = EventsWatch::new(&self.dir)?;
        let started = Instant::now();
        let mut rounds = 0;
        loop {
            let pids = self.cgroups.pids_recursive(&self.rel)?;
            if pids.is_empty() && !events::read(&self.dir)?.populated {
                return Ok((started.elapsed(), rounds));
            }
            rounds += 1;
            for pid in pids {
                // The PIDs come from this bench's own cgroup and are
                // signalled microseconds later; a PID reused meanwhile
                // would need 32768 forks in between.
                let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            watch.wait(|e| !e.populated, Instant::now() + Duration::from_millis(1))?;
            if started.elapsed() > DEADLINE {
                bail!("the pid walk did not empty the pod within {DEADLINE:?}");
            }
        }
    }

    /// Reaps the dead until the pids limit counts nobody.
    fn settle(&self) -> Result<()> {
        self.loops.borrow_mut().clear();
        let started = Instant::now();
        loop {
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
            }
            let counted: usize = fs::read_to_string(self.limit.join("pids.current"))?
                .trim()
                .parse()?;
            if counted == 0 {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                bail!("{counted} processes still counted after the kill");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for BenchPod {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        let _ = self.settle();
        for child in self.loops.borrow_mut().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = nix::sys::prctl::set_child_subreaper(false);
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_dir(&self.limit);
    }
}
