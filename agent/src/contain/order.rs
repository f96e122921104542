//! Validating containment orders: the generated messages become domain
//! types, or a [`FieldError`] naming the field and why.

use std::time::Duration;

use stockade_proto::v1;

use crate::{
    cgroup::ContainerId,
    validate::{dns_label, free_text, pod_selector, FieldError, PodTarget},
};

/// Deadline of a freeze, thaw or kill when the order gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest deadline an order may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated freeze, thaw, terminate, contain or uncontain order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodOrder {
    pub target: PodTarget,
    pub reason: String,
    pub timeout: Duration,
}

/// One container of the pod, as the order names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerRef {
    /// Its name in the pod spec (only the runtime knows names).
    Name(String),
    Id(ContainerId),
}

/// A validated kill order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillOrder {
    pub pod: PodOrder,
    /// `None`: the whole pod.
    pub container: Option<ContainerRef>,
}

pub fn freeze(req: &v1::FreezeRequest) -> Result<PodOrder, FieldError> {
    pod_order(req.pod.as_ref(), &req.reason, true, req.timeout_ms)
}

pub fn thaw(req: &v1::ThawRequest) -> Result<PodOrder, FieldError> {
    pod_order(req.pod.as_ref(), &req.reason, false, req.timeout_ms)
}

pub fn kill(req: &v1::KillRequest) -> Result<KillOrder, FieldError> {
    let pod = pod_order(req.pod.as_ref(), &req.reason, true, req.timeout_ms)?;
    let container = container(&req.container)?;
    Ok(KillOrder { pod, container })
}

pub fn terminate(req: &v1::TerminateRequest) -> Result<PodOrder, FieldError> {
    pod_order(req.pod.as_ref(), &req.reason, true, req.timeout_ms)
}

pub fn contain(req: &v1::ContainRequest) -> Result<PodOrder, FieldError> {
    pod_order(req.pod.as_ref(), &req.reason, true, 0)
}

pub fn uncontain(req: &v1::UncontainRequest) -> Result<PodOrder, FieldError> {
    pod_order(req.pod.as_ref(), &req.reason, false, 0)
}

fn pod_order(
    pod: Option<&v1::PodSelector>,
    reason: &str,
    reason_required: bool,
    timeout_ms: u32,
) -> Result<PodOrder, FieldError> {
    Ok(PodOrder {
        target: pod_selector(pod, "pod")?,
        reason: free_text(reason, "reason", reason_required)?,
        timeout: timeout(timeout_ms)?,
    })
}

/// 0 means the default; more than [`MAX_TIMEOUT`] is refused.
fn timeout(ms: u32) -> Result<Duration, FieldError> {
    let asked = Duration::from_millis(ms.into());
    if asked > MAX_TIMEOUT {
        return Err(FieldError {
            field: "timeout_ms".into(),
            reason: format!("at most {} ms, got {ms}", MAX_TIMEOUT.as_millis()),
        });
    }
    Ok(if ms == 0 { DEFAULT_TIMEOUT } else { asked })
}

/// Empty: none. 64 hex digits: an id. Otherwise a container name, which
/// Kubernetes makes a DNS-1123 label.
fn container(text: &str) -> Result<Option<ContainerRef>, FieldError> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(id) = text.parse::<ContainerId>() {
        return Ok(Some(ContainerRef::Id(id)));
    }
    dns_label(text).map_err(|reason| FieldError {
        field: "container".into(),
        reason: format!("not a container name or a 64-hex id: {reason}"),
    })?;
    Ok(Some(ContainerRef::Name(text.to_owned())))
}

#[cfg(test)]
mod tests {
    use stockade_proto::v1::{pod_selector::Target, PodName, PodSelector};

    use super::*;

    fn by_name() -> Option<PodSelector> {
        Some(PodSelector {
            target: Some(Target::Name(PodName {
                namespace: "shop".into(),
                name: "web".into(),
            })),
        })
    }

    fn kill_req(container: &str, reason: &str, timeout_ms: u32) -> v1::KillRequest {
        v1::KillRequest {
            pod: by_name(),
            container: container.into(),
            reason: reason.into(),
            timeout_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_kill_of_the_whole_pod_gets_the_default_deadline() {
        let order = kill(&kill_req("", "miner", 0)).unwrap();
        assert_eq!(order.container, None);
        assert_eq!(order.pod.timeout, DEFAULT_TIMEOUT);
        assert_eq!(order.pod.reason, "miner");
    }

    #[test]
    fn a_container_is_named_or_given_by_id() {
        let order = kill(&kill_req("app", "r", 250)).unwrap();
        assert_eq!(order.container, Some(ContainerRef::Name("app".into())));
        assert_eq!(order.pod.timeout, Duration::from_millis(250));
        let id = "ab".repeat(32);
        let order = kill(&kill_req(&id, "r", 0)).unwrap();
        assert!(matches!(order.container, Some(ContainerRef::Id(_))));
    }

    #[test]
    fn each_bad_field_is_named() {
        let err = kill(&kill_req("App_1", "r", 0)).unwrap_err();
        assert_eq!(err.field, "container");
        let err = kill(&kill_req("", " ", 0)).unwrap_err();
        assert_eq!(err.field, "reason");
        let err = kill(&kill_req("", "r", 60_001)).unwrap_err();
        assert_eq!(err.field, "timeout_ms");
        assert!(err.reason.contains("60000"), "{}", err.reason);
        let req = v1::FreezeRequest {
            pod: None,
            reason: "r".into(),
            ..Default::default()
        };
        assert_eq!(freeze(&req).unwrap_err().field, "pod");
    }

    #[test]
    fn thaw_and_uncontain_need_no_reason_but_freeze_does() {
        let thaw_req = v1::ThawRequest {
            pod: by_name(),
            ..Default::default()
        };
        assert!(thaw(&thaw_req).is_ok());
        let un = v1::UncontainRequest {
            pod: by_name(),
            ..Default::default()
        };
        assert!(uncontain(&un).is_ok());
        let freeze_req = v1::FreezeRequest {
            pod: by_name(),
            ..Default::default()
        };
        assert_eq!(freeze(&freeze_req).unwrap_err().field, "reason");
    }
}
