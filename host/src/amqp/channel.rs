//! A channel inside a connection: its lifecycle (open, close, flow), content assembly
//! (publish method + header + body frames → one message), publishing with mandatory returns,
//! publisher confirms and transactions. The per-class methods live in `methods/`.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, access, channel, confirm, tx};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, ContentHeader};
use super::connection::Connection;
use super::delivery::ChannelHandle;
use super::outbound::Outbound;
use crate::amqp::short_string::short;
use crate::base::error::{AmqpError, AmqpResult, ReplyCode};
use crate::base::message::Message;
use crate::broker::direct_reply::{DirectReplies, PSEUDO_QUEUE};
use crate::broker::routing::sender_selected_keys;
use crate::queue::{PublishOutcome, Queue};
use crate::store::message_store::MessageStore;
use amq_protocol::types::FieldTable;

/// Bodies at least this large stay zero-copy slices of the read buffer; smaller ones are
/// copied out, so that a long-queued small message does not pin a whole read buffer.
const SHARE_BODY_FROM: u64 = 16 * 1024;

/// RabbitMQ's default max_message_size (128 MiB).
pub const MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;

pub struct PendingPublish {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub header: Option<ContentHeader>,
    pub chunks: Vec<Bytes>,
    pub received: u64,
}

enum ConfirmItem {
    /// Sequence number, the store ticket to wait for, and the answers of the
    /// other nodes whose queues the message was forwarded to.
    Ack(u64, Option<u64>, Vec<oneshot::Receiver<bool>>),
    Nack(u64),
}

pub struct Confirms {
    next_seq: u64,
    tx: mpsc::UnboundedSender<ConfirmItem>,
}

/// What a transaction holds until commit.
#[derive(Default)]
pub struct TxBuffer {
    pub publishes: Vec<(Arc<Message>, bool)>,
    pub acks: Vec<TxAck>,
}

pub enum TxAck {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Reject {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

pub struct Channel {
    pub handle: Arc<ChannelHandle>,
    /// consumer tag → (queue, consumer id in the queue)
    pub consumers: HashMap<String, (Arc<Queue>, u64)>,
    /// Sessions on other nodes' queues: consumers by tag, basic.get by "get:<queue>".
    pub remote: HashMap<String, Arc<crate::broker::remote_session::RemoteSession>>,
    /// basic.qos global=false: the limit each new consumer gets.
    pub prefetch: u16,
    pub confirm: Option<Confirms>,
    pub tx: Option<TxBuffer>,
    pub pending: Option<PendingPublish>,
    /// The server sent channel.close and waits for close-ok.
    pub closing: bool,
    /// The last queue declared on this channel (an empty queue name refers to it).
    pub last_queue: Option<String>,
    /// Direct reply-to consumer: (consumer tag, key its requests carry).
    pub reply_consumer: Option<(String, String)>,
}

impl Channel {
    fn new(handle: Arc<ChannelHandle>) -> Channel {
        Channel {
            handle,
            consumers: HashMap::new(),
            remote: HashMap::new(),
            prefetch: 0,
            confirm: None,
            tx: None,
            pending: None,
            closing: false,
            last_queue: None,
            reply_consumer: None,
        }
    }

    /// Cancels consumers and requeues unacked deliveries (channel or connection closed).
    pub fn release(&self, replies: &DirectReplies) {
        self.handle.mark_closed();
        if let Some((_, key)) = &self.reply_consumer {
            replies.unregister(key);
        }
        for (queue, id) in self.consumers.values() {
            queue.cancel(*id);
        }
        requeue_all(&self.handle);
        for s in self.remote.values() {
            s.close();
        }
    }
}

/// Requeues everything a channel has unacked, queue by queue.
pub fn requeue_all(handle: &ChannelHandle) {
    for (q, ids) in super::delivery::group_by_queue(handle.take_all_unacked(), Some(true)) {
        q.reject(&ids, true);
    }
}

fn unexpected_frame(text: &str) -> AmqpError {
    AmqpError::connection(
        ReplyCode::UnexpectedFrame,
        format!("UNEXPECTED_FRAME - {text}"),
    )
}

impl Connection {
    pub(crate) fn channel(&mut self, id: u16) -> AmqpResult<&mut Channel> {
        self.channels.get_mut(&id).ok_or_else(|| {
            AmqpError::connection(
                ReplyCode::ChannelError,
                format!("CHANNEL_ERROR - expected 'channel.open' on channel {id}"),
            )
        })
    }

