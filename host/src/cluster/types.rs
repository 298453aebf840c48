//! The Raft type configuration of Warren's metadata cluster.

use crate::meta::{MetaCommand, MetaError, MetaOutcome};

pub use crate::peer::ClusterNode;

/// The answer to one applied command, carried back to the node that asked.
pub type MetaReply = Result<MetaOutcome, MetaError>;

openraft::declare_raft_types!(
    /// Metadata commands agreed on by the disc nodes.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaReply,
        NodeId = u64,
        Node = ClusterNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node's Raft id: a stable hash of its name, so every node derives the
/// same id for a peer from its name alone (FNV-1a 64; 0 is never used).
pub fn node_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h.max(1)
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
