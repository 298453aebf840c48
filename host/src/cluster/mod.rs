//! Clustering: nodes join into one broker. Metadata is one Raft state machine
//! (on the node's shared Raft plumbing, `raft`) whose commands are `meta::MetaCommand`s;
//! disc nodes are voters that persist the log and snapshots in redb, ram
//! nodes are learners with an in-memory replica.
//!
//! - `types`: the Raft type configuration.
//! - `machine`: the state machine (`MetaState`) and the state every part of the node reads.
//! - `calls`: what nodes ask each other about the metadata, Raft's RPCs among them.
//! - `meta_store`: the node's handle on it all (submit, join, wipe).
//! - this module: one node's membership — submit, join, leave, status.

pub mod calls;
pub mod machine;
pub mod meta_store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};

use self::calls::MetaRaftCalls;
use self::machine::{MetaMachine, SharedMeta};
use crate::meta::{MetaCommand, MetaError, MetaOutcome};
use crate::peer::{PeerError, Peers};
pub use meta_store::MetaStore;
pub use types::{ClusterNode, MetaReply, TypeConfig, node_id};

/// How long a metadata change may wait for a quorum before it fails.
pub const QUORUM_WAIT: Duration = Duration::from_secs(5);
/// What a node that stopped leading answers a forwarded change.
const NOT_THE_LEADER: &str = "not the leader";

/// How long the leader waits for each reachable node to apply a change.
const APPLY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Disc,
    Ram,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Disc => "disc",
            NodeKind::Ram => "ram",
        }
    }
}

/// A forwarded change's answer: the reply and the log index it was applied at.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitAnswer {
    pub reply: MetaReply,
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub name: String,
    pub addr: String,
    pub kind: NodeKind,
}

/// What `cluster_status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub disc: Vec<String>,
    pub ram: Vec<String>,
    pub running: Vec<String>,
    pub leader: Option<String>,
}

/// This node's membership in the metadata cluster.
pub struct Cluster {
    pub raft: Raft<TypeConfig>,
    pub id: u64,
    pub me: ClusterNode,
    pub peers: Arc<Peers>,
    pub shared: Arc<SharedMeta>,
}

/// Metadata is small: snapshots are frequent, so a joining node gets one.
const SIZING: crate::raft::Sizing = crate::raft::Sizing {
    snapshot_every: 500,
    keep_after_snapshot: 100,
    max_payload_entries: 300,
    recent_entries: 1024,
    cache_bytes: 32 << 20,
};

