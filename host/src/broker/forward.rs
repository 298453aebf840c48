//! Publishes to queues owned by other cluster nodes. One forwarder task per
//! peer keeps a channel's messages in order and batches whatever queued up
//! while the previous batch was on the wire; the owner enqueues them (and,
//! for persistent messages, writes them to disk) before it answers, so a
//! publisher confirm can wait for every owner.
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
use tokio::sync::{mpsc, oneshot};

use super::Broker;
use super::calls::Publish;
use super::forward_ledger::{Admission, answer_of};
use crate::base::carried::Carried;
use crate::base::message::Message;
use crate::queue::PublishOutcome;

const BATCH: usize = 256;

/// One forwarder's batch: `id` is unique for the sending node's run, so that a
/// repeat is recognised (see `forward_ledger`).
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishBatch {
    pub from: String,
    pub id: u64,
    pub items: Vec<PublishItem>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PublishItem {
    pub vhost: String,
    pub queues: Vec<String>,
    pub message: Carried,
}

struct Item {
    vhost: String,
    queues: Vec<String>,
    msg: Arc<Message>,
    done: Option<oneshot::Sender<bool>>,
}

#[derive(Default)]
pub struct Forwarders {
    peers: Mutex<HashMap<String, mpsc::UnboundedSender<Item>>>,
}

impl Forwarders {
    /// Queues `msg` for `queues` (in `vhost`) on `node`; `done` learns whether
    /// the owner accepted it.
    pub fn send(
        &self,
        broker: &Broker,
        node: &str,
        vhost: String,
        queues: Vec<String>,
        msg: Arc<Message>,
        done: Option<oneshot::Sender<bool>>,
    ) {
        let item = Item {
            vhost,
            queues,
            msg,
            done,
        };
        let mut peers = self.peers.lock();
        let tx = peers.entry(node.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(broker.me.clone(), node.to_string(), rx));
            tx
        });
        if let Err(mpsc::error::SendError(item)) = tx.send(item) {
            // The task ended (node shutting down): refuse rather than drop silently.
            if let Some(done) = item.done {
                let _ = done.send(false);
            }
            peers.remove(node);
        }
    }
}

async fn run(broker: Weak<Broker>, node: String, mut rx: mpsc::UnboundedReceiver<Item>) {
    let mut batch: Vec<Item> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let Some(b) = broker.upgrade() else { return };
        let accepted = forward(&b, &node, &batch).await;
        for (i, item) in batch.drain(..).enumerate() {
            if let Some(done) = item.done {
                let _ = done.send(accepted.get(i).copied().unwrap_or(false));
            }
        }
    }
}

/// Batch ids: from the start time in ms, shifted, so that a restarted node's ids do not meet
/// its previous run's in an owner's ledger.
fn next_batch_id() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| std::sync::atomic::AtomicU64::new(crate::base::clock::now_ms() << 20))
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn forward(broker: &Broker, node: &str, batch: &[Item]) -> Vec<bool> {
    let Some(cluster) = broker.meta.cluster() else {
        return Vec::new();
    };
    let request = Publish(PublishBatch {
        from: broker.config.node.clone(),
        id: next_batch_id(),
        items: batch
            .iter()
            .map(|i| PublishItem {
                vhost: i.vhost.clone(),
                queues: i.queues.clone(),
                message: Carried(i.msg.clone()),
            })
            .collect(),
    });
    let mut last_error = None;
    for attempt in 0..2 {
        let Some(peer) = cluster.node_by_name(node) else {
            tracing::warn!(
                node,
                "publish to a queue of a node that left the cluster dropped"
            );
            return Vec::new();
        };
        let answer = cluster
            .peers
            .call(&peer, &request, Duration::from_secs(10))
            .await;
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
        tracing::warn!(node, error = %e, messages = batch.len(), "forwarding publishes failed: refused");
    }
    Vec::new()
}

impl Broker {
    /// The owner's half of a batch: run it once, however often it is sent.
    pub async fn accept_forward_batch(self: &Arc<Self>, batch: PublishBatch) -> Vec<bool> {
        let n = batch.items.len();
        match self.forward_ledger.admit(&batch.from, batch.id) {
            Admission::Seen(answer) => answer_of(answer, n).await,
            Admission::First(done) => {
                // Its own task: a link that drops mid-run must not stop the run halfway,
                // its answer is what a repeat gets.
                let me = self.clone();
                let run = tokio::spawn(async move {
                    let answers = me.accept_forwarded(batch.items).await;
                    done.send_replace(Some(answers.clone()));
                    answers
                });
                run.await.unwrap_or_else(|_| vec![false; n])
            }
        }
    }

    /// Enqueues forwarded messages into local queues; each answer is true once
    /// the message is in all its queues (on disk if persistent).
    async fn accept_forwarded(&self, items: Vec<PublishItem>) -> Vec<bool> {
        let mut answers = Vec::with_capacity(items.len());
        let mut ticket = None;
        // Quorum queues' answers: (item index, committed?).
        let mut replicating = Vec::new();
        for item in items {
            let msg = item.message.into_message();
            let Some(vhost) = self.vhost(&item.vhost) else {
                answers.push(false);
                continue;
            };
            let id = self.next_message_id();
            let mut ok = true;
            for name in &item.queues {
                match vhost.queue(name) {
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
        if let (Some(t), Some(store)) = (ticket, &self.store)
            && store.wait_synced(t).await.is_err()
        {
            return answers.iter().map(|_| false).collect();
        }
        for (i, answer) in replicating {
            if !answer.await.unwrap_or(false) {
                answers[i] = false;
            }
        }
        answers
    }
}
