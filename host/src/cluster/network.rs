//! Links between nodes: Raft's RPCs and the cluster's own requests travel
//! over the peer's dist port, on the same cookie-authenticated protocol
//! `warrenctl` speaks (the cookie never crosses the wire).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{ClusterNode, TypeConfig};
use crate::ctl::protocol::{self as ctl, CtlClient, Request};

type NodeId = u64;

/// Why a peer request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached (or the link broke).
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// When each peer last answered: how `cluster_status` and quorum errors know
/// who is reachable.
#[derive(Default)]
pub struct Reachability {
    seen: Mutex<HashMap<String, Instant>>,
    /// Peers that answer but whose application is stopped (`stop_app`): reachable for Raft,
    /// not running for `cluster_status`, as in RabbitMQ.
    app_stopped: Mutex<std::collections::HashSet<String>>,
}

impl Reachability {
    /// What a peer said of its application (in its ping answer or its own announcement).
    pub fn set_app_running(&self, node: &str, running: bool) {
        let mut stopped = self.app_stopped.lock();
        if running {
            stopped.remove(node);
        } else {
            stopped.insert(node.to_string());
        }
    }

    /// Reachable and serving clients.
    pub fn is_running(&self, node: &str) -> bool {
        self.is_up(node) && !self.app_stopped.lock().contains(node)
    }

    pub fn mark(&self, node: &str, ok: bool) {
        let mut seen = self.seen.lock();
        if ok {
            seen.insert(node.to_string(), Instant::now());
        } else {
            seen.remove(node);
        }
    }

    /// Answered within the last few heartbeats.
    pub fn is_up(&self, node: &str) -> bool {
        self.seen
            .lock()
            .get(node)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
    }
}

/// What a node needs to talk to its peers.
pub struct Peers {
    pub me: String,
    cookie: String,
    pub reachability: Reachability,
    links: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CtlClient>>>>>,
}

impl Peers {
    pub fn new(me: String, cookie: String) -> Arc<Peers> {
        Arc::new(Peers {
            me,
            cookie,
            reachability: Reachability::default(),
            links: Mutex::new(HashMap::new()),
        })
    }

