//! A private containerd for tests, with the CRI plugin, a CNI bridge and
//! imported busybox images, and pods created through the CRI.
//!
//! Everything lives under one base directory (root, state, socket, CNI
//! config, IPAM data, runc state) except what the kernel puts elsewhere:
//! the `stk0` bridge, cgroup directories under `/kubepods`, and shim sockets
//! in `/run/containerd/s`. Dropping a [`Containerd`] removes all of it;
//! dropping a [`Pod`] stops and removes its sandbox.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::json;
use sha2::{Digest, Sha256};
use stockade_proto::cri::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig, ListPodSandboxRequest,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use tonic::transport::Channel;

use crate::{image, sys};

/// The bridge the CNI config creates; pods and [`crate::PeerNs`] attach to it.
pub const BRIDGE: &str = "stk0";
/// The bridge's address, the pods' gateway.
pub const GATEWAY: &str = "10.213.0.1";
/// The pods' subnet.
pub const SUBNET: &str = "10.213.0.0/24";
/// CRI namespace of containerd.
const NAMESPACE: &str = "k8s.io";
/// Name of the CNI network (also in CNI cache file names).
const NETWORK: &str = "stockade-test";
/// Where the CNI plugins are (Debian's containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Where containerd 1.6 puts shim sockets, whatever its state directory.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// Deadline of ordinary CRI calls.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Host paths that may not exist before the harness and are created by the
/// runtime or the CNI plugins; removed on drop if they did not exist and
/// are empty.
const HOST_DIRS_CREATED: &[&str] = &[
    "/run/containerd/s",
    "/run/containerd",
    "/var/lib/cni/results",
    "/var/lib/cni",
];

