//! Consuming from, and basic.get on, queues owned by other cluster nodes:
//! the consuming side of `broker::proxy`. A session per consumer (and per
//! channel and queue for basic.get) lives on the owner; deliveries arrive
//! here over the link and go to the client with this channel's own delivery
//! tags; acks, nacks and rejects go back to the owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::Broker;
use super::channels::{ClientChannel, RemoteDelivery, RemoteSettle};
use crate::broker::calls::{ProxyCancel, ProxyClose, ProxyGet, ProxyOpen, ProxySettle};
use crate::broker::proxy::{DeliverBatch, Delivered, OpenRequest, SettleRequest};
use crate::cluster::ClusterNode;
use crate::peer::PeerError;

pub struct RemoteSession {
    pub id: String,
    /// The node serving the queue; a quorum queue's session follows its leader.
    owner: Arc<Mutex<ClusterNode>>,
    /// What opened the session on the owner, to open it again on a new leader.
    open: Mutex<Option<OpenRequest>>,
    /// Bumped when the session moves to another node: settles of deliveries
    /// made before the move are dropped (the new leader redelivers those).
    epoch: AtomicU64,
    pub channel: Arc<dyn ClientChannel>,
    /// The client's consumer tag; None for a basic.get session.
    pub consumer_tag: Option<Arc<str>>,
    pub no_ack: bool,
    broker: Weak<Broker>,
    /// Deliveries wait until the client has its consume-ok.
    ready: watch::Sender<bool>,
    /// Requests to the owner, sent one after another so that, as on a local
    /// queue, a nack's requeue happens before the channel's next basic.get.
    ops: mpsc::UnboundedSender<Op>,
}

enum Op {
    Settle(SettleRequest),
    /// Open the session again on its (new) owner.
    Reopen(OpenRequest),
    Get(bool, oneshot::Sender<Result<Option<Delivered>, String>>),
    Cancel,
    Close,
}

#[derive(Default)]
pub struct RemoteSessions {
    map: Mutex<HashMap<String, Arc<RemoteSession>>>,
}

impl RemoteSessions {
    pub fn get(&self, id: &str) -> Option<Arc<RemoteSession>> {
        self.map.lock().get(id).cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<RemoteSession>> {
        self.map.lock().remove(id)
    }

    /// A quorum queue's leader is now `node`: this node's sessions on that
    /// queue move there (consumers keep their tags; what they held unacked is
    /// redelivered by the new leader).
    pub fn follow(&self, _broker: &Broker, vhost: &str, queue: &str, node: ClusterNode) {
        let sessions: Vec<Arc<RemoteSession>> = self
            .map
            .lock()
            .values()
            .filter(|s| {
                s.open
                    .lock()
                    .as_ref()
                    .is_some_and(|o| o.vhost == vhost && o.queue == queue)
            })
            .cloned()
            .collect();
        for s in sessions {
            {
                let mut owner = s.owner.lock();
                if owner.name == node.name {
                    continue;
                }
                *owner = node.clone();
            }
            s.epoch.fetch_add(1, Ordering::SeqCst);
            let reopen = s.open.lock().clone();
            if let Some(req) = reopen {
                tracing::info!(session = %s.id, queue, leader = %node.name, "consumer follows the quorum queue's leader");
                let _ = s.ops.send(Op::Reopen(req));
            }
        }
    }
}

/// A delivery's way back to its session: settles made for a delivery from
/// before the session moved to a new leader are dropped.
struct EpochSettle {
    session: Arc<RemoteSession>,
    epoch: u64,
}

impl RemoteSettle for EpochSettle {
    fn settle(&self, tags: Vec<u64>, requeue: Option<bool>) {
        if self.session.epoch.load(Ordering::SeqCst) == self.epoch {
            self.session.settle(tags, requeue);
        }
    }
}

impl RemoteSession {
    pub fn new(
        broker: &Arc<Broker>,
        id: String,
        owner: ClusterNode,
        channel: Arc<dyn ClientChannel>,
        consumer_tag: Option<Arc<str>>,
        no_ack: bool,
    ) -> Arc<RemoteSession> {
        let (ops, rx) = mpsc::unbounded_channel();
        let owner = Arc::new(Mutex::new(owner));
        let s = Arc::new(RemoteSession {
            id: id.clone(),
            owner: owner.clone(),
            open: Mutex::new(None),
            epoch: AtomicU64::new(0),
            channel,
            consumer_tag,
            no_ack,
            broker: Arc::downgrade(broker),
            ready: watch::channel(false).0,
            ops,
        });
        broker
            .remote_sessions
            .map
            .lock()
            .insert(id.clone(), s.clone());
        tokio::spawn(run_ops(Arc::downgrade(broker), id, owner, rx));
        s
    }

