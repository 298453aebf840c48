//! One connection to a peer, shared by every caller: requests are written as they come, each
//! with its own correlation id, and answers are handed to whoever waits for that id. A caller
//! that gives up (a timeout, a dropped future) only forgets its id; the link goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::call::Failure;
use super::frame::{self, Frame, Kind};
use super::handshake::{self, DistError, PEER_PROTOCOL};

/// Requests queued for the writer before callers wait for room: backpressure on a peer that
/// does not read.
const OUTBOX: usize = 1024;

pub(super) enum Reply {
    Answer(Bytes),
    Failure(Failure),
}

/// Why a request got no reply.
pub(super) enum Lost {
    /// The connection closed or broke before the answer came.
    Closed,
    /// No answer before the deadline.
    Timeout,
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

pub(super) struct Link {
    outbox: mpsc::Sender<Frame>,
    waiting: Waiting,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
}

impl Link {
    /// Dials `addr` and authenticates as peer `me`.
    pub(super) async fn open(
        addr: &str,
        cookie: &str,
        me: &str,
        timeout: std::time::Duration,
    ) -> Result<Link, DistError> {
        let conn = handshake::connect(
            addr,
            cookie,
            &format!("peer:{me}"),
            Some(PEER_PROTOCOL),
            timeout,
        )
        .await?;
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let waiting: Waiting = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        tokio::spawn(write_frames(conn.writer, rx, alive.clone()));
        tokio::spawn(read_answers(conn.reader, waiting.clone(), alive.clone()));
        Ok(Link {
            outbox,
            waiting,
            next_id: AtomicU64::new(1),
            alive,
        })
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sends one request and waits for its reply until `deadline`.
    pub(super) async fn request(
        &self,
        call: u16,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, Lost> {
        self.send(call, body, deadline).await?.reply(deadline).await
    }

    /// Writes one request into the link's outbox and returns what waits for its reply:
    /// requests sent one after another by one task reach the peer in that order.
    pub(super) async fn send(
        &self,
        call: u16,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Pending, Lost> {
        if !self.is_alive() {
            return Err(Lost::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(id, tx);
        // Forgets the id however this ends, so a late answer finds nobody.
        let forget = Forget(self.waiting.clone(), id);
        // The reader may have closed between the first check and the insert.
        if !self.is_alive() {
            return Err(Lost::Closed);
        }
        let frame = Frame {
            kind: Kind::Request,
            id,
            call,
            body,
        };
        let sent = tokio::time::timeout_at(deadline, self.outbox.send(frame)).await;
        match sent {
            Err(_) => Err(Lost::Timeout),
            Ok(Err(_)) => Err(Lost::Closed),
            Ok(Ok(())) => Ok(Pending {
                rx,
                _forget: forget,
            }),
        }
    }
}

/// A request on the wire whose reply has not come yet.
pub(super) struct Pending {
    rx: oneshot::Receiver<Reply>,
    _forget: Forget,
}

impl Pending {
    pub(super) async fn reply(self, deadline: tokio::time::Instant) -> Result<Reply, Lost> {
        match tokio::time::timeout_at(deadline, self.rx).await {
            Err(_) => Err(Lost::Timeout),
            // The reader dropped every waiter: the connection is gone.
            Ok(Err(_)) => Err(Lost::Closed),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}

struct Forget(Waiting, u64);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

async fn write_frames(writer: OwnedWriteHalf, rx: mpsc::Receiver<Frame>, alive: Arc<AtomicBool>) {
    if let Err(e) = frame::pump(writer, rx).await {
        tracing::debug!("peer link write failed: {e}");
    }
    alive.store(false, Ordering::Release);
}

async fn read_answers(reader: BufReader<OwnedReadHalf>, waiting: Waiting, alive: Arc<AtomicBool>) {
    let mut r = reader;
    loop {
        let f = match frame::read(&mut r).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("peer link read failed: {e}");
                break;
            }
        };
        let reply = match f.kind {
            Kind::Answer => Reply::Answer(f.body),
            Kind::Failure => Reply::Failure(
                super::call::decode::<Failure>(&f.body, "failure").unwrap_or_else(|e| e),
            ),
            Kind::Request => {
                tracing::warn!("a peer sent a request on a link it did not open: link closed");
                break;
            }
        };
        if let Some(tx) = waiting.lock().remove(&f.id) {
            let _ = tx.send(reply);
        }
    }
    alive.store(false, Ordering::Release);
    // Every waiter learns at once that no answer will come.
    waiting.lock().clear();
}
