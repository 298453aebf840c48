//! Publishes to queues owned by other cluster nodes. One forwarder task per
//! peer keeps a channel's messages in order and batches whatever queued up
//! while earlier batches were on the wire (a few at once, so the owner's disk
//! write of one overlaps the next one's trip); the owner enqueues each batch in
//! the order it came and answers once its messages are on disk (persistent) or
//! committed (quorum), so a publisher confirm can wait for every owner.
//!
//! A batch whose answer does not come (a link that went stale when the peer
//! restarted, a partition that healed) is sent once more on a fresh link under
//! the same batch id; the owner answers a repeat from its ledger instead of
//! enqueueing it twice. Only then is it refused, so a nack means the owner did
//! not take the message, as far as the owner could be asked.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Broker;
use super::calls::Publish;
use super::forward_backlog::Backlog;
use super::forward_ledger::{Admission, answer_of};
use crate::base::carried::Carried;
use crate::base::message::Message;
use crate::peer::Sent;
use crate::queue::{PublishOutcome, Queue};

const BATCH: usize = 256;
/// Batches a forwarder keeps on the wire at once: the owner's fsync of one overlaps the
/// next one's trip, where one at a time waited for both in turn.
const IN_FLIGHT: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(10);

/// One forwarder's batch: `id` is unique for the sending node's run, so that a
/// repeat is recognised (see `forward_ledger`). Where its messages go is said once per
/// batch (`targets`), not once per message: a publisher mostly sends to the same queues.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishBatch {
    pub from: String,
    pub id: u64,
    pub targets: Vec<PublishTarget>,
    pub items: Vec<PublishItem>,
}

/// Queues of one vhost that messages of a batch go to.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishTarget {
    pub vhost: String,
    pub queues: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PublishItem {
    /// Index into the batch's `targets`.
    pub target: u32,
    pub message: Carried,
}

struct Item {
    vhost: Arc<str>,
    queues: Box<[Arc<str>]>,
    msg: Arc<Message>,
    done: Option<oneshot::Sender<bool>>,
    /// What it counts for in the peer's backlog until answered.
    cost: u64,
}

/// One peer's forwarder: its task's queue and the bytes sent to it and not answered yet.
struct Forwarder {
    tx: mpsc::UnboundedSender<Item>,
    backlog: Arc<Backlog>,
}

#[derive(Default)]
pub struct Forwarders {
    peers: Mutex<HashMap<String, Forwarder>>,
}

impl Forwarders {
    /// Queues `msg` for `queues` (in `vhost`) on `node`; `done` learns whether
    /// the owner accepted it. Returns the peer's backlog when this message took it past its
    /// high mark: the publishing connection then waits for it to drain before reading on.
    pub fn send(
        &self,
        broker: &Broker,
        node: &str,
        vhost: Arc<str>,
        queues: Box<[Arc<str>]>,
        msg: Arc<Message>,
        done: Option<oneshot::Sender<bool>>,
    ) -> Option<Arc<Backlog>> {
        // Counted as a delivery to a client is (`queue::credit`): body and method.
        let cost = crate::queue::credit::message_cost(&msg);
        let item = Item {
            vhost,
            queues,
            msg,
            done,
            cost,
        };
        let mut peers = self.peers.lock();
        if !peers.contains_key(node) {
            let (tx, rx) = mpsc::unbounded_channel();
            let backlog = Arc::new(Backlog::default());
            tokio::spawn(run(
                broker.me.clone(),
                node.to_string(),
                rx,
                backlog.clone(),
            ));
            peers.insert(node.to_string(), Forwarder { tx, backlog });
        }
        let f = peers.get(node)?;
        let full = f.backlog.charge(cost);
        match f.tx.send(item) {
            Ok(()) => full.then(|| f.backlog.clone()),
            Err(mpsc::error::SendError(item)) => {
                // The task ended (node shutting down): refuse rather than drop silently.
                f.backlog.release(cost);
                if let Some(done) = item.done {
                    let _ = done.send(false);
                }
                peers.remove(node);
                None
            }
        }
    }
}

async fn run(
    broker: Weak<Broker>,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Item>,
    backlog: Arc<Backlog>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // While every slot is taken, what comes in joins the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let Some(b) = broker.upgrade() else { return };
        let request = request(&b, &batch);
        // Sent here, in order; answered in its own task, so the next batch need not wait.
        let sent = send(&b, &node, &request).await;
        let node = node.clone();
        let backlog = backlog.clone();
        tokio::spawn(async move {
            let answered = match sent {
                Some(sent) => sent.answer().await.ok(),
                None => None,
            };
            let accepted = match answered {
                Some(a) => a,
                // Once more under the same batch id, on a fresh link if need be.
                None => forward(&b, &node, &request).await,
            };
            let mut answered_bytes = 0;
            for (i, item) in batch.into_iter().enumerate() {
                answered_bytes += item.cost;
                if let Some(done) = item.done {
                    let _ = done.send(accepted.get(i).copied().unwrap_or(false));
                }
            }
            backlog.release(answered_bytes);
            drop(slot);
        });
    }
}

/// Batch ids: from the start time in ms, shifted, so that a restarted node's ids do not meet
/// its previous run's in an owner's ledger.
fn next_batch_id() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| std::sync::atomic::AtomicU64::new(crate::base::clock::now_ms() << 20))
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn request(broker: &Broker, batch: &[Item]) -> Publish {
    // The first item to name each target; a publisher's batch mostly has one.
    let mut named: Vec<&Item> = Vec::new();
    let items = batch
        .iter()
        .map(|item| {
            let target = match named.iter().position(|n| same_target(n, item)) {
                Some(t) => t,
                None => {
                    named.push(item);
                    named.len() - 1
                }
            };
            PublishItem {
                target: target as u32,
                message: Carried(item.msg.clone()),
            }
        })
        .collect();
    let targets = named
        .iter()
        .map(|i| PublishTarget {
            vhost: i.vhost.to_string(),
            queues: i.queues.iter().map(|q| q.to_string()).collect(),
        })
        .collect();
    Publish(PublishBatch {
        from: broker.config.node.clone(),
        id: next_batch_id(),
        targets,
        items,
    })
}

