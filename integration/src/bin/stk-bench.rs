//! `stk-bench`: measures the agent's order-to-enforcement time on this
//! node. Run by `cargo xtask bench` as root.
//!
//! It makes a pod cgroup the way kubelet's cgroupfs driver does
//! (`/kubepods/besteffort/pod<uid>/<container id>`) with a live process in
//! it, starts the real `stockade-agent` binary beside this one, and sends
//! it `isolate` then `release` orders over its socket. It reports, as
//! medians and worst cases over the runs:
//! - order to enforced: the agent's `enforced_at - received_at`, the time
//!   from receiving the order to the last program attached with its policy;
//! - isolate round trip: what the caller waits, including verification;
//! - release round trip.
//!
//! `stk-bench kill [RUNS]` measures kills instead: see `stk-bench/kill.rs`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use stockade_proto::v1::{
    self, pod_selector::Target, stockade_client::StockadeClient, IsolateRequest, PodSelector,
    ReleaseRequest,
};

#[path = "stk-bench/kill.rs"]
mod kill;

const RUNS: usize = 100;
/// Kill runs per method when `stk-bench kill` is given no count.
const KILL_RUNS: usize = 20;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("stk-bench needs root: it makes cgroups and loads eBPF programs");
    }
    if std::env::args().nth(1).as_deref() == Some("kill") {
        let runs = std::env::args().nth(2).map(|s| s.parse()).transpose()?;
        println!("{}", kill::run(runs.unwrap_or(KILL_RUNS))?);
        return Ok(());
    }
    let runs = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(RUNS);
    let work = Workspace::create()?;
    let result = measure(&work, runs).await;
    drop(work);
    let report = result?;
    println!("{report}");
    Ok(())
}

/// Everything the bench makes, removed on drop.
struct Workspace {
    uid: String,
    pod_dir: PathBuf,
    container_dir: PathBuf,
    sleeper: Child,
    agent: Option<Child>,
    /// `kubepods` folders this bench made, to remove when empty.
    made_parents: Vec<PathBuf>,
    run_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Workspace {
    fn create() -> Result<Self> {
        let cgroup2 = cgroup2_mount()?;
        let uid = fs::read_to_string("/proc/sys/kernel/random/uuid")?
            .trim()
            .to_owned();
        let pod_dir = cgroup2.join(format!("kubepods/besteffort/pod{uid}"));
        let container_dir = pod_dir.join(format!("{:0>64}", "be9c4"));
        let made_parents: Vec<PathBuf> = ["kubepods/besteffort", "kubepods"]
            .iter()
            .map(|p| cgroup2.join(p))
            .filter(|p| !p.exists())
            .collect();
        fs::create_dir_all(&container_dir).context("cannot make the pod cgroup")?;

        let sleeper = Command::new("sleep").arg("3600").spawn()?;
        fs::write(container_dir.join("cgroup.procs"), sleeper.id().to_string())?;

        let run_dir = PathBuf::from(format!("/run/stockade-bench-{}", std::process::id()));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/stockade-bench-{}", std::process::id()));
        let mut work = Self {
            uid,
            pod_dir,
            container_dir,
            sleeper,
            agent: None,
            made_parents,
            run_dir,
            pin_dir,
        };
        work.agent = Some(work.start_agent()?);
        Ok(work)
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    fn start_agent(&self) -> Result<Child> {
        let exe = std::env::current_exe()?;
        let agent = exe.with_file_name("stockade-agent");
        if !agent.exists() {
            bail!(
                "{} not found: build the workspace binaries first",
                agent.display()
            );
        }
        Command::new(agent)
            .args(["--cri-socket", "none", "--log-format", "json"])
            .arg("--socket")
            .arg(self.socket())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(self.socket().with_file_name("state"))
            // Many orders a minute, on a node shared with other tests: the rate and
            // share guards have tests of their own.
            .args([
                "--max-orders-per-minute",
                "0",
                "--max-contained-percent",
                "100",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start stockade-agent")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(agent) = &mut self.agent {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = fs::remove_dir(&self.container_dir);
        let _ = fs::remove_dir(&self.pod_dir);
        for dir in &self.made_parents {
            let _ = fs::remove_dir(dir);
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

async fn measure(work: &Workspace, runs: usize) -> Result<String> {
    let mut client = connect(&work.socket()).await?;
    let pid = work.agent.as_ref().context("no agent")?.id();
    let idle = Usage::of(pid)?;
    let selector = || PodSelector {
        target: Some(Target::Uid(work.uid.clone())),
    };
    let (mut enforced, mut isolate_rtt, mut release_rtt) = (vec![], vec![], vec![]);

    for _ in 0..runs {
        let req = IsolateRequest {
            pod: Some(selector()),
            reason: "benchmark".into(),
            dry_run: false,
            ..Default::default()
        };
        let start = Instant::now();
        let reply = client.isolate(req).await?.into_inner();
        isolate_rtt.push(start.elapsed());
        enforced.push(order_to_enforced(&reply.isolation.context("empty reply")?)?);

        let start = Instant::now();
        client
            .release(ReleaseRequest {
                order_id: String::new(),
                all: false,
                pod: Some(selector()),
                reason: "benchmark".into(),
                dry_run: false,
            })
            .await?;
        release_rtt.push(start.elapsed());
    }

    let busy = Usage::of(pid)?;
    let cpu_ms = (busy.cpu_secs - idle.cpu_secs) * 1000.0 / runs as f64;
    Ok(format!(
        "runs: {runs}\n{}\n{}\n{}\n\
         agent memory: RSS {} KiB after start, {} KiB after the runs, peak {} KiB\n\
         agent CPU: {cpu_ms:.2} ms per isolate + release",
        summary("order to enforced (agent)", &mut enforced),
        summary("isolate round trip (client)", &mut isolate_rtt),
        summary("release round trip (client)", &mut release_rtt),
        idle.rss_kib,
        busy.rss_kib,
        busy.peak_kib,
    ))
}

/// What the agent process uses, from /proc: the figures the DaemonSet's
/// requests and limits are set from.
struct Usage {
    rss_kib: u64,
    peak_kib: u64,
    cpu_secs: f64,
}

impl Usage {
    fn of(pid: u32) -> Result<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| -> Result<u64> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
            let number = line.trim().trim_end_matches(" kB").trim();
            Ok(number.parse()?)
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th fields of the line, in clock ticks.
        let after = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        Ok(Self {
            rss_kib: kib("VmRSS:")?,
            peak_kib: kib("VmHWM:")?,
            cpu_secs: ticks as f64 / hz,
        })
    }
}

fn order_to_enforced(isolation: &v1::Isolation) -> Result<Duration> {
    let at = |t: &Option<prost_types::Timestamp>| -> Result<SystemTime> {
        let t = (*t).context("missing timestamp")?;
        Ok(SystemTime::try_from(t)?)
    };
    Ok(at(&isolation.enforced_at)?.duration_since(at(&isolation.received_at)?)?)
}

fn summary(what: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    let worst = samples[samples.len() - 1];
    format!(
        "{what:<30} median {:>7.3} ms   p90 {:>7.3} ms   worst {:>7.3} ms",
        ms(median),
        ms(p90),
        ms(worst)
    )
}

async fn connect(socket: &Path) -> Result<StockadeClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists() {
            if let Ok(ch) = stockade_agent::uds::connect(socket, Duration::from_secs(10)).await {
                return Ok(StockadeClient::new(ch));
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not open {} within 30 s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() == Some("cgroup2") {
            if let Some(point) = left.split(' ').nth(4) {
                return Ok(PathBuf::from(point));
            }
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo")
}
