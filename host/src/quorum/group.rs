//! One quorum queue's member on this node: its Raft instance, the task that
//! turns the live queue's changes into log entries in order, and the task
//! that follows leadership (the leader serves the queue; the others route to it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::{Raft, ServerState};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::calls::GroupCalls;
use super::host::GroupHost;
use super::machine::{Contents, QueueMachine};
use super::types::{QueueCommand, QueueRaft, QueueReply};
use crate::base::carried::Carried;
use crate::base::message::Message;
use crate::cluster::{ClusterNode, node_id};
use crate::meta::QueueRecord;
use crate::peer::Peers;
use crate::queue::Entry;

/// Most messages one log entry carries.
const MAX_BATCH: usize = 512;
/// Entries being committed at once: enough to keep the followers' disks busy, few enough
/// that what arrives meanwhile gathers into the next entry.
const IN_FLIGHT: usize = 4;
/// How long a publisher waits for its message to be committed before it is refused.
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How long a restarted member listens before it may stand for election.
const RESTART_QUIET: Duration = Duration::from_secs(3);
/// A leader that has not heard from a majority for this long refuses publishes at once.
const QUORUM_SILENCE_MS: u64 = 3000;

/// A snapshot once the bodies logged since the last one pass this and twice what the queue
/// holds (`snapshot_when_due`).
const SNAPSHOT_LOG_BYTES: u64 = 64 << 20;
/// How often a member looks whether a snapshot is due.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(1);

const SIZING: crate::raft::Sizing = crate::raft::Sizing {
    // A backstop for entries that carry no bodies (settles); bodies are counted in bytes.
    snapshot_every: 20_000,
    keep_after_snapshot: 128,
    // An append must be answered within the heartbeat interval (openraft
    // drops it otherwise): a follower catching up gets small ones.
    max_payload_entries: 64,
    // An entry carries up to MAX_BATCH bodies: the leader needs only the entries in flight
    // to send and apply; a follower further behind reads redb.
    recent_entries: 32,
    cache_bytes: 8 << 20,
};

/// What the live queue asks its group to agree on.
pub enum Proposal {
    Enqueue(Arc<Message>, oneshot::Sender<bool>),
    Settle(Vec<u64>),
    Return(u64),
}

/// The live queue's handle on its group (it holds no reference back to the
/// group, so a queue and its group never keep each other alive).
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Proposal>,
}

impl crate::queue::Replica for Proposer {
    fn enqueue(&self, msg: Arc<Message>) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        // A closed group drops the sender: the publisher gets a refusal.
        let _ = self.tx.send(Proposal::Enqueue(msg, tx));
        rx
    }

    fn settle(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            let _ = self.tx.send(Proposal::Settle(ids));
        }
    }

    fn returned(&self, id: u64) {
        let _ = self.tx.send(Proposal::Return(id));
    }
}

pub struct QuorumGroup {
    pub record: QueueRecord,
    pub raft: Raft<QueueRaft>,
    pub contents: Arc<Mutex<Contents>>,
    pub proposer: Proposer,
    pub path: PathBuf,
    host: Weak<dyn GroupHost>,
    pub(crate) me: String,
}

type CommitReceiver =
    <<QueueRaft as openraft::RaftTypeConfig>::Responder as openraft::raft::responder::Responder<
        QueueRaft,
    >>::Receiver;
/// An entry being committed: who waits for its publishes, and its place in the pipeline.
type Waiting = (
    CommitReceiver,
    Vec<oneshot::Sender<bool>>,
    tokio::sync::OwnedSemaphorePermit,
);

