//! A typed request between nodes, its answer, and how one fails.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One kind of request a node sends a peer. `ID` names it on the wire (each area owns a range,
/// see the areas' `calls.rs`); `LANE` is the connection it travels on by default, so that
/// Raft's heartbeats never wait behind a snapshot or a batch of messages.
pub trait Call: Serialize + DeserializeOwned + Send + Sync + 'static {
    const ID: u16;
    /// For logs and errors.
    const NAME: &'static str;
    const LANE: &'static str = "misc";
    type Answer: Serialize + DeserializeOwned + Send + 'static;
}

/// AMQP reply codes, as numbers on the wire.
pub mod code {
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// A peer's refusal: an AMQP reply code and a text for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{text}")]
pub struct Failure {
    pub code: u16,
    pub text: String,
}

impl Failure {
    pub fn new(code: u16, text: impl Into<String>) -> Failure {
        Failure {
            code,
            text: text.into(),
        }
    }

    pub fn internal(text: impl Into<String>) -> Failure {
        Failure::new(code::INTERNAL_ERROR, text)
    }

    pub fn not_found(text: impl Into<String>) -> Failure {
        Failure::new(code::NOT_FOUND, text)
    }
}

impl From<crate::base::error::AmqpError> for Failure {
    fn from(e: crate::base::error::AmqpError) -> Failure {
        Failure::new(e.code.code(), e.text)
    }
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached, the link broke, or no answer came in time.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with a refusal.
    #[error("{0}")]
    Remote(Failure),
}

impl PeerError {
    /// The reply code of a refusal.
    pub fn code(&self) -> Option<u16> {
        match self {
            PeerError::Remote(f) => Some(f.code),
            PeerError::Unreachable(_) => None,
        }
    }
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Bytes, Failure> {
    crate::base::encoding::to_vec(&[], value)
        .map(Bytes::from)
        .map_err(|e| Failure::internal(format!("cannot encode: {e}")))
}

/// A call's request from a frame's body (what the router does before a handler runs).
pub fn decode_call<C: Call>(body: &[u8]) -> Result<C, Failure> {
    decode(body, C::NAME)
}

pub(super) fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    postcard::from_bytes(body)
        .map_err(|e| Failure::new(code::FRAME_ERROR, format!("undecodable {what}: {e}")))
}

/// Declares a struct a [`Call`]: `peer_call!(Name, id, "lane", Answer)`.
#[macro_export]
macro_rules! peer_call {
    ($name:ident, $id:expr, $lane:expr, $answer:ty) => {
        impl $crate::peer::Call for $name {
            const ID: u16 = $id;
            const NAME: &'static str = stringify!($name);
            const LANE: &'static str = $lane;
            type Answer = $answer;
        }
    };
}
