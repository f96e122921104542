//! The gRPC edge: each agent error becomes a deliberate status code.

use std::{sync::Arc, time::SystemTime};

use stockade_proto::v1::{self, stockade_server::Stockade};
use tonic::{Code, Request, Response, Status};

use crate::{
    access::{
        gate::{Effect, Guarded, Order},
        Caller, Gate,
    },
    agent::{Agent, AgentError},
    contain::order,
    metrics::Enforced,
    orders, validate,
};

/// Gives an order sent without an id one made up here, so that the audit
/// line, the ledger and the reply all carry the same id. A malformed id
/// is refused, naming the field, before anything else.
fn fill_order_id(id: &mut String) -> Result<(), Status> {
    validate::order_id(id, "order_id").map_err(|e| status(e.into()))?;
    if id.is_empty() {
        *id = orders::new_id();
    }
    Ok(())
}

/// The `stockade.v1.Stockade` service over an [`Agent`].
#[derive(Clone)]
pub struct Service {
    agent: Arc<Agent>,
    /// Guards, dry runs and the audit log of orders (see `access::gate`).
    gate: Arc<Gate>,
}

impl Service {
    pub fn new(agent: Arc<Agent>) -> Self {
        let gate = Arc::new(Gate::default());
        Self { agent, gate }
    }

    /// Runs a containment order through the guards, the audit log and the
    /// metrics; a dry run is answered with `planned`, built from the pod it
    /// names.
    async fn guarded<T: Enforced>(
        &self,
        caller: &Caller,
        order: Order<'_>,
        act: impl std::future::Future<Output = Result<T, AgentError>>,
        planned: impl FnOnce(v1::Pod) -> T,
    ) -> Result<T, Status> {
        let (action, since) = (order.action, SystemTime::now());
        match self.gate.guarded(&*self.agent, caller, order, act).await? {
            Guarded::Done(reply) => {
                self.gate.metrics().enforced(action, since, &reply);
                Ok(reply)
            }
            Guarded::DryRun(pod) => Ok(planned(pod)),
        }
    }

    /// The same service with the daemon's guards and audit log.
    pub fn with_gate(self, gate: Arc<Gate>) -> Self {
        Self { gate, ..self }
    }
}

/// The status code a caller can act on, for each kind of failure.
pub fn status(err: AgentError) -> Status {
    status_of(&err)
}

/// Like [`status`], for an error that is kept.
pub fn status_of(err: &AgentError) -> Status {
    let msg = err.to_string();
    match err {
        AgentError::Invalid(_) => Status::invalid_argument(msg),
        AgentError::NotFound(_) => Status::not_found(msg),
        AgentError::Refused(_) | AgentError::MissingFeature(_) => Status::failed_precondition(msg),
        AgentError::AlreadyIsolated(_) => Status::already_exists(msg),
        AgentError::Kernel(_) | AgentError::NotVerified(_) => Status::internal(msg),
        AgentError::Deadline(_) => Status::deadline_exceeded(msg),
        AgentError::OrderConflict(_) => Status::already_exists(msg),
        AgentError::Replayed { code, message } => Status::new(Code::from(*code), message.clone()),
        AgentError::Unsettled(_) | AgentError::Ledger(_) => Status::unavailable(msg),
    }
}

/// The body of a containment order's handler: refuses malformed input
/// naming the field (before the guards look the pod up), gives the order
/// an id, and runs it through the gate; a dry run is answered with
/// `$planned`, built from the pod and the id.
macro_rules! containment_order {
    ($self:ident, $req:ident, $action:ident, $effect:expr, |$pod:ident, $id:ident| $planned:expr) => {{
        let caller = Caller::of(&$req);
        let mut r = $req.into_inner();
        order::$action(&r).map_err(|e| status(e.into()))?;
        fill_order_id(&mut r.order_id)?;
        let order = Order {
            action: stringify!($action),
            effect: $effect,
            pod: r.pod.as_ref(),
            dry_run: r.dry_run,
            order_id: &r.order_id,
            reason: &r.reason,
        };
        let $id = r.order_id.clone();
        let planned = |$pod| $planned;
        let reply = $self.guarded(&caller, order, $self.agent.$action(&r), planned);
        Ok(Response::new(reply.await?))
    }};
}

#[tonic::async_trait]
impl Stockade for Service {
    async fn get_info(
        &self,
        _: Request<v1::GetInfoRequest>,
    ) -> Result<Response<v1::AgentInfo>, Status> {
        Ok(Response::new(self.agent.info()))
    }

    async fn list_pods(
        &self,
        _: Request<v1::ListPodsRequest>,
    ) -> Result<Response<v1::ListPodsResponse>, Status> {
        let pods = self.agent.pods().await.map_err(status)?;
        Ok(Response::new(v1::ListPodsResponse { pods }))
    }

    async fn isolate(
        &self,
        req: Request<v1::IsolateRequest>,
    ) -> Result<Response<v1::IsolateResponse>, Status> {
        let (caller, since) = (Caller::of(&req), SystemTime::now());
        let mut r = req.into_inner();
        fill_order_id(&mut r.order_id)?;
        let reply = self.gate.isolate(&*self.agent, &caller, &r).await?;
        self.gate.metrics().enforced("isolate", since, &reply);
        Ok(Response::new(reply))
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let (caller, since) = (Caller::of(&req), SystemTime::now());
        let mut r = req.into_inner();
        fill_order_id(&mut r.order_id)?;
        let reply = self.gate.release(&*self.agent, &caller, &r).await?;
        self.gate.metrics().enforced("release", since, &reply);
        Ok(Response::new(reply))
    }

