//! The metadata cluster's calls between nodes (ids 1–99): Raft's RPCs, changes forwarded to
//! the leader, membership, and liveness.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::TypeConfig;
use super::{JoinRequest, NodeKind, Status, SubmitAnswer};
use crate::meta::{MetaCommand, MetaError};
use crate::peer_call;
use crate::raft::{NodeId, RaftCalls};

/// The metadata Raft's RPCs travel as `MetaAppend`, `MetaVote` and `MetaSnapshot`, on the
/// "raft" lane.
#[derive(Clone)]
pub struct MetaRaftCalls;

impl RaftCalls<TypeConfig> for MetaRaftCalls {
    type Append = MetaAppend;
    type Vote = MetaVote;
    type Snapshot = MetaSnapshot;

    fn append(&self, rpc: AppendEntriesRequest<TypeConfig>) -> MetaAppend {
        MetaAppend(rpc)
    }
    fn vote(&self, rpc: VoteRequest<NodeId>) -> MetaVote {
        MetaVote(rpc)
    }
    fn snapshot(&self, rpc: InstallSnapshotRequest<TypeConfig>) -> MetaSnapshot {
        MetaSnapshot(rpc)
    }
    fn lane(&self) -> String {
        "raft".into()
    }
}

#[derive(Serialize, Deserialize)]
pub struct MetaAppend(pub AppendEntriesRequest<TypeConfig>);
peer_call!(
    MetaAppend,
    1,
    "raft",
    Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>
);

#[derive(Serialize, Deserialize)]
pub struct MetaVote(pub VoteRequest<NodeId>);
peer_call!(
    MetaVote,
    2,
    "raft",
    Result<VoteResponse<NodeId>, RaftError<NodeId>>
);

#[derive(Serialize, Deserialize)]
pub struct MetaSnapshot(pub InstallSnapshotRequest<TypeConfig>);
peer_call!(
    MetaSnapshot,
    3,
    "raft",
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>
);

/// A change a follower forwards to the leader.
#[derive(Serialize, Deserialize)]
pub struct MetaSubmit(pub MetaCommand);
peer_call!(MetaSubmit, 4, "misc", Result<SubmitAnswer, MetaError>);

/// The last log index applied on the peer.
#[derive(Serialize, Deserialize)]
pub struct MetaApplied;
peer_call!(MetaApplied, 5, "misc", u64);

/// Waits (briefly) until the peer applied an index: true once it has.
#[derive(Serialize, Deserialize)]
pub struct MetaWaitApplied(pub u64);
peer_call!(MetaWaitApplied, 6, "wait", bool);

#[derive(Serialize, Deserialize)]
pub struct ClusterInfo;
peer_call!(ClusterInfo, 7, "misc", Status);

/// Asks the leader to add a node.
#[derive(Serialize, Deserialize)]
pub struct ClusterJoin(pub JoinRequest);
peer_call!(ClusterJoin, 8, "misc", Result<(), MetaError>);

/// Asks the leader to remove a node, by name.
#[derive(Serialize, Deserialize)]
pub struct ClusterLeave(pub String);
peer_call!(ClusterLeave, 9, "misc", Result<(), MetaError>);

#[derive(Serialize, Deserialize)]
pub struct ClusterSetKind(pub String, pub NodeKind);
peer_call!(ClusterSetKind, 10, "misc", Result<(), MetaError>);

/// Liveness: the answer says whether the peer's application runs (`stop_app`).
#[derive(Serialize, Deserialize)]
pub struct Ping;
peer_call!(Ping, 11, "ping", bool);

/// A node tells its peers its application started or stopped.
#[derive(Serialize, Deserialize)]
pub struct AppState {
    pub node: String,
    pub running: bool,
}
peer_call!(AppState, 12, "ping", bool);
