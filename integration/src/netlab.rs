//! A small lab for kernel tests: test cgroups, network namespaces joined by
//! veth pairs, processes started inside a "pod" (a cgroup and a namespace),
//! and pin folders in bpffs.
//!
//! Every object is a guard that removes what it made when dropped, also
//! when a test fails half-way. Names carry the test process id and a
//! counter, so tests running in parallel never share anything.
//!
//! Traffic stays inside the namespaces made here: addresses come from
//! 10.250.x.0/24 and fd00:250:x::/64, which exist only on the veths below.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sched::CloneFlags;

/// Where bpffs is expected; tests pin below it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// How long a test cgroup may take to empty after `cgroup.kill`.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// How often a deadline loop looks again.
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum NetlabError {
    #[error("kernel tests need root (effective uid 0) but run as uid {euid}; run them with sudo")]
    NotRoot { euid: u32 },
    #[error("cannot read {path}")]
    ReadMounts {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot mount bpffs at {BPFFS}")]
    MountBpffs {
        #[source]
        source: nix::Error,
    },
    #[error("cannot {op} {path}")]
    Fs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot enter network namespace {name}")]
    EnterNetns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cgroup {path} still holds processes {waited:?} after cgroup.kill")]
    StillPopulated { path: PathBuf, waited: Duration },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` printed no line within {waited:?}; stderr: {stderr}")]
    NoLine {
        command: String,
        waited: Duration,
        stderr: String,
    },
    #[error("`{command}` did not exit within {waited:?}")]
    NoExit { command: String, waited: Duration },
}

pub type Result<T, E = NetlabError> = std::result::Result<T, E>;

fn fs_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NetlabError {
    let path = path.to_owned();
    move |source| NetlabError::Fs { op, path, source }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A process-wide counter; with the pid it makes every name unique.
fn next_number() -> u32 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `<prefix>-<pid>-<n>`, unique on this machine while this process lives.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_number())
}

/// Fails with a message that says why when the tests do not run as root.
pub fn require_root() -> Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(NetlabError::NotRoot { euid });
    }
    Ok(())
}

/// The mount point of the cgroup2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = read_mounts()?;
    mounts
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(p, _)| p)
        .ok_or(NetlabError::NoCgroup2)
}

/// Mounts bpffs at [`BPFFS`] unless it is mounted there already.
pub fn ensure_bpffs() -> Result<()> {
    let mounted = read_mounts()?
        .iter()
        .any(|(point, fstype)| fstype == "bpf" && point == Path::new(BPFFS));
    if mounted {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| NetlabError::MountBpffs { source })
}

fn read_mounts() -> Result<Vec<(PathBuf, String)>> {
    let path = "/proc/self/mountinfo";
    let text =
        fs::read_to_string(path).map_err(|source| NetlabError::ReadMounts { path, source })?;
    Ok(parse_mountinfo(&text))
}

/// (mount point, file system type) of every line of a mountinfo file.
fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            // The optional fields end at " - "; the type comes right after.
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            Some((PathBuf::from(unescape_octal(point)), fstype.to_owned()))
        })
        .collect()
}

/// Undoes the `\040`-style escapes the kernel writes for spaces and tabs.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok());
        match code.and_then(|d| u8::from_str_radix(d, 8).ok()) {
            Some(byte) if bytes[i] == b'\\' => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id of a cgroup2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(fs_err("stat", path))
}

/// A pin folder in bpffs, `/sys/fs/bpf/stockade-test-<pid>-<n>`; removed
/// with everything below it when dropped. Created by whoever pins first.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new() -> Result<Self> {
        ensure_bpffs()?;
        Ok(Self {
            path: Path::new(BPFFS).join(unique_name("stockade-test")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => eprintln!(
                "netlab: cannot remove pin folder {}: {err}",
                self.path.display()
            ),
        }
    }
}

/// A test cgroup `<cgroup2>/stockade-test-<pid>-<n>/pod`, the "pod".
///
/// Dropping it kills every process below the top folder through
/// `cgroup.kill`, waits until it is empty, and removes every folder bottom-up.
pub struct TestCgroup {
    top: PathBuf,
    pod: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Result<Self> {
        let top = cgroup2_mount()?.join(unique_name("stockade-test"));
        fs::create_dir(&top).map_err(fs_err("create cgroup", &top))?;
        let guard = Self {
            pod: top.join("pod"),
            top,
        };
        fs::create_dir(&guard.pod).map_err(fs_err("create cgroup", &guard.pod))?;
        Ok(guard)
    }

    /// The pod cgroup.
    pub fn path(&self) -> &Path {
        &self.pod
    }

    /// The folder above the pod (where a node-wide tool would attach).
    pub fn parent(&self) -> &Path {
        &self.top
    }

    /// The pod cgroup's id.
    pub fn id(&self) -> Result<u64> {
        cgroup_id(&self.pod)
    }

    /// Creates `pod/<name>`, a container's cgroup.
    pub fn child(&self, name: &str) -> Result<PathBuf> {
        let path = self.pod.join(name);
        fs::create_dir(&path).map_err(fs_err("create cgroup", &path))?;
        Ok(path)
    }

    /// Kills every process below the top folder and waits until none is left.
    pub fn kill_all(&self) -> Result<()> {
        let kill = self.top.join("cgroup.kill");
        fs::write(&kill, "1").map_err(fs_err("write", &kill))?;
        let events = self.top.join("cgroup.events");
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&events).map_err(fs_err("read", &events))?;
            if text.lines().any(|l| l == "populated 0") {
                return Ok(());
            }
            if started.elapsed() > KILL_DEADLINE {
                return Err(NetlabError::StillPopulated {
                    path: self.top.clone(),
                    waited: KILL_DEADLINE,
                });
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(err) = self.kill_all() {
            eprintln!("netlab: {err}");
        }
        if let Err(err) = remove_cgroup_tree(&self.top) {
            eprintln!("netlab: {err}");
        }
    }
}

/// Removes a cgroup folder and every folder below it, deepest first.
fn remove_cgroup_tree(path: &Path) -> Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(fs_err("list", path)(err)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    fs::remove_dir(path).map_err(fs_err("remove cgroup", path))
}

/// Runs a command to completion; its stderr becomes the error.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetlabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(NetlabError::Command {
            command,
            status: out.status,
            stderr,
        });
    }
    Ok(())
}

/// Concurrent `ip netns add` calls race while they set up the shared
/// mount of /run/netns, so this process makes them one at a time.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// A named network namespace (`ip netns add`), with loopback up; deleted
/// when dropped.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new namespace named `stk-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Self> {
        let name = unique_name(&format!("stk-{tag}"));
        {
            let _one_at_a_time = NETNS_ADD
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run("ip", &["netns", "add", &name])?;
        }
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A descriptor of the namespace, for `setns(2)`.
    pub fn open(&self) -> Result<File> {
        let path = self.path();
        File::open(&path).map_err(fs_err("open", &path))
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("netlab: {err}");
        }
    }
}

/// One test link's addresses: 10.250.x.0/24 and fd00:250:x::/64.
#[derive(Debug, Clone, Copy)]
pub struct Subnet {
    x: u8,
}

impl Subnet {
    /// A subnet no other link of this process is using (254 at a time).
    pub fn next() -> Self {
        Self {
            x: (next_number() % 254 + 1) as u8,
        }
    }

    pub fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.x, host)
    }

    pub fn v6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x250, self.x.into(), 0, 0, 0, 0, host.into())
    }

    /// Both addresses of `host`, with their prefix lengths.
    pub fn host(&self, host: u8) -> [(IpAddr, u8); 2] {
        [(self.v4(host).into(), 24), (self.v6(host).into(), 64)]
    }
}