impl Cluster {
    /// Starts Raft on `db` (already holding this node's log, or fresh).
    pub async fn start(
        me: ClusterNode,
        db: Arc<redb::Database>,
        shared: Arc<SharedMeta>,
        peers: Arc<Peers>,
    ) -> Result<Arc<Cluster>, MetaError> {
        let id = node_id(&me.name);
        let raft = crate::raft::start(
            "warren",
            SIZING,
            &me.name,
            db,
            MetaMachine(shared.clone()),
            MetaRaftCalls,
            peers.clone(),
        )
        .await
        .map_err(|e| MetaError::Storage(format!("metadata store: {e}")))?;
        let cluster = Arc::new(Cluster {
            raft,
            id,
            me,
            peers,
            shared,
        });
        tokio::spawn(watch_peers(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Makes a fresh node a cluster of its own (its only disc node).
    pub async fn initialize_alone(&self) -> Result<(), MetaError> {
        let mut members = BTreeMap::new();
        members.insert(self.id, self.me.clone());
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(_)) => Ok(()), // already initialized
            Err(e) => Err(MetaError::Storage(format!("metadata store: {e}"))),
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Disc nodes (voters) and ram nodes (learners) by name, this node included.
    pub fn members(&self) -> (Vec<ClusterNode>, Vec<ClusterNode>) {
        let metrics = self.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = m.voter_ids().collect();
        let mut disc = Vec::new();
        let mut ram = Vec::new();
        for (id, node) in m.nodes() {
            if voters.contains(id) {
                disc.push(node.clone());
            } else {
                ram.push(node.clone());
            }
        }
        (disc, ram)
    }

    pub fn node_by_name(&self, name: &str) -> Option<ClusterNode> {
        let (disc, ram) = self.members();
        disc.into_iter().chain(ram).find(|n| n.name == name)
    }

    /// The member named `name`, if it is up (a queue's owner, say).
    pub fn running_node(&self, name: &str) -> Option<ClusterNode> {
        self.node_by_name(name).filter(|n| self.is_up(n))
    }

    pub fn leader(&self) -> Option<ClusterNode> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }

    pub fn is_up(&self, node: &ClusterNode) -> bool {
        node.name == self.me.name || self.peers.reachability.is_up(&node.name)
    }

    pub fn status(&self) -> Status {
        let (mut disc, mut ram) = self.members();
        disc.sort_by(|a, b| a.name.cmp(&b.name));
        ram.sort_by(|a, b| a.name.cmp(&b.name));
        let running = disc
            .iter()
            .chain(&ram)
            .filter(|n| n.name == self.me.name || self.peers.reachability.is_running(&n.name))
            .map(|n| n.name.clone())
            .collect();
        Status {
            disc: disc.into_iter().map(|n| n.name).collect(),
            ram: ram.into_iter().map(|n| n.name).collect(),
            running,
            leader: self.leader().map(|n| n.name),
        }
    }

    /// Whether a majority of the disc nodes answered lately (this one included).
    pub fn has_quorum(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state == ServerState::Leader {
            // The leader knows when a quorum last acknowledged it.
            if metrics.millis_since_quorum_ack.is_some_and(|ms| ms < 2000) {
                return true;
            }
        } else if metrics.current_leader.is_some() {
            // The leader decides; a forwarded change fails there if need be.
            return true;
        }
        let (disc, _) = self.members();
        let up = disc.iter().filter(|n| self.is_up(n)).count();
        up * 2 > disc.len()
    }

    /// The error every metadata change gets while the disc nodes have no quorum.
    pub fn no_quorum(&self) -> MetaError {
        let (disc, _) = self.members();
        let up = disc.iter().filter(|n| self.is_up(n)).count();
        MetaError::Unavailable(format!(
            "metadata store unavailable: no quorum of disc nodes ({up} of {} reachable)",
            disc.len()
        ))
    }

    /// Commits a change and waits until it is applied here and on every
    /// reachable node. Any node may call this; followers forward to the leader.
    pub async fn submit(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        check_storable(&cmd)?;
        let deadline = Instant::now() + QUORUM_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.no_quorum());
            }
            // Without a quorum a change could only time out, and might still be
            // committed later: refuse it at once instead.
            if !self.has_quorum() {
                return Err(self.no_quorum());
            }
            if self.raft.metrics().borrow().state == ServerState::Leader {
                let answer = self.submit_as_leader(cmd.clone(), left).await?;
                return answer.reply;
            }
            let Some(leader) = self.leader() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let forwarded = self
                .peers
                .call(&leader, &calls::MetaSubmit(cmd.clone()), left)
                .await;
            match forwarded {
                Ok(Ok(answer)) => {
                    // Read-your-writes on this node, too.
                    let _ =
                        tokio::time::timeout(APPLY_WAIT, self.shared.wait_applied(answer.index))
                            .await;
                    return answer.reply;
                }
                // It stopped leading since: ask again whoever leads now.
                Ok(Err(MetaError::Unavailable(text))) if text == NOT_THE_LEADER => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(PeerError::Remote(f)) => return Err(MetaError::Storage(f.text)),
                Err(PeerError::Unreachable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The leader's half of `submit` (also what a forwarded change runs).
    pub async fn submit_as_leader(
        &self,
        cmd: MetaCommand,
        wait: Duration,
    ) -> Result<SubmitAnswer, MetaError> {
        // Forwarded changes come from peers: checked here too.
        check_storable(&cmd)?;
        if !self.has_quorum() {
            return Err(self.no_quorum());
        }
        let written = tokio::time::timeout(wait, self.raft.client_write(cmd)).await;
        let resp = match written {
            Err(_) => return Err(self.no_quorum()),
            Ok(Ok(resp)) => resp,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                return Err(MetaError::Unavailable(NOT_THE_LEADER.into()));
            }
            Ok(Err(e)) => return Err(MetaError::Storage(format!("metadata store: {e}"))),
        };
        let index = resp.log_id.index;
        self.wait_applied_everywhere(index).await;
        Ok(SubmitAnswer {
            reply: resp.data,
            index,
        })
    }

    /// Waits (briefly) until every reachable member has applied `index`, so a
    /// client that declares on one node and publishes on another finds what it declared.
    async fn wait_applied_everywhere(&self, index: u64) {
        let (disc, ram) = self.members();
        let waits = disc
            .into_iter()
            .chain(ram)
            .filter(|n| n.name != self.me.name && self.peers.reachability.is_up(&n.name))
            .map(|n| {
                let peers = self.peers.clone();
                async move {
                    let applied = peers
                        .call(&n, &calls::MetaWaitApplied(index), APPLY_WAIT)
                        .await;
                    if !matches!(applied, Ok(true)) {
                        tracing::warn!(node = %n.name, index, "a reachable node did not apply a metadata change in time");
                    }
                }
            });
        futures_join_all(waits).await;
    }

    /// On a follower, sends a membership request to the leader and returns its
    /// answer; on the leader, returns None so the caller does the work.
    async fn on_leader<C: crate::peer::Call<Answer = Result<(), MetaError>>>(
        &self,
        req: C,
    ) -> Option<Result<(), MetaError>> {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            return None;
        }
        let Some(leader) = self.leader() else {
            return Some(Err(self.no_quorum()));
        };
        Some(
            match self
                .peers
                .call(&leader, &req, Duration::from_secs(30))
                .await
            {
                Ok(answer) => answer,
                Err(e) => Err(MetaError::Unavailable(e.to_string())),
            },
        )
    }

    /// Adds a node (leader side; others forward).
    pub async fn add_member(&self, req: JoinRequest) -> Result<(), MetaError> {
        if let Some(forwarded) = self.on_leader(calls::ClusterJoin(req.clone())).await {
            return forwarded;
        }
        let id = node_id(&req.name);
        let node = ClusterNode {
            name: req.name.clone(),
            addr: req.addr.clone(),
        };
        let fail = |e: RaftError<u64, ClientWriteError<u64, ClusterNode>>| {
            MetaError::Unavailable(format!("cannot add node {}: {e}", req.name))
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            patiently(|| self.raft.add_learner(id, node.clone(), true)),
        )
        .await
        .map_err(|_| self.no_quorum())?
        .map_err(fail)?;
        if req.kind == NodeKind::Disc {
            let mut ids = BTreeSet::new();
            ids.insert(id);
            tokio::time::timeout(
                Duration::from_secs(30),
                patiently(|| {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(ids.clone()), true)
                }),
            )
            .await
            .map_err(|_| self.no_quorum())?
            .map_err(fail)?;
        }
        Ok(())
    }

