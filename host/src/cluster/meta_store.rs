//! The one door every metadata change goes through. Changes are Raft log
//! entries (see `crate::cluster`): `submit` commits a command through the
//! cluster's leader and returns once it is applied here and on every reachable
//! node; `read` is this node's replica. A node that is not clustered is a
//! cluster of one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLockReadGuard};
use serde::{Deserialize, Serialize};

use super::calls;
use super::machine::SharedMeta;
use super::{Cluster, ClusterNode, JoinRequest, NodeKind};
use crate::meta::{MetaCommand, MetaError, MetaListener, MetaOutcome, MetaState};
use crate::peer::Peers;
use crate::raft::log::open_db;

/// What a node remembers about its cluster outside Raft: its own kind, and
/// peers to ask when a ram node (whose replica lives in memory) starts again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Membership {
    kind: NodeKind,
    peers: Vec<ClusterNode>,
}

pub struct MetaStore {
    shared: Arc<SharedMeta>,
    cluster: Mutex<Option<Arc<Cluster>>>,
    data_dir: PathBuf,
    pub me: ClusterNode,
    pub peers: Arc<Peers>,
}

fn storage(e: impl std::fmt::Display) -> MetaError {
    MetaError::Storage(format!("metadata store: {e}"))
}

impl MetaStore {
    /// A store for the node `me`; nothing runs until [`MetaStore::start`].
    pub fn new(data_dir: PathBuf, me: ClusterNode, cookie: String) -> MetaStore {
        let peers = Peers::new(me.name.clone(), cookie);
        MetaStore {
            shared: SharedMeta::new(MetaState::default()),
            cluster: Mutex::new(None),
            data_dir,
            me,
            peers,
        }
    }

    fn raft_path(&self) -> PathBuf {
        self.data_dir.join("raft.redb")
    }

    fn membership_path(&self) -> PathBuf {
        self.data_dir.join("cluster.json")
    }

    fn membership(&self) -> Membership {
        std::fs::read(self.membership_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Membership {
                kind: NodeKind::Disc,
                peers: Vec::new(),
            })
    }

