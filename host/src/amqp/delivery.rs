//! The part of a channel that queues deliver into: delivery-tag assignment, the unacked set,
//! channel-wide prefetch and flow. Queues call `deliver` while holding their own lock, so this
//! lock is only ever taken after a queue's (never the other way round).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use amq_protocol::protocol::{AMQPClass, basic};
use parking_lot::Mutex;

use super::outbound::{Outbound, OutboundTx};
use crate::amqp::short_string::short;
use crate::base::message::Message;
pub use crate::broker::channels::{ClientChannel, RemoteDelivery, RemoteSettle};
use crate::queue::{DeliverySink, Entry, Queue};

/// One unacknowledged delivery of this channel.
pub struct Unacked {
    /// The local queue it came from (`None` for a delivery proxied from another node).
    pub queue: Option<Arc<Queue>>,
    /// For a proxied delivery: who settles it, and its delivery tag there.
    pub remote: Option<(Arc<dyn RemoteSettle>, u64)>,
    pub msg_id: u64,
    /// Consumer id within the queue; None for basic.get.
    pub consumer: Option<u64>,
    /// When it was sent (ms since the epoch), for consumer_timeout.
    pub sent_at: u64,
}

struct DeliveryState {
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// basic.qos global=true: limit of unacked deliveries over the whole channel (0 = none).
    global_prefetch: u32,
    /// Unacked deliveries counted against the global limit (not basic.get ones).
    global_unacked: u32,
}

/// Groups deliveries by queue so that each queue is locked once for a batch of
/// acks; proxied deliveries are settled with their owner node (`requeue` as in
/// [`RemoteSettle::settle`]).
pub fn group_by_queue(items: Vec<Unacked>, requeue: Option<bool>) -> Vec<(Arc<Queue>, Vec<u64>)> {
    let mut local = Vec::new();
    let mut remote: Vec<(Arc<dyn RemoteSettle>, Vec<u64>)> = Vec::new();
    for u in items {
        if let Some((owner, tag)) = u.remote {
            match remote.iter_mut().find(|(o, _)| Arc::ptr_eq(o, &owner)) {
                Some((_, tags)) => tags.push(tag),
                None => remote.push((owner, vec![tag])),
            }
        } else if let Some(queue) = u.queue {
            local.push((queue, u.msg_id));
        }
    }
    for (owner, tags) in remote {
        owner.settle(tags, requeue);
    }
    crate::queue::group_by_queue(local)
}

pub struct ChannelHandle {
    pub id: u16,
    pub connection: u64,
    pub out: OutboundTx,
    /// Whether the client understands basic.cancel from the server.
    pub cancel_notify: bool,
    flow_active: AtomicBool,
    closed: AtomicBool,
    state: Mutex<DeliveryState>,
    /// For listings: basic.qos global=false, confirm and tx mode.
    pub prefetch: AtomicU16,
    pub confirm: AtomicBool,
    pub transactional: AtomicBool,
}

impl ChannelHandle {
    pub fn new(id: u16, connection: u64, out: OutboundTx, cancel_notify: bool) -> ChannelHandle {
        ChannelHandle {
            id,
            connection,
            out,
            cancel_notify,
            flow_active: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            prefetch: AtomicU16::new(0),
            confirm: AtomicBool::new(false),
            transactional: AtomicBool::new(false),
            state: Mutex::new(DeliveryState {
                next_tag: 1,
                unacked: BTreeMap::new(),
                global_prefetch: 0,
                global_unacked: 0,
            }),
        }
    }

    pub fn send(&self, method: AMQPClass) {
        let _ = self.out.send(Outbound::Method {
            channel: self.id,
            method,
        });
    }

    pub fn set_flow(&self, active: bool) {
        self.flow_active.store(active, Ordering::SeqCst);
    }

    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn set_global_prefetch(&self, n: u32) {
        self.state.lock().global_prefetch = n;
    }

    /// Sends a message that needs no acknowledgement and belongs to no queue (direct reply-to).
    pub fn deliver_untracked(&self, consumer_tag: &Arc<str>, msg: Arc<Message>) {
        let mut st = self.state.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        let _ = self.out.send(Outbound::Deliver {
            channel: self.id,
            consumer_tag: consumer_tag.clone(),
            delivery_tag: tag,
            redelivered: false,
            msg,
        });
    }

    /// Sends a delivery proxied from another node's queue; its ack goes back there.
    pub fn deliver_remote(&self, d: RemoteDelivery) {
        let RemoteDelivery {
            owner,
            remote_tag,
            consumer_tag,
            redelivered,
            message_count,
            msg,
            no_ack,
        } = d;
        let consumer_tag = consumer_tag.as_ref();
        let mut st = self.state.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        if !no_ack {
            st.unacked.insert(
                tag,
                Unacked {
                    queue: None,
                    remote: Some((owner, remote_tag)),
                    msg_id: 0,
                    consumer: consumer_tag.map(|_| 0),
                    sent_at: crate::base::clock::now_ms(),
                },
            );
            if consumer_tag.is_some() {
                st.global_unacked += 1;
            }
        }
        let out = match consumer_tag {
            Some(ct) => Outbound::Deliver {
                channel: self.id,
                consumer_tag: ct.clone(),
                delivery_tag: tag,
                redelivered,
                msg,
            },
            None => Outbound::GetOk {
                channel: self.id,
                delivery_tag: tag,
                redelivered,
                message_count,
                msg,
            },
        };
        let _ = self.out.send(out);
    }