    /// A soft error: close the channel, keep the connection.
    pub(crate) fn close_channel_with(&mut self, e: AmqpError) {
        let id = e.channel;
        tracing::debug!(channel = id, error = %e, "closing channel");
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.closing = true;
            ch.pending = None;
            ch.release(&self.broker.direct_replies);
            ch.consumers.clear();
        }
        self.send(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code.code(),
                reply_text: short(e.text.as_str()),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    pub(crate) async fn channel_method(&mut self, id: u16, method: AMQPClass) -> AmqpResult<()> {
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = method {
            // RabbitMQ counts open channels against the negotiated channel_max.
            if self.channels.len() >= self.channel_max as usize {
                return Err(AmqpError::connection(
                    ReplyCode::NotAllowed,
                    format!(
                        "NOT_ALLOWED - number of channels opened ({}) has reached the negotiated channel_max ({})",
                        self.channels.len(),
                        self.channel_max
                    ),
                ));
            }
            if id == 0 || id > self.channel_max {
                return Err(AmqpError::connection(
                    ReplyCode::NotAllowed,
                    format!(
                        "NOT_ALLOWED - channel number {id} is out of range 1..{} (the negotiated channel_max)",
                        self.channel_max
                    ),
                ));
            }
            if self.channels.contains_key(&id) {
                return Err(AmqpError::connection(
                    ReplyCode::ChannelError,
                    "CHANNEL_ERROR - second 'channel.open' seen",
                ));
            }
            self.close_ok_expected.remove(&id);
            let handle = Arc::new(ChannelHandle::new(
                id,
                self.id,
                self.out.clone(),
                self.cancel_notify,
            ));
            if let Some(i) = &self.info {
                i.channel_handles.lock().insert(id, handle.clone());
            }
            self.channels.insert(id, Channel::new(handle));
            self.update_channel_count();
            self.send(
                id,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(());
        }
        if let AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) = method
            && !self.channels.contains_key(&id)
            && self.close_ok_expected.remove(&id)
        {
            return Ok(());
        }
        let ch = self.channel(id)?;
        if ch.closing {
            match method {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&id);
                    self.update_channel_count();
                }
                // Both sides closed at once: answer the client's close, and take its
                // close-ok to ours, still on its way, quietly (the spec's rule for a
                // closing channel: only close and close-ok count).
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.channels.remove(&id);
                    self.update_channel_count();
                    self.close_ok_expected.insert(id);
                    self.send(
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                }
                // Everything else is dropped until the client acknowledges the close.
                _ => {}
            }
            return Ok(());
        }
        if ch.pending.is_some() {
            return Err(unexpected_frame(
                "expected content header or body, got a method frame",
            ));
        }
        match method {
            AMQPClass::Channel(m) => self.channel_class(id, m),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send(
                    id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Exchange(m) => self.exchange_method(id, m).await,
            AMQPClass::Queue(m) => self.queue_method(id, m).await,
            AMQPClass::Basic(m) => self.basic_method(id, m).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let store = self.broker.store.clone();
                let broker = Arc::downgrade(&self.broker);
                let ch = self.channel(id)?;
                if ch.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if ch.confirm.is_none() {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(run_confirmer(rx, ch.handle.clone(), store, broker));
                    ch.confirm = Some(Confirms { next_seq: 1, tx });
                    ch.handle
                        .confirm
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if !s.nowait {
                    self.send(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(id, m).await,
            other => Err(AmqpError::command_invalid(format!(
                "unexpected method {:?}",
                super::connection::method_ids(&other)
            ))),
        }
    }

    fn update_channel_count(&self) {
        if let Some(i) = &self.info {
            i.channel_handles
                .lock()
                .retain(|k, _| self.channels.contains_key(k));
            i.channels.store(
                self.channels.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn channel_class(&mut self, id: u16, m: channel::AMQPMethod) -> AmqpResult<()> {
        match m {
            channel::AMQPMethod::Close(_) => {
                if let Some(ch) = self.channels.remove(&id) {
                    ch.release(&self.broker.direct_replies);
                }
                self.update_channel_count();
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            channel::AMQPMethod::CloseOk(_) => Ok(()),
            // RabbitMQ refuses to stop deliveries this way (prefetch does it), and clients
            // written against it rely on that answer.
            channel::AMQPMethod::Flow(f) if !f.active => {
                Err(AmqpError::not_implemented("active=false").with_method(20, 20))
            }
            channel::AMQPMethod::Flow(f) => {
                let ch = self.channel(id)?;
                ch.handle.set_flow(f.active);
                if f.active {
                    for (q, _) in ch.consumers.values() {
                        q.kick();
                    }
                }
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                Ok(())
            }
            channel::AMQPMethod::FlowOk(_) => Ok(()),
            channel::AMQPMethod::Open(_) | channel::AMQPMethod::OpenOk(_) => {
                Err(AmqpError::command_invalid("unexpected channel method"))
            }
        }
    }

    async fn tx_method(&mut self, id: u16, m: tx::AMQPMethod) -> AmqpResult<()> {
        match m {
            tx::AMQPMethod::Select(_) => {
                let ch = self.channel(id)?;
                if ch.confirm.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if ch.tx.is_none() {
                    ch.tx = Some(TxBuffer::default());
                    ch.handle
                        .transactional
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.send(id, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let ch = self.channel(id)?;
                let Some(buffer) = ch.tx.as_mut().map(std::mem::take) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                let mut last_ticket = None;
                for (msg, mandatory) in buffer.publishes {
                    let (ticket, _, _) = self.route_and_enqueue(id, msg, mandatory, false)?;
                    last_ticket = last_ticket.max(ticket);
                }
                for ack in buffer.acks {
                    match ack {
                        TxAck::Ack { tag, multiple } => self.ack(id, tag, multiple)?,
                        TxAck::Reject {
                            tag,
                            multiple,
                            requeue,
                        } => self.reject(id, tag, multiple, requeue)?,
                    }
                }
                if let (Some(t), Some(store)) = (last_ticket, &self.broker.store) {
                    store
                        .wait_synced(t)
                        .await
                        .map_err(|e| AmqpError::internal(format!("message store: {e}")))?;
                }
                self.send(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let ch = self.channel(id)?;
                let Some(buffer) = ch.tx.as_mut() else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                *buffer = TxBuffer::default();
                self.send(
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("unexpected tx method")),
        }
    }

    pub(crate) async fn content_header(&mut self, id: u16, payload: Bytes) -> AmqpResult<()> {
        let ch = self
            .channel(id)
            .map_err(|_| unexpected_frame("content header on a closed channel"))?;
        if ch.closing {
            return Ok(());
        }
        let Some(pending) = ch.pending.as_mut() else {
            return Err(unexpected_frame(
                "expected method frame, got content header",
            ));
        };
        if pending.header.is_some() {
            return Err(unexpected_frame(
                "expected content body, got content header",
            ));
        }
        let header = codec::decode_content_header(payload)?;
        if header.class_id != 60 {
            return Err(unexpected_frame(
                "content header for a class other than basic",
            ));
        }
        if header.body_size > MAX_MESSAGE_SIZE {
            ch.pending = None;
            return Err(AmqpError::precondition(format!(
                "message size {} is larger than configured max size {MAX_MESSAGE_SIZE}",
                header.body_size
            ))
            .with_method(60, 40)
            .on_channel(id));
        }
        let done = header.body_size == 0;
        pending.header = Some(header);
        if done {
            self.finish_publish(id)?;
        }
        Ok(())
    }

    pub(crate) async fn content_body(&mut self, id: u16, payload: Bytes) -> AmqpResult<()> {
        let ch = self
            .channel(id)
            .map_err(|_| unexpected_frame("content body on a closed channel"))?;
        if ch.closing {
            return Ok(());
        }
        let Some(pending) = ch.pending.as_mut() else {
            return Err(unexpected_frame("expected method frame, got content body"));
        };
        let Some(header) = &pending.header else {
            return Err(unexpected_frame(
                "expected content header, got content body",
            ));
        };
        pending.received += payload.len() as u64;
        if pending.received > header.body_size {
            return Err(unexpected_frame(&format!(
                "content body of {} bytes exceeds the {} announced",
                pending.received, header.body_size
            )));
        }
        pending.chunks.push(payload);
        if pending.received == header.body_size {
            self.finish_publish(id)?;
        }
        Ok(())
    }

    fn finish_publish(&mut self, id: u16) -> AmqpResult<()> {
        let ch = self.channel(id)?;
        let Some(p) = ch.pending.take() else {
            return Ok(());
        };
        let Some(header) = p.header else {
            return Ok(());
        };
        let body = if p.chunks.len() == 1 && p.received > SHARE_BODY_FROM {
            p.chunks.into_iter().next().unwrap_or_default()
        } else {
            let mut b = BytesMut::with_capacity(p.received as usize);
            for c in &p.chunks {
                b.extend_from_slice(c);
            }
            b.freeze()
        };
        let fail = |e: AmqpError| e.with_method(60, 40).on_channel(id);
        let (mut properties, mut properties_raw) = (header.properties, header.properties_raw);
        if properties.reply_to().as_ref().map(|r| r.as_str()) == Some(PSEUDO_QUEUE) {
            let Some((_, key)) = &self.channel(id)?.reply_consumer else {
                return Err(fail(AmqpError::precondition(
                    "fast reply consumer does not exist",
                )));
            };
            properties = properties.with_reply_to(DirectReplies::address(key).into());
            properties_raw = crate::base::message::encode_properties(&properties);
        }
        let claimed_user = properties.user_id().clone();
        let msg = Message::new(p.exchange, p.routing_key, properties, properties_raw, body);
        let vhost = self.vhost.clone();
        if !msg.exchange.is_empty() {
            match vhost.as_ref().and_then(|v| v.exchange(&msg.exchange)) {
                None => {
                    return Err(fail(AmqpError::not_found(format!(
                        "no exchange '{}' in vhost '{}'",
                        msg.exchange,
                        vhost.as_ref().map(|v| &*v.name).unwrap_or("")
                    ))));
                }
                Some(x) if x.record.internal => {
                    return Err(fail(AmqpError::access_refused(format!(
                        "cannot publish to internal exchange '{}' in vhost '{}'",
                        msg.exchange, x.record.vhost
                    ))));
                }
                Some(_) => {}
            }
        }
        // RabbitMQ's order of checks: exchange, expiration, then user_id.
        if let Err(e) = msg.expiration_ms() {
            return Err(fail(AmqpError::precondition(e)));
        }
        if let Some(claimed) = &claimed_user
            && claimed.as_str() != self.user
            && !self
                .broker
                .meta
                .read()
                .users
                .get(&self.user)
                .is_some_and(|u| u.tags.iter().any(|t| t == "impersonator"))
        {
            return Err(fail(AmqpError::precondition(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                claimed.as_str(),
                self.user
            ))));
        }
        let msg = Arc::new(msg);
        let ch = self.channel(id)?;
        if let Some(buffer) = ch.tx.as_mut() {
            buffer.publishes.push((msg, p.mandatory));
            return Ok(());
        }
        let confirming = self.channel(id)?.confirm.is_some();
        let (ticket, rejected, remote) =
            self.route_and_enqueue(id, msg, p.mandatory, confirming)?;
        let ch = self.channel(id)?;
        if let Some(c) = ch.confirm.as_mut() {
            let seq = c.next_seq;
            c.next_seq += 1;
            let item = if rejected {
                ConfirmItem::Nack(seq)
            } else {
                ConfirmItem::Ack(seq, ticket, remote)
            };
            let _ = c.tx.send(item);
        }
        Ok(())
    }

    /// basic.return 312 NO_ROUTE for a mandatory message that reached no queue.
    fn return_unroutable(&self, id: u16, msg: Arc<Message>) {
        let _ = self.out.send(Outbound::Return {
            channel: id,
            reply_code: 312,
            reply_text: "NO_ROUTE",
            msg,
        });
    }

    /// Routes a message and hands it to its queues: (highest store ticket, rejected by a
    /// queue, the answers of the nodes owning the remote queues it went to, when `answers`
    /// asks for them).
    fn route_and_enqueue(
        &mut self,
        id: u16,
        msg: Arc<Message>,
        mandatory: bool,
        answers: bool,
    ) -> AmqpResult<Routed> {
        let Some(vhost) = self.vhost.clone() else {
            return Ok((None, false, Vec::new()));
        };
        if msg.exchange.is_empty() && DirectReplies::is_address(&msg.routing_key) {
            let routing_key = msg.routing_key.clone();
            if !self
                .broker
                .direct_replies
                .deliver(&routing_key, msg.clone())
                && mandatory
            {
                self.return_unroutable(id, msg);
            }
            return Ok((None, false, Vec::new()));
        }
        crate::broker::stats::Counters::add(&self.broker.stats.published, 1);
        let mut queues = crate::broker::routing::Destinations::default();
        let original = msg.clone();
        let headers = original.headers();
        vhost
            .route(
                &msg.exchange,
                &msg.routing_key,
                headers,
                Some(&msg),
                &mut queues,
            )
            .map_err(|e| AmqpError::connection(ReplyCode::InternalError, e))?;
        let mut msg = msg;
        let cc = sender_selected_keys(headers);
        if !cc.is_empty() {
            for key in &cc {
                vhost
                    .route(
                        &original.exchange,
                        key,
                        headers,
                        Some(&original),
                        &mut queues,
                    )
                    .map_err(|e| AmqpError::connection(ReplyCode::InternalError, e))?;
            }
            // BCC recipients stay hidden from everyone, as in RabbitMQ.
            if let Some(h) = headers.filter(|h| h.contains_key("BCC")) {
                let mut kept = FieldTable::default();
                for (k, v) in h {
                    if k.as_str() != "BCC" {
                        kept.insert(k.clone(), v.clone());
                    }
                }
                let props = msg.properties().with_headers(kept);
                msg = Arc::new(msg.with_properties(
                    msg.exchange.clone(),
                    msg.routing_key.clone(),
                    props,
                ));
            }
        }
        if queues.is_empty() {
            crate::broker::stats::Counters::add(&self.broker.stats.unroutable, 1);
            if mandatory {
                self.return_unroutable(id, msg);
            }
            return Ok((None, false, Vec::new()));
        }
        let msg_id = self.broker.next_message_id();
        let mut ticket = None;
        let mut rejected = false;
        let mut remote = Vec::new();
        for q in &queues.local {
            match q.publish(msg.clone(), msg_id) {
                PublishOutcome::Enqueued(t) => ticket = ticket.max(t),
                PublishOutcome::Rejected => rejected = true,
                // A quorum queue's answer comes when its group committed it.
                PublishOutcome::Replicating(answer) => remote.push(answer),
            }
        }
        if !queues.remote.is_empty() {
            let mut by_node: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::new();
            for r in queues.remote {
                match by_node.iter_mut().find(|(n, _)| *n == r.node) {
                    Some((_, qs)) => qs.push(r.name),
                    None => by_node.push((r.node, vec![r.name])),
                }
            }
            for (node, qs) in by_node {
                if *node == *self.broker.config.node {
                    // A quorum queue this node served until a moment ago, its
                    // new leader not known yet: refused, not dropped.
                    rejected = true;
                    continue;
                }
                // Only a confirming publisher waits for the owner's answer.
                let done = if answers {
                    let (tx, rx) = oneshot::channel();
                    remote.push(rx);
                    Some(tx)
                } else {
                    None
                };
                if let Some(backlog) = self.broker.forward.send(
                    &self.broker,
                    &node,
                    vhost.name.clone(),
                    qs.into_boxed_slice(),
                    msg.clone(),
                    done,
                ) {
                    // Waited for in the read loop, before the next frame is read.
                    self.forward_flow = Some(backlog);
                }
            }
        }
        Ok((ticket, rejected, remote))
    }
}

/// What routing a message did: (highest store ticket, rejected by a local queue,
/// answers of the nodes owning remote queues it was forwarded to).
type Routed = (Option<u64>, bool, Vec<oneshot::Receiver<bool>>);

/// Sends a confirm channel's acks in order, each once the store has what it confirms on disk;
/// everything that is ready together goes out as one `multiple` ack.
async fn run_confirmer(
    mut rx: mpsc::UnboundedReceiver<ConfirmItem>,
    handle: Arc<ChannelHandle>,
    store: Option<MessageStore>,
    broker: std::sync::Weak<crate::broker::Broker>,
) {
    use amq_protocol::protocol::basic;
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while let Ok(item) = rx.try_recv() {
            batch.push(item);
        }
        let max_ticket = batch
            .iter()
            .filter_map(|i| match i {
                ConfirmItem::Ack(_, t, _) => *t,
                ConfirmItem::Nack(_) => None,
            })
            .max();
        let mut failed = false;
        if let (Some(t), Some(store)) = (max_ticket, &store) {
            failed = store.wait_synced(t).await.is_err();
        }
        let mut run_end: Option<u64> = None;
        // Counted as confirmed when the ack goes out (after the fsync and the owners' answers).
        let mut acked = 0u64;
        let flush = |run_end: &mut Option<u64>| {
            if let Some(tag) = run_end.take() {
                handle.send(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: true,
                })));
            }
        };
        for item in batch.drain(..) {
            let item = match item {
                ConfirmItem::Ack(seq, t, remote) => {
                    // Confirmed only once every owning node accepted it too.
                    let mut ok = !(failed && t.is_some());
                    for answer in remote {
                        ok &= answer.await.unwrap_or(false);
                    }
                    if ok {
                        ConfirmItem::Ack(seq, t, Vec::new())
                    } else {
                        ConfirmItem::Nack(seq)
                    }
                }
                nack => nack,
            };
            match item {
                ConfirmItem::Ack(seq, _, _) => {
                    acked += 1;
                    run_end = Some(seq);
                }
                ConfirmItem::Nack(seq) => {
                    flush(&mut run_end);
                    handle.send(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: seq,
                        multiple: false,
                        requeue: false,
                    })));
                }
            }
        }
        flush(&mut run_end);
        if let Some(b) = broker.upgrade() {
            crate::broker::stats::Counters::add(&b.stats.confirmed, acked);
        }
    }
}
