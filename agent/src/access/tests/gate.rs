//! The gate over a fake node: guards, dry runs and audit lines, without a
//! kernel.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use stockade_proto::v1::{self, pod_selector::Target, PodName, PodSelector};
use tonic::Code;

use crate::{
    access::gate::Node,
    access::{
        audit::AuditLog,
        guards::{GuardConfig, Guards},
        Caller, Gate, Role,
    },
    agent::AgentError,
};

const WEB: &str = "aaaaaaaa-bbbb-4ccc-8ddd-000000000001";
const DNS: &str = "aaaaaaaa-bbbb-4ccc-8ddd-000000000002";
const AGENT: &str = "aaaaaaaa-bbbb-4ccc-8ddd-000000000003";

/// A node with a few pods that counts the orders it is asked to carry out.
struct FakeNode {
    pods: Vec<v1::Pod>,
    isolated: AtomicUsize,
    released: AtomicUsize,
}

fn pod(uid: &str, namespace: &str, name: &str, isolated: bool) -> v1::Pod {
    v1::Pod {
        uid: uid.into(),
        namespace: namespace.into(),
        name: name.into(),
        cgroup_path: format!("/kubepods/besteffort/pod{uid}"),
        isolated,
        ..v1::Pod::default()
    }
}

impl FakeNode {
    fn new(pods: Vec<v1::Pod>) -> Self {
        Self {
            pods,
            isolated: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
        }
    }

    fn three_pods() -> Self {
        Self::new(vec![
            pod(WEB, "shop", "web", false),
            pod(DNS, "kube-system", "coredns", false),
            pod(AGENT, "stockade-system", "agent", false),
        ])
    }

    fn acted(&self) -> usize {
        self.isolated.load(Ordering::SeqCst) + self.released.load(Ordering::SeqCst)
    }
}

impl Node for FakeNode {
    fn node_name(&self) -> String {
        "fake".into()
    }

    async fn pods(&self) -> Result<Vec<v1::Pod>, AgentError> {
        Ok(self.pods.clone())
    }

    fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError> {
        Ok(Vec::new())
    }

    fn missing_for(&self, _: &str) -> Option<String> {
        None
    }

    async fn isolate(&self, _: &v1::IsolateRequest) -> Result<v1::Isolation, AgentError> {
        self.isolated.fetch_add(1, Ordering::SeqCst);
        Ok(v1::Isolation::default())
    }

    async fn release(&self, _: &v1::ReleaseRequest) -> Result<v1::ReleaseResponse, AgentError> {
        self.released.fetch_add(1, Ordering::SeqCst);
        Ok(v1::ReleaseResponse::default())
    }
}