    async fn list_isolations(
        &self,
        _: Request<v1::ListIsolationsRequest>,
    ) -> Result<Response<v1::ListIsolationsResponse>, Status> {
        let isolations = self.agent.isolations().map_err(status)?;
        Ok(Response::new(v1::ListIsolationsResponse { isolations }))
    }

    async fn freeze(
        &self,
        req: Request<v1::FreezeRequest>,
    ) -> Result<Response<v1::FreezeResponse>, Status> {
        containment_order!(self, req, freeze, Effect::Contain, |pod, order_id| {
            v1::FreezeResponse {
                pod: Some(pod),
                order_id,
                dry_run: true,
                ..Default::default()
            }
        })
    }

    async fn thaw(
        &self,
        req: Request<v1::ThawRequest>,
    ) -> Result<Response<v1::ThawResponse>, Status> {
        containment_order!(self, req, thaw, Effect::Lift, |pod, order_id| {
            v1::ThawResponse {
                pod: Some(pod),
                order_id,
                dry_run: true,
                ..Default::default()
            }
        })
    }

    async fn kill(
        &self,
        req: Request<v1::KillRequest>,
    ) -> Result<Response<v1::KillResponse>, Status> {
        containment_order!(self, req, kill, Effect::Contain, |pod, order_id| {
            v1::KillResponse {
                pod: Some(pod),
                order_id,
                dry_run: true,
                ..Default::default()
            }
        })
    }

    async fn terminate(
        &self,
        req: Request<v1::TerminateRequest>,
    ) -> Result<Response<v1::TerminateResponse>, Status> {
        containment_order!(self, req, terminate, Effect::Contain, |pod, order_id| {
            v1::TerminateResponse {
                kill: Some(v1::KillResponse {
                    pod: Some(pod),
                    ..Default::default()
                }),
                order_id,
                dry_run: true,
                ..Default::default()
            }
        })
    }

    async fn contain(
        &self,
        req: Request<v1::ContainRequest>,
    ) -> Result<Response<v1::ContainResponse>, Status> {
        containment_order!(self, req, contain, Effect::Contain, |pod, order_id| {
            v1::ContainResponse {
                pod: Some(pod),
                order_id,
                dry_run: true,
                ..Default::default()
            }
        })
    }

    async fn uncontain(
        &self,
        req: Request<v1::UncontainRequest>,
    ) -> Result<Response<v1::UncontainResponse>, Status> {
        containment_order!(self, req, uncontain, Effect::Lift, |pod, order_id| {
            v1::UncontainResponse {
                pod: Some(pod),
                order_id,
                dry_run: true,
                ..Default::default()
            }
        })
    }

    async fn get_order(
        &self,
        req: Request<v1::GetOrderRequest>,
    ) -> Result<Response<v1::Order>, Status> {
        let reply = self.agent.order(&req.get_ref().id).await.map_err(status)?;
        Ok(Response::new(reply))
    }

    async fn list_orders(
        &self,
        req: Request<v1::ListOrdersRequest>,
    ) -> Result<Response<v1::ListOrdersResponse>, Status> {
        let orders = self.agent.orders(req.get_ref()).await.map_err(status)?;
        Ok(Response::new(v1::ListOrdersResponse { orders }))
    }

    async fn extend_isolation(
        &self,
        req: Request<v1::ExtendIsolationRequest>,
    ) -> Result<Response<v1::IsolateResponse>, Status> {
        let caller = Caller::of(&req);
        let mut r = req.into_inner();
        fill_order_id(&mut r.order_id)?;
        let order = Order {
            action: "extend",
            // Keeping a pod isolated longer or shorter changes no
            // containment's kind: the lifting guards apply.
            effect: Effect::Lift,
            pod: r.pod.as_ref(),
            dry_run: r.dry_run,
            order_id: &r.order_id,
            reason: "",
        };
        let act = self.agent.extend(&r);
        let reply = self.gate.guarded(&*self.agent, &caller, order, act).await?;
        match reply {
            Guarded::Done(reply) => Ok(Response::new(reply)),
            Guarded::DryRun(pod) if !pod.isolated => Err(Status::not_found(format!(
                "pod {} is not isolated",
                pod.uid
            ))),
            Guarded::DryRun(pod) => {
                let expires_at = (r.ttl_seconds > 0).then(|| {
                    let at =
                        SystemTime::now() + std::time::Duration::from_secs(r.ttl_seconds.into());
                    at.into()
                });
                let isolation = v1::Isolation {
                    pod: Some(pod),
                    expires_at,
                    ..Default::default()
                };
                Ok(Response::new(v1::IsolateResponse {
                    isolation: Some(isolation),
                    dry_run: true,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::FieldError;

    #[test]
    fn every_error_kind_has_its_own_code() {
        let cases = [
            (
                AgentError::Invalid(FieldError {
                    field: "reason".into(),
                    reason: "required".into(),
                }),
                Code::InvalidArgument,
            ),
            (AgentError::NotFound("x".into()), Code::NotFound),
            (AgentError::Refused("x".into()), Code::FailedPrecondition),
            (
                AgentError::MissingFeature("x".into()),
                Code::FailedPrecondition,
            ),
            (AgentError::AlreadyIsolated("x".into()), Code::AlreadyExists),
            (AgentError::Kernel("x".into()), Code::Internal),
            (AgentError::Deadline("x".into()), Code::DeadlineExceeded),
        ];
        for (err, code) in cases {
            assert_eq!(status(err).code(), code);
        }
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let err = AgentError::Invalid(FieldError {
            field: "allow[0].cidr".into(),
            reason: "bad".into(),
        });
        assert_eq!(status(err).message(), "allow[0].cidr: bad");
    }
}