    fn save_membership(&self, m: &Membership) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec_pretty(m).map_err(storage)?;
        std::fs::write(self.membership_path(), bytes).map_err(storage)
    }

    /// Attaches the runtime, restores the replica and starts Raft. Returns
    /// true when the node is brand new (its caller seeds the defaults).
    pub async fn start(&self, listener: Arc<dyn MetaListener>) -> Result<bool, MetaError> {
        self.shared.attach(listener);
        let membership = self.membership();
        let cluster = self.open_cluster(membership.kind).await?;
        if cluster.is_initialized().await {
            self.after_restart(&cluster).await;
            return Ok(false);
        }
        if membership.kind == NodeKind::Ram && !membership.peers.is_empty() {
            // A ram node's replica died with it: ask the cluster to take it
            // back, once this node's dist listener can take the replication.
            tokio::spawn(rejoin(self.peers.clone(), self.me.clone(), membership));
            return Ok(false);
        }
        cluster.initialize_alone().await?;
        wait_leader(&cluster, Duration::from_secs(5)).await;
        Ok(true)
    }

    async fn open_cluster(&self, kind: NodeKind) -> Result<Arc<Cluster>, MetaError> {
        let db = match kind {
            NodeKind::Disc => open_db(Some(&self.raft_path()), super::SIZING.cache_bytes),
            NodeKind::Ram => open_db(None, super::SIZING.cache_bytes),
        }
        .map_err(storage)?;
        let cluster =
            Cluster::start(self.me.clone(), db, self.shared.clone(), self.peers.clone()).await?;
        *self.cluster.lock() = Some(cluster.clone());
        Ok(cluster)
    }

    /// A restarted node's transient queues (and, if it is the whole cluster,
    /// transient exchanges) are gone, as in RabbitMQ.
    async fn after_restart(&self, cluster: &Arc<Cluster>) {
        let (disc, ram) = cluster.members();
        let alone = disc.len() + ram.len() <= 1;
        let cmd = MetaCommand::NodeRestarted {
            node: self.me.name.clone(),
            whole_cluster: alone,
        };
        if alone {
            // A cluster of one need not wait out an election timeout.
            let _ = cluster.raft.trigger().elect().await;
            wait_leader(cluster, Duration::from_secs(5)).await;
            if let Err(e) = cluster.submit(cmd).await {
                tracing::warn!(error = %e, "could not drop transient metadata after restart");
            }
            return;
        }
        // In a cluster this waits for a quorum, which may take a while.
        let cluster = cluster.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                match cluster.submit(cmd.clone()).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(error = %e, "retrying restart cleanup"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Waits (up to 5 s) until a restarted member of a cluster has applied
    /// what the cluster had applied when it asked: the committed index on disk
    /// is only a hint, so entries this node already holds may wait for the
    /// leader. Clients that connect right after a restart then find what the
    /// cluster has. Needs the node's dist listener up (the leader reaches it there).
    ///
    /// Returns whether this node's replica is known to be current: only then may
    /// the node conclude that a queue it does not know is gone (and drop the
    /// messages it recovered for it).
    pub async fn catch_up(&self) -> bool {
        let Some(cluster) = self.cluster() else {
            return false;
        };
        let (disc, ram) = cluster.members();
        let peers: Vec<ClusterNode> = disc
            .into_iter()
            .chain(ram)
            .filter(|n| n.name != self.me.name)
            .collect();
        if peers.is_empty() {
            // A cluster of one has applied its whole log once it leads (`start`
            // waited for that); a ram node still waiting to rejoin knows nothing yet.
            return cluster.is_initialized().await && cluster.leader().is_some();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut target = None;
        'ask: while tokio::time::Instant::now() < deadline {
            for p in &peers {
                let asked = cluster
                    .peers
                    .call(p, &calls::MetaApplied, Duration::from_millis(500))
                    .await;
                if let Ok(index) = asked {
                    target = Some(index);
                    break 'ask;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(target) = target else {
            tracing::warn!("no cluster peer answered within 5 s of starting");
            return false;
        };
        let caught_up =
            tokio::time::timeout_at(deadline, cluster.shared.wait_applied(target)).await;
        if caught_up.is_err() {
            tracing::warn!(
                target,
                "metadata not caught up with the cluster within 5 s of starting"
            );
            return false;
        }
        true
    }

    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.lock().clone()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, MetaState> {
        self.shared.state.read()
    }

    /// Applies one change through the cluster; returns once it is committed and
    /// applied here and on every reachable node.
    pub async fn submit(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        let Some(cluster) = self.cluster() else {
            return Err(MetaError::Unavailable(
                "metadata store unavailable: the node is resetting".into(),
            ));
        };
        cluster.submit(cmd).await
    }

    /// Wipes this node's metadata and starts a fresh Raft instance of `kind`.
    /// With `alone`, the node becomes a cluster of its own again (its caller
    /// seeds the defaults); otherwise it waits to be added to a cluster.
    pub async fn wipe(&self, kind: NodeKind, alone: bool) -> Result<Arc<Cluster>, MetaError> {
        let old = self.cluster.lock().take();
        if let Some(c) = old {
            c.shutdown().await;
        }
        let _ = std::fs::remove_file(self.raft_path());
        self.save_membership(&Membership {
            kind,
            peers: Vec::new(),
        })?;
        let cluster = self.open_cluster(kind).await?;
        if alone {
            cluster.initialize_alone().await?;
            wait_leader(&cluster, Duration::from_secs(5)).await;
        }
        Ok(cluster)
    }

    /// Joins the cluster `peer` belongs to, as a `kind` node. The node's own
    /// metadata is wiped first: it takes the cluster's.
    pub async fn join(&self, peer: ClusterNode, kind: NodeKind) -> Result<(), MetaError> {
        // Ask first, so an unreachable peer leaves this node as it was.
        let status: super::Status = self
            .peers
            .call(&peer, &calls::ClusterInfo, Duration::from_secs(5))
            .await
            .map_err(|e| MetaError::Unavailable(format!("cannot reach {}: {e}", peer.name)))?;
        if status
            .disc
            .iter()
            .chain(&status.ram)
            .any(|n| n == &self.me.name)
        {
            return Err(MetaError::AlreadyExists(format!(
                "{} is already a member of the cluster of {}",
                self.me.name, peer.name
            )));
        }
        self.wipe(kind, false).await?;
        let req = JoinRequest {
            name: self.me.name.clone(),
            addr: self.me.addr.clone(),
            kind,
        };
        let joined = match self
            .peers
            .call(&peer, &calls::ClusterJoin(req), Duration::from_secs(40))
            .await
        {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = joined {
            // Leave the node usable on its own rather than half-joined.
            self.wipe(NodeKind::Disc, true).await?;
            return Err(MetaError::Unavailable(format!(
                "cannot join the cluster of {}: {e}",
                peer.name
            )));
        }
        self.save_membership(&Membership {
            kind,
            peers: vec![peer],
        })?;
        // Wait until this node has the cluster's metadata before saying so.
        if let Some(c) = self.cluster() {
            wait_leader(&c, Duration::from_secs(10)).await;
        }
        Ok(())
    }

    /// Remembers the current members, so a ram node can find them after a restart.
    pub fn remember_peers(&self) {
        let Some(c) = self.cluster() else { return };
        let (disc, ram) = c.members();
        let peers: Vec<ClusterNode> = disc
            .into_iter()
            .chain(ram)
            .filter(|n| n.name != self.me.name)
            .collect();
        let mut m = self.membership();
        if m.peers != peers {
            m.peers = peers;
            let _ = self.save_membership(&m);
        }
    }
}

async fn rejoin(peers: Arc<Peers>, me: ClusterNode, m: Membership) {
    let req = JoinRequest {
        name: me.name.clone(),
        addr: me.addr.clone(),
        kind: NodeKind::Ram,
    };
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for peer in &m.peers {
            let joined = peers
                .call(
                    peer,
                    &calls::ClusterJoin(req.clone()),
                    Duration::from_secs(30),
                )
                .await;
            match joined {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer.name, error = %e, "ram node rejoin refused")
                }
                Err(e) => tracing::debug!(peer = %peer.name, error = %e, "ram node rejoin failed"),
            }
        }
    }
    tracing::warn!(node = %me.name, "ram node could not rejoin its cluster");
}

/// Waits (up to `limit`) until the node knows its cluster's leader.
async fn wait_leader(cluster: &Cluster, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while cluster.leader().is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