struct Setup {
    gate: Gate,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

fn gate(config: GuardConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let log = Arc::new(AuditLog::open(&audit).unwrap());
    let gate = Gate::new(Guards::new(config), log);
    Setup {
        gate,
        audit,
        _dir: dir,
    }
}

impl Setup {
    fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn coordinator() -> Caller {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    Caller::Remote {
        identity: "spiffe://test/coordinator".into(),
        role: Role::Responder,
        peer: Some(peer),
    }
}

fn selector(uid: &str) -> Option<PodSelector> {
    Some(PodSelector {
        target: Some(Target::Uid(uid.into())),
    })
}

fn isolate(uid: &str, dry_run: bool) -> v1::IsolateRequest {
    v1::IsolateRequest {
        pod: selector(uid),
        reason: "alert 7".into(),
        allow: vec![v1::AllowRule {
            cidr: "10.0.0.10".into(),
            ..v1::AllowRule::default()
        }],
        dry_run,
        ..v1::IsolateRequest::default()
    }
}

fn release(uid: &str, dry_run: bool) -> v1::ReleaseRequest {
    v1::ReleaseRequest {
        order_id: String::new(),
        all: false,
        pod: selector(uid),
        reason: "cleared".into(),
        dry_run,
    }
}

#[tokio::test]
async fn a_dry_run_isolate_reports_the_plan_and_changes_nothing() {
    let setup = gate(GuardConfig {
        max_orders_per_minute: 1,
        ..GuardConfig::default()
    });
    let node = FakeNode::three_pods();

    for _ in 0..3 {
        let reply = setup
            .gate
            .isolate(&node, &coordinator(), &isolate(WEB, true))
            .await;
        let reply = reply.unwrap();
        let plan = reply.isolation.unwrap();
        assert!(reply.dry_run);
        assert_eq!(plan.pod.unwrap().name, "web");
        assert_eq!(plan.allow[0].cidr, "10.0.0.10/32");
        assert!(plan.enforced_at.is_none() && plan.attachments.is_empty());
    }

    assert_eq!(node.acted(), 0);
    let real = setup
        .gate
        .isolate(&node, &coordinator(), &isolate(WEB, false))
        .await;
    assert!(
        real.is_ok(),
        "dry runs must not use up the rate limit: {real:?}"
    );
    assert_eq!(node.acted(), 1);
    let lines = setup.audit_lines();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["result"], "dry-run");
    assert_eq!(lines[0]["dry_run"], true);
    assert_eq!(lines[3]["result"], "done");
    assert_eq!(lines[3]["caller"], "spiffe://test/coordinator");
    assert_eq!(lines[3]["target"], format!("uid {WEB}"));
}

#[tokio::test]
async fn a_dry_run_release_checks_the_pod_is_isolated_and_changes_nothing() {
    let setup = gate(GuardConfig::default());
    let node = FakeNode::new(vec![
        pod(WEB, "shop", "web", true),
        pod(DNS, "shop", "db", false),
    ]);

    let reply = setup
        .gate
        .release(&node, &coordinator(), &release(WEB, true))
        .await;
    let not_isolated = setup
        .gate
        .release(&node, &coordinator(), &release(DNS, true))
        .await;

    let reply = reply.unwrap();
    assert!(reply.dry_run && reply.verified_at.is_none());
    assert_eq!(not_isolated.unwrap_err().code(), Code::NotFound);
    assert_eq!(node.acted(), 0);
}

#[tokio::test]
async fn a_dry_run_is_refused_by_the_guards_like_the_order() {
    let setup = gate(GuardConfig::default());
    let node = FakeNode::three_pods();

    let status = setup
        .gate
        .isolate(&node, &coordinator(), &isolate(DNS, true))
        .await;

    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "namespace kube-system is protected: its pods are never contained"
    );
    assert_eq!(setup.audit_lines()[0]["result"], "refused");
}

#[tokio::test]
async fn every_guard_refuses_with_its_reason_and_is_audited() {
    let setup = gate(GuardConfig {
        own_pod_uid: Some(WEB.into()),
        ..GuardConfig::default()
    });
    let node = FakeNode::three_pods();
    let caller = coordinator();

    let cases = [
        (DNS, "namespace kube-system is protected"),
        (AGENT, "namespace stockade-system is protected"),
        (WEB, "is the agent's own pod"),
    ];
    for (uid, reason) in cases {
        let status = setup
            .gate
            .isolate(&node, &caller, &isolate(uid, false))
            .await;
        let status = status.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{uid}");
        assert!(status.message().contains(reason), "{status:?}");
    }

    assert_eq!(node.acted(), 0);
    let lines = setup.audit_lines();
    assert_eq!(lines.len(), 3);
    assert!(lines[2]["reason"].as_str().unwrap().contains("own pod"));
}

#[tokio::test]
async fn the_share_guard_counts_the_pods_already_isolated() {
    let setup = gate(GuardConfig::default());
    let node = FakeNode::new(vec![
        pod(WEB, "shop", "web", false),
        pod(DNS, "shop", "db", true),
        pod(AGENT, "shop", "cache", false),
    ]);

    let status = setup
        .gate
        .isolate(&node, &coordinator(), &isolate(WEB, false))
        .await;

    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "2 of the node's 3 pods would be contained, over the limit of 50% (1 pods)"
    );
    let local = setup
        .gate
        .isolate(&node, &Caller::Local, &isolate(WEB, false))
        .await;
    let status = local.expect_err("local root is share-limited by default");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let exempt = gate(GuardConfig {
        exempt_local: true,
        ..GuardConfig::default()
    });
    let local = exempt
        .gate
        .isolate(&node, &Caller::Local, &isolate(WEB, false))
        .await;
    assert!(local.is_ok(), "exempted local root: {local:?}");
}