/// A veth pair between two namespaces; deleted when dropped (deleting
/// either end deletes both).
pub struct Veth {
    ns: String,
    name: String,
}

/// Joins `a` and `b` with a veth pair, gives each end its addresses
/// (IPv6 without duplicate address detection, so they work at once) and
/// sets both ends up.
pub fn veth_pair(
    a: &NetNs,
    addrs_a: &[(IpAddr, u8)],
    b: &NetNs,
    addrs_b: &[(IpAddr, u8)],
) -> Result<Veth> {
    let n = next_number();
    let (name_a, name_b) = (format!("stkv{n}a"), format!("stkv{n}b"));
    a.ip(&[
        "link",
        "add",
        &name_a,
        "type",
        "veth",
        "peer",
        "name",
        &name_b,
        "netns",
        b.name(),
    ])?;
    let veth = Veth {
        ns: a.name().to_owned(),
        name: name_a.clone(),
    };

    configure_end(a, &name_a, addrs_a)?;
    configure_end(b, &name_b, addrs_b)?;
    Ok(veth)
}

fn configure_end(ns: &NetNs, dev: &str, addrs: &[(IpAddr, u8)]) -> Result<()> {
    for (addr, prefix) in addrs {
        let cidr = format!("{addr}/{prefix}");
        match addr {
            IpAddr::V4(_) => ns.ip(&["addr", "add", &cidr, "dev", dev])?,
            IpAddr::V6(_) => ns.ip(&["-6", "addr", "add", &cidr, "dev", dev, "nodad"])?,
        }
    }
    ns.ip(&["link", "set", dev, "up"])
}

