//! A queue's messages and consumers: the ready list (one lane per priority), the unacked set,
//! TTL, max-length, dead-lettering and round-robin delivery honouring prefetch and consumer
//! priority. All of a queue's state sits behind one lock; work that reaches other queues
//! (dead-lettering) or the metadata store (auto-delete) runs after the lock is released.

pub mod config;
pub mod credit;
mod owner;
mod sink;
mod tally;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::base::clock::now_ms;
use crate::base::error::AmqpError;
use crate::base::message::Message;
use crate::meta::QueueRecord;
use crate::store::message_store::MessageStore;
pub use config::{Overflow, QueueConfig, QueueType};
pub use owner::{QueueOwner, Replica};
pub use sink::DeliverySink;
use tally::Tally;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    pub delivery_count: u32,
    /// Milliseconds since the epoch after which the message is dead.
    pub expires_at: Option<u64>,
    /// Whether the message store holds it (persistent message in a durable queue).
    pub stored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

pub struct Consumer {
    pub id: u64,
    pub tag: Arc<str>,
    pub channel: Arc<dyn DeliverySink>,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    /// basic.qos global=false at consume time (0 = unlimited).
    pub prefetch: u32,
    /// The consume's arguments, as the client gave them (for listings).
    pub arguments: amq_protocol::types::FieldTable,
    unacked: u32,
}

/// What a consume asks for.
pub struct ConsumeRequest {
    pub tag: Arc<str>,
    pub channel: Arc<dyn DeliverySink>,
    pub no_ack: bool,
    pub exclusive: bool,
    pub priority: i32,
    pub prefetch: u32,
    pub arguments: amq_protocol::types::FieldTable,
    /// Called under the queue lock once the consumer is accepted, before any delivery: the
    /// channel sends consume-ok from here, so that it reaches the client first.
    pub on_accepted: Option<Box<dyn FnOnce() + Send>>,
}

#[derive(Debug)]
pub enum PublishOutcome {
    /// Enqueued; the store ticket to wait for when it was written to disk.
    Enqueued(Option<u64>),
    /// Refused by x-overflow=reject-publish(-dlx): a negative confirm.
    Rejected,
    /// Handed to a quorum queue's group: true once a majority has it on disk
    /// and the queue took it.
    Replicating(tokio::sync::oneshot::Receiver<bool>),
}

#[derive(Default)]
struct QueueState {
    lanes: Vec<VecDeque<Entry>>,
    ready: Tally,
    unacked: HashMap<u64, (Entry, Option<u64>)>,
    unacked_tally: Tally,
    consumers: Vec<Consumer>,
    next_consumer_id: u64,
    rr: usize,
    had_consumers: bool,
    single_active: Option<u64>,
    dead_letters: Vec<(Entry, DeathReason)>,
    delete_requested: bool,
    published: u64,
    delivered: u64,
    acked: u64,
}

pub struct QueueStats {
    pub messages_ready: usize,
    pub messages_unacknowledged: usize,
    pub message_bytes_ready: u64,
    pub message_bytes_unacknowledged: u64,
    /// Ready and unacknowledged messages published with delivery mode 2.
    pub messages_persistent: usize,
    /// Heap bytes the queue's messages hold (see `Message::footprint`).
    pub memory: u64,
    pub consumers: usize,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
}

pub struct ConsumerInfo {
    pub tag: String,
    pub channel: u16,
    pub connection: u64,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch: u32,
    pub priority: i32,
    pub active: bool,
    pub arguments: amq_protocol::types::FieldTable,
}

pub struct Queue {
    pub record: QueueRecord,
    /// Its arguments combined with the policies that match it: replaced when they change.
    config: RwLock<Arc<QueueConfig>>,
    /// Fixed at declare (no policy changes it), read on every publish without the lock.
    queue_type: QueueType,
    store: Option<MessageStore>,
    /// A quorum queue's live copy on its group's leader: every change to the
    /// messages goes through the group's log.
    replica: Option<Box<dyn Replica>>,
    broker: Weak<dyn QueueOwner>,
    state: Mutex<QueueState>,
    timer: Notify,
    deleted: AtomicBool,
    last_used_ms: AtomicU64,
}

