//! Containment of a pod's processes: freeze, thaw, kill, terminate, and
//! the exec guard.
//!
//! Each order acts on the pod's cgroup (or one container's), never on a
//! list of PIDs gathered beforehand, and reports what `cgroup.events` (or
//! the guard's map) said afterwards:
//! - [`freeze`]: `cgroup.freeze`, waiting for `frozen 1`/`0`, undone on
//!   timeout;
//! - [`kill`]: `cgroup.kill`, or freeze-signal-thaw where the kernel lacks
//!   it, waiting for `populated 0`;
//! - [`runtime`]: the container runtime told in parallel, never waited on
//!   past its deadline;
//! - [`kube`]: the API server deletes a terminated pod, when configured;
//! - [`guard`]: a tracepoint program that kills what a contained pod execs.
//!
//! The waits are blocking (inotify and poll); the agent runs them on
//! tokio's blocking pool.

pub mod events;
pub mod freeze;
pub mod guard;
pub mod kill;
pub mod kube;
pub mod order;
mod orders;
pub mod probe;
pub mod reply;
pub mod runtime;

use std::{
    io,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tracing::warn;

use self::{
    events::CgroupEvents,
    guard::Guard,
    kill::KillMethod,
    kube::{KubeSource, PodApi},
};
use crate::{
    agent::{error_chain, Settings},
    cgroup::{Cgroup2, CgroupError},
    features::Feature,
};

/// How containment orders are carried out on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainSettings {
    /// Force a kill method instead of the one the probe chose (to test the
    /// fallback, or to avoid a kernel's cgroup.kill).
    pub kill_method: Option<KillMethod>,
    /// The API server that deletes terminated pods.
    pub kube: KubeSource,
}

/// Why a containment step failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{} does not hold what the kernel writes there", path.display())]
    Malformed { path: PathBuf },

    #[error(
        "{}: cgroup.events did not say {wanted} within {waited:?} (it says populated {}, \
         frozen {}); {}",
        path.display(), u8::from(last.populated), u8::from(last.frozen),
        undo_note(undo_failed)
    )]
    NotSettled {
        path: PathBuf,
        wanted: &'static str,
        waited: Duration,
        last: CgroupEvents,
        /// Why writing the old `cgroup.freeze` back failed, if it did.
        undo_failed: Option<String>,
    },

    #[error(
        "{}: still populated {waited:?} after the kill ({left} process(es) found in it \
         and below)",
        path.display()
    )]
    StillPopulated {
        path: PathBuf,
        waited: Duration,
        left: usize,
    },

    #[error("cannot list the processes of the cgroup")]
    Cgroup {
        #[source]
        source: CgroupError,
    },

    #[error("cannot signal process {pid}")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

fn undo_note(undo_failed: &Option<String>) -> String {
    match undo_failed {
        None => "the previous cgroup.freeze value was written back".into(),
        Some(why) => format!("writing the previous cgroup.freeze value back FAILED: {why}"),
    }
}

impl ContainError {
    /// Whether the order ran out of time (as opposed to failing).
    pub fn is_deadline(&self) -> bool {
        matches!(self, Self::NotSettled { .. } | Self::StillPopulated { .. })
    }

    /// Whether the cgroup vanished under the order.
    pub fn is_gone(&self) -> bool {
        match self {
            Self::Io { source, .. } => events::gone(source),
            Self::Cgroup { source } => source.is_gone(),
            _ => false,
        }
    }
}

/// The containment state the agent holds: the kill method the probe
/// chose, the exec guard if it loaded, and the API server if configured.
pub struct Containment {
    kill_method: KillMethod,
    guard: Option<Mutex<Guard>>,
    pods: Option<PodApi>,
    kube_problem: String,
}

impl Containment {
    /// Probes the kernel, loads the exec guard, and prepares the API
    /// client. What is missing goes into `features`. Blocking.
    pub fn start(
        settings: &Settings,
        cgroups: Option<&Cgroup2>,
        own_cgroup: &str,
        features: &mut Vec<Feature>,
    ) -> Self {
        let has_kill = probe::cgroup_kill_missing(cgroups, own_cgroup).is_none();
        let kill_method = kill::choose(has_kill, settings.containment.kill_method);
        features.extend(probe::cgroup_features(cgroups, own_cgroup, kill_method));

        let mut guard = start_guard(settings, features);
        if let (Some(guard), Some(cgroups)) = (&mut guard, cgroups) {
            forget_gone_pods(guard, cgroups);
        }
        let (pods, kube_problem) = start_kube(&settings.containment.kube, settings.cri_timeout);
        features.push(probe::kube_feature(&kube_problem));
        Self {
            kill_method,
            guard: guard.map(Mutex::new),
            pods,
            kube_problem,
        }
    }

    pub fn kill_method(&self) -> KillMethod {
        self.kill_method
    }

    pub(crate) fn pods(&self) -> Result<&PodApi, &str> {
        self.pods.as_ref().ok_or(self.kube_problem.as_str())
    }

    pub(crate) fn guard(&self) -> Option<MutexGuard<'_, Guard>> {
        // A panic while holding the lock leaves the maps consistent (each
        // change is one map update), so a poisoned lock is usable.
        let guard = self.guard.as_ref()?;
        Some(guard.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Drops the containments, pinned by an earlier agent, of pods whose
/// cgroup is gone (cgroup ids are not reused, so they could only waste map
/// entries).
fn forget_gone_pods(guard: &mut Guard, cgroups: &Cgroup2) {
    let (Ok(pods), Ok(ids)) = (cgroups.scan_pods(), guard.contained_ids()) else {
        return warn!("cannot compare the contained pods with the live ones");
    };
    for id in ids
        .into_iter()
        .filter(|id| !pods.iter().any(|p| p.cgroup_id == *id))
    {
        match guard.uncontain(id) {
            Ok(()) => tracing::info!(cgroup.id = id, "the pod of a containment is gone: dropped"),
            Err(e) => {
                warn!(cgroup.id = id, error = %error_chain(&e), "cannot drop a stale containment")
            }
        }
    }
}

fn start_guard(settings: &Settings, features: &mut Vec<Feature>) -> Option<Guard> {
    let (guard, found) = guard::start(&settings.pin_root);
    features.extend(found);
    guard
}

/// The API client, or why there is none. Building the client sends
/// nothing, so this does not wait for the API server. The client's worker
/// task lives on the agent's runtime: `Agent::start` runs on its blocking
/// pool, where `Handle::block_on` is allowed.
fn start_kube(source: &KubeSource, deadline: Duration) -> (Option<PodApi>, String) {
    if *source == KubeSource::Off {
        return (None, kube::KubeError::NotConfigured.to_string());
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return (None, "no async runtime to run the API client on".into());
    };
    match handle.block_on(PodApi::connect(source, deadline)) {
        Ok(api) => (Some(api), String::new()),
        Err(err) => {
            warn!(error = %error_chain(&err), "no Kubernetes API client");
            (None, error_chain(&err))
        }
    }
}
