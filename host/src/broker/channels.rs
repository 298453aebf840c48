//! What the broker knows of a client's channel: enough to list it, to hand it a direct reply,
//! and to give it what a queue on another node delivers. The wire layer's channel implements
//! it; the broker keeps channels only as this trait, never as the wire layer's type.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::base::message::Message;
use crate::queue::DeliverySink;

/// Settles deliveries that came from a queue on another node.
pub trait RemoteSettle: Send + Sync {
    /// `requeue`: None acks; Some(true) requeues; Some(false) drops (or dead-letters).
    fn settle(&self, tags: Vec<u64>, requeue: Option<bool>);
}

/// A delivery from a queue on another node (see `deliver_remote`).
pub struct RemoteDelivery {
    pub owner: Arc<dyn RemoteSettle>,
    /// Its delivery tag on the owner.
    pub remote_tag: u64,
    /// The client's consumer tag; None answers a basic.get.
    pub consumer_tag: Option<Arc<str>>,
    pub redelivered: bool,
    pub message_count: u32,
    pub msg: Arc<Message>,
    pub no_ack: bool,
}

/// A client channel, as the broker sees it.
pub trait ClientChannel: DeliverySink {
    fn is_closed(&self) -> bool;
    /// A delivery the channel does not track (direct reply-to: no ack, no queue).
    fn deliver_untracked(&self, consumer_tag: &Arc<str>, msg: Arc<Message>);
    /// A delivery from a queue on another node; its settlement goes back to `d.owner`.
    fn deliver_remote(&self, d: RemoteDelivery);
    /// Resolves once the connection's writer has room again.
    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Bytes waiting for the client's socket.
    fn pending_bytes(&self) -> u64;
    fn unacked_count(&self) -> usize;
    fn prefetch(&self) -> u16;
    fn prefetch_global(&self) -> u32;
    fn confirm(&self) -> bool;
    fn transactional(&self) -> bool;
}
