//! The reporter against a pretend API server.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use backon::ExponentialBuilder;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use tonic::Status;

use super::{
    mock::{pod_json, wait_until, MockApi, Recorded, Reply},
    Outcome, PodIndex, Reporter, Settings, Target,
};

const UID: &str = "aaaaaaaa-bbbb-4ccc-8ddd-000000000001";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const WEB: &str = "/api/v1/namespaces/shop/pods/web";

/// Quick retries, so that a retry that should not happen would be seen
/// within a few tens of milliseconds.
fn quick(queue: usize) -> Settings {
    Settings {
        queue,
        retry: ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(20))
            .with_max_times(5),
        call_deadline: Duration::from_secs(60),
    }
}

/// Answers as a healthy API server: events and patches accepted.
fn accepting(req: &Recorded) -> Reply {
    match req.method.as_str() {
        "POST" => Reply::Json(StatusCode::CREATED, req.body.clone()),
        "PATCH" => Reply::ok(pod_json("shop", "web", UID, "node-a")),
        _ => Reply::status(StatusCode::NOT_FOUND),
    }
}

/// A reporter on node-a whose index has pod shop/web.
fn reporter(api: &MockApi, settings: Settings) -> Reporter {
    let web: Pod = serde_json::from_value(pod_json("shop", "web", UID, "node-a")).unwrap();
    let index = PodIndex::fixed(api.client(), "node-a", vec![web]);
    Reporter::start(api.client(), "node-a", Some(index), settings)
}

fn web() -> Target {
    Target::Name {
        namespace: "shop".into(),
        name: "web".into(),
    }
}

