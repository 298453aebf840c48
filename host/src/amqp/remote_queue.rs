//! Consuming from, and basic.get on, queues owned by other cluster nodes:
//! the consuming side of `broker::proxy`. A session per consumer (and per
//! channel and queue for basic.get) lives on the owner; deliveries arrive
//! here over the link and go to the client with this channel's own delivery
//! tags; acks, nacks and rejects go back to the owner.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::delivery::{ChannelHandle, RemoteDelivery, RemoteSettle};
use crate::broker::Broker;
use crate::broker::message::Message;
use crate::broker::proxy::{DeliverBatch, Delivered, SettleRequest};
use crate::cluster::ClusterNode;
use crate::cluster::network::PeerError;

pub struct RemoteSession {
    pub id: String,
    pub owner: ClusterNode,
    pub channel: Arc<ChannelHandle>,
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
}

impl RemoteSession {
    pub fn new(
        broker: &Arc<Broker>,
        id: String,
        owner: ClusterNode,
        channel: Arc<ChannelHandle>,
        consumer_tag: Option<Arc<str>>,
        no_ack: bool,
    ) -> Arc<RemoteSession> {
        let (ops, rx) = mpsc::unbounded_channel();
        let s = Arc::new(RemoteSession {
            id: id.clone(),
            owner: owner.clone(),
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

    pub fn set_ready(&self) {
        self.ready.send_replace(true);
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
    owner: ClusterNode,
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
                if let Err(e) = peers
                    .call::<_, bool>(&owner, "proxy_settle", &req, wait)
                    .await
                {
                    failed("proxy_settle", e);
                }
            }
            Op::Get(no_ack, reply) => {
                let got = peers
                    .call::<_, Option<Delivered>>(
                        &owner,
                        "proxy_get",
                        &(session.clone(), no_ack),
                        wait,
                    )
                    .await
                    .map_err(|e| e.to_string());
                let _ = reply.send(got);
            }
            Op::Cancel => {
                if let Err(e) = peers
                    .call::<_, bool>(&owner, "proxy_cancel", &session, wait)
                    .await
                {
                    failed("proxy_cancel", e);
                }
            }
            Op::Close => {
                if let Err(e) = peers
                    .call::<_, bool>(&owner, "proxy_close", &session, wait)
                    .await
                {
                    failed("proxy_close", e);
                }
                return;
            }
        }
    }
}

impl Broker {
    /// Deliveries relayed by an owner node, for one of this node's channels.
    pub async fn accept_proxied(&self, batch: DeliverBatch) -> Result<(), String> {
        let Some(session) = self.remote_sessions.get(&batch.session) else {
            return Err(format!("unknown session {}", batch.session));
        };
        let mut ready = session.ready.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        if session.channel.is_closed() {
            return Err("channel closed".into());
        }
        let owner: Arc<dyn RemoteSettle> = session.clone();
        for item in batch.items {
            let Some(msg) = Message::from_wire_text(&item.message) else {
                continue;
            };
            session.channel.deliver_remote(RemoteDelivery {
                owner: owner.clone(),
                remote_tag: item.tag,
                consumer_tag: session.consumer_tag.clone(),
                redelivered: item.redelivered,
                message_count: item.message_count,
                msg: Arc::new(msg),
                no_ack: session.no_ack,
            });
        }
        Ok(())
    }

    /// The owner cancelled a proxied consumer (its queue was deleted).
    pub fn proxied_cancelled(&self, session: &str) {
        if let Some(s) = self.remote_sessions.remove(session)
            && let Some(tag) = &s.consumer_tag
        {
            s.channel.send_cancel(tag);
        }
    }
}
