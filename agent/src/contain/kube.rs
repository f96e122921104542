//! Deleting a terminated pod through the Kubernetes API server, so that
//! its controller replaces it.
//!
//! The API server only finishes the job: the kill has already happened
//! through the cgroup. So every failure here (no configuration, no answer,
//! a refusal) becomes an outcome in the reply, never an error of the order.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{DeleteParams, Preconditions},
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config,
};

/// Where the API server's address and credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KubeSource {
    /// No API server: terminate kills and says the delete did not happen.
    #[default]
    Off,
    /// The service account of the agent's pod (KUBERNETES_SERVICE_HOST and
    /// the token mounted in the pod).
    InCluster,
    /// A kubeconfig file.
    Kubeconfig(PathBuf),
}

impl KubeSource {
    /// The configured file if any, else in-cluster when the pod
    /// environment says so, else off.
    pub fn detect(kubeconfig: Option<&Path>) -> Self {
        match kubeconfig {
            Some(path) => Self::Kubeconfig(path.to_owned()),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Self::InCluster,
            None => Self::Off,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes API server is configured (give --kubeconfig, or run in a pod)")]
    NotConfigured,
    #[error("cannot use the in-cluster configuration")]
    InCluster {
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("cannot use kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build the API client")]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// What became of the delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deleted {
    Accepted,
    AlreadyGone,
    NotConfigured(String),
    Failed(String),
}

/// The pods API of one API server.
#[derive(Clone)]
pub struct PodApi {
    client: Client,
    deadline: Duration,
}

impl PodApi {
    /// A client for `source`; nothing is sent until the first delete.
    pub async fn connect(source: &KubeSource, deadline: Duration) -> Result<Self, KubeError> {
        Ok(Self::with_client(client(source).await?, deadline))
    }

    /// Wraps an existing client (tests give a mock service).
    pub fn with_client(client: Client, deadline: Duration) -> Self {
        Self { client, deadline }
    }

    /// Deletes pod `namespace/name` at once (grace period 0), only if its
    /// UID is still `uid`: a pod recreated under the same name is not
    /// touched.
    pub async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Deleted {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = delete_params(uid);
        match tokio::time::timeout(self.deadline, pods.delete(name, &params)).await {
            Err(_) => Deleted::Failed(format!(
                "the API server did not answer within {:?}",
                self.deadline
            )),
            Ok(Ok(_)) => Deleted::Accepted,
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => Deleted::AlreadyGone,
            Ok(Err(kube::Error::Api(status))) => Deleted::Failed(format!(
                "the API server refused ({} {}): {}",
                status.code, status.reason, status.message
            )),
            Ok(Err(err)) => Deleted::Failed(crate::agent::error_chain(&err)),
        }
    }
}

/// An API client for `source`; nothing is sent until it is used.
pub async fn client(source: &KubeSource) -> Result<Client, KubeError> {
    let config = match source {
        KubeSource::Off => return Err(KubeError::NotConfigured),
        KubeSource::InCluster => {
            Config::incluster().map_err(|source| KubeError::InCluster { source })?
        }
        KubeSource::Kubeconfig(path) => from_file(path).await?,
    };
    Client::try_from(config).map_err(|source| KubeError::Client { source })
}

async fn from_file(path: &Path) -> Result<Config, KubeError> {
    let file_error = |source| KubeError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(file_error)?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(file_error)
}

/// Grace period 0, and the UID as a precondition.
pub fn delete_params(uid: &str) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{json, Value};
    use tower_test::mock;

    use super::*;

    const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

    /// An API server that answers one request with `status` and `body`,
    /// and hands back what it was sent.
    fn api_server(
        status: StatusCode,
        body: Value,
    ) -> (PodApi, tokio::task::JoinHandle<(String, String, Value)>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, respond) = handle.next_request().await.expect("one request");
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let sent: Value = serde_json::from_slice(&bytes).unwrap();
            let reply = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            respond.send_response(reply);
            (method, uri, sent)
        });
        let client = Client::new(service, "default");
        (PodApi::with_client(client, Duration::from_secs(5)), server)
    }

    fn pod_json() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "uid": UID},
        })
    }

    #[tokio::test]
    async fn delete_sends_grace_period_zero_to_the_pod_url_with_the_uid() {
        let (api, server) = api_server(StatusCode::OK, pod_json());

        let deleted = api.delete("shop", "web", UID).await;
        let (method, uri, sent) = server.await.unwrap();

        assert_eq!(deleted, Deleted::Accepted);
        assert_eq!(method, "DELETE");
        assert_eq!(
            uri.split('?').next(),
            Some("/api/v1/namespaces/shop/pods/web")
        );
        assert_eq!(sent["gracePeriodSeconds"], json!(0));
        assert_eq!(sent["preconditions"]["uid"], json!(UID));
    }

    #[tokio::test]
    async fn a_pod_the_api_server_does_not_have_is_already_gone() {
        let status = json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "pods \"web\" not found", "reason": "NotFound", "code": 404,
        });
        let (api, server) = api_server(StatusCode::NOT_FOUND, status);

        let deleted = api.delete("shop", "web", UID).await;
        server.await.unwrap();

        assert_eq!(deleted, Deleted::AlreadyGone);
    }

    #[tokio::test]
    async fn a_refusal_is_reported_with_the_api_servers_words() {
        let status = json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "Precondition failed: UID in precondition: x, UID in object meta: y",
            "reason": "Conflict", "code": 409,
        });
        let (api, server) = api_server(StatusCode::CONFLICT, status);

        let deleted = api.delete("shop", "web", UID).await;
        server.await.unwrap();

        match deleted {
            Deleted::Failed(why) => assert!(why.contains("409") && why.contains("UID"), "{why}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_api_server_that_does_not_answer_costs_the_deadline() {
        let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = PodApi::with_client(Client::new(service, "default"), Duration::from_millis(200));

        let started = std::time::Instant::now();
        let deleted = api.delete("shop", "web", UID).await;

        assert!(matches!(&deleted, Deleted::Failed(w) if w.contains("did not answer")));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn no_source_means_not_configured() {
        let err = PodApi::connect(&KubeSource::Off, Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, KubeError::NotConfigured));
    }

    #[test]
    fn an_explicit_kubeconfig_wins() {
        let path = Path::new("/etc/k.yaml");
        assert_eq!(
            KubeSource::detect(Some(path)),
            KubeSource::Kubeconfig(path.to_owned())
        );
    }
}