impl QuorumGroup {
    /// Opens (or creates) this node's member of the queue's group. The node
    /// that declared the queue initializes a fresh group with every member.
    pub async fn open(
        host: Weak<dyn GroupHost>,
        peers: Arc<Peers>,
        me: String,
        data_dir: &std::path::Path,
        record: QueueRecord,
        members: Vec<ClusterNode>,
    ) -> Result<Arc<QuorumGroup>, String> {
        let dir = data_dir.join("quorum");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("{:016x}.redb", record.uid));
        let fresh = !path.exists();
        let db = crate::raft::log::open_db(Some(&path), SIZING.cache_bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let contents = Arc::new(Mutex::new(Contents::default()));
        let raft = crate::raft::start(
            "warren-quorum-queue",
            SIZING,
            &me,
            db,
            QueueMachine(contents.clone()),
            GroupCalls { group: record.uid },
            peers,
        )
        .await
        .map_err(|e| e.to_string())?;
        if fresh && record.node == me {
            let voters: BTreeMap<u64, ClusterNode> =
                members.into_iter().map(|n| (node_id(&n.name), n)).collect();
            if let Err(e) = raft.initialize(voters).await {
                tracing::warn!(queue = %record.name, error = %e, "quorum queue group not initialized");
            }
            // The declaring node is meant to lead first: no election timeout to wait out.
            let _ = raft.trigger().elect().await;
        } else if record.members.len() == 1 {
            // A group of one restarting: nobody else to wait for.
            let _ = raft.trigger().elect().await;
        } else if !fresh {
            // A member restarting hears from the running leader within a few
            // heartbeats; standing for election before that would only push
            // the term up and unseat a leader that is doing fine (no pre-vote
            // in openraft 0.9).
            raft.runtime_config().elect(false);
            let later = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RESTART_QUIET).await;
                later.runtime_config().elect(true);
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let group = Arc::new(QuorumGroup {
            record,
            raft: raft.clone(),
            contents,
            proposer: Proposer { tx },
            path,
            host,
            me,
        });
        let (wtx, wrx) = mpsc::unbounded_channel();
        tokio::spawn(run_proposer(raft, rx, wtx));
        tokio::spawn(run_waiter(wrx));
        tokio::spawn(follow_leader(Arc::downgrade(&group)));
        tokio::spawn(snapshot_when_due(Arc::downgrade(&group)));
        Ok(group)
    }

    /// The current leader's node name, as this member knows it.
    pub fn leader(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.name.clone())
    }

    /// The members' node names, as the group's membership has them.
    pub fn members(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().clone();
        let names: BTreeSet<String> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.name.clone())
            .collect();
        names.into_iter().collect()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Becomes the node serving the queue: builds the live queue from what
    /// the group holds, once everything committed before is applied here.
    async fn take_over(self: &Arc<Self>) {
        if self.contents.lock().live.is_some() {
            return;
        }
        let asked = std::time::Instant::now();
        let applied =
            tokio::time::timeout(Duration::from_secs(5), self.raft.ensure_linearizable()).await;
        tracing::debug!(queue = %self.record.name, took_ms = asked.elapsed().as_millis() as u64, "quorum queue leader read its log");
        match applied {
            Ok(Ok(_)) if self.is_leader() => {}
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::warn!(queue = %self.record.name, error = %e, "quorum queue leader cannot read its log yet");
                return;
            }
            Err(_) => {
                tracing::warn!(queue = %self.record.name, "quorum queue leader: no majority within 5 s");
                return;
            }
        }
        let Some(host) = self.host.upgrade() else {
            return;
        };
        let queue = {
            let mut c = self.contents.lock();
            if c.live.is_some() {
                return;
            }
            let entries: Vec<Entry> = c
                .messages
                .iter()
                .map(|(id, h)| Entry {
                    id: *id,
                    msg: h.msg.clone(),
                    // It may have been delivered under the previous leader.
                    redelivered: true,
                    delivery_count: h.returns,
                    expires_at: None,
                    stored: true,
                })
                .collect();
            let q = host.live_queue(&self.record, entries, self.proposer.clone());
            c.live = Some(q.clone());
            q
        };
        tracing::info!(queue = %self.record.name, vhost = %self.record.vhost, "quorum queue leader here");
        host.leader_changed(&self.record, &self.me, Some(queue));
    }

    /// Stops serving the queue here: its consumers on this node are cancelled
    /// (they consume again through the new leader).
    fn step_down(&self) {
        let live = self.contents.lock().live.take();
        if let Some(q) = live {
            tracing::info!(queue = %self.record.name, vhost = %self.record.vhost, "quorum queue leader moved away");
            if let Some(h) = self.host.upgrade() {
                h.live_gone(&self.record, &q);
            }
            q.retire();
        }
    }

    /// Stops the group's Raft (the queue was deleted or the node stops).
    pub async fn close(&self) {
        self.step_down();
        let _ = self.raft.shutdown().await;
    }
}

