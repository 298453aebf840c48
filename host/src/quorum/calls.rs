//! The quorum queues' calls between nodes (ids 100–199): each group's Raft RPCs, named by
//! the group's id, and what members ask each other.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::members::MemberStatus;
use super::types::QueueRaft;
use crate::peer_call;
use crate::raft::{NodeId, RaftCalls};

/// A group's Raft RPCs travel as `QqAppend`, `QqVote` and `QqSnapshot`, naming the group,
/// on a lane of the group's own: one queue's snapshot never delays another's heartbeats.
#[derive(Clone)]
pub struct GroupCalls {
    pub group: u64,
}

impl RaftCalls<QueueRaft> for GroupCalls {
    type Append = QqAppend;
    type Vote = QqVote;
    type Snapshot = QqSnapshot;

    fn append(&self, rpc: AppendEntriesRequest<QueueRaft>) -> QqAppend {
        QqAppend {
            group: self.group,
            rpc,
        }
    }
    fn vote(&self, rpc: VoteRequest<NodeId>) -> QqVote {
        QqVote {
            group: self.group,
            rpc,
        }
    }
    fn snapshot(&self, rpc: InstallSnapshotRequest<QueueRaft>) -> QqSnapshot {
        QqSnapshot {
            group: self.group,
            rpc,
        }
    }
    fn lane(&self) -> String {
        format!("qq{}", self.group)
    }
}

#[derive(Serialize, Deserialize)]
pub struct QqAppend {
    pub group: u64,
    pub rpc: AppendEntriesRequest<QueueRaft>,
}
peer_call!(
    QqAppend,
    100,
    "qq",
    Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>
);

#[derive(Serialize, Deserialize)]
pub struct QqVote {
    pub group: u64,
    pub rpc: VoteRequest<NodeId>,
}
peer_call!(
    QqVote,
    101,
    "qq",
    Result<VoteResponse<NodeId>, RaftError<NodeId>>
);

#[derive(Serialize, Deserialize)]
pub struct QqSnapshot {
    pub group: u64,
    pub rpc: InstallSnapshotRequest<QueueRaft>,
}
peer_call!(
    QqSnapshot,
    102,
    "qq",
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>
);

/// Whether the peer serves (leads) the group.
#[derive(Serialize, Deserialize)]
pub struct QqServing(pub u64);
peer_call!(QqServing, 103, "misc", bool);

/// The peer's view of the group: one row of `quorum_status`.
#[derive(Serialize, Deserialize)]
pub struct QqStatus(pub u64);
peer_call!(QqStatus, 104, "misc", MemberStatus);

/// Asks the group's leader to make `members` the voters.
#[derive(Serialize, Deserialize)]
pub struct QqSetVoters {
    pub group: u64,
    pub members: Vec<String>,
}
peer_call!(QqSetVoters, 105, "misc", ());

/// A node says it leads a quorum queue.
#[derive(Serialize, Deserialize)]
pub struct QqLeader {
    pub vhost: String,
    pub name: String,
    pub group: u64,
    pub leader: String,
}
peer_call!(QqLeader, 106, "misc", bool);
