//! Smoke test of the containerd harness: a private containerd starts, a pod
//! with two containers runs in the cgroups kubelet would give it, reaches a
//! server in a network namespace on the same bridge, is seen by the agent's
//! CRI client, and every trace is gone after the drops.
//!
//! Needs root, containerd, runc, the CNI plugins and busybox-static; fails
//! (does not skip) without them. `harness = false`: the steps run in order
//! against one containerd.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use stockade_agent::cri::CriClient;
use stockade_integration::{containerd, preflight, sys, Containerd, PeerNs, Pod, PodSpec};

const PEER_NS: &str = "stk-smoke-peer";
const PEER_IP: &str = "10.213.0.250";

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        println!("runtime_smoke: test");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => {
            println!("test runtime_smoke ... ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("test runtime_smoke ... FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What must be gone once everything is dropped.
struct Traces {
    containerd_pid: u32,
    base_dir: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
}

fn run() -> Result<()> {
    preflight().context("runtime tests cannot run here")?;
    let base = tempfile::Builder::new().prefix("stk-cd-").tempdir()?.keep();

    let started = Instant::now();
    let cd = Containerd::start(&base)?;
    println!(
        "containerd ({}) ready in {:?}",
        cd.snapshotter(),
        started.elapsed()
    );
    let mut traces = Traces {
        containerd_pid: cd.pid().context("containerd has no pid")?,
        base_dir: cd.base_dir().to_owned(),
        cgroup_dirs: Vec::new(),
    };

    with_containerd(&cd, &mut traces)?;

    drop(cd);
    check_gone(&traces)
}

fn with_containerd(cd: &Containerd, traces: &mut Traces) -> Result<()> {
    let mut peer = PeerNs::create(PEER_NS, &format!("{PEER_IP}/24"))?;
    let www = cd.base_dir().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), "hello from the peer\n")?;
    let www = www.display().to_string();
    let listen = format!("{PEER_IP}:8080");
    peer.spawn(&["/bin/busybox", "httpd", "-f", "-p", &listen, "-h", &www])?;

    let started = Instant::now();
    let spec = PodSpec::new("smoke", "web")
        .container("app", &["sleep", "3600"])
        .container("sidecar", &["sleep", "3600"]);
    let pod = Pod::run(cd, spec)?;
    println!("pod with 2 containers running in {:?}", started.elapsed());

    let pod_dir = pod.cgroup_dir()?;
    let unified = sys::cgroup2_mount()?;
    for mount in sys::cgroup_mounts()? {
        let parent = pod.spec().cgroup_parent()?;
        traces
            .cgroup_dirs
            .push(mount.join(parent.trim_start_matches('/')));
    }
    for name in ["app", "sidecar"] {
        let id = pod.container_id(name)?;
        let dir = pod_dir.join(&id);
        ensure!(
            dir.is_dir(),
            "cgroup of container {name} missing: {}",
            dir.display()
        );
        let pid = pod.container_pid(name)?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let rel = dir.strip_prefix(&unified)?.display().to_string();
        ensure!(
            cgroup.lines().any(|l| l == format!("0::/{rel}")),
            "pid {pid} of {name} is not in {rel}: {cgroup}"
        );
    }

    let ip = pod.ip()?;
    ensure!(
        ip.starts_with("10.213.0."),
        "pod IP {ip} outside the bridge subnet"
    );
    let url = format!("http://{PEER_IP}:8080/index.html");
    let started = Instant::now();
    let body = loop {
        let (code, out, err) = pod.exec(
            "app",
            &["timeout", "3", "wget", "-q", "-O", "-", &url],
            Duration::from_secs(10),
        )?;
        if code == 0 {
            break out;
        }
        // httpd may still be starting in the peer namespace. (`timeout`, not
        // `wget -T`: Debian's busybox 1.35 wget crashes with -T.)
        if started.elapsed() > Duration::from_secs(10) {
            bail!("wget {url} from the pod failed ({code}): {err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(body == "hello from the peer\n", "unexpected body {body:?}");
    println!("pod {ip} reached the peer in {:?}", started.elapsed());

    // The agent's CRI client sees the pod and can stop one container.
    let socket = cd.socket().to_owned();
    let uid = pod.uid().to_owned();
    let sidecar = pod.container_id("sidecar")?;
    let (listed, stopped) = cd.block_on(async move {
        let client = CriClient::connect(&socket, Duration::from_secs(5)).await?;
        let listed = client.list_pods().await?;
        let started = Instant::now();
        client.stop_container(&sidecar, 0).await?;
        let stopped = started.elapsed();
        let after = client.list_pods().await?;
        anyhow::Ok(((listed, after), stopped))
    })?;
    let (before, after) = listed;
    let ours: Vec<_> = before.iter().filter(|p| p.uid == uid).collect();
    ensure!(
        ours.len() == 1,
        "agent CRI client found {} pods with uid {uid}",
        ours.len()
    );
    let ours = ours[0];
    ensure!(
        ours.ready && ours.namespace == "smoke" && ours.name == "web",
        "{ours:?}"
    );
    let states: Vec<_> = ours
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.state.as_str()))
        .collect();
    ensure!(
        states == [("app", "running"), ("sidecar", "running")],
        "{states:?}"
    );
    let after = after
        .iter()
        .find(|p| p.uid == uid)
        .context("pod vanished after stop")?;
    let states: Vec<_> = after
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.state.as_str()))
        .collect();
    ensure!(
        states == [("app", "running"), ("sidecar", "exited")],
        "{states:?}"
    );
    println!("StopContainer(timeout 0) took {stopped:?}");

    drop(pod);
    ensure!(
        !pod_dir.exists(),
        "pod cgroup {} left after the pod's drop",
        pod_dir.display()
    );
    drop(peer);
    ensure!(
        !std::path::Path::new("/run/netns").join(PEER_NS).exists(),
        "netns {PEER_NS} left after drop"
    );
    Ok(())
}

fn check_gone(traces: &Traces) -> Result<()> {
    ensure!(
        !sys::pid_alive(traces.containerd_pid),
        "containerd {} still runs",
        traces.containerd_pid
    );
    ensure!(
        !sys::link_exists(containerd::BRIDGE),
        "bridge {} left",
        containerd::BRIDGE
    );
    ensure!(
        !traces.base_dir.exists(),
        "{} left",
        traces.base_dir.display()
    );
    for dir in &traces.cgroup_dirs {
        ensure!(!dir.exists(), "cgroup {} left", dir.display());
    }
    let mounts = sys::mounts_under(&traces.base_dir)?;
    ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
    Ok(())
}
