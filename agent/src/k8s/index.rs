//! This node's pods as the API server knows them, kept by a reflector.
//!
//! Lookups read the reflector's store and never wait for the API server:
//! before the first list has arrived, or while the API server is down,
//! they answer `None`.
//!
//! Known shortcoming: a pod named only by UID can be found only on this
//! node; [`PodIndex::locate`] works by name because the API server has no
//! lookup by UID short of listing every pod of the cluster.

use std::{
    collections::BTreeMap,
    pin::pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::{
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Api, Client,
};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::TaskGuard;
use crate::agent::error_chain;

/// How long [`PodIndex::locate`] waits for the API server.
pub const LOCATE_DEADLINE: Duration = Duration::from_millis(500);

/// What the index knows of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The node it is scheduled on.
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub owners: Vec<Owner>,
}

/// One owner reference of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// The pods scheduled on this node, by UID and by namespace/name.
#[derive(Clone)]
pub struct PodIndex {
    store: Store<Pod>,
    client: Client,
    node: String,
    /// Set when the last watch call failed, cleared by the next success:
    /// while set, [`PodIndex::locate`] does not ask.
    api_down: Arc<AtomicBool>,
    locate_deadline: Duration,
    _task: Option<Arc<TaskGuard>>,
}

/// `spec.nodeName=<node>`: the pods of one node.
pub fn field_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

impl PodIndex {
    /// Starts watching the pods of `node` in a background task and returns
    /// at once; the store fills when the first list arrives. The task ends
    /// when the last clone of the index is dropped.
    pub fn start(client: Client, node: &str) -> Self {
        let (store, writer) = reflector::store();
        let api_down = Arc::new(AtomicBool::new(false));
        let pods: Api<Pod> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&field_selector(node));
        let task = tokio::spawn(reflect(pods, config, writer, api_down.clone()));
        Self {
            store,
            client,
            node: node.to_owned(),
            api_down,
            locate_deadline: LOCATE_DEADLINE,
            _task: Some(Arc::new(TaskGuard(task))),
        }
    }

    /// The same index with another deadline for [`PodIndex::locate`].
    pub fn with_locate_deadline(self, deadline: Duration) -> Self {
        Self {
            locate_deadline: deadline,
            ..self
        }
    }

    /// The node this index watches.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pod with this UID, if it is on this node and listed yet.
    pub fn by_uid(&self, uid: &str) -> Option<PodInfo> {
        let pod = self
            .store
            .find(|p| p.metadata.uid.as_deref() == Some(uid))?;
        Some(info(&pod))
    }

    /// The pod `namespace/name`, if it is on this node and listed yet.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        let key = ObjectRef::new(name).within(namespace);
        let pod = self.store.get(&key)?;
        Some(info(&pod))
    }

    /// The node pod `namespace/name` is scheduled on: this node's when the
    /// store has it, else what one GET answers within the deadline. `None`
    /// when the pod does not exist, is not scheduled yet, or the API
    /// server is down or slow; then nothing is asked or waited for past
    /// the deadline.
    pub async fn locate(&self, namespace: &str, name: &str) -> Option<String> {
        if let Some(pod) = self.by_name(namespace, name) {
            return Some(pod.node);
        }
        if self.api_down.load(Ordering::Relaxed) {
            debug!(
                pod.namespace = namespace,
                pod.name = name,
                "API server down: not located"
            );
            return None;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(self.locate_deadline, pods.get_opt(name)).await {
            Ok(Ok(pod)) => pod?.spec?.node_name,
            Ok(Err(e)) => {
                let error = error_chain(&e);
                debug!(pod.namespace = namespace, pod.name = name, %error, "not located");
                None
            }
            Err(_) => {
                let deadline = self.locate_deadline;
                debug!(
                    pod.namespace = namespace,
                    pod.name = name,
                    ?deadline,
                    "no answer: not located"
                );
                None
            }
        }
    }
}

/// Runs the watch until the index is dropped, keeping `api_down` current.
/// Failed calls are retried by kube's default back-off (exponential, up to
/// about a minute apart), so an unreachable API server costs little.
async fn reflect(
    pods: Api<Pod>,
    config: watcher::Config,
    writer: reflector::store::Writer<Pod>,
    api_down: Arc<AtomicBool>,
) {
    let stream = watcher(pods, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let mut stream = pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                api_down.store(false, Ordering::Relaxed);
                info!("pod index listed this node's pods");
            }
            Ok(_) => api_down.store(false, Ordering::Relaxed),
            Err(e) => {
                let was_down = api_down.swap(true, Ordering::Relaxed);
                match was_down {
                    false => warn!(error = %error_chain(&e), "pod index: watch failed; retrying"),
                    true => debug!(error = %error_chain(&e), "pod index: watch failed again"),
                }
            }
        }
    }
}

/// Keeps only what [`PodInfo`] reads, so that the store stays small.
fn trim(pod: &mut Pod) {
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(PodSpec {
        node_name,
        ..PodSpec::default()
    });
    pod.status = None;
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
}

