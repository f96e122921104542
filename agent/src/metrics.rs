//! Prometheus metrics, served on `--metrics-listen` as `GET /metrics` in
//! the OpenMetrics text format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `stockade_orders_total` | counter | `action`, `result` |
//! | `stockade_order_to_enforced_seconds` | histogram | `action` |
//! | `stockade_errors_total` | counter | `kind` |
//! | `stockade_isolations_in_force` | gauge | |
//! | `stockade_programs_attached` | gauge | |
//! | `stockade_kernel_feature` | gauge | `feature` |
//! | `stockade_build_info` | info | `version` |
//!
//! `action` is an order as the audit log names it (`isolate`, `release`,
//! `freeze`, `thaw`, `kill`, `terminate`, `contain`, `uncontain`,
//! `extend`); `result` the gRPC code of its answer in snake case (`ok`,
//! `not_found`, ...) or `dry_run` for a dry run that passed every check.
//! `kind` is one of [`ErrorKind`]. No label holds a pod name, a UID or
//! free text, so every series is bounded by the code.
//!
//! Counters and the histogram are kept by the gate as orders pass
//! ([`OrderMetrics`]); the gauges are read from the agent at each scrape
//! (a [`Collector`]), so they cannot drift from what the kernel holds.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use hyper::{
    body::Incoming,
    header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram, info::Info,
        MetricType,
    },
    registry::{Registry, Unit},
};
use prost_types::Timestamp;
use stockade_proto::v1;
use tokio::net::TcpListener;
use tonic::{Code, Status};
use tracing::{debug, warn};

use crate::{
    agent::{error_chain, Agent, AgentError},
    features::Feature,
};

#[cfg(test)]
mod tests;

