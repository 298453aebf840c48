//! Consuming a queue through a node that does not own it. The consuming node
//! opens a session on the owner; the owner runs an ordinary consumer (or
//! basic.get) into a relay sink (`relay_sink.rs`) whose deliveries are relayed
//! back over the link, and settles acks, nacks and rejects as the consuming
//! node forwards them. Sessions of a node that stops answering are closed and
//! their unacked messages requeued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Broker;
use super::calls::{ProxyCancelled, ProxyDeliver};
use super::relay_sink::{RelayRx, RelaySink, Relayed};
use crate::base::carried::Carried;
use crate::base::error::AmqpError;
use crate::cluster::Cluster;
use crate::peer::{ClusterNode, PeerError};
use crate::queue::{ConsumeRequest, Queue};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumeSpec {
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    pub prefetch: u32,
}

/// Opens a session: for a consumer (`consume`) or for basic.get (`None`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenRequest {
    pub session: String,
    pub from_node: String,
    pub vhost: String,
    pub queue: String,
    pub consume: Option<ConsumeSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivered {
    pub tag: u64,
    pub redelivered: bool,
    pub message_count: u32,
    pub message: Carried,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverBatch {
    pub session: String,
    pub items: Vec<Delivered>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettleRequest {
    pub session: String,
    pub tags: Vec<u64>,
    /// None acks; Some(true) requeues; Some(false) rejects without requeue.
    pub requeue: Option<bool>,
}

/// The owner's side of one session.
struct Session {
    queue: Arc<Queue>,
    sink: Arc<RelaySink>,
    consumer: Option<u64>,
}

#[derive(Default)]
pub struct ProxySessions {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Broker {
    /// Opens a session on a local queue for another node.
    pub fn proxy_open(self: &Arc<Self>, req: OpenRequest) -> Result<(), AmqpError> {
        let existing = self.proxies.sessions.lock().get(&req.session).cloned();
        if let Some(s) = existing {
            if !s.queue.is_deleted() {
                return Ok(());
            }
            // Opened again after a quorum queue's leadership came back here:
            // the old session served the queue's previous live copy.
            self.proxy_close(&req.session);
        }
        let queue = self
            .vhost(&req.vhost)
            .and_then(|v| v.queue(&req.queue))
            .ok_or_else(|| {
                AmqpError::not_found(format!("no queue '{}' in vhost '{}'", req.queue, req.vhost))
            })?;
        let (sink, rx) = RelaySink::new();
        let mut session = Session {
            queue: queue.clone(),
            sink: sink.clone(),
            consumer: None,
        };
        match &req.consume {
            Some(spec) => {
                let consumer = queue.consume(ConsumeRequest {
                    tag: Arc::from(req.session.as_str()),
                    channel: sink,
                    no_ack: spec.no_ack,
                    exclusive: spec.exclusive,
                    priority: spec.priority,
                    prefetch: spec.prefetch,
                    // What a relayed consume asked for that the owner acts on.
                    arguments: priority_argument(spec.priority),
                    on_accepted: None,
                })?;
                session.consumer = Some(consumer);
                tokio::spawn(relay(
                    Arc::downgrade(self),
                    req.session.clone(),
                    req.from_node.clone(),
                    rx,
                ));
            }
            // A basic.get session: the answer is taken from the sink right away.
            None => drop(rx),
        }
        self.proxies
            .sessions
            .lock()
            .insert(req.session.clone(), Arc::new(session));
        tokio::spawn(watch_session(
            Arc::downgrade(self),
            req.session,
            req.from_node,
        ));
        Ok(())
    }

    /// basic.get for another node: the message, or None when the queue is empty.
    pub fn proxy_get(&self, session: &str, no_ack: bool) -> Result<Option<Delivered>, String> {
        let s = self
            .proxies
            .sessions
            .lock()
            .get(session)
            .cloned()
            .ok_or_else(|| format!("unknown session {session}"))?;
        if !s.queue.get(s.sink.as_ref(), no_ack) {
            return Ok(None);
        }
        Ok(s.sink.take_got().map(|g| Delivered {
            tag: g.tag,
            redelivered: g.redelivered,
            message_count: g.message_count,
            message: Carried(g.msg),
        }))
    }

    pub fn proxy_settle(&self, req: SettleRequest) {
        let Some(s) = self.proxies.sessions.lock().get(&req.session).cloned() else {
            return;
        };
        for (q, ids) in s.sink.take(&req.tags) {
            match req.requeue {
                None => q.ack(&ids),
                Some(requeue) => q.reject(&ids, requeue),
            }
        }
    }

    /// Stops a session's consumer; its unacked messages stay settleable.
    pub fn proxy_cancel(&self, session: &str) {
        let Some(s) = self.proxies.sessions.lock().get(session).cloned() else {
            return;
        };
        if let Some(c) = s.consumer {
            s.queue.cancel(c);
        }
    }

    /// Ends a session: its consumer goes, its unacked messages are requeued.
    pub fn proxy_close(&self, session: &str) {
        let Some(s) = self.proxies.sessions.lock().remove(session) else {
            return;
        };
        s.sink.close();
        if let Some(c) = s.consumer {
            s.queue.cancel(c);
        }
        for (q, ids) in s.sink.take_all() {
            q.reject(&ids, true);
        }
    }
}

/// Deliveries a relay batch carries at most.
const RELAY_BATCH: usize = 256;
/// Batches a relay keeps on the wire at once: the consuming node hands one to its client while
/// the next is on its way, where one at a time left both nodes waiting for each other.
const RELAY_IN_FLIGHT: usize = 4;
/// How long a relay batch may wait for the consuming node's answer.
const RELAY_TIMEOUT: Duration = Duration::from_secs(10);

type Answer = std::pin::Pin<Box<dyn Future<Output = Result<bool, PeerError>> + Send>>;

/// A batch on the wire: its answer, and the bytes it is counted for until then.
struct InFlight {
    answer: Answer,
    cost: u64,
}

/// Carries a consumer session's deliveries to the consuming node, in order, batching what
/// queued up meanwhile, a few batches at once (the consuming node takes them in the order
/// they came, see `peer::Router::on_ordered`). The bytes of a batch count against the
/// session's hand-over until the consuming node has taken it and says its client's
/// connection has room, so a consumer that does not read stops the owner's queue from
/// delivering to it, as a local one would. The first batch travels alone: the consuming
/// node holds it until its client has the consume-ok, and later ones must not pass it.
async fn relay(broker: Weak<Broker>, session: String, node: String, rx: RelayRx) {
    let RelayRx { mut rx, credit } = rx;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut first = true;
    let mut ending = false;
    let mut open = true;
    loop {
        let room = !ending && open && in_flight.len() < if first { 1 } else { RELAY_IN_FLIGHT };
        if in_flight.is_empty() && !room {
            break;
        }
        tokio::select! {
            biased;
            answered = oldest(&mut in_flight), if !in_flight.is_empty() => {
                let Some(done) = in_flight.pop_front() else { continue };
                first = false;
                match answered {
                    Ok(true) => {}
                    Ok(false) => {
                        if !wait_for_room(&broker, &session, &node).await {
                            return;
                        }
                    }
                    Err(_) => {
                        // The consuming node is gone: give its messages back to the queue.
                        if let Some(b) = broker.upgrade() {
                            b.proxy_close(&session);
                        }
                        return;
                    }
                }
                credit.release(done.cost);
            }
            next = rx.recv(), if room => {
                let Some(next) = next else {
                    open = false;
                    continue;
                };
                let mut taken = vec![next];
                while taken.len() < RELAY_BATCH && !matches!(taken.last(), Some(Relayed::Cancelled)) {
                    match rx.try_recv() {
                        Ok(r) => taken.push(r),
                        Err(_) => break,
                    }
                }
                let cost = taken.iter().map(Relayed::cost).sum();
                let mut items = Vec::with_capacity(taken.len());
                let mut cancelled = false;
                for r in taken {
                    match r {
                        Relayed::Deliver { tag, redelivered, msg } => items.push(Delivered {
                            tag,
                            redelivered,
                            message_count: 0,
                            message: Carried(msg),
                        }),
                        Relayed::Cancelled => cancelled = true,
                    }
                }
                let Some((_, cluster, peer)) = peer_of(&broker, &session, &node) else { return };
                let batch = ProxyDeliver(DeliverBatch { session: session.clone(), items });
                let answer: Answer = match cluster.peers.send(&peer, &batch, RELAY_TIMEOUT).await {
                    Ok(sent) => Box::pin(sent.answer()),
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                };
                in_flight.push_back(InFlight { answer, cost });
                // A cancel ends the session once every batch before it is answered.
                ending |= cancelled;
            }
        }
    }
    if ending && let Some((b, cluster, peer)) = peer_of(&broker, &session, &node) {
        let _ = cluster
            .peers
            .call(
                &peer,
                &ProxyCancelled(session.clone()),
                Duration::from_secs(5),
            )
            .await;
        b.proxy_close(&session);
    }
}

/// The answer of the oldest batch on the wire (never resolves when there is none).
async fn oldest(in_flight: &mut VecDeque<InFlight>) -> Result<bool, PeerError> {
    match in_flight.front_mut() {
        Some(f) => f.answer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The broker, its cluster and the consuming node, while all are there; closes the session
/// when the node left the cluster.
fn peer_of(
    broker: &Weak<Broker>,
    session: &str,
    node: &str,
) -> Option<(Arc<Broker>, Arc<Cluster>, ClusterNode)> {
    let b = broker.upgrade()?;
    let cluster = b.meta.cluster()?;
    match cluster.node_by_name(node) {
        Some(peer) => Some((b, cluster, peer)),
        None => {
            b.proxy_close(session);
            None
        }
    }
}

/// Asks with empty batches until the consuming node's client has room again; false when the
/// session ended meanwhile (closed here, or the node went away).
async fn wait_for_room(broker: &Weak<Broker>, session: &str, node: &str) -> bool {
    loop {
        let Some((b, cluster, peer)) = peer_of(broker, session, node) else {
            return false;
        };
        if !b.proxies.sessions.lock().contains_key(session) {
            return false;
        }
        let probe = ProxyDeliver(DeliverBatch {
            session: session.to_string(),
            items: Vec::new(),
        });
        match cluster.peers.call(&peer, &probe, RELAY_TIMEOUT).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => {
                b.proxy_close(session);
                return false;
            }
        }
    }
}

/// Closes a session whose consuming node stopped answering.
async fn watch_session(broker: Weak<Broker>, session: String, node: String) {
    let mut misses = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(b) = broker.upgrade() else { return };
        if !b.proxies.sessions.lock().contains_key(&session) {
            return;
        }
        let up = b
            .meta
            .cluster()
            .is_some_and(|c| c.peers.reachability.is_up(&node));
        misses = if up { 0 } else { misses + 1 };
        if misses >= 3 {
            tracing::info!(
                session,
                node,
                "closing the session of a node that went away"
            );
            b.proxy_close(&session);
            return;
        }
    }
}

fn priority_argument(priority: i32) -> amq_protocol::types::FieldTable {
    let mut t = amq_protocol::types::FieldTable::default();
    if priority != 0 {
        t.insert(
            "x-priority".into(),
            amq_protocol::types::AMQPValue::LongInt(priority),
        );
    }
    t
}