fn info(pod: &Pod) -> PodInfo {
    let meta = &pod.metadata;
    let owners = meta.owner_references.iter().flatten();
    PodInfo {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        owners: owners
            .map(|o| Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
impl PodIndex {
    /// An index over `pods` with no watch behind it.
    pub(crate) fn fixed(client: Client, node: &str, pods: Vec<Pod>) -> Self {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for pod in pods {
            writer.apply_watcher_event(&watcher::Event::InitApply(pod));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Self {
            store,
            client,
            node: node.to_owned(),
            api_down: Arc::new(AtomicBool::new(false)),
            locate_deadline: LOCATE_DEADLINE,
            _task: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::k8s::mock::{self, pod_json, wait_until, MockApi, Reply};

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-000000000001";

    /// Lists `web` (on node-a, owned by a ReplicaSet) and leaves the watch
    /// that follows unanswered; answers the pod GETs of `shop/elsewhere`
    /// with `get`.
    fn api(get: Reply) -> MockApi {
        MockApi::start(move |req| {
            if req.path == "/api/v1/pods" && !req.query.contains("watch=") {
                return Reply::ok(mock::pod_list(vec![pod_json("shop", "web", UID, "node-a")]));
            }
            if req.path == "/api/v1/namespaces/shop/pods/elsewhere" {
                return get.clone();
            }
            Reply::Hang
        })
    }

    #[tokio::test]
    async fn the_index_lists_only_this_nodes_pods_and_answers_by_uid_and_name() {
        let api = api(Reply::Hang);
        let index = PodIndex::start(api.client(), "node-a");

        wait_until(|| index.by_uid(UID).is_some()).await;

        let list = api
            .requests()
            .into_iter()
            .find(|r| r.path == "/api/v1/pods")
            .unwrap();
        assert!(
            list.query.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{}",
            list.query
        );
        let web = index.by_name("shop", "web").expect("found by name");
        assert_eq!(index.by_uid(UID), Some(web.clone()));
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web"));
        assert_eq!(web.node, "node-a");
        assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
        let owner = Owner {
            kind: "ReplicaSet".into(),
            name: "web-5d4f".into(),
        };
        assert_eq!(web.owners, [owner]);
        assert_eq!(index.by_name("shop", "other"), None);
    }

    #[tokio::test]
    async fn lookups_answer_none_at_once_before_the_first_list() {
        let api = MockApi::start(|_| Reply::Hang);
        let index = PodIndex::start(api.client(), "node-a");

        let started = std::time::Instant::now();
        assert_eq!(index.by_uid(UID), None);
        assert_eq!(index.by_name("shop", "web"), None);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn locate_names_the_node_another_pod_is_scheduled_on() {
        let elsewhere = pod_json("shop", "elsewhere", UID, "node-b");
        let api = api(Reply::ok(elsewhere));
        let index = PodIndex::start(api.client(), "node-a");

        assert_eq!(
            index.locate("shop", "elsewhere").await.as_deref(),
            Some("node-b")
        );
    }

    #[tokio::test]
    async fn locate_answers_none_when_the_get_fails() {
        let api = api(Reply::status(StatusCode::INTERNAL_SERVER_ERROR));
        let index = PodIndex::start(api.client(), "node-a");

        assert_eq!(index.locate("shop", "elsewhere").await, None);
        let asked = api
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/elsewhere"));
        assert!(asked, "locate must have asked the API server");
    }

    #[tokio::test]
    async fn locate_costs_at_most_its_deadline_when_the_api_server_is_silent() {
        let api = MockApi::start(|_| Reply::Hang);
        let index =
            PodIndex::start(api.client(), "node-a").with_locate_deadline(Duration::from_millis(50));

        let started = std::time::Instant::now();
        assert_eq!(index.locate("shop", "elsewhere").await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn locate_does_not_ask_while_the_watch_fails() {
        let api = MockApi::start(|_| Reply::status(StatusCode::SERVICE_UNAVAILABLE));
        let index = PodIndex::start(api.client(), "node-a");
        wait_until(|| index.api_down.load(Ordering::Relaxed)).await;

        assert_eq!(index.locate("shop", "elsewhere").await, None);
        let asked = api
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/elsewhere"));
        assert!(!asked, "locate asked an API server known to be down");
    }

    #[test]
    fn trimming_keeps_the_node_labels_and_owners_and_drops_the_rest() {
        let mut pod: Pod = serde_json::from_value(pod_json("shop", "web", UID, "node-a")).unwrap();
        pod.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());

        trim(&mut pod);

        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert!(spec.containers.is_empty());
        assert_eq!(pod.metadata.annotations, None);
        let info = info(&pod);
        assert_eq!(info.owners[0].kind, "ReplicaSet");
        assert_eq!(info.labels.get("app").map(String::as_str), Some("web"));
    }
}
