//! Runtime tests: the real `stockade-agent` binary on real containerd pods.
//!
//! One private containerd (the harness in `stockade_integration`), one
//! server in a network namespace on the pods' bridge, and one agent started
//! from the target folder with the containerd's CRI socket. Each case makes
//! its own pods, talks to the agent through the generated gRPC client (and
//! the `stockade` CLI with `-o json`), and checks in the kernel and from
//! inside the pods what the agent claims.
//!
//! `harness = false`: the cases share the containerd and the agent and run
//! one after the other; each is caught on panic and followed by a clean-up
//! that releases whatever it left isolated. Needs root, containerd, runc,
//! the CNI plugins, busybox-static, and `cargo build --workspace --bins`;
//! fails (never skips) without them. Positional arguments filter the cases
//! by substring; `--list` lists them.

use std::{
    cell::RefCell,
    collections::BTreeSet,
    fs::{File, OpenOptions},
    future::Future,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::{
    sched::{setns, CloneFlags},
    sys::signal::Signal,
};
use serde_json::Value;
use stockade_agent::enforce::{self, HOOKS};
use stockade_integration::{containerd, preflight, sys, Containerd, PeerNs, Pod, PodSpec};
use stockade_proto::v1::{
    self, pod_selector::Target, stockade_client::StockadeClient, AllowRule, GetInfoRequest,
    IsolateRequest, IsolationMode, ListIsolationsRequest, ListPodsRequest, PodName, PodSelector,
    Protocol, ReleaseRequest,
};
use tonic::{transport::Channel, Code, Status};

const PEER_NS: &str = "stk-runtime-peer";
const PEER_IP: &str = "10.213.0.250";
/// Ports of the peer's server. Strict mode allows `PORT_A` only.
const PORT_A: u16 = 7001;
const PORT_B: u16 = 7002;
/// Where the prober of the agent-restart case connects, ten times a second.
const PORT_PROBE: u16 = 7003;
/// A web server inside some pods, for probes from the node.
const POD_WEB_PORT: u16 = 8000;
/// What busybox prints when a hook refuses with EPERM.
const EPERM: &str = "Operation not permitted";
/// Deadline of each gRPC call and each CLI run.
const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a connection that should work may take to start working (the
/// peer's server and the pods' httpd start asynchronously).
const WARM_UP: Duration = Duration::from_secs(10);
/// Lines of the agent's log printed under a failed case.
const LOG_TAIL_LINES: usize = 40;

type Case = fn(&Env) -> Result<()>;

const CASES: &[(&str, Case)] = &[
    ("agent_discovers_pods_by_name", agent_discovers_pods_by_name),
    (
        "isolate_by_name_blocks_and_release_restores",
        isolate_by_name_blocks_and_release_restores,
    ),
    (
        "isolate_by_uid_and_strict_mode",
        isolate_by_uid_and_strict_mode,
    ),
    (
        "container_restart_stays_isolated",
        container_restart_stays_isolated,
    ),
    (
        "refusals_name_the_field_or_reason",
        refusals_name_the_field_or_reason,
    ),
    (
        "agent_restart_keeps_isolation",
        agent_restart_keeps_isolation,
    ),
    (
        "a_short_ttl_expires_on_a_real_pod",
        a_short_ttl_expires_on_a_real_pod,
    ),
];

// ---------------------------------------------------------------------------
// The runner

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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

    let started = Instant::now();
    println!("\nrunning {} tests", selected.len());
    let outcomes = match run(&selected) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            eprintln!("error: the runtime tests could not run: {e:#}");
            for (name, _) in &selected {
                println!("test {name} ... FAILED");
            }
            selected
                .iter()
                .map(|(n, _)| (*n, false, Duration::ZERO))
                .collect()
        }
    };
    summarize(&outcomes, CASES.len() - selected.len(), started.elapsed())
}

/// Prints the timings and cargo's result line; the exit code.
fn summarize(outcomes: &[(&str, bool, Duration)], filtered: usize, took: Duration) -> ExitCode {
    let passed = outcomes.iter().filter(|o| o.1).count();
    let failed = outcomes.len() - passed;
    println!("\ntimings:");
    for (name, _, took) in outcomes {
        println!("  {:>6.2} s  {name}", took.as_secs_f64());
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; \
         {filtered} filtered out; finished in {:.2}s\n",
        took.as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Sets everything up, runs the cases, tears everything down.
fn run<'c>(cases: &[(&'c str, Case)]) -> Result<Vec<(&'c str, bool, Duration)>> {
    let bins = Binaries::find()?;
    preflight().context("runtime tests cannot run here")?;
    wait_for_bridge()?;

    let work = tempfile::Builder::new().prefix("stk-rt-").tempdir()?;
    let cd = Containerd::start(&work.path().join("containerd"))?;
    let _peer = PeerNs::create(PEER_NS, &format!("{PEER_IP}/24"))?;
    let server = PeerServer::start(PEER_NS, &[PORT_A, PORT_B, PORT_PROBE])?;
    let env = Env::start(&cd, &server, &bins, work.path())?;

    let mut outcomes = Vec::new();
    for (name, case) in cases {
        let started = Instant::now();
        let passed = run_case(&env, name, *case);
        outcomes.push((*name, passed, started.elapsed()));
    }
    // A failed teardown fails the run, as one more entry, without hiding
    // how the cases went.
    if let Err(e) = env.teardown() {
        println!("test teardown ... FAILED");
        eprintln!("\n---- teardown ----\n{e:#}");
        outcomes.push(("teardown", false, Duration::ZERO));
    }
    Ok(outcomes)
}

