//! The Raft type configuration of Warren's metadata cluster.

use crate::meta::{MetaCommand, MetaError, MetaOutcome};

pub use crate::raft::{ClusterNode, node_id};

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
