//! A pretend API server for the tests of this module: a tower-test mock
//! behind a real `kube::Client`, answering each request as a test says and
//! recording what it was sent.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use kube::{client::Body, Client};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock;

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Json(StatusCode, Value),
    /// Never answers (the request stays open).
    Hang,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self::Json(StatusCode::OK, body)
    }

    /// A `Status` object with `code`, as the API server sends on failure.
    pub fn status(code: StatusCode) -> Self {
        let body = json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": format!("mock says {}", code.as_u16()),
            "reason": code.canonical_reason().unwrap_or("Unknown"),
            "code": code.as_u16(),
        });
        Self::Json(code, body)
    }
}

/// The mock server's task and what it has received; the task ends when
/// this is dropped.
pub struct MockApi {
    client: Client,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl MockApi {
    /// Serves every request with `answer`, in the order they come.
    pub fn start(mut answer: impl FnMut(&Recorded) -> Reply + Send + 'static) -> Self {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let recorded = record(request).await;
                seen.lock().unwrap().push(recorded.clone());
                match answer(&recorded) {
                    Reply::Hang => open.push(respond),
                    Reply::Json(status, body) => respond.send_response(response(status, &body)),
                }
            }
        });
        let client = Client::new(service, "default");
        Self {
            client,
            requests,
            task,
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// What was received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// What was received so far with this method.
    pub fn requests_with(&self, method: &str) -> Vec<Recorded> {
        let all = self.requests();
        all.into_iter().filter(|r| r.method == method).collect()
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(request: Request<Body>) -> Recorded {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Recorded {
        method,
        path,
        query,
        content_type,
        body,
    }
}

fn response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A pod on `node`, labelled `app: <name>` and owned by a ReplicaSet.
pub fn pod_json(namespace: &str, name: &str, uid: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "resourceVersion": "7",
            "labels": {"app": name},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
                "uid": "11111111-2222-4333-8444-555555555555", "controller": true,
            }],
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx"}]},
    })
}

/// A complete (single page) pod list.
pub fn pod_list(pods: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "10"},
        "items": pods,
    })
}

/// Waits up to 5 s (virtual time in paused tests) for `done`.
pub async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}