/// Runs one case, catching its panic, then releases what it left.
fn run_case(env: &Env, name: &str, case: Case) -> bool {
    let result = match panic::catch_unwind(AssertUnwindSafe(|| case(env))) {
        Ok(result) => result,
        Err(panic) => Err(anyhow!("panicked: {}", panic_message(&panic))),
    };
    let result = match (result, env.after_case()) {
        (Ok(()), Ok(left)) if left.is_empty() => Ok(()),
        (Ok(()), Ok(left)) => Err(anyhow!("the case passed but left isolations: {left:?}")),
        (Ok(()), Err(e)) => Err(e.context("the case passed but its clean-up failed")),
        (Err(e), Ok(left)) => Err(e.context(format!("(released after it: {left:?})"))),
        (Err(e), Err(cleanup)) => Err(e.context(format!("(clean-up also failed: {cleanup:#})"))),
    };
    match result {
        Ok(()) => {
            println!("test {name} ... ok");
            true
        }
        Err(e) => {
            println!("test {name} ... FAILED");
            eprintln!("\n---- {name} ----\n{e:#}");
            eprintln!(
                "agent log, last {LOG_TAIL_LINES} lines:\n{}\n",
                env.log_tail()
            );
            false
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        return (*s).to_owned();
    }
    panic
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "(not a string)".into())
}

/// Only one runtime harness runs at a time on a machine (fixed bridge and
/// subnet): wait while another engineer's run holds the bridge.
fn wait_for_bridge() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    if sys::link_exists(containerd::BRIDGE) {
        eprintln!(
            "bridge {} exists: another runtime harness is running; waiting",
            containerd::BRIDGE
        );
    }
    while sys::link_exists(containerd::BRIDGE) {
        if Instant::now() > deadline {
            bail!(
                "bridge {} still exists after 5 min: another harness runs, or one leaked",
                containerd::BRIDGE
            );
        }
        thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// The agent and CLI binaries of this build.
struct Binaries {
    agent: PathBuf,
    cli: PathBuf,
}

impl Binaries {
    /// `target/<profile>/`, the parent of the `deps/` folder this test
    /// executable is in.
    fn find() -> Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("the test executable has no grandparent folder")?;
        let bins = Self {
            agent: dir.join("stockade-agent"),
            cli: dir.join("stockade"),
        };
        for bin in [&bins.agent, &bins.cli] {
            ensure!(
                bin.is_file(),
                "{} missing: run cargo build --workspace --bins first",
                bin.display()
            );
        }
        Ok(bins)
    }
}

// ---------------------------------------------------------------------------
// The agent process

