//! The agent's client of the node's container runtime (CRI `runtime.v1`).
//!
//! The runtime is a helper, never a dependency: it names pods and can stop a
//! container politely, but enforcement works without it. So every call has a
//! deadline, enforced both by gRPC and by a local timer, and a runtime that
//! hangs costs the caller at most that deadline.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use stockade_proto::cri::{
    runtime_service_client::RuntimeServiceClient, Container, ContainerState, ListContainersRequest,
    ListPodSandboxRequest, PodSandbox, PodSandboxState, StopContainerRequest,
};
use tonic::transport::Channel;

/// Where the common runtimes listen, in the order they are tried: containerd,
/// CRI-O (both spellings of its run directory), cri-dockerd.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
];

/// Longest grace period `stop_container` passes to the runtime, in seconds.
/// Longer requests are shortened to it, so that one call stays bounded.
pub const MAX_STOP_TIMEOUT_S: i64 = 300;

/// A pod sandbox as the runtime reports it, with its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriPod {
    /// Kubernetes pod UID.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The runtime's id of the sandbox. A pod whose sandbox was recreated
    /// appears once per sandbox the runtime still holds.
    pub sandbox_id: String,
    /// The sandbox is READY (false: NOTREADY, its processes are gone or going).
    pub ready: bool,
    /// Sorted by name, then attempt.
    pub containers: Vec<CriContainer>,
}

/// A container of a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriContainer {
    /// The runtime's id of the container (also its cgroup directory's name
    /// for containerd and CRI-O with the cgroupfs driver).
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// `"running"`, `"exited"`, `"created"` or `"unknown"`.
    pub state: String,
    /// How many times kubelet restarted this container before this one.
    pub attempt: u32,
}

/// What went wrong talking to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the container runtime at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("container runtime call {rpc} failed: {status}")]
    Call {
        rpc: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("container runtime call {rpc} did not answer within {after:?}")]
    DeadlineExceeded { rpc: &'static str, after: Duration },
}

/// A connection to one runtime's CRI socket. Cheap to clone; clones share
/// the connection.
#[derive(Clone, Debug)]
pub struct CriClient {
    socket: PathBuf,
    deadline: Duration,
    client: RuntimeServiceClient<Channel>,
}

