//! Restart tests (C06): the real `stockade-agent` binary killed with
//! SIGKILL at every step of an isolation and around it, on fake pod
//! cgroups (`/kubepods/besteffort/pod<uid>/<64 hex>` under the cgroup2
//! mount, with a live process), with no container runtime
//! (`--cri-socket none`).
//!
//! `harness = false`: the cases run one after the other, each with its own
//! agent, pin folder under /sys/fs/bpf, state folder and socket, all
//! removed after it, on failure too. Needs root, bpffs, cgroup2, `ip`, and
//! `cargo build --workspace --bins` (a debug build: the crash points of
//! `STOCKADE_FAULT` exist only there); fails (never skips) without them.
//! Positional arguments filter the cases by substring.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    future::Future,
    io::Write,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::{CommandExt, ExitStatusExt},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use stockade_agent::enforce;
use stockade_integration::{
    netlab::{self, NetNs, Subnet},
    sys,
};
use stockade_proto::v1::{
    self, pod_selector::Target, stockade_client::StockadeClient, GetInfoRequest, GetOrderRequest,
    IsolateRequest, IsolationMode, ListIsolationsRequest, OrderState, PodSelector, ReleaseRequest,
};
use tonic::{transport::Channel, Code, Status};

const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const CRASH_POINTS: [&str; 8] = [
    "isolate:after_begin",
    "isolate:after_attach:1",
    "isolate:after_attach:2",
    "isolate:after_attach:3",
    "isolate:after_attach:4",
    "isolate:after_attach:5",
    "isolate:after_attach:6",
    "isolate:before_finish",
];
/// Runs of the crash loop wanted, and the fewest accepted.
const CRASH_RUNS: usize = 200;
const CRASH_RUNS_MIN: usize = CRASH_RUNS;
/// Time the crash loop may take before it stops early (at least
/// `CRASH_RUNS_MIN` runs are always done).
const CRASH_BUDGET: Duration = Duration::from_secs(150);
const PROBER_ROLE: &str = "__stk_restarts_prober";
const PROBE_PORT: u16 = 7411;
const PROBE_TICK: Duration = Duration::from_millis(10);
const LOG_TAIL_LINES: usize = 30;

type Case = fn(&Ctx) -> Result<String>;

const CASES: &[(&str, Case)] = &[
    (
        "sigkill_at_every_step_of_an_isolate",
        sigkill_at_every_step_of_an_isolate,
    ),
    (
        "no_packet_passes_while_the_agent_restarts_20_times",
        no_packet_passes_while_the_agent_restarts_20_times,
    ),
    ("c06_variants", c06_variants),
    (
        "a_short_ttl_expires_across_a_restart",
        a_short_ttl_expires_across_a_restart,
    ),
];