impl Queue {
    pub fn new(
        record: QueueRecord,
        config: QueueConfig,
        store: Option<MessageStore>,
        broker: Weak<dyn QueueOwner>,
        recovered: Vec<Entry>,
    ) -> Arc<Queue> {
        Queue::build(record, config, store, None, broker, recovered)
    }

    /// The live queue of a quorum queue on its leader, holding what the group holds.
    pub fn new_replicated(
        record: QueueRecord,
        config: QueueConfig,
        proposer: impl Replica + 'static,
        broker: Weak<dyn QueueOwner>,
        recovered: Vec<Entry>,
    ) -> Arc<Queue> {
        Queue::build(
            record,
            config,
            None,
            Some(Box::new(proposer)),
            broker,
            recovered,
        )
    }

    fn build(
        record: QueueRecord,
        config: QueueConfig,
        store: Option<MessageStore>,
        replica: Option<Box<dyn Replica>>,
        broker: Weak<dyn QueueOwner>,
        recovered: Vec<Entry>,
    ) -> Arc<Queue> {
        let lanes = config.max_priority.map(|p| p as usize + 1).unwrap_or(1);
        let mut state = QueueState {
            lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
            ..Default::default()
        };
        for mut e in recovered {
            e.expires_at = expiry(&config, &e.msg);
            state.ready.add(&e);
            let lane = lane_of(&config, &e.msg);
            state.lanes[lane].push_back(e);
        }
        let q = Arc::new(Queue {
            record,
            queue_type: config.queue_type,
            config: RwLock::new(Arc::new(config)),
            store,
            replica,
            broker,
            state: Mutex::new(state),
            timer: Notify::new(),
            deleted: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(now_ms()),
        });
        let weak = Arc::downgrade(&q);
        tokio::spawn(timer_loop(weak));
        q
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The settings the queue runs with now.
    pub fn config(&self) -> Arc<QueueConfig> {
        self.config.read().clone()
    }

    /// A policy that matches the queue changed: limits lowered below the queue's length
    /// drop from the head at once (dead-lettered), as RabbitMQ does; a new TTL applies to
    /// messages published from now on, and a new expiry restarts the expiry timer.
    pub fn set_config(self: &Arc<Self>, config: QueueConfig) {
        if **self.config.read() == config {
            return;
        }
        let config = Arc::new(config);
        *self.config.write() = config.clone();
        if config.overflow == Overflow::DropHead {
            self.locked(|st| {
                self.enforce_max_length(&config, st);
                self.dispatch(st);
            });
        }
        self.timer.notify_one();
    }

    pub fn vhost(&self) -> &str {
        &self.record.vhost
    }

    /// Durable queues keep persistent messages on disk; quorum queues keep every message.
    fn stores(&self, msg: &Message) -> bool {
        if self.replica.is_some() {
            return true;
        }
        self.store.is_some()
            && self.record.durable
            && (msg.persistent() || self.queue_type == QueueType::Quorum)
    }

    /// Marks the queue used now (consume, cancel, get, declare): the x-expires clock restarts.
    pub fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Runs `f` under the queue lock, then does what must happen outside it.
    fn locked<R>(self: &Arc<Self>, f: impl FnOnce(&mut QueueState) -> R) -> R {
        let (result, dead, delete) = {
            let mut st = self.state.lock();
            let r = f(&mut st);
            let dead = std::mem::take(&mut st.dead_letters);
            let delete = std::mem::take(&mut st.delete_requested);
            (r, dead, delete)
        };
        if !dead.is_empty()
            && let Some(b) = self.broker.upgrade()
        {
            b.dead_letter(self, dead);
        }
        if delete && let Some(b) = self.broker.upgrade() {
            b.delete_queue_later(self.vhost().to_string(), self.name().to_string());
        }
        result
    }

    pub fn publish(self: &Arc<Self>, msg: Arc<Message>, id: u64) -> PublishOutcome {
        if let Some(r) = &self.replica {
            // Enqueued when the group has committed it (`enqueue_committed`).
            return PublishOutcome::Replicating(r.enqueue(msg));
        }
        self.enqueue(msg, id, 0)
    }

    /// A quorum queue's message, committed by its group under `id`.
    pub fn enqueue_committed(
        self: &Arc<Self>,
        msg: Arc<Message>,
        id: u64,
        delivery_count: u32,
    ) -> PublishOutcome {
        let outcome = self.enqueue(msg, id, delivery_count);
        if matches!(outcome, PublishOutcome::Rejected)
            && self.config().overflow == Overflow::RejectPublish
            && let Some(r) = &self.replica
        {
            r.settle(vec![id]);
        }
        outcome
    }

    fn enqueue(
        self: &Arc<Self>,
        msg: Arc<Message>,
        id: u64,
        delivery_count: u32,
    ) -> PublishOutcome {
        let now = now_ms();
        let config = self.config();
        let expires_at = expiry(&config, &msg);
        let stored = self.stores(&msg);
        // A TTL of 0: delivered at once or never (RabbitMQ's rule), even within the same ms.
        let published_at = msg.published_at;
        let zero_ttl = expires_at == Some(published_at);
        let entry = Entry {
            id,
            msg,
            redelivered: false,
            delivery_count,
            expires_at,
            stored,
        };
        let outcome = self.locked(|st| {
            self.expire_head(st, now);
            if config.overflow != Overflow::DropHead && full_for(&config, st, &entry) {
                if config.overflow == Overflow::RejectPublishDlx {
                    st.dead_letters.push((entry, DeathReason::Maxlen));
                }
                return PublishOutcome::Rejected;
            }
            let ticket = if stored {
                self.store
                    .as_ref()
                    .map(|s| s.publish(self.record.uid, entry.id, entry.msg.encoded()))
            } else {
                None
            };
            st.published += 1;
            st.ready.add(&entry);
            let lane = lane_of(&config, &entry.msg);
            st.lanes[lane].push_back(entry);
            if config.overflow == Overflow::DropHead {
                self.enforce_max_length(&config, st);
            }
            self.dispatch(st);
            if zero_ttl {
                // Whatever has used up its whole TTL by now goes (this message, if no
                // consumer took it).
                self.expire_head(st, now.max(published_at) + 1);
            }
            PublishOutcome::Enqueued(ticket)
        });
        if expires_at.is_some() {
            self.timer.notify_one();
        }
        outcome
    }

    fn enforce_max_length(&self, config: &QueueConfig, st: &mut QueueState) {
        loop {
            let over_count = config
                .max_length
                .is_some_and(|max| st.ready.count as u64 > max);
            let over_bytes = config
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes > max);
            if !(over_count || over_bytes) {
                break;
            }
            match self.pop_ready(st) {
                Some(e) => st.dead_letters.push((e, DeathReason::Maxlen)),
                None => break,
            }
        }
    }