fn same_target(a: &Item, b: &Item) -> bool {
    a.vhost == b.vhost && a.queues == b.queues
}

/// Puts a batch on the wire to `node`; `None` if it could not be (the caller then
/// [`forward`]s it, which tries a fresh link).
async fn send(broker: &Broker, node: &str, request: &Publish) -> Option<Sent<Publish>> {
    let cluster = broker.meta.cluster()?;
    let peer = cluster.node_by_name(node)?;
    cluster.peers.send(&peer, request, TIMEOUT).await.ok()
}

/// Sends a batch and waits for its answer, once more on a fresh link if the first try gets
/// none: the owner's ledger answers a repeat without enqueueing it twice.
async fn forward(broker: &Broker, node: &str, request: &Publish) -> Vec<bool> {
    let Some(cluster) = broker.meta.cluster() else {
        return Vec::new();
    };
    let mut last_error = None;
    for attempt in 0..2 {
        let Some(peer) = cluster.node_by_name(node) else {
            tracing::warn!(
                node,
                "publish to a queue of a node that left the cluster dropped"
            );
            return Vec::new();
        };
        let answer = cluster.peers.call(&peer, request, TIMEOUT).await;
        match answer {
            Ok(a) => return a,
            Err(e) => {
                if attempt == 0 {
                    tracing::info!(node, error = %e, "forwarding publishes failed; sending once more");
                }
                last_error = Some(e);
            }
        }
    }
    if let Some(e) = last_error {
        tracing::warn!(node, error = %e, messages = request.0.items.len(), "forwarding publishes failed: refused");
    }
    Vec::new()
}

impl Broker {
    /// The owner's half of a batch, run once however often it is sent. Its messages are
    /// enqueued before this returns, so batches taken in the order they came (see
    /// `peer::Router::on_ordered`) keep the publishers' order; the future answers once they
    /// are on disk (persistent) or committed (quorum queues).
    pub fn accept_forward_batch(
        self: &Arc<Self>,
        batch: PublishBatch,
    ) -> impl Future<Output = Vec<bool>> + Send + use<> {
        let n = batch.items.len();
        let run = match self.forward_ledger.admit(&batch.from, batch.id) {
            Admission::Seen(answer) => Err(answer),
            Admission::First(done) => {
                let enqueued = self.enqueue_forwarded(batch);
                // Its own task: a link that drops before the answer must not keep it from
                // the ledger, where a repeat of the batch finds it.
                let me = self.clone();
                Ok(tokio::spawn(async move {
                    let answers = enqueued.settled(&me).await;
                    done.send_replace(Some(answers.clone()));
                    answers
                }))
            }
        };
        async move {
            match run {
                Err(answer) => answer_of(answer, n).await,
                Ok(run) => run.await.unwrap_or_else(|_| vec![false; n]),
            }
        }
    }

    /// Enqueues forwarded messages into local queues.
    fn enqueue_forwarded(&self, batch: PublishBatch) -> Enqueued {
        // Each target's queues (by name, and served here or not), looked up once for the
        // batch; None for a vhost not here.
        type Served<'a> = Vec<(&'a str, Option<Arc<Queue>>)>;
        let targets: Vec<Option<Served>> = batch
            .targets
            .iter()
            .map(|t| {
                let vhost = self.vhost(&t.vhost)?;
                Some(
                    t.queues
                        .iter()
                        .map(|q| (q.as_str(), vhost.queue(q)))
                        .collect(),
                )
            })
            .collect();
        let mut answers = Vec::with_capacity(batch.items.len());
        let mut ticket = None;
        let mut replicating = Vec::new();
        for item in batch.items {
            let msg = item.message.into_message();
            let Some(Some(queues)) = targets.get(item.target as usize) else {
                answers.push(false);
                continue;
            };
            let id = self.next_message_id();
            let mut ok = true;
            for (name, q) in queues {
                match q {
                    Some(q) => match q.publish(msg.clone(), id) {
                        PublishOutcome::Enqueued(t) => ticket = ticket.max(t),
                        PublishOutcome::Rejected => ok = false,
                        PublishOutcome::Replicating(answer) => {
                            replicating.push((answers.len(), answer))
                        }
                    },
                    None => {
                        tracing::debug!(queue = %name, "forwarded publish for a queue not served here: refused");
                        ok = false
                    }
                }
            }
            answers.push(ok);
        }
        Enqueued {
            answers,
            ticket,
            replicating,
        }
    }
}

/// A forwarded batch in its queues, not yet on disk or committed everywhere it must be.
struct Enqueued {
    answers: Vec<bool>,
    /// The store ticket of its last persistent write.
    ticket: Option<u64>,
    /// Quorum queues' answers: (item index, committed?).
    replicating: Vec<(usize, oneshot::Receiver<bool>)>,
}

impl Enqueued {
    /// One answer per message: true once it is in all its queues (on disk if persistent).
    async fn settled(self, broker: &Broker) -> Vec<bool> {
        let mut answers = self.answers;
        if let (Some(t), Some(store)) = (self.ticket, &broker.store)
            && store.wait_synced(t).await.is_err()
        {
            return answers.iter().map(|_| false).collect();
        }
        for (i, answer) in self.replicating {
            if !answer.await.unwrap_or(false) {
                answers[i] = false;
            }
        }
        answers
    }
}