// ---------------------------------------------------------------------------
// The runner

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PROBER_ROLE) {
        return prober(&args[1..]);
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in CASES {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let selected: Vec<(&str, Case)> = CASES
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .copied()
        .collect();
    if selected.is_empty() {
        eprintln!("error: no case matches {filters:?}: nothing would be tested");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    println!("\nrunning {} tests", selected.len());
    let mut outcomes = Vec::new();
    match Ctx::new() {
        Ok(ctx) => {
            for (name, case) in &selected {
                let t = Instant::now();
                let result = match panic::catch_unwind(AssertUnwindSafe(|| case(&ctx))) {
                    Ok(r) => r,
                    Err(p) => Err(anyhow!("panicked: {}", panic_message(&p))),
                };
                let took = t.elapsed();
                match result {
                    Ok(note) => {
                        println!("test {name} ... ok");
                        if !note.is_empty() {
                            println!("    {note}");
                        }
                        outcomes.push((*name, true, took));
                    }
                    Err(e) => {
                        println!("test {name} ... FAILED");
                        eprintln!("\n---- {name} ----\n{e:#}\n");
                        outcomes.push((*name, false, took));
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("error: the restart tests could not run: {e:#}");
            for (name, _) in &selected {
                println!("test {name} ... FAILED");
                outcomes.push((*name, false, Duration::ZERO));
            }
        }
    }
    let passed = outcomes.iter().filter(|o| o.1).count();
    let failed = outcomes.len() - passed;
    println!("\ntimings:");
    for (name, _, took) in &outcomes {
        println!("  {:>6.2} s  {name}", took.as_secs_f64());
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; \
         {} filtered out; finished in {:.2}s\n",
        CASES.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_owned()
    }
}

/// What every case shares: the binaries, the cgroup2 mount, a runtime.
struct Ctx {
    agent_bin: PathBuf,
    self_exe: PathBuf,
    cgroup2: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    fn new() -> Result<Self> {
        netlab::require_root()?;
        netlab::ensure_bpffs()?;
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("the test executable has no grandparent folder")?;
        let agent_bin = dir.join("stockade-agent");
        ensure!(
            agent_bin.is_file(),
            "{} missing: run cargo build --workspace --bins first",
            agent_bin.display()
        );
        ensure!(
            dir.ends_with("debug"),
            "{} is not a debug build: the crash points exist only there",
            agent_bin.display()
        );
        Ok(Self {
            agent_bin,
            self_exe: exe,
            cgroup2: netlab::cgroup2_mount()?,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
        })
    }
}

// ---------------------------------------------------------------------------
// The agent

/// One agent's files and, when running, its process. Stopped by PID and
/// its files removed on drop.
struct Agent<'c> {
    ctx: &'c Ctx,
    work: tempfile::TempDir,
    pin_dir: PathBuf,
    child: Option<Child>,
}

impl<'c> Agent<'c> {
    fn new(ctx: &'c Ctx, tag: &str) -> Result<Self> {
        let pin_dir = Path::new(netlab::BPFFS).join(netlab::unique_name(&format!("stk-rs-{tag}")));
        ensure!(!pin_dir.exists(), "{} exists already", pin_dir.display());
        Ok(Self {
            ctx,
            work: tempfile::Builder::new().prefix("stk-restarts-").tempdir()?,
            pin_dir,
            child: None,
        })
    }

    fn socket(&self) -> PathBuf {
        self.work.path().join("agent.sock")
    }

    fn log(&self) -> PathBuf {
        self.work.path().join("agent.log")
    }

    fn cgroup_pins(&self) -> PathBuf {
        self.pin_dir.join("v1/cgroups")
    }

    /// Starts the agent (with `fault` armed if given); does not wait.
    fn spawn(&mut self, fault: Option<&str>) -> Result<()> {
        ensure!(self.child.is_none(), "the agent runs already");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        writeln!(log, "==== started, fault {fault:?} ====")?;
        let mut cmd = Command::new(&self.ctx.agent_bin);
        cmd.args(["--cri-socket", "none", "--log-format", "text"])
            .arg("--socket")
            .arg(self.socket())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(self.work.path().join("state"))
            // Many orders a minute, on a node shared with other tests: the rate and
            // share guards have tests of their own.
            .args([
                "--max-orders-per-minute",
                "0",
                "--max-contained-percent",
                "100",
            ])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("STOCKADE_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        if let Some(point) = fault {
            cmd.env("STOCKADE_FAULT", point);
        }
        self.child = Some(cmd.spawn().context("starting stockade-agent")?);
        Ok(())
    }

    /// Starts the agent and waits until it answers GetInfo.
    fn start(&mut self, fault: Option<&str>) -> Result<Duration> {
        let t = Instant::now();
        self.spawn(fault)?;
        let deadline = t + Duration::from_secs(30);
        loop {
            match self.rpc(|mut c| async move { c.get_info(GetInfoRequest {}).await }) {
                Ok(_) => return Ok(t.elapsed()),
                Err(status) if Instant::now() > deadline => {
                    bail!("the agent did not answer within 30 s: {status}")
                }
                Err(_) => {}
            }
            if !self.running() {
                bail!("the agent exited at start; its log:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the agent is not running")?;
        sys::signal_pid(child.id(), Signal::SIGKILL);
        let status = child.wait()?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "the agent ended with {status} instead of SIGKILL"
        );
        Ok(())
    }

    /// Waits up to `within` for the agent to exit by itself; its status.
    fn wait_exit(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("the agent is not running")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the agent did not exit within {within:?}");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s. An error if SIGKILL was needed or
    /// the exit was not clean.
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        sys::signal_pid(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                ensure!(
                    status.success(),
                    "the agent exited with {status} on SIGTERM"
                );
                return Ok(());
            }
            thread::sleep(Duration::from_millis(5));
        }
        sys::signal_pid(child.id(), Signal::SIGKILL);
        let _ = child.wait();
        bail!("the agent ignored SIGTERM for 5 s")
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// One gRPC call on a fresh connection.
    fn rpc<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnOnce(StockadeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let socket = self.socket();
        self.ctx.rt.block_on(async move {
            let channel = stockade_agent::uds::connect(&socket, RPC_TIMEOUT)
                .await
                .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
            let fut = call(StockadeClient::new(channel));
            match tokio::time::timeout(RPC_TIMEOUT, fut).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded("test rpc timeout")),
            }
        })
    }

    fn isolate(&self, req: IsolateRequest) -> Result<v1::IsolateResponse, Status> {
        self.rpc(|mut c| async move { c.isolate(req).await })
    }

    fn release(&self, uid: &str, order_id: &str) -> Result<v1::ReleaseResponse, Status> {
        let req = ReleaseRequest {
            pod: Some(by_uid(uid)),
            reason: "restart test: release".into(),
            order_id: order_id.into(),
            ..Default::default()
        };
        self.rpc(|mut c| async move { c.release(req).await })
    }

    fn order(&self, id: &str) -> Result<v1::Order, Status> {
        let req = GetOrderRequest { id: id.into() };
        self.rpc(|mut c| async move { c.get_order(req).await })
    }

    fn isolations(&self) -> Result<Vec<v1::Isolation>> {
        Ok(self
            .rpc(|mut c| async move { c.list_isolations(ListIsolationsRequest {}).await })?
            .isolations)
    }

    fn isolations_of(&self, uid: &str) -> Result<Vec<v1::Isolation>> {
        Ok(self
            .isolations()?
            .into_iter()
            .filter(|i| i.pod.as_ref().is_some_and(|p| p.uid == uid))
            .collect())
    }

    /// The pinned cgroup folders under `<pin>/v1/cgroups`.
    fn pinned(&self) -> Vec<String> {
        fs::read_dir(self.cgroup_pins())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("clean-up: {e:#}");
        }
        match fs::remove_dir_all(&self.pin_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("clean-up: cannot remove {}: {e}", self.pin_dir.display()),
        }
    }
}

fn by_uid(uid: &str) -> PodSelector {
    PodSelector {
        target: Some(Target::Uid(uid.into())),
    }
}

fn isolate_req(uid: &str, order_id: &str, ttl_seconds: u32) -> IsolateRequest {
    IsolateRequest {
        pod: Some(by_uid(uid)),
        mode: IsolationMode::Strict.into(),
        reason: "restart test".into(),
        order_id: order_id.into(),
        ttl_seconds,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Fake pods

/// `<cgroup2>/kubepods/besteffort/pod<uid>/<64 hex>` with live processes;
/// the processes killed by PID and the folders removed on drop.
struct FakePod {
    uid: String,
    pod_dir: PathBuf,
    container_dir: PathBuf,
    made_parents: Vec<PathBuf>,
    sleeper: Option<Child>,
}

impl FakePod {
    /// With a `sleep` in it if `sleeper`.
    fn new(ctx: &Ctx, sleeper: bool) -> Result<Self> {
        let uid = fs::read_to_string("/proc/sys/kernel/random/uuid")?
            .trim()
            .to_owned();
        let pod_dir = ctx.cgroup2.join(format!("kubepods/besteffort/pod{uid}"));
        let container_dir = pod_dir.join(format!("{:0>64}", "c06"));
        let made_parents: Vec<PathBuf> = ["kubepods/besteffort", "kubepods"]
            .iter()
            .map(|p| ctx.cgroup2.join(p))
            .filter(|p| !p.exists())
            .collect();
        let mut pod = Self {
            uid,
            pod_dir,
            container_dir,
            made_parents,
            sleeper: None,
        };
        fs::create_dir_all(&pod.container_dir).context("cannot make the pod cgroup")?;
        if sleeper {
            let procs = pod.container_dir.join("cgroup.procs");
            let mut cmd = Command::new("sleep");
            cmd.arg("3600").stdin(Stdio::null());
            let file = OpenOptions::new().write(true).open(&procs)?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: write(2) only, on a descriptor the parent keeps open
            // until spawn returns; nothing is allocated in the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            pod.sleeper = Some(cmd.spawn()?);
            drop(file);
        }
        Ok(pod)
    }

    /// The path the agent and `enforce::inspect` use: the pod's cgroup.
    fn cgroup(&self) -> &Path {
        &self.pod_dir
    }

    /// Kills its sleeper and removes its cgroups, as kubelet would.
    fn delete(&mut self) -> Result<()> {
        if let Some(mut child) = self.sleeper.take() {
            sys::signal_pid(child.id(), Signal::SIGKILL);
            child.wait()?;
        }
        if self.container_dir.exists() {
            remove_cgroup(&self.container_dir)?;
        }
        if self.pod_dir.exists() {
            remove_cgroup(&self.pod_dir)?;
        }
        Ok(())
    }
}

/// rmdir, retried for a second while the cgroup empties.
fn remove_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("rmdir {}", dir.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("clean-up: {e:#}");
        }
        for dir in &self.made_parents {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Our program ids per hook on the pod's cgroup.
fn ours(pod: &FakePod) -> Result<BTreeMap<&'static str, Vec<u32>>> {
    Ok(enforce::inspect(pod.cgroup())?
        .into_iter()
        .map(|(h, s)| (h, s.ours))
        .collect())
}

fn expect_one_per_hook(pod: &FakePod) -> Result<()> {
    let ours = ours(pod)?;
    ensure!(
        ours.len() == enforce::HOOKS.len() && ours.values().all(|ids| ids.len() == 1),
        "not exactly one of our programs per hook: {ours:?}"
    );
    Ok(())
}

fn expect_none(pod: &FakePod) -> Result<()> {
    let ours = ours(pod)?;
    ensure!(
        ours.values().all(Vec::is_empty),
        "our programs are attached: {ours:?}"
    );
    Ok(())
}

/// The agent lists exactly one isolation of the pod, with one attachment
/// per hook matching what the kernel holds.
fn expect_isolated(agent: &Agent, pod: &FakePod) -> Result<()> {
    expect_one_per_hook(pod)?;
    let listed = agent.isolations_of(&pod.uid)?;
    ensure!(
        listed.len() == 1,
        "ListIsolations has {} isolations of the pod",
        listed.len()
    );
    let kernel = ours(pod)?;
    let atts = &listed[0].attachments;
    ensure!(
        atts.len() == enforce::HOOKS.len(),
        "listed attachments: {atts:?}"
    );
    for a in atts {
        let ids = kernel.get(a.hook.as_str()).cloned().unwrap_or_default();
        ensure!(
            ids == vec![a.program_id],
            "hook {}: listed program {}, kernel holds {ids:?}",
            a.hook,
            a.program_id
        );
    }
    Ok(())
}

fn release_and_check(agent: &Agent, pod: &FakePod, order_id: &str) -> Result<()> {
    agent
        .release(&pod.uid, order_id)
        .map_err(|s| anyhow!("release: {s}"))?;
    expect_none(pod).context("after the release")?;
    ensure!(
        agent.isolations_of(&pod.uid)?.is_empty(),
        "still listed after the release"
    );
    ensure!(
        agent.pinned().is_empty(),
        "pins left after the release: {:?}",
        agent.pinned()
    );
    Ok(())
}

fn state_of(o: &v1::Order) -> OrderState {
    OrderState::try_from(o.state).unwrap_or(OrderState::Unspecified)
}

// ---------------------------------------------------------------------------
// Case 1

fn sigkill_at_every_step_of_an_isolate(ctx: &Ctx) -> Result<String> {
    let pod = FakePod::new(ctx, true)?;
    let mut agent = Agent::new(ctx, "crash")?;
    let started = Instant::now();
    let mut tally: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut runs = 0;
    let mut start_times = Vec::new();
    for i in 0..CRASH_RUNS {
        if i >= CRASH_RUNS_MIN && started.elapsed() > CRASH_BUDGET {
            break;
        }
        let point = CRASH_POINTS[i % CRASH_POINTS.len()];
        let outcome = crash_once(&mut agent, &pod, point, i, &mut start_times)
            .with_context(|| format!("run {i}, crash point {point}"))
            .map_err(|e| anyhow!("{e:#}\n-- agent log tail --\n{}", agent.log_tail()))?;
        *tally.entry((point, outcome)).or_default() += 1;
        runs += 1;
    }
    ensure!(runs >= CRASH_RUNS_MIN, "only {runs} runs done");
    start_times.sort();
    let median = start_times[start_times.len() / 2];
    let tally: Vec<String> = tally
        .iter()
        .map(|((p, o), n)| format!("{p}->{o}:{n}"))
        .collect();
    Ok(format!(
        "{runs} of {CRASH_RUNS} runs done in {:.1} s (median agent start {} ms); outcomes: {}",
        started.elapsed().as_secs_f64(),
        median.as_millis(),
        tally.join(" ")
    ))
}

fn crash_once(
    agent: &mut Agent,
    pod: &FakePod,
    point: &str,
    i: usize,
    start_times: &mut Vec<Duration>,
) -> Result<&'static str> {
    let log_before = agent.log_text().len();
    start_times.push(agent.start(Some(point))?);
    let order_id = format!("crash-{}-{i}", std::process::id());
    let reply = agent.isolate(isolate_req(&pod.uid, &order_id, 0));
    ensure!(
        reply.is_err(),
        "the isolate call succeeded though the agent should have died at {point}"
    );
    let status = agent.wait_exit(Duration::from_secs(10))?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the agent ended with {status}, not by SIGKILL"
    );
    let log = agent.log_text();
    let said = format!("STOCKADE_FAULT={point}:");
    ensure!(
        log[log_before.min(log.len())..].contains(&said),
        "the agent died by SIGKILL without reaching the fault point {point}"
    );

    agent.start(None)?;
    let order = match agent.order(&order_id) {
        Ok(o) => o,
        Err(s) if s.code() == Code::NotFound => bail!("the order was lost: {s}"),
        Err(s) => bail!("GetOrder: {s}"),
    };
    let outcome = match state_of(&order) {
        OrderState::Enforced => {
            expect_isolated(agent, pod).context("order ENFORCED")?;
            let listed = agent.isolations_of(&pod.uid)?;
            ensure!(
                listed[0].order_id == order_id,
                "the isolation lists order {:?}",
                listed[0].order_id
            );
            release_and_check(agent, pod, &format!("{order_id}-release"))?;
            "enforced"
        }
        OrderState::Failed => {
            expect_none(pod).context("order FAILED")?;
            ensure!(
                agent.isolations_of(&pod.uid)?.is_empty(),
                "order FAILED but the pod is listed as isolated"
            );
            ensure!(
                agent.pinned().is_empty(),
                "order FAILED but pins remain: {:?}",
                agent.pinned()
            );
            "failed"
        }
        other => bail!("the order is {other:?} after the restart: {order:?}"),
    };
    agent.stop()?;
    Ok(outcome)
}

// ---------------------------------------------------------------------------
// Case 2

/// The prober: every 10 ms one UDP datagram and one TCP connect to
/// ADDR:PORT. Prints nothing; runs until killed.
fn prober(args: &[String]) -> ExitCode {
    let Some(addr) = args
        .first()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, PROBE_PORT))
    else {
        eprintln!("usage: {PROBER_ROLE} ADDR");
        return ExitCode::from(2);
    };
    let mut n: u64 = 0;
    loop {
        n += 1;
        if let Ok(sock) = UdpSocket::bind("0.0.0.0:0") {
            let _ = sock.send_to(format!("probe {n}").as_bytes(), addr);
        }
        let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(5));
        thread::sleep(PROBE_TICK);
    }
}