#[tokio::test]
async fn the_rate_guard_refuses_the_order_past_the_limit() {
    let setup = gate(GuardConfig {
        max_orders_per_minute: 2,
        ..GuardConfig::default()
    });
    let node = FakeNode::three_pods();
    let caller = coordinator();

    setup
        .gate
        .release(&node, &caller, &release(WEB, false))
        .await
        .unwrap();
    setup
        .gate
        .isolate(&node, &caller, &isolate(WEB, false))
        .await
        .unwrap();
    let status = setup
        .gate
        .isolate(&node, &caller, &isolate(WEB, false))
        .await;

    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status
        .message()
        .starts_with("rate limit: 2 mutating orders"));
    assert_eq!(node.acted(), 2);
    assert_eq!(setup.audit_lines()[2]["code"], "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn protected_namespaces_bind_local_root_too() {
    let setup = gate(GuardConfig::default());
    let node = FakeNode::three_pods();

    let status = setup
        .gate
        .isolate(&node, &Caller::Local, &isolate(DNS, false))
        .await;

    assert_eq!(status.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(setup.audit_lines()[0]["caller"], "local:root");
}

#[tokio::test]
async fn orders_are_validated_before_anything_else() {
    let setup = gate(GuardConfig::default());
    let node = FakeNode::three_pods();
    let named = |namespace: &str| {
        Some(PodSelector {
            target: Some(Target::Name(PodName {
                namespace: namespace.into(),
                name: "web".into(),
            })),
        })
    };
    let hostile = v1::IsolateRequest {
        pod: named("../../etc"),
        ..isolate(WEB, true)
    };

    let status = setup.gate.isolate(&node, &coordinator(), &hostile).await;

    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("pod.name.namespace: "));
    assert_eq!(setup.audit_lines()[0]["target"], "../../etc/web");
}

#[tokio::test]
async fn a_pod_not_on_the_node_is_not_found() {
    let setup = gate(GuardConfig::default());
    let node = FakeNode::three_pods();
    let absent = "11111111-2222-4333-8444-555555555555";

    let status = setup
        .gate
        .isolate(&node, &coordinator(), &isolate(absent, false))
        .await;

    assert_eq!(status.unwrap_err().code(), Code::NotFound);
    assert_eq!(node.acted(), 0);
}

