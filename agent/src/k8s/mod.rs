//! What the agent learns from and tells the Kubernetes API server. None of
//! it is on the enforcement path: orders are carried out from the cgroup
//! tree and the kernel whether the API server answers or not.
//!
//! - [`index`]: a watch of this node's pods (names, UIDs, labels, owners),
//!   read without waiting by the gate;
//! - [`report`]: each order's outcome as an Event on the pod and as
//!   annotations while a containment lasts, sent by a background task.

pub mod index;
pub mod report;
mod writes;

#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;

pub use index::{Owner, PodIndex, PodInfo};
pub use report::{Failure, Outcome, Reporter, Settings, Target};

/// `reportingController` of the agent's Events.
pub const REPORTING_CONTROLLER: &str = "stockade.io/agent";

/// Set while the pod is isolated; the value is the order id, or the time
/// of the order (RFC 3339) when it had no id.
pub const ANNOTATION_ISOLATED: &str = "stockade.io/isolated";
/// Set while the pod is frozen (same value).
pub const ANNOTATION_FROZEN: &str = "stockade.io/frozen";
/// Set while the pod is contained by the exec guard (same value).
pub const ANNOTATION_CONTAINED: &str = "stockade.io/contained";

/// The index and reporter the gate uses, each absent when the API server
/// is not configured or reporting is turned off.
#[derive(Clone, Default)]
pub struct Links {
    pub index: Option<PodIndex>,
    pub reporter: Option<Reporter>,
}

/// Aborts a background task when the last handle that holds it is dropped.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