/// Arrival times of the datagrams and connections the server got.
#[derive(Default)]
struct Arrivals {
    udp: Vec<Instant>,
    tcp: Vec<Instant>,
}

fn count_between(times: &[Instant], from: Instant, to: Instant) -> Vec<Instant> {
    times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect()
}

fn no_packet_passes_while_the_agent_restarts_20_times(ctx: &Ctx) -> Result<String> {
    let pod = FakePod::new(ctx, false)?;
    let pod_ns = NetNs::new("rs-pod")?;
    let peer_ns = NetNs::new("rs-peer")?;
    let net = Subnet::next();
    let _veth = netlab::veth_pair(&pod_ns, &net.host(1), &peer_ns, &net.host(2))?;
    let server_ip: IpAddr = net.v4(2).into();
    let (udp, tcp) = netlab::run_in_ns(&peer_ns, || -> std::io::Result<_> {
        let addr = SocketAddr::new(server_ip, PROBE_PORT);
        Ok((UdpSocket::bind(addr)?, TcpListener::bind(addr)?))
    })??;
    udp.set_read_timeout(Some(Duration::from_millis(5)))?;
    tcp.set_nonblocking(true)?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (arrivals, stop) = (Arc::clone(&arrivals), Arc::clone(&stop));
        thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if udp.recv_from(&mut buf).is_ok() {
                    if let Ok(mut a) = arrivals.lock() {
                        a.udp.push(Instant::now());
                    }
                }
                while let Ok((conn, _)) = tcp.accept() {
                    drop(conn);
                    if let Ok(mut a) = arrivals.lock() {
                        a.tcp.push(Instant::now());
                    }
                }
            }
        })
    };
    let result = (|| -> Result<String> {
        let exe = ctx.self_exe.to_string_lossy().into_owned();
        let ip = server_ip.to_string();
        let _prober = netlab::spawn(
            pod.container_dir.as_path(),
            &pod_ns,
            &[&exe, PROBER_ROLE, &ip],
        )?;
        let mut agent = Agent::new(ctx, "packets")?;
        agent.start(None)?;
        let flowing = wait_until(Duration::from_secs(10), || {
            let a = arrivals.lock().map_err(|_| anyhow!("poisoned"))?;
            Ok(a.udp.len() >= 5 && a.tcp.len() >= 5)
        })?;
        ensure!(
            flowing,
            "the prober's datagrams and connects do not reach the server"
        );
        let before = {
            let a = arrivals.lock().map_err(|_| anyhow!("poisoned"))?;
            (a.udp.len(), a.tcp.len())
        };

        let order_id = format!("packets-{}", std::process::id());
        agent
            .isolate(isolate_req(&pod.uid, &order_id, 0))
            .map_err(|s| anyhow!("isolate: {s}"))?;
        // The reply comes once the programs are attached and verified: a
        // packet already on its way may still land just after it.
        let isolated_at = Instant::now() + Duration::from_millis(20);
        expect_isolated(&agent, &pod)?;

        let mut downtime = Duration::ZERO;
        for n in 1..=20 {
            let t = Instant::now();
            agent.kill9().with_context(|| format!("kill {n}"))?;
            // Some 100 ms down, at least 10 probes' worth.
            thread::sleep(Duration::from_millis(100));
            agent.start(None).with_context(|| format!("restart {n}"))?;
            downtime += t.elapsed();
            expect_isolated(&agent, &pod).with_context(|| format!("after restart {n}"))?;
        }
        let order = agent
            .order(&order_id)
            .map_err(|s| anyhow!("GetOrder: {s}"))?;
        ensure!(
            state_of(&order) == OrderState::Enforced,
            "order after the restarts: {order:?}"
        );
        thread::sleep(Duration::from_millis(200));
        let released_at = Instant::now();
        let (udp_in, tcp_in) = {
            let a = arrivals.lock().map_err(|_| anyhow!("poisoned"))?;
            (
                count_between(&a.udp, isolated_at, released_at),
                count_between(&a.tcp, isolated_at, released_at),
            )
        };
        release_and_check(&agent, &pod, &format!("{order_id}-release"))?;
        let resumed = wait_until(Duration::from_secs(5), || {
            let a = arrivals.lock().map_err(|_| anyhow!("poisoned"))?;
            Ok(
                count_between(&a.udp, released_at, Instant::now()).len() >= 3
                    && count_between(&a.tcp, released_at, Instant::now()).len() >= 3,
            )
        })?;
        let unprotected = match (udp_in.first(), udp_in.last()) {
            (Some(first), Some(last)) => *last - *first + PROBE_TICK,
            _ => Duration::ZERO,
        };
        ensure!(
            udp_in.is_empty() && tcp_in.is_empty(),
            "{} datagrams and {} connections got through while isolated \
             (unprotected span ~{} ms)",
            udp_in.len(),
            tcp_in.len(),
            unprotected.as_millis()
        );
        ensure!(resumed, "the probes do not get through after the release");
        agent.stop()?;
        Ok(format!(
            "before isolation {} datagrams/{} connects arrived; isolated {:.1} s with 20 \
             SIGKILL+restart ({:.1} s agent down in total): 0 datagrams, 0 connects; \
             unprotected time 0 ms; traffic resumed after release",
            before.0,
            before.1,
            (released_at - isolated_at).as_secs_f64(),
            downtime.as_secs_f64()
        ))
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    result
}

fn wait_until(within: Duration, mut what: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if what()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Case 3

fn c06_variants(ctx: &Ctx) -> Result<String> {
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    for (name, variant) in [
        (
            "a: pod deleted while down",
            variant_pod_deleted as fn(&Ctx) -> Result<String>,
        ),
        ("b: pins folder removed while down", variant_pins_removed),
        ("c: two restarts in a row", variant_two_restarts),
    ] {
        match variant(ctx) {
            Ok(note) => notes.push(format!("{name}: ok ({note})")),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    ensure!(
        failures.is_empty(),
        "{}\n(passed: {})",
        failures.join("\n"),
        notes.join("; ")
    );
    Ok(notes.join("; "))
}

fn isolated_then_killed<'c>(ctx: &'c Ctx, tag: &str, pod: &FakePod) -> Result<(Agent<'c>, String)> {
    let mut agent = Agent::new(ctx, tag)?;
    agent.start(None)?;
    let order_id = format!("{tag}-{}", std::process::id());
    agent
        .isolate(isolate_req(&pod.uid, &order_id, 0))
        .map_err(|s| anyhow!("isolate: {s}"))?;
    expect_isolated(&agent, pod)?;
    agent.kill9()?;
    Ok((agent, order_id))
}

fn variant_pod_deleted(ctx: &Ctx) -> Result<String> {
    let mut pod = FakePod::new(ctx, true)?;
    let (mut agent, order_id) = isolated_then_killed(ctx, "gone", &pod)?;
    ensure!(!agent.pinned().is_empty(), "no pins before the restart");
    pod.delete()?;
    agent.start(None)?;
    let ok = wait_until(Duration::from_secs(3), || Ok(agent.pinned().is_empty()))?;
    ensure!(ok, "pins remain for the deleted pod: {:?}", agent.pinned());
    let order = agent
        .order(&order_id)
        .map_err(|s| anyhow!("GetOrder: {s}"))?;
    ensure!(
        state_of(&order) == OrderState::Released && order.error_message.contains("gone"),
        "the order of the deleted pod: {order:?}"
    );
    ensure!(
        agent.isolations_of(&pod.uid)?.is_empty(),
        "the deleted pod is listed as isolated"
    );
    ensure!(agent.running(), "the agent died");
    let log = agent.log_text();
    ensure!(
        !log.contains("panicked"),
        "the agent panicked:\n{}",
        agent.log_tail()
    );
    agent.stop()?;
    Ok(format!("RELEASED, {:?}", order.error_message))
}

fn variant_pins_removed(ctx: &Ctx) -> Result<String> {
    let pod = FakePod::new(ctx, true)?;
    let (mut agent, order_id) = isolated_then_killed(ctx, "nopins", &pod)?;
    fs::remove_dir_all(agent.cgroup_pins())?;
    let left = ours(&pod)?;
    agent.start(None)?;
    expect_isolated(&agent, &pod)?;
    let order = agent
        .order(&order_id)
        .map_err(|s| anyhow!("GetOrder: {s}"))?;
    ensure!(
        state_of(&order) == OrderState::Enforced,
        "order after the restart: {order:?}"
    );
    ensure!(!agent.pinned().is_empty(), "no pins after the restart");
    release_and_check(&agent, &pod, &format!("{order_id}-release"))?;
    agent.stop()?;
    Ok(format!(
        "kernel held {left:?} with no pins; restored to one per hook"
    ))
}

fn variant_two_restarts(ctx: &Ctx) -> Result<String> {
    let pod = FakePod::new(ctx, true)?;
    let (mut agent, order_id) = isolated_then_killed(ctx, "twice", &pod)?;
    agent.start(None)?;
    expect_isolated(&agent, &pod).context("after the first restart")?;
    agent.kill9()?;
    agent.start(None)?;
    expect_isolated(&agent, &pod).context("after the second restart")?;
    let order = agent
        .order(&order_id)
        .map_err(|s| anyhow!("GetOrder: {s}"))?;
    ensure!(
        state_of(&order) == OrderState::Enforced,
        "order after the restarts: {order:?}"
    );
    release_and_check(&agent, &pod, &format!("{order_id}-release"))?;
    agent.stop()?;
    Ok("one per hook, listed".into())
}

// ---------------------------------------------------------------------------
// Case 4

fn a_short_ttl_expires_across_a_restart(ctx: &Ctx) -> Result<String> {
    let pod = FakePod::new(ctx, true)?;
    let mut agent = Agent::new(ctx, "ttl")?;
    agent.start(None)?;
    let order_id = format!("ttl-{}", std::process::id());
    agent
        .isolate(isolate_req(&pod.uid, &order_id, 2))
        .map_err(|s| anyhow!("isolate: {s}"))?;
    expect_isolated(&agent, &pod)?;
    agent.kill9()?;
    thread::sleep(Duration::from_secs(3));
    let spawned = Instant::now();
    let ready = agent.start(None)?;
    let mut last = None;
    let gone = wait_until(ready + Duration::from_secs(1), || {
        let order = agent
            .order(&order_id)
            .map_err(|s| anyhow!("GetOrder: {s}"))?;
        let done = state_of(&order) == OrderState::Expired
            && ours(&pod)?.values().all(Vec::is_empty)
            && agent.isolations_of(&pod.uid)?.is_empty();
        last = Some(order);
        Ok(done)
    })?;
    let took = spawned.elapsed();
    ensure!(
        gone,
        "1 s after the restart the isolation is not gone: order {last:?}, ours {:?}",
        ours(&pod)?
    );
    ensure!(
        took <= ready + Duration::from_secs(1),
        "expired only {} ms after the restart",
        took.as_millis()
    );
    ensure!(agent.pinned().is_empty(), "pins left: {:?}", agent.pinned());
    agent.stop()?;
    Ok(format!(
        "agent ready {} ms after spawn; EXPIRED and nothing attached {} ms after spawn",
        ready.as_millis(),
        took.as_millis()
    ))
}
