//! `stockade-agent`: the node daemon.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use stockade_agent::{
    access::{self, config::AccessArgs},
    agent::error_chain,
    agent::{Agent, Settings},
    api::Service,
    contain::{
        guard,
        kill::KillMethod,
        kube::{self, KubeSource},
        ContainSettings,
    },
    cri::{self, CriClient},
    events, health,
    k8s::{self, PodIndex, Reporter},
    ledger,
    metrics::{self, Metrics},
    server,
};
use tracing::{error, info, warn};

/// Stockade node agent: enforces containment orders on this node's pods.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's name (from the downward API in a DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Unix socket of the node-local API (root only).
    #[arg(
        long,
        env = "STOCKADE_SOCKET",
        default_value = "/run/stockade/agent.sock"
    )]
    socket: PathBuf,
    /// Folder on bpffs for the agent's pinned links and maps.
    #[arg(long, env = "STOCKADE_PIN_DIR", default_value = "/sys/fs/bpf/stockade")]
    pin_dir: PathBuf,
    /// CRI socket for pod names: a path, `auto` (the usual paths) or `none`.
    #[arg(long, env = "STOCKADE_CRI_SOCKET", default_value = "auto")]
    cri_socket: String,
    /// Deadline of every call to the container runtime, in milliseconds.
    #[arg(long, env = "STOCKADE_CRI_TIMEOUT_MS", default_value_t = 2000)]
    cri_timeout_ms: u64,
    /// Folder of the order ledger, kept across restarts (root only).
    #[arg(long, env = "STOCKADE_STATE_DIR", default_value = ledger::DEFAULT_DIR)]
    state_dir: PathBuf,
    /// The cgroup2 mount; found from /proc/self/mountinfo when unset.
    #[arg(long, env = "STOCKADE_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Address of the plain-text gRPC health port for the kubelet's probes
    /// (for example 0.0.0.0:9091); none when unset.
    #[arg(long, env = "STOCKADE_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
    /// Address of the Prometheus endpoint, `GET /metrics` in the
    /// OpenMetrics text format, without TLS (for example 0.0.0.0:9090);
    /// none when unset.
    #[arg(long, env = "STOCKADE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, env = "STOCKADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// How kills are carried out: `auto` (cgroup.kill where the kernel has
    /// it), `cgroup-kill`, or `freeze-signal` (freeze, SIGKILL each
    /// process, thaw).
    #[arg(long, env = "STOCKADE_KILL_METHOD", value_enum, default_value_t = KillChoice::Auto)]
    kill_method: KillChoice,
    /// Kubeconfig of the API server that deletes terminated pods; without
    /// it the in-cluster service account is used when in a pod.
    #[arg(long, env = "STOCKADE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Do not report orders to the API server (Events and annotations on
    /// the pods); the pod index is still kept.
    #[arg(long, env = "STOCKADE_NO_KUBE_REPORTS")]
    no_kube_reports: bool,
    /// The mutual-TLS listener, the audit log and the guards.
    #[command(flatten)]
    access: AccessArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KillChoice {
    Auto,
    CgroupKill,
    FreezeSignal,
}

