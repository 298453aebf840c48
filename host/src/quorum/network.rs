//! A quorum queue group's Raft RPCs: typed peer calls (`calls.rs`) on the same links as the
//! metadata cluster's, one lane per group, the group named in each call.

use std::sync::Arc;

use super::calls::{QqAppend, QqSnapshot, QqVote};
use super::types::QueueRaft;
use crate::cluster::ClusterNode;
use crate::cluster::network::raft_rpc;
use crate::peer::{Call, Peers};
use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

type NodeId = u64;

#[derive(Clone)]
pub struct GroupNetwork {
    pub peers: Arc<Peers>,
    pub group: u64,
}

pub struct GroupLink {
    peers: Arc<Peers>,
    group: u64,
    target: NodeId,
    node: ClusterNode,
}

impl RaftNetworkFactory<QueueRaft> for GroupNetwork {
    type Network = GroupLink;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> GroupLink {
        GroupLink {
            peers: self.peers.clone(),
            group: self.group,
            target,
            node: node.clone(),
        }
    }
}

impl RaftNetwork<QueueRaft> for GroupLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<QueueRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        let req = QqAppend {
            group: self.group,
            rpc,
        };
        self.send(&req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<QueueRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let req = QqSnapshot {
            group: self.group,
            rpc,
        };
        self.send(&req, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        let req = QqVote {
            group: self.group,
            rpc,
        };
        self.send(&req, &option).await
    }
}

impl GroupLink {
    /// Each group's traffic has a link of its own: one queue's snapshot never delays
    /// another's heartbeats.
    async fn send<C, A, E>(
        &self,
        req: &C,
        option: &RPCOption,
    ) -> Result<A, RPCError<NodeId, ClusterNode, E>>
    where
        C: Call<Answer = Result<A, E>>,
        E: std::error::Error,
    {
        let lane = format!("qq{}", self.group);
        raft_rpc(&self.peers, &lane, &self.node, self.target, req, option).await
    }
}
