//! One order as the ledger keeps it, and its stored form.
//!
//! Records are stored as JSON so that a newer agent reads what an older one
//! wrote: a field added later must be `#[serde(default)]`, and a record
//! written before it existed reads with the default.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Order actions the ledger knows by name.
pub mod action {
    pub const ISOLATE: &str = "isolate";
    pub const RELEASE: &str = "release";
    pub const FREEZE: &str = "freeze";
    pub const THAW: &str = "thaw";
    pub const KILL: &str = "kill";
    pub const TERMINATE: &str = "terminate";
    pub const CONTAIN: &str = "contain";
    pub const UNCONTAIN: &str = "uncontain";

    /// Actions whose effect lasts after the order is answered, and so must
    /// be reconciled after a restart and may expire. The others act once.
    pub const LASTING: [&str; 3] = [ISOLATE, FREEZE, CONTAIN];

    pub fn is_lasting(action: &str) -> bool {
        LASTING.contains(&action)
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Recorded; the agent may or may not have acted yet.
    Accepted,
    /// Acted on and verified. For a lasting action, still in force.
    Enforced,
    /// Refused or failed; see [`OrderRecord::failure`].
    Failed,
    /// A lasting action lifted by a later order.
    Released,
    /// A lasting action lifted by the agent when its TTL passed.
    Expired,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Enforced => "enforced",
            Self::Failed => "failed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    /// Whether an order in this state may move to `next`. Nothing goes
    /// back to `Accepted`, and an order that ended stays ended, so a reply
    /// once stored is never replaced.
    pub fn may_become(self, next: OrderState) -> bool {
        use OrderState::*;
        match (self, next) {
            (_, Accepted) => false,
            (Accepted, _) => true,
            (Enforced, Released | Expired | Failed) => true,
            _ => false,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Failed | Self::Released | Self::Expired)
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order failed, as it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The gRPC status code of the answer.
    pub code: i32,
    pub message: String,
}

/// An order as it arrives, before the ledger has seen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Chosen by the caller; repeating it must not act twice.
    pub id: String,
    /// One of [`action`], or a newer one.
    pub action: String,
    /// [`fingerprint`] of the order's content, without its id.
    pub fingerprint: [u8; 32],
    /// The encoded request, so that a restarted agent can apply it again.
    pub request: Vec<u8>,
    pub pod_uid: String,
    pub cgroup_id: u64,
    pub received_at: SystemTime,
    /// When a lasting action ends by itself.
    pub expires_at: Option<SystemTime>,
}

/// An order as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub id: String,
    pub action: String,
    #[serde(with = "hex_digest")]
    pub fingerprint: [u8; 32],
    #[serde(with = "hex_bytes")]
    pub request: Vec<u8>,
    pub pod_uid: String,
    pub cgroup_id: u64,
    pub state: OrderState,
    pub received_at: SystemTime,
    pub updated_at: SystemTime,
    #[serde(default)]
    pub expires_at: Option<SystemTime>,
    /// The encoded reply of the one execution, once it succeeded.
    #[serde(default, with = "hex_opt_bytes")]
    pub reply: Option<Vec<u8>>,
    /// The answer of the one execution, once it failed.
    #[serde(default)]
    pub failure: Option<Failure>,
}

impl OrderRecord {
    /// The record `begin` stores for a new order.
    pub(super) fn accepted(order: NewOrder, now: SystemTime) -> Self {
        Self {
            id: order.id,
            action: order.action,
            fingerprint: order.fingerprint,
            request: order.request,
            pod_uid: order.pod_uid,
            cgroup_id: order.cgroup_id,
            state: OrderState::Accepted,
            received_at: order.received_at,
            updated_at: now,
            expires_at: order.expires_at,
            reply: None,
            failure: None,
        }
    }

    /// Whether `order` asks for the same thing as this record.
    pub fn same_content(&self, order: &NewOrder) -> bool {
        self.fingerprint == order.fingerprint && self.action == order.action
    }

    /// Whether the agent must keep this order's effect in force: the
    /// restart reconciliation set.
    pub fn in_force(&self) -> bool {
        action::is_lasting(&self.action)
            && matches!(self.state, OrderState::Accepted | OrderState::Enforced)
    }

    /// Whether the ledger keeps this record in its index of open orders:
    /// those in force, and any order whose outcome is still unknown.
    pub(super) fn is_open(&self) -> bool {
        self.in_force() || self.state == OrderState::Accepted
    }
}

/// The fingerprint of an order: SHA-256 over its action and its encoded
/// content. Encode the request with its order id cleared, as the agent
/// decoded it (not the bytes off the wire), so that the same order sent
/// twice has one fingerprint.
pub fn fingerprint(action: &str, content: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    // The NUL keeps ("ab", "c") and ("a", "bc") apart.
    hash.update(action.as_bytes());
    hash.update([0u8]);
    hash.update(content);
    hash.finalize().into()
}

/// Bytes as lowercase hex, which JSON carries compactly and readably.
mod hex {
    pub fn encode(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        if !text.len().is_multiple_of(2) {
            return None;
        }
        text.as_bytes()
            .chunks(2)
            .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
            .collect()
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }

    pub fn decode_de<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<u8>, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(de)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("not lowercase hex"))
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&super::hex::encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<u8>, D::Error> {
        super::hex::decode_de(de)
    }
}

mod hex_digest {
    pub fn serialize<S: serde::Serializer>(digest: &[u8; 32], ser: S) -> Result<S::Ok, S::Error> {
        super::hex_bytes::serialize(digest, ser)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<[u8; 32], D::Error> {
        let bytes = super::hex::decode_de(de)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a fingerprint is 32 bytes"))
    }
}

mod hex_opt_bytes {
    pub fn serialize<S: serde::Serializer>(
        bytes: &Option<Vec<u8>>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => ser.serialize_some(&super::hex::encode(b)),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        de: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text = <Option<String> as serde::Deserialize>::deserialize(de)?;
        text.map(|t| super::hex::decode(&t))
            .map(|b| b.ok_or_else(|| serde::de::Error::custom("not lowercase hex")))
            .transpose()
    }
}
