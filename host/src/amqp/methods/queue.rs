//! queue.declare / bind / unbind / purge / delete.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, queue};

use super::exchange::meta_error;
use crate::amqp::connection::Connection;
use crate::amqp::short_string::short;
use crate::base::error::{AmqpError, AmqpResult, ReplyCode};
use crate::broker::permissions::Access;
use crate::broker::queue_delete::{DeleteRefusal, DeleteRequest};
use crate::meta::{
    BindingRecord, DestinationKind, MetaCommand, MetaError, MetaOutcome, QueueRecord,
};
use crate::queue::{Queue, QueueConfig, QueueType};

use crate::base::ids::generated_name;

impl Connection {
    /// Resolves a queue name ("" = the channel's last declared queue) to a queue this
    /// connection may use.
    pub(crate) fn resolve_queue_name(&mut self, id: u16, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.channel(id)?
            .last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    pub(crate) fn usable_queue(&self, name: &str) -> AmqpResult<Arc<Queue>> {
        let vhost = self.vhost_name();
        let local = self.vhost.as_ref().and_then(|v| v.queue(name));
        let Some(q) = local else {
            return Err(self.remote_queue_error(&vhost, name));
        };
        self.check_exclusive(&q)?;
        Ok(q)
    }

    /// Which node a new queue lives on: this one (`client-local`, the
    /// default), or with `x-queue-leader-locator = balanced` (or a policy's
    /// `queue-leader-locator`) the running node owning the fewest queues. Exclusive queues always stay with their connection.
    fn owner_for(&self, record: &QueueRecord) -> AmqpResult<String> {
        let me = self.broker.config.node.clone();
        // A policy's locator wins over the argument (RabbitMQ's rabbit_queue_location).
        let from_policy =
            crate::broker::policies::queue_definition(&self.broker.meta.read(), record)
                .get("queue-leader-locator")
                .and_then(|v| v.as_text())
                .map(str::to_string);
        let locator = from_policy.or_else(|| {
            ["x-queue-leader-locator", "x-queue-master-locator"]
                .iter()
                .find_map(|k| crate::meta::state::string_arg(&record.arguments, k))
        });
        let Some(locator) = locator else {
            return Ok(me);
        };
        match locator.as_str() {
            "client-local" => Ok(me),
            "balanced" | "min-masters" | "random" | "least-leaders" => {
                if record.exclusive_owner.is_some() {
                    return Ok(me);
                }
                let Some(cluster) = self.broker.meta.cluster() else {
                    return Ok(me);
                };
                let (disc, ram) = cluster.members();
                let running: Vec<String> = disc
                    .into_iter()
                    .chain(ram)
                    .filter(|n| cluster.is_up(n))
                    .map(|n| n.name)
                    .collect();
                let state = self.broker.meta.read();
                let count = |node: &str| state.queues.values().filter(|q| q.node == node).count();
                Ok(running
                    .into_iter()
                    .min_by_key(|n| (count(n), n != &me, n.clone()))
                    .unwrap_or(me))
            }
            other => Err(AmqpError::precondition(format!(
                "invalid arg 'x-queue-leader-locator' for queue '{}' in vhost '{}': {other:?} is not one of client-local, balanced",
                record.name, record.vhost
            ))),
        }
    }

    /// A new quorum queue's members: up to `x-quorum-initial-group-size`
    /// (default 3) running disc nodes, the chosen owner first.
    fn quorum_members(&self, record: &QueueRecord) -> AmqpResult<Vec<String>> {
        let size = match record.arguments.inner().get("x-quorum-initial-group-size") {
            None => crate::quorum::DEFAULT_GROUP_SIZE,
            Some(v) => match crate::meta::equivalence::as_int(v) {
                Some(n) if n > 0 => n.min(1000) as usize,
                _ => {
                    return Err(AmqpError::precondition(format!(
                        "invalid arg 'x-quorum-initial-group-size' for queue '{}' in vhost '{}': {{value_zero_or_less,{v:?}}}",
                        record.name, record.vhost
                    )));
                }
            },
        };
        let Some(cluster) = self.broker.meta.cluster() else {
            return Ok(vec![record.node.clone()]);
        };
        let (disc, _) = cluster.members();
        let mut running: Vec<String> = disc
            .into_iter()
            .filter(|n| n.name == self.broker.config.node || cluster.is_up(n))
            .map(|n| n.name)
            .collect();
        running.sort_by_key(|n| (n != &record.node, n.clone()));
        running.truncate(size);
        if running.is_empty() {
            return Err(AmqpError::internal(
                "no running disc node can hold a quorum queue",
            ));
        }
        Ok(running)
    }

    /// queue.delete of a queue this node does not hold: on its owner, which checks the flags
    /// and counts; a queue that exists nowhere is deleted already (delete-ok, 0, as RabbitMQ).
    async fn delete_remote_queue(&mut self, req: &DeleteRequest) -> AmqpResult<u32> {
        let record = self
            .broker
            .meta
            .read()
            .queue(&req.vhost, &req.name)
            .cloned();
        let Some(record) = record else {
            return Ok(0);
        };
        if let Some(owner) = &record.exclusive_owner
            && owner != &self.owner
        {
            return Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                req.name, req.vhost
            )));
        }
        let cluster = self
            .broker
            .meta
            .cluster()
            .ok_or_else(|| AmqpError::internal("metadata store restarting"))?;
        let home = self.broker.queue_home(&record);
        let Some(owner) = cluster.running_node(&home) else {
            // Its owner is down: what it holds cannot be counted or checked.
            return Err(self.remote_queue_error(&req.vhost, &req.name));
        };
        let answer: Result<u32, DeleteRefusal> = cluster
            .peers
            .call(
                &owner,
                &crate::broker::calls::QueueDelete(req.clone()),
                std::time::Duration::from_secs(10),
            )
            .await
            .map_err(|e| {
                AmqpError::internal(format!("deleting through node {}: {e}", owner.name))
            })?;
        answer.map_err(|r| delete_refused(r, req))
    }

    /// Why a queue that is not on this node cannot be used here.
    fn remote_queue_error(&self, vhost: &str, name: &str) -> AmqpError {
        let record = self.broker.meta.read().queue(vhost, name).cloned();
        let Some(record) = record else {
            return AmqpError::not_found(format!("no queue '{name}' in vhost '{vhost}'"));
        };
        let home = self.broker.queue_home(&record);
        let owner_up = self
            .broker
            .meta
            .cluster()
            .and_then(|c| c.running_node(&home))
            .is_some();
        if !owner_up {
            return home_node_down(&record, &home);
        }
        AmqpError::connection(
            ReplyCode::NotImplemented,
            format!(
                "NOT_IMPLEMENTED - queue '{name}' in vhost '{vhost}' lives on node '{}': consume from it there (this version does not proxy consumers across nodes yet)",
                record.node
            ),
        )
    }

    fn check_exclusive(&self, q: &Queue) -> AmqpResult<()> {
        match &q.record.exclusive_owner {
            Some(owner) if owner != &self.owner => Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                q.name(),
                q.vhost()
            ))),
            _ => Ok(()),
        }
    }

    fn declare_ok(&self, id: u16, nowait: bool, name: String, messages: u32, consumers: u32) {
        self.reply(
            id,
            nowait,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: short(&name),
                message_count: messages,
                consumer_count: consumers,
            })),
        );
    }

    /// declare-ok for a queue that exists (after a passive or an actual declare).
    async fn answer_declared(&mut self, id: u16, nowait: bool, name: String) -> AmqpResult<()> {
        let local = self.vhost.as_ref().and_then(|v| v.queue(&name));
        if local.is_none() {
            // A queue whose owner is another cluster node: known from the metadata.
            let vhost = self.vhost_name();
            let record = self.broker.meta.read().queue(&vhost, &name).cloned();
            if let Some(record) = record {
                if let Some(owner) = &record.exclusive_owner
                    && owner != &self.owner
                {
                    return Err(AmqpError::resource_locked(format!(
                        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
                    )));
                }
                let cluster = self.broker.meta.cluster();
                let home = self.broker.queue_home(&record);
                let owner = cluster
                    .as_ref()
                    .and_then(|c| c.running_node(&home).map(|n| (c.clone(), n)));
                // Between leaders a quorum queue exists all the same: a member counts what
                // it holds.
                let held_here = crate::quorum::is_quorum(&record)
                    .then(|| {
                        self.broker
                            .quorum
                            .get(record.uid)
                            .map(|g| g.contents.lock().messages.len() as u32)
                    })
                    .flatten();
                let Some((cluster, owner)) = owner else {
                    if let Some(held) = held_here {
                        self.channel(id)?.last_queue = Some(name.clone());
                        self.declare_ok(id, nowait, name, held, 0);
                        return Ok(());
                    }
                    return Err(self.remote_queue_error(&vhost, &name));
                };
                // The owner knows the counts; a declare-ok without them would mislead.
                let ask = crate::broker::calls::QueueCounts {
                    vhost: vhost.clone(),
                    name: name.clone(),
                };
                let counts = cluster
                    .peers
                    .call(&owner, &ask, std::time::Duration::from_secs(5))
                    .await;
                let counts = match (counts, held_here) {
                    (Ok(c), _) => c,
                    (Err(_), Some(held)) => (held, 0),
                    (Err(e), None) => {
                        tracing::info!(queue = %name, node = %owner.name, error = %e, "no counts from the queue's node");
                        return Err(home_node_down(&record, &home));
                    }
                };
                self.channel(id)?.last_queue = Some(name.clone());
                self.declare_ok(id, nowait, name, counts.0, counts.1);
                return Ok(());
            }
        }
        let q = self.usable_queue(&name)?;
        // A declare counts as a use: it renews the x-expires lease, as in RabbitMQ.
        q.touch();
        let s = q.stats();
        self.channel(id)?.last_queue = Some(name.clone());
        self.declare_ok(
            id,
            nowait,
            name,
            s.messages_ready as u32,
            s.consumers as u32,
        );
        Ok(())
    }

    pub(crate) async fn queue_method(&mut self, id: u16, m: queue::AMQPMethod) -> AmqpResult<()> {
        let vhost = self.vhost_name();
        match m {
            queue::AMQPMethod::Declare(d) => {
                let mut name = d.queue.as_str().to_string();
                if d.passive && name == crate::broker::direct_reply::PSEUDO_QUEUE {
                    // The direct reply-to pseudo-queue always "exists", as in RabbitMQ.
                    self.declare_ok(id, d.nowait, name, 0, 0);
                    return Ok(());
                }
                if d.passive {
                    let name = self.resolve_queue_name(id, &name)?;
                    return self.answer_declared(id, d.nowait, name).await;
                }
                if name.is_empty() {
                    name = generated_name("amq.gen-");
                } else if name.starts_with("amq.") {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{name}' contains reserved prefix 'amq.*'"
                    )));
                }
                self.check("queue", &name, Access::Configure)?;
                let config = QueueConfig::parse(&d.arguments, &name, &vhost)
                    .map_err(AmqpError::precondition)?;
                if config.queue_type == QueueType::Quorum {
                    if !d.durable {
                        return Err(AmqpError::precondition(format!(
                            "invalid property 'non-durable' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                    if d.exclusive {
                        return Err(AmqpError::precondition(format!(
                            "invalid property 'exclusive-owner' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                    if d.auto_delete {
                        return Err(AmqpError::precondition(format!(
                            "invalid property 'auto-delete' for queue '{name}' in vhost '{vhost}'"
                        )));
                    }
                }
                if let Some(dlx) = &config.dead_letter_exchange {
                    // RabbitMQ checks the publisher may write to the dead-letter exchange.
                    self.check("exchange", dlx, Access::Write)?;
                }
                let record = QueueRecord {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    exclusive_owner: d.exclusive.then(|| self.owner.clone()),
                    arguments: d.arguments,
                    uid: rand::random::<u64>() | 1,
                    node: String::new(),
                    members: Vec::new(),
                };
                let mut record = record;
                record.node = self.owner_for(&record)?;
                if config.queue_type == QueueType::Quorum {
                    record.members = self.quorum_members(&record)?;
                    record.node = record.members[0].clone();
                }
                let quorum_record =
                    (config.queue_type == QueueType::Quorum).then(|| record.clone());
                if let Some(existing) = self.vhost.as_ref().and_then(|v| v.queue(&name)) {
                    self.check_exclusive(&existing)?;
                }
                let created = match self
                    .broker
                    .meta
                    .submit(MetaCommand::DeclareQueue(record))
                    .await
                {
                    Ok(crate::meta::MetaOutcome::Done) => true,
                    Ok(_) => false,
                    Err(MetaError::Locked(t)) => return Err(AmqpError::resource_locked(t)),
                    Err(e) => return Err(meta_error(e)),
                };
                if created && d.exclusive {
                    self.exclusive_queues.push(name.clone());
                }
                if created && let Some(record) = quorum_record {
                    // Publishes right after declare-ok must find a leader.
                    let serving = self
                        .broker
                        .quorum_wait_serving(&record, std::time::Duration::from_secs(10))
                        .await;
                    if !serving {
                        tracing::warn!(queue = %name, "quorum queue has no leader yet");
                    }
                }
                self.answer_declared(id, d.nowait, name).await
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.resolve_queue_name(id, b.queue.as_str())?;
                self.queue_binding(
                    true,
                    &name,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )
                .await?;
                self.reply(
                    id,
                    b.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                );
                Ok(())
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.resolve_queue_name(id, b.queue.as_str())?;
                self.queue_binding(
                    false,
                    &name,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )
                .await?;
                self.send(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
                Ok(())
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.resolve_queue_name(id, p.queue.as_str())?;
                self.check("queue", &name, Access::Read)?;
                let n = match self.remote_owner(&name) {
                    Some(owner) => {
                        let cluster = self
                            .broker
                            .meta
                            .cluster()
                            .ok_or_else(|| AmqpError::internal("metadata store restarting"))?;
                        let purge = crate::broker::calls::QueuePurge {
                            vhost: vhost.clone(),
                            name: name.clone(),
                        };
                        cluster
                            .peers
                            .call(&owner, &purge, std::time::Duration::from_secs(10))
                            .await
                            .map_err(|e| {
                                AmqpError::internal(format!(
                                    "purging through node {}: {e}",
                                    owner.name
                                ))
                            })?
                    }
                    None => self.usable_queue(&name)?.purge(),
                };
                self.reply(
                    id,
                    p.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                        message_count: n,
                    })),
                );
                Ok(())
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.resolve_queue_name(id, d.queue.as_str())?;
                self.check("queue", &name, Access::Configure)?;
                let req = DeleteRequest {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    if_unused: d.if_unused,
                    if_empty: d.if_empty,
                };
                let count = if let Some(q) = self.vhost.as_ref().and_then(|v| v.queue(&name)) {
                    self.check_exclusive(&q)?;
                    let count = self
                        .broker
                        .delete_local_queue(&req)
                        .await
                        .map_err(|r| delete_refused(r, &req))?;
                    self.exclusive_queues.retain(|q| q != &name);
                    count
                } else {
                    self.delete_remote_queue(&req).await?
                };
                self.reply(
                    id,
                    d.nowait,
                    AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                        message_count: count,
                    })),
                );
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("unexpected queue method")),
        }
    }

    async fn queue_binding(
        &mut self,
        bind: bool,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: amq_protocol::types::FieldTable,
    ) -> AmqpResult<()> {
        let record = self.queue_binding_record(queue, exchange, routing_key, arguments)?;
        self.submit_binding(bind, record).await
    }

    /// Pipelined queue.binds of one channel, already read from the socket, committed as
    /// one metadata change (one Raft entry, one disk write) instead of one each. What
    /// the client sees is what binding one by one gives: a bind-ok for each bind up to
    /// the first that fails, then that failure's channel error; nothing after it is done.
    pub(crate) async fn queue_bind_batch(
        &mut self,
        id: u16,
        binds: Vec<queue::Bind>,
        trailing: Option<AmqpError>,
    ) -> AmqpResult<()> {
        let mut records = Vec::with_capacity(binds.len());
        let mut nowaits = Vec::with_capacity(binds.len());
        let mut refused = None;
        for b in binds {
            let checked = self
                .resolve_queue_name(id, b.queue.as_str())
                .and_then(|name| {
                    let record = self.queue_binding_record(
                        &name,
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                    self.probe_binding(&record)?;
                    Ok(record)
                });
            match checked {
                Ok(record) => {
                    records.push(MetaCommand::Bind(record));
                    nowaits.push(b.nowait);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let answers = match records.len() {
            0 => Vec::new(),
            1 => vec![self.broker.meta.submit(records.remove(0)).await],
            _ => match self.broker.meta.submit(MetaCommand::Batch(records)).await {
                Ok(MetaOutcome::Batch(answers)) => answers,
                other => vec![other],
            },
        };
        for (answer, nowait) in answers.into_iter().zip(nowaits) {
            answer.map_err(meta_error)?;
            self.reply(
                id,
                nowait,
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        }
        refused.or(trailing).map_or(Ok(()), Err)
    }

    /// The binding a queue.bind or queue.unbind names, after the access checks.
    fn queue_binding_record(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: amq_protocol::types::FieldTable,
    ) -> AmqpResult<BindingRecord> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check("queue", queue, Access::Write)?;
        self.check("exchange", exchange, Access::Read)?;
        self.check_topic(exchange, routing_key, Access::Read)?;
        if let Some(q) = self.vhost.as_ref().and_then(|v| v.queue(queue)) {
            self.check_exclusive(&q)?;
        }
        let record = BindingRecord {
            vhost: self.vhost_name(),
            source: exchange.to_string(),
            destination: queue.to_string(),
            destination_kind: DestinationKind::Queue,
            routing_key: routing_key.to_string(),
            arguments,
        };
        Ok(record)
    }
}

/// The AMQP answer to a refused delete, in RabbitMQ's words.
fn delete_refused(r: DeleteRefusal, req: &DeleteRequest) -> AmqpError {
    let (name, vhost) = (&req.name, &req.vhost);
    match r {
        DeleteRefusal::InUse => {
            AmqpError::precondition(format!("queue '{name}' in vhost '{vhost}' in use"))
        }
        DeleteRefusal::NotEmpty => {
            AmqpError::precondition(format!("queue '{name}' in vhost '{vhost}' not empty"))
        }
        DeleteRefusal::NotHere => AmqpError::internal(format!(
            "queue '{name}' in vhost '{vhost}' moved while being deleted; try again"
        )),
        DeleteRefusal::Failed(text) => AmqpError::internal(text),
    }
}

/// RabbitMQ's words for a queue whose home node is down or does not answer.
fn home_node_down(record: &QueueRecord, home: &str) -> AmqpError {
    let kind = if record.durable {
        "durable"
    } else {
        "transient"
    };
    AmqpError::not_found(format!(
        "home node '{home}' of {kind} queue '{}' in vhost '{}' is down or inaccessible",
        record.name, record.vhost
    ))
}
