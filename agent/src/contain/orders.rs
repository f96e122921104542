//! The containment orders on the agent's order path: validate, resolve,
//! refuse what is not exactly one pod, act, verify, reply.
//!
//! Each order is acted on once per order id, like an isolation: the ledger
//! records it before the agent acts and its outcome after, and the same id
//! sent again gets the first answer. Orders for one pod take turns (see
//! `Agent::pod_turn`), so a freeze and a thaw sent together cannot
//! interleave their writes and waits. The guards, dry runs and the audit
//! line are the gate's (`access::gate`), before these run.

use std::time::{Instant, SystemTime};

use prost::Message;
use stockade_proto::v1;
use tracing::{info, info_span, Instrument};

use super::{
    freeze,
    kill::{self, Killed},
    kube::Deleted,
    order::{self, ContainerRef, PodOrder},
    reply::{self, KillFacts},
    runtime::{spawn_stops, RuntimeLink, RuntimeStop, StopTarget},
    ContainError,
};
use crate::{
    agent::{content_fingerprint, error_chain, new_order, pod_to_proto, Agent, AgentError},
    cgroup::{self, Cgroup2, PodCgroup},
    cri::CriPod,
    features,
    ledger::action,
    orders,
    validate::PodTarget,
};

/// What [`Agent::once`] needs to know of an order.
struct Once<'a> {
    action: &'static str,
    id: &'a str,
    target: &'a PodTarget,
    received_at: SystemTime,
}

impl<'a> Once<'a> {
    fn new(
        action: &'static str,
        id: &'a str,
        target: &'a PodTarget,
        received_at: SystemTime,
    ) -> Self {
        Self {
            action,
            id,
            target,
            received_at,
        }
    }
}

/// The pod an order acts on, resolved and checked.
struct Resolved {
    pod: PodCgroup,
    cri: Option<CriPod>,
}

/// The cgroup a kill acts on and the containers the runtime is told about.
struct KillScope {
    rel: String,
    id: u64,
    stops: Vec<StopTarget>,
}

