//! Orders acted on once: the ledger and the in-flight turns around the
//! agent's actions, and the TTL of isolations.
//!
//! Every mutating order takes these steps (see [`crate::ledger`]):
//! its id's turn ([`Orders::turn`]), an answer from the ledger if the id
//! is known ([`Orders::known`]), then [`Orders::run`]: `begin`, act,
//! `finish`. A crash between `begin` and `finish` leaves the order
//! `Accepted`; the restarted agent settles it (`Agent::start`).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;
use stockade_proto::v1;
use tonic::Code;
use tracing::{info, warn};

use crate::{
    agent::{error_chain, AgentError},
    api,
    ledger::{
        Begin, Clock, Failure, InFlight, InFlightGuard, Ledger, LedgerError, ListFilter, NewOrder,
        OrderRecord, OrderState,
    },
    validate::{self, FieldError},
};

/// The action name of an `ExtendIsolation` order in the ledger.
pub const EXTEND: &str = "extend";

/// The ledger, the turns of ids being acted on, and the clock.
#[derive(Clone)]
pub struct Orders {
    ledger: Ledger,
    in_flight: InFlight,
    clock: Arc<dyn Clock>,
}

impl Orders {
    pub fn new(ledger: Ledger, clock: Arc<dyn Clock>) -> Self {
        Self {
            ledger,
            in_flight: InFlight::new(),
            clock,
        }
    }

    /// The ledger, for blocking calls.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Waits until no other order with `id` is being acted on.
    pub async fn turn(&self, id: &str) -> InFlightGuard {
        self.in_flight.acquire(id).await
    }

    /// Runs a ledger call off the async runtime: each one waits for fsync.
    pub async fn blocking<R: Send + 'static>(
        &self,
        call: impl FnOnce(&Ledger) -> Result<R, LedgerError> + Send + 'static,
    ) -> Result<R, AgentError> {
        let ledger = self.ledger.clone();
        let joined = tokio::task::spawn_blocking(move || call(&ledger)).await;
        match joined {
            Ok(result) => result.map_err(ledger_error),
            Err(e) => Err(AgentError::Ledger(format!("a ledger call panicked: {e}"))),
        }
    }

    /// The answer to an order whose id the ledger knows already: the first
    /// outcome, or ALREADY_EXISTS when the content differs. `None` for a
    /// new id. Hold the id's [`Orders::turn`] around this and `run`.
    pub async fn known<T: Message + Default>(
        &self,
        id: &str,
        action: &str,
        fingerprint: [u8; 32],
    ) -> Result<Option<Result<T, AgentError>>, AgentError> {
        let owned = id.to_owned();
        let Some(first) = self.blocking(move |l| l.get(&owned)).await? else {
            return Ok(None);
        };
        if first.fingerprint != fingerprint || first.action != action {
            return Ok(Some(Err(conflict(&first))));
        }
        Ok(Some(replay(&first)))
    }

    /// Records `order`, carries out `act` if the id is new, and records its
    /// outcome; a known id gets the first outcome and `act` is not polled.
    pub async fn run<T: Message + Default>(
        &self,
        order: NewOrder,
        act: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, AgentError> {
        let id = order.id.clone();
        match self.blocking(move |l| l.begin(order)).await? {
            Begin::New => {}
            Begin::Duplicate(first) => return replay(&first),
            Begin::Conflict(first) => return Err(conflict(&first)),
        }

        let result = act.await;
        let (state, reply, failure) = match &result {
            Ok(reply) => (OrderState::Enforced, Some(reply.encode_to_vec()), None),
            Err(e) => (OrderState::Failed, None, Some(failure_of(e))),
        };
        self.blocking(move |l| l.finish(&id, state, reply, failure))
            .await?;
        result
    }
}

/// The order's id as given, or a new one when it is empty.
pub fn order_id(given: &str, field: &str) -> Result<String, FieldError> {
    Ok(validate::order_id(given, field)?.unwrap_or_else(new_id))
}

/// A fresh id for an order sent without one: `local-<uuid>`.
pub fn new_id() -> String {
    // The kernel's random UUID: no dependency for one call per order.
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| fallback_unique());
    format!("local-{uuid}")
}

fn fallback_unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos:x}-{:x}", std::process::id())
}

