//! Fuzz targets: the parsers that read untrusted bytes, each with the
//! properties it must keep for any input.
//!
//! Two drivers call these. `fuzz/` holds cargo-fuzz targets (libFuzzer,
//! nightly) that explore new inputs and grow the kept corpus in
//! `fuzz/corpus/<target>/`; `agent/tests/fuzz.rs` replays that corpus and
//! runs a bounded proptest pass on stable in the normal test command.
//! Every target panics when a property breaks, which is what both drivers
//! report.

use prost::Message;
use stockade_proto::v1;

use crate::{cgroup, contain::order, validate};

/// A fuzz target: panics when a property breaks for `data`.
pub type Target = fn(&[u8]);

/// The targets by name, as the corpus folders are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("cgroup_path", cgroup_path),
    ("proc_cgroup", proc_cgroup),
    ("isolate_request", isolate_request),
    ("containment_request", containment_request),
];

/// A cgroup path, as found in the tree or in `/proc/PID/cgroup`: a pod
/// found on it never climbs out with `..`, and its container lies in it.
pub fn cgroup_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(found) = cgroup::classify(path) else {
        return;
    };
    let no_dots = |p: &str| !p.split('/').any(|c| c == "..");
    if let Some(pod) = &found.pod_path {
        assert!(no_dots(pod), "pod path {pod:?} from {path:?}");
        if let Some(container) = &found.container {
            assert!(
                container.path.starts_with(pod.as_str()),
                "container {:?} outside pod {pod:?}",
                container.path
            );
        }
    }
    if let Some(container) = &found.container {
        assert!(no_dots(&container.path), "container path from {path:?}");
    }
}

/// A `/proc/PID/cgroup` file: no more entries than lines.
pub fn proc_cgroup(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(lines) = cgroup::parse_proc_cgroup(text) {
        assert!(lines.len() <= text.lines().count(), "{text:?}");
    }
}

/// An `IsolateRequest` off the wire: refused naming a field, or accepted
/// within every bound.
pub fn isolate_request(data: &[u8]) {
    let Ok(req) = v1::IsolateRequest::decode(data) else {
        return;
    };
    match validate::isolate(&req) {
        Err(refusal) => assert_named(&refusal),
        Ok(order) => {
            assert!(order.reason.chars().count() <= 256);
            assert!(order.reference.chars().count() <= 256);
            assert!(order.allow.len() <= 16);
        }
    }
    check_order_id(&req.order_id);
}

/// A `KillRequest` off the wire (the richest containment order): refused
/// naming a field, or accepted within bounds.
pub fn containment_request(data: &[u8]) {
    let Ok(req) = v1::KillRequest::decode(data) else {
        return;
    };
    match order::kill(&req) {
        Err(refusal) => assert_named(&refusal),
        Ok(kill) => {
            assert!(kill.pod.reason.chars().count() <= 256);
            assert!(kill.pod.timeout <= std::time::Duration::from_secs(60));
        }
    }
    check_order_id(&req.order_id);
}

fn assert_named(refusal: &validate::FieldError) {
    assert!(!refusal.field.is_empty(), "a refusal names no field");
    assert!(!refusal.reason.is_empty(), "a refusal gives no reason");
}

fn check_order_id(id: &str) {
    match validate::order_id(id, "order_id") {
        Ok(Some(kept)) => assert!(kept.len() <= validate::MAX_ORDER_ID && kept == id),
        Ok(None) => assert!(id.is_empty()),
        Err(refusal) => assert_named(&refusal),
    }
}
