//! The checks every order passes on its way to the agent, whichever socket
//! it came through: validation, the guards, dry runs, and the audit line.
//!
//! Known shortcoming: the gate resolves the target through the node's pod
//! list, and the agent resolves it again when it acts. That costs one more
//! cgroup scan and runtime call per order, and a pod recreated under the
//! same name between the two is acted on without having been checked.
//! Checking inside `Agent::isolate`, after its own resolve step, would
//! close both.

use std::{future::Future, sync::Arc, time::SystemTime};

use stockade_proto::v1::{self, pod_selector::Target};
use tonic::Status;

pub use super::guards::Effect;
use super::{
    audit::{AuditLog, Entry},
    authz::Caller,
    guards::{GuardInput, Guards},
    holds::{HoldGuard, Holds},
};
use crate::{
    agent::{Agent, AgentError},
    api, features,
    k8s::{self, Outcome},
    metrics::{Enforced, ErrorKind, OrderMetrics},
    orders,
    validate::{self, FieldError, IsolateOrder, Mode, PodTarget},
};

/// What the gate needs from the agent; a seam so that it is tested without
/// a kernel.
pub trait Node: Send + Sync {
    fn node_name(&self) -> String;
    /// Every pod on the node, with its namespace when the runtime names it.
    fn pods(&self) -> impl Future<Output = Result<Vec<v1::Pod>, AgentError>> + Send;
    fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError>;
    /// Why the kernel cannot carry out `order`, if it cannot.
    fn missing_for(&self, order: &str) -> Option<String>;
    fn isolate(
        &self,
        req: &v1::IsolateRequest,
    ) -> impl Future<Output = Result<v1::Isolation, AgentError>> + Send;
    fn release(
        &self,
        req: &v1::ReleaseRequest,
    ) -> impl Future<Output = Result<v1::ReleaseResponse, AgentError>> + Send;
}

impl Node for Agent {
    fn node_name(&self) -> String {
        self.settings().node_name.clone()
    }

    fn pods(&self) -> impl Future<Output = Result<Vec<v1::Pod>, AgentError>> + Send {
        Agent::pods(self)
    }

    fn isolations(&self) -> Result<Vec<v1::Isolation>, AgentError> {
        Agent::isolations(self)
    }

    fn missing_for(&self, order: &str) -> Option<String> {
        features::missing_for(self.features(), order)
    }

    fn isolate(
        &self,
        req: &v1::IsolateRequest,
    ) -> impl Future<Output = Result<v1::Isolation, AgentError>> + Send {
        Agent::isolate(self, req)
    }

    fn release(
        &self,
        req: &v1::ReleaseRequest,
    ) -> impl Future<Output = Result<v1::ReleaseResponse, AgentError>> + Send {
        Agent::release(self, req)
    }
}

/// An order for [`Gate::guarded`].
#[derive(Clone, Copy, Debug)]
pub struct Order<'a> {
    /// As written in the audit log: `freeze`, `kill`, ...
    pub action: &'static str,
    pub effect: Effect,
    pub pod: Option<&'a v1::PodSelector>,
    pub dry_run: bool,
    /// As sent, or as the server made it up: written in the audit line
    /// and in the report to the API server.
    pub order_id: &'a str,
    /// Why, for the report to the API server; empty when none was given.
    pub reason: &'a str,
}

/// What [`Gate::guarded`] did with an order that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub enum Guarded<T> {
    /// The agent acted: its reply.
    Done(T),
    /// A dry run: nothing was done; the pod it would act on.
    DryRun(v1::Pod),
}

/// The guards, the audit log and the order metrics, shared by both
/// servers.
pub struct Gate {
    guards: Guards,
    audit: Arc<AuditLog>,
    metrics: OrderMetrics,
    /// The pod index and the reporter, when the API server is configured.
    kube: k8s::Links,
    /// Containing orders in flight, for the share guard.
    holds: Holds,
}

impl Default for Gate {
    /// Default guards; audit lines on standard error.
    fn default() -> Self {
        Self::new(Guards::default(), Arc::new(AuditLog::stderr()))
    }
}

impl Gate {
    pub fn new(guards: Guards, audit: Arc<AuditLog>) -> Self {
        Self {
            guards,
            audit,
            metrics: OrderMetrics::default(),
            kube: k8s::Links::default(),
            holds: Holds::default(),
        }
    }

