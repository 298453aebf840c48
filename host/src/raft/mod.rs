//! The Raft plumbing every replicated thing on the node shares (openraft 0.9, the stable
//! line): the metadata cluster (`cluster`, with `meta::MetaState` as its state machine) and
//! each quorum queue's group (`quorum`, with the queue's contents). One log store in redb
//! (`log`), one encoding for what it keeps (`codec`), one state machine plumbing with its
//! snapshots (`machine`), one network on the peer links (`network`), one configuration
//! (`start`). What differs between the two uses is only the state machine, the calls that
//! carry the RPCs, and how often to snapshot.

pub mod codec;
pub mod log;
pub mod machine;
pub mod network;

use std::sync::Arc;

use openraft::{Config, Entry, Raft, RaftTypeConfig, SnapshotPolicy};
use redb::Database;

pub use crate::peer::ClusterNode;
pub use log::LogStore;
pub use machine::{Machine, Replicated};
pub use network::{Network, RaftCalls};

use crate::peer::Peers;

/// A node's Raft id, in every Raft on the node.
pub type NodeId = u64;

/// A node's Raft id: a stable hash of its name, so every node derives the
/// same id for a peer from its name alone (FNV-1a 64; 0 is never used).
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h.max(1)
}

/// How much of its log a Raft keeps, and how much it sends at once: what differs between
/// the metadata (small, snapshot often so a joining node gets one) and a quorum queue
/// (messages: snapshot rarely, small appends).
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// A snapshot after this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, for followers a little behind.
    pub keep_after_snapshot: u64,
    /// Most entries in one append.
    pub max_payload_entries: u64,
    /// The newest entries also kept in memory (see `log::LogStore`).
    pub recent_entries: usize,
    /// redb's page cache for the Raft's database.
    pub cache_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft configuration: {0}")]
    Config(Box<openraft::ConfigError>),
    #[error("raft storage: {0}")]
    Storage(Box<openraft::StorageError<NodeId>>),
    #[error("raft: {0}")]
    Fatal(Box<openraft::error::Fatal<NodeId>>),
}

/// The timing every Raft on the node shares: heartbeats every 150 ms, an election after
/// 0.6–1.2 s of silence (a node's loss noticed within about a second).
fn config(name: &str, sizing: Sizing) -> Result<Arc<Config>, StartError> {
    Config {
        cluster_name: name.into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(sizing.snapshot_every),
        max_in_snapshot_log_to_keep: sizing.keep_after_snapshot,
        max_payload_entries: sizing.max_payload_entries,
        ..Default::default()
    }
    .validate()
    .map(Arc::new)
    .map_err(|e| StartError::Config(Box::new(e)))
}

/// Starts this node's member of one Raft: `machine` restored from the snapshot in `db`,
/// the log after it in `db`, RPCs carried by `calls` on `peers`.
pub async fn start<C, M, R>(
    name: &str,
    sizing: Sizing,
    me: &str,
    db: Arc<Database>,
    machine: M,
    calls: R,
    peers: Arc<Peers>,
) -> Result<Raft<C>, StartError>
where
    C: RaftTypeConfig<
            NodeId = NodeId,
            Node = ClusterNode,
            Entry = Entry<C>,
            SnapshotData = std::io::Cursor<Vec<u8>>,
        >,
    C::D: Clone,
    M: Machine<C>,
    R: RaftCalls<C>,
{
    let config = config(name, sizing)?;
    let replicated =
        Replicated::open(db.clone(), machine).map_err(|e| StartError::Storage(Box::new(e)))?;
    Raft::new(
        node_id(me),
        config,
        Network::new(peers, calls),
        LogStore::<C>::new(db, sizing.recent_entries),
        replicated,
    )
    .await
    .map_err(|e| StartError::Fatal(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // Stable across processes and versions: peers derive each other's ids from names, and
        // ids are in every node's Raft log. FNV-1a 64 of "rabbit@a":
        assert_eq!(node_id("rabbit@a"), 0xb468_4953_904e_21da);
        assert_ne!(node_id("rabbit@a"), node_id("rabbit@b"));
        assert_ne!(node_id(""), 0);
    }
}
