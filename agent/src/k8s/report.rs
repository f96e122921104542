//! Each order's outcome told to the API server: an Event on the pod, and
//! annotations on it while it is isolated, frozen or contained.
//!
//! The order path only puts the outcome in a bounded queue without
//! waiting ([`Reporter::report`]); when the queue is full the outcome is
//! dropped, counted and logged. One background task sends the queue in
//! order, so that a release's patch never overtakes its isolate's. Failed
//! calls are retried with exponential back-off and jitter (backon, the
//! crate kube's own runtime uses); a call the API server refuses with a
//! 4xx other than 429 is not retried, a 404 meaning the pod (or its
//! namespace) is gone.
//!
//! Known shortcomings:
//! - while the API server is down each outcome holds the queue for up to
//!   two calls of six tries (about two minutes with the default back-off),
//!   so a long outage drops outcomes once the queue is full; nothing is
//!   kept across a restart of the agent;
//! - annotations are only written, never reconciled: one lost patch (queue
//!   full, retries exhausted) leaves an annotation wrong until the next
//!   order on that pod, and isolations that end by TTL expiry do not pass
//!   the gate, so their annotation stays;
//! - the pod's UID is looked up when the outcome is queued; an order naming
//!   a pod by UID that the index does not have (not listed yet, API server
//!   down) is not reported at all.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::{
    api::{core::v1::Pod, events::v1::Event},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api, Client,
};
use stockade_proto::v1::{self, pod_selector::Target as Selected};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::{Code, Status};
use tracing::{debug, warn};

use super::{
    index::PodIndex,
    writes::{self, Subject},
    TaskGuard,
};
use crate::agent::error_chain;

/// The pod as the order named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Name { namespace: String, name: String },
    Uid(String),
}

impl Target {
    /// The target of a request's pod selector, if it names one.
    pub fn of(selector: &v1::PodSelector) -> Option<Self> {
        match selector.target.as_ref()? {
            Selected::Name(pod) => Some(Self::Name {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            }),
            Selected::Uid(uid) => Some(Self::Uid(uid.clone())),
        }
    }
}

/// Why an order did not succeed, as its reply said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

/// What became of one order, as the gate knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// As in the audit log: `isolate`, `freeze`, ...
    pub action: &'static str,
    pub target: Target,
    pub result: Result<(), Failure>,
    /// Dry runs are not reported.
    pub dry_run: bool,
    pub order_id: Option<String>,
    pub reason: Option<String>,
}

impl Outcome {
    /// The outcome of an order that ended with `error` (none: it was
    /// carried out).
    pub fn new(action: &'static str, target: Target, error: Option<&Status>) -> Self {
        let result = match error {
            None => Ok(()),
            Some(status) => Err(Failure {
                code: status.code(),
                message: status.message().to_owned(),
            }),
        };
        Self {
            action,
            target,
            result,
            dry_run: false,
            order_id: None,
            reason: None,
        }
    }
}

/// How the reporter queues and retries.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Outcomes waiting to be sent; more are dropped.
    pub queue: usize,
    /// Back-off between the tries of one call.
    pub retry: ExponentialBuilder,
    /// How long one try may take before it counts as failed.
    pub call_deadline: Duration,
}

impl Default for Settings {
    /// 256 outcomes; 6 tries of each call, 1 s after the first failure
    /// and doubling up to 30 s, each delay plus a random part of itself.
    fn default() -> Self {
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .with_factor(2.0)
            .with_max_times(5)
            .with_jitter();
        Self {
            queue: 256,
            retry,
            call_deadline: Duration::from_secs(10),
        }
    }
}

/// The order path's handle on the background task that reports outcomes.
#[derive(Clone)]
pub struct Reporter {
    queue: mpsc::Sender<Job>,
    index: Option<PodIndex>,
    dropped: Arc<AtomicU64>,
    _task: Arc<TaskGuard>,
}

/// One outcome on its way, with the pod resolved.
struct Job {
    outcome: Outcome,
    pod: Subject,
    at: Timestamp,
}

impl Reporter {
    /// Starts the background task that reports as node `node`; it ends
    /// when the last clone of the reporter is dropped.
    pub fn start(client: Client, node: &str, index: Option<PodIndex>, settings: Settings) -> Self {
        let (queue, jobs) = mpsc::channel(settings.queue.max(1));
        let sender = Sender {
            client,
            node: node.to_owned(),
            settings,
        };
        let task = tokio::spawn(sender.run(jobs));
        Self {
            queue,
            index,
            dropped: Arc::new(AtomicU64::new(0)),
            _task: Arc::new(TaskGuard(task)),
        }
    }

