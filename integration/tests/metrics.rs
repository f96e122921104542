//! The metrics endpoint of the real `stockade-agent` binary: one agent
//! with its own socket, state folder, pin folder, health port and metrics
//! port (both on 127.0.0.1), and no container runtime, isolates and
//! releases a scratch pod cgroup with a live `sleep` in it, and
//! `/metrics` is scraped after each step.
//!
//! The scratch cgroup is `<cgroup2>/stk-metrics-<pid>-<n>/kubepods/
//! besteffort/pod<uid>/<64 hex>`: the agent finds pods only below a
//! kubepods folder. The agent is stopped by its PID, its pins, the
//! `sleep` (by PID) and the cgroups removed on drop, on failure too.
//!
//! Needs root, bpffs, cgroup2 and `cargo build -p stockade-agent --bins`;
//! fails (never skips) without them.

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use stockade_agent::enforce;
use stockade_integration::{netlab, sys};
use stockade_proto::v1::{
    pod_selector::Target, stockade_client::StockadeClient, GetInfoRequest, IsolateRequest,
    IsolationMode, PodSelector, ReleaseRequest,
};
use tonic::{transport::Channel, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A pod cgroup of its own with a `sleep` in its container cgroup.
struct ScratchPod {
    top: PathBuf,
    pod: PathBuf,
    uid: String,
    sleep: Option<Child>,
}

impl ScratchPod {
    fn new() -> Result<Self> {
        let top = netlab::cgroup2_mount()?.join(netlab::unique_name("stk-metrics"));
        let uid = fs::read_to_string("/proc/sys/kernel/random/uuid")?
            .trim()
            .to_owned();
        let pod = top.join(format!("kubepods/besteffort/pod{uid}"));
        let mut scratch = Self {
            top,
            pod,
            uid,
            sleep: None,
        };
        let container = scratch.pod.join(format!("{:0>64}", "5ee9"));
        fs::create_dir_all(&container)
            .with_context(|| format!("cannot make {}", container.display()))?;
        // The shell joins the cgroup, then becomes the sleep.
        let child = Command::new("sh")
            .args([
                "-c",
                r#"echo $$ > "$1/cgroup.procs" && exec sleep 3600"#,
                "join",
            ])
            .arg(&container)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start sleep")?;
        scratch.sleep = Some(child);
        scratch.wait_populated()?;
        Ok(scratch)
    }

    fn wait_populated(&self) -> Result<()> {
        let events = self.pod.join("cgroup.events");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if fs::read_to_string(&events)?.contains("populated 1") {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(10));
        }
        bail!("the sleep did not join {}", self.pod.display())
    }
}

impl Drop for ScratchPod {
    fn drop(&mut self) {
        if let Some(mut sleep) = self.sleep.take() {
            sys::signal_pid(sleep.id(), Signal::SIGKILL);
            let _ = sleep.wait();
        }
        if let Err(e) = sys::remove_cgroup_tree(&self.top) {
            eprintln!("clean-up: {e:#}");
        }
    }
}

/// One agent process and its files; stopped by PID and its files
/// removed on drop.
struct RunningAgent {
    child: Option<Child>,
    work: tempfile::TempDir,
    pin_dir: PathBuf,
    health: SocketAddr,
    metrics: SocketAddr,
    rt: tokio::runtime::Runtime,
}

impl RunningAgent {
    fn start() -> Result<Self> {
        let bin = agent_binary()?;
        let pin_dir = Path::new(netlab::BPFFS).join(netlab::unique_name("stk-metrics"));
        ensure!(!pin_dir.exists(), "{} exists already", pin_dir.display());
        let mut agent = Self {
            child: None,
            work: tempfile::Builder::new().prefix("stk-metrics-").tempdir()?,
            pin_dir,
            health: free_port()?,
            metrics: free_port()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        let log = File::create(agent.log())?;
        let child = Command::new(bin)
            .args(["--cri-socket", "none", "--log-format", "text"])
            .args(["--node-name", "metrics-test"])
            .arg("--socket")
            .arg(agent.socket())
            .arg("--pin-dir")
            .arg(&agent.pin_dir)
            .arg("--state-dir")
            .arg(agent.work.path().join("state"))
            .arg(format!("--health-listen={}", agent.health))
            .arg(format!("--metrics-listen={}", agent.metrics))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start stockade-agent")?;
        agent.child = Some(child);
        agent.wait_ready()?;
        Ok(agent)
    }

    fn socket(&self) -> PathBuf {
        self.work.path().join("agent.sock")
    }

    fn log(&self) -> PathBuf {
        self.work.path().join("agent.log")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Until the API answers and the metrics port takes connections.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let api = self.rpc(|mut c| async move { c.get_info(GetInfoRequest {}).await });
            if api.is_ok() && TcpStream::connect(self.metrics).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("the agent exited at start ({status}):\n{}", self.log_text());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {START_DEADLINE:?}:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// One gRPC call on a fresh connection to the Unix socket.
    fn rpc<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnOnce(StockadeClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let socket = self.socket();
        self.rt.block_on(async move {
            let channel = stockade_agent::uds::connect(&socket, RPC_TIMEOUT)
                .await
                .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
            let reply = call(StockadeClient::new(channel)).await?;
            Ok(reply.into_inner())
        })
    }

    /// The health port's answer for the whole agent.
    fn health(&self) -> Result<ServingStatus> {
        let url = format!("http://{}", self.health);
        self.rt.block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(url)?
                .timeout(RPC_TIMEOUT)
                .connect()
                .await?;
            let req = HealthCheckRequest {
                service: String::new(),
            };
            let reply = HealthClient::new(channel).check(req).await?;
            Ok(reply.into_inner().status())
        })
    }