    /// basic.get through the owner, in order with this session's settles.
    pub async fn get(&self, no_ack: bool) -> Result<Option<Delivered>, String> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Get(no_ack, tx))
            .map_err(|_| "session closed".to_string())?;
        rx.await.map_err(|_| "session closed".to_string())?
    }

    /// The session is open on its owner: deliveries may flow. `open` is kept
    /// to open it again on a quorum queue's next leader.
    pub fn set_ready(&self, open: OpenRequest) {
        *self.open.lock() = Some(open);
        self.ready.send_replace(true);
    }

    /// Where settles of a delivery made now go.
    pub fn settler(self: &Arc<Self>) -> Arc<dyn RemoteSettle> {
        Arc::new(EpochSettle {
            session: self.clone(),
            epoch: self.epoch.load(Ordering::SeqCst),
        })
    }

    pub fn owner(&self) -> ClusterNode {
        self.owner.lock().clone()
    }

    /// Hands relayed deliveries to the client's channel (dropped if it has closed: the owner
    /// requeues what is unacked when the session ends).
    fn deliver(self: &Arc<Self>, items: Vec<Delivered>) {
        if self.channel.is_closed() {
            return;
        }
        let owner = self.settler();
        for item in items {
            self.channel.deliver_remote(RemoteDelivery {
                owner: owner.clone(),
                remote_tag: item.tag,
                consumer_tag: self.consumer_tag.clone(),
                redelivered: item.redelivered,
                message_count: item.message_count,
                msg: item.message.into_message(),
                no_ack: self.no_ack,
            });
        }
    }

    /// Stops the consumer on the owner; unacked deliveries stay settleable.
    pub fn cancel(self: &Arc<Self>) {
        let _ = self.ops.send(Op::Cancel);
    }

    /// Ends the session: the owner requeues whatever is still unacked.
    pub fn close(self: &Arc<Self>) {
        if let Some(b) = self.broker.upgrade() {
            b.remote_sessions.remove(&self.id);
        }
        let _ = self.ops.send(Op::Close);
    }
}

impl RemoteSettle for RemoteSession {
    fn settle(&self, tags: Vec<u64>, requeue: Option<bool>) {
        let _ = self.ops.send(Op::Settle(SettleRequest {
            session: self.id.clone(),
            tags,
            requeue,
        }));
    }
}

async fn run_ops(
    broker: Weak<Broker>,
    session: String,
    owner_now: Arc<Mutex<ClusterNode>>,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    let mut next: Option<Op> = None;
    loop {
        let op = match next.take() {
            Some(op) => op,
            None => match rx.recv().await {
                Some(op) => op,
                None => return,
            },
        };
        let Some(b) = broker.upgrade() else { return };
        let Some(cluster) = b.meta.cluster() else {
            return;
        };
        let owner = owner_now.lock().clone();
        let wait = Duration::from_secs(10);
        let peers = &cluster.peers;
        let failed = |command: &str, e: PeerError| {
            tracing::warn!(session = %session, owner = %owner.name, command, error = %e, "proxied queue request failed");
        };
        match op {
            Op::Settle(mut req) => {
                // Acks that queued up meanwhile travel together.
                while let Ok(more) = rx.try_recv() {
                    match more {
                        Op::Settle(m) if m.requeue == req.requeue && req.tags.len() < 4096 => {
                            req.tags.extend(m.tags)
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                if let Err(e) = peers.call(&owner, &ProxySettle(req), wait).await {
                    failed("proxy_settle", e);
                }
            }
            Op::Get(no_ack, reply) => {
                let get = ProxyGet {
                    session: session.clone(),
                    no_ack,
                };
                let got = peers
                    .call(&owner, &get, wait)
                    .await
                    .map_err(|e| e.to_string());
                let _ = reply.send(got);
            }
            Op::Reopen(req) => {
                let req = ProxyOpen(req);
                // The new leader may need a moment to serve the queue.
                let mut opened = false;
                for _ in 0..20 {
                    if owner_now.lock().name != owner.name {
                        break;
                    }
                    match peers.call(&owner, &req, wait).await {
                        Ok(_) => {
                            opened = true;
                            break;
                        }
                        Err(e) => {
                            failed("proxy_open", e);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                if !opened && owner_now.lock().name == owner.name {
                    b.proxied_cancelled(&session);
                }
            }
            Op::Cancel => {
                if let Err(e) = peers
                    .call(&owner, &ProxyCancel(session.clone()), wait)
                    .await
                {
                    failed("proxy_cancel", e);
                }
            }
            Op::Close => {
                if let Err(e) = peers.call(&owner, &ProxyClose(session.clone()), wait).await {
                    failed("proxy_close", e);
                }
                return;
            }
        }
    }
}

impl Broker {
    /// Deliveries relayed by an owner node, for one of this node's channels: handed to the
    /// channel before this returns when the client already has its consume-ok, so batches
    /// taken in the order they came (see `peer::Router::on_ordered`) keep the queue's order.
    /// The future says true once the channel's connection has room for more; false after a
    /// few seconds without (the owner asks again with an empty batch, and delivers nothing
    /// more meanwhile).
    pub fn accept_proxied(
        &self,
        batch: DeliverBatch,
    ) -> impl Future<Output = Result<bool, String>> + Send + use<> {
        let session = self.remote_sessions.get(&batch.session);
        // What waits for the client's consume-ok: nothing, once the client has it.
        let waiting = match &session {
            Some(s) if *s.ready.borrow() => {
                s.deliver(batch.items);
                None
            }
            _ => Some(batch.items),
        };
        async move {
            let Some(session) = session else {
                return Err(format!("unknown session {}", batch.session));
            };
            if let Some(items) = waiting {
                // The owner sends a session's first batch alone and waits for this answer.
                let mut ready = session.ready.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
                session.deliver(items);
            }
            if session.channel.is_closed() {
                return Err("channel closed".into());
            }
            // Under the caller's 10 s timeout, so that a slow reader is not taken for a dead node.
            let room = tokio::time::timeout(Duration::from_secs(3), session.channel.room()).await;
            Ok(room.is_ok())
        }
    }

    /// The owner cancelled a proxied consumer (its queue was deleted).
    pub fn proxied_cancelled(&self, session: &str) {
        if let Some(s) = self.remote_sessions.remove(session)
            && let Some(tag) = &s.consumer_tag
        {
            s.channel.cancel(tag);
        }
    }
}
