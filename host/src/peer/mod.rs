//! How nodes talk to each other: a protocol of its own, not the CLI's.
//!
//! A peer connection opens with the dist port's cookie handshake (`handshake`, shared with the
//! CLI), asking for `peer/1`; after that it carries length-prefixed binary frames (`frame`).
//! Each request is one typed [`Call`], encoded with postcard, and carries a correlation id, so
//! many requests are in flight on one connection and answers come back in any order. Message
//! bodies travel as raw bytes. A refusal is a [`Failure`] with an AMQP reply code as a number.
//!
//! `Peers` is the client side (one multiplexed `link` per peer and lane, who answered lately);
//! `Router` is the server side: each area (cluster, quorum queues, the data plane) registers
//! handlers for its calls, and `serve` runs them as frames arrive, a bounded number at a time.
//!
//! Why postcard: serde-compatible (openraft's RPC types and our own derive serde already), a
//! documented, stable wire format (1.0), compact varints, no schema step, and it writes bytes
//! as bytes. Its limits (no `deserialize_any`, so no `serde_json::Value`, no untagged enums)
//! are the right ones for a typed protocol.

mod call;
mod frame;
pub mod handshake;
mod link;
mod peers;
mod router;

pub use call::{Call, Failure, PeerError, code};
pub use peers::{ClusterNode, Peers, Reachability};
pub use router::{Router, serve};