impl Drop for Veth {
    fn drop(&mut self) {
        // The namespace may be gone already, and the pair with it.
        let _ = run("ip", &["-n", &self.ns, "link", "del", &self.name]);
    }
}

/// Runs `f` on a thread of its own that has entered `ns`, so that the
/// sockets `f` makes belong to that namespace (and keep belonging to it
/// when used from other threads). A panic in `f` goes on in the caller.
pub fn run_in_ns<T, F>(ns: &NetNs, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = ns.open()?;
    let name = ns.name().to_owned();
    thread::scope(|scope| {
        let handle = scope.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetlabError::EnterNetns { name, source })?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// A TCP echo server listening inside a namespace, served by threads of
/// this process; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `ip:port` in `ns` (port 0 picks a free one).
    pub fn start(ns: &NetNs, ip: IpAddr, port: u16) -> Result<Self> {
        let addr = SocketAddr::new(ip, port);
        let listen_err = |source| NetlabError::Listen { addr, source };
        let listener = run_in_ns(ns, || TcpListener::bind(addr))?.map_err(listen_err)?;
        // Non-blocking, so that the accepting thread sees `stop` in time.
        listener.set_nonblocking(true).map_err(listen_err)?;
        let addr = listener.local_addr().unwrap_or(addr);

        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || accept_loop(&listener, &stop))
        };
        Ok(Self {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, _)) => {
                let stop = Arc::clone(stop);
                thread::spawn(move || echo_until(sock, &stop));
            }
            // WouldBlock, or a session that died before it was accepted.
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn echo_until(sock: TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    if sock.set_nonblocking(false).is_err() || sock.set_read_timeout(Some(POLL * 10)).is_err() {
        return;
    }
    let (mut reader, mut writer) = (&sock, &sock);
    while !stop.load(Ordering::Relaxed) {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if writer.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Sends one line on `sock` and waits up to `wait` for it to come back.
/// A session that has broken counts as not echoed.
pub fn echoes(sock: &TcpStream, line: &str, wait: Duration) -> bool {
    let mut writer = sock;
    if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
        return false;
    }
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut reader = sock;
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match reader.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => {
                if got == line.as_bytes() {
                    return true;
                }
                got.clear();
            }
            Ok(1) => got.push(byte[0]),
            _ => return false,
        }
    }
}

