//! The real `stockade-agent` binary, started by these tests with its own
//! socket and pin folder, and a gRPC client to it. Stopped by PID and its
//! pins removed on drop.

use std::{
    fs::File,
    future::Future,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use stockade_proto::v1::{stockade_client::StockadeClient, GetInfoRequest};
use tonic::{transport::Channel, Status};

/// The agent binary of this build.
pub struct Binaries {
    pub agent: PathBuf,
}

impl Binaries {
    /// `target/<profile>/`, the parent of the `deps/` folder this test is in.
    pub fn find() -> Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("the test executable has no grandparent folder")?;
        let agent = dir.join("stockade-agent");
        ensure!(
            agent.is_file(),
            "{} missing: run cargo build --workspace --bins first",
            agent.display()
        );
        Ok(Self { agent })
    }
}

/// How to start one agent.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub tag: &'static str,
    /// `--cri-socket`: a path, or `none`.
    pub cri_socket: String,
    pub cri_timeout_ms: u64,
    /// `--kill-method`.
    pub kill_method: &'static str,
    /// `--pin-dir`; a folder of its own under /sys/fs/bpf by default.
    pub pin_dir: Option<PathBuf>,
    /// A cgroup (absolute) to start the agent in, instead of ours.
    pub cgroup: Option<PathBuf>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
}

impl AgentSpec {
    pub fn new(tag: &'static str, cri_socket: &str) -> Self {
        Self {
            tag,
            cri_socket: cri_socket.into(),
            cri_timeout_ms: 1000,
            kill_method: "auto",
            pin_dir: None,
            cgroup: None,
            kubeconfig: None,
        }
    }
}

pub struct Agent {
    child: Child,
    work: PathBuf,
    pin_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    client: StockadeClient<Channel>,
    keep_pins: bool,
}

impl Agent {
    pub fn start(spec: &AgentSpec) -> Result<Self> {
        let bin = Binaries::find()?.agent;
        let work =
            std::env::temp_dir().join(format!("stk-contain-{}-{}", std::process::id(), spec.tag));
        std::fs::create_dir_all(&work)?;
        let pin_dir = spec.pin_dir.clone().unwrap_or_else(|| {
            PathBuf::from(format!(
                "/sys/fs/bpf/stk-contain-{}-{}",
                std::process::id(),
                spec.tag
            ))
        });
        let child = spawn(&bin, spec, &work, &pin_dir)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = work.join("agent.sock");
        let client = match rt.block_on(connect(&socket)) {
            Ok(client) => client,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&work);
                let _ = std::fs::remove_dir_all(&pin_dir);
                bail!("agent {} did not start: {e:#}\n{log}", spec.tag);
            }
        };
        Ok(Self {
            child,
            work,
            pin_dir,
            rt,
            client,
            keep_pins: false,
        })
    }

    /// Ends the agent with SIGKILL, as a crash would, leaving its pins.
    pub fn crash(mut self) {
        self.keep_pins = true;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one call on a clone of the client.
    pub fn rpc<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnOnce(StockadeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.client.clone();
        self.rt
            .block_on(call(client))
            .map(tonic::Response::into_inner)
    }

    /// A client usable from another thread (with its own runtime).
    pub fn socket(&self) -> PathBuf {
        self.work.join("agent.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_pins {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn spawn(bin: &Path, spec: &AgentSpec, work: &Path, pin_dir: &Path) -> Result<Child> {
    let log = File::create(work.join("agent.log"))?;
    let mut cmd = match &spec.cgroup {
        // The agent must be in the cgroup from its first instruction, so a
        // shell joins it and then becomes the agent.
        Some(cgroup) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
                "join",
            ])
            .arg(cgroup)
            .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--cri-socket")
        .arg(&spec.cri_socket)
        .args(["--cri-timeout-ms", &spec.cri_timeout_ms.to_string()])
        .args(["--kill-method", spec.kill_method])
        .arg("--socket")
        .arg(work.join("agent.sock"))
        .arg("--pin-dir")
        .arg(pin_dir)
        // Each agent its own ledger: two agents cannot share one.
        .arg("--state-dir")
        .arg(work.join("state"))
        // Many orders a minute, on a node shared with other tests: the rate and
        // share guards have tests of their own.
        .args([
            "--max-orders-per-minute",
            "0",
            "--max-contained-percent",
            "100",
        ])
        .args(["--node-name", "containment-test", "--log-format", "text"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    if let Some(kubeconfig) = &spec.kubeconfig {
        cmd.arg("--kubeconfig").arg(kubeconfig);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

pub async fn connect(socket: &Path) -> Result<StockadeClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists() {
            if let Ok(ch) = stockade_agent::uds::connect(socket, Duration::from_secs(30)).await {
                let mut client = StockadeClient::new(ch);
                if client.get_info(GetInfoRequest {}).await.is_ok() {
                    return Ok(client);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no answer on {} within 30 s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
