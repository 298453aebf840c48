//! The Raft type configuration of a quorum queue's group, and its commands.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::base::carried::Carried;
use crate::cluster::ClusterNode;

/// A change to a quorum queue's contents, agreed on by its members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueueCommand {
    /// Messages appended in order; each gets the next id of the queue.
    Enqueue(Vec<Carried>),
    /// Acknowledged, dropped or dead-lettered: gone from the queue.
    Settle(Vec<u64>),
    /// Given back to the queue (nack or reject with requeue, a consumer's
    /// channel closing): their delivery counts go up by one.
    Return(Vec<u64>),
    /// Everything the live queue asked for while the previous entries were being committed,
    /// in one entry: settles and returns (of messages committed before) and then new
    /// messages. What one entry costs (replication, commit, apply) is paid once for all.
    Changes {
        settle: Vec<u64>,
        returned: Vec<u64>,
        enqueue: Vec<Carried>,
    },
}

/// What applying a command gave, as the leader saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueReply {
    /// For an enqueue on the leader: which of its messages the queue took
    /// (false: refused by `x-overflow: reject-publish`).
    pub accepted: Vec<bool>,
}

openraft::declare_raft_types!(
    /// One quorum queue's replicated log.
    pub QueueRaft:
        D = QueueCommand,
        R = QueueReply,
        NodeId = u64,
        Node = ClusterNode,
        Entry = openraft::Entry<QueueRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
