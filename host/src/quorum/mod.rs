//! Replicated (quorum) queues. Each is its own Raft group (on the node's shared Raft
//! plumbing, `raft`) over
//! `x-quorum-initial-group-size` disc nodes, with its log on each member's
//! disk. The group's leader serves the queue: a live `Queue` built from what
//! the group holds, whose every change (publish, settle, return) goes
//! through the log; publishes are confirmed once a majority has them. The
//! other nodes route publishes and consumers to the leader, and follow it
//! when it moves.

pub mod calls;
pub mod group;
pub mod host;
pub mod machine;
pub mod members;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub use group::{Proposer, QuorumGroup};
pub use host::GroupHost;

use crate::meta::QueueRecord;

/// RabbitMQ's default group size for a new quorum queue.
pub const DEFAULT_GROUP_SIZE: usize = 3;

/// Whether a queue record is a quorum queue's.
pub fn is_quorum(record: &QueueRecord) -> bool {
    record.is_quorum()
}

/// This node's members of quorum queue groups, by queue uid.
#[derive(Default)]
pub struct QuorumQueues {
    groups: Mutex<HashMap<u64, Arc<QuorumGroup>>>,
}

impl QuorumQueues {
    pub fn get(&self, uid: u64) -> Option<Arc<QuorumGroup>> {
        self.groups.lock().get(&uid).cloned()
    }

    /// Keeps this node's member of a group; answers the one it replaces, if any.
    pub fn insert(&self, uid: u64, group: Arc<QuorumGroup>) -> Option<Arc<QuorumGroup>> {
        self.groups.lock().insert(uid, group)
    }

    pub fn remove(&self, uid: u64) -> Option<Arc<QuorumGroup>> {
        self.groups.lock().remove(&uid)
    }

    pub fn all(&self) -> Vec<Arc<QuorumGroup>> {
        self.groups.lock().values().cloned().collect()
    }

    /// Whether this node serves the queue of `uid` now.
    pub fn serving(&self, uid: u64) -> bool {
        self.get(uid)
            .is_some_and(|g| g.contents.lock().live.is_some())
    }
}
