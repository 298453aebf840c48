//! Where a queue delivers: a small trait, so that the queue knows nothing of the wire. An AMQP
//! channel on this node implements it (`amqp::delivery::ChannelHandle`), and so does the
//! owner's side of a consumer on another node, whose deliveries are relayed there.

use std::sync::Arc;

use super::{Entry, Queue};
use crate::base::message::Message;

/// A consumer's or a basic.get's destination. Queues call these methods while holding their
/// own lock: an implementation must not call back into the queue.
pub trait DeliverySink: Send + Sync {
    /// Whether one more message from `queue` may go out now (channel open, flow on, channel
    /// prefetch, room in the socket); when it is false the sink kicks `queue` once it has room.
    fn can_deliver(&self, queue: &Arc<Queue>) -> bool;

    /// Delivers `entry` to consumer `consumer_tag` (the queue's consumer id `consumer`),
    /// recording it as unacked unless `no_ack`.
    fn deliver(
        &self,
        queue: &Arc<Queue>,
        consumer_tag: &Arc<str>,
        consumer: u64,
        no_ack: bool,
        entry: &Entry,
    );

    /// Answers a basic.get with one message; `message_count` is what stays ready.
    fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        msg_id: u64,
        redelivered: bool,
        no_ack: bool,
        message_count: u32,
        msg: Arc<Message>,
    );

    /// The broker cancelled consumer `consumer_tag` (its queue went away).
    fn cancel(&self, consumer_tag: &str);

    /// The channel number and connection id the consumer is listed under.
    fn listed_as(&self) -> (u16, u64);
}