/// Why the harness cannot run, in words that say what to install.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the runtime tests need root (containerd, runc, CNI, cgroups); run them as root");
    }
    let needed: &[(&str, &str)] = &[
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("ip", "iproute2"),
    ];
    for (program, package) in needed {
        if which(program).is_none() {
            bail!("`{program}` not found in PATH: install the apt package {package}");
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let path = Path::new(CNI_BIN_DIR).join(plugin);
        if !path.exists() {
            bail!(
                "{} missing: install the apt package containernetworking-plugins",
                path.display()
            );
        }
    }
    if !Path::new(image::BUSYBOX).exists() {
        bail!(
            "{} missing: install the apt package busybox-static",
            image::BUSYBOX
        );
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A containerd started by this process, for tests.
pub struct Containerd {
    base: PathBuf,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    snapshotter: &'static str,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    channel: Option<Channel>,
    created_bridge: bool,
    ip_forward_before: Option<String>,
    /// Host directories that did not exist before start.
    absent_host_dirs: Vec<PathBuf>,
    /// Cgroup directories (relative to each hierarchy) that did not exist
    /// before start: removed on drop when empty.
    absent_cgroup_parents: Vec<(PathBuf, PathBuf)>,
    /// Cgroup parents (`/kubepods/besteffort/pod<uid>`) of pods created here.
    pod_cgroups: Mutex<BTreeSet<String>>,
    /// Sandbox ids created here, for the shim sockets and CNI cache files.
    sandboxes: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("base", &self.base)
            .field("socket", &self.socket)
            .field("pid", &self.pid())
            .field("snapshotter", &self.snapshotter)
            .finish()
    }
}

impl Containerd {
    /// Starts a containerd whose every directory is under `base_dir` (which
    /// must be absent or empty; it is deleted on drop), waits until its CRI
    /// answers and imports the test images. Fails if the bridge `stk0`
    /// already exists (another harness runs, or one leaked).
    pub fn start(base_dir: &Path) -> Result<Self> {
        preflight()?;
        if base_dir.exists() && std::fs::read_dir(base_dir)?.next().is_some() {
            bail!("{} is not empty", base_dir.display());
        }
        if sys::link_exists(BRIDGE) {
            bail!(
                "network interface {BRIDGE} exists: another runtime harness is running, or one \
                 leaked (remove it with `ip link del {BRIDGE}`)"
            );
        }
        std::fs::create_dir_all(base_dir)
            .with_context(|| format!("creating {}", base_dir.display()))?;
        let base = base_dir.canonicalize()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("containerd-harness")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let mut absent_cgroup_parents = Vec::new();
        for mount in sys::cgroup_mounts()? {
            for rel in ["kubepods/besteffort", "kubepods/burstable", "kubepods"] {
                if !mount.join(rel).exists() {
                    absent_cgroup_parents.push((mount.clone(), PathBuf::from(rel)));
                }
            }
        }
        let mut cd = Containerd {
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("containerd.sock"),
            base,
            child: None,
            snapshotter: "native",
            runtime: Some(runtime),
            handle,
            channel: None,
            created_bridge: false,
            ip_forward_before: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").ok(),
            absent_host_dirs: HOST_DIRS_CREATED
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
            absent_cgroup_parents,
            pod_cgroups: Mutex::new(BTreeSet::new()),
            sandboxes: Mutex::new(BTreeSet::new()),
        };
        // From here on, a failure drops `cd`, which cleans up.
        cd.setup()?;
        Ok(cd)
    }

    fn setup(&mut self) -> Result<()> {
        for dir in [&self.root, &self.state] {
            std::fs::create_dir_all(dir)?;
        }
        self.snapshotter = if overlay_works(&self.base) {
            "overlayfs"
        } else {
            "native"
        };

        sys::ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        self.created_bridge = true;
        sys::ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE])?;
        sys::ip(&["link", "set", BRIDGE, "up"])?;

        let cni_conf = self.base.join("cni/net.d");
        std::fs::create_dir_all(&cni_conf)?;
        std::fs::write(
            cni_conf.join("10-stockade-test.conflist"),
            self.cni_config()?,
        )?;
        let config = self.base.join("config.toml");
        std::fs::write(&config, self.config_toml())?;

        let log = std::fs::File::create(self.base.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))?;
        self.import_images()?;
        Ok(())
    }

    fn cni_config(&self) -> Result<String> {
        let conf = json!({
            "cniVersion": "0.4.0",
            "name": NETWORK,
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": SUBNET,
                        "rangeStart": "10.213.0.10",
                        "rangeEnd": "10.213.0.200",
                        "gateway": GATEWAY,
                    }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.base.join("cni/ipam"),
                },
            }],
        });
        Ok(serde_json::to_string_pretty(&conf)?)
    }

    fn config_toml(&self) -> String {
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        // The loopback interface of each pod is set up by containerd itself
        // with the `loopback` plugin from `bin_dir`.
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
temp = "{temp}"
oom_score = 0
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  max_concurrent_downloads = 1

[{cri}.containerd]
  snapshotter = "{snapshotter}"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc_root}"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"#,
            root = self.root.display(),
            state = self.state.display(),
            temp = self.base.join("tmp").display(),
            socket = self.socket.display(),
            pause = image::PAUSE_IMAGE,
            snapshotter = self.snapshotter,
            runc_root = self.state.join("runc").display(),
            cni_bin = CNI_BIN_DIR,
            cni_conf = self.base.join("cni/net.d").display(),
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.base.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        std::fs::create_dir_all(self.base.join("tmp"))?;
        let started = Instant::now();
        let mut last_error = String::from("socket not created");
        while started.elapsed() < timeout {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "containerd exited at start ({status}); its log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if self.socket.exists() {
                let socket = self.socket.clone();
                let attempt = self.block_on(async move {
                    let channel = tokio::time::timeout(
                        Duration::from_secs(2),
                        stockade_agent::uds::connect(&socket, Duration::from_secs(300)),
                    )
                    .await
                    .map_err(|_| anyhow!("connect timed out"))??;
                    let mut client = RuntimeServiceClient::new(channel.clone());
                    let version = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.version(VersionRequest {
                            version: "v1".into(),
                        }),
                    )
                    .await
                    .map_err(|_| anyhow!("Version timed out"))??;
                    anyhow::Ok((channel, version.into_inner()))
                });
                match attempt {
                    Ok((channel, version)) => {
                        if version.runtime_api_version != "v1" {
                            bail!(
                                "containerd speaks CRI {}, not v1",
                                version.runtime_api_version
                            );
                        }
                        self.channel = Some(channel);
                        return Ok(());
                    }
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "containerd's CRI did not answer within {timeout:?} ({last_error}); its log:\n{}",
            self.log_tail()
        )
    }

    fn import_images(&self) -> Result<()> {
        let archive = image::build_default_archive(&self.base)?;
        let socket = self.socket.display().to_string();
        let archive_arg = archive.display().to_string();
        let args = [
            "-n",
            NAMESPACE,
            "-a",
            &socket,
            "images",
            "import",
            "--snapshotter",
            self.snapshotter,
            &archive_arg,
        ];
        let out = sys::run_with_timeout(Command::new("ctr").args(args), Duration::from_secs(60))?;
        if !out.status.success() {
            bail!(
                "ctr images import failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let _ = std::fs::remove_file(&archive);
        // The CRI learns about imported images from events: wait for it.
        let started = Instant::now();
        for reference in [image::TEST_IMAGE, image::PAUSE_IMAGE] {
            loop {
                let mut images = self.images();
                let request = ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: reference.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                };
                let found = self
                    .block_on(async move {
                        tokio::time::timeout(CALL_DEADLINE, images.image_status(request)).await
                    })
                    .map_err(|_| anyhow!("ImageStatus did not answer"))??
                    .into_inner()
                    .image
                    .is_some();
                if found {
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    bail!("the CRI does not see the imported image {reference}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// The gRPC socket (CRI and containerd API).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// PID of the containerd process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory holding everything of this containerd.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The snapshotter in use (`overlayfs`, or `native` where overlay
    /// cannot be mounted).
    pub fn snapshotter(&self) -> &str {
        self.snapshotter
    }

    /// A CRI runtime client on the harness's connection. It may be used
    /// from any tokio runtime while this `Containerd` lives.
    pub fn cri(&self) -> RuntimeServiceClient<Channel> {
        match &self.channel {
            Some(channel) => RuntimeServiceClient::new(channel.clone()),
            // Only before `wait_ready` succeeded, which `start` guarantees.
            None => RuntimeServiceClient::new(self.lazy_channel()),
        }
    }

    /// A CRI image client on the harness's connection.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        match &self.channel {
            Some(channel) => ImageServiceClient::new(channel.clone()),
            None => ImageServiceClient::new(self.lazy_channel()),
        }
    }

    /// A channel to our socket that connects on first use.
    fn lazy_channel(&self) -> Channel {
        let _guard = self.handle.enter();
        let socket = self.socket.clone();
        // The URI is required by tonic but unused: the connector ignores it.
        tonic::transport::Endpoint::from_static("http://localhost")
            .timeout(Duration::from_secs(300))
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
    }

    /// Runs `fut` to completion on the harness's tokio runtime. Callable from
    /// plain threads and from inside another tokio runtime alike.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let handle = self.handle.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            return handle.block_on(fut);
        }
        std::thread::scope(
            |scope| match scope.spawn(move || handle.block_on(fut)).join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            },
        )
    }

    /// Runs one CRI call with a deadline.
    fn call<T, Fut>(&self, rpc: &str, deadline: Duration, fut: Fut) -> Result<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send,
        T: Send,
    {
        match self.block_on(async move { tokio::time::timeout(deadline, fut).await }) {
            Err(_) => bail!("CRI {rpc} did not answer within {deadline:?}"),
            Ok(Err(status)) => {
                bail!(
                    "CRI {rpc} failed: {:?}: {}",
                    status.code(),
                    status.message()
                )
            }
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Stops and removes every sandbox this containerd holds.
    fn remove_all_sandboxes(&self) -> Result<()> {
        let mut cri = self.cri();
        let list = self.call("ListPodSandbox", CALL_DEADLINE, async move {
            cri.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })?;
        for sandbox in list.items {
            self.sandboxes
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .insert(sandbox.id.clone());
            remove_sandbox(self, &sandbox.id)?;
        }
        Ok(())
    }

    /// Kills the shims of this containerd that are still running (after a
    /// crash, or when their sandbox could not be removed). They are found by
    /// their `-address` argument, this containerd's unique socket path, and
    /// killed by PID. Returns the task ids found in the state directory.
    fn kill_leftover_shims(&self) -> Vec<String> {
        let socket = self.socket.as_os_str().as_encoded_bytes();
        for pid in sys::pids_with_arg(socket) {
            if Some(pid) != self.pid() && pid != std::process::id() {
                sys::signal_pid(pid, Signal::SIGKILL);
            }
        }
        let mut ids = Vec::new();
        let tasks = self.state.join("io.containerd.runtime.v2.task");
        let Ok(namespaces) = std::fs::read_dir(&tasks) else {
            return ids;
        };
        for ns in namespaces.flatten() {
            let Ok(bundles) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for bundle in bundles.flatten() {
                ids.push(bundle.file_name().to_string_lossy().into_owned());
            }
        }
        ids
    }

    /// Kills whatever still runs in the pods' cgroups (processes of
    /// containers whose shim is gone) and removes the pod cgroups from every
    /// hierarchy.
    fn remove_pod_cgroups(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let parents: Vec<String> = match self.pod_cgroups.lock() {
            Ok(p) => p.iter().cloned().collect(),
            Err(_) => return vec!["pod cgroup list poisoned".into()],
        };
        if let Ok(unified) = sys::cgroup2_mount() {
            for parent in &parents {
                kill_cgroup(&unified.join(parent.trim_start_matches('/')));
            }
        }
        let mounts = sys::cgroup_mounts().unwrap_or_default();
        for mount in &mounts {
            for parent in &parents {
                let dir = mount.join(parent.trim_start_matches('/'));
                if let Err(e) = sys::remove_cgroup_tree(&dir) {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        for (mount, rel) in &self.absent_cgroup_parents {
            // Only empty directories go; someone else's pods keep theirs.
            let _ = std::fs::remove_dir(mount.join(rel));
        }
        failures
    }

    fn stop_process(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        sys::signal_pid(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return None,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Some("containerd ignored SIGTERM for 10 s; killed".into())
    }
}

/// Whether an overlay filesystem can be mounted in `base` (it cannot on
/// some nested setups; containerd then uses the `native` snapshotter).
fn overlay_works(base: &Path) -> bool {
    let probe = base.join("overlay-probe");
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    if dirs.iter().any(|d| std::fs::create_dir_all(d).is_err()) {
        return false;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display()
    );
    let mounted = nix::mount::mount(
        Some("overlay"),
        &dirs[3],
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .is_ok();
    if mounted {
        let _ = nix::mount::umount2(&dirs[3], nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&probe);
    mounted
}

/// Writes `1` to `cgroup.kill` of `dir` and its children (cgroup v2), then
/// waits up to 2 s for them to empty.
fn kill_cgroup(dir: &Path) {
    if !dir.join("cgroup.kill").exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.contains("populated 1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The address a containerd 1.6 shim listens on, from containerd's socket,
/// the namespace and the task id.
fn shim_socket(containerd_socket: &Path, id: &str) -> PathBuf {
    let key = containerd_socket.join(NAMESPACE).join(id);
    let hash: String = Sha256::digest(key.as_os_str().as_encoded_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Path::new(SHIM_SOCKET_DIR).join(hash)
}

fn remove_sandbox(cd: &Containerd, id: &str) -> Result<()> {
    let mut cri = cd.cri();
    let request = StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    };
    cd.call("StopPodSandbox", CALL_DEADLINE, async move {
        cri.stop_pod_sandbox(request).await
    })?;
    let mut cri = cd.cri();
    let request = RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    };
    cd.call("RemovePodSandbox", CALL_DEADLINE, async move {
        cri.remove_pod_sandbox(request).await
    })?;
    Ok(())
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut problems: Vec<String> = Vec::new();
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running && self.channel.is_some() {
            if let Err(e) = self.remove_all_sandboxes() {
                problems.push(format!("removing sandboxes: {e:#}"));
            }
        }
        self.channel = None;
        problems.extend(self.stop_process());
        let mut ids = self.kill_leftover_shims();
        problems.extend(self.remove_pod_cgroups());
        problems.extend(sys::unmount_all_under(&self.base));
        if self.created_bridge && sys::link_exists(BRIDGE) {
            if let Err(e) = sys::ip(&["link", "del", BRIDGE]) {
                problems.push(format!("{e:#}"));
            }
        }
        if let Some(before) = &self.ip_forward_before {
            let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
            if &now != before {
                let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", before.trim());
            }
        }
        if let Ok(known) = self.sandboxes.lock() {
            ids.extend(known.iter().cloned());
        }
        for id in &ids {
            let _ = std::fs::remove_file(shim_socket(&self.socket, id));
            for ifname in ["eth0", "lo"] {
                let cache = format!("/var/lib/cni/results/{NETWORK}-{id}-{ifname}");
                let _ = std::fs::remove_file(cache);
                let lo = format!("/var/lib/cni/results/cni-loopback-{id}-{ifname}");
                let _ = std::fs::remove_file(lo);
            }
        }
        for dir in &self.absent_host_dirs {
            let _ = std::fs::remove_dir(dir);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", self.base.display()));
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        if !problems.is_empty() {
            eprintln!("containerd harness cleanup: {}", problems.join("; "));
        }
    }
}

/// What [`Pod::run`] creates.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// Pod UID; a random v4 UUID by default.
    pub uid: String,
    /// QoS class: `besteffort`, `burstable` or `guaranteed`.
    pub qos: String,
    /// Container names and their command lines (busybox image).
    pub containers: Vec<(String, Vec<String>)>,
}

impl PodSpec {
    /// A best-effort pod with a random UID and no containers yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uuid::Uuid::new_v4().to_string(),
            qos: "besteffort".into(),
            containers: Vec::new(),
        }
    }

    /// Adds a container running `argv`.
    pub fn container(mut self, name: &str, argv: &[&str]) -> Self {
        self.containers
            .push((name.into(), argv.iter().map(|a| (*a).to_owned()).collect()));
        self
    }

    /// The pod's cgroup as kubelet's cgroupfs driver names it, absolute in
    /// each hierarchy: `/kubepods[/<qos>]/pod<uid>`.
    pub fn cgroup_parent(&self) -> Result<String> {
        match self.qos.as_str() {
            "guaranteed" => Ok(format!("/kubepods/pod{}", self.uid)),
            "besteffort" | "burstable" => Ok(format!("/kubepods/{}/pod{}", self.qos, self.uid)),
            other => bail!("unknown QoS class {other:?}"),
        }
    }
}

/// A pod sandbox with running containers. Dropping it stops and removes the
/// sandbox and its cgroup directories.
#[derive(Debug)]
pub struct Pod<'a> {
    cd: &'a Containerd,
    spec: PodSpec,
    sandbox_config: PodSandboxConfig,
    sandbox_id: String,
    containers: BTreeMap<String, String>,
}

impl<'a> Pod<'a> {
    /// Creates the sandbox, then creates and starts each container.
    pub fn run(cd: &'a Containerd, spec: PodSpec) -> Result<Pod<'a>> {
        let cgroup_parent = spec.cgroup_parent()?;
        cd.pod_cgroups
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(cgroup_parent.clone());
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: spec.name.clone(),
            linux: Some(LinuxPodSandboxConfig { cgroup_parent }),
            ..Default::default()
        };
        let mut cri = cd.cri();
        let request = RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            ..Default::default()
        };
        let sandbox_id = cd
            .call("RunPodSandbox", Duration::from_secs(60), async move {
                cri.run_pod_sandbox(request).await
            })?
            .pod_sandbox_id;
        cd.sandboxes
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(sandbox_id.clone());
        let mut pod = Pod {
            cd,
            spec,
            sandbox_config,
            sandbox_id,
            containers: BTreeMap::new(),
        };
        for (name, argv) in pod.spec.containers.clone() {
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image::TEST_IMAGE.into(),
                    ..Default::default()
                }),
                command: argv,
                ..Default::default()
            };
            let request = CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.sandbox_config.clone()),
            };
            let mut cri = cd.cri();
            let id = cd
                .call("CreateContainer", CALL_DEADLINE, async move {
                    cri.create_container(request).await
                })
                .with_context(|| format!("container {name}"))?
                .container_id;
            pod.containers.insert(name.clone(), id.clone());
            let mut cri = cd.cri();
            let request = StartContainerRequest { container_id: id };
            cd.call("StartContainer", CALL_DEADLINE, async move {
                cri.start_container(request).await
            })
            .with_context(|| format!("container {name}"))?;
        }
        Ok(pod)
    }

    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    pub fn uid(&self) -> &str {
        &self.spec.uid
    }

    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The pod's cgroup directory in the cgroup2 hierarchy.
    pub fn cgroup_dir(&self) -> Result<PathBuf> {
        let parent = self.spec.cgroup_parent()?;
        Ok(sys::cgroup2_mount()?.join(parent.trim_start_matches('/')))
    }

    /// The runtime's id of container `name`.
    pub fn container_id(&self, name: &str) -> Result<String> {
        self.containers
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("pod {} has no container {name:?}", self.spec.name))
    }

    /// The pod's IP address on the bridge.
    pub fn ip(&self) -> Result<String> {
        let mut cri = self.cd.cri();
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: self.sandbox_id.clone(),
            verbose: false,
        };
        let status = self
            .cd
            .call("PodSandboxStatus", CALL_DEADLINE, async move {
                cri.pod_sandbox_status(request).await
            })?
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus without status"))?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            bail!("sandbox {} has no IP", self.sandbox_id);
        }
        Ok(ip)
    }

    /// Runs `argv` in container `name` (ExecSync) and returns its exit code,
    /// stdout and stderr.
    pub fn exec(
        &self,
        name: &str,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<(i32, String, String)> {
        let mut cri = self.cd.cri();
        let request = ExecSyncRequest {
            container_id: self.container_id(name)?,
            cmd: argv.iter().map(|a| (*a).to_owned()).collect(),
            timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        let deadline = timeout + Duration::from_secs(10);
        let out = self.cd.call(
            "ExecSync",
            deadline,
            async move { cri.exec_sync(request).await },
        )?;
        Ok((
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The host PID of container `name`'s first process.
    pub fn container_pid(&self, name: &str) -> Result<u32> {
        let info = self.container_info(name)?;
        info["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("no pid in the status of container {name}"))
    }

    /// The verbose `info` document of ContainerStatus (containerd: `pid`,
    /// `runtimeSpec`, ...).
    pub fn container_info(&self, name: &str) -> Result<serde_json::Value> {
        let mut cri = self.cd.cri();
        let request = ContainerStatusRequest {
            container_id: self.container_id(name)?,
            verbose: true,
        };
        let status = self.cd.call("ContainerStatus", CALL_DEADLINE, async move {
            cri.container_status(request).await
        })?;
        let info = status
            .info
            .get("info")
            .ok_or_else(|| anyhow!("no verbose info"))?;
        Ok(serde_json::from_str(info)?)
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if let Err(e) = remove_sandbox(self.cd, &self.sandbox_id) {
            // Its processes may still run: the Containerd's drop kills them
            // and removes the cgroups.
            eprintln!(
                "pod {} cleanup (left to the containerd's drop): {e:#}",
                self.spec.name
            );
            return;
        }
        let Ok(parent) = self.spec.cgroup_parent() else {
            return;
        };
        for mount in sys::cgroup_mounts().unwrap_or_default() {
            if let Err(e) = sys::remove_cgroup_tree(&mount.join(parent.trim_start_matches('/'))) {
                eprintln!("pod {} cleanup: {e:#}", self.spec.name);
            }
        }
    }
}

/// Container restarts, as kubelet makes them.
impl Pod<'_> {
    /// Kills the main process of container `name` (SIGKILL to its host
    /// PID), waits until the runtime reports the container exited, then
    /// creates and starts its next attempt in the same sandbox with the same
    /// command: what kubelet does when a container dies. The exited
    /// container is kept, as kubelet keeps it until garbage collection.
    /// Later calls naming `name` reach the new container, whose id this
    /// returns.
    pub fn restart_container(&mut self, name: &str) -> Result<String> {
        let old = self.container_id(name)?;
        let attempt = self
            .container_status(&old)?
            .metadata
            .unwrap_or_default()
            .attempt;
        let pid = self.container_pid(name)?;
        sys::signal_pid(pid, Signal::SIGKILL);
        self.wait_exited(&old, Duration::from_secs(10))?;

        let argv = self
            .spec
            .containers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, argv)| argv.clone())
            .ok_or_else(|| anyhow!("pod {} has no container {name:?}", self.spec.name))?;
        let id = self.start_container(name, argv, attempt + 1)?;
        self.containers.insert(name.to_owned(), id.clone());
        Ok(id)
    }

    /// Creates and starts one container of the busybox image in the sandbox.
    fn start_container(&self, name: &str, argv: Vec<String>, attempt: u32) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: image::TEST_IMAGE.into(),
                ..Default::default()
            }),
            command: argv,
            ..Default::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: self.sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(self.sandbox_config.clone()),
        };
        let mut cri = self.cd.cri();
        let id = self
            .cd
            .call("CreateContainer", CALL_DEADLINE, async move {
                cri.create_container(request).await
            })
            .with_context(|| format!("container {name}, attempt {attempt}"))?
            .container_id;
        let mut cri = self.cd.cri();
        let request = StartContainerRequest {
            container_id: id.clone(),
        };
        self.cd
            .call("StartContainer", CALL_DEADLINE, async move {
                cri.start_container(request).await
            })
            .with_context(|| format!("container {name}, attempt {attempt}"))?;
        Ok(id)
    }

    /// The runtime's status of container `id` (not verbose).
    fn container_status(&self, id: &str) -> Result<stockade_proto::cri::ContainerStatus> {
        let mut cri = self.cd.cri();
        let request = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        self.cd
            .call("ContainerStatus", CALL_DEADLINE, async move {
                cri.container_status(request).await
            })?
            .status
            .ok_or_else(|| anyhow!("ContainerStatus of {id} without status"))
    }

    /// Waits until the runtime reports container `id` exited.
    fn wait_exited(&self, id: &str, within: Duration) -> Result<()> {
        let exited = stockade_proto::cri::ContainerState::ContainerExited;
        let started = Instant::now();
        while self.container_status(id)?.state() != exited {
            if started.elapsed() > within {
                bail!("container {id} did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