impl CriClient {
    /// Connects to the runtime at `socket`. `deadline` bounds the connection
    /// and, later, each call (a stop additionally gets its grace period).
    pub async fn connect(socket: &Path, deadline: Duration) -> Result<Self, CriError> {
        // The channel's own per-request timeout must not cut a stop with a
        // long grace period short; each call sets its own, shorter, deadline.
        let channel_timeout =
            deadline.saturating_add(Duration::from_secs(MAX_STOP_TIMEOUT_S.unsigned_abs()));
        let channel = match tokio::time::timeout(
            deadline,
            crate::uds::connect(socket, channel_timeout),
        )
        .await
        {
            Err(_) => {
                return Err(CriError::DeadlineExceeded {
                    rpc: "connect",
                    after: deadline,
                })
            }
            Ok(Err(source)) => {
                return Err(CriError::Connect {
                    socket: socket.to_owned(),
                    source,
                })
            }
            Ok(Ok(channel)) => channel,
        };
        Ok(Self {
            socket: socket.to_owned(),
            deadline,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Every pod sandbox of the runtime, ready or not, with its containers.
    /// Sorted by namespace, name and sandbox id.
    pub async fn list_pods(&self) -> Result<Vec<CriPod>, CriError> {
        let mut sandboxes_client = self.client.clone();
        let mut containers_client = self.client.clone();
        let sandboxes = self.call(
            "ListPodSandbox",
            self.deadline,
            |req| async move { sandboxes_client.list_pod_sandbox(req).await },
            ListPodSandboxRequest { filter: None },
        );
        let containers = self.call(
            "ListContainers",
            self.deadline,
            |req| async move { containers_client.list_containers(req).await },
            ListContainersRequest { filter: None },
        );
        let (sandboxes, containers) = tokio::try_join!(sandboxes, containers)?;
        Ok(join_pods(sandboxes.items, containers.containers))
    }

    /// Asks the runtime to stop container `id`: the stop signal, then SIGKILL
    /// after `timeout_s` seconds (0: at once). `timeout_s` is clamped to
    /// `0..=MAX_STOP_TIMEOUT_S`; the call's deadline is the client's deadline
    /// plus that grace period.
    pub async fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        let timeout_s = timeout_s.clamp(0, MAX_STOP_TIMEOUT_S);
        let deadline = self
            .deadline
            .saturating_add(Duration::from_secs(timeout_s.unsigned_abs()));
        let mut client = self.client.clone();
        let request = StopContainerRequest {
            container_id: id.to_owned(),
            timeout: timeout_s,
        };
        self.call(
            "StopContainer",
            deadline,
            |req| async move { client.stop_container(req).await },
            request,
        )
        .await
        .map(|_| ())
    }

    /// Runs one unary call with `deadline`, sent to the runtime as the gRPC
    /// deadline and enforced locally as well.
    async fn call<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        deadline: Duration,
        send: F,
        message: Req,
    ) -> Result<Resp, CriError>
    where
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(deadline);
        match tokio::time::timeout(deadline, send(request)).await {
            Err(_) => Err(CriError::DeadlineExceeded {
                rpc,
                after: deadline,
            }),
            Ok(Err(status)) if is_timeout(&status) => Err(CriError::DeadlineExceeded {
                rpc,
                after: deadline,
            }),
            Ok(Err(status)) => Err(CriError::Call {
                rpc,
                status: Box::new(status),
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

/// Whether `status` reports a deadline: the runtime's (`DEADLINE_EXCEEDED`)
/// or the channel's own timer (`CANCELLED` caused by `TimeoutExpired`).
fn is_timeout(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::DeadlineExceeded {
        return true;
    }
    // The deadline travels with the call (grpc-timeout), and a Go runtime
    // whose own work under it runs out may answer first, with code Unknown
    // and its context's error, racing our timer by microseconds.
    if status.message().contains("context deadline exceeded") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The name Stockade uses for a CRI container state.
pub fn container_state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerRunning) => "running",
        Ok(ContainerState::ContainerExited) => "exited",
        Ok(ContainerState::ContainerCreated) => "created",
        Ok(ContainerState::ContainerUnknown) | Err(_) => "unknown",
    }
}

/// Attaches each container to its sandbox. Containers whose sandbox is not
/// in `sandboxes` (listed between the two calls) are left out; sandboxes
/// without metadata get empty names rather than being hidden.
pub fn join_pods(sandboxes: Vec<PodSandbox>, containers: Vec<Container>) -> Vec<CriPod> {
    let mut pods: Vec<CriPod> = sandboxes
        .into_iter()
        .map(|sandbox| {
            let ready = sandbox.state() == PodSandboxState::SandboxReady;
            let metadata = sandbox.metadata.unwrap_or_default();
            CriPod {
                uid: metadata.uid,
                namespace: metadata.namespace,
                name: metadata.name,
                sandbox_id: sandbox.id,
                ready,
                containers: Vec::new(),
            }
        })
        .collect();
    pods.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.sandbox_id).cmp(&(&b.namespace, &b.name, &b.sandbox_id))
    });
    for container in containers {
        let Some(pod) = pods
            .iter_mut()
            .find(|p| p.sandbox_id == container.pod_sandbox_id)
        else {
            continue;
        };
        let metadata = container.metadata.unwrap_or_default();
        pod.containers.push(CriContainer {
            id: container.id,
            name: metadata.name,
            state: container_state_name(container.state).to_owned(),
            attempt: metadata.attempt,
        });
    }
    for pod in &mut pods {
        pod.containers
            .sort_by(|a, b| (&a.name, a.attempt).cmp(&(&b.name, b.attempt)));
    }
    pods
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use stockade_proto::cri::{ContainerMetadata, PodSandboxMetadata};

    use super::*;

    #[test]
    fn a_runtime_whose_own_deadline_ran_out_did_not_answer_in_time() {
        let go = tonic::Status::unknown(
            "failed to kill container \"0070\": context deadline exceeded: unknown",
        );
        assert!(is_timeout(&go));
        assert!(is_timeout(&tonic::Status::deadline_exceeded("late")));
        assert!(!is_timeout(&tonic::Status::not_found("no such container")));
    }