    /// Takes the deliveries an ack/nack/reject names. `tag == 0` with `multiple` means all.
    /// `None` when a named tag is unknown (a 406 for the client).
    pub fn take_unacked(&self, tag: u64, multiple: bool) -> Option<Vec<Unacked>> {
        let mut st = self.state.lock();
        let taken: Vec<Unacked> = if multiple {
            // As RabbitMQ: the named tag itself must be outstanding (0 means everything).
            if tag != 0 && !st.unacked.contains_key(&tag) {
                return None;
            }
            let upper = if tag == 0 { u64::MAX } else { tag };
            let keys: Vec<u64> = st.unacked.range(..=upper).map(|(k, _)| *k).collect();
            keys.into_iter()
                .filter_map(|k| st.unacked.remove(&k))
                .collect()
        } else {
            vec![st.unacked.remove(&tag)?]
        };
        let counted = taken.iter().filter(|u| u.consumer.is_some()).count() as u32;
        st.global_unacked = st.global_unacked.saturating_sub(counted);
        Some(taken)
    }

    /// Everything still unacked (channel close, basic.recover).
    pub fn take_all_unacked(&self) -> Vec<Unacked> {
        let mut st = self.state.lock();
        st.global_unacked = 0;
        std::mem::take(&mut st.unacked).into_values().collect()
    }

    /// When the oldest unacknowledged delivery was sent (tags grow with time).
    pub fn oldest_unacked(&self) -> Option<u64> {
        self.state.lock().unacked.values().next().map(|u| u.sent_at)
    }

    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked.len()
    }

    pub fn prefetch_global(&self) -> u32 {
        self.state.lock().global_prefetch
    }
}

impl DeliverySink for ChannelHandle {
    /// Whether a consumer on this channel may be sent one more message from `queue` now: the
    /// channel is open with flow on, under its global prefetch, and the connection's socket
    /// keeps up (else `queue` is kicked when it has drained).
    fn can_deliver(&self, queue: &Arc<Queue>) -> bool {
        if self.is_closed() || !self.flow_active.load(Ordering::SeqCst) {
            return false;
        }
        {
            let st = self.state.lock();
            if st.global_prefetch != 0 && st.global_unacked >= st.global_prefetch {
                return false;
            }
        }
        self.out.has_room(queue)
    }

    /// Sends one message to a consumer; records it as unacked unless `no_ack`.
    fn deliver(
        &self,
        queue: &Arc<Queue>,
        consumer_tag: &Arc<str>,
        consumer: u64,
        no_ack: bool,
        entry: &Entry,
    ) {
        let (msg_id, redelivered, msg) = (entry.id, entry.redelivered, entry.msg.clone());
        let mut st = self.state.lock();
        let tag = st.next_tag;
        st.next_tag += 1;
        if !no_ack {
            st.unacked.insert(
                tag,
                Unacked {
                    queue: Some(queue.clone()),
                    remote: None,
                    msg_id,
                    consumer: Some(consumer),
                    sent_at: crate::base::clock::now_ms(),
                },
            );
            st.global_unacked += 1;
        }
        let _ = self.out.send(Outbound::Deliver {
            channel: self.id,
            consumer_tag: consumer_tag.clone(),
            delivery_tag: tag,
            redelivered,
            msg,
        });
    }

    /// Answers a basic.get with one message.
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
        let tag = st.next_tag;
        st.next_tag += 1;
        if !no_ack {
            st.unacked.insert(
                tag,
                Unacked {
                    queue: Some(queue.clone()),
                    remote: None,
                    msg_id,
                    consumer: None,
                    sent_at: crate::base::clock::now_ms(),
                },
            );
        }
        let _ = self.out.send(Outbound::GetOk {
            channel: self.id,
            delivery_tag: tag,
            redelivered,
            message_count,
            msg,
        });
    }

    fn cancel(&self, consumer_tag: &str) {
        if self.cancel_notify && !self.is_closed() {
            // nowait, as RabbitMQ sends it: the client must not answer with cancel-ok.
            self.send(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: short(consumer_tag),
                nowait: true,
            })));
        }
    }

    fn listed_as(&self) -> (u16, u64) {
        (self.id, self.connection)
    }
}

/// The broker's view of this channel.
impl ClientChannel for ChannelHandle {
    fn is_closed(&self) -> bool {
        ChannelHandle::is_closed(self)
    }

    fn deliver_untracked(&self, consumer_tag: &Arc<str>, msg: Arc<Message>) {
        ChannelHandle::deliver_untracked(self, consumer_tag, msg)
    }

    fn deliver_remote(&self, d: RemoteDelivery) {
        ChannelHandle::deliver_remote(self, d)
    }

    fn room(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.out.room())
    }

    fn pending_bytes(&self) -> u64 {
        self.out.pending_bytes()
    }

    fn unacked_count(&self) -> usize {
        ChannelHandle::unacked_count(self)
    }

    fn prefetch(&self) -> u16 {
        self.prefetch.load(Ordering::Relaxed)
    }

    fn prefetch_global(&self) -> u32 {
        ChannelHandle::prefetch_global(self)
    }

    fn confirm(&self) -> bool {
        self.confirm.load(Ordering::Relaxed)
    }

    fn transactional(&self) -> bool {
        self.transactional.load(Ordering::Relaxed)
    }
}