    /// Removes a node from the cluster (leader side; others forward).
    pub async fn remove_member(&self, name: &str) -> Result<(), MetaError> {
        if let Some(forwarded) = self.on_leader(calls::ClusterLeave(name.to_string())).await {
            return forwarded;
        }
        let Some(node) = self.node_by_name(name) else {
            return Err(MetaError::NotFound(format!(
                "Node {name} is not a member of this cluster"
            )));
        };
        let id = node_id(&node.name);
        let (disc, _) = self.members();
        let mut ids = BTreeSet::new();
        ids.insert(id);
        let is_voter = disc.iter().any(|n| n.name == name);
        if is_voter && disc.len() == 1 {
            return Err(MetaError::Precondition(format!(
                "cannot remove {name}: it is the only disc node"
            )));
        }
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            patiently(|| self.raft.change_membership(change.clone(), false)),
        )
        .await
        .map_err(|_| self.no_quorum())?
        .map_err(|e| MetaError::Unavailable(format!("cannot remove {name}: {e}")))?;
        // Returns once every reachable member has the new membership: none lists the node
        // any more when the command returns.
        self.wait_applied_everywhere(resp.log_id.index).await;
        Ok(())
    }

    /// Changes a member between disc (voter) and ram (learner).
    pub async fn set_member_kind(&self, name: &str, kind: NodeKind) -> Result<(), MetaError> {
        let Some(node) = self.node_by_name(name) else {
            return Err(MetaError::NotFound(format!(
                "Node {name} is not a member of this cluster"
            )));
        };
        if let Some(forwarded) = self
            .on_leader(calls::ClusterSetKind(name.to_string(), kind))
            .await
        {
            return forwarded;
        }
        let (disc, _) = self.members();
        let is_voter = disc.iter().any(|n| n.name == name);
        let mut ids = BTreeSet::new();
        ids.insert(node_id(&node.name));
        let change = match (kind, is_voter) {
            (NodeKind::Disc, false) => ChangeMembers::AddVoterIds(ids),
            (NodeKind::Ram, true) => {
                if disc.len() == 1 {
                    return Err(MetaError::Precondition(
                        "Cannot change the type of the last disc node to ram: the cluster needs at least one disc node".into(),
                    ));
                }
                ChangeMembers::RemoveVoters(ids)
            }
            _ => return Ok(()),
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            patiently(|| self.raft.change_membership(change.clone(), true)),
        )
        .await
        .map_err(|_| self.no_quorum())?
        .map_err(|e| MetaError::Unavailable(format!("cannot change {name}: {e}")))?;
        Ok(())
    }

    /// Tells every member at once that this node's application started or stopped, so that
    /// their `cluster_status` is right the moment `start_app` / `stop_app` returns (their
    /// pings would tell them within a second or two).
    pub async fn announce_app_state(&self, running: bool) {
        let (disc, ram) = self.members();
        let me = self.me.name.clone();
        let calls = disc
            .into_iter()
            .chain(ram)
            .filter(|n| n.name != me)
            .map(|n| {
                let peers = self.peers.clone();
                let me = me.clone();
                async move {
                    let tell = calls::AppState { node: me, running };
                    let _ = peers.call(&n, &tell, Duration::from_millis(1500)).await;
                }
            });
        futures_join_all(calls).await;
    }

    pub fn kind_of(&self, name: &str) -> Option<NodeKind> {
        let (disc, ram) = self.members();
        if disc.iter().any(|n| n.name == name) {
            Some(NodeKind::Disc)
        } else if ram.iter().any(|n| n.name == name) {
            Some(NodeKind::Ram)
        } else {
            None
        }
    }
}