#[tokio::test]
async fn other_orders_pass_the_same_guards_and_are_audited() {
    use crate::access::gate::{Effect, Guarded, Order};

    let setup = gate(GuardConfig::default());
    let node = FakeNode::three_pods();
    let caller = coordinator();
    let (dns, web) = (selector(DNS), selector(WEB));
    let kill = |pod, dry_run| Order {
        action: "kill",
        effect: Effect::Contain,
        pod,
        dry_run,
        order_id: "inc-7:kill",
        reason: "",
    };
    let acted = AtomicUsize::new(0);
    let act = || async {
        acted.fetch_add(1, Ordering::SeqCst);
        Ok::<_, AgentError>("killed")
    };

    let protected = setup
        .gate
        .guarded(&node, &caller, kill(dns.as_ref(), false), act())
        .await;
    let dry = setup
        .gate
        .guarded(&node, &caller, kill(web.as_ref(), true), act())
        .await;
    let done = setup
        .gate
        .guarded(&node, &caller, kill(web.as_ref(), false), act())
        .await;

    assert_eq!(protected.unwrap_err().code(), Code::FailedPrecondition);
    let Guarded::DryRun(planned) = dry.unwrap() else {
        panic!("a dry run must not act");
    };
    assert_eq!(planned.uid, WEB);
    assert_eq!(done.unwrap(), Guarded::Done("killed"));
    assert_eq!(acted.load(Ordering::SeqCst), 1);
    let lines = setup.audit_lines();
    let results: Vec<_> = lines
        .iter()
        .map(|l| l["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["refused", "dry-run", "done"]);
    assert_eq!(lines[2]["action"], "kill");
    assert_eq!(lines[2]["order_id"], "inc-7:kill");
}

#[tokio::test]
async fn every_audited_order_is_counted_and_failures_by_kind() {
    use crate::access::gate::{Effect, Order};

    let setup = gate(GuardConfig::default());
    let node = FakeNode::three_pods();
    let caller = coordinator();
    let kill = |pod| Order {
        action: "kill",
        effect: Effect::Contain,
        pod,
        dry_run: false,
        order_id: "",
        reason: "",
    };
    let failing = || async { Err::<(), _>(AgentError::Deadline("populated 1 after 5 s".into())) };

    let _ = setup
        .gate
        .isolate(&node, &caller, &isolate(WEB, true))
        .await;
    let _ = setup
        .gate
        .isolate(&node, &caller, &isolate(WEB, false))
        .await;
    let _ = setup
        .gate
        .isolate(&node, &caller, &isolate(DNS, false))
        .await;
    let web = selector(WEB);
    let _ = setup
        .gate
        .guarded(&node, &caller, kill(web.as_ref()), failing())
        .await;

    let text = setup.gate.metrics().text();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"stockade_orders_total{action="isolate",result="dry_run"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"stockade_orders_total{action="isolate",result="ok"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"stockade_orders_total{action="isolate",result="failed_precondition"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"stockade_orders_total{action="kill",result="deadline_exceeded"} 1"#),
        "{text}"
    );
    assert!(has(r#"stockade_errors_total{kind="deadline"} 1"#), "{text}");
    // The guard's refusal of a protected pod is no error of the agent.
    assert!(has(r#"stockade_errors_total{kind="kernel"} 0"#), "{text}");
    assert_eq!(setup.audit_lines().len(), 4);
}

/// A gate whose index lists shop/web on node "fake" and whose reporter
/// sends to `api`.
fn gate_with_kube(api: &crate::k8s::mock::MockApi) -> Setup {
    use crate::k8s::{mock::pod_json, Links, PodIndex, Reporter, Settings};

    let web = serde_json::from_value(pod_json("shop", "web", WEB, "fake")).unwrap();
    let index = PodIndex::fixed(api.client(), "fake", vec![web]);
    let reporter = Reporter::start(
        api.client(),
        "fake",
        Some(index.clone()),
        Settings::default(),
    );
    let setup = gate(GuardConfig::default());
    let links = Links {
        index: Some(index),
        reporter: Some(reporter),
    };
    Setup {
        gate: setup.gate.with_kube(links),
        ..setup
    }
}

#[tokio::test]
async fn a_carried_out_order_is_reported_and_a_dry_run_is_not() {
    use crate::k8s::mock::{wait_until, MockApi, Reply};

    let api = MockApi::start(|req| Reply::Json(http::StatusCode::CREATED, req.body.clone()));
    let setup = gate_with_kube(&api);
    let node = FakeNode::three_pods();

    let (caller, dry, done) = (coordinator(), isolate(WEB, true), isolate(WEB, false));

    setup.gate.isolate(&node, &caller, &dry).await.unwrap();
    setup.gate.isolate(&node, &caller, &done).await.unwrap();
    wait_until(|| !api.requests_with("POST").is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let posts = api.requests_with("POST");
    assert_eq!(posts.len(), 1, "only the order carried out is reported");
    let event = &posts[0].body;
    assert_eq!(event["reason"], "StockadeIsolated");
    assert_eq!(event["regarding"]["name"], "web");
    assert!(event["note"].as_str().unwrap().contains("alert 7"));
}

#[tokio::test]
async fn a_pod_on_another_node_is_refused_naming_that_node() {
    use crate::k8s::mock::{pod_json, MockApi, Reply};

    let api = MockApi::start(|req| match req.path.as_str() {
        "/api/v1/namespaces/shop/pods/api" => Reply::ok(pod_json("shop", "api", DNS, "node-b")),
        _ => Reply::Json(http::StatusCode::CREATED, req.body.clone()),
    });
    let setup = gate_with_kube(&api);
    let node = FakeNode::three_pods();
    let elsewhere = v1::IsolateRequest {
        pod: Some(PodSelector {
            target: Some(Target::Name(PodName {
                namespace: "shop".into(),
                name: "api".into(),
            })),
        }),
        ..isolate(WEB, false)
    };

    let refused = setup.gate.isolate(&node, &coordinator(), &elsewhere).await;

    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "pod shop/api is on node node-b, not on this node fake"
    );
    assert_eq!(node.acted(), 0);
}

#[tokio::test]
async fn pods_the_runtime_did_not_name_are_named_by_the_index_and_guarded() {
    use crate::k8s::{
        mock::{pod_json, MockApi, Reply},
        Links, PodIndex,
    };

    let api = MockApi::start(|req| Reply::Json(http::StatusCode::CREATED, req.body.clone()));
    let dns = serde_json::from_value(pod_json("kube-system", "coredns", DNS, "fake")).unwrap();
    let index = PodIndex::fixed(api.client(), "fake", vec![dns]);
    let links = Links {
        index: Some(index),
        reporter: None,
    };
    let setup = gate(GuardConfig::default());
    let gate = setup.gate.with_kube(links);
    // No runtime socket: the node knows its pods by UID only.
    let node = FakeNode::new(vec![pod(WEB, "", "", false), pod(DNS, "", "", false)]);

    let refused = gate
        .isolate(&node, &coordinator(), &isolate(DNS, false))
        .await;
    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("kube-system"), "{status:?}");
    assert_eq!(node.acted(), 0);

    // A pod the index does not know either passes by default...
    assert!(gate
        .isolate(&node, &coordinator(), &isolate(WEB, false))
        .await
        .is_ok());
    // ...and is refused where namespaces are required.
    let strict = gate_of(GuardConfig {
        require_namespace: true,
        ..GuardConfig::default()
    });
    let refused = strict
        .isolate(&node, &coordinator(), &isolate(WEB, false))
        .await;
    let status = refused.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("namespace is unknown"),
        "{status:?}"
    );
}

fn gate_of(config: GuardConfig) -> crate::access::Gate {
    gate(config).gate
}

#[tokio::test]
async fn frozen_and_contained_pods_count_against_the_share_guard() {
    use crate::access::gate::{Effect, Order};

    let setup = gate(GuardConfig::default());
    let frozen = v1::Pod {
        frozen: true,
        ..pod(DNS, "shop", "db", false)
    };
    let contained = v1::Pod {
        contained: true,
        ..pod(AGENT, "shop", "cache", false)
    };
    let node = FakeNode::new(vec![pod(WEB, "shop", "web", false), frozen, contained]);
    let web = selector(WEB);
    let freeze = Order {
        action: "freeze",
        effect: Effect::Contain,
        pod: web.as_ref(),
        dry_run: false,
        order_id: "",
        reason: "",
    };
    let acted = AtomicUsize::new(0);
    let act = async {
        acted.fetch_add(1, Ordering::SeqCst);
        Ok::<_, AgentError>(())
    };

    let refused = setup
        .gate
        .guarded(&node, &coordinator(), freeze, act)
        .await
        .unwrap_err();

    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().starts_with("3 of the node's 3 pods"),
        "{}",
        refused.message()
    );
    assert_eq!(acted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_terminate_whose_delete_failed_is_reported_as_a_failure() {
    use crate::access::gate::{Effect, Order};
    use crate::k8s::mock::{wait_until, MockApi, Reply};

    let api = MockApi::start(|req| Reply::Json(http::StatusCode::CREATED, req.body.clone()));
    let setup = gate_with_kube(&api);
    let node = FakeNode::three_pods();
    let web = selector(WEB);
    let terminate = Order {
        action: "terminate",
        effect: Effect::Contain,
        pod: web.as_ref(),
        dry_run: false,
        order_id: "inc-9",
        reason: "miner",
    };
    let act = async {
        Ok::<_, AgentError>(v1::TerminateResponse {
            kill: Some(v1::KillResponse::default()),
            delete: v1::DeleteOutcome::Failed as i32,
            delete_detail: "the API server answered 503".into(),
            ..Default::default()
        })
    };

    let done = setup
        .gate
        .guarded(&node, &coordinator(), terminate, act)
        .await;

    assert!(done.is_ok(), "the kill was carried out: {done:?}");
    wait_until(|| !api.requests_with("POST").is_empty()).await;
    let event = &api.requests_with("POST")[0].body;
    assert_eq!(event["reason"], "StockadeTerminateFailed", "{event}");
    assert_eq!(event["type"], "Warning", "{event}");
    let lines = setup.audit_lines();
    assert_eq!(
        lines[0]["result"], "done",
        "the audit line keeps the order's result"
    );
}

/// The stand-in replies of these tests carry no times and no failures.
macro_rules! stand_in_replies {
    ($($reply:ty),*) => {$(
        impl crate::metrics::Enforced for $reply {
            fn stamps(&self) -> Option<(&prost_types::Timestamp, &prost_types::Timestamp)> {
                None
            }
        }
    )*};
}

stand_in_replies!(&'static str, ());