fn done(action: &'static str, target: Target) -> Outcome {
    Outcome {
        order_id: Some("ord-1".into()),
        reason: Some("cryptominer seen".into()),
        ..Outcome::new(action, target, None)
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_isolate_creates_an_event_on_the_pod_with_the_order_id_and_reason() {
    let api = MockApi::start(accepting);
    let reporter = reporter(&api, quick(8));

    reporter.report(done("isolate", web()));
    wait_until(|| !api.requests_with("POST").is_empty()).await;

    let post = &api.requests_with("POST")[0];
    assert_eq!(post.path, EVENTS);
    let event = &post.body;
    assert_eq!(event["reason"], "StockadeIsolated");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["action"], "Isolate");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("ord-1") && note.contains("cryptominer seen"),
        "{note}"
    );
    let regarding = json!({
        "apiVersion": "v1", "kind": "Pod", "namespace": "shop", "name": "web", "uid": UID,
    });
    assert_eq!(event["regarding"], regarding);
    assert_eq!(event["reportingController"], "stockade.io/agent");
    assert_eq!(event["reportingInstance"], "node-a");
    assert!(event["eventTime"].is_string());
    assert!(event["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("web."));
}

#[tokio::test]
async fn annotations_are_set_on_isolate_and_removed_on_release() {
    let api = MockApi::start(accepting);
    let reporter = reporter(&api, quick(8));

    reporter.report(done("isolate", web()));
    reporter.report(done("release", web()));
    wait_until(|| api.requests_with("PATCH").len() == 2).await;

    let patches = api.requests_with("PATCH");
    for patch in &patches {
        assert_eq!(patch.path, WEB);
        assert_eq!(patch.content_type, "application/merge-patch+json");
        assert_eq!(patch.body["metadata"]["uid"], UID);
    }
    let annotations: Vec<&Value> = patches
        .iter()
        .map(|p| &p.body["metadata"]["annotations"])
        .collect();
    assert_eq!(annotations[0], &json!({"stockade.io/isolated": "ord-1"}));
    assert_eq!(annotations[1], &json!({"stockade.io/isolated": null}));
}

#[tokio::test]
async fn a_failed_order_is_a_warning_event_and_changes_no_annotation() {
    let api = MockApi::start(accepting);
    let reporter = reporter(&api, quick(8));
    let refused = Status::failed_precondition("the pod is in a protected namespace");

    reporter.report(Outcome::new("freeze", web(), Some(&refused)));
    wait_until(|| !api.requests_with("POST").is_empty()).await;
    settle().await;

    let event = &api.requests_with("POST")[0].body;
    assert_eq!(event["reason"], "StockadeFreezeFailed");
    assert_eq!(event["type"], "Warning");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("protected namespace"), "{note}");
    assert!(api.requests_with("PATCH").is_empty());
}

#[tokio::test]
async fn a_server_error_is_retried_until_the_event_is_created() {
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    let api = MockApi::start(move |req| match req.method.as_str() {
        "POST" if seen.fetch_add(1, Ordering::SeqCst) == 0 => {
            Reply::status(StatusCode::INTERNAL_SERVER_ERROR)
        }
        _ => accepting(req),
    });
    let reporter = reporter(&api, quick(8));

    reporter.report(done("isolate", web()));
    // The patch is sent only once the event call is over.
    wait_until(|| !api.requests_with("PATCH").is_empty()).await;
    settle().await;

    assert_eq!(posts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retries_stop_after_six_tries() {
    let api = MockApi::start(|_| Reply::status(StatusCode::SERVICE_UNAVAILABLE));
    let reporter = reporter(&api, quick(8));

    reporter.report(done("kill", web()));
    wait_until(|| api.requests_with("POST").len() >= 6).await;
    settle().await;

    assert_eq!(api.requests_with("POST").len(), 6);
}

#[tokio::test]
async fn a_pod_that_is_gone_is_not_retried() {
    let api = MockApi::start(|_| Reply::status(StatusCode::NOT_FOUND));
    let reporter = reporter(&api, quick(8));

    reporter.report(done("isolate", web()));
    wait_until(|| api.requests_with("PATCH").len() == 1).await;
    settle().await;

    assert_eq!(api.requests_with("POST").len(), 1);
    assert_eq!(api.requests_with("PATCH").len(), 1);
}

#[tokio::test]
async fn report_never_waits_for_a_silent_api_server_and_drops_when_full() {
    let api = MockApi::start(|_| Reply::Hang);
    let reporter = reporter(&api, quick(2));
    reporter.report(done("kill", web()));
    // The background task now waits on the first event.
    wait_until(|| api.requests().len() == 1).await;

    let started = Instant::now();
    for _ in 0..5 {
        reporter.report(done("kill", web()));
    }
    let took = started.elapsed();

    assert!(took < Duration::from_millis(50), "report() took {took:?}");
    assert_eq!(
        reporter.dropped(),
        3,
        "two fit in the queue, three are dropped"
    );
}

#[tokio::test]
async fn a_dry_run_is_not_reported() {
    let api = MockApi::start(accepting);
    let reporter = reporter(&api, quick(8));

    let dry = Outcome {
        dry_run: true,
        ..done("isolate", web())
    };
    reporter.report(dry);
    settle().await;

    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn a_pod_named_by_uid_is_reported_under_the_name_the_index_gives() {
    let api = MockApi::start(accepting);
    let reporter = reporter(&api, quick(8));

    reporter.report(done("kill", Target::Uid(UID.into())));
    reporter.report(done("kill", Target::Uid("not-listed".into())));
    wait_until(|| !api.requests_with("POST").is_empty()).await;
    settle().await;

    let posts = api.requests_with("POST");
    assert_eq!(posts.len(), 1, "the unknown UID is skipped");
    assert_eq!(posts[0].body["regarding"]["name"], "web");
    assert_eq!(posts[0].body["regarding"]["uid"], UID);
}

/// A real client whose API server refuses connections (nothing listens on
/// port 1 of the loopback address).
#[tokio::test]
async fn an_unreachable_api_server_delays_neither_start_nor_orders() {
    let url = "https://127.0.0.1:1".parse().unwrap();
    let client = kube::Client::try_from(kube::Config::new(url)).unwrap();

    let started = Instant::now();
    let index = PodIndex::start(client.clone(), "node-a");
    let reporter = Reporter::start(client, "node-a", Some(index.clone()), Settings::default());
    reporter.report(done("isolate", web()));
    let lookup = index.by_name("shop", "web");
    let took = started.elapsed();

    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert_eq!(lookup, None);
    let located = tokio::time::timeout(Duration::from_secs(2), index.locate("shop", "web"));
    assert_eq!(located.await, Ok(None));
}
