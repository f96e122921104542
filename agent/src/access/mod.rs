//! The coordinator's channel and what every order passes on its way in.
//!
//! - [`tls`]: the TCP listener, served only with mutual TLS, its
//!   certificates reloaded when their files change;
//! - [`authz`]: the identity in a client's certificate, its role, and the
//!   tower layer that refuses what the role does not allow;
//! - [`guards`]: refusals no role overrides (protected namespaces, the
//!   agent's own pod, rate and share limits);
//! - [`gate`]: validation, guards, dry runs and auditing of each order;
//! - [`audit`]: the append-only log of orders and refusals.
//!
//! The Unix socket stays root-only with full rights: nothing here stands
//! between it and the API except the gate's guards and audit.

pub mod audit;
pub mod authz;
pub mod config;
pub mod daemon;
pub mod gate;
pub mod guards;
pub mod holds;
pub mod reload;
pub mod tls;

#[cfg(test)]
mod tests;

pub use authz::{Caller, Role};
pub use gate::Gate;

use stockade_proto::v1::stockade_server::StockadeServer;

use crate::api::Service;

/// The largest request the API decodes; no valid order comes near it.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The API server with its input limits, for either socket.
pub fn stockade_server(service: Service) -> StockadeServer<Service> {
    StockadeServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES)
}
