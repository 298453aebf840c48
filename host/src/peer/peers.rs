//! The client side: one multiplexed link per peer and lane, typed calls over them, and who
//! answered lately.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::call::{self, Call, Failure, PeerError};
use super::handshake::CONNECT_TIMEOUT;
use super::link::{Link, Lost, Pending, Reply};

/// A cluster member as Raft knows it: its node name and where its dist port is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterNode {
    /// `name@host`.
    pub name: String,
    /// `host:port` of the node's dist listener.
    pub addr: String,
}

impl fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// When each peer last answered: how `cluster_status` and quorum errors know
/// who is reachable.
#[derive(Default)]
pub struct Reachability {
    seen: Mutex<HashMap<String, Instant>>,
    /// Peers that answer but whose application is stopped (`stop_app`): reachable for Raft,
    /// not running for `cluster_status`, as in RabbitMQ.
    app_stopped: Mutex<HashSet<String>>,
}

impl Reachability {
    /// What a peer said of its application (in its ping answer or its own announcement).
    pub fn set_app_running(&self, node: &str, running: bool) {
        let mut stopped = self.app_stopped.lock();
        if running {
            stopped.remove(node);
        } else {
            stopped.insert(node.to_string());
        }
    }

    /// Reachable and serving clients.
    pub fn is_running(&self, node: &str) -> bool {
        self.is_up(node) && !self.app_stopped.lock().contains(node)
    }

    pub fn mark(&self, node: &str, ok: bool) {
        let mut seen = self.seen.lock();
        if ok {
            seen.insert(node.to_string(), Instant::now());
        } else {
            seen.remove(node);
        }
    }

    /// Answered within the last few heartbeats.
    pub fn is_up(&self, node: &str) -> bool {
        self.seen
            .lock()
            .get(node)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Link>>>>;

/// What a node needs to talk to its peers.
pub struct Peers {
    pub me: String,
    cookie: String,
    pub reachability: Reachability,
    links: Mutex<HashMap<String, Slot>>,
}

impl Peers {
    pub fn new(me: String, cookie: String) -> Arc<Peers> {
        Arc::new(Peers {
            me,
            cookie,
            reachability: Reachability::default(),
            links: Mutex::new(HashMap::new()),
        })
    }

    fn slot(&self, addr: &str, lane: &str) -> Slot {
        self.links
            .lock()
            .entry(format!("{lane} {addr}"))
            .or_default()
            .clone()
    }

    /// The live link on `lane` to `node`, dialled if there is none; `true` with a new one.
    async fn link(
        &self,
        lane: &str,
        node: &ClusterNode,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(Arc<Link>, bool), PeerError> {
        let slot = self.slot(&node.addr, lane);
        let mut held = tokio::time::timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| no_answer(node, timeout))?;
        if let Some(link) = held.as_ref().filter(|l| l.is_alive()) {
            return Ok((link.clone(), false));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let link = Link::open(
            &node.addr,
            &self.cookie,
            &self.me,
            left.min(CONNECT_TIMEOUT),
        )
        .await
        .map_err(|e| PeerError::Unreachable(format!("node {}: {e}", node.name)))?;
        let link = Arc::new(link);
        *held = Some(link.clone());
        Ok((link, true))
    }

    /// Sends `req` to `node` on the call's own lane and waits at most `timeout` for its answer.
    pub async fn call<C: Call>(
        &self,
        node: &ClusterNode,
        req: &C,
        timeout: Duration,
    ) -> Result<C::Answer, PeerError> {
        self.call_on(C::LANE, node, req, timeout).await
    }

    /// [`Peers::call`] on a lane of the caller's choosing: each quorum queue's Raft traffic
    /// has its own, so one queue's snapshot never delays another's heartbeats.
    pub async fn call_on<C: Call>(
        &self,
        lane: &str,
        node: &ClusterNode,
        req: &C,
        timeout: Duration,
    ) -> Result<C::Answer, PeerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let body = call::encode(req).map_err(PeerError::Remote)?;
        let mut timed_out = false;
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let (link, fresh) = match self.link(lane, node, deadline, timeout).await {
                Ok(l) => l,
                Err(e) => break Err(e),
            };
            match link.request(C::ID, body.clone(), deadline).await {
                Ok(reply) => break answer_of::<C>(reply, node),
                // A kept link that closes under us went stale (the peer restarted since):
                // the request is sent once more on a fresh connection before anyone is told
                // the peer is unreachable.
                Err(Lost::Closed) if !fresh && attempt == 1 => continue,
                Err(Lost::Closed) => {
                    break Err(PeerError::Unreachable(format!(
                        "node {}: the connection closed before {} was answered",
                        node.name,
                        C::NAME
                    )));
                }
                Err(Lost::Timeout) => {
                    timed_out = true;
                    break Err(no_answer(node, timeout));
                }
            }
        };
        match &result {
            // A slow answer on a Raft lane (whose deadlines are a heartbeat
            // interval) says the peer is busy, not that it is gone.
            Err(PeerError::Unreachable(_))
                if timed_out && (lane == "raft" || lane.starts_with("qq")) => {}
            Err(PeerError::Unreachable(_)) => self.reachability.mark(&node.name, false),
            _ => self.reachability.mark(&node.name, true),
        }
        result
    }

    /// Sends `req` to `node` now and returns what waits for its answer. Calls sent one
    /// after another by one task reach the peer in that order, so a caller can keep several
    /// in flight and still have them handled in order (the forwarder's batches). A link that
    /// turns out stale is not tried again: the caller knows whether a repeat is safe.
    pub async fn send<C: Call>(
        self: &Arc<Self>,
        node: &ClusterNode,
        req: &C,
        timeout: Duration,
    ) -> Result<Sent<C>, PeerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let body = call::encode(req).map_err(PeerError::Remote)?;
        let (link, _) = self.link(C::LANE, node, deadline, timeout).await?;
        match link.send(C::ID, body, deadline).await {
            Ok(pending) => Ok(Sent {
                peers: self.clone(),
                node: node.clone(),
                pending,
                deadline,
                timeout,
                call: PhantomData,
            }),
            Err(Lost::Closed) => Err(PeerError::Unreachable(format!(
                "node {}: the connection closed before {} was sent",
                node.name,
                C::NAME
            ))),
            Err(Lost::Timeout) => Err(no_answer(node, timeout)),
        }
    }
}

