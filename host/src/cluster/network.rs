//! Raft's view of the peers: the metadata cluster's RPCs as typed peer calls (`calls.rs`),
//! on the links of `peer::Peers`.

use std::sync::Arc;

use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::calls::{MetaAppend, MetaSnapshot, MetaVote};
use super::types::{ClusterNode, TypeConfig};
use crate::peer::Call;
pub use crate::peer::{PeerError, Peers, Reachability};

type NodeId = u64;

/// One Raft RPC to `node` (Raft id `target`) on `lane`: the peer's answer is the RPC's own
/// `Result`, and a link failure becomes openraft's error. Shared by the metadata cluster and
/// the quorum queues' groups.
pub(crate) async fn raft_rpc<C, A, E>(
    peers: &Peers,
    lane: &str,
    node: &ClusterNode,
    target: NodeId,
    req: &C,
    option: &RPCOption,
) -> Result<A, RPCError<NodeId, ClusterNode, E>>
where
    C: Call<Answer = Result<A, E>>,
    E: std::error::Error,
{
    match peers.call_on(lane, node, req, option.hard_ttl()).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
        Err(PeerError::Unreachable(text)) => Err(RPCError::Unreachable(Unreachable::new(
            &AnyError::error(text),
        ))),
        Err(PeerError::Remote(f)) => Err(RPCError::Network(NetworkError::new(&AnyError::error(
            f.text,
        )))),
    }
}

#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
}

pub struct PeerLink {
    peers: Arc<Peers>,
    target: NodeId,
    node: ClusterNode,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> PeerLink {
        PeerLink {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        let req = MetaAppend(rpc);
        raft_rpc(&self.peers, "raft", &self.node, self.target, &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let req = MetaSnapshot(rpc);
        raft_rpc(&self.peers, "raft", &self.node, self.target, &req, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        let req = MetaVote(rpc);
        raft_rpc(&self.peers, "raft", &self.node, self.target, &req, &option).await
    }
}
