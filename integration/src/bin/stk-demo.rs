//! `stk-demo`: Stockade on this node, on a real pod. Run by `cargo xtask
//! demo` as root, after `cargo xtask setup`.
//!
//! A private containerd runs a pod whose container streams a line every
//! 100 ms over one long-lived TCP connection to a server in a network
//! namespace the demo made. The real agent isolates the pod through the
//! real CLI; the demo shows the open stream stop, a new connection and a
//! ping fail, then the release; then it freezes the pod (its processes
//! stop), thaws it, kills it (its cgroup empties), and prints a timeline.
//! Everything it made is removed at the end, also on Ctrl-C.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use stockade_integration::{preflight, Containerd, PeerNs, Pod, PodSpec};

const SERVER_IP: &str = "10.213.0.250";
const SERVER_PORT: u16 = 7000;
const PIN_DIR: &str = "/sys/fs/bpf/stockade-demo";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo needs root: run `sudo cargo xtask demo`");
    }
    install_interrupt_handler()?;
    preflight()?;
    let work = PathBuf::from(format!("/run/stockade-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&work);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(PIN_DIR);
    match &result {
        Ok(()) => println!("\ncleaned up: pod, containerd, namespaces, pins. Demo complete."),
        Err(e) => eprintln!("\ndemo failed: {e:#}\n(everything it made was removed)"),
    }
    result
}

fn run(work: &Path) -> Result<()> {
    let mut timeline = Timeline::new();
    step("starting a private containerd (its own root, state and socket)");
    let containerd = Containerd::start(&work.join("containerd"))?;
    timeline.mark("containerd ready");
    check_interrupt()?;

    step(&format!(
        "starting a server in network namespace stk-demo-peer at {SERVER_IP}"
    ));
    let peer = PeerNs::create("stk-demo-peer", &format!("{SERVER_IP}/24"))?;
    let server = Server::start(peer.name())?;

    step("running pod demo/web: its container streams a line every 100 ms to the server");
    let stream =
        format!("while true; do echo tick; sleep 0.1; done | nc {SERVER_IP} {SERVER_PORT}");
    let spec = PodSpec::new("demo", "web")
        .container("app", &["sh", "-c", &stream])
        .container("sidecar", &["sleep", "3600"]);
    let pod = Pod::run(&containerd, spec)?;
    timeline.mark("pod running");
    server.wait_for_lines(5, Duration::from_secs(20))?;
    println!(
        "   the server is receiving the stream ({} lines so far)",
        server.count()
    );
    check_interrupt()?;

    step("starting stockade-agent, pointed at the runtime's CRI socket");
    let agent = Agent::start(work, containerd.socket())?;
    timeline.mark("agent serving");
    agent.cli(&["pods"])?;
    check_interrupt()?;

    step("isolating demo/web with the CLI");
    let before = server.count();
    let sent = Instant::now();
    timeline.mark("isolate order sent");
    agent.cli(&[
        "isolate",
        "demo/web",
        "--reason",
        "demo: beaconing to a known C2",
        "--ref",
        "DEMO-1",
    ])?;
    timeline.mark("isolate reply received (verified)");
    thread::sleep(Duration::from_millis(1500));
    let after = server.count();
    let last = match server.last_line_at() {
        Some(t) if t >= sent => format!("the last {} ms after it", (t - sent).as_millis()),
        Some(t) => format!("the last {} ms before it", (sent - t).as_millis()),
        None => "none at all".into(),
    };
    println!(
        "   the open stream stopped: {} line(s) arrived after the order was sent ({last}), \
         none in the 1.5 s since the reply",
        after - before
    );
    expect_failure(
        &pod,
        "a new connection",
        &[
            "sh",
            "-c",
            &format!("echo hi | nc -w 2 {SERVER_IP} {SERVER_PORT}"),
        ],
    )?;
    expect_failure(&pod, "ping", &["ping", "-c", "1", "-W", "1", SERVER_IP])?;
    timeline.mark("new connection and ping refused");
    agent.cli(&["isolations"])?;
    check_interrupt()?;

    step("releasing demo/web");
    agent.cli(&["release", "demo/web", "--reason", "demo: false positive"])?;
    timeline.mark("release reply received (verified)");
    expect_success(
        &pod,
        "a new connection",
        &[
            "sh",
            "-c",
            &format!("echo hi | nc -w 2 {SERVER_IP} {SERVER_PORT}"),
        ],
    )?;
    expect_success(&pod, "ping", &["ping", "-c", "1", "-W", "2", SERVER_IP])?;
    timeline.mark("traffic flowing again");
    check_interrupt()?;

    freeze_thaw_kill(&agent, &pod, &server, &mut timeline)?;

    timeline.print();
    agent.stop();
    drop(pod);
    drop(server);
    drop(peer);
    drop(containerd);
    Ok(())
}

/// Freezes the pod (its shell stops where it stands and the stream
/// pauses), thaws it (the stream resumes), then kills it (its cgroup
/// empties).
fn freeze_thaw_kill(
    agent: &Agent,
    pod: &Pod<'_>,
    server: &Server,
    timeline: &mut Timeline,
) -> Result<()> {
    step("freezing demo/web: every process stops where it stands, memory kept");
    let shell = pod.container_pid("app")?;
    agent.cli(&[
        "freeze",
        "demo/web",
        "--reason",
        "demo: keep the evidence in memory",
    ])?;
    timeline.mark("freeze reply received (frozen 1 verified)");
    let (lines, switches) = (server.count(), context_switches(shell)?);
    thread::sleep(Duration::from_secs(1));
    println!(
        "   pid {shell} (the app's shell): cgroup.events says {}; in 1 s it was scheduled {} \
         time(s) and the server got {} line(s)",
        cgroup_events(pod)?,
        context_switches(shell)? - switches,
        server.count() - lines
    );
    check_interrupt()?;

    step("thawing demo/web");
    agent.cli(&["thaw", "demo/web"])?;
    let lines = server.count();
    thread::sleep(Duration::from_millis(500));
    println!(
        "   the stream runs again: {} line(s) in 0.5 s",
        server.count() - lines
    );
    timeline.mark("thawed, stream running again");
    check_interrupt()?;

    step("killing demo/web: cgroup.kill on the pod, the runtime told too");
    agent.cli(&["kill", "demo/web", "--reason", "demo: done with it"])?;
    timeline.mark("kill reply received (populated 0 verified)");
    let left = pids_in(&pod.cgroup_dir()?);
    println!(
        "   the pod's cgroup now: {}, {left} process(es) in it and below",
        cgroup_events(pod)?
    );
    if left != 0 {
        bail!("{left} process(es) left in the killed pod");
    }
    Ok(())
}

/// `cgroup.events` of the pod, on one line.
fn cgroup_events(pod: &Pod<'_>) -> Result<String> {
    let text = std::fs::read_to_string(pod.cgroup_dir()?.join("cgroup.events"))?;
    Ok(text.lines().collect::<Vec<_>>().join(", "))
}

/// How often `pid` gave up the CPU; it grows while the shell loops.
fn context_switches(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no voluntary_ctxt_switches in /proc/PID/status")
}

/// Processes in `dir` and every cgroup below it.
fn pids_in(dir: &Path) -> usize {
    let own = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let children = std::fs::read_dir(dir).into_iter().flatten().flatten();
    own + children
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| pids_in(&e.path()))
        .sum::<usize>()
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn install_interrupt_handler() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Runs `argv` in the pod's app container and expects it to fail.
fn expect_failure(pod: &Pod<'_>, what: &str, argv: &[&str]) -> Result<()> {
    let (code, out, err) = pod.exec("app", argv, Duration::from_secs(5))?;
    if code == 0 {
        bail!("{what} from the isolated pod succeeded: {out}");
    }
    println!(
        "   {what} from the pod fails at once: {}",
        first_line(&err, &out)
    );
    Ok(())
}

/// Runs `argv` in the pod's app container and expects it to succeed.
fn expect_success(pod: &Pod<'_>, what: &str, argv: &[&str]) -> Result<()> {
    let (code, out, err) = pod.exec("app", argv, Duration::from_secs(5))?;
    if code != 0 {
        bail!(
            "{what} from the released pod failed (exit {code}): {}",
            first_line(&err, &out)
        );
    }
    println!("   {what} from the pod works again");
    Ok(())
}

fn first_line<'a>(err: &'a str, out: &'a str) -> &'a str {
    let text = if err.trim().is_empty() { out } else { err };
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
}

/// Moments of the demo, relative to its start.
struct Timeline {
    start: Instant,
    marks: Vec<(Duration, String)>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, what: &str) {
        self.marks.push((self.start.elapsed(), what.to_owned()));
    }

    fn print(&self) {
        step("timeline");
        for (at, what) in &self.marks {
            println!("   {:>9.3} s  {what}", at.as_secs_f64());
        }
    }
}

