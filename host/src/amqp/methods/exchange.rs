//! exchange.declare / delete / bind / unbind.

use amq_protocol::protocol::{AMQPClass, exchange};
use amq_protocol::types::FieldTable;

use crate::amqp::connection::Connection;
use crate::base::error::{AmqpError, AmqpResult, ReplyCode};
use crate::broker::permissions::Access;
use crate::meta::{BindingRecord, DestinationKind, ExchangeRecord, MetaCommand, MetaError};
use crate::routing::exchange_type::{ExchangeType, RouterError};

pub fn meta_error(e: MetaError) -> AmqpError {
    match e {
        MetaError::NotFound(t) => AmqpError::not_found(t),
        MetaError::Precondition(t) => AmqpError::precondition(t),
        MetaError::Locked(t) => AmqpError::resource_locked(t),
        MetaError::AlreadyExists(t) => AmqpError::precondition(t),
        MetaError::Unavailable(t) | MetaError::Storage(t) => AmqpError::internal(t),
    }
}

impl Connection {
    pub(crate) fn vhost_name(&self) -> String {
        self.vhost
            .as_ref()
            .map(|v| v.name.to_string())
            .unwrap_or_default()
    }

    pub(crate) fn check(&self, kind: &str, name: &str, access: Access) -> AmqpResult<()> {
        let Some(session) = &self.session else {
            return Err(AmqpError::access_refused("not logged in"));
        };
        self.broker
            .check_access(session, &self.vhost_name(), kind, name, access)
    }

