//! What a connection's writer task sends, and how much of it may wait. Producers (channels,
//! queues) hand over values; the writer encodes them in batches, so a queue never formats
//! frames while holding its lock.
//!
//! The hand-over is bounded by bytes, not by a channel capacity (`queue::credit`): a queue
//! asks [`OutboundTx::has_room`] first and stops delivering to a connection whose socket does
//! not drain; the writer gives the bytes back as the kernel takes them.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;
use tokio::sync::mpsc;

use crate::base::message::Message;
use crate::queue::Queue;
use crate::queue::credit::{Credit, LOW_WATER, METHOD_COST, message_cost};

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
            | Outbound::Return { msg, .. } => message_cost(msg),
            Outbound::Method { .. } => METHOD_COST,
            Outbound::Close => 0,
        }
    }
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
        self.credit.charge(cost);
        self.tx.send(item).inspect_err(|_| self.credit.refund(cost))
    }

    /// Whether `queue` may deliver one more message here now (see [`Credit::has_room`]).
    pub fn has_room(&self, queue: &Arc<Queue>) -> bool {
        self.credit.has_room(queue)
    }

    /// Bytes handed over and not yet written (RabbitMQ's `send_pend`).
    pub fn pending_bytes(&self) -> u64 {
        self.credit.pending()
    }

    /// Waits until fewer than [`LOW_WATER`] bytes wait, or the writer is gone.
    pub async fn room(&self) {
        loop {
            let drained = self.credit.drained();
            if self.credit.pending() < LOW_WATER || self.tx.is_closed() {
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

    /// Nothing waits to be written: the writer is about to wait.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Gives back the bytes of items written (or dropped); below the low mark the queues
    /// that stopped for this connection deliver again.
    pub fn release(&self, bytes: u64) {
        self.credit.release(bytes);
    }
}
