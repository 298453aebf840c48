//! Raft's view of the peers, for every Raft on the node: its three RPCs as typed peer calls
//! (`peer::Call`) on the links of `peer::Peers`. Each Raft names its calls and the lane they
//! travel on (`RaftCalls`); a link failure becomes openraft's `Unreachable`, a peer's Raft
//! error comes back as its own.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RaftTypeConfig};

use super::{ClusterNode, NodeId};
use crate::peer::{Call, PeerError, Peers};

/// How one Raft's RPCs travel: the calls that carry them, and their lane.
pub trait RaftCalls<C: RaftTypeConfig>: Clone + Send + Sync + 'static {
    type Append: Call<Answer = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>;
    type Vote: Call<Answer = Result<VoteResponse<NodeId>, RaftError<NodeId>>>;
    type Snapshot: Call<
        Answer = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    >;

    fn append(&self, rpc: AppendEntriesRequest<C>) -> Self::Append;
    fn vote(&self, rpc: VoteRequest<NodeId>) -> Self::Vote;
    fn snapshot(&self, rpc: InstallSnapshotRequest<C>) -> Self::Snapshot;
    /// The link this Raft's RPCs use: its heartbeats never wait behind another Raft's
    /// snapshot or a batch of messages.
    fn lane(&self) -> String;
}

/// The network of one Raft, on the node's peer links.
#[derive(Clone)]
pub struct Network<R> {
    peers: Arc<Peers>,
    calls: R,
}

impl<R> Network<R> {
    pub fn new(peers: Arc<Peers>, calls: R) -> Network<R> {
        Network { peers, calls }
    }
}

/// One Raft's link to one peer.
pub struct Link<R> {
    peers: Arc<Peers>,
    calls: R,
    lane: String,
    target: NodeId,
    node: ClusterNode,
}

impl<C, R> RaftNetworkFactory<C> for Network<R>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode>,
    R: RaftCalls<C>,
{
    type Network = Link<R>;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> Link<R> {
        Link {
            peers: self.peers.clone(),
            lane: self.calls.lane(),
            calls: self.calls.clone(),
            target,
            node: node.clone(),
        }
    }
}

impl<R> Link<R> {
    /// One RPC: the peer's answer is the RPC's own `Result`.
    async fn send<K, A, E>(
        &self,
        req: &K,
        option: &RPCOption,
    ) -> Result<A, RPCError<NodeId, ClusterNode, E>>
    where
        K: Call<Answer = Result<A, E>>,
        E: std::error::Error,
    {
        match self
            .peers
            .call_on(&self.lane, &self.node, req, option.hard_ttl())
            .await
        {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(PeerError::Unreachable(text)) => Err(RPCError::Unreachable(Unreachable::new(
                &AnyError::error(text),
            ))),
            Err(PeerError::Remote(f)) => Err(RPCError::Network(NetworkError::new(
                &AnyError::error(f.text),
            ))),
        }
    }
}

impl<C, R> RaftNetwork<C> for Link<R>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode>,
    R: RaftCalls<C>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        let req = self.calls.append(rpc);
        self.send(&req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let req = self.calls.snapshot(rpc);
        self.send(&req, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        let req = self.calls.vote(rpc);
        self.send(&req, &option).await
    }
}