    /// One connection per peer and lane: Raft's traffic never queues behind a
    /// request that waits for Raft (e.g. "has this node applied index i yet?").
    fn lane(command: &str) -> &'static str {
        if command.starts_with("raft_") {
            "raft"
        } else if command == "peer_ping" || command == "peer_app_state" {
            "ping"
        } else if command == "meta_wait_applied" {
            "wait"
        } else {
            "misc"
        }
    }

    fn link(&self, addr: &str, lane: &str) -> Arc<tokio::sync::Mutex<Option<CtlClient>>> {
        self.links
            .lock()
            .entry(format!("{lane} {addr}"))
            .or_default()
            .clone()
    }

    /// `call` on a lane of the caller's choosing: each quorum queue's Raft
    /// traffic has its own, so one queue's appends never wait behind another's.
    pub async fn call_on<Q: Serialize, A: DeserializeOwned>(
        &self,
        lane: &str,
        node: &ClusterNode,
        command: &str,
        payload: &Q,
        timeout: Duration,
    ) -> Result<A, PeerError> {
        let body = serde_json::to_string(payload)
            .map_err(|e| PeerError::Remote(format!("cannot encode {command}: {e}")))?;
        let resp = self
            .request_on(lane, node, Request::new(command).arg(body), timeout)
            .await?;
        let data = resp.data.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(data)
            .map_err(|e| PeerError::Remote(format!("bad answer to {command}: {e}")))
    }

    /// Sends one request to the peer at `addr` and decodes its answer. The
    /// link is kept open for the next request and reopened after a failure.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        node: &ClusterNode,
        command: &str,
        payload: &Q,
        timeout: Duration,
    ) -> Result<A, PeerError> {
        self.call_on(Self::lane(command), node, command, payload, timeout)
            .await
    }

    /// One Raft RPC to `node` (Raft id `target`) on `lane`: the peer's answer is
    /// the RPC's own `Result`, and a link failure becomes openraft's error.
    pub(crate) async fn raft_rpc<Q, A, E>(
        &self,
        lane: &str,
        node: &ClusterNode,
        target: NodeId,
        command: &str,
        req: &Q,
        option: &RPCOption,
    ) -> Result<A, RPCError<NodeId, ClusterNode, E>>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let answer: Result<Result<A, E>, PeerError> = self
            .call_on(lane, node, command, req, option.hard_ttl())
            .await;
        match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
            Err(e) => Err(to_rpc_error(target, e, |_| None)),
        }
    }

    /// Sends a control request as is and returns the peer's whole response
    /// (listings travel as columns and rows).
    pub async fn request(
        &self,
        node: &ClusterNode,
        req: Request,
        timeout: Duration,
    ) -> Result<ctl::Response, PeerError> {
        let lane = Self::lane(&req.command);
        self.request_on(lane, node, req, timeout).await
    }

    async fn request_on(
        &self,
        lane: &str,
        node: &ClusterNode,
        req: Request,
        timeout: Duration,
    ) -> Result<ctl::Response, PeerError> {
        let command = req.command.clone();
        let link = self.link(&node.addr, lane);
        let mut guard = link.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        // The client is taken out while a request is in flight and put back
        // only once its answer is read: a request abandoned half way (a
        // timeout here, or the caller dropping this future, as openraft does
        // when an append outlives the heartbeat interval) leaves no answer
        // on the connection for the next request to read as its own.
        let mut taken = guard.take();
        let mut timed_out = false;
        let result = loop {
            let reused = taken.is_some();
            let mut closed_under_us = false;
            let attempt = tokio::time::timeout_at(deadline, async {
                let mut client = match taken.take() {
                    Some(c) => c,
                    None => ctl::client_connect(
                        &node.addr,
                        &self.cookie,
                        &format!("peer:{}", self.me),
                        timeout.min(ctl::CONNECT_TIMEOUT),
                    )
                    .await
                    .map_err(|e| PeerError::Unreachable(format!("node {}: {e}", node.name)))?,
                };
                client.set_request_timeout(timeout);
                match client.call(&req).await {
                    Ok(resp) => Ok((client, resp)),
                    Err(e) => {
                        closed_under_us = reused
                            && matches!(e, ctl::CtlError::Closed { .. } | ctl::CtlError::Io { .. });
                        Err(PeerError::Unreachable(format!("node {}: {e}", node.name)))
                    }
                }
            })
            .await;
            match attempt {
                Ok(Ok((client, resp))) => {
                    *guard = Some(client);
                    break if resp.ok {
                        Ok(resp)
                    } else {
                        Err(PeerError::Remote(resp.error.clone().unwrap_or_else(|| {
                            format!("node {} refused {command}", node.name)
                        })))
                    };
                }
                // A kept link that fails at once was closed under us (the peer
                // restarted since): the peer never read the request, so it is
                // sent once more on a fresh connection before anyone is told
                // the peer is unreachable.
                Ok(Err(PeerError::Unreachable(_))) if closed_under_us => continue,
                Ok(Err(e)) => break Err(e),
                Err(_) => {
                    timed_out = true;
                    break Err(PeerError::Unreachable(format!(
                        "node {}: no answer within {} ms",
                        node.name,
                        timeout.as_millis()
                    )));
                }
            }
        };
        match &result {
            // A slow answer on a Raft lane (whose deadlines are a heartbeat
            // interval) says the peer is busy, not that it is gone.
            Err(PeerError::Unreachable(_))
                if timed_out && (lane == "raft" || lane.starts_with("qq")) => {}
            Err(PeerError::Unreachable(_)) => self.reachability.mark(&node.name, false),
            _ => self.reachability.mark(&node.name, true),
        }
        result
    }
}

/// Raft's view of the peers.
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

fn to_rpc_error<E: std::error::Error>(
    target: NodeId,
    e: PeerError,
    remote: impl FnOnce(String) -> Option<E>,
) -> RPCError<NodeId, ClusterNode, E> {
    match e {
        PeerError::Unreachable(text) => {
            RPCError::Unreachable(Unreachable::new(&AnyError::error(text)))
        }
        PeerError::Remote(text) => match remote(text.clone()) {
            Some(err) => RPCError::RemoteError(RemoteError::new(target, err)),
            None => RPCError::Network(NetworkError::new(&AnyError::error(text))),
        },
    }
}

impl PeerLink {
    async fn rpc<Q: Serialize, A: DeserializeOwned, E: DeserializeOwned + std::error::Error>(
        &self,
        command: &str,
        req: &Q,
        option: &RPCOption,
    ) -> Result<A, RPCError<NodeId, ClusterNode, E>> {
        self.peers
            .raft_rpc("raft", &self.node, self.target, command, req, option)
            .await
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        self.rpc("raft_append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("raft_snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        self.rpc("raft_vote", &rpc, &option).await
    }
}
