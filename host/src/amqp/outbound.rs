//! What a connection's writer task sends, and how much of it may wait. Producers (channels,
//! queues) hand over values; the writer encodes them in batches, so a queue never formats
//! frames while holding its lock.
//!
//! The hand-over is bounded by bytes, not by a channel capacity: a queue never blocks (it
//! delivers under its own lock), it asks [`OutboundTx::has_room`] first and stops delivering
//! to a connection whose socket does not drain. The writer gives the bytes back as the kernel
//! takes them and, once below the low mark, kicks the queues that stopped; that is RabbitMQ's
//! credit flow between a queue and a slow consumer's connection, in bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use amq_protocol::protocol::AMQPClass;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::base::message::Message;
use crate::queue::Queue;

/// Bytes a connection may have waiting for its socket before queues stop delivering to it.
/// Enough to keep a fast consumer's socket busy; one message always fits, however big.
pub const HIGH_WATER: u64 = 4 << 20;
/// Below this, stopped queues are asked to deliver again.
pub const LOW_WATER: u64 = 1 << 20;
/// What a method frame is counted as (its encoding is small and bounded).
const METHOD_COST: u64 = 64;

#[derive(Debug)]
pub enum Outbound {
    Method {
        channel: u16,
        method: AMQPClass,
    },
    Deliver {
        channel: u16,
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        redelivered: bool,
        msg: Arc<Message>,
    },
    GetOk {
        channel: u16,
        delivery_tag: u64,
        redelivered: bool,
        message_count: u32,
        msg: Arc<Message>,
    },
    Return {
        channel: u16,
        reply_code: u16,
        reply_text: &'static str,
        msg: Arc<Message>,
    },
    /// Flush what is queued, then close the socket.
    Close,
}

impl Outbound {
    /// The bytes this item is counted for while it waits.
    pub fn cost(&self) -> u64 {
        match self {
            Outbound::Deliver { msg, .. }
            | Outbound::GetOk { msg, .. }
            | Outbound::Return { msg, .. } => METHOD_COST + msg.size() as u64,
            Outbound::Method { .. } => METHOD_COST,
            Outbound::Close => 0,
        }
    }
}

/// The shared count of bytes waiting, and the queues waiting for it to fall.
#[derive(Default)]
struct Credit {
    pending: AtomicU64,
    stalled: Mutex<Vec<Weak<Queue>>>,
    /// Wakes tasks waiting in [`OutboundTx::room`].
    drained: Notify,
}

/// The sending half: cloned into every channel handle of the connection.
#[derive(Clone)]
pub struct OutboundTx {
    tx: mpsc::UnboundedSender<Outbound>,
    credit: Arc<Credit>,
}

/// The writer's half.
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Outbound>,
    credit: Arc<Credit>,
}

/// A new hand-over for one connection (or one relayed session).
pub fn outbound() -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let credit = Arc::new(Credit::default());
    (
        OutboundTx {
            tx,
            credit: credit.clone(),
        },
        OutboundRx { rx, credit },
    )
}

impl OutboundTx {
    /// Hands `item` to the writer, counting its bytes. Fails only when the writer is gone.
    pub fn send(&self, item: Outbound) -> Result<(), mpsc::error::SendError<Outbound>> {
        let cost = item.cost();
        self.credit.pending.fetch_add(cost, Ordering::SeqCst);
        self.tx.send(item).inspect_err(|_| {
            self.credit.pending.fetch_sub(cost, Ordering::SeqCst);
        })
    }

    /// Whether `queue` may deliver one more message here now. When not, the queue is noted
    /// and kicked once the writer has drained below the low mark.
    pub fn has_room(&self, queue: &Arc<Queue>) -> bool {
        if self.credit.pending.load(Ordering::SeqCst) < HIGH_WATER {
            return true;
        }
        {
            let mut stalled = self.credit.stalled.lock();
            let me = Arc::downgrade(queue);
            if !stalled.iter().any(|w| w.ptr_eq(&me)) {
                stalled.push(me);
            }
        }
        // Checked again after noting: the writer may have drained in between, and it takes
        // the list only after lowering the count, so one of the two sees the other.
        self.credit.pending.load(Ordering::SeqCst) < HIGH_WATER
    }

    /// Bytes handed over and not yet written (RabbitMQ's `send_pend`).
    pub fn pending_bytes(&self) -> u64 {
        self.credit.pending.load(Ordering::SeqCst)
    }

    /// Waits until fewer than [`LOW_WATER`] bytes wait, or the writer is gone.
    pub async fn room(&self) {
        loop {
            let drained = self.credit.drained.notified();
            if self.credit.pending.load(Ordering::SeqCst) < LOW_WATER || self.tx.is_closed() {
                return;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.tx.closed() => return,
            }
        }
    }
}

impl OutboundRx {
    pub async fn recv(&mut self) -> Option<Outbound> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.rx.try_recv().ok()
    }

    /// Gives back the bytes of items written (or dropped); below the low mark the queues
    /// that stopped for this connection deliver again.
    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let before = self.credit.pending.fetch_sub(bytes, Ordering::SeqCst);
        let after = before.saturating_sub(bytes);
        if after >= LOW_WATER {
            return;
        }
        self.credit.drained.notify_waiters();
        let stalled = std::mem::take(&mut *self.credit.stalled.lock());
        for q in stalled.into_iter().filter_map(|w| w.upgrade()) {
            q.kick();
        }
    }
}