    /// The same gate, reporting outcomes and naming the node of a pod that
    /// is elsewhere through `kube`.
    pub fn with_kube(self, kube: k8s::Links) -> Self {
        Self { kube, ..self }
    }

    pub fn guards(&self) -> &Guards {
        &self.guards
    }

    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// What the orders through this gate came to, for `/metrics`.
    pub fn metrics(&self) -> &OrderMetrics {
        &self.metrics
    }

    /// An `Isolate` order, checked, carried out (or only planned for a dry
    /// run) and audited.
    pub async fn isolate<N: Node>(
        &self,
        node: &N,
        caller: &Caller,
        req: &v1::IsolateRequest,
    ) -> Result<v1::IsolateResponse, Status> {
        let result = self.try_isolate(node, caller, req).await;
        let order = Order {
            action: "isolate",
            effect: Effect::Contain,
            pod: req.pod.as_ref(),
            dry_run: req.dry_run,
            order_id: &req.order_id,
            reason: &req.reason,
        };
        self.audit_order(caller, &order, result.as_ref().err());
        result
    }

    /// A `Release` order, checked, carried out (or only checked for a dry
    /// run) and audited.
    pub async fn release<N: Node>(
        &self,
        node: &N,
        caller: &Caller,
        req: &v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        let result = self.try_release(node, caller, req).await;
        let order = Order {
            action: "release",
            effect: Effect::Lift,
            pod: req.pod.as_ref(),
            dry_run: req.dry_run,
            order_id: &req.order_id,
            reason: &req.reason,
        };
        self.audit_order(caller, &order, result.as_ref().err());
        if let (true, Ok(reply)) = (req.all, &result) {
            // The order named no pod: each released pod is reported.
            reply
                .released
                .iter()
                .for_each(|pod| self.report_released(&order, pod));
        }
        result
    }

