//! The gRPC edge: each agent error becomes a deliberate status code.

use std::sync::Arc;

use stockade_proto::v1::{self, stockade_server::Stockade};
use tonic::{Request, Response, Status};

use crate::agent::{Agent, AgentError};

/// The `stockade.v1.Stockade` service over an [`Agent`].
#[derive(Clone)]
pub struct Service {
    agent: Arc<Agent>,
}

impl Service {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

/// The status code a caller can act on, for each kind of failure.
pub fn status(err: AgentError) -> Status {
    let msg = err.to_string();
    match err {
        AgentError::Invalid(_) => Status::invalid_argument(msg),
        AgentError::NotFound(_) => Status::not_found(msg),
        AgentError::Refused(_) | AgentError::MissingFeature(_) => Status::failed_precondition(msg),
        AgentError::AlreadyIsolated(_) => Status::already_exists(msg),
        AgentError::Kernel(_) | AgentError::NotVerified(_) => Status::internal(msg),
    }
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
        let isolation = self.agent.isolate(req.get_ref()).await.map_err(status)?;
        Ok(Response::new(v1::IsolateResponse {
            isolation: Some(isolation),
        }))
    }

    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let reply = self.agent.release(req.get_ref()).await.map_err(status)?;
        Ok(Response::new(reply))
    }

    async fn list_isolations(
        &self,
        _: Request<v1::ListIsolationsRequest>,
    ) -> Result<Response<v1::ListIsolationsResponse>, Status> {
        let isolations = self.agent.isolations().map_err(status)?;
        Ok(Response::new(v1::ListIsolationsResponse { isolations }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

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