    fn pop_ready(&self, st: &mut QueueState) -> Option<Entry> {
        let e = st.lanes.iter_mut().rev().find_map(|l| l.pop_front())?;
        st.ready.remove(&e);
        Some(e)
    }

    fn push_front_sorted(&self, st: &mut QueueState, e: Entry) {
        let lane = &mut st.lanes[lane_of(&self.config(), &e.msg)];
        let pos = lane.partition_point(|x| x.id < e.id);
        st.ready.add(&e);
        lane.insert(pos, e);
    }

    /// Drops (dead-letters) expired messages at the head, as RabbitMQ does.
    fn expire_head(&self, st: &mut QueueState, now: u64) {
        for lane in (0..st.lanes.len()).rev() {
            while let Some(head) = st.lanes[lane].front() {
                match head.expires_at {
                    Some(t) if now > t => {
                        if let Some(e) = st.lanes[lane].pop_front() {
                            st.ready.remove(&e);
                            st.dead_letters.push((e, DeathReason::Expired));
                        }
                    }
                    _ => break,
                }
            }
        }
    }

    fn next_expiry(&self, st: &QueueState) -> Option<u64> {
        st.lanes
            .iter()
            .filter_map(|l| l.front().and_then(|e| e.expires_at))
            .min()
    }

    /// Hands ready messages to consumers with room for them.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        if st.consumers.is_empty() || st.ready.count == 0 {
            return;
        }
        let now = now_ms();
        self.expire_head(st, now);
        while st.ready.count > 0 {
            let Some(ci) = self.pick_consumer(st) else {
                break;
            };
            let Some(mut e) = self.pop_ready(st) else {
                break;
            };
            let c = &mut st.consumers[ci];
            e.delivery_count += 1;
            match self.with_delivery_count(&e) {
                Some(counted) => c.channel.deliver(self, &c.tag, c.id, c.no_ack, &counted),
                None => c.channel.deliver(self, &c.tag, c.id, c.no_ack, &e),
            }
            st.delivered += 1;
            if c.no_ack {
                self.forget_stored(&e);
            } else {
                self.note_delivered(&e);
                c.unacked += 1;
                let cid = c.id;
                st.unacked_tally.add(&e);
                st.unacked.insert(e.id, (e, Some(cid)));
            }
        }
    }

    fn pick_consumer(self: &Arc<Self>, st: &mut QueueState) -> Option<usize> {
        let n = st.consumers.len();
        if let Some(active) = st.single_active {
            let i = st.consumers.iter().position(|c| c.id == active)?;
            return consumer_has_room(self, &st.consumers[i]).then_some(i);
        }
        // Consumers are kept sorted by priority, highest first: the first priority level with
        // a consumer that has room wins, round robin within it.
        let mut best: Option<(i32, usize)> = None;
        for k in 0..n {
            let i = (st.rr + k) % n;
            let c = &st.consumers[i];
            if best.is_some_and(|(p, _)| c.priority <= p) {
                continue;
            }
            if consumer_has_room(self, c) {
                best = Some((c.priority, i));
            }
        }
        let (_, i) = best?;
        st.rr = (i + 1) % n;
        Some(i)
    }

    /// A stored message's first delivery is recorded, so that after a crash it comes back
    /// marked redelivered (and one never delivered does not).
    fn note_delivered(&self, e: &Entry) {
        if e.stored
            && !e.redelivered
            && e.delivery_count == 1
            && let Some(s) = &self.store
        {
            s.mark_delivered(self.record.uid, e.id);
        }
    }

    fn forget_stored(&self, e: &Entry) {
        if e.stored {
            self.forget_many(vec![e.id]);
        }
    }

    /// Messages gone from the queue: off the disk, or settled in the group's log.
    fn forget_many(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        if let Some(r) = &self.replica {
            r.settle(ids);
        } else if let Some(s) = &self.store {
            s.remove_many(self.record.uid, &ids);
        }
    }

    /// A quorum queue redelivers with `x-delivery-count`: how many deliveries
    /// came before this one, as RabbitMQ does.
    fn with_delivery_count(&self, e: &Entry) -> Option<Entry> {
        if self.replica.is_none() || e.delivery_count <= 1 {
            return None;
        }
        let mut headers = e.msg.headers().cloned().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            amq_protocol::types::AMQPValue::LongLongInt(i64::from(e.delivery_count - 1)),
        );
        let props = e.msg.properties().with_headers(headers);
        let msg = e
            .msg
            .with_properties(e.msg.exchange.clone(), e.msg.routing_key.clone(), props);
        Some(Entry {
            msg: Arc::new(msg),
            ..e.clone()
        })
    }

    pub fn consume(self: &Arc<Self>, req: ConsumeRequest) -> Result<u64, AmqpError> {
        self.touch();
        self.locked(|st| {
            if st.consumers.iter().any(|c| c.exclusive)
                || (req.exclusive && !st.consumers.is_empty())
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name(),
                    self.vhost()
                )));
            }
            if let Some(accepted) = req.on_accepted {
                accepted();
            }
            st.next_consumer_id += 1;
            let id = st.next_consumer_id;
            let c = Consumer {
                id,
                tag: req.tag,
                channel: req.channel,
                no_ack: req.no_ack,
                exclusive: req.exclusive,
                priority: req.priority,
                prefetch: req.prefetch,
                arguments: req.arguments,
                unacked: 0,
            };
            let pos = st.consumers.partition_point(|x| x.priority >= c.priority);
            st.consumers.insert(pos, c);
            st.had_consumers = true;
            if self.config().single_active_consumer && st.single_active.is_none() {
                st.single_active = Some(id);
            }
            self.dispatch(st);
            Ok(id)
        })
    }

    /// Removes a consumer; its unacked messages stay with its channel until acked or requeued.
    pub fn cancel(self: &Arc<Self>, consumer: u64) {
        self.touch();
        self.locked(|st| {
            st.consumers.retain(|c| c.id != consumer);
            if st.single_active == Some(consumer) {
                st.single_active = st.consumers.first().map(|c| c.id);
            }
            if st.consumers.is_empty() && st.had_consumers && self.record.auto_delete {
                st.delete_requested = true;
            }
            self.dispatch(st);
        });
        self.timer.notify_one();
    }

    pub fn get(self: &Arc<Self>, channel: &dyn DeliverySink, no_ack: bool) -> bool {
        self.touch();
        self.locked(|st| {
            self.expire_head(st, now_ms());
            let Some(mut e) = self.pop_ready(st) else {
                return false;
            };
            e.delivery_count += 1;
            let msg = match self.with_delivery_count(&e) {
                Some(counted) => counted.msg,
                None => e.msg.clone(),
            };
            channel.deliver_get(
                self,
                e.id,
                e.redelivered,
                no_ack,
                st.ready.count as u32,
                msg,
            );
            st.delivered += 1;
            if no_ack {
                self.forget_stored(&e);
            } else {
                self.note_delivered(&e);
                st.unacked_tally.add(&e);
                st.unacked.insert(e.id, (e, None));
            }
            true
        })
    }

    fn take_unacked(&self, st: &mut QueueState, id: u64) -> Option<Entry> {
        let (e, consumer) = st.unacked.remove(&id)?;
        st.unacked_tally.remove(&e);
        if let Some(cid) = consumer
            && let Some(c) = st.consumers.iter_mut().find(|c| c.id == cid)
        {
            c.unacked = c.unacked.saturating_sub(1);
        }
        Some(e)
    }

    pub fn ack(self: &Arc<Self>, ids: &[u64]) {
        self.locked(|st| {
            let mut stored = Vec::new();
            for id in ids {
                if let Some(e) = self.take_unacked(st, *id) {
                    st.acked += 1;
                    if e.stored {
                        stored.push(e.id);
                    }
                }
            }
            self.forget_many(stored);
            self.dispatch(st);
        });
    }

    /// Nack/reject/recover: requeue in original order, or dead-letter (drop without a DLX).
    pub fn reject(self: &Arc<Self>, ids: &[u64], requeue: bool) {
        self.locked(|st| {
            for id in ids {
                let Some(mut e) = self.take_unacked(st, *id) else {
                    continue;
                };
                let over_limit = self
                    .config()
                    .delivery_limit
                    .is_some_and(|limit| e.delivery_count as u64 > limit);
                if requeue && !over_limit {
                    e.redelivered = true;
                    if let Some(r) = &self.replica {
                        r.returned(e.id);
                    }
                    self.push_front_sorted(st, e);
                } else {
                    let reason = if over_limit {
                        DeathReason::DeliveryLimit
                    } else {
                        DeathReason::Rejected
                    };
                    st.dead_letters.push((e, reason));
                }
            }
            self.dispatch(st);
        });
    }

    /// Called when dead-lettering finished with an entry: forget it on disk.
    pub fn discard(&self, e: &Entry) {
        self.forget_stored(e);
    }

    /// Re-runs delivery (a channel got room: ack with global prefetch, flow on).
    pub fn kick(self: &Arc<Self>) {
        self.locked(|st| self.dispatch(st));
    }

    pub fn purge(self: &Arc<Self>) -> u32 {
        self.locked(|st| {
            let mut ids = Vec::new();
            let mut n = 0u32;
            for lane in st.lanes.iter_mut() {
                for e in lane.drain(..) {
                    n += 1;
                    if e.stored {
                        ids.push(e.id);
                    }
                }
            }
            st.ready = Tally::default();
            self.forget_many(ids);
            n
        })
    }

    /// The queue was deleted from metadata: tell consumers, drop messages (and their disk copy).
    pub fn on_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::SeqCst);
        self.timer.notify_one();
        let mut st = self.state.lock();
        for c in st.consumers.drain(..) {
            c.channel.cancel(&c.tag);
        }
        let n = st.ready.count as u32;
        st.lanes.iter_mut().for_each(|l| l.clear());
        st.unacked.clear();
        st.ready = Tally::default();
        st.unacked_tally = Tally::default();
        if let Some(s) = &self.store {
            s.delete_queue(self.record.uid);
        }
        n
    }

    /// The queue stops being served here (a quorum queue's leadership moved):
    /// consumers are told, as for a deletion; the group keeps the messages.
    pub fn retire(&self) {
        self.on_deleted();
    }

    /// The queue's state as RabbitMQ lists it. A live queue object exists only where the
    /// queue is served (its owner, or its group's leader), so it is `running` until it is
    /// deleted or retired; queues not served anywhere are listed from metadata as `down`
    /// (classic) or `minority` (quorum) by the listing itself.
    pub fn state(&self) -> &'static str {
        if self.is_deleted() {
            "stopped"
        } else {
            "running"
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            messages_ready: st.ready.count,
            messages_unacknowledged: st.unacked.len(),
            message_bytes_ready: st.ready.bytes,
            message_bytes_unacknowledged: st.unacked_tally.bytes,
            messages_persistent: st.ready.persistent + st.unacked_tally.persistent,
            memory: st.ready.memory + st.unacked_tally.memory,
            consumers: st.consumers.len(),
            published: st.published,
            delivered: st.delivered,
            acked: st.acked,
        }
    }

    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        let st = self.state.lock();
        st.consumers
            .iter()
            .map(|c| {
                let (channel, connection) = c.channel.listed_as();
                ConsumerInfo {
                    tag: c.tag.to_string(),
                    channel,
                    connection,
                    ack_required: !c.no_ack,
                    exclusive: c.exclusive,
                    prefetch: c.prefetch,
                    priority: c.priority,
                    active: st.single_active.is_none_or(|a| a == c.id),
                    arguments: c.arguments.clone(),
                }
            })
            .collect()
    }

    /// The timer's work: expire messages; delete the queue once unused past x-expires.
    fn on_timer(self: &Arc<Self>) -> Option<Duration> {
        let now = now_ms();
        let (next, idle) = self.locked(|st| {
            self.expire_head(st, now);
            (self.next_expiry(st), st.consumers.is_empty())
        });
        let mut wait = next.map(|t| Duration::from_millis(t.saturating_sub(now) + 1));
        if let (Some(expires), true) = (self.config().expires, idle) {
            let last = self.last_used_ms.load(Ordering::Relaxed);
            let deadline = last.saturating_add(expires);
            if now >= deadline {
                if let Some(b) = self.broker.upgrade() {
                    b.delete_queue_later(self.vhost().to_string(), self.name().to_string());
                }
                return None;
            }
            let d = Duration::from_millis(deadline - now + 1);
            wait = Some(wait.map_or(d, |w| w.min(d)));
        }
        wait
    }
}