/// A call on the wire (see [`Peers::send`]).
pub struct Sent<C> {
    peers: Arc<Peers>,
    node: ClusterNode,
    pending: Pending,
    deadline: tokio::time::Instant,
    timeout: Duration,
    call: PhantomData<fn() -> C>,
}

impl<C: Call> Sent<C> {
    pub async fn answer(self) -> Result<C::Answer, PeerError> {
        let result = match self.pending.reply(self.deadline).await {
            Ok(reply) => answer_of::<C>(reply, &self.node),
            Err(Lost::Closed) => Err(PeerError::Unreachable(format!(
                "node {}: the connection closed before {} was answered",
                self.node.name,
                C::NAME
            ))),
            Err(Lost::Timeout) => Err(no_answer(&self.node, self.timeout)),
        };
        let ok = !matches!(result, Err(PeerError::Unreachable(_)));
        self.peers.reachability.mark(&self.node.name, ok);
        result
    }
}

fn answer_of<C: Call>(reply: Reply, node: &ClusterNode) -> Result<C::Answer, PeerError> {
    match reply {
        Reply::Answer(bytes) => call::decode::<C::Answer>(&bytes, C::NAME).map_err(|f| {
            PeerError::Remote(Failure::internal(format!(
                "bad answer to {} from node {}: {}",
                C::NAME,
                node.name,
                f.text
            )))
        }),
        Reply::Failure(f) => Err(PeerError::Remote(f)),
    }
}

fn no_answer(node: &ClusterNode, timeout: Duration) -> PeerError {
    PeerError::Unreachable(format!(
        "node {}: no answer within {} ms",
        node.name,
        timeout.as_millis()
    ))
}
