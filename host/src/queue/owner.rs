//! What a queue asks of those above it, as two small traits, so that the queue imports
//! neither the broker nor the quorum groups: the broker dead-letters and deletes for it, and
//! a quorum queue's group replicates every change to its messages.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{DeathReason, Entry, Queue};
use crate::base::message::Message;

/// The broker, as a queue sees it.
pub trait QueueOwner: Send + Sync {
    /// Routes messages that died in `from` (expired, rejected, over a limit) to its
    /// dead-letter exchange, if it has one.
    fn dead_letter(&self, from: &Arc<Queue>, dead: Vec<(Entry, DeathReason)>);

    /// Deletes the queue through the metadata store, later (auto-delete, `x-expires`): a
    /// queue cannot wait for its own deletion while it holds its lock.
    fn delete_queue_later(&self, vhost: String, name: String);
}

/// A quorum queue's log, as its live copy on the leader sees it.
pub trait Replica: Send + Sync {
    /// Appends a message; the answer is true once a majority has it on disk.
    fn enqueue(&self, msg: Arc<Message>) -> oneshot::Receiver<bool>;
    /// Removes settled (acked, or dropped) messages.
    fn settle(&self, ids: Vec<u64>);
    /// Returns a delivered message to the queue (a requeue), counting the delivery.
    fn returned(&self, id: u64);
}
