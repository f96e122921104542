//! Replies as JSON for scripts. Field names are those of the `.proto`,
//! enums are their `.proto` names, timestamps are RFC 3339 and 64-bit
//! integers are plain numbers.

use prost_types::Timestamp;
use serde_json::{json, Value};
use stockade_proto::v1::{
    AgentInfo, AllowRule, Attachment, Container, Counters, Isolation, IsolationMode, KernelFeature,
    Pod, Protocol, QosClass, Refusal, ReleaseResponse,
};

/// Pretty JSON text ending with a newline.
pub fn text(value: &Value) -> String {
    format!("{value:#}\n")
}

pub fn info(info: &AgentInfo) -> Value {
    json!({
        "version": info.version,
        "node_name": info.node_name,
        "kernel_release": info.kernel_release,
        "cgroup2_mount": info.cgroup2_mount,
        "bpffs_dir": info.bpffs_dir,
        "features": info.features.iter().map(feature).collect::<Vec<_>>(),
        "started_at": timestamp(info.started_at.as_ref()),
        "pod_metadata_source": info.pod_metadata_source,
    })
}

fn feature(feature: &KernelFeature) -> Value {
    json!({
        "name": feature.name,
        "available": feature.available,
        "detail": feature.detail,
        "needed_by": feature.needed_by,
    })
}

pub fn pod(pod: &Pod) -> Value {
    let qos = QosClass::try_from(pod.qos_class).unwrap_or_default();
    json!({
        "uid": pod.uid,
        "namespace": pod.namespace,
        "name": pod.name,
        "qos_class": qos.as_str_name(),
        "cgroup_path": pod.cgroup_path,
        "cgroup_id": pod.cgroup_id,
        "containers": pod.containers.iter().map(container).collect::<Vec<_>>(),
        "cgroup_driver": pod.cgroup_driver,
        "isolated": pod.isolated,
    })
}

fn container(container: &Container) -> Value {
    json!({
        "id": container.id,
        "name": container.name,
        "runtime": container.runtime,
        "cgroup_path": container.cgroup_path,
        "cgroup_id": container.cgroup_id,
        "state": container.state,
    })
}

pub fn isolation(isolation: &Isolation) -> Value {
    let mode = IsolationMode::try_from(isolation.mode).unwrap_or_default();
    json!({
        "pod": isolation.pod.as_ref().map(pod),
        "mode": mode.as_str_name(),
        "allow": isolation.allow.iter().map(allow_rule).collect::<Vec<_>>(),
        "reason": isolation.reason,
        "reference": isolation.reference,
        "received_at": timestamp(isolation.received_at.as_ref()),
        "enforced_at": timestamp(isolation.enforced_at.as_ref()),
        "verified_at": timestamp(isolation.verified_at.as_ref()),
        "attachments": isolation.attachments.iter().map(attachment).collect::<Vec<_>>(),
        "counters": isolation.counters.as_ref().map(counters),
        "recent_refusals": isolation.recent_refusals.iter().map(refusal).collect::<Vec<_>>(),
        "order_id": isolation.order_id,
        "expires_at": timestamp(isolation.expires_at.as_ref()),
    })
}

fn refusal(refusal: &Refusal) -> Value {
    let protocol = Protocol::try_from(refusal.protocol).unwrap_or_default();
    json!({
        "at": timestamp(refusal.at.as_ref()),
        "kind": refusal.kind,
        "destination": refusal.destination,
        "port": refusal.port,
        "protocol": protocol.as_str_name(),
        "pid": refusal.pid,
        "comm": refusal.comm,
    })
}

fn allow_rule(rule: &AllowRule) -> Value {
    let protocol = Protocol::try_from(rule.protocol).unwrap_or_default();
    json!({
        "cidr": rule.cidr,
        "protocol": protocol.as_str_name(),
        "port": rule.port,
        "port_end": rule.port_end,
    })
}

fn attachment(attachment: &Attachment) -> Value {
    json!({
        "hook": attachment.hook,
        "program_id": attachment.program_id,
        "pin": attachment.pin,
    })
}

fn counters(counters: &Counters) -> Value {
    json!({
        "ingress_dropped": counters.ingress_dropped,
        "egress_dropped": counters.egress_dropped,
        "connects_refused": counters.connects_refused,
        "sends_refused": counters.sends_refused,
    })
}

pub fn release(reply: &ReleaseResponse) -> Value {
    json!({
        "pod": reply.pod.as_ref().map(pod),
        "released": reply.released.iter().map(pod).collect::<Vec<_>>(),
        "received_at": timestamp(reply.received_at.as_ref()),
        "verified_at": timestamp(reply.verified_at.as_ref()),
        "foreign_programs_left": reply.foreign_programs_left,
    })
}

fn timestamp(at: Option<&Timestamp>) -> Value {
    at.map_or(Value::Null, |at| Value::String(at.to_string()))
}
