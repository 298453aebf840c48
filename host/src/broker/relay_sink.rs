//! The owner's side of a consumer (or basic.get) on another node: a delivery sink that keeps
//! what it was given for the relay to carry over the link, and the unacked deliveries until
//! the consuming node settles them. It is not a channel: it has no channel number, no
//! prefetch of its own (the consume's prefetch is the queue's) and speaks no frames.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::base::message::Message;
use crate::queue::credit::{Credit, message_cost};
use crate::queue::{DeliverySink, Entry, Queue, group_by_queue};

/// What the relay carries to the consuming node.
pub enum Relayed {
    Deliver {
        tag: u64,
        redelivered: bool,
        msg: Arc<Message>,
    },
    /// The queue cancelled the consumer (it was deleted).
    Cancelled,
}

impl Relayed {
    /// The bytes it is counted for until the consuming node has taken it.
    pub fn cost(&self) -> u64 {
        match self {
            Relayed::Deliver { msg, .. } => message_cost(msg),
            Relayed::Cancelled => 0,
        }
    }
}

/// A basic.get's answer, taken by the session right after the queue gave it.
pub struct Got {
    pub tag: u64,
    pub redelivered: bool,
    pub message_count: u32,
    pub msg: Arc<Message>,
}

#[derive(Default)]
struct State {
    next_tag: u64,
    /// Tag → the queue and the queue's message id.
    unacked: BTreeMap<u64, (Arc<Queue>, u64)>,
    got: Option<Got>,
}

pub struct RelaySink {
    tx: mpsc::UnboundedSender<Relayed>,
    credit: Arc<Credit>,
    closed: AtomicBool,
    state: Mutex<State>,
}

/// The relay's end: what to carry, and the credit to give back once carried.
pub struct RelayRx {
    pub rx: mpsc::UnboundedReceiver<Relayed>,
    pub credit: Arc<Credit>,
}

impl RelaySink {
    pub fn new() -> (Arc<RelaySink>, RelayRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Credit::default());
        let sink = RelaySink {
            tx,
            credit: credit.clone(),
            closed: AtomicBool::new(false),
            state: Mutex::new(State {
                next_tag: 1,
                ..State::default()
            }),
        };
        (Arc::new(sink), RelayRx { rx, credit })
    }

    /// Nothing more is delivered here (the session is closing).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// The basic.get answer the queue just gave, if any.
    pub fn take_got(&self) -> Option<Got> {
        self.state.lock().got.take()
    }

    /// Removes the named deliveries from the unacked set, grouped by queue (message ids).
    pub fn take(&self, tags: &[u64]) -> Vec<(Arc<Queue>, Vec<u64>)> {
        let mut st = self.state.lock();
        group_by_queue(tags.iter().filter_map(|t| st.unacked.remove(t)))
    }

    /// Everything still unacked, grouped by queue (for requeueing when the session ends).
    pub fn take_all(&self) -> Vec<(Arc<Queue>, Vec<u64>)> {
        let all = std::mem::take(&mut self.state.lock().unacked);
        group_by_queue(all.into_values())
    }

    fn next_tag(st: &mut State) -> u64 {
        let tag = st.next_tag;
        st.next_tag += 1;
        tag
    }
}

impl DeliverySink for RelaySink {
    fn can_deliver(&self, queue: &Arc<Queue>) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.credit.has_room(queue)
    }

    fn deliver(
        &self,
        queue: &Arc<Queue>,
        _consumer_tag: &Arc<str>,
        _consumer: u64,
        no_ack: bool,
        entry: &Entry,
    ) {
        let tag = {
            let mut st = self.state.lock();
            let tag = Self::next_tag(&mut st);
            if !no_ack {
                st.unacked.insert(tag, (queue.clone(), entry.id));
            }
            tag
        };
        let item = Relayed::Deliver {
            tag,
            redelivered: entry.redelivered,
            msg: entry.msg.clone(),
        };
        let cost = item.cost();
        self.credit.charge(cost);
        if self.tx.send(item).is_err() {
            // The relay is gone: the session is closing and requeues what is unacked.
            self.credit.refund(cost);
        }
    }

    fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        msg_id: u64,
        redelivered: bool,
        no_ack: bool,
        message_count: u32,
        msg: Arc<Message>,
    ) {
        let mut st = self.state.lock();
        let tag = Self::next_tag(&mut st);
        if !no_ack {
            st.unacked.insert(tag, (queue.clone(), msg_id));
        }
        st.got = Some(Got {
            tag,
            redelivered,
            message_count,
            msg,
        });
    }

    fn cancel(&self, _consumer_tag: &str) {
        // A closing session has already told the consuming node, or is telling it.
        if !self.closed.load(Ordering::SeqCst) {
            let _ = self.tx.send(Relayed::Cancelled);
        }
    }

    fn listed_as(&self) -> (u16, u64) {
        // Listed as no channel of no connection of this node: the client's channel is on the
        // consuming node, which lists it.
        (0, 0)
    }
}
