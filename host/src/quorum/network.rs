//! A quorum queue group's Raft RPCs: the same cookie-authenticated peer links
//! as the metadata cluster, one lane per group, the group named in each call.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::QueueRaft;
use crate::cluster::ClusterNode;
use crate::cluster::network::Peers;

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

impl GroupLink {
    async fn rpc<Q: Serialize, A: DeserializeOwned, E: DeserializeOwned + std::error::Error>(
        &self,
        command: &str,
        req: &Q,
        option: &RPCOption,
    ) -> Result<A, RPCError<NodeId, ClusterNode, E>> {
        let lane = format!("qq{}", self.group);
        self.peers
            .raft_rpc(
                &lane,
                &self.node,
                self.target,
                command,
                &(self.group, req),
                option,
            )
            .await
    }
}

impl RaftNetwork<QueueRaft> for GroupLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<QueueRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        self.rpc("qq_append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<QueueRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("qq_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        self.rpc("qq_vote", &rpc, &option).await
    }
}
