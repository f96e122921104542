//! The command against a fake agent on a Unix socket in a temporary folder.

use std::path::{Path, PathBuf};

use clap::Parser;
use prost_types::Timestamp;
use stockade_proto::v1::{
    self,
    pod_selector::Target,
    stockade_server::{Stockade, StockadeServer},
    AgentInfo, GetInfoRequest, IsolateRequest, IsolateResponse, Isolation, KernelFeature,
    ListIsolationsRequest, ListIsolationsResponse, ListPodsRequest, ListPodsResponse, Pod,
    ReleaseRequest, ReleaseResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{transport::Server, Request, Response, Status};

use super::*;

/// Knows one pod, `shop/web`, and lacks one feature that `freeze` needs.
struct FakeAgent;

fn web_pod() -> Pod {
    Pod {
        uid: "0b1e".into(),
        namespace: "shop".into(),
        name: "web".into(),
        ..Pod::default()
    }
}

fn at(nanos: i32) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_800_000_000,
        nanos,
    })
}

#[tonic::async_trait]
impl Stockade for FakeAgent {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<AgentInfo>, Status> {
        let feature = |name: &str, available| KernelFeature {
            name: name.into(),
            available,
            needed_by: vec!["freeze".into()],
            ..KernelFeature::default()
        };
        let features = vec![
            feature("cgroup.kill", true),
            feature("cgroup.freeze", false),
        ];
        Ok(Response::new(AgentInfo {
            version: "0.1.0".into(),
            features,
            ..AgentInfo::default()
        }))
    }

    async fn list_pods(
        &self,
        _: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsResponse>, Status> {
        Ok(Response::new(ListPodsResponse {
            pods: vec![web_pod()],
        }))
    }

    async fn isolate(
        &self,
        request: Request<IsolateRequest>,
    ) -> Result<Response<IsolateResponse>, Status> {
        let request = request.into_inner();
        let target = request.pod.and_then(|selector| selector.target);
        if !matches!(&target, Some(Target::Name(name)) if name.name == "web") {
            return Err(Status::not_found("pod shop/db is not on this node"));
        }
        let isolation = Isolation {
            pod: Some(web_pod()),
            mode: request.mode,
            allow: request.allow,
            reason: request.reason,
            received_at: at(0),
            enforced_at: at(1_500_000),
            verified_at: at(2_000_000),
            ..Isolation::default()
        };
        Ok(Response::new(IsolateResponse {
            isolation: Some(isolation),
            dry_run: false,
        }))
    }

    async fn release(
        &self,
        _: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        Err(Status::internal("the kernel refused to detach a link"))
    }

    async fn list_isolations(
        &self,
        _: Request<ListIsolationsRequest>,
    ) -> Result<Response<ListIsolationsResponse>, Status> {
        Ok(Response::new(ListIsolationsResponse::default()))
    }

    async fn freeze(
        &self,
        request: Request<v1::FreezeRequest>,
    ) -> Result<Response<v1::FreezeResponse>, Status> {
        let events = v1::CgroupEvents {
            populated: true,
            frozen: true,
            present: true,
        };
        Ok(Response::new(v1::FreezeResponse {
            pod: Some(web_pod()),
            events: Some(events),
            received_at: at(0),
            verified_at: at(i32::try_from(request.get_ref().timeout_ms).unwrap() * 1000),
            ..Default::default()
        }))
    }

    async fn thaw(
        &self,
        _: Request<v1::ThawRequest>,
    ) -> Result<Response<v1::ThawResponse>, Status> {
        Err(Status::deadline_exceeded(
            "cgroup.events did not say frozen 0 within 5s",
        ))
    }

    async fn kill(
        &self,
        _: Request<v1::KillRequest>,
    ) -> Result<Response<v1::KillResponse>, Status> {
        Err(Status::failed_precondition("pod 0b1e contains the agent"))
    }

    async fn terminate(
        &self,
        _: Request<v1::TerminateRequest>,
    ) -> Result<Response<v1::TerminateResponse>, Status> {
        Ok(Response::new(v1::TerminateResponse {
            kill: Some(v1::KillResponse {
                pod: Some(web_pod()),
                method: v1::KillMethod::CgroupKill as i32,
                ..v1::KillResponse::default()
            }),
            delete: v1::DeleteOutcome::NotConfigured as i32,
            delete_detail: "no Kubernetes API server is configured".into(),
            deleted_at: None,
            ..Default::default()
        }))
    }

    async fn contain(
        &self,
        _: Request<v1::ContainRequest>,
    ) -> Result<Response<v1::ContainResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn uncontain(
        &self,
        _: Request<v1::UncontainRequest>,
    ) -> Result<Response<v1::UncontainResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn get_order(
        &self,
        _: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn list_orders(
        &self,
        _: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn extend_isolation(
        &self,
        _: Request<v1::ExtendIsolationRequest>,
    ) -> Result<Response<v1::IsolateResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// Serves [`FakeAgent`] until the test's runtime ends.
fn serve(dir: &Path) -> PathBuf {
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = Server::builder()
        .add_service(StockadeServer::new(FakeAgent))
        .serve_with_incoming(UnixListenerStream::new(listener));
    tokio::spawn(server);
    path
}

async fn stockade(socket: &Path, args: &[&str]) -> Result<Report, Error> {
    let socket = socket.to_string_lossy();
    let head = ["stockade", "--socket", &socket, "--timeout", "5s"];
    let cli = Cli::try_parse_from(head.iter().chain(args)).unwrap();
    execute(&cli).await
}

#[tokio::test]
async fn isolate_prints_the_mode_and_the_order_to_enforced_time() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());
    let args = [
        "isolate",
        "shop/web",
        "--strict",
        "--reason",
        "miner",
        "--allow",
        "fd00::/64",
    ];

    let report = stockade(&socket, &args).await.unwrap();

    assert!(!report.problem);
    assert!(report
        .text
        .starts_with("isolated shop/web (uid 0b1e) in strict mode\n"));
    assert!(
        report.text.contains("allow              fd00::/64\n"),
        "{}",
        report.text
    );
    assert!(
        report.text.contains("order to enforced  1.5 ms\n"),
        "{}",
        report.text
    );
}

#[tokio::test]
async fn isolate_prints_the_reply_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());
    let args = ["-o", "json", "isolate", "shop/web", "--reason", "miner"];