/// One line a process printed, with the time this process read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// A process started inside a test cgroup and namespace. Its stdout is
/// read line by line; it is killed (by pid) and reaped when dropped.
pub struct Process {
    command: String,
    child: Child,
    lines: Receiver<Line>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Starts `argv` as a member of the cgroup at `cgroup` and of network
/// namespace `ns`. The child moves itself in between fork and exec, so
/// every socket it ever makes belongs to that cgroup and namespace.
pub fn spawn(cgroup: &Path, ns: &NetNs, argv: &[&str]) -> Result<Process> {
    let command = argv.join(" ");
    let procs_path = cgroup.join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(fs_err("open", &procs_path))?;
    let netns = ns.open()?;
    let (program, args) = argv.split_first().ok_or_else(|| NetlabError::Spawn {
        command: command.clone(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty argv"),
    })?;

    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (procs_fd, netns_fd) = (procs.as_raw_fd(), netns.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec; it only
    // calls setns(2) and write(2), which are async-signal-safe, and
    // allocates nothing. Both descriptors stay open in the parent (the
    // files live until after `spawn` returns), so they are valid in the
    // child; they are close-on-exec, so the new program does not inherit them.
    unsafe {
        cmd.pre_exec(move || enter_pod(procs_fd, netns_fd));
    }
    let mut child = cmd.spawn().map_err(|source| NetlabError::Spawn {
        command: command.clone(),
        source,
    })?;
    drop((procs, netns));

    let lines = read_lines(child.stdout.take());
    let stderr = collect_lines(child.stderr.take());
    Ok(Process {
        command,
        child,
        lines,
        stderr,
    })
}

/// In the child: joins the namespace, then the cgroup.
fn enter_pod(procs_fd: RawFd, netns_fd: RawFd) -> io::Result<()> {
    // SAFETY: plain system calls on descriptors the parent keeps open;
    // no memory is shared with the kernel beyond the one-byte buffer,
    // which outlives the call.
    unsafe {
        if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Writing "0" to cgroup.procs moves the writer itself.
        if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn read_lines(out: Option<impl Read + Send + 'static>) -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = out {
        thread::spawn(move || {
            for text in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx
                    .send(Line {
                        at: Instant::now(),
                        text,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    rx
}

fn collect_lines(out: Option<impl Read + Send + 'static>) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    if let Some(out) = out {
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for text in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if let Ok(mut all) = sink.lock() {
                    all.push(text);
                }
            }
        });
    }
    lines
}

/// How a process that ran to its end finished.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// From the call to [`Process::finish`] to the exit.
    pub elapsed: Duration,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The next stdout line, if one comes within `wait`.
    pub fn next_line(&self, wait: Duration) -> Option<Line> {
        self.lines.recv_timeout(wait).ok()
    }

    /// The next stdout line; an error that names the command if none comes.
    pub fn expect_line(&self, wait: Duration) -> Result<Line> {
        self.next_line(wait).ok_or_else(|| NetlabError::NoLine {
            command: self.command.clone(),
            waited: wait,
            stderr: self.stderr(),
        })
    }

    /// Every stdout line that comes until `until`.
    pub fn lines_until(&self, until: Instant) -> Vec<Line> {
        let mut out = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return out,
            }
        }
    }

    /// Waits for the process to exit (killing it after `wait`) and returns
    /// its status and remaining output.
    pub fn finish(mut self, wait: Duration) -> Result<Finished> {
        let started = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < wait => thread::sleep(POLL / 5),
                Ok(None) | Err(_) => {
                    return Err(NetlabError::NoExit {
                        command: self.command.clone(),
                        waited: wait,
                    })
                }
            }
        };
        let elapsed = started.elapsed();
        // The pipe closes at exit; the reader threads finish right after.
        let stdout = self.lines_until(Instant::now() + Duration::from_millis(500));
        let stdout = stdout.into_iter().map(|l| l.text).collect();
        Ok(Finished {
            status,
            stdout,
            stderr: self.stderr().lines().map(str::to_owned).collect(),
            elapsed,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_the_cgroup2_mount_point() {
        let text = "\
24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
45 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpf rw
";
        let mounts = parse_mountinfo(text);
        let cg = mounts
            .iter()
            .find(|(_, t)| t == "cgroup2")
            .map(|(p, _)| p.clone());
        assert_eq!(cg, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert!(mounts.contains(&(PathBuf::from("/sys/fs/bpf"), "bpf".to_owned())));
    }

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        assert_eq!(unescape_octal(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal(r"/plain\x"), r"/plain\x");
    }

    #[test]
    fn subnets_stay_in_the_test_ranges() {
        let s = Subnet::next();
        let [v4, v6] = s.host(2);
        assert!(matches!(v4.0, IpAddr::V4(a) if a.octets()[..2] == [10, 250]));
        assert!(matches!(v6.0, IpAddr::V6(a) if a.segments()[..2] == [0xfd00, 0x250]));
        assert_eq!((v4.1, v6.1), (24, 64));
    }
}