/// A change must be valid and come back whole from the log's encoding before it is
/// committed: once in the log, every node has to apply it, also after a restart.
fn check_storable(cmd: &MetaCommand) -> Result<(), MetaError> {
    cmd.check_nesting()?;
    machine::check_round_trip(cmd)
}

/// Runs a membership change, again while the previous one is still being committed: one
/// change at a time is Raft's rule, and a change right after another (a node turned into a
/// disc node and rejoining, members forgotten one after the other) is the operator's normal
/// sequence, not an error. The caller bounds the whole wait.
async fn patiently<T, F, Fut>(
    mut change: F,
) -> Result<T, RaftError<u64, ClientWriteError<u64, ClusterNode>>>
where
    F: FnMut() -> Fut,
    Fut:
        std::future::Future<Output = Result<T, RaftError<u64, ClientWriteError<u64, ClusterNode>>>>,
{
    loop {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            ))) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other,
        }
    }
}

/// Pings every other member each second, so that who is up (cluster_status,
/// quorum errors) is known within seconds on every node, not only on the leader.
async fn watch_peers(cluster: std::sync::Weak<Cluster>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(c) = cluster.upgrade() else { return };
        let (disc, ram) = c.members();
        for n in disc.into_iter().chain(ram) {
            if n.name == c.me.name {
                continue;
            }
            let peers = c.peers.clone();
            tokio::spawn(async move {
                let answer = peers
                    .call(&n, &calls::Ping, Duration::from_millis(900))
                    .await;
                if let Ok(app_running) = answer {
                    peers.reachability.set_app_running(&n.name, app_running);
                }
            });
        }
    }
}

/// Runs futures concurrently and waits for all (a tiny join_all, so the
/// host needs no futures crate for it).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}