impl Agent {
    /// Freezes a pod and answers once `cgroup.events` says `frozen 1`.
    pub async fn freeze(&self, req: &v1::FreezeRequest) -> Result<v1::FreezeResponse, AgentError> {
        let received_at = self.order_book().now();
        let order = order::freeze(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require_feature(features::FREEZE)?;
        let cleared = v1::FreezeRequest {
            order_id: String::new(),
            dry_run: false,
            ..req.clone()
        };
        let once = Once::new(action::FREEZE, &id, &order.target, received_at);
        self.once(once, req, cleared, async |target: Resolved| {
            let settled = self.freeze_or_thaw(&target, &order, &id, true).await?;
            Ok(v1::FreezeResponse {
                pod: Some(self.pod_proto(&target)),
                events: Some(reply::events(&settled.events)),
                received_at: Some(received_at.into()),
                verified_at: Some(settled.verified_at.into()),
                order_id: id.clone(),
                dry_run: false,
            })
        })
        .await
    }

    /// Thaws a pod and answers once `cgroup.events` says `frozen 0`; the
    /// pod's freeze orders are then marked released in the ledger.
    pub async fn thaw(&self, req: &v1::ThawRequest) -> Result<v1::ThawResponse, AgentError> {
        let received_at = self.order_book().now();
        let order = order::thaw(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require_feature(features::THAW)?;
        let cleared = v1::ThawRequest {
            order_id: String::new(),
            dry_run: false,
            ..req.clone()
        };
        let once = Once::new(action::THAW, &id, &order.target, received_at);
        self.once(once, req, cleared, async |target: Resolved| {
            let settled = self.freeze_or_thaw(&target, &order, &id, false).await?;
            self.mark_undone(action::FREEZE, target.pod.cgroup_id).await;
            Ok(v1::ThawResponse {
                pod: Some(self.pod_proto(&target)),
                events: Some(reply::events(&settled.events)),
                received_at: Some(received_at.into()),
                verified_at: Some(settled.verified_at.into()),
                order_id: id.clone(),
                dry_run: false,
            })
        })
        .await
    }

    /// Kills a pod or one of its containers.
    pub async fn kill(&self, req: &v1::KillRequest) -> Result<v1::KillResponse, AgentError> {
        let received_at = self.order_book().now();
        let order = order::kill(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require_feature(features::KILL)?;
        let cleared = v1::KillRequest {
            order_id: String::new(),
            dry_run: false,
            ..req.clone()
        };
        let once = Once::new(action::KILL, &id, &order.pod.target, received_at);
        self.once(once, req, cleared, async |target: Resolved| {
            let scope = self.kill_scope(&target, order.container.as_ref())?;
            let mut killed = self
                .kill_scoped(&target, scope, &order.pod, received_at)
                .await?;
            killed.order_id = id.clone();
            Ok(killed)
        })
        .await
    }

    /// Kills a pod, then deletes it through the API server.
    pub async fn terminate(
        &self,
        req: &v1::TerminateRequest,
    ) -> Result<v1::TerminateResponse, AgentError> {
        let received_at = self.order_book().now();
        let order = order::terminate(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require_feature(features::TERMINATE)?;
        let cleared = v1::TerminateRequest {
            order_id: String::new(),
            dry_run: false,
            ..req.clone()
        };
        let once = Once::new(action::TERMINATE, &id, &order.target, received_at);
        self.once(once, req, cleared, async |target: Resolved| {
            let scope = self.kill_scope(&target, None)?;
            let mut killed = self
                .kill_scoped(&target, scope, &order, received_at)
                .await?;
            killed.order_id = id.clone();

            let span = info_span!("delete", pod.uid = %target.pod.uid, order.id = %id);
            let deleted = self
                .delete_pod(&target, &order.target)
                .instrument(span)
                .await;
            let deleted_at = matches!(deleted, Deleted::Accepted | Deleted::AlreadyGone)
                .then(|| SystemTime::now().into());
            let (outcome, detail) = reply::deleted(&deleted);
            info!(pod.uid = %target.pod.uid, delete = ?outcome, detail = %detail, "pod terminated");
            Ok(v1::TerminateResponse {
                kill: Some(killed),
                delete: outcome as i32,
                delete_detail: detail,
                deleted_at,
                order_id: id.clone(),
                dry_run: false,
            })
        })
        .await
    }

    /// Starts killing whatever the pod execs from now on.
    pub async fn contain(
        &self,
        req: &v1::ContainRequest,
    ) -> Result<v1::ContainResponse, AgentError> {
        let received_at = self.order_book().now();
        let order = order::contain(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require_feature(features::CONTAIN)?;
        let cleared = v1::ContainRequest {
            order_id: String::new(),
            dry_run: false,
            ..req.clone()
        };
        let once = Once::new(action::CONTAIN, &id, &order.target, received_at);
        self.once(once, req, cleared, async |target: Resolved| {
            let id_cg = target.pod.cgroup_id;
            let mut guard = self.guard_or_missing()?;
            if guard.contained(id_cg).map_err(guard_error)?.is_some() {
                return Err(AgentError::AlreadyIsolated(format!(
                    "pod {} is already contained; uncontain it first",
                    target.pod.uid
                )));
            }
            guard.contain(id_cg).map_err(guard_error)?;
            let verified = guard.contained(id_cg).map_err(guard_error)?.is_some();
            let hook = guard.hook();
            drop(guard);
            if !verified {
                return Err(AgentError::NotVerified(format!(
                    "pod {} is not in the containment map after contain",
                    target.pod.uid
                )));
            }
            info!(pod.uid = %target.pod.uid, cgroup.id = id_cg, order.id = %id, reason = %order.reason, "pod contained");
            Ok(v1::ContainResponse {
                pod: Some(self.pod_proto(&target)),
                hook: hook.into(),
                received_at: Some(received_at.into()),
                verified_at: Some(SystemTime::now().into()),
                order_id: id.clone(),
                dry_run: false,
            })
        })
        .await
    }

    /// Stops killing what the pod execs.
    pub async fn uncontain(
        &self,
        req: &v1::UncontainRequest,
    ) -> Result<v1::UncontainResponse, AgentError> {
        let received_at = self.order_book().now();
        let order = order::uncontain(req)?;
        let id = orders::order_id(&req.order_id, "order_id")?;
        self.require_feature(features::UNCONTAIN)?;
        let cleared = v1::UncontainRequest {
            order_id: String::new(),
            dry_run: false,
            ..req.clone()
        };
        let once = Once::new(action::UNCONTAIN, &id, &order.target, received_at);
        self.once(once, req, cleared, async |target: Resolved| {
            let id_cg = target.pod.cgroup_id;
            // The guard's lock is a std mutex: released before any await.
            let (state, still) = {
                let mut guard = self.guard_or_missing()?;
                let Some(state) = guard.contained(id_cg).map_err(guard_error)? else {
                    return Err(AgentError::NotFound(format!(
                        "pod {} is not contained",
                        target.pod.uid
                    )));
                };
                guard.uncontain(id_cg).map_err(guard_error)?;
                let still = guard.contained(id_cg).map_err(guard_error)?.is_some();
                (state, still)
            };
            if still {
                return Err(AgentError::NotVerified(format!(
                    "pod {} is still in the containment map after uncontain",
                    target.pod.uid
                )));
            }
            self.mark_undone(action::CONTAIN, id_cg).await;
            info!(pod.uid = %target.pod.uid, order.id = %id, execs_killed = state.execs_killed, "pod uncontained");
            Ok(v1::UncontainResponse {
                pod: Some(self.pod_proto(&target)),
                execs_killed: state.execs_killed,
                received_at: Some(received_at.into()),
                verified_at: Some(SystemTime::now().into()),
                order_id: id.clone(),
                dry_run: false,
            })
        })
        .await
    }

    /// The steps every containment order shares, around its own `act`:
    /// the order id's turn, the first answer if the id is known, the
    /// ledger's begin, the pod's turn, `act`, the ledger's finish.
    async fn once<R: Message, T: Message + Default>(
        &self,
        once: Once<'_>,
        req: &R,
        cleared: R,
        act: impl AsyncFnOnce(Resolved) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let book = self.order_book();
        let _turn = book.turn(once.id).await;
        let fp = content_fingerprint(once.action, cleared);
        if let Some(first) = book.known(once.id, once.action, fp).await? {
            return first;
        }
        let resolved = self.resolve_checked(once.target).await;
        let mut new = new_order(
            once.id,
            once.action,
            fp,
            req.encode_to_vec(),
            once.received_at,
        );
        if let Ok(target) = &resolved {
            (new.pod_uid, new.cgroup_id) = (target.pod.uid.to_string(), target.pod.cgroup_id);
        }
        let run = async {
            let target = resolved?;
            let _pod = self.pod_turn(target.pod.cgroup_id).await;
            act(target).await
        };
        book.run(new, run).await
    }

    fn require_feature(&self, order: &str) -> Result<(), AgentError> {
        match features::missing_for(self.features(), order) {
            Some(msg) => Err(AgentError::MissingFeature(msg)),
            None => Ok(()),
        }
    }

    /// The target's cgroup, refused if it holds more than the pod or
    /// contains the agent (C03).
    async fn resolve_checked(&self, target: &PodTarget) -> Result<Resolved, AgentError> {
        let (pod, cri) = self.resolve(target).await?;
        cgroup::check_target(&pod.path, &self.own_cgroup())?;
        Ok(Resolved { pod, cri })
    }

    fn pod_proto(&self, target: &Resolved) -> v1::Pod {
        let isolated = self.is_isolated(target.pod.cgroup_id);
        pod_to_proto(&target.pod, target.cri.as_ref(), isolated)
    }

    async fn freeze_or_thaw(
        &self,
        target: &Resolved,
        order: &PodOrder,
        id: &str,
        frozen: bool,
    ) -> Result<freeze::Settled, AgentError> {
        let (uid, cgroup_id) = (&target.pod.uid, target.pod.cgroup_id);
        // Span names are constants: the order's action, as elsewhere.
        let span = match frozen {
            true => info_span!("freeze", pod.uid = %uid, cgroup.id = cgroup_id, order.id = %id),
            false => info_span!("thaw", pod.uid = %uid, cgroup.id = cgroup_id, order.id = %id),
        };
        let dir = self.cgroups()?.abs(&target.pod.path);
        let deadline = Instant::now() + order.timeout;
        let settled = blocking(move || match frozen {
            true => freeze::freeze(&dir, deadline),
            false => freeze::thaw(&dir, deadline),
        })
        .instrument(span.clone())
        .await?;
        span.in_scope(|| {
            info!(
                events.frozen = settled.events.frozen,
                reason = %order.reason,
                "{}",
                if frozen { "pod frozen" } else { "pod thawed" }
            )
        });
        Ok(settled)
    }

    /// The cgroup of the pod or of the named container, checked, and the
    /// containers to stop in the runtime.
    fn kill_scope(
        &self,
        target: &Resolved,
        container: Option<&ContainerRef>,
    ) -> Result<KillScope, AgentError> {
        let Some(wanted) = container else {
            return Ok(KillScope {
                rel: target.pod.path.clone(),
                id: target.pod.cgroup_id,
                stops: pod_stop_targets(target),
            });
        };
        let (id, name) = self.container_id(target, wanted)?;
        let found = target.pod.containers.iter().find(|c| c.id.as_str() == id);
        let Some(found) = found else {
            return Err(AgentError::NotFound(format!(
                "container {id} of pod {} has no cgroup on this node",
                target.pod.uid
            )));
        };
        cgroup::check_target(&found.path, &self.own_cgroup())?;
        Ok(KillScope {
            rel: found.path.clone(),
            id: found.cgroup_id,
            stops: vec![StopTarget { id, name }],
        })
    }

    /// The id and name of the container an order names.
    fn container_id(
        &self,
        target: &Resolved,
        wanted: &ContainerRef,
    ) -> Result<(String, String), AgentError> {
        let known = target
            .cri
            .as_ref()
            .map(|c| c.containers.as_slice())
            .unwrap_or(&[]);
        match wanted {
            ContainerRef::Id(id) => {
                let name = known.iter().find(|c| c.id == id.as_str());
                Ok((
                    id.to_string(),
                    name.map(|c| c.name.clone()).unwrap_or_default(),
                ))
            }
            ContainerRef::Name(name) if target.cri.is_none() => Err(AgentError::NotFound(format!(
                "container {name:?}: the runtime did not name this pod's containers, so give \
                 the container's 64-hex id"
            ))),
            ContainerRef::Name(name) => known
                .iter()
                .filter(|c| &c.name == name && c.state == "running")
                .max_by_key(|c| c.attempt)
                .map(|c| (c.id.clone(), c.name.clone()))
                .ok_or_else(|| {
                    AgentError::NotFound(format!(
                        "pod {} has no running container named {name:?}",
                        target.pod.uid
                    ))
                }),
        }
    }

    /// Tells the runtime and kills through the cgroup at once; answers when
    /// the cgroup is empty and the runtime has answered or timed out.
    async fn kill_scoped(
        &self,
        target: &Resolved,
        scope: KillScope,
        order: &PodOrder,
        received_at: SystemTime,
    ) -> Result<v1::KillResponse, AgentError> {
        let method = self.containment().kill_method();
        let span = info_span!(
            "kill", pod.uid = %target.pod.uid, cgroup.id = scope.id, kill.method = method.as_str()
        );
        let deadline = Instant::now() + order.timeout;
        let stops = self
            .runtime_link()
            .map(|link| spawn_stops(link, scope.stops.clone(), self.settings().cri_timeout));

        let cgroups: Cgroup2 = self.cgroups()?.clone();
        let rel = scope.rel.clone();
        let killed: Killed = blocking(move || kill::kill(&cgroups, &rel, method, deadline))
            .instrument(span.clone())
            .await?;
        let runtime: Vec<RuntimeStop> = match stops {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        span.in_scope(|| log_kill(&killed, &runtime, &order.reason, received_at));
        Ok(reply::kill(KillFacts {
            pod: self.pod_proto(target),
            cgroup_path: &scope.rel,
            cgroup_id: scope.id,
            killed: &killed,
            received_at,
            runtime: &runtime,
        }))
    }

    fn runtime_link(&self) -> Option<RuntimeLink> {
        match (self.cri(), &self.settings().cri_socket) {
            (Some(client), _) => Some(RuntimeLink::Connected(client.clone())),
            (None, Some(socket)) => Some(RuntimeLink::Socket(socket.clone())),
            (None, None) => None,
        }
    }

    async fn delete_pod(&self, target: &Resolved, named: &PodTarget) -> Deleted {
        let api = match self.containment().pods() {
            Ok(api) => api.clone(),
            Err(why) => return Deleted::NotConfigured(why.to_owned()),
        };
        let names = match (&target.cri, named) {
            (Some(cri), _) if !cri.name.is_empty() => {
                Some((cri.namespace.clone(), cri.name.clone()))
            }
            (_, PodTarget::Name { namespace, name }) => Some((namespace.clone(), name.clone())),
            _ => self.indexed_name(target.pod.uid.as_str()),
        };
        let Some((namespace, name)) = names else {
            return Deleted::Failed(
                "the pod's namespace and name are unknown (neither the runtime nor the API \
                 server's pod index named it), so it cannot be deleted through the API server"
                    .into(),
            );
        };
        api.delete(&namespace, &name, target.pod.uid.as_str()).await
    }

    fn guard_or_missing(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, super::guard::Guard>, AgentError> {
        self.containment().guard().ok_or_else(|| {
            AgentError::MissingFeature(
                "the exec guard did not load: see `stockade doctor` (exec_guard)".into(),
            )
        })
    }
}

/// Every running container the runtime knows in the pod; without the
/// runtime's list, every container cgroup found (their names unknown).
fn pod_stop_targets(target: &Resolved) -> Vec<StopTarget> {
    match &target.cri {
        Some(cri) => cri
            .containers
            .iter()
            .filter(|c| c.state == "running")
            .map(|c| StopTarget {
                id: c.id.clone(),
                name: c.name.clone(),
            })
            .collect(),
        None => target
            .pod
            .containers
            .iter()
            .map(|c| StopTarget {
                id: c.id.to_string(),
                name: String::new(),
            })
            .collect(),
    }
}

fn log_kill(killed: &Killed, runtime: &[RuntimeStop], reason: &str, received_at: SystemTime) {
    let took = killed
        .verified_at
        .duration_since(received_at)
        .unwrap_or_default();
    let answers: Vec<String> = runtime
        .iter()
        .map(|s| format!("{}: {}", s.target.id, super::runtime::describe(&s.outcome)))
        .collect();
    info!(
        kill.signalled = killed.signalled,
        latency_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        runtime = ?answers,
        reason = %reason,
        "killed; cgroup.events says populated 0"
    );
}

/// Runs a blocking containment step on tokio's blocking pool.
async fn blocking<T, F>(step: F) -> Result<T, AgentError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ContainError> + Send + 'static,
{
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| AgentError::Kernel(format!("the containment step did not finish: {e}")))?
        .map_err(contain_error)
}

/// The status family of each containment failure.
pub(crate) fn contain_error(err: ContainError) -> AgentError {
    let msg = error_chain(&err);
    if err.is_deadline() {
        AgentError::Deadline(msg)
    } else if err.is_gone() {
        AgentError::NotFound(format!("the cgroup is gone: {msg}"))
    } else {
        AgentError::Kernel(msg)
    }
}

fn guard_error(err: super::guard::GuardError) -> AgentError {
    AgentError::Kernel(error_chain(&err))
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::contain::events::CgroupEvents;

    #[test]
    fn deadlines_and_vanished_cgroups_have_their_own_codes() {
        let late = ContainError::StillPopulated {
            path: PathBuf::from("/x"),
            waited: Duration::from_secs(5),
            left: 2,
        };
        assert!(matches!(contain_error(late), AgentError::Deadline(_)));
        let late = ContainError::NotSettled {
            path: PathBuf::from("/x"),
            wanted: "frozen 1",
            waited: Duration::from_secs(5),
            last: CgroupEvents::default(),
            undo_failed: None,
        };
        assert!(matches!(contain_error(late), AgentError::Deadline(m) if m.contains("frozen 1")));
        let gone = ContainError::Io {
            op: "write",
            path: PathBuf::from("/x/cgroup.freeze"),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(matches!(contain_error(gone), AgentError::NotFound(_)));
        let denied = ContainError::Io {
            op: "write",
            path: PathBuf::from("/x/cgroup.kill"),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(matches!(contain_error(denied), AgentError::Kernel(_)));
    }
}