/// A TCP server in the peer namespace that counts the lines it receives
/// and echoes them back.
struct Server {
    lines: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(netns: &str) -> Result<Self> {
        let ns = File::open(Path::new("/run/netns").join(netns))?;
        let addr: SocketAddr = format!("{SERVER_IP}:{SERVER_PORT}").parse()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (l2, s2) = (lines.clone(), stop.clone());
        thread::spawn(move || {
            // Network namespaces are per thread: only this thread moves.
            let listener = setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok(TcpListener::bind(addr)?));
            let listener = match listener {
                Ok(l) => l,
                Err(e) => return drop(tx.send(Err(e))),
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            accept_loop(&listener, &l2, &s2);
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("the server did not start")??;
        Ok(Self { lines, stop })
    }

    fn count(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn last_line_at(&self) -> Option<Instant> {
        self.lines.lock().ok()?.last().copied()
    }

    fn wait_for_lines(&self, n: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.count() < n {
            check_interrupt()?;
            if Instant::now() > deadline {
                bail!("the pod's stream did not reach the server within {within:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, lines: &Arc<Mutex<Vec<Instant>>>, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (lines, stop) = (lines.clone(), stop.clone());
                thread::spawn(move || serve(conn, &lines, &stop));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve(conn: TcpStream, lines: &Mutex<Vec<Instant>>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if let Ok(mut l) = lines.lock() {
                    l.push(Instant::now());
                }
                let _ = writer.write_all(line.as_bytes());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// The real agent and CLI binaries, built beside this one.
struct Agent {
    child: Child,
    socket: PathBuf,
    cli: PathBuf,
}

impl Agent {
    fn start(work: &Path, cri_socket: &Path) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let socket = work.join("agent.sock");
        let log = File::create(work.join("agent.log"))?;
        let child = Command::new(exe.with_file_name("stockade-agent"))
            .arg("--cri-socket")
            .arg(cri_socket)
            .arg("--socket")
            .arg(&socket)
            .args(["--pin-dir", PIN_DIR, "--node-name", "demo-node"])
            .arg("--state-dir")
            .arg(work.join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Ctrl-C reaches the demo, which stops it.
            .process_group(0)
            .spawn()
            .context("cannot start stockade-agent (was the workspace built?)")?;
        let agent = Self {
            child,
            socket,
            cli: exe.with_file_name("stockade"),
        };
        agent.wait_ready()?;
        println!("   agent log: {}", work.join("agent.log").display());
        Ok(agent)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new(&self.cli)
            .arg("status")
            .env("STOCKADE_SOCKET", &self.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            check_interrupt()?;
            if Instant::now() > deadline {
                bail!("the agent did not answer within 30 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Runs the CLI as an operator would, showing the command and output.
    fn cli(&self, args: &[&str]) -> Result<()> {
        println!(
            "   $ stockade {}",
            args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
        );
        let out = Command::new(&self.cli)
            .args(args)
            .env("STOCKADE_SOCKET", &self.socket)
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("   | {line}");
        }
        if !out.status.success() {
            bail!(
                "stockade {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Reached on failure paths only (stop() consumes self otherwise):
        // thaw and lift anything still frozen or isolated, then end the
        // agent.
        let _ = Command::new(&self.cli)
            .args(["thaw", "demo/web"])
            .env("STOCKADE_SOCKET", &self.socket)
            .output();
        let _ = Command::new(&self.cli)
            .args(["release", "demo/web", "--reason", "demo cleanup"])
            .env("STOCKADE_SOCKET", &self.socket)
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn quote(arg: &str) -> String {
    if arg.contains(' ') {
        format!("{arg:?}")
    } else {
        arg.to_owned()
    }
}