    /// Queues `outcome` without waiting. Dry runs, pods known only by a
    /// UID the index lacks, and outcomes that find the queue full are not
    /// reported.
    pub fn report(&self, outcome: Outcome) {
        if outcome.dry_run {
            return;
        }
        let Some(pod) = self.subject(&outcome.target) else {
            let (action, target) = (outcome.action, &outcome.target);
            debug!(
                action,
                ?target,
                "pod unknown to the index: outcome not reported"
            );
            return;
        };
        let job = Job {
            outcome,
            pod,
            at: Timestamp::now(),
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let (action, pod) = (job.outcome.action, &job.pod);
                warn!(
                    action,
                    pod.namespace = %pod.namespace,
                    pod.name = %pod.name,
                    reports.dropped = dropped,
                    "report queue full: outcome not reported"
                );
            }
            Err(TrySendError::Closed(_)) => debug!("reporter stopped: outcome not reported"),
        }
    }

    /// How many outcomes were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn subject(&self, target: &Target) -> Option<Subject> {
        match target {
            Target::Name { namespace, name } => {
                let known = self.index.as_ref().and_then(|i| i.by_name(namespace, name));
                Some(Subject {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: known.map(|p| p.uid),
                })
            }
            Target::Uid(uid) => {
                let pod = self.index.as_ref()?.by_uid(uid)?;
                Some(Subject {
                    namespace: pod.namespace,
                    name: pod.name,
                    uid: Some(pod.uid),
                })
            }
        }
    }
}

/// Why one call failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("the API server did not answer within {0:?}")]
    Silent(Duration),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl CallError {
    /// Worth another try: no answer, a server error, throttling, or a
    /// connection that failed. Other refusals would be repeated.
    fn retryable(&self) -> bool {
        match self {
            Self::Silent(_) => true,
            Self::Kube(kube::Error::Api(status)) => status.code >= 500 || status.code == 429,
            Self::Kube(_) => true,
        }
    }

    fn gone(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(status)) if status.code == 404)
    }
}

/// The background task's side.
struct Sender {
    client: Client,
    node: String,
    settings: Settings,
}

impl Sender {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            self.send_event(&job).await;
            if job.outcome.result.is_ok() {
                self.patch_annotations(&job).await;
            }
        }
    }

    async fn send_event(&self, job: &Job) {
        let event = writes::event(&job.outcome, &job.pod, &self.node, job.at);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &job.pod.namespace);
        let params = PostParams::default();
        let sent = self.call(|| events.create(&params, &event)).await;
        self.log("event", job, sent.err());
    }

    async fn patch_annotations(&self, job: &Job) {
        let Some((key, set)) = writes::annotation_change(job.outcome.action) else {
            return;
        };
        let value = set.then(|| annotation_value(job));
        let patch = writes::annotation_patch(key, value.as_deref(), job.pod.uid.as_deref());
        let patch = Patch::Merge(&patch);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &job.pod.namespace);
        let params = PatchParams {
            field_manager: Some("stockade-agent".into()),
            ..PatchParams::default()
        };
        let patched = self
            .call(|| pods.patch(&job.pod.name, &params, &patch))
            .await;
        self.log("annotations", job, patched.err());
    }

    /// Tries `call` until it succeeds, fails for good, or runs out of
    /// tries.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let deadline = self.settings.call_deadline;
        let once = || {
            let attempt = call();
            async move {
                match tokio::time::timeout(deadline, attempt).await {
                    Ok(result) => result.map_err(CallError::from),
                    Err(_) => Err(CallError::Silent(deadline)),
                }
            }
        };
        once.retry(self.settings.retry)
            .sleep(tokio::time::sleep)
            .when(CallError::retryable)
            .notify(|e, after| {
                let error = error_chain(e);
                debug!(%error, retry.after = ?after, "API call failed; retrying")
            })
            .await
    }

    fn log(&self, what: &str, job: &Job, error: Option<CallError>) {
        let action = job.outcome.action;
        let (namespace, name) = (&job.pod.namespace, &job.pod.name);
        match error {
            None => debug!(action, pod.namespace = %namespace, pod.name = %name, "{what} reported"),
            Some(e) if e.gone() => debug!(
                action,
                pod.namespace = %namespace,
                pod.name = %name,
                "{what} not reported: the pod is gone"
            ),
            Some(e) => warn!(
                action,
                pod.namespace = %namespace,
                pod.name = %name,
                error = %error_chain(&e),
                "{what} not reported"
            ),
        }
    }
}

/// The order id, or the time of the order when it had none.
fn annotation_value(job: &Job) -> String {
    match &job.outcome.order_id {
        Some(id) => id.clone(),
        None => job.at.to_string(),
    }
}