/// The real `stockade-agent`, started by these tests. Stopped by PID.
struct AgentProc {
    bin: PathBuf,
    cri_socket: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    /// Starts the agent; its stderr goes to the end of the log file.
    fn spawn(&mut self) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(log, "==== stockade-agent started by the runtime tests ====")?;
        let child = Command::new(&self.bin)
            .arg("--cri-socket")
            .arg(&self.cri_socket)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(self.log.with_file_name("agent-state"))
            // Many orders a minute, on a node shared with other tests: the rate and
            // share guards have tests of their own.
            .args([
                "--max-orders-per-minute",
                "0",
                "--max-contained-percent",
                "100",
            ])
            .args(["--node-name", "runtime-test-node", "--log-format", "text"])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: a Ctrl-C of the test run reaches only
            // the tests, whose clean-up then stops the agent.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process still runs; reaps it if it exited.
    fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, as a crash or an OOM kill would end it.
    fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("the agent is not running")?;
        sys::signal_pid(child.id(), Signal::SIGKILL);
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s. False if SIGKILL was needed.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        sys::signal_pid(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("the agent ignored SIGTERM for 5 s: killing it");
        sys::signal_pid(child.id(), Signal::SIGKILL);
        let _ = child.wait();
        false
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

// ---------------------------------------------------------------------------
// What the cases share

/// The containerd, the peer's server, the agent, and ways to talk to it.
struct Env<'a> {
    cd: &'a Containerd,
    server: &'a PeerServer,
    cli: PathBuf,
    rt: tokio::runtime::Runtime,
    agent: RefCell<AgentProc>,
}

impl<'a> Env<'a> {
    fn start(
        cd: &'a Containerd,
        server: &'a PeerServer,
        bins: &Binaries,
        work: &Path,
    ) -> Result<Self> {
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/stockade-runtime-test-{}",
            std::process::id()
        ));
        ensure!(!pin_dir.exists(), "{} exists already", pin_dir.display());
        let env = Env {
            cd,
            server,
            cli: bins.cli.clone(),
            // Not current-thread: the client connections' tasks must run
            // between calls too, to close when the agent drains on SIGTERM.
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
            agent: RefCell::new(AgentProc {
                bin: bins.agent.clone(),
                cri_socket: cd.socket().to_owned(),
                socket: work.join("agent/agent.sock"),
                pin_dir,
                log: work.join("agent.log"),
                child: None,
            }),
        };
        // From here on a failure drops `env`, which stops the agent and
        // removes its pins.
        env.start_agent()?;
        Ok(env)
    }

    /// Starts the agent and waits until it answers GetInfo.
    fn start_agent(&self) -> Result<()> {
        self.agent.borrow_mut().spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.rpc(|mut c| async move { c.get_info(GetInfoRequest {}).await }) {
                Ok(_) => return Ok(()),
                Err(status) if Instant::now() > deadline => {
                    bail!("the agent did not answer within 30 s: {status}")
                }
                Err(_) => {}
            }
            if !self.agent.borrow_mut().running() {
                bail!("the agent exited at start; its log:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn socket(&self) -> PathBuf {
        self.agent.borrow().socket.clone()
    }

    fn pin_dir(&self) -> PathBuf {
        self.agent.borrow().pin_dir.clone()
    }

    fn log_tail(&self) -> String {
        self.agent.borrow().log_tail(LOG_TAIL_LINES)
    }

    /// One gRPC call on a fresh connection (the agent may have restarted).
    fn rpc<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: FnOnce(StockadeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let socket = self.socket();
        self.rt.block_on(async move {
            let channel = stockade_agent::uds::connect(&socket, RPC_TIMEOUT)
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect to the agent: {e}")))?;
            call(StockadeClient::new(channel))
                .await
                .map(tonic::Response::into_inner)
        })
    }

    fn isolate(&self, request: IsolateRequest) -> Result<v1::Isolation, Status> {
        let reply = self.rpc(|mut c| async move { c.isolate(request).await })?;
        reply
            .isolation
            .ok_or_else(|| Status::internal("IsolateResponse without isolation"))
    }

    fn release(&self, pod: PodSelector) -> Result<v1::ReleaseResponse, Status> {
        let request = ReleaseRequest {
            pod: Some(pod),
            reason: "runtime test: release".into(),
            ..Default::default()
        };
        self.rpc(|mut c| async move { c.release(request).await })
    }

    fn pods(&self) -> Result<Vec<v1::Pod>> {
        let reply = self.rpc(|mut c| async move { c.list_pods(ListPodsRequest {}).await })?;
        Ok(reply.pods)
    }

    fn isolations(&self) -> Result<Vec<v1::Isolation>> {
        let reply =
            self.rpc(|mut c| async move { c.list_isolations(ListIsolationsRequest {}).await })?;
        Ok(reply.isolations)
    }

    /// The isolation of the pod with `uid`, which must be the only one.
    fn isolation_of(&self, uid: &str) -> Result<v1::Isolation> {
        let mut found: Vec<v1::Isolation> = self
            .isolations()?
            .into_iter()
            .filter(|i| i.pod.as_ref().is_some_and(|p| p.uid == uid))
            .collect();
        ensure!(
            found.len() == 1,
            "ListIsolations holds {} entries for pod {uid}",
            found.len()
        );
        Ok(found.remove(0))
    }

    /// Runs the `stockade` CLI with `-o json` and parses what it prints.
    fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.cli_run(args)?;
        ensure!(
            out.status.success(),
            "stockade {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("stockade {} printed no JSON", args.join(" ")))
    }

    fn cli_run(&self, args: &[&str]) -> Result<std::process::Output> {
        let socket = self.socket();
        sys::run_with_timeout(
            Command::new(&self.cli)
                .arg("--socket")
                .arg(&socket)
                .args(["-o", "json"])
                .args(args),
            RPC_TIMEOUT,
        )
    }

    /// After each case: the agent runs, nothing is isolated, no pins are
    /// left. Releases what a case left isolated and returns those UIDs.
    fn after_case(&self) -> Result<Vec<String>> {
        if !self.agent.borrow_mut().running() {
            self.agent.borrow_mut().child = None;
            self.start_agent()
                .context("restarting the agent after the case")?;
        }
        let released = self.release_all()?;
        let pins = self.cgroup_pins()?;
        ensure!(pins.is_empty(), "pin folders left for cgroups {pins:?}");
        Ok(released)
    }

    /// Releases every isolation; returns the UIDs it released.
    fn release_all(&self) -> Result<Vec<String>> {
        let mut released = Vec::new();
        for isolation in self.isolations()? {
            let uid = isolation.pod.map(|p| p.uid).unwrap_or_default();
            self.release(by_uid(&uid))
                .map_err(|s| anyhow!("releasing {uid}: {s}"))?;
            released.push(uid);
        }
        Ok(released)
    }

    /// Cgroup ids that have a pin folder.
    fn cgroup_pins(&self) -> Result<Vec<String>> {
        let dir = self.pin_dir().join(enforce::PIN_LAYOUT).join("cgroups");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// Releases everything, stops the agent, removes its pins and socket.
    fn teardown(&self) -> Result<()> {
        let released = if self.agent.borrow_mut().running() {
            self.release_all()
        } else {
            Ok(Vec::new())
        };
        let pid = self.agent.borrow().pid();
        let drained = self.agent.borrow_mut().stop();
        let socket_left = self.socket().exists();
        let pins = self.pin_dir();
        let socket_dir = self.socket().parent().map(Path::to_owned);
        remove_agent_files(&pins, socket_dir.as_deref());

        ensure!(
            released.as_ref().is_ok_and(Vec::is_empty),
            "isolations at teardown: {released:?}"
        );
        ensure!(!pid.is_some_and(sys::pid_alive), "agent {pid:?} still runs");
        ensure!(drained, "the agent did not exit within 5 s of SIGTERM");
        ensure!(!socket_left, "the agent left its socket after SIGTERM");
        ensure!(!pins.exists(), "{} left", pins.display());
        Ok(())
    }
}

impl Drop for Env<'_> {
    fn drop(&mut self) {
        // Reached after teardown, or on a failed start: stop the agent
        // first, then remove the pins (which detaches what they hold).
        let _ = self.agent.borrow_mut().stop();
        let socket_dir = self.socket().parent().map(Path::to_owned);
        remove_agent_files(&self.pin_dir(), socket_dir.as_deref());
    }
}

fn remove_agent_files(pins: &Path, socket_dir: Option<&Path>) {
    if pins.exists() {
        if let Err(e) = std::fs::remove_dir_all(pins) {
            eprintln!("removing {}: {e}", pins.display());
        }
    }
    if let Some(dir) = socket_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------
// The peer's server

/// TCP listeners in the peer namespace that count the connections they
/// accept, read a line, answer `hello` and close.
struct PeerServer {
    counts: Vec<(u16, Arc<AtomicUsize>)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PeerServer {
    fn start(netns: &str, ports: &[u16]) -> Result<Self> {
        let listeners = bind_in_netns(netns, ports)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Self {
            counts: Vec::new(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (port, listener) in ports.iter().zip(listeners) {
            let count = Arc::new(AtomicUsize::new(0));
            server.counts.push((*port, count.clone()));
            let stop = stop.clone();
            listener.set_nonblocking(true)?;
            server
                .threads
                .push(thread::spawn(move || accept_loop(&listener, &count, &stop)));
        }
        Ok(server)
    }

    /// Connections accepted on `port` so far.
    fn accepted(&self, port: u16) -> usize {
        self.counts
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(0, |(_, c)| c.load(Ordering::SeqCst))
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Binds `ports` on [`PEER_IP`] inside network namespace `netns`. A socket
/// stays in the namespace it was made in, so only a short-lived thread
/// moves (namespaces are per thread) and the listeners serve from anywhere.
fn bind_in_netns(netns: &str, ports: &[u16]) -> Result<Vec<TcpListener>> {
    let ns = File::open(Path::new("/run/netns").join(netns))?;
    let ports = ports.to_vec();
    thread::spawn(move || -> Result<Vec<TcpListener>> {
        setns(&ns, CloneFlags::CLONE_NEWNET)?;
        ports
            .iter()
            .map(|port| {
                TcpListener::bind((PEER_IP, *port)).with_context(|| format!("binding {port}"))
            })
            .collect()
    })
    .join()
    .map_err(|_| anyhow!("the thread binding the peer's ports panicked"))?
}

fn accept_loop(listener: &TcpListener, count: &AtomicUsize, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                count.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || greet(conn));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads what the client sends first, answers, and closes only after the
/// client did, so that no unread data turns the close into a reset.
fn greet(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 256];
    let _ = conn.read(&mut buf);
    let _ = conn.write_all(b"hello\n");
    let _ = conn.shutdown(std::net::Shutdown::Write);
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

// ---------------------------------------------------------------------------
// Requests and checks

fn by_name(namespace: &str, name: &str) -> PodSelector {
    PodSelector {
        target: Some(Target::Name(PodName {
            namespace: namespace.into(),
            name: name.into(),
        })),
    }
}

fn by_uid(uid: &str) -> PodSelector {
    PodSelector {
        target: Some(Target::Uid(uid.into())),
    }
}

/// An isolation order in node-probe mode with no allow-list.
fn isolate_order(pod: PodSelector) -> IsolateRequest {
    IsolateRequest {
        pod: Some(pod),
        allow: Vec::new(),
        mode: IsolationMode::AllowNodeProbes.into(),
        reason: "runtime test".into(),
        reference: "RT-1".into(),
        ..Default::default()
    }
}

const SLEEP: &[&str] = &["sleep", "3600"];

/// A busybox httpd on [`POD_WEB_PORT`], for probes from the node.
fn httpd() -> Vec<String> {
    let port = POD_WEB_PORT.to_string();
    ["httpd", "-f", "-p", &port, "-h", "/tmp"]
        .map(String::from)
        .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Connects from container `name` of `pod` to the peer on `port` with
/// busybox `nc`: (exit code, stdout, stderr).
fn connect_out(pod: &Pod<'_>, name: &str, port: u16) -> Result<(i32, String, String)> {
    let script = format!("echo hi | nc -w 2 {PEER_IP} {port}");
    pod.exec(name, &["sh", "-c", &script], Duration::from_secs(5))
}

/// The connection works (retrying while servers start) and reaches the peer.
fn expect_connects(pod: &Pod<'_>, name: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + WARM_UP;
    loop {
        let (code, out, err) = connect_out(pod, name, port)?;
        if code == 0 && out.contains("hello") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{name} -> {PEER_IP}:{port} failed (exit {code}): {}",
                err.trim()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The connection fails at once with EPERM and nothing reaches the peer.
fn expect_refused(env: &Env, pod: &Pod<'_>, name: &str, port: u16) -> Result<()> {
    let before = env.server.accepted(port);
    let started = Instant::now();
    let (code, out, err) = connect_out(pod, name, port)?;
    ensure!(
        code != 0,
        "{name} -> {PEER_IP}:{port} succeeded while isolated: {out}"
    );
    ensure!(
        err.contains(EPERM),
        "{name} -> {PEER_IP}:{port} failed, but not with EPERM (exit {code}): {}",
        err.trim()
    );
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal took {:?}: a timeout, not EPERM at connect",
        started.elapsed()
    );
    ensure!(
        env.server.accepted(port) == before,
        "the peer accepted a connection on {port} while isolated"
    );
    Ok(())
}

fn expect_ping_blocked(pod: &Pod<'_>, name: &str) -> Result<()> {
    let argv = ["ping", "-c", "1", "-W", "1", PEER_IP];
    let (code, out, err) = pod.exec(name, &argv, Duration::from_secs(5))?;
    ensure!(
        code != 0,
        "ping from {name} succeeded while isolated: {out}"
    );
    ensure!(
        err.contains(EPERM),
        "ping failed, not with EPERM: {}",
        err.trim()
    );
    Ok(())
}

fn expect_ping_works(pod: &Pod<'_>, name: &str) -> Result<()> {
    let argv = ["ping", "-c", "1", "-W", "2", PEER_IP];
    let (code, _, err) = pod.exec(name, &argv, Duration::from_secs(5))?;
    ensure!(code == 0, "ping from {name} failed: {}", err.trim());
    Ok(())
}

/// An HTTP exchange from the node (this process, in the host namespace)
/// with the pod's httpd: `Ok(true)` if a reply came, `Ok(false)` if the
/// connection could not be made or no reply came within a second.
fn node_probe(pod_ip: IpAddr) -> Result<bool> {
    let addr = SocketAddr::new(pod_ip, POD_WEB_PORT);
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return Ok(false);
    };
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    if conn.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return Ok(false);
    }
    let mut head = [0u8; 9];
    Ok(conn.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1."))
}

/// Waits for the pod's httpd to answer the node.
fn expect_node_probe_works(pod_ip: IpAddr) -> Result<()> {
    let deadline = Instant::now() + WARM_UP;
    while !node_probe(pod_ip)? {
        ensure!(
            Instant::now() < deadline,
            "the node cannot reach {pod_ip}:{POD_WEB_PORT}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One attachment per hook, each pinned under our pin folder.
fn check_attachments(env: &Env, attachments: &[v1::Attachment]) -> Result<()> {
    let hooks: BTreeSet<&str> = attachments.iter().map(|a| a.hook.as_str()).collect();
    let wanted: BTreeSet<&str> = HOOKS.iter().map(|h| h.name).collect();
    ensure!(
        attachments.len() == 6 && hooks == wanted,
        "attachments are not one per hook: {attachments:?}"
    );
    let pins = env.pin_dir();
    for a in attachments {
        ensure!(
            Path::new(&a.pin).starts_with(&pins) && Path::new(&a.pin).exists(),
            "attachment {} pinned at {} (pins belong under {})",
            a.hook,
            a.pin,
            pins.display()
        );
    }
    Ok(())
}

/// What the kernel holds on the pod's cgroup: our program ids per hook.
fn ours_per_hook(pod: &Pod<'_>) -> Result<Vec<(&'static str, Vec<u32>)>> {
    let state = enforce::inspect(&pod.cgroup_dir()?)?;
    Ok(state.into_iter().map(|(h, s)| (h, s.ours)).collect())
}

fn expect_none_of_ours(pod: &Pod<'_>) -> Result<()> {
    let ours = ours_per_hook(pod)?;
    ensure!(
        ours.iter().all(|(_, ids)| ids.is_empty()),
        "our programs are still attached to the pod's cgroup: {ours:?}"
    );
    Ok(())
}

/// The pod's entry in a ListPods reply, checked against what the harness
/// made: names, UID, cgroup, and every container by id and name. The only
/// container the runtime does not name is the sandbox's own (pause).
fn check_listed<'p>(pods: &'p [v1::Pod], pod: &Pod<'_>) -> Result<&'p v1::Pod> {
    let uid = pod.uid();
    let listed: Vec<&v1::Pod> = pods.iter().filter(|p| p.uid == uid).collect();
    ensure!(
        listed.len() == 1,
        "ListPods has {} pods with uid {uid}",
        listed.len()
    );
    let listed = listed[0];
    let spec = pod.spec();
    ensure!(
        (listed.namespace.as_str(), listed.name.as_str())
            == (spec.namespace.as_str(), spec.name.as_str()),
        "pod {uid} listed as {}/{}, made as {}/{}",
        listed.namespace,
        listed.name,
        spec.namespace,
        spec.name
    );
    let path = format!("/kubepods/besteffort/pod{uid}");
    ensure!(listed.cgroup_path == path, "cgroup {}", listed.cgroup_path);
    for (name, _) in &spec.containers {
        let id = pod.container_id(name)?;
        let found = listed.containers.iter().find(|c| c.id == id);
        let Some(c) = found else {
            bail!(
                "container {name} ({id}) not listed: {:?}",
                listed.containers
            );
        };
        ensure!(c.name == *name, "container {id} listed as {:?}", c.name);
        ensure!(c.cgroup_path == format!("{path}/{id}"), "{c:?}");
        ensure!(
            c.state == "running",
            "container {name} listed as {:?}",
            c.state
        );
    }
    for c in listed
        .containers
        .iter()
        .filter(|c| c.id == pod.sandbox_id())
    {
        ensure!(c.name == "(sandbox)", "sandbox listed as {c:?}");
    }
    if let Some(c) = listed.containers.iter().find(|c| c.name.is_empty()) {
        bail!("unnamed container listed: {c:?}");
    }
    Ok(listed)
}

/// (namespace, name, cgroup, [(container id, name)]) of a pod.
type PodSummary = (String, String, String, Vec<(String, String)>);

fn summary_of(pod: &v1::Pod) -> PodSummary {
    let mut containers: Vec<(String, String)> = pod
        .containers
        .iter()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    containers.sort();
    (
        pod.namespace.clone(),
        pod.name.clone(),
        pod.cgroup_path.clone(),
        containers,
    )
}

fn summary_of_json(pod: &Value) -> PodSummary {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut containers: Vec<(String, String)> = pod["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| (text(&c["id"]), text(&c["name"])))
                .collect()
        })
        .unwrap_or_default();
    containers.sort();
    (
        text(&pod["namespace"]),
        text(&pod["name"]),
        text(&pod["cgroup_path"]),
        containers,
    )
}

/// Allow rules with the single-port form spelled one way (`port_end` 0
/// and `port_end == port` mean the same).
fn normalized(rules: &[AllowRule]) -> Vec<AllowRule> {
    let mut rules = rules.to_vec();
    for rule in &mut rules {
        if rule.port_end == 0 {
            rule.port_end = rule.port;
        }
    }
    rules
}

/// The status code and message of a refused call.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) -> Result<()> {
    match result {
        Ok(reply) => bail!("expected {code:?}, the agent accepted: {reply:?}"),
        Err(status) => {
            ensure!(
                status.code() == code && status.message().contains(needle),
                "expected {code:?} mentioning {needle:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            Ok(())
        }
    }
}

/// Waits until `what` holds, up to `within`.
fn eventually(within: Duration, mut what: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if what()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// The cases

fn agent_discovers_pods_by_name(env: &Env) -> Result<()> {
    let spec_a = PodSpec::new("rt-alpha", "web")
        .container("app", SLEEP)
        .container("sidecar", SLEEP);
    let a = Pod::run(env.cd, spec_a)?;
    let b = Pod::run(env.cd, PodSpec::new("rt-beta", "db").container("db", SLEEP))?;

    let pods = env.pods()?;
    let mut summaries = Vec::new();
    for pod in [&a, &b] {
        let listed = check_listed(&pods, pod)?;
        ensure!(!listed.isolated, "{} listed as isolated", pod.uid());
        summaries.push((pod.uid().to_owned(), summary_of(listed)));
    }

    // The CLI prints the same pods for scripts.
    let json = env.cli_json(&["pods"])?;
    let listed = json["pods"].as_array().context("no pods array")?;
    for (uid, summary) in &summaries {
        let pod = listed
            .iter()
            .find(|p| p["uid"] == uid.as_str())
            .with_context(|| format!("stockade -o json pods lacks {uid}"))?;
        ensure!(
            summary_of_json(pod) == *summary && pod["isolated"] == false,
            "CLI and gRPC disagree on {uid}: {pod}"
        );
    }
    Ok(())
}

fn isolate_by_name_blocks_and_release_restores(env: &Env) -> Result<()> {
    let spec = PodSpec::new("rt-iso", "web")
        .container("app", SLEEP)
        .container("web", &strs(&httpd()));
    let pod = Pod::run(env.cd, spec)?;
    let pod_ip: IpAddr = pod.ip()?.parse()?;
    expect_connects(&pod, "app", PORT_A)?;
    expect_node_probe_works(pod_ip)?;

    let isolation = env.isolate(isolate_order(by_name("rt-iso", "web")))?;
    check_attachments(env, &isolation.attachments)?;
    let listed = isolation.pod.as_ref().context("isolation without pod")?;
    ensure!(
        listed.uid == pod.uid() && listed.namespace == "rt-iso" && listed.name == "web",
        "isolated {listed:?}"
    );
    ensure!(
        isolation.mode() == IsolationMode::AllowNodeProbes,
        "{isolation:?}"
    );
    check_blocked_with_node_probes(env, &pod, pod_ip)?;
    check_listed_isolation(env, &pod)?;

    // Release through the CLI, as an operator would.
    let released = env.cli_json(&["release", "rt-iso/web", "--reason", "runtime test"])?;
    ensure!(
        released["pod"]["uid"] == pod.uid() && released["foreign_programs_left"] == 0,
        "release printed {released}"
    );
    expect_connects(&pod, "app", PORT_A)?;
    expect_ping_works(&pod, "app")?;
    expect_none_of_ours(&pod)?;
    let after = env.pods()?;
    ensure!(
        !check_listed(&after, &pod)?.isolated,
        "still listed as isolated"
    );
    Ok(())
}

/// Inside the isolated pod: connect and ping refused at once; from the
/// node: the pod's web server still answers (node-probe mode).
fn check_blocked_with_node_probes(env: &Env, pod: &Pod<'_>, pod_ip: IpAddr) -> Result<()> {
    expect_refused(env, pod, "app", PORT_A)?;
    expect_refused(env, pod, "web", PORT_B)?;
    expect_ping_blocked(pod, "app")?;
    ensure!(
        node_probe(pod_ip)?,
        "node-probe mode, but the node's HTTP probe of the pod got no answer"
    );
    Ok(())
}

/// ListIsolations (gRPC and CLI) shows the isolation, its mode, its
/// counters and the refused attempt as evidence.
fn check_listed_isolation(env: &Env, pod: &Pod<'_>) -> Result<()> {
    let isolation = env.isolation_of(pod.uid())?;
    ensure!(
        isolation.mode() == IsolationMode::AllowNodeProbes,
        "{isolation:?}"
    );
    check_attachments(env, &isolation.attachments)?;
    let counters = isolation.counters.unwrap_or_default();
    ensure!(
        counters.connects_refused >= 2 && counters.egress_dropped >= 1,
        "counters after two refused connects and a ping: {counters:?}"
    );
    let evidence = eventually(Duration::from_secs(3), || {
        let isolation = env.isolation_of(pod.uid())?;
        Ok(isolation.recent_refusals.iter().any(|r| {
            r.kind == "connect" && r.destination == PEER_IP && r.port == u32::from(PORT_A)
        }))
    })?;
    ensure!(evidence, "no refusal of {PEER_IP}:{PORT_A} recorded");

    let json = env.cli_json(&["isolations"])?;
    let listed = json["isolations"]
        .as_array()
        .context("no isolations array")?;
    let ours = listed
        .iter()
        .find(|i| i["pod"]["uid"] == pod.uid())
        .context("stockade -o json isolations lacks the pod")?;
    ensure!(
        ours["mode"] == "ISOLATION_MODE_ALLOW_NODE_PROBES"
            && ours["pod"]["namespace"] == "rt-iso"
            && ours["attachments"].as_array().map(Vec::len) == Some(6)
            && ours["counters"]["connects_refused"].as_u64() >= Some(2),
        "stockade -o json isolations printed {ours}"
    );
    Ok(())
}

fn isolate_by_uid_and_strict_mode(env: &Env) -> Result<()> {
    let spec = PodSpec::new("rt-strict", "db")
        .container("app", SLEEP)
        .container("web", &strs(&httpd()));
    let pod = Pod::run(env.cd, spec)?;
    let pod_ip: IpAddr = pod.ip()?.parse()?;
    expect_connects(&pod, "app", PORT_A)?;
    expect_connects(&pod, "app", PORT_B)?;
    expect_node_probe_works(pod_ip)?;

    let rule = AllowRule {
        cidr: format!("{PEER_IP}/32"),
        protocol: Protocol::Tcp.into(),
        port: u32::from(PORT_A),
        ..Default::default()
    };
    let mut order = isolate_order(by_uid(pod.uid()));
    order.mode = IsolationMode::Strict.into();
    order.allow = vec![rule.clone()];
    let isolation = env.isolate(order)?;
    check_attachments(env, &isolation.attachments)?;
    ensure!(
        isolation.mode() == IsolationMode::Strict
            && normalized(&isolation.allow) == normalized(&[rule]),
        "isolation reads back as {:?} with {:?}",
        isolation.mode(),
        isolation.allow
    );

    expect_connects(&pod, "app", PORT_A)?;
    expect_refused(env, &pod, "app", PORT_B)?;
    expect_ping_blocked(&pod, "app")?;
    ensure!(
        !node_probe(pod_ip)?,
        "strict mode, but the node's HTTP probe of the pod got an answer"
    );

    env.release(by_uid(pod.uid()))?;
    expect_connects(&pod, "app", PORT_B)?;
    expect_node_probe_works(pod_ip)?;
    expect_none_of_ours(&pod)
}

fn container_restart_stays_isolated(env: &Env) -> Result<()> {
    let spec = PodSpec::new("rt-restart", "twin")
        .container("app", SLEEP)
        .container("sidecar", SLEEP);
    let mut pod = Pod::run(env.cd, spec)?;
    expect_connects(&pod, "app", PORT_A)?;
    let isolation = env.isolate(isolate_order(by_name("rt-restart", "twin")))?;
    check_attachments(env, &isolation.attachments)?;

    let old = pod.container_id("app")?;
    let new = pod.restart_container("app")?;
    ensure!(new != old, "the restart kept container id {old}");
    let pid = pod.container_pid("app")?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = format!("0::/kubepods/besteffort/pod{}/{new}", pod.uid());
    ensure!(
        cgroup.lines().any(|l| l == rel),
        "new container not in its own cgroup under the pod: {cgroup}"
    );

    expect_refused(env, &pod, "app", PORT_A)?;
    expect_ping_blocked(&pod, "app")?;
    expect_refused(env, &pod, "sidecar", PORT_A)?;

    let pods = env.pods()?;
    let listed = check_listed(&pods, &pod)?;
    ensure!(
        listed.isolated,
        "the restarted pod is not listed as isolated"
    );
    ensure!(
        !listed.containers.iter().any(|c| c.id == old),
        "the dead container {old} is still listed"
    );
    let isolation = env.isolation_of(pod.uid())?;
    let covered: Vec<&str> = isolation
        .pod
        .iter()
        .flat_map(|p| p.containers.iter().map(|c| c.id.as_str()))
        .collect();
    ensure!(
        covered.contains(&new.as_str()) && !covered.contains(&old.as_str()),
        "ListIsolations lists the containers {covered:?}, not the new one {new}"
    );

    env.release(by_name("rt-restart", "twin"))?;
    expect_connects(&pod, "app", PORT_A)?;
    expect_none_of_ours(&pod)
}

fn refusals_name_the_field_or_reason(env: &Env) -> Result<()> {
    let pod = Pod::run(
        env.cd,
        PodSpec::new("rt-refuse", "target").container("app", SLEEP),
    )?;
    let target = || by_name("rt-refuse", "target");

    refused(
        env.isolate(isolate_order(by_name("rt-refuse", "no-such-pod"))),
        Code::NotFound,
        "rt-refuse/no-such-pod",
    )?;
    let mut bad_cidr = isolate_order(target());
    bad_cidr.allow = vec![AllowRule {
        cidr: "10.0.0.300/24".into(),
        ..Default::default()
    }];
    refused(
        env.isolate(bad_cidr),
        Code::InvalidArgument,
        "allow[0].cidr",
    )?;
    let mut no_reason = isolate_order(target());
    no_reason.reason = String::new();
    refused(env.isolate(no_reason), Code::InvalidArgument, "reason")?;
    expect_none_of_ours(&pod).context("after refused orders")?;
    refused(env.release(target()), Code::NotFound, "not isolated")?;

    env.isolate(isolate_order(target()))?;
    refused(
        env.isolate(isolate_order(target())),
        Code::AlreadyExists,
        pod.uid(),
    )?;
    env.release(target())?;
    refused(env.release(target()), Code::NotFound, "not isolated")?;

    // The CLI says it too, and exits with 2 (the order cannot apply).
    let out = env.cli_run(&["isolate", "rt-refuse/no-such-pod", "--reason", "test"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("not on node"),
        "stockade isolate of a missing pod: {} {err}",
        out.status
    );
    expect_none_of_ours(&pod)
}

fn agent_restart_keeps_isolation(env: &Env) -> Result<()> {
    let probe = format!("while true; do echo p | nc -w 1 {PEER_IP} {PORT_PROBE}; sleep 0.1; done");
    let spec = PodSpec::new("rt-survive", "prober").container("prober", &["sh", "-c", &probe]);
    let pod = Pod::run(env.cd, spec)?;
    let start = env.server.accepted(PORT_PROBE);
    let probing = eventually(WARM_UP, || Ok(env.server.accepted(PORT_PROBE) >= start + 3))?;
    ensure!(probing, "the pod's probes do not reach the peer");

    let isolation = env.isolate(isolate_order(by_name("rt-survive", "prober")))?;
    check_attachments(env, &isolation.attachments)?;
    // A probe accepted just before the order may be counted just after it.
    thread::sleep(Duration::from_millis(300));
    let blocked_at = env.server.accepted(PORT_PROBE);

    let pid = env.agent.borrow().pid().context("no agent")?;
    env.agent.borrow_mut().kill9()?;
    ensure!(!sys::pid_alive(pid), "agent {pid} survived SIGKILL");
    expect_refused(env, &pod, "prober", PORT_A).context("while the agent is down")?;
    thread::sleep(Duration::from_millis(1500));
    let probes = env.server.accepted(PORT_PROBE) - blocked_at;
    ensure!(
        probes == 0,
        "{probes} probes got through while the agent was down"
    );

    env.start_agent().context("restarting the agent")?;
    check_adopted(env, &pod)?;
    let probes = env.server.accepted(PORT_PROBE) - blocked_at;
    ensure!(
        probes == 0,
        "{probes} probes got through across the restart"
    );

    env.release(by_name("rt-survive", "prober"))?;
    expect_none_of_ours(&pod)?;
    let resumed = eventually(Duration::from_secs(5), || {
        Ok(env.server.accepted(PORT_PROBE) > blocked_at)
    })?;
    ensure!(resumed, "the probes do not get through after the release");
    Ok(())
}

/// The restarted agent lists the isolation, and the kernel holds exactly
/// one of our programs per hook: the ones the pins hold.
fn check_adopted(env: &Env, pod: &Pod<'_>) -> Result<()> {
    let isolation = env.isolation_of(pod.uid())?;
    ensure!(
        isolation.mode() == IsolationMode::AllowNodeProbes,
        "adopted in mode {:?}",
        isolation.mode()
    );
    check_attachments(env, &isolation.attachments)?;
    for (hook, ids) in ours_per_hook(pod)? {
        let pinned = isolation
            .attachments
            .iter()
            .find(|a| a.hook == hook)
            .map(|a| a.program_id);
        ensure!(
            ids.len() == 1 && pinned == Some(ids[0]),
            "hook {hook} holds our programs {ids:?}; the pin holds {pinned:?}"
        );
    }
    let pods = env.pods()?;
    ensure!(check_listed(&pods, pod)?.isolated, "not listed as isolated");
    Ok(())
}

/// An isolation with a 2 s TTL is lifted by the agent itself, with no
/// coordinator, and its order reads back as expired.
fn a_short_ttl_expires_on_a_real_pod(env: &Env) -> Result<()> {
    let spec = PodSpec::new("rt-ttl", "brief").container("app", SLEEP);
    let pod = Pod::run(env.cd, spec)?;
    expect_connects(&pod, "app", PORT_A)?;

    let mut order = isolate_order(by_uid(pod.uid()));
    order.ttl_seconds = 2;
    order.order_id = format!("ttl-{}", pod.uid());
    let isolation = env.isolate(order.clone())?;
    ensure!(
        isolation.expires_at.is_some(),
        "no expiry in the reply: {isolation:?}"
    );
    expect_refused(env, &pod, "app", PORT_A)?;

    // A dry run of an extension answers, and leaves the 2 s TTL alone.
    let extend = v1::ExtendIsolationRequest {
        pod: Some(by_uid(pod.uid())),
        ttl_seconds: 3600,
        dry_run: true,
        ..Default::default()
    };
    let planned = env
        .rpc(|mut c| async move { c.extend_isolation(extend).await })
        .map_err(|s| anyhow!("dry extend: {s}"))?;
    ensure!(planned.dry_run, "the dry extension did not say dry_run");
    ensure!(
        planned.isolation.and_then(|i| i.expires_at).is_some(),
        "the dry extension did not say when the isolation would expire"
    );

    let lifted = eventually(Duration::from_secs(5), || {
        Ok(ours_per_hook(&pod)?.iter().all(|(_, ours)| ours.is_empty()))
    })?;
    ensure!(
        lifted,
        "the isolation was still attached 5 s after its 2 s TTL"
    );
    let id = order.order_id.clone();
    let got = env.rpc(|mut c| async move { c.get_order(v1::GetOrderRequest { id }).await });
    let state = got.map_err(|s| anyhow!("GetOrder: {s}"))?.state();
    ensure!(
        state == v1::OrderState::Expired,
        "the order reads back as {state:?}"
    );
    expect_connects(&pod, "app", PORT_A)
}
