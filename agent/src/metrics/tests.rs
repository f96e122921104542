use std::{
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// 2023-11-14T22:13:20Z, a time in the past of every test.
const T0: Duration = Duration::from_secs(1_700_000_000);

fn at(offset: Duration) -> Option<Timestamp> {
    Some((UNIX_EPOCH + T0 + offset).into())
}

fn since() -> SystemTime {
    UNIX_EPOCH + T0
}

/// The sample lines of `text` whose name and labels start with `series`.
fn samples<'a>(text: &'a str, series: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(series)).collect()
}

/// The value of the one sample named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    let mut found = text.lines().filter_map(|l| l.strip_prefix(&prefix));
    let value = found.next()?.parse().ok();
    assert!(found.next().is_none(), "{series} appears twice:\n{text}");
    value
}

fn isolated(received: Duration, enforced: Duration) -> v1::IsolateResponse {
    v1::IsolateResponse {
        isolation: Some(v1::Isolation {
            received_at: at(received),
            enforced_at: at(enforced),
            ..Default::default()
        }),
        dry_run: false,
    }
}

#[test]
fn orders_are_counted_by_action_and_result() {
    let metrics = OrderMetrics::default();
    let denied = Status::permission_denied("reader may not kill");
    let absent = Status::not_found("no such pod");

    metrics.order("isolate", false, None);
    metrics.order("isolate", false, None);
    metrics.order("isolate", true, None);
    metrics.order("isolate", true, Some(&absent));
    metrics.order("kill", false, Some(&denied));

    let text = metrics.text();
    let orders = |labels: &str| value(&text, &format!("stockade_orders_total{{{labels}}}"));
    assert_eq!(orders(r#"action="isolate",result="ok""#), Some(2.0));
    assert_eq!(orders(r#"action="isolate",result="dry_run""#), Some(1.0));
    assert_eq!(orders(r#"action="isolate",result="not_found""#), Some(1.0));
    assert_eq!(
        orders(r#"action="kill",result="permission_denied""#),
        Some(1.0)
    );
    assert_eq!(samples(&text, "stockade_orders_total").len(), 4, "{text}");
    assert!(text.contains("# TYPE stockade_orders counter\n"), "{text}");
}

#[test]
fn result_labels_are_the_code_names_in_snake_case() {
    for code in 0..=16 {
        let code = Code::from(code);
        let audit_name = crate::cli::code_name(code).to_lowercase();
        assert_eq!(code_label(code), audit_name, "{code:?}");
    }
}

#[test]
fn latency_lands_in_the_bucket_of_its_duration() {
    let metrics = OrderMetrics::default();

    let three_ms = isolated(Duration::ZERO, Duration::from_millis(3));
    metrics.enforced("isolate", since(), &three_ms);
    let two_s = isolated(Duration::ZERO, Duration::from_secs(2));
    metrics.enforced("isolate", since(), &two_s);

    let text = metrics.text();
    let bucket = |le: &str| {
        let series =
            format!(r#"stockade_order_to_enforced_seconds_bucket{{le="{le}",action="isolate"}}"#);
        value(&text, &series).unwrap_or_else(|| panic!("no bucket {le}:\n{text}"))
    };
    assert_eq!(bucket("0.0025"), 0.0);
    assert_eq!(bucket("0.005"), 1.0);
    assert_eq!(bucket("1.0"), 1.0);
    assert_eq!(bucket("2.5"), 2.0);
    assert_eq!(bucket("+Inf"), 2.0);
    let count = r#"stockade_order_to_enforced_seconds_count{action="isolate"}"#;
    assert_eq!(value(&text, count), Some(2.0));
    let sum = r#"stockade_order_to_enforced_seconds_sum{action="isolate"}"#;
    let sum = value(&text, sum).unwrap_or_default();
    assert!((sum - 2.003).abs() < 1e-9, "sum {sum}");
    assert!(
        text.contains("# UNIT stockade_order_to_enforced_seconds seconds\n"),
        "{text}"
    );
}

#[test]
fn replayed_answers_and_dry_runs_are_not_timed() {
    let metrics = OrderMetrics::default();

    // Received a second before this call started: the first answer to an
    // order id sent again.
    let replayed = isolated(Duration::ZERO, Duration::from_millis(3));
    let later = since() + Duration::from_secs(1);
    metrics.enforced("isolate", later, &replayed);
    let dry_run = v1::ReleaseResponse {
        received_at: at(Duration::ZERO),
        dry_run: true,
        ..Default::default()
    };
    metrics.enforced("release", since(), &dry_run);

    let text = metrics.text();
    assert!(
        samples(&text, "stockade_order_to_enforced_seconds").is_empty(),
        "{text}"
    );
}

#[test]
fn every_reply_is_timed_from_receipt_to_verification() {
    let metrics = OrderMetrics::default();
    let (received, verified) = (at(Duration::ZERO), at(Duration::from_millis(1)));
    let kill = v1::KillResponse {
        received_at: received,
        verified_at: verified,
        ..Default::default()
    };
    metrics.enforced("kill", since(), &kill);
    let terminate = v1::TerminateResponse {
        kill: Some(kill.clone()),
        ..Default::default()
    };
    metrics.enforced("terminate", since(), &terminate);
    let freeze = v1::FreezeResponse {
        received_at: received,
        verified_at: verified,
        ..Default::default()
    };
    metrics.enforced("freeze", since(), &freeze);
    let release = v1::ReleaseResponse {
        received_at: received,
        verified_at: verified,
        ..Default::default()
    };
    metrics.enforced("release", since(), &release);

    let text = metrics.text();
    for action in ["kill", "terminate", "freeze", "release"] {
        let series = format!(r#"stockade_order_to_enforced_seconds_count{{action="{action}"}}"#);
        assert_eq!(value(&text, &series), Some(1.0), "{action}:\n{text}");
    }
}

#[test]
fn agent_errors_are_counted_by_kind_and_refusals_are_not() {
    let metrics = OrderMetrics::default();
    let before = metrics.text();
    for kind in ErrorKind::ALL {
        let series = format!(r#"stockade_errors_total{{kind="{}"}}"#, kind.as_str());
        assert_eq!(
            value(&before, &series),
            Some(0.0),
            "{series} before:\n{before}"
        );
    }

    metrics.agent_error(&AgentError::Kernel("attach".into()));
    metrics.agent_error(&AgentError::Kernel("pin".into()));
    metrics.agent_error(&AgentError::NotVerified("read back".into()));
    metrics.agent_error(&AgentError::Ledger("disk full".into()));
    metrics.agent_error(&AgentError::NotFound("no pod".into()));
    metrics.agent_error(&AgentError::Refused("own pod".into()));
    metrics.agent_error(&AgentError::Replayed {
        code: Code::Internal as i32,
        message: "the kernel refused: attach".into(),
    });

    let text = metrics.text();
    let errors = |kind: &str| value(&text, &format!(r#"stockade_errors_total{{kind="{kind}"}}"#));
    assert_eq!(errors("kernel"), Some(2.0));
    assert_eq!(errors("not_verified"), Some(1.0));
    assert_eq!(errors("ledger"), Some(1.0));
    assert_eq!(errors("deadline"), Some(0.0));
    let total: usize = ErrorKind::ALL.len();
    assert_eq!(samples(&text, "stockade_errors_total").len(), total);
}

#[test]
fn runtime_and_api_server_failures_in_replies_are_counted() {
    let metrics = OrderMetrics::default();
    let stop = |outcome: v1::RuntimeOutcome| v1::RuntimeStop {
        outcome: outcome as i32,
        ..Default::default()
    };
    let kill = v1::KillResponse {
        received_at: at(Duration::ZERO),
        verified_at: at(Duration::from_millis(1)),
        runtime: vec![
            stop(v1::RuntimeOutcome::Ok),
            stop(v1::RuntimeOutcome::Error),
            stop(v1::RuntimeOutcome::NoAnswer),
        ],
        ..Default::default()
    };
    let terminate = v1::TerminateResponse {
        kill: Some(kill.clone()),
        delete: v1::DeleteOutcome::Failed as i32,
        ..Default::default()
    };

    metrics.enforced("kill", since(), &kill);
    metrics.enforced("terminate", since(), &terminate);

    let text = metrics.text();
    let errors = |kind: &str| value(&text, &format!(r#"stockade_errors_total{{kind="{kind}"}}"#));
    assert_eq!(errors("runtime"), Some(4.0));
    assert_eq!(errors("api_server"), Some(1.0));
}

#[test]
fn build_info_names_the_version() {
    let text = OrderMetrics::default().text();
    let series = format!(
        r#"stockade_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &series), Some(1.0), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// A node whose isolations and features the test sets.
struct FakeNode {
    isolations: Mutex<Result<Vec<v1::Isolation>, String>>,
    features: Vec<Feature>,
}

impl FakeNode {
    fn new(isolations: Vec<v1::Isolation>) -> Self {
        let feature = |name, available| Feature {
            name,
            available,
            detail: String::new(),
            needed_by: &[],
        };
        Self {
            isolations: Mutex::new(Ok(isolations)),
            features: vec![feature("cgroup2", true), feature("ringbuf", false)],
        }
    }

    fn set(&self, isolations: Result<Vec<v1::Isolation>, String>) {
        *self.isolations.lock().unwrap() = isolations;
    }
}

impl Observed for FakeNode {
    fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError> {
        let now = self.isolations.lock().unwrap().clone();
        now.map_err(AgentError::Kernel)
    }

    fn features(&self) -> &[Feature] {
        &self.features
    }
}

fn isolation_with(programs: usize) -> v1::Isolation {
    v1::Isolation {
        attachments: vec![v1::Attachment::default(); programs],
        ..Default::default()
    }
}

fn scrape(metrics: &Metrics) -> String {
    metrics.render().expect("the metrics encode")
}

#[test]
fn gauges_are_read_from_the_node_at_each_scrape() {
    let node = Arc::new(FakeNode::new(vec![isolation_with(6), isolation_with(5)]));
    let metrics = Metrics::new(&OrderMetrics::default(), node.clone());

    let first = scrape(&metrics);
    node.set(Ok(Vec::new()));
    let second = scrape(&metrics);

    assert_eq!(value(&first, "stockade_isolations_in_force"), Some(2.0));
    assert_eq!(value(&first, "stockade_programs_attached"), Some(11.0));
    assert_eq!(value(&second, "stockade_isolations_in_force"), Some(0.0));
    assert_eq!(value(&second, "stockade_programs_attached"), Some(0.0));
    assert!(first.contains("# TYPE stockade_isolations_in_force gauge\n"));
}

#[test]
fn kernel_features_are_one_when_present_and_zero_when_missing() {
    let node = Arc::new(FakeNode::new(Vec::new()));
    let text = scrape(&Metrics::new(&OrderMetrics::default(), node));

    let feature = |name: &str| {
        value(
            &text,
            &format!(r#"stockade_kernel_feature{{feature="{name}"}}"#),
        )
    };
    assert_eq!(feature("cgroup2"), Some(1.0));
    assert_eq!(feature("ringbuf"), Some(0.0));
    assert_eq!(samples(&text, "stockade_kernel_feature{").len(), 2);
}

#[test]
fn unreadable_isolations_leave_their_gauges_out_and_the_rest_in() {
    let node = Arc::new(FakeNode::new(Vec::new()));
    let orders = OrderMetrics::default();
    orders.order("isolate", false, None);
    let metrics = Metrics::new(&orders, node.clone());

    node.set(Err("bpf_prog_query: EPERM".into()));
    let text = scrape(&metrics);

    assert!(
        samples(&text, "stockade_isolations_in_force").is_empty(),
        "{text}"
    );
    assert!(
        samples(&text, "stockade_programs_attached").is_empty(),
        "{text}"
    );
    assert!(value(&text, r#"stockade_kernel_feature{feature="cgroup2"}"#).is_some());
    let orders = r#"stockade_orders_total{action="isolate",result="ok"}"#;
    assert_eq!(value(&text, orders), Some(1.0));
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// Sends `request` to `addr` and reads the whole answer (the request
/// closes the connection).
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let read = stream.read_to_string(&mut answer);
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the endpoint answers within 5 s")
        .unwrap();
    answer
}

#[tokio::test]
async fn the_endpoint_serves_metrics_at_their_path_only() {
    let node = Arc::new(FakeNode::new(vec![isolation_with(6)]));
    let metrics = Arc::new(Metrics::new(&OrderMetrics::default(), node));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, metrics, async {
        let _ = stop_rx.await;
    }));

    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n");
    let metrics = http(addr, &get("/metrics")).await;
    let elsewhere = http(addr, &get("/")).await;
    let post =
        "POST /metrics HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let posted = http(addr, post).await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();

    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    let content_type = format!("content-type: {CONTENT_TYPE}\r\n");
    assert!(metrics.to_lowercase().contains(&content_type), "{metrics}");
    assert!(
        metrics.contains("\nstockade_isolations_in_force 1\n"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(elsewhere.starts_with("HTTP/1.1 404 "), "{elsewhere}");
    assert!(posted.starts_with("HTTP/1.1 405 "), "{posted}");
}