/// Follows the group's leadership: takes over or steps down, tells the node
/// where the queue is served, and (as leader) tells every node every 2 s.
async fn follow_leader(group: Weak<QuorumGroup>) {
    let mut metrics = match group.upgrade() {
        Some(g) => g.raft.metrics(),
        None => return,
    };
    let mut last_leader: Option<String> = None;
    loop {
        {
            let Some(g) = group.upgrade() else { return };
            let leading = g.is_leader();
            if leading {
                g.take_over().await;
            } else {
                g.step_down();
            }
            let leader = g.leader();
            if leader != last_leader {
                let m = g.raft.metrics().borrow().clone();
                tracing::info!(queue = %g.record.name, leader = ?leader, term = m.current_term, state = ?m.state, "quorum queue leader changed");
            }
            if let (Some(h), Some(l)) = (g.host.upgrade(), &leader) {
                if leading {
                    h.announce_leader(&g.record);
                } else {
                    // Every time, not only on a change: routing heals within
                    // one tick whatever else last wrote it.
                    h.leader_changed(&g.record, l, None);
                }
            }
            last_leader = leader;
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Takes a snapshot (after which Raft purges the log before it) when `Contents::snapshot_due`:
/// a drained queue's log then stops holding its whole history (openraft's own policy counts
/// entries, and an entry carries up to MAX_BATCH bodies). Each member decides for its own log.
async fn snapshot_when_due(group: Weak<QuorumGroup>) {
    loop {
        tokio::time::sleep(SNAPSHOT_CHECK).await;
        let Some(g) = group.upgrade() else { return };
        let due = g.contents.lock().snapshot_due(SNAPSHOT_LOG_BYTES);
        if due {
            // A snapshot already being built makes this a no-op; the next tick looks again.
            let _ = g.raft.trigger().snapshot().await;
        }
    }
}

/// Whether this member may take a publish now: it leads and has heard from a
/// majority lately (a leader cut off from its followers refuses at once).
fn can_accept(raft: &Raft<QueueRaft>) -> bool {
    let m = raft.metrics().borrow().clone();
    m.state == ServerState::Leader
        && m.millis_since_quorum_ack
            .is_none_or(|ms| ms <= QUORUM_SILENCE_MS)
}

/// Turns proposals into log entries, in order. At most `IN_FLIGHT` entries are being
/// committed at a time; what the live queue asks meanwhile (publishes, settles, returns)
/// travels in the next entry, so entries grow with the load instead of their number (each
/// costs a replication round, a commit and an apply).
async fn run_proposer(
    raft: Raft<QueueRaft>,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    waiting: mpsc::UnboundedSender<Waiting>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let (mut enqueue, mut senders, mut settle, mut returned) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(p) = next.take() {
            match p {
                Proposal::Enqueue(m, s) => {
                    enqueue.push(Carried(m));
                    senders.push(s);
                }
                Proposal::Settle(ids) => settle.extend(ids),
                Proposal::Return(id) => returned.push(id),
            }
            if enqueue.len() < MAX_BATCH && settle.len() + returned.len() < 4 * MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !enqueue.is_empty() && !can_accept(&raft) {
            tracing::debug!(
                messages = senders.len(),
                "quorum queue publishes refused: not a leader with a majority"
            );
            for s in senders.drain(..) {
                let _ = s.send(false);
            }
            enqueue.clear();
        }
        let cmd = match (enqueue.is_empty(), settle.is_empty(), returned.is_empty()) {
            (true, true, true) => continue,
            (false, true, true) => QueueCommand::Enqueue(enqueue),
            (true, false, true) => QueueCommand::Settle(settle),
            (true, true, false) => QueueCommand::Return(returned),
            _ => QueueCommand::Changes {
                settle,
                returned,
                enqueue,
            },
        };
        match raft.client_write_ff(cmd).await {
            Ok(responder) => {
                let _ = waiting.send((responder, senders, permit));
            }
            Err(_) => {
                for s in senders {
                    let _ = s.send(false);
                }
            }
        }
    }
}

/// Answers publishers, in order, once their entry is committed and applied.
async fn run_waiter(mut rx: mpsc::UnboundedReceiver<Waiting>) {
    while let Some((responder, senders, permit)) = rx.recv().await {
        let accepted: Vec<bool> = match tokio::time::timeout(COMMIT_WAIT, responder).await {
            Ok(Ok(Ok(written))) => {
                let reply: QueueReply = written.data;
                reply.accepted
            }
            // Not the leader any more, or the group stopped: refused.
            Ok(Ok(Err(_))) | Ok(Err(_)) => Vec::new(),
            Err(_) => {
                tracing::warn!(
                    messages = senders.len(),
                    "quorum queue publishes not committed within {COMMIT_WAIT:?}: refused"
                );
                Vec::new()
            }
        };
        for (i, s) in senders.into_iter().enumerate() {
            let _ = s.send(accepted.get(i).copied().unwrap_or(false));
        }
        drop(permit);
    }
}
