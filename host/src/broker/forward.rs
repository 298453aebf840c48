//! Publishes to queues owned by other cluster nodes. One forwarder task per
//! peer keeps a channel's messages in order and batches whatever queued up
//! while the previous batch was on the wire; the owner enqueues them (and,
//! for persistent messages, writes them to disk) before it answers, so a
//! publisher confirm can wait for every owner.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::Broker;
use super::message::Message;
use crate::cluster::network::PeerError;
use crate::queue::PublishOutcome;

const BATCH: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
pub struct PublishItem {
    pub vhost: String,
    pub queues: Vec<String>,
    /// The message in the store's encoding, base64.
    pub message: String,
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

async fn forward(broker: &Broker, node: &str, batch: &[Item]) -> Vec<bool> {
    let Some(cluster) = broker.meta.cluster() else {
        return Vec::new();
    };
    let Some(peer) = cluster.node_by_name(node) else {
        tracing::warn!(
            node,
            "publish to a queue of a node that left the cluster dropped"
        );
        return Vec::new();
    };
    let items: Vec<PublishItem> = batch
        .iter()
        .map(|i| PublishItem {
            vhost: i.vhost.clone(),
            queues: i.queues.clone(),
            message: i.msg.to_wire_text(),
        })
        .collect();
    let answer: Result<Vec<bool>, PeerError> = cluster
        .peers
        .call(&peer, "queue_publish", &items, Duration::from_secs(10))
        .await;
    match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(node, error = %e, messages = batch.len(), "forwarding publishes failed");
            Vec::new()
        }
    }
}

impl Broker {
    /// The owner's half: enqueue forwarded messages into local queues; each
    /// answer is true once the message is in all its queues (on disk if persistent).
    pub async fn accept_forwarded(&self, items: Vec<PublishItem>) -> Vec<bool> {
        let mut answers = Vec::with_capacity(items.len());
        let mut ticket = None;
        // Quorum queues' answers: (item index, committed?).
        let mut replicating = Vec::new();
        for item in items {
            let Some(msg) = Message::from_wire_text(&item.message) else {
                answers.push(false);
                continue;
            };
            let msg = Arc::new(msg);
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
