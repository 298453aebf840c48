//! Credit in bytes between queues and one destination that drains at its own pace (a client's
//! socket, or a consumer on another node). A queue never blocks: it asks `has_room` before it
//! delivers and stops when the destination is behind; the destination gives the bytes back as
//! it takes them and, below the low mark, kicks the queues that stopped. RabbitMQ's credit
//! flow between a queue and a slow consumer, counted in bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Queue;
use crate::base::message::Message;

/// Bytes a destination may have waiting before queues stop delivering to it. Enough to keep a
/// fast consumer's socket busy; one message always fits, however big.
pub const HIGH_WATER: u64 = 4 << 20;
/// Below this, stopped queues are asked to deliver again.
pub const LOW_WATER: u64 = 1 << 20;

/// What an item without a message is counted as (a method's encoding is small and bounded).
pub const METHOD_COST: u64 = 64;

/// What a message on its way out is counted as: its bytes and the method carrying it.
pub fn message_cost(msg: &Message) -> u64 {
    METHOD_COST + msg.size() as u64
}

/// The count of bytes waiting, and the queues waiting for it to fall.
#[derive(Default)]
pub struct Credit {
    pending: AtomicU64,
    stalled: Mutex<Vec<Weak<Queue>>>,
    drained: Notify,
}

impl Credit {
    /// Counts `bytes` handed over.
    pub fn charge(&self, bytes: u64) {
        self.pending.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Takes back a charge whose item never left (its receiver was gone).
    pub fn refund(&self, bytes: u64) {
        self.pending.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Whether `queue` may deliver one more message now. When not, the queue is noted and
    /// kicked once the destination has drained below the low mark.
    pub fn has_room(&self, queue: &Arc<Queue>) -> bool {
        if self.pending() < HIGH_WATER {
            return true;
        }
        {
            let mut stalled = self.stalled.lock();
            let me = Arc::downgrade(queue);
            if !stalled.iter().any(|w| w.ptr_eq(&me)) {
                stalled.push(me);
            }
        }
        // Checked again after noting: the destination may have drained in between, and it
        // takes the list only after lowering the count, so one of the two sees the other.
        self.pending() < HIGH_WATER
    }

    /// Bytes handed over and not yet taken (RabbitMQ's `send_pend`).
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    /// Resolves on the next fall below the low mark (see [`Credit::release`]).
    pub fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Gives back the bytes of items taken (or dropped); below the low mark the queues that
    /// stopped deliver again.
    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let before = self.pending.fetch_sub(bytes, Ordering::SeqCst);
        if before.saturating_sub(bytes) >= LOW_WATER {
            return;
        }
        self.drained.notify_waiters();
        let stalled = std::mem::take(&mut *self.stalled.lock());
        for q in stalled.into_iter().filter_map(|w| w.upgrade()) {
            q.kick();
        }
    }
}
