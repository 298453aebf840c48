//! What a quorum queue's group asks of the node that hosts it: a live queue to serve when
//! its member leads, and telling the node where the queue is served. The broker implements
//! it; the group holds it weakly and names no broker type.

use std::sync::Arc;

use super::Proposer;
use crate::meta::QueueRecord;
use crate::queue::{Entry, Queue};

pub trait GroupHost: Send + Sync {
    /// The queue this node serves while its member leads, built from the group's contents;
    /// every change to it goes through `proposer`.
    fn live_queue(
        &self,
        record: &QueueRecord,
        entries: Vec<Entry>,
        proposer: Proposer,
    ) -> Arc<Queue>;
    /// `leader` leads the group now (`live`: the queue served here, when it is this node).
    fn leader_changed(&self, record: &QueueRecord, leader: &str, live: Option<Arc<Queue>>);
    /// The live queue stopped being served here.
    fn live_gone(&self, record: &QueueRecord, q: &Arc<Queue>);
    /// This node leads: tell every other node.
    fn announce_leader(&self, record: &QueueRecord);
}