/// When an order with `ttl_seconds` (0: none) received at `at` expires.
pub fn expiry(at: SystemTime, ttl_seconds: u32) -> Option<SystemTime> {
    (ttl_seconds > 0).then(|| at + Duration::from_secs(u64::from(ttl_seconds)))
}

/// The first outcome of an order, as it was answered.
fn replay<T: Message + Default>(first: &OrderRecord) -> Result<T, AgentError> {
    if let Some(failure) = &first.failure {
        if first.state == OrderState::Failed {
            return Err(AgentError::Replayed {
                code: failure.code,
                message: failure.message.clone(),
            });
        }
    }
    match (&first.reply, first.state) {
        (_, OrderState::Accepted) => Err(AgentError::Unsettled(format!(
            "order {} has no outcome yet; ask again later",
            first.id
        ))),
        (Some(reply), _) => T::decode(reply.as_slice())
            .map_err(|e| AgentError::Ledger(format!("order {}: stored reply: {e}", first.id))),
        (None, _) => Err(AgentError::Ledger(format!(
            "order {} ended without a stored reply",
            first.id
        ))),
    }
}

fn conflict(first: &OrderRecord) -> AgentError {
    AgentError::OrderConflict(format!(
        "order id reused with different content: {} was a {} order received at unix time {}",
        first.id,
        first.action,
        unix_secs(first.received_at)
    ))
}

/// What the ledger keeps of a failed order: the status it was answered.
pub fn failure_of(err: &AgentError) -> Failure {
    let status = api::status_of(err);
    Failure {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

pub fn ledger_error(err: LedgerError) -> AgentError {
    match err {
        LedgerError::NotFound { .. } => AgentError::NotFound(error_chain(&err)),
        other => AgentError::Ledger(error_chain(&other)),
    }
}

/// Lifts every isolation whose TTL passed by `now`, then marks it
/// `Expired`; returns the ids expired. An isolation `lift` fails on stays
/// in force and is tried again at the next call.
pub fn expire_due(
    ledger: &Ledger,
    now: SystemTime,
    mut lift: impl FnMut(&OrderRecord) -> Result<(), AgentError>,
) -> Result<Vec<String>, LedgerError> {
    let mut expired = Vec::new();
    for rec in ledger.due(now)? {
        if let Err(e) = lift(&rec) {
            warn!(order.id = %rec.id, error = %e, "cannot lift an expired isolation");
            continue;
        }
        ledger.set_state(&rec.id, OrderState::Expired)?;
        info!(order.id = %rec.id, pod.uid = %rec.pod_uid, "isolation expired and lifted");
        expired.push(rec.id);
    }
    Ok(expired)
}

/// An order as the API shows it.
pub fn order_to_proto(rec: &OrderRecord) -> v1::Order {
    let failure = rec.failure.clone().unwrap_or(Failure {
        code: Code::Ok as i32,
        message: String::new(),
    });
    v1::Order {
        id: rec.id.clone(),
        action: rec.action.clone(),
        state: state_to_proto(rec.state) as i32,
        pod_uid: rec.pod_uid.clone(),
        received_at: Some(rec.received_at.into()),
        updated_at: Some(rec.updated_at.into()),
        expires_at: rec.expires_at.map(Into::into),
        error_code: failure.code,
        error_message: failure.message,
        cgroup_id: rec.cgroup_id,
    }
}

fn state_to_proto(state: OrderState) -> v1::OrderState {
    match state {
        OrderState::Accepted => v1::OrderState::Accepted,
        OrderState::Enforced => v1::OrderState::Enforced,
        OrderState::Failed => v1::OrderState::Failed,
        OrderState::Released => v1::OrderState::Released,
        OrderState::Expired => v1::OrderState::Expired,
    }
}

/// The filter of a `ListOrders` request.
pub fn list_filter(req: &v1::ListOrdersRequest) -> Result<ListFilter, FieldError> {
    let state = match req.state.as_str() {
        "" => None,
        "accepted" => Some(OrderState::Accepted),
        "enforced" => Some(OrderState::Enforced),
        "failed" => Some(OrderState::Failed),
        "released" => Some(OrderState::Released),
        "expired" => Some(OrderState::Expired),
        other => {
            let reason =
                format!("unknown state `{other}`: accepted, enforced, failed, released or expired");
            return Err(FieldError::new("state", reason));
        }
    };
    Ok(ListFilter {
        state,
        limit: (req.limit > 0).then_some(req.limit as usize),
        ..ListFilter::default()
    })
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests;