/// Upper bounds of the latency buckets, in seconds: an isolation takes
/// about a millisecond; a kill waits up to its deadline (5 s by default).
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause after a failed accept, so that a lack of descriptors does not
/// turn into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What `stockade_errors_total` counts: failures of the agent or of what
/// it relies on, which the gRPC code alone does not tell apart. Refusals
/// (invalid input, guards, a pod not on the node, a pod already isolated)
/// are not errors: they show in `stockade_orders_total` by their result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A bpf, cgroup or pin operation failed (INTERNAL).
    Kernel,
    /// What the kernel read back differed from what was ordered
    /// (INTERNAL).
    NotVerified,
    /// A freeze, thaw or kill the kernel did not confirm in time.
    Deadline,
    /// The order ledger could not be read or written.
    Ledger,
    /// The node lacks a kernel feature the order needs.
    MissingFeature,
    /// The container runtime did not stop a container a kill asked it to
    /// stop; the kill itself went on.
    Runtime,
    /// The API server did not delete a terminated pod; the kill went on.
    ApiServer,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        Self::Kernel,
        Self::NotVerified,
        Self::Deadline,
        Self::Ledger,
        Self::MissingFeature,
        Self::Runtime,
        Self::ApiServer,
    ];

    /// The value of the `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::NotVerified => "not_verified",
            Self::Deadline => "deadline",
            Self::Ledger => "ledger",
            Self::MissingFeature => "missing_feature",
            Self::Runtime => "runtime",
            Self::ApiServer => "api_server",
        }
    }

    /// The kind of `err`, or `None` when it is a refusal.
    pub fn of(err: &AgentError) -> Option<Self> {
        match err {
            AgentError::Kernel(_) => Some(Self::Kernel),
            AgentError::NotVerified(_) => Some(Self::NotVerified),
            AgentError::Deadline(_) => Some(Self::Deadline),
            AgentError::Ledger(_) => Some(Self::Ledger),
            AgentError::MissingFeature(_) => Some(Self::MissingFeature),
            // A replayed failure was counted when it first happened.
            AgentError::Replayed { .. }
            | AgentError::Invalid(_)
            | AgentError::NotFound(_)
            | AgentError::Refused(_)
            | AgentError::AlreadyIsolated(_)
            | AgentError::OrderConflict(_)
            | AgentError::Unsettled(_) => None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrderLabels {
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type LatencyFamily = Family<ActionLabels, Histogram, fn() -> Histogram>;

/// The metrics the order path records: atomic counters behind a read
/// lock, no allocation once a label set has been seen.
#[derive(Clone, Debug)]
pub struct OrderMetrics {
    orders: Family<OrderLabels, Counter>,
    latency: LatencyFamily,
    errors: Family<KindLabels, Counter>,
}

impl Default for OrderMetrics {
    fn default() -> Self {
        let errors = Family::<KindLabels, Counter>::default();
        // Every kind shows from the start, at 0, so that a rate over it
        // has a first sample.
        for kind in ErrorKind::ALL {
            let labels = KindLabels {
                kind: kind.as_str(),
            };
            drop(errors.get_or_create(&labels));
        }
        Self {
            orders: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            errors,
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl OrderMetrics {
    /// Counts an order by its answer: `error` is `None` when it succeeded.
    pub fn order(&self, action: &'static str, dry_run: bool, error: Option<&Status>) {
        let result = match error {
            None if dry_run => "dry_run",
            None => code_label(Code::Ok),
            Some(status) => code_label(status.code()),
        };
        self.orders
            .get_or_create(&OrderLabels { action, result })
            .inc();
    }

    /// Counts `err` under its kind, if it is not a refusal.
    pub fn agent_error(&self, err: &AgentError) {
        if let Some(kind) = ErrorKind::of(err) {
            self.error(kind);
        }
    }

    /// Counts one failure of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        let labels = KindLabels {
            kind: kind.as_str(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    /// Records the time from receipt to enforcement of an order carried
    /// out by a call that started at `since`, and the failures its reply
    /// reports. A reply received before `since` is the replayed answer to
    /// an order id seen earlier: it was recorded then.
    pub fn enforced(&self, action: &'static str, since: SystemTime, reply: &impl Enforced) {
        let Some((received, done)) = reply.stamps() else {
            return;
        };
        if !not_before(received, since) {
            return;
        }
        let labels = ActionLabels { action };
        self.latency
            .get_or_create(&labels)
            .observe(seconds_between(received, done));
        reply.failures(|kind| self.error(kind));
    }

    /// A registry of these metrics and the build information.
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("stockade");
        registry.register(
            "orders",
            "Orders answered, by action and result (gRPC code or dry_run)",
            self.orders.clone(),
        );
        registry.register_with_unit(
            "order_to_enforced",
            "Time from receipt of an order to its enforcement or verification",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "errors",
            "Failures of the agent or of what it relies on, by kind",
            self.errors.clone(),
        );
        registry.register(
            "build",
            "The agent's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry
    }
}

/// Whether `stamp` is at or after `since`.
fn not_before(stamp: &Timestamp, since: SystemTime) -> bool {
    let since = Timestamp::from(since);
    (stamp.seconds, stamp.nanos) >= (since.seconds, since.nanos)
}

/// `to - from` in seconds; 0 if `to` is earlier (a clock step).
fn seconds_between(from: &Timestamp, to: &Timestamp) -> f64 {
    let seconds = (to.seconds - from.seconds) as f64;
    let nanos = f64::from(to.nanos - from.nanos);
    (seconds + nanos * 1e-9).max(0.0)
}

/// The `result` label of a gRPC code: its name in snake case.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// What the metrics read from the reply to an order.
pub trait Enforced {
    /// When the agent received the order, and when the order took effect
    /// (enforced, or verified where no enforcement time is kept). `None`
    /// for a dry run.
    fn stamps(&self) -> Option<(&Timestamp, &Timestamp)>;

    /// Calls `count` once per failure the order went on despite.
    fn failures(&self, count: impl FnMut(ErrorKind)) {
        let _ = count;
    }
}

fn pair<'a>(
    a: &'a Option<Timestamp>,
    b: &'a Option<Timestamp>,
) -> Option<(&'a Timestamp, &'a Timestamp)> {
    Some((a.as_ref()?, b.as_ref()?))
}

impl Enforced for v1::IsolateResponse {
    fn stamps(&self) -> Option<(&Timestamp, &Timestamp)> {
        let isolation = self.isolation.as_ref()?;
        pair(&isolation.received_at, &isolation.enforced_at)
    }
}

impl Enforced for v1::ReleaseResponse {
    fn stamps(&self) -> Option<(&Timestamp, &Timestamp)> {
        pair(&self.received_at, &self.verified_at)
    }
}

macro_rules! verified_replies {
    ($($reply:ty),*) => {$(
        impl Enforced for $reply {
            fn stamps(&self) -> Option<(&Timestamp, &Timestamp)> {
                pair(&self.received_at, &self.verified_at)
            }
        }
    )*};
}

verified_replies!(
    v1::FreezeResponse,
    v1::ThawResponse,
    v1::ContainResponse,
    v1::UncontainResponse
);

impl Enforced for v1::KillResponse {
    fn stamps(&self) -> Option<(&Timestamp, &Timestamp)> {
        pair(&self.received_at, &self.verified_at)
    }

    fn failures(&self, mut count: impl FnMut(ErrorKind)) {
        let stopped = v1::RuntimeOutcome::Ok as i32;
        for _ in self.runtime.iter().filter(|s| s.outcome != stopped) {
            count(ErrorKind::Runtime);
        }
    }
}

impl Enforced for v1::TerminateResponse {
    fn stamps(&self) -> Option<(&Timestamp, &Timestamp)> {
        self.kill.as_ref()?.stamps()
    }

    fn failures(&self, mut count: impl FnMut(ErrorKind)) {
        if let Some(kill) = &self.kill {
            kill.failures(&mut count);
        }
        if self.delete == v1::DeleteOutcome::Failed as i32 {
            count(ErrorKind::ApiServer);
        }
    }
}

/// What the gauges read from the agent at each scrape; a seam so that
/// they are tested without a kernel.
pub trait Observed: Send + Sync + 'static {
    /// The isolations in force, as read back from the kernel now.
    fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError>;
    fn features(&self) -> &[Feature];
}

impl Observed for Agent {
    fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError> {
        Agent::isolations(self)
    }

    fn features(&self) -> &[Feature] {
        Agent::features(self)
    }
}

/// The gauges, computed from the agent at each scrape.
struct NodeCollector<N> {
    node: Arc<N>,
}

impl<N> fmt::Debug for NodeCollector<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl<N: Observed> Collector for NodeCollector<N> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Known shortcoming: when the isolations cannot be read, the two
        // gauges are left out of the scrape rather than reported wrong;
        // alert on their absence.
        match self.node.isolations() {
            Ok(isolations) => encode_isolations(&mut encoder, &isolations)?,
            Err(e) => warn!(error = %error_chain(&e), "metrics: cannot read the isolations"),
        }
        encode_features(&mut encoder, self.node.features())
    }
}

fn encode_isolations(encoder: &mut DescriptorEncoder, isolations: &[v1::Isolation]) -> fmt::Result {
    let programs: usize = isolations.iter().map(|i| i.attachments.len()).sum();
    let gauges = [
        (
            "isolations_in_force",
            "Pods isolated by this agent now",
            isolations.len(),
        ),
        (
            "programs_attached",
            "Programs of this agent attached to isolated pods, as read back from the kernel",
            programs,
        ),
    ];
    for (name, help, value) in gauges {
        let gauge = ConstGauge::new(value as i64);
        gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
    }
    Ok(())
}

fn encode_features(encoder: &mut DescriptorEncoder, features: &[Feature]) -> fmt::Result {
    let help = "1 when the kernel has the feature, 0 when it lacks it (see `stockade doctor`)";
    let mut family = encoder.encode_descriptor("kernel_feature", help, None, MetricType::Gauge)?;
    for feature in features {
        let labels = [("feature", feature.name)];
        let gauge = ConstGauge::new(i64::from(feature.available));
        gauge.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Every metric of the agent, ready to be encoded.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The order metrics the gate keeps, and the gauges of `node`.
    pub fn new<N: Observed>(orders: &OrderMetrics, node: Arc<N>) -> Self {
        let mut registry = orders.registry();
        registry.register_collector(Box::new(NodeCollector { node }));
        Self { registry }
    }

    /// The OpenMetrics text. Blocking: reads the kernel.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Serves `GET /metrics` on `listener` until `stop` resolves; any other
/// path is 404, any other method on it 405. Scrapes are encoded one at a
/// time, off the async threads.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Held across the encoding, so that a burst of scrapes reads the
    // kernel once at a time and never crowds out orders on its locks.
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => return Ok(()),
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of descriptors, or a connection reset before it was
            // taken: the listener itself is fine.
            Err(e) => {
                warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (metrics, lock) = (metrics.clone(), one_at_a_time.clone());
        let service = service_fn(move |req| answer(req, metrics.clone(), lock.clone()));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
    lock: Arc<tokio::sync::Mutex<()>>,
) -> Result<Response<String>, Infallible> {
    if req.uri().path() != "/metrics" {
        let body = "not found; metrics are at /metrics\n";
        return Ok(plain(StatusCode::NOT_FOUND, body));
    }
    if req.method() != Method::GET {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n"));
    }
    let _turn = lock.lock().await;
    let rendered = tokio::task::spawn_blocking(move || metrics.render()).await;
    Ok(match rendered {
        Ok(Ok(body)) => reply(StatusCode::OK, CONTENT_TYPE, body),
        Ok(Err(fmt::Error)) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n"),
        Err(e) => {
            warn!(error = %e, "metrics: the encoding task failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n")
        }
    })
}

fn plain(status: StatusCode, body: &str) -> Response<String> {
    reply(status, "text/plain; charset=utf-8", body.to_owned())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let value = HeaderValue::from_static(content_type);
    response.headers_mut().insert(CONTENT_TYPE_HEADER, value);
    response
}

#[cfg(test)]
impl OrderMetrics {
    /// These metrics alone, as scraped.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        text::encode(&mut out, &self.registry()).expect("encoding into a String");
        out
    }
}