/// Message ids grouped by their queue, in the order met, so that each queue is locked once
/// for a batch of settlements.
pub fn group_by_queue(
    items: impl IntoIterator<Item = (Arc<Queue>, u64)>,
) -> Vec<(Arc<Queue>, Vec<u64>)> {
    let mut out: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for (queue, id) in items {
        match out.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &queue)) {
            Some((_, ids)) => ids.push(id),
            None => out.push((queue, vec![id])),
        }
    }
    out
}

fn consumer_has_room(queue: &Arc<Queue>, c: &Consumer) -> bool {
    (c.no_ack || c.prefetch == 0 || c.unacked < c.prefetch) && c.channel.can_deliver(queue)
}

/// When a message dies of old age in a queue with `config`: the shorter of the queue's
/// x-message-ttl and the message's expiration, counted from when it was published.
fn expiry(config: &QueueConfig, msg: &Message) -> Option<u64> {
    let ttl = match (config.message_ttl, msg.expiration_ms().ok().flatten()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    ttl.map(|t| msg.published_at.saturating_add(t))
}

fn full_for(config: &QueueConfig, st: &QueueState, entry: &Entry) -> bool {
    let by_count = config
        .max_length
        .is_some_and(|max| st.ready.count as u64 >= max);
    let by_bytes = config
        .max_length_bytes
        .is_some_and(|max| st.ready.bytes + entry.msg.size() as u64 > max);
    by_count || by_bytes
}

fn lane_of(config: &QueueConfig, msg: &Message) -> usize {
    match config.max_priority {
        Some(max) => msg.priority().min(max) as usize,
        None => 0,
    }
}

async fn timer_loop(queue: Weak<Queue>) {
    loop {
        let wait = {
            let Some(q) = queue.upgrade() else { return };
            if q.is_deleted() {
                return;
            }
            q.on_timer()
        };
        let Some(q) = queue.upgrade() else { return };
        // Deletion notifies the timer, so holding the queue while waiting cannot leak it.
        match wait {
            Some(d) => {
                let _ = tokio::time::timeout(d, q.timer.notified()).await;
            }
            None => q.timer.notified().await,
        }
        drop(q);
        // Coalesce bursts of notifications (every publish with a TTL notifies).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