    fn sandbox(id: &str, ns: &str, name: &str, state: PodSandboxState) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: ns.into(),
                attempt: 0,
            }),
            state: state as i32,
            ..Default::default()
        }
    }

    fn container(id: &str, sandbox: &str, name: &str, attempt: u32, state: i32) -> Container {
        Container {
            id: id.into(),
            pod_sandbox_id: sandbox.into(),
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state,
            ..Default::default()
        }
    }

    #[test]
    fn states_map_to_names() {
        assert_eq!(
            container_state_name(ContainerState::ContainerRunning as i32),
            "running"
        );
        assert_eq!(
            container_state_name(ContainerState::ContainerExited as i32),
            "exited"
        );
        assert_eq!(
            container_state_name(ContainerState::ContainerCreated as i32),
            "created"
        );
        assert_eq!(
            container_state_name(ContainerState::ContainerUnknown as i32),
            "unknown"
        );
        assert_eq!(container_state_name(42), "unknown");
        assert_eq!(container_state_name(-1), "unknown");
    }

    #[test]
    fn join_attaches_containers_to_their_sandbox() {
        let sandboxes = vec![
            sandbox("sb-b", "prod", "web", PodSandboxState::SandboxReady),
            sandbox("sb-a", "dev", "db", PodSandboxState::SandboxNotready),
            sandbox("sb-c", "prod", "empty", PodSandboxState::SandboxReady),
        ];
        let containers = vec![
            container(
                "c3",
                "sb-b",
                "sidecar",
                0,
                ContainerState::ContainerRunning as i32,
            ),
            container(
                "c2",
                "sb-b",
                "app",
                1,
                ContainerState::ContainerRunning as i32,
            ),
            container(
                "c1",
                "sb-b",
                "app",
                0,
                ContainerState::ContainerExited as i32,
            ),
            container(
                "c4",
                "sb-a",
                "pg",
                0,
                ContainerState::ContainerCreated as i32,
            ),
            container(
                "orphan",
                "sb-gone",
                "x",
                0,
                ContainerState::ContainerRunning as i32,
            ),
        ];
        let pods = join_pods(sandboxes, containers);
        let names: Vec<_> = pods
            .iter()
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(names, [("dev", "db"), ("prod", "empty"), ("prod", "web")]);

        let db = &pods[0];
        assert!(!db.ready, "NOTREADY sandboxes are listed, not ready");
        assert_eq!(db.uid, "uid-db");
        assert_eq!(db.sandbox_id, "sb-a");
        assert_eq!(db.containers.len(), 1);
        assert_eq!(db.containers[0].state, "created");

        assert!(pods[1].ready);
        assert!(pods[1].containers.is_empty());

        let web = &pods[2];
        let got: Vec<_> = web
            .containers
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.attempt, c.state.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("c1", "app", 0, "exited"),
                ("c2", "app", 1, "running"),
                ("c3", "sidecar", 0, "running")
            ]
        );
        assert!(pods
            .iter()
            .all(|p| p.containers.iter().all(|c| c.id != "orphan")));
    }

    #[test]
    fn join_keeps_sandboxes_without_metadata() {
        let bare = PodSandbox {
            id: "sb".into(),
            ..Default::default()
        };
        let pods = join_pods(vec![bare], Vec::new());
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].sandbox_id, "sb");
        assert!(pods[0].ready, "state 0 is READY in the CRI");
        assert_eq!(pods[0].uid, "");
    }

    #[tokio::test]
    async fn connect_to_a_missing_socket_fails_with_its_path() {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("stockade-cri-missing-{pid}"));
        let socket = dir.join("nothing.sock");
        let err = CriClient::connect(&socket, Duration::from_secs(2))
            .await
            .unwrap_err();
        match &err {
            CriError::Connect { socket: s, .. } => assert_eq!(s, &socket),
            other => panic!("expected Connect, got {other:?}"),
        }
        assert!(err.to_string().contains("nothing.sock"), "{err}");
    }

    /// A runtime that accepts connections and never answers must cost the
    /// caller its deadline, not more.
    #[tokio::test]
    async fn a_silent_runtime_costs_at_most_the_deadline() {
        let dir = std::env::temp_dir().join(format!("stockade-cri-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("silent.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });

        let deadline = Duration::from_millis(300);
        let started = Instant::now();
        let result = match CriClient::connect(&socket, deadline).await {
            Ok(client) => {
                let list = client.list_pods().await.map(|_| ());
                let stop = client.stop_container("c1", 0).await;
                assert!(
                    matches!(
                        stop,
                        Err(CriError::DeadlineExceeded {
                            rpc: "StopContainer",
                            ..
                        })
                    ),
                    "{stop:?}"
                );
                list
            }
            Err(e) => Err(e),
        };
        let elapsed = started.elapsed();
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(result, Err(CriError::DeadlineExceeded { .. })),
            "{result:?}"
        );
        assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    }
}