    let report = stockade(&socket, &args).await.unwrap();

    let reply: serde_json::Value = serde_json::from_str(&report.text).unwrap();
    let isolation = &reply["isolation"];
    assert_eq!(isolation["mode"], "ISOLATION_MODE_ALLOW_NODE_PROBES");
    assert_eq!(isolation["pod"]["name"], "web");
    assert_eq!(isolation["enforced_at"], "2027-01-15T08:00:00.001500Z");
}

#[tokio::test]
async fn an_unknown_pod_is_reported_with_its_code_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());

    let err = stockade(&socket, &["isolate", "shop/db", "--reason", "x"])
        .await
        .unwrap_err();

    assert_eq!(
        err.to_string(),
        "the agent answered NOT_FOUND: pod shop/db is not on this node"
    );
    assert_eq!(err.exit_code(), ExitCode::from(2));
}

#[tokio::test]
async fn an_internal_failure_exits_with_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());

    let err = stockade(&socket, &["release", "--uid", "0b1e"])
        .await
        .unwrap_err();

    assert!(
        err.to_string().starts_with("the agent answered INTERNAL: "),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::FAILURE);
}

#[tokio::test]
async fn doctor_reports_a_problem_when_a_needed_feature_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());

    let report = stockade(&socket, &["doctor"]).await.unwrap();

    assert!(report.problem);
    assert!(
        report.text.contains("cgroup.freeze  MISSING  freeze"),
        "{}",
        report.text
    );
}

#[tokio::test]
async fn status_counts_pods_and_isolations() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());

    let report = stockade(&socket, &["status"]).await.unwrap();

    assert!(report.text.contains("pods        1\n"), "{}", report.text);
    assert!(report
        .text
        .contains("isolations  0 (0 strict, 0 node-probes)\n"));
}