    /// Checks, carries out and audits an order this gate has no method of
    /// its own for (freeze, kill, terminate, contain and their reverses):
    /// validates the pod selector, applies the guards of `effect` to the
    /// pod, then awaits `act` unless it is a dry run. A dry run that
    /// passed every check, and that the kernel could carry out, answers
    /// [`Guarded::DryRun`] with the pod; `act` is then never polled.
    pub async fn guarded<N: Node, T: Enforced>(
        &self,
        node: &N,
        caller: &Caller,
        order: Order<'_>,
        act: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<Guarded<T>, Status> {
        let result = self.try_guarded(node, caller, &order, act).await;
        // A terminate whose delete failed is reported to the API server as
        // a failure, though the order itself (the kill) was carried out.
        let partial = match &result {
            Ok(Guarded::Done(reply)) => partial_failure(reply),
            _ => None,
        };
        let error = result.as_ref().err();
        self.audit_and_report(caller, &order, error, partial.as_ref().or(error));
        result
    }

    async fn try_guarded<N: Node, T>(
        &self,
        node: &N,
        caller: &Caller,
        order: &Order<'_>,
        act: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<Guarded<T>, Status> {
        let target = validate::pod_selector(order.pod, "pod").map_err(invalid)?;
        let seen = self.holds.generation();
        let pods = self.named(node.pods().await.map_err(|e| self.failed(e))?);
        let gone = v1::Pod::default();
        let found = find(&pods, &target);
        let pod = match (found, order.effect) {
            (Some(pod), _) => pod,
            // Lifting needs no pod: the agent says whether it is gone.
            (None, Effect::Lift) => &gone,
            (None, Effect::Contain) => return Err(self.not_on_node(node, &target).await),
        };
        let input = guard_input(order.effect, caller, order.dry_run, pod, &pods);
        let _hold = self.check(input, seen, &pods)?;
        if !order.dry_run {
            return act.await.map(Guarded::Done).map_err(|e| self.failed(e));
        }
        if order.action == "contain" && pod.contained {
            let msg = format!("pod {} is already contained; uncontain it first", pod.uid);
            return Err(Status::already_exists(msg));
        }
        if order.action == "uncontain" && found.is_some_and(|p| !p.contained) {
            return Err(Status::not_found(format!(
                "pod {} is not contained",
                pod.uid
            )));
        }
        if let Some(missing) = node.missing_for(order.action) {
            return Err(Status::failed_precondition(missing));
        }
        match found {
            Some(pod) => Ok(Guarded::DryRun(pod.clone())),
            None => Err(self.not_on_node(node, &target).await),
        }
    }

    /// Writes the audit line of an order, counts it, and queues its report
    /// to the API server (which never waits).
    pub fn audit_order(&self, caller: &Caller, order: &Order<'_>, error: Option<&Status>) {
        self.audit_and_report(caller, order, error, error);
    }

    /// [`Gate::audit_order`], with what the API server is told of the
    /// outcome given apart (`reported`).
    fn audit_and_report(
        &self,
        caller: &Caller,
        order: &Order<'_>,
        error: Option<&Status>,
        reported: Option<&Status>,
    ) {
        self.metrics.order(order.action, order.dry_run, error);
        let target = order.pod.and_then(selector_text);
        let mut entry = Entry::new(caller.name(), order.action).with_target(target);
        entry.peer = caller.peer();
        // Only an id that passed validation is written: bounded and plain.
        entry.order_id = validate::order_id(order.order_id, "order_id")
            .ok()
            .flatten();
        self.audit.write(&entry.with_result(order.dry_run, error));

        // Refusals before the pod was found on this node (malformed, not
        // here, not allowed, over the rate) say nothing about a pod of
        // this node: they are not reported, so that a caller cannot write
        // Events about pods elsewhere.
        let unreported = [
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
            tonic::Code::ResourceExhausted,
        ];
        if error.is_some_and(|e| unreported.contains(&e.code())) {
            return;
        }
        if let Some(target) = order.pod.and_then(k8s::Target::of) {
            self.report(order, target, reported);
        }
    }

    /// The guards, with the containing orders in flight counted (see
    /// `holds`); the hold of an admitted containing order, to keep until
    /// it has acted.
    fn check(
        &self,
        input: GuardInput<'_>,
        seen: u64,
        pods: &[v1::Pod],
    ) -> Result<Option<HoldGuard>, Status> {
        let listed = pods
            .iter()
            .filter(|p| held(p))
            .map(|p| p.uid.as_str())
            .collect();
        self.holds
            .check(&self.guards, input, seen, &listed)
            .map_err(|r| r.status())
    }

    /// The node's pods, those the runtime did not name named from the pod
    /// index, so that the protected-namespace guard and names apply to
    /// them too (a node with no runtime socket, or a runtime that is down).
    fn named(&self, mut pods: Vec<v1::Pod>) -> Vec<v1::Pod> {
        let Some(index) = &self.kube.index else {
            return pods;
        };
        for pod in pods.iter_mut().filter(|p| p.namespace.is_empty()) {
            if let Some(info) = index.by_uid(&pod.uid) {
                (pod.namespace, pod.name) = (info.namespace, info.name);
            }
        }
        pods
    }

    /// The status of an order the node could not carry out, counted by
    /// its kind.
    fn failed(&self, err: AgentError) -> Status {
        self.metrics.agent_error(&err);
        api::status(err)
    }

    fn report(&self, order: &Order<'_>, target: k8s::Target, error: Option<&Status>) {
        let Some(reporter) = &self.kube.reporter else {
            return;
        };
        let given = |text: &str| Some(text.to_owned()).filter(|t| !t.is_empty());
        reporter.report(Outcome {
            dry_run: order.dry_run,
            order_id: given(order.order_id),
            reason: given(order.reason),
            ..Outcome::new(order.action, target, error)
        });
    }

    /// Reports one pod released by `release --all`.
    fn report_released(&self, order: &Order<'_>, pod: &v1::Pod) {
        let target = match pod.name.is_empty() || pod.namespace.is_empty() {
            true => k8s::Target::Uid(pod.uid.clone()),
            false => k8s::Target::Name {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            },
        };
        self.report(order, target, None);
    }

    /// The refusal of an order whose pod is not on this node, naming the
    /// node it is on when the API server says. Only this refusal waits for
    /// the API server, at most `k8s::index::LOCATE_DEADLINE`, and not at
    /// all while the pod index sees it down.
    async fn not_on_node(&self, node: &impl Node, target: &PodTarget) -> Status {
        let here = node.node_name();
        match self.locate(target).await {
            Some(there) if there != here => Status::not_found(format!(
                "pod {target} is on node {there}, not on this node {here}"
            )),
            _ => not_on_node(&here, target),
        }
    }

    /// The node a pod named by name is scheduled on. A pod named by UID is
    /// not looked for: the index only has this node's pods, and the API
    /// server cannot be asked for a pod by UID.
    async fn locate(&self, target: &PodTarget) -> Option<String> {
        let index = self.kube.index.as_ref()?;
        match target {
            PodTarget::Name { namespace, name } => index.locate(namespace, name).await,
            PodTarget::Uid(_) => None,
        }
    }

    async fn try_isolate<N: Node>(
        &self,
        node: &N,
        caller: &Caller,
        req: &v1::IsolateRequest,
    ) -> Result<v1::IsolateResponse, Status> {
        let received_at = SystemTime::now();
        let order = validate::isolate(req).map_err(invalid)?;
        let seen = self.holds.generation();
        let pods = self.named(node.pods().await.map_err(|e| self.failed(e))?);
        let Some(pod) = find(&pods, &order.target) else {
            return Err(self.not_on_node(node, &order.target).await);
        };
        let input = guard_input(Effect::Contain, caller, req.dry_run, pod, &pods);
        let _hold = self.check(input, seen, &pods)?;

        if !req.dry_run {
            let isolation = node.isolate(req).await.map_err(|e| self.failed(e))?;
            return Ok(v1::IsolateResponse {
                isolation: Some(isolation),
                dry_run: false,
            });
        }
        if pod.isolated {
            let msg = format!("pod {} is already isolated; release it first", pod.uid);
            return Err(Status::already_exists(msg));
        }
        if let Some(missing) = node.missing_for(features::ISOLATE) {
            return Err(Status::failed_precondition(missing));
        }
        Ok(v1::IsolateResponse {
            isolation: Some(plan(pod, &order, received_at)),
            dry_run: true,
        })
    }

    async fn try_release<N: Node>(
        &self,
        node: &N,
        caller: &Caller,
        req: &v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        match req.all {
            true => self.try_release_all(node, caller, req).await,
            false => self.try_release_one(node, caller, req).await,
        }
    }

    /// `release --all`: each isolated pod is released as an order of its
    /// own, through its own guards, with the id `<order id>:<pod uid>`.
    ///
    /// Known shortcoming: the first pod that fails stops the rest; the
    /// pods released before it stay released and are not listed.
    async fn try_release_all<N: Node>(
        &self,
        node: &N,
        caller: &Caller,
        req: &v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        if req.pod.is_some() {
            let err = FieldError::new("pod", "must be empty when `all` is set");
            return Err(invalid(err));
        }
        let base = orders::order_id(&req.order_id, "order_id").map_err(invalid)?;
        let isolations = node.isolations().map_err(|e| self.failed(e))?;
        let mut reply = v1::ReleaseResponse {
            received_at: Some(SystemTime::now().into()),
            dry_run: req.dry_run,
            ..Default::default()
        };
        for pod in isolations.into_iter().filter_map(|i| i.pod) {
            let one = one_of_all(req, &base, &pod.uid);
            let done = self.try_release_one(node, caller, &one).await?;
            reply.foreign_programs_left += done.foreign_programs_left;
            reply.released.push(done.pod.unwrap_or(pod));
        }
        reply.verified_at = (!req.dry_run).then(|| SystemTime::now().into());
        Ok(reply)
    }

    async fn try_release_one<N: Node>(
        &self,
        node: &N,
        caller: &Caller,
        req: &v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        let received_at = SystemTime::now();
        let (target, _reason) = validate::release(req).map_err(invalid)?;
        let seen = self.holds.generation();
        let pods = self.named(node.pods().await.map_err(|e| self.failed(e))?);
        // The pod may be gone while its isolation is still pinned.
        let pod = find(&pods, &target);
        let gone = v1::Pod::default();
        let input = guard_input(
            Effect::Lift,
            caller,
            req.dry_run,
            pod.unwrap_or(&gone),
            &pods,
        );
        let _hold = self.check(input, seen, &pods)?;

        if !req.dry_run {
            return node.release(req).await.map_err(|e| self.failed(e));
        }
        let isolated = match pod {
            Some(pod) => pod.isolated,
            None => node
                .isolations()
                .map_err(|e| self.failed(e))?
                .iter()
                .any(|i| i.pod.as_ref().is_some_and(|p| matches(p, &target))),
        };
        if !isolated {
            return Err(Status::not_found(format!("{target} is not isolated")));
        }
        Ok(v1::ReleaseResponse {
            pod: pod.cloned(),
            received_at: Some(received_at.into()),
            verified_at: None,
            foreign_programs_left: 0,
            dry_run: true,
            released: Vec::new(),
        })
    }
}

/// The release of one pod within `release --all`.
fn one_of_all(all: &v1::ReleaseRequest, base: &str, uid: &str) -> v1::ReleaseRequest {
    // Ids are ASCII (validated), so any byte index is a char boundary;
    // the cut keeps `<base>:<uuid>` within the 128 characters allowed.
    let base = &base[..base.len().min(91)];
    v1::ReleaseRequest {
        pod: Some(v1::PodSelector {
            target: Some(Target::Uid(uid.to_owned())),
        }),
        reason: all.reason.clone(),
        dry_run: all.dry_run,
        order_id: format!("{base}:{uid}"),
        all: false,
    }
}

fn invalid(err: FieldError) -> Status {
    api::status(AgentError::Invalid(err))
}

fn guard_input<'a>(
    effect: Effect,
    caller: &Caller,
    dry_run: bool,
    pod: &'a v1::Pod,
    pods: &[v1::Pod],
) -> GuardInput<'a> {
    GuardInput {
        effect,
        local: caller.is_local(),
        dry_run,
        namespace: Some(pod.namespace.as_str()).filter(|ns| !ns.is_empty()),
        pod_uid: &pod.uid,
        cgroup_path: &pod.cgroup_path,
        pods_on_node: pods.len(),
        contained: pods.iter().filter(|p| held(p)).count(),
        target_contained: held(pod),
    }
}

