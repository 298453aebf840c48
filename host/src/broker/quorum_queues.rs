//! The broker's side of quorum queues: opening this node's member of a group when a queue is
//! declared, building the live queue when the member leads, routing to the leader when it
//! does not, and telling the other nodes who leads. The groups themselves (Raft, log,
//! contents) are `quorum`'s; they call back here through `GroupHost`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Broker;
use super::routing::RemoteQueue;
use crate::cluster::ClusterNode;
use crate::meta::QueueRecord;
use crate::queue::{Entry, Queue};
use crate::quorum::{GroupHost, Proposer, QuorumGroup, calls, is_quorum};

impl Broker {
    /// Waits until some member serves the queue (its live queue is up): this
    /// node, or another member that says so when asked.
    pub async fn quorum_wait_serving(&self, record: &QueueRecord, within: Duration) -> bool {
        let broker = self;
        let groups = &self.quorum;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if groups.serving(record.uid) {
                return true;
            }
            // Ask the member this node believes leads first, then the others.
            let mut ask: Vec<String> = Vec::new();
            if let Some(l) = groups.get(record.uid).and_then(|g| g.leader()) {
                ask.push(l);
            }
            for m in &record.members {
                if !ask.contains(m) {
                    ask.push(m.clone());
                }
            }
            if let Some(c) = broker.meta.cluster() {
                for name in ask.iter().filter(|n| **n != broker.config.node) {
                    let Some(node) = c.running_node(name) else {
                        continue;
                    };
                    if c.peers
                        .call(
                            &node,
                            &crate::quorum::calls::QqServing(record.uid),
                            Duration::from_secs(2),
                        )
                        .await
                        .unwrap_or(false)
                    {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A quorum queue was declared (or is known again after a restart): this
    /// node opens its member of the group if it is one, and routes to the
    /// declaring node until it learns who leads.
    pub(crate) fn quorum_queue_added(&self, record: &QueueRecord) {
        if let Some(v) = self.vhost(&record.vhost)
            && !v.queues.read().contains_key(&record.name)
        {
            v.remote
                .write()
                .entry(record.name.clone())
                .or_insert_with(|| RemoteQueue::new(&record.node, &record.name));
        }
        if !record.members.contains(&self.config.node) {
            // No longer a member (delete_member, shrink): this node's copy goes.
            self.quorum_queue_deleted(record.uid);
            return;
        }
        let Some(broker) = self.me.upgrade() else {
            return;
        };
        if broker.quorum.get(record.uid).is_some() {
            return;
        }
        let record = record.clone();
        tokio::spawn(async move {
            // At start-up the metadata replays before the node's cluster
            // handle is in place.
            let mut cluster = broker.meta.cluster();
            for _ in 0..600 {
                if cluster.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                cluster = broker.meta.cluster();
            }
            let Some(cluster) = cluster else {
                tracing::error!(queue = %record.name, vhost = %record.vhost, "cannot open quorum queue member: the metadata store did not start");
                return;
            };
            let members: Vec<ClusterNode> = record
                .members
                .iter()
                .filter_map(|n| cluster.node_by_name(n))
                .collect();
            let host: std::sync::Weak<dyn GroupHost> = Arc::downgrade(&broker) as _;
            let opened = QuorumGroup::open(
                host,
                cluster.peers.clone(),
                broker.config.node.clone(),
                &broker.config.data_dir,
                record.clone(),
                members,
            )
            .await;
            match opened {
                Ok(group) => {
                    let previous = broker.quorum.insert(record.uid, group);
                    if let Some(old) = previous {
                        old.close().await;
                    }
                }
                Err(e) => {
                    tracing::error!(queue = %record.name, vhost = %record.vhost, error = %e, "cannot open quorum queue member");
                }
            }
        });
    }

    /// A quorum queue was deleted: its member here stops and its log goes.
    pub(crate) fn quorum_queue_deleted(&self, uid: u64) {
        let Some(group) = self.quorum.remove(uid) else {
            return;
        };
        tokio::spawn(async move {
            group.close().await;
            let _ = std::fs::remove_file(&group.path);
        });
    }

    /// The live queue for a quorum queue this node now leads.
    pub(crate) fn quorum_live_queue(
        &self,
        record: &QueueRecord,
        entries: Vec<Entry>,
        proposer: Proposer,
    ) -> Arc<Queue> {
        let config = self.queue_config_now(record);
        Queue::new_replicated(record.clone(), config, proposer, self.me.clone(), entries)
    }

    /// Who serves a quorum queue changed: route there, and move this node's
    /// consumers of it that go through another node.
    pub(crate) fn quorum_leader_changed(
        &self,
        record: &QueueRecord,
        leader: &str,
        live: Option<Arc<Queue>>,
    ) {
        let Some(v) = self.vhost(&record.vhost) else {
            return;
        };
        let current = self.meta.read().queue(&record.vhost, &record.name).cloned();
        if current.is_none_or(|c| c.uid != record.uid) {
            return;
        }
        match live {
            Some(q) => {
                v.queues.write().insert(record.name.clone(), q);
                v.remote.write().remove(&record.name);
            }
            None => {
                let previous = v
                    .remote
                    .write()
                    .insert(record.name.clone(), RemoteQueue::new(leader, &record.name));
                if previous.is_some_and(|p| &*p.node == leader) {
                    return;
                }
                tracing::debug!(queue = %record.name, leader, "quorum queue routed to its leader");
            }
        }
        if let Some(node) = self.meta.cluster().and_then(|c| c.node_by_name(leader)) {
            self.remote_sessions
                .follow(self, &record.vhost, &record.name, node);
        }
    }

    /// The live queue stopped being served here. Until a new leader is known
    /// the queue stays routable to this node, which refuses its publishes
    /// (a negative confirm): a queue that merely routes nowhere would have
    /// them confirmed and dropped.
    pub(crate) fn quorum_live_gone(&self, record: &QueueRecord, q: &Arc<Queue>) {
        if let Some(v) = self.vhost(&record.vhost) {
            let mut queues = v.queues.write();
            if queues.get(&record.name).is_some_and(|x| Arc::ptr_eq(x, q)) {
                queues.remove(&record.name);
            }
            v.remote
                .write()
                .entry(record.name.clone())
                .or_insert_with(|| RemoteQueue::new(&self.config.node, &record.name));
        }
    }

    /// Tells every other running node that this node leads the queue.
    pub(crate) fn announce_quorum_leader(&self, record: &QueueRecord) {
        let Some(cluster) = self.meta.cluster() else {
            return;
        };
        let (disc, ram) = cluster.members();
        for node in disc.into_iter().chain(ram) {
            if node.name == self.config.node || !cluster.is_up(&node) {
                continue;
            }
            let peers = cluster.peers.clone();
            let tell = calls::QqLeader {
                vhost: record.vhost.clone(),
                name: record.name.clone(),
                group: record.uid,
                leader: self.config.node.clone(),
            };
            tokio::spawn(async move {
                let _ = peers.call(&node, &tell, Duration::from_secs(2)).await;
            });
        }
    }

    /// Another node says it leads a quorum queue.
    pub(crate) fn quorum_leader_announced(&self, vhost: &str, name: &str, uid: u64, leader: &str) {
        // A member follows its own group's view.
        if self.quorum.get(uid).is_some() {
            return;
        }
        let Some(record) = self.meta.read().queue(vhost, name).cloned() else {
            return;
        };
        if record.uid != uid {
            return;
        }
        let known = self
            .vhost(vhost)
            .and_then(|v| v.remote.read().get(name).map(|r| r.node.clone()));
        if known.as_deref() != Some(leader) {
            self.quorum_leader_changed(&record, leader, None);
        }
    }

    /// Which of a quorum queue's members are running now (as this node sees them).
    pub fn quorum_online_of(&self, members: &[String]) -> Vec<String> {
        let Some(cluster) = self.meta.cluster() else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|m| cluster.running_node(m).is_some())
            .cloned()
            .collect()
    }

    /// Where a queue is served now: a quorum queue's leader as this node
    /// knows it, any other queue's owner.
    pub fn queue_home(&self, record: &QueueRecord) -> String {
        if !is_quorum(record) {
            return record.node.clone();
        }
        let Some(v) = self.vhost(&record.vhost) else {
            return record.node.clone();
        };
        if v.queues.read().contains_key(&record.name) {
            return self.config.node.clone();
        }
        v.remote
            .read()
            .get(&record.name)
            .map(|r| r.node.to_string())
            .unwrap_or_else(|| record.node.clone())
    }
}

impl GroupHost for Broker {
    fn live_queue(
        &self,
        record: &QueueRecord,
        entries: Vec<Entry>,
        proposer: Proposer,
    ) -> Arc<Queue> {
        self.quorum_live_queue(record, entries, proposer)
    }

    fn leader_changed(&self, record: &QueueRecord, leader: &str, live: Option<Arc<Queue>>) {
        self.quorum_leader_changed(record, leader, live)
    }

    fn live_gone(&self, record: &QueueRecord, q: &Arc<Queue>) {
        self.quorum_live_gone(record, q)
    }

    fn announce_leader(&self, record: &QueueRecord) {
        self.announce_quorum_leader(record)
    }
}
