//! The objects the reporter sends: an `events.k8s.io/v1` Event per order
//! and a JSON merge patch of the pod's annotations.

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use serde_json::{json, Map, Value};

use super::{
    report::Outcome, ANNOTATION_CONTAINED, ANNOTATION_FROZEN, ANNOTATION_ISOLATED,
    REPORTING_CONTROLLER,
};

/// The longest `note` the API server accepts, in bytes.
const MAX_NOTE: usize = 1024;

/// The pod an outcome is about, as far as it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub name: String,
    /// Absent when the pod is not in the index.
    pub uid: Option<String>,
}

/// (action, reason when done, reason when failed).
const REASONS: &[(&str, &str, &str)] = &[
    ("isolate", "StockadeIsolated", "StockadeIsolateFailed"),
    ("release", "StockadeReleased", "StockadeReleaseFailed"),
    (
        "extend",
        "StockadeIsolationExtended",
        "StockadeExtendFailed",
    ),
    ("freeze", "StockadeFrozen", "StockadeFreezeFailed"),
    ("thaw", "StockadeThawed", "StockadeThawFailed"),
    ("kill", "StockadeKilled", "StockadeKillFailed"),
    ("terminate", "StockadeTerminated", "StockadeTerminateFailed"),
    ("contain", "StockadeContained", "StockadeContainFailed"),
    (
        "uncontain",
        "StockadeUncontained",
        "StockadeUncontainFailed",
    ),
];

/// The Event's `reason` for `action` and its result.
pub fn reason(action: &str, done: bool) -> &'static str {
    let found = REASONS.iter().find(|(a, _, _)| *a == action);
    match (found, done) {
        (Some((_, ok, _)), true) => ok,
        (Some((_, _, failed)), false) => failed,
        (None, true) => "StockadeOrderDone",
        (None, false) => "StockadeOrderFailed",
    }
}

/// The Event that tells `outcome` on `pod`, reported by `node` at `at`.
pub fn event(outcome: &Outcome, pod: &Subject, node: &str, at: Timestamp) -> Event {
    let done = outcome.result.is_ok();
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(&pod.name, at)),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(at)),
        action: Some(capitalized(outcome.action)),
        reason: Some(reason(outcome.action, done).to_owned()),
        type_: Some(if done { "Normal" } else { "Warning" }.to_owned()),
        note: Some(note(outcome, node)),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: pod.uid.clone(),
            ..ObjectReference::default()
        }),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(node.to_owned()),
        ..Event::default()
    }
}

/// `<pod>.<time in hex>`, as the API server's own events are named; the
/// pod's part is cut so that the whole stays a valid name.
fn event_name(pod: &str, at: Timestamp) -> String {
    // A name from a refused request may be anything: cut at a character.
    let mut end = pod.len().min(230);
    while !pod.is_char_boundary(end) {
        end -= 1;
    }
    let stem = pod[..end].trim_end_matches(['-', '.']);
    format!("{stem}.{:x}", at.as_nanosecond())
}

fn capitalized(action: &str) -> String {
    let mut chars = action.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What a reader of `kubectl describe pod` needs: the result, the order
/// id, the order's reason and the node.
fn note(outcome: &Outcome, node: &str) -> String {
    let mut text = match &outcome.result {
        Ok(()) => format!("{} done by the Stockade agent on {node}", outcome.action),
        Err(f) => format!(
            "{} refused or failed on {node} ({:?}): {}",
            outcome.action, f.code, f.message
        ),
    };
    if let Some(id) = &outcome.order_id {
        text.push_str(&format!("; order {id}"));
    }
    if let Some(reason) = &outcome.reason {
        text.push_str(&format!("; reason: {reason}"));
    }
    truncated(text, MAX_NOTE)
}

fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The annotation a successful `action` sets (`true`) or removes
/// (`false`), if any.
///
/// Kill and terminate change none: a kill neither thaws the pod nor lifts
/// its isolation or containment (its containers restart under the same
/// pod cgroup), and a terminated pod is being deleted.
pub fn annotation_change(action: &str) -> Option<(&'static str, bool)> {
    match action {
        "isolate" => Some((ANNOTATION_ISOLATED, true)),
        "release" => Some((ANNOTATION_ISOLATED, false)),
        "freeze" => Some((ANNOTATION_FROZEN, true)),
        "thaw" => Some((ANNOTATION_FROZEN, false)),
        "contain" => Some((ANNOTATION_CONTAINED, true)),
        "uncontain" => Some((ANNOTATION_CONTAINED, false)),
        _ => None,
    }
}

/// A JSON merge patch that sets `key` to `value` or removes it (`None`).
/// With the UID in it, the API server refuses to patch a pod recreated
/// under the same name.
pub fn annotation_patch(key: &str, value: Option<&str>, uid: Option<&str>) -> Value {
    let mut annotations = Map::new();
    annotations.insert(key.to_owned(), json!(value));
    let mut metadata = Map::new();
    metadata.insert("annotations".into(), Value::Object(annotations));
    if let Some(uid) = uid {
        metadata.insert("uid".into(), json!(uid));
    }
    json!({ "metadata": metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_its_own_reasons() {
        for (action, ok, failed) in REASONS {
            assert_eq!(reason(action, true), *ok);
            assert_eq!(reason(action, false), *failed);
        }
        assert_eq!(reason("frobnicate", false), "StockadeOrderFailed");
    }

    #[test]
    fn a_long_note_is_cut_at_a_character_boundary() {
        let text = "é".repeat(600);
        let cut = truncated(text, MAX_NOTE);
        assert!(
            cut.len() <= MAX_NOTE && cut.ends_with("..."),
            "{}",
            cut.len()
        );
    }

    #[test]
    fn an_event_name_stays_valid_for_the_longest_pod_names() {
        let pod = format!("{}-x", "a".repeat(229));
        let name = event_name(&pod, Timestamp::UNIX_EPOCH);
        assert!(name.len() <= 253);
        assert!(!name.contains("-."), "{name}");
    }

    #[test]
    fn an_event_name_is_cut_at_a_character_boundary() {
        let pod = "é".repeat(200);
        let name = event_name(&pod, Timestamp::UNIX_EPOCH);
        assert!(name.starts_with("éé") && name.ends_with(".0"), "{name}");
    }

    #[test]
    fn a_removal_patch_sends_null_and_the_uid() {
        let patch = annotation_patch(ANNOTATION_FROZEN, None, Some("u-1"));
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {"stockade.io/frozen": null}, "uid": "u-1"}})
        );
    }
}