/// What went wrong in an order that was carried out: the API server's
/// delete of a terminated pod.
fn partial_failure<T: Enforced>(reply: &T) -> Option<Status> {
    let mut api_server = false;
    reply.failures(|kind| api_server |= kind == ErrorKind::ApiServer);
    api_server
        .then(|| Status::unavailable("the pod was killed, but the API server did not delete it"))
}

/// Whether a pod counts against the share guard: isolated, frozen or
/// contained.
fn held(pod: &v1::Pod) -> bool {
    pod.isolated || pod.frozen || pod.contained
}

fn find<'a>(pods: &'a [v1::Pod], target: &PodTarget) -> Option<&'a v1::Pod> {
    pods.iter().find(|p| matches(p, target))
}

fn matches(pod: &v1::Pod, target: &PodTarget) -> bool {
    match target {
        PodTarget::Uid(uid) => pod.uid == uid.as_str(),
        PodTarget::Name { namespace, name } => &pod.namespace == namespace && &pod.name == name,
    }
}

fn not_on_node(here: &str, target: &PodTarget) -> Status {
    let hint = match target {
        PodTarget::Name { .. } => {
            " (pods are named only where a runtime socket or the API server names them)"
        }
        PodTarget::Uid(_) => "",
    };
    Status::not_found(format!("pod {target} is not on node {here}{hint}"))
}

/// What an isolate order would enforce: no timestamps of enforcement or
/// verification, no attachments.
fn plan(pod: &v1::Pod, order: &IsolateOrder, received_at: SystemTime) -> v1::Isolation {
    let mode = match order.mode {
        Mode::AllowNodeProbes => v1::IsolationMode::AllowNodeProbes,
        Mode::Strict => v1::IsolationMode::Strict,
    };
    v1::Isolation {
        pod: Some(pod.clone()),
        mode: mode as i32,
        allow: order.allow.iter().map(|a| a.to_proto()).collect(),
        reason: order.reason.clone(),
        reference: order.reference.clone(),
        received_at: Some(received_at.into()),
        ..v1::Isolation::default()
    }
}

/// The pod as the request named it, for the audit log.
fn selector_text(selector: &v1::PodSelector) -> Option<String> {
    match selector.target.as_ref()? {
        Target::Name(pod) => Some(format!("{}/{}", pod.namespace, pod.name)),
        Target::Uid(uid) => Some(format!("uid {uid}")),
    }
}
