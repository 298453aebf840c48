//! basic.*: qos, consume, cancel, publish (the start of content), get, ack, nack, reject,
//! recover.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic};

use crate::amqp::channel::{PendingPublish, TxAck, requeue_all};
use crate::amqp::connection::Connection;
use crate::amqp::delivery::group_by_queue;
use crate::amqp::short_string::short;
use crate::base::error::{AmqpError, AmqpResult, ReplyCode};
use crate::base::ids::generated_name;
use crate::broker::direct_reply::PSEUDO_QUEUE;
use crate::broker::permissions::Access;
use crate::meta::equivalence::as_int;
use crate::queue::ConsumeRequest;

/// How long a consumer waits for a quorum queue between leaders.
const QUORUM_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Connection {
    pub(crate) async fn basic_method(&mut self, id: u16, m: basic::AMQPMethod) -> AmqpResult<()> {
        match m {
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::connection(
                        ReplyCode::NotImplemented,
                        "NOT_IMPLEMENTED - immediate=true",
                    ));
                }
                let exchange = p.exchange.as_str().to_string();
                self.check("exchange", &exchange, Access::Write)?;
                let routing_key = p.routing_key.as_str().to_string();
                self.check_topic(&exchange, &routing_key, Access::Write)?;
                self.has_published = true;
                self.channel(id)?.pending = Some(PendingPublish {
                    exchange,
                    routing_key,
                    mandatory: p.mandatory,
                    header: None,
                    chunks: Vec::new(),
                    received: 0,
                });
                Ok(())
            }
            basic::AMQPMethod::Qos(q) => {
                {
                    let ch = self.channel(id)?;
                    if q.global {
                        ch.handle.set_global_prefetch(q.prefetch_count as u32);
                        for (queue, _) in ch.consumers.values() {
                            queue.kick();
                        }
                    } else {
                        ch.prefetch = q.prefetch_count;
                    }
                    ch.handle
                        .prefetch
                        .store(ch.prefetch, std::sync::atomic::Ordering::Relaxed);
                }
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(c) if c.queue.as_str() == PSEUDO_QUEUE => {
                if !c.no_ack {
                    return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
                }
                let tag = match c.consumer_tag.as_str() {
                    "" => generated_name("amq.ctag-"),
                    t => t.to_string(),
                };
                let broker = self.broker.clone();
                let ch = self.channel(id)?;
                if ch.reply_consumer.is_some() {
                    return Err(AmqpError::precondition("reply consumer already set"));
                }
                let key = broker
                    .direct_replies
                    .register(ch.handle.clone(), Arc::from(tag.as_str()));
                ch.reply_consumer = Some((tag.clone(), key));
                self.reply(
                    id,
                    c.nowait,
                    AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: short(tag.as_str()),
                    })),
                );
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => {
                let name = self.resolve_queue_name(id, c.queue.as_str())?;
                self.check("queue", &name, Access::Read)?;
                if self.is_quorum_queue(&name) {
                    return self.consume_quorum(id, name, c).await;
                }
                if let Some(owner) = self.remote_owner(&name) {
                    return self.consume_remote(id, owner, name, c).await;
                }
                self.consume_local(id, name, c)
            }
            basic::AMQPMethod::Cancel(c) => {
                let ch = self.channel(id)?;
                if let Some((q, consumer)) = ch.consumers.remove(c.consumer_tag.as_str()) {
                    q.cancel(consumer);
                }
                if let Some(remote) = ch.remote.remove(c.consumer_tag.as_str()) {
                    remote.cancel();
                    // Kept (under its session id) for acks still to come; the tag is free again.
                    ch.remote.insert(remote.id.clone(), remote);
                }
                let cancels_reply = ch
                    .reply_consumer
                    .as_ref()
                    .is_some_and(|(tag, _)| tag == c.consumer_tag.as_str());
                if cancels_reply && let Some((_, key)) = ch.reply_consumer.take() {
                    self.broker.direct_replies.unregister(&key);
                }
                self.reply(
                    id,
                    c.nowait,
                    AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    })),
                );
                Ok(())
            }
            basic::AMQPMethod::Get(g) => {
                let name = self.resolve_queue_name(id, g.queue.as_str())?;
                self.check("queue", &name, Access::Read)?;
                if self.is_quorum_queue(&name) {
                    let deadline = std::time::Instant::now() + QUORUM_LEADER_WAIT;
                    loop {
                        self.await_quorum_leader(&name).await;
                        let Some(owner) = self.remote_owner(&name) else {
                            break;
                        };
                        match self.get_remote(id, owner, name.clone(), g.no_ack).await {
                            Err(e)
                                if matches!(
                                    e.code,
                                    ReplyCode::InternalError | ReplyCode::NotFound
                                ) && std::time::Instant::now() < deadline =>
                            {
                                // The leader moved: a new session at the new one.
                                if let Some(s) =
                                    self.channel(id)?.remote.remove(&format!("get:{name}"))
                                {
                                    s.close();
                                }
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            }
                            other => return other,
                        }
                    }
                } else if let Some(owner) = self.remote_owner(&name) {
                    return self.get_remote(id, owner, name, g.no_ack).await;
                }
                let q = self.usable_queue(&name)?;
                let handle = self.channel(id)?.handle.clone();
                if !q.get(handle.as_ref(), g.no_ack) {
                    self.send(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Ack(a) => {
                if let Some(tx) = self.channel(id)?.tx.as_mut() {
                    tx.acks.push(TxAck::Ack {
                        tag: a.delivery_tag,
                        multiple: a.multiple,
                    });
                    return Ok(());
                }
                self.ack(id, a.delivery_tag, a.multiple)
            }
            basic::AMQPMethod::Nack(n) => {
                if let Some(tx) = self.channel(id)?.tx.as_mut() {
                    tx.acks.push(TxAck::Reject {
                        tag: n.delivery_tag,
                        multiple: n.multiple,
                        requeue: n.requeue,
                    });
                    return Ok(());
                }
                self.reject(id, n.delivery_tag, n.multiple, n.requeue)
            }
            basic::AMQPMethod::Reject(r) => {
                if let Some(tx) = self.channel(id)?.tx.as_mut() {
                    tx.acks.push(TxAck::Reject {
                        tag: r.delivery_tag,
                        multiple: false,
                        requeue: r.requeue,
                    });
                    return Ok(());
                }
                self.reject(id, r.delivery_tag, false, r.requeue)
            }
            basic::AMQPMethod::Recover(r) => self.recover(id, r.requeue, true),
            basic::AMQPMethod::RecoverAsync(r) => self.recover(id, r.requeue, false),
            _ => Err(AmqpError::command_invalid("unexpected basic method")),
        }
    }

    /// The owner of a queue that lives on another running node (None when the
    /// queue is local, unknown, or its owner is down: those get the usual errors).
    pub(crate) fn remote_owner(&self, name: &str) -> Option<crate::cluster::ClusterNode> {
        if self.vhost.as_ref().and_then(|v| v.queue(name)).is_some() {
            return None;
        }
        let vhost = self.vhost_name();
        let record = self.broker.meta.read().queue(&vhost, name).cloned()?;
        let home = self.broker.queue_home(&record);
        self.broker.meta.cluster()?.running_node(&home)
    }

    /// basic.consume on a queue served by this node.
    fn consume_local(&mut self, id: u16, name: String, c: basic::Consume) -> AmqpResult<()> {
        let q = self.usable_queue(&name)?;
        let tag = match c.consumer_tag.as_str() {
            "" => generated_name("amq.ctag-"),
            t => t.to_string(),
        };
        let priority = match c.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => match as_int(v) {
                Some(p) => p.clamp(i32::MIN as i128, i32::MAX as i128) as i32,
                None => {
                    return Err(AmqpError::precondition(format!(
                        "invalid arg 'x-priority' for consumer: {v:?}"
                    )));
                }
            },
        };
        let ch = self.channel(id)?;
        if ch.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                ReplyCode::NotAllowed,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let req = ConsumeRequest {
            tag: Arc::from(tag.as_str()),
            channel: ch.handle.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            priority,
            prefetch: ch.prefetch as u32,
            arguments: c.arguments.clone(),
            on_accepted: (!c.nowait).then(|| {
                let handle = ch.handle.clone();
                let ok = AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(tag.as_str()),
                }));
                Box::new(move || handle.send(ok)) as Box<dyn FnOnce() + Send>
            }),
        };
        let consumer = q.consume(req)?;
        self.channel(id)?.consumers.insert(tag, (q, consumer));
        Ok(())
    }

    pub(crate) fn is_quorum_queue(&self, name: &str) -> bool {
        let vhost = self.vhost_name();
        self.broker
            .meta
            .read()
            .queue(&vhost, name)
            .is_some_and(crate::quorum::is_quorum)
    }

    /// A quorum queue between leaders (the old one just died) is served again
    /// within seconds: wait for that rather than fail the client.
    pub(crate) async fn await_quorum_leader(&self, name: &str) {
        if !self.is_quorum_queue(name) {
            return;
        }
        let deadline = std::time::Instant::now() + QUORUM_LEADER_WAIT;
        while std::time::Instant::now() < deadline {
            // Served here, or by another running node. (This node named as the
            // home without serving means: it led until a moment ago, or it
            // just restarted and has not heard from the leader yet.)
            if self.vhost.as_ref().and_then(|v| v.queue(name)).is_some()
                || self
                    .remote_owner(name)
                    .is_some_and(|n| n.name != self.broker.config.node)
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// basic.consume on a quorum queue: on its leader, here or through the
    /// leader's node; a leader that just died is waited out, not reported.
    async fn consume_quorum(&mut self, id: u16, name: String, c: basic::Consume) -> AmqpResult<()> {
        let deadline = std::time::Instant::now() + QUORUM_LEADER_WAIT;
        loop {
            self.await_quorum_leader(&name).await;
            let Some(owner) = self.remote_owner(&name) else {
                // Served here (or nowhere yet: the usual errors).
                return self.consume_local(id, name, c);
            };
            match self
                .consume_remote(id, owner, name.clone(), c.clone())
                .await
            {
                Err(e)
                    if matches!(e.code, ReplyCode::InternalError | ReplyCode::NotFound)
                        && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(queue = %name, error = %e.text, "quorum queue leader not reachable yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                other => return other,
            }
        }
    }

    /// Unique for the node's lifetime: a consumer tag reused after a cancel
    /// must not find the old session (kept on the owner for late acks).
    fn session_id(&self, id: u16, what: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}/{}/{id}/{what}/{n}", self.broker.config.node, self.id)
    }

    async fn consume_remote(
        &mut self,
        id: u16,
        owner: crate::cluster::ClusterNode,
        name: String,
        c: basic::Consume,
    ) -> AmqpResult<()> {
        let tag = match c.consumer_tag.as_str() {
            "" => generated_name("amq.ctag-"),
            t => t.to_string(),
        };
        let priority = match c.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => as_int(v)
                .map(|p| p.clamp(i32::MIN as i128, i32::MAX as i128) as i32)
                .ok_or_else(|| {
                    AmqpError::precondition(format!("invalid arg 'x-priority' for consumer: {v:?}"))
                })?,
        };
        let ch = self.channel(id)?;
        if ch.consumers.contains_key(&tag) || ch.remote.contains_key(&tag) {
            return Err(AmqpError::connection(
                ReplyCode::NotAllowed,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let handle = ch.handle.clone();
        let prefetch = ch.prefetch as u32;
        let session_id = self.session_id(id, &format!("consume/{tag}"));
        let session = crate::broker::remote_session::RemoteSession::new(
            &self.broker,
            session_id.clone(),
            owner.clone(),
            handle,
            Some(Arc::from(tag.as_str())),
            c.no_ack,
        );
        let open = crate::broker::proxy::OpenRequest {
            session: session_id,
            from_node: self.broker.config.node.clone(),
            vhost: self.vhost_name(),
            queue: name,
            consume: Some(crate::broker::proxy::ConsumeSpec {
                no_ack: c.no_ack,
                exclusive: c.exclusive,
                priority,
                prefetch,
            }),
        };
        let cluster = self
            .broker
            .meta
            .cluster()
            .ok_or_else(|| AmqpError::internal("metadata store restarting"))?;
        let opened = cluster
            .peers
            .call(
                &owner,
                &crate::broker::calls::ProxyOpen(open.clone()),
                std::time::Duration::from_secs(10),
            )
            .await;
        if let Err(e) = opened {
            session.close();
            use crate::peer::code;
            return Err(match e {
                crate::peer::PeerError::Remote(f) if f.code == code::ACCESS_REFUSED => {
                    AmqpError::access_refused(f.text)
                }
                crate::peer::PeerError::Remote(f) if f.code == code::NOT_FOUND => {
                    AmqpError::not_found(f.text)
                }
                e => AmqpError::internal(format!("consuming through node {}: {e}", owner.name)),
            });
        }
        if !c.nowait {
            self.send(
                id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: short(tag.as_str()),
                })),
            );
        }
        session.set_ready(open);
        self.channel(id)?.remote.insert(tag, session);
        Ok(())
    }

    async fn get_remote(
        &mut self,
        id: u16,
        owner: crate::cluster::ClusterNode,
        name: String,
        no_ack: bool,
    ) -> AmqpResult<()> {
        let key = format!("get:{name}");
        let cluster = self
            .broker
            .meta
            .cluster()
            .ok_or_else(|| AmqpError::internal("metadata store restarting"))?;
        let ch = self.channel(id)?;
        let handle = ch.handle.clone();
        let existing = ch.remote.get(&key).cloned();
        let session = match existing {
            Some(s) => s,
            None => {
                let session_id = self.session_id(id, &format!("get/{name}"));
                let session = crate::broker::remote_session::RemoteSession::new(
                    &self.broker,
                    session_id.clone(),
                    owner.clone(),
                    handle.clone(),
                    None,
                    false,
                );
                let open = crate::broker::proxy::OpenRequest {
                    session: session_id,
                    from_node: self.broker.config.node.clone(),
                    vhost: self.vhost_name(),
                    queue: name.clone(),
                    consume: None,
                };
                let opened = cluster
                    .peers
                    .call(
                        &owner,
                        &crate::broker::calls::ProxyOpen(open.clone()),
                        std::time::Duration::from_secs(10),
                    )
                    .await;
                if let Err(e) = opened {
                    session.close();
                    return Err(AmqpError::internal(format!(
                        "basic.get through node {}: {e}",
                        owner.name
                    )));
                }
                session.set_ready(open);
                self.channel(id)?.remote.insert(key, session.clone());
                session
            }
        };
        let got = session.get(no_ack).await;
        match got {
            Ok(Some(d)) => {
                let msg = d.message.into_message();
                let settle = session.settler();
                handle.deliver_remote(crate::broker::channels::RemoteDelivery {
                    owner: settle,
                    remote_tag: d.tag,
                    consumer_tag: None,
                    redelivered: d.redelivered,
                    message_count: d.message_count,
                    msg,
                    no_ack,
                });
            }
            Ok(None) => self.send(
                id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            ),
            Err(e) => {
                return Err(AmqpError::internal(format!(
                    "basic.get through node {}: {e}",
                    owner.name
                )));
            }
        }
        Ok(())
    }

    fn recover(&mut self, id: u16, requeue: bool, reply: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::connection(
                ReplyCode::NotImplemented,
                "NOT_IMPLEMENTED - requeue=false",
            ));
        }
        let handle = self.channel(id)?.handle.clone();
        if reply {
            // recover-ok goes out before the redeliveries: clients drop deliveries that
            // arrive ahead of it as belonging to the time before the recover.
            self.send(
                id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        requeue_all(&handle);
        Ok(())
    }

    fn unknown_tag(tag: u64) -> AmqpError {
        AmqpError::precondition(format!("unknown delivery tag {tag}"))
    }

    pub(crate) fn ack(&mut self, id: u16, tag: u64, multiple: bool) -> AmqpResult<()> {
        let ch = self.channel(id)?;
        let items = ch
            .handle
            .take_unacked(tag, multiple)
            .ok_or_else(|| Self::unknown_tag(tag))?;
        let global = ch.handle.prefetch_global() > 0;
        let touched = group_by_queue(items, None);
        for (q, ids) in &touched {
            q.ack(ids);
        }
        if global {
            // Room on the channel may unblock consumers of other queues too.
            for (q, _) in ch.consumers.values() {
                if !touched.iter().any(|(t, _)| Arc::ptr_eq(t, q)) {
                    q.kick();
                }
            }
        }
        Ok(())
    }

    pub(crate) fn reject(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> AmqpResult<()> {
        let ch = self.channel(id)?;
        let items = ch
            .handle
            .take_unacked(tag, multiple)
            .ok_or_else(|| Self::unknown_tag(tag))?;
        let global = ch.handle.prefetch_global() > 0;
        for (q, ids) in group_by_queue(items, Some(requeue)) {
            q.reject(&ids, requeue);
        }
        if global {
            for (q, _) in ch.consumers.values() {
                q.kick();
            }
        }
        Ok(())
    }
}