    /// Topic authorisation (RabbitMQ's check_topic_authorisation): on a topic exchange, the
    /// routing key of a publish (write) or the binding key of a bind (read) must be allowed.
    pub(crate) fn check_topic(
        &self,
        exchange: &str,
        routing_key: &str,
        access: Access,
    ) -> AmqpResult<()> {
        let (Some(session), Some(vhost)) = (&self.session, &self.vhost) else {
            return Ok(());
        };
        if exchange.is_empty() {
            return Ok(());
        }
        match vhost.exchange(exchange) {
            Some(x) if x.record.kind == "topic" => {
                self.broker
                    .check_topic_access(session, &vhost.name, exchange, routing_key, access)
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn reply(&self, id: u16, nowait: bool, method: AMQPClass) {
        if !nowait {
            self.send(id, method);
        }
    }

    pub(crate) async fn exchange_method(
        &mut self,
        id: u16,
        m: exchange::AMQPMethod,
    ) -> AmqpResult<()> {
        let vhost = self.vhost_name();
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str().to_string();
                if name.is_empty() {
                    return Err(AmqpError::access_refused(
                        "operation not permitted on the default exchange",
                    ));
                }
                if d.passive {
                    if self
                        .vhost
                        .as_ref()
                        .and_then(|v| v.exchange(&name))
                        .is_none()
                    {
                        return Err(AmqpError::not_found(format!(
                            "no exchange '{name}' in vhost '{vhost}'"
                        )));
                    }
                    self.reply(
                        id,
                        d.nowait,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                    return Ok(());
                }
                // RabbitMQ's order: the type, then the name, then permissions; the reserved
                // prefix only stops creating an exchange (re-declaring amq.direct is fine).
                let kind = d.kind.as_str().to_string();
                // RabbitMQ 4.x answers an unknown (or disabled) type this way.
                let Some(t) = self.broker.exchange_type(&kind) else {
                    return Err(AmqpError::precondition(format!(
                        "invalid exchange type '{kind}'"
                    )));
                };
                self.check("exchange", &name, Access::Configure)?;
                let exists = self
                    .vhost
                    .as_ref()
                    .and_then(|v| v.exchange(&name))
                    .is_some();
                if !exists && name.starts_with("amq.") {
                    return Err(AmqpError::access_refused(format!(
                        "exchange name '{name}' contains reserved prefix 'amq.*'"
                    )));
                }
                t.create(&d.arguments).map_err(|e| match e {
                    RouterError::Refused(e) => AmqpError::precondition(format!(
                        "invalid arguments for exchange '{name}' in vhost '{vhost}': {e}"
                    )),
                    RouterError::Failed(e) => AmqpError::connection(
                        ReplyCode::InternalError,
                        format!("INTERNAL_ERROR - {e}"),
                    ),
                })?;
                let rec = ExchangeRecord {
                    vhost,
                    name,
                    kind,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                };
                self.broker
                    .meta
                    .submit(MetaCommand::DeclareExchange(rec))
                    .await
                    .map_err(meta_error)?;
                self.reply(
                    id,
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                );
                Ok(())
            }
            exchange::AMQPMethod::Delete(d) => {
                let name = d.exchange.as_str().to_string();
                if name.is_empty() {
                    return Err(AmqpError::access_refused(
                        "operation not permitted on the default exchange",
                    ));
                }
                if name.starts_with("amq.") {
                    return Err(AmqpError::access_refused(format!(
                        "deletion of system exchange '{name}' in vhost '{vhost}' not allowed"
                    )));
                }
                self.check("exchange", &name, Access::Configure)?;
                match self
                    .broker
                    .meta
                    .submit(MetaCommand::DeleteExchange {
                        vhost,
                        name,
                        if_unused: d.if_unused,
                    })
                    .await
                {
                    // Deleting what does not exist succeeds, as in RabbitMQ.
                    Ok(_) | Err(MetaError::NotFound(_)) => {}
                    Err(e) => return Err(meta_error(e)),
                }
                self.reply(
                    id,
                    d.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                );
                Ok(())
            }
            exchange::AMQPMethod::Bind(b) => {
                self.exchange_binding(
                    true,
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )
                .await?;
                self.reply(
                    id,
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                );
                Ok(())
            }
            exchange::AMQPMethod::Unbind(b) => {
                self.exchange_binding(
                    false,
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    b.arguments,
                )
                .await?;
                self.reply(
                    id,
                    b.nowait,
                    AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::command_invalid("unexpected exchange method")),
        }
    }

    async fn exchange_binding(
        &mut self,
        bind: bool,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        if source.is_empty() || destination.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check("exchange", destination, Access::Write)?;
        self.check("exchange", source, Access::Read)?;
        self.check_topic(source, routing_key, Access::Read)?;
        let record = BindingRecord {
            vhost: self.vhost_name(),
            source: source.to_string(),
            destination: destination.to_string(),
            destination_kind: DestinationKind::Exchange,
            routing_key: routing_key.to_string(),
            arguments,
        };
        self.submit_binding(bind, record).await
    }

    /// Bind or unbind, after the exchange type accepted the binding's arguments.
    pub(crate) async fn submit_binding(
        &mut self,
        bind: bool,
        record: BindingRecord,
    ) -> AmqpResult<()> {
        if bind {
            self.probe_binding(&record)?;
        }
        let cmd = if bind {
            MetaCommand::Bind(record)
        } else {
            MetaCommand::Unbind(record)
        };
        self.broker.meta.submit(cmd).await.map_err(meta_error)?;
        Ok(())
    }

    /// Asks the exchange's type whether it accepts a binding, before anything is
    /// committed, so that a refusal reaches the client.
    pub(crate) fn probe_binding(&self, record: &BindingRecord) -> AmqpResult<()> {
        {
            let kind = self
                .vhost
                .as_ref()
                .and_then(|v| v.exchange(&record.source))
                .map(|x| x.record.kind.clone());
            if let Some(t) = kind.as_deref().and_then(|k| self.broker.exchange_type(k)) {
                let to_amqp = |e| match e {
                    RouterError::Refused(e) => AmqpError::precondition(e),
                    RouterError::Failed(e) => AmqpError::connection(
                        ReplyCode::InternalError,
                        format!("INTERNAL_ERROR - {e}"),
                    ),
                };
                let mut probe = t.create(&FieldTable::default()).map_err(to_amqp)?;
                probe
                    .bind(0, &record.routing_key, &record.arguments)
                    .map_err(to_amqp)?;
            }
        }
        Ok(())
    }
}