    /// The body of `GET /metrics`; an error unless the answer is 200.
    fn scrape(&self) -> Result<String> {
        let mut stream = TcpStream::connect(self.metrics)?;
        stream.set_read_timeout(Some(RPC_TIMEOUT))?;
        let request = "GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("an answer without headers")?;
        ensure!(
            head.starts_with("HTTP/1.1 200 "),
            "scrape answered:\n{head}"
        );
        Ok(body.to_owned())
    }

    /// Stops the agent with SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        sys::signal_pid(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        sys::signal_pid(child.id(), Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.stop();
        match fs::remove_dir_all(&self.pin_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("clean-up: cannot remove {}: {e}", self.pin_dir.display()),
        }
    }
}

/// `target/<profile>/stockade-agent`, beside the `deps/` folder of this
/// test.
fn agent_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable has no grandparent folder")?;
    let agent = dir.join("stockade-agent");
    ensure!(
        agent.is_file(),
        "{} missing: run cargo build -p stockade-agent --bins first",
        agent.display()
    );
    Ok(agent)
}

/// A loopback port free a moment ago.
fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The value of the one sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Result<f64> {
    let prefix = format!("{series} ");
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect();
    match values.as_slice() {
        [value] => Ok(value.parse()?),
        _ => bail!("{} samples of {series} in:\n{text}", values.len()),
    }
}

/// `series` has the one sample `want`.
fn expect(text: &str, series: &str, want: f64) -> Result<()> {
    let got = sample(text, series)?;
    ensure!(
        got == want,
        "{series} is {got}, expected {want}, in:\n{text}"
    );
    Ok(())
}

fn by_uid(uid: &str) -> Option<PodSelector> {
    Some(PodSelector {
        target: Some(Target::Uid(uid.into())),
    })
}

#[test]
fn an_isolation_shows_in_the_metrics_until_it_is_released() -> Result<()> {
    netlab::require_root()?;
    netlab::ensure_bpffs()?;
    let pod = ScratchPod::new()?;
    let agent = RunningAgent::start()?;

    let before = agent.scrape()?;
    expect(&before, "stockade_isolations_in_force", 0.0)?;
    expect(
        &before,
        r#"stockade_kernel_feature{feature="cgroup2"}"#,
        1.0,
    )?;

    let isolate = IsolateRequest {
        pod: by_uid(&pod.uid),
        mode: IsolationMode::Strict.into(),
        reason: "metrics test".into(),
        order_id: "metrics-test-isolate".into(),
        ..Default::default()
    };
    agent
        .rpc(|mut c| async move { c.isolate(isolate).await })
        .context("isolate")?;

    let isolated = agent.scrape()?;
    let orders = r#"stockade_orders_total{action="isolate",result="ok"}"#;
    expect(&isolated, orders, 1.0)?;
    expect(&isolated, "stockade_isolations_in_force", 1.0)?;
    let programs = enforce::HOOKS.len() as f64;
    expect(&isolated, "stockade_programs_attached", programs)?;
    let count = r#"stockade_order_to_enforced_seconds_count{action="isolate"}"#;
    expect(&isolated, count, 1.0)?;
    let inf = r#"stockade_order_to_enforced_seconds_bucket{le="+Inf",action="isolate"}"#;
    expect(&isolated, inf, 1.0)?;
    ensure!(
        agent.health()? == ServingStatus::Serving,
        "health is not SERVING"
    );

    let release = ReleaseRequest {
        pod: by_uid(&pod.uid),
        reason: "metrics test".into(),
        order_id: "metrics-test-release".into(),
        ..Default::default()
    };
    agent
        .rpc(|mut c| async move { c.release(release).await })
        .context("release")?;

    let released = agent.scrape()?;
    expect(&released, "stockade_isolations_in_force", 0.0)?;
    expect(&released, "stockade_programs_attached", 0.0)?;
    let orders = r#"stockade_orders_total{action="release",result="ok"}"#;
    expect(&released, orders, 1.0)?;
    let count = r#"stockade_order_to_enforced_seconds_count{action="release"}"#;
    expect(&released, count, 1.0)?;
    Ok(())
}