impl KillChoice {
    fn forced(self) -> Option<KillMethod> {
        match self {
            Self::Auto => None,
            Self::CgroupKill => Some(KillMethod::CgroupKill),
            Self::FreezeSignal => Some(KillMethod::FreezeSignal),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// How often isolations are checked for an expired TTL: the precision of
/// a TTL.
const EXPIRY_PERIOD: Duration = Duration::from_millis(250);

/// How long open connections may finish after SIGTERM before they are cut.
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.log_format);

    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let kube_source = KubeSource::detect(args.kubeconfig.as_deref());
    let settings = Settings {
        node_name: node_name.clone(),
        pin_root: args.pin_dir.clone(),
        cri_socket: explicit_socket(&args.cri_socket),
        cri_timeout: Duration::from_millis(args.cri_timeout_ms),
        cgroup_root: args.cgroup_root.clone(),
        containment: ContainSettings {
            kill_method: args.kill_method.forced(),
            kube: kube_source.clone(),
        },
        state_dir: args.state_dir.clone(),
    };
    ensure_bpffs(&settings.pin_root);
    let cri = connect_runtime(&args.cri_socket, settings.cri_timeout).await;

    let agent = tokio::task::spawn_blocking(move || Agent::start(settings, cri))
        .await
        .context("agent start-up panicked")?
        .context("cannot open the order ledger")?;
    let agent = Arc::new(agent);
    tokio::spawn(Agent::run_expiry(agent.clone(), EXPIRY_PERIOD));
    if let Some(ring) = agent.take_events() {
        tokio::spawn(events::run(agent.clone(), ring));
    }
    if let Some(ring) = agent.take_guard_events() {
        tokio::spawn(guard::run_events(ring));
    }

    let kube = kube_links(&kube_source, &node_name, !args.no_kube_reports).await;
    if let Some(index) = &kube.index {
        agent.use_pod_index(index.clone());
    }
    let gate = access::daemon::gate(&args.access, kube)?;
    let service = Service::new(agent.clone()).with_gate(gate.clone());
    let remote = access::daemon::bind_remote(&args.access, gate.audit().clone()).await?;
    let incoming = server::bind_root_only(&args.socket).await?;
    banner(&agent, &args);
    let remote = remote.map(|remote| access::daemon::spawn(remote, service.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopping = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Ready from here: programs loaded, pinned state adopted.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(health::watchdog(agent.clone(), reporter));
    if let Some(addr) = args.health_listen {
        let (health_service, stop) = (health_service.clone(), stopping(stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = health::serve(addr, health_service, stop).await {
                error!(%addr, error = %e, "the health port failed");
            }
        });
    }
    if let Some(addr) = args.metrics_listen {
        let metrics = Arc::new(Metrics::new(gate.metrics(), agent.clone()));
        tokio::spawn(serve_metrics(addr, metrics, stopping(stop_rx.clone())));
    }
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(access::stockade_server(service))
        .serve_with_incoming_shutdown(incoming, stopping(stop_rx.clone()));
    // An open client connection must not keep the agent from exiting.
    let drain_deadline = async {
        stopping(stop_rx.clone()).await;
        tokio::time::sleep(DRAIN_DEADLINE).await;
    };
    tokio::select! {
        served = serve => served.context("the API server failed")?,
        () = drain_deadline => warn!(after = ?DRAIN_DEADLINE, "clients still connected; closing"),
    }
    if let Some(remote) = remote {
        remote.stop().await;
    }
    let _ = std::fs::remove_file(&args.socket);
    info!("stopped; isolations stay enforced by their pinned links");
    Ok(())
}

/// The metrics endpoint. A port it cannot take is logged, and the agent
/// goes on: containment matters more than its metrics.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => return error!(%addr, error = %e, "cannot listen for metrics scrapes"),
    };
    if let Err(e) = metrics::serve(listener, metrics, stop).await {
        error!(%addr, error = %e, "the metrics port failed");
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn banner(agent: &Agent, args: &Args) {
    let info = agent.info();
    let missing: Vec<&str> = agent
        .features()
        .iter()
        .filter(|f| !f.available)
        .map(|f| f.name)
        .collect();
    info!(
        version = %info.version,
        node = %info.node_name,
        kernel = %info.kernel_release,
        cgroup2 = %info.cgroup2_mount,
        pins = %info.bpffs_dir,
        socket = %args.socket.display(),
        health = ?args.health_listen,
        metrics = ?args.metrics_listen,
        pod_names = %info.pod_metadata_source,
        features.missing = ?missing,
        "stockade-agent started"
    );
}

/// The pod index and the reporter over one API client, both started in
/// the background: neither waits for the API server, which may be
/// unreachable now and come later.
async fn kube_links(source: &KubeSource, node: &str, reports: bool) -> k8s::Links {
    if *source == KubeSource::Off {
        info!("no Kubernetes API server configured: no pod index, no reports");
        return k8s::Links::default();
    }
    let client = match kube::client(source).await {
        Ok(client) => client,
        Err(e) => {
            warn!(error = %error_chain(&e), "no pod index, no reports");
            return k8s::Links::default();
        }
    };
    let index = PodIndex::start(client.clone(), node);
    let settings = k8s::Settings::default();
    let reporter = reports.then(|| Reporter::start(client, node, Some(index.clone()), settings));
    info!(
        kube.reports = reports,
        "watching this node's pods in the API server"
    );
    k8s::Links {
        index: Some(index),
        reporter,
    }
}

/// A runtime socket named by path is kept even when it does not answer at
/// start: kills try it again, and say when it still does not answer.
fn explicit_socket(choice: &str) -> Option<PathBuf> {
    match choice {
        "none" | "auto" => None,
        path => Some(PathBuf::from(path)),
    }
}

/// Finds the runtime socket; pod names are unavailable without one.
async fn connect_runtime(choice: &str, timeout: Duration) -> Option<CriClient> {
    let candidates: Vec<PathBuf> = match choice {
        "none" => return None,
        "auto" => cri::DEFAULT_SOCKETS.iter().map(PathBuf::from).collect(),
        path => vec![PathBuf::from(path)],
    };
    for socket in candidates.iter().filter(|p| p.exists()) {
        match CriClient::connect(socket, timeout).await {
            Ok(client) => return Some(client),
            Err(e) => {
                warn!(socket = %socket.display(), error = %e, "runtime socket did not answer")
            }
        }
    }
    warn!(tried = ?candidates, "no container runtime socket: pods are known by UID only");
    None
}

/// Mounts bpffs at /sys/fs/bpf when the pin folder is below it and nothing
/// is mounted there yet.
fn ensure_bpffs(pin_root: &std::path::Path) {
    let bpffs = std::path::Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(bpffs) || stockade_agent::features::is_bpffs(bpffs) {
        return;
    }
    let flags = nix::mount::MsFlags::empty();
    match nix::mount::mount(Some("bpf"), bpffs, Some("bpf"), flags, None::<&str>) {
        Ok(()) => info!("mounted bpffs at /sys/fs/bpf"),
        Err(e) => warn!(error = %e, "cannot mount bpffs at /sys/fs/bpf"),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("signal received, draining");
}