#[tokio::test]
async fn a_missing_socket_asks_whether_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");

    let err = stockade(&socket, &["pods"]).await.unwrap_err();

    let expected = format!(
        "is stockade-agent running? socket {} not found",
        socket.display()
    );
    assert_eq!(err.to_string(), expected);
}

#[tokio::test]
async fn a_socket_nobody_listens_on_asks_whether_the_agent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    let err = stockade(&socket, &["pods"]).await.unwrap_err();

    assert!(matches!(err, Error::SocketRefused { .. }), "{err}");
}

#[tokio::test]
async fn an_agent_that_never_answers_is_reported_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let _silent = UnixListener::bind(&socket).unwrap();
    let cli = Cli::try_parse_from(["stockade", "--timeout", "200ms", "pods"]).unwrap();
    let cli = Cli { socket, ..cli };

    let err = execute(&cli).await.unwrap_err();

    let expected = "no answer from the agent within 200ms: is it stuck? --timeout waits longer";
    assert_eq!(err.to_string(), expected);
}

#[test]
fn a_refused_permission_says_to_run_as_root() {
    let err = socket_error(io::ErrorKind::PermissionDenied, Path::new("/run/s.sock"));

    let text = err.map(|err| err.to_string());
    assert_eq!(
        text.as_deref(),
        Some("the socket is root-only: run as root (/run/s.sock refused access)")
    );
}

#[test]
fn status_codes_are_named_as_in_grpc() {
    assert_eq!(
        code_name(tonic::Code::FailedPrecondition),
        "FAILED_PRECONDITION"
    );
    assert_eq!(code_name(tonic::Code::Internal), "INTERNAL");
}

#[tokio::test]
async fn freeze_prints_what_cgroup_events_says_and_passes_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());
    let args = [
        "freeze",
        "shop/web",
        "--reason",
        "forensics",
        "--wait",
        "2s",
    ];

    let report = stockade(&socket, &args).await.unwrap();

    assert!(
        report
            .text
            .starts_with("froze shop/web (uid 0b1e): cgroup.events says populated 1, frozen 1\n"),
        "{}",
        report.text
    );
    assert!(
        report.text.contains("order to verified  2.0 ms"),
        "{}",
        report.text
    );
}

#[tokio::test]
async fn a_thaw_that_did_not_settle_reports_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());

    let err = stockade(&socket, &["thaw", "shop/web"]).await.unwrap_err();

    assert!(
        err.to_string()
            .starts_with("the agent answered DEADLINE_EXCEEDED: "),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::FAILURE);
}

#[tokio::test]
async fn a_refused_kill_exits_with_2() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());
    let args = ["kill", "shop/web", "--container", "app", "--reason", "x"];

    let err = stockade(&socket, &args).await.unwrap_err();

    assert!(err.to_string().contains("FAILED_PRECONDITION"), "{err}");
    assert_eq!(err.exit_code(), ExitCode::from(2));
}

#[tokio::test]
async fn a_terminate_whose_delete_did_not_happen_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let socket = serve(dir.path());

    let report = stockade(&socket, &["terminate", "shop/web", "--reason", "x"])
        .await
        .unwrap();

    assert!(report.problem);
    assert!(
        report
            .text
            .contains("API delete: NOT DONE, no API server configured: no Kubernetes"),
        "{}",
        report.text
    );
}

#[test]
fn release_all_lists_every_pod_it_released() {
    let reply = ReleaseResponse {
        released: vec![
            web_pod(),
            Pod {
                uid: "7a11".into(),
                ..Pod::default()
            },
        ],
        ..ReleaseResponse::default()
    };
    let text = super::render::released_report(&reply);
    assert!(text.starts_with("released 2 pod(s)"), "{text}");
    assert!(
        text.contains("shop/web") && text.contains("0b1e") && text.contains("7a11"),
        "{text}"
    );
    let none = super::render::released_report(&ReleaseResponse::default());
    assert_eq!(none, "no isolation on this node: nothing to release\n");
    let value = super::json::release(&reply);
    assert_eq!(
        value["released"].as_array().map(Vec::len),
        Some(2),
        "{value}"
    );
}
