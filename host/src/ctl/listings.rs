//! Listings for `warrenctl list_*`: queues, exchanges, bindings, connections, channels and
//! consumers, as rows of RabbitMQ's field names (the columns a request names, in its order).
//! Reading only: the commands that change state are in `handler.rs`.

use std::sync::atomic::Ordering;

use amq_protocol::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use super::handler::{NodeHandler, usage};
use super::protocol::{Request, Response, exit_code};
use crate::meta::{BindingRecord, DestinationKind, ExchangeRecord, QueueRecord};

/// One listing row: field name → value.
pub(super) type Row = Box<dyn Fn(&str) -> Value>;

/// A node's own queues, asked for by the node that lists the whole cluster's (call id 300):
/// the same request as `list_queues` with `local_only`, answered with its rows.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct QueueRows {
    pub args: Vec<String>,
    pub options: std::collections::BTreeMap<String, String>,
}
crate::peer_call!(QueueRows, 300, "misc", Result<Vec<Vec<Cell>>, String>);

/// One value of a listing on the peer wire (which has no self-describing JSON values).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    /// An array or an object (arguments, members), as JSON text.
    Json(String),
}

impl From<&Value> for Cell {
    fn from(v: &Value) -> Cell {
        match v {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Cell::Int(i),
                (None, Some(u), _) => Cell::UInt(u),
                (_, _, f) => Cell::Float(f.unwrap_or(0.0)),
            },
            Value::String(s) => Cell::Text(s.clone()),
            other => Cell::Json(other.to_string()),
        }
    }
}

impl From<Cell> for Value {
    fn from(c: Cell) -> Value {
        match c {
            Cell::Null => Value::Null,
            Cell::Bool(b) => json!(b),
            Cell::Int(i) => json!(i),
            Cell::UInt(u) => json!(u),
            Cell::Float(f) => json!(f),
            Cell::Text(s) => json!(s),
            Cell::Json(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }
}

impl NodeHandler {
    /// The answer to [`QueueRows`]: this node's queues only.
    pub fn queue_rows(&self, ask: QueueRows) -> Result<Vec<Vec<Cell>>, String> {
        let mut req = Request::new("list_queues").args(ask.args);
        req.options = ask.options;
        req.options.insert("local_only".into(), "true".into());
        let resp = self.list_queues(&req);
        if !resp.ok {
            return Err(resp.error.unwrap_or_default());
        }
        Ok(resp
            .rows
            .unwrap_or_default()
            .iter()
            .map(|row| row.iter().map(Cell::from).collect())
            .collect())
    }
}

fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::Void => Value::Null,
        other => match crate::meta::equivalence::as_int(other) {
            Some(i) => json!(i as i64),
            None => json!(format!("{other:?}")),
        },
    }
}

pub(super) fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), amqp_to_json(v)))
            .collect(),
    )
}

/// Builds a table from rows of (field → value) lookups; unknown fields are a usage error.
pub(super) fn table(
    fields: &[String],
    known: &[&str],
    rows: impl Iterator<Item = Row>,
) -> Response {
    let bad: Vec<&String> = fields
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .collect();
    if !bad.is_empty() {
        return usage(format!(
            "Info key(s) {} are not supported. Supported info keys: {}",
            bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
            known.join(", ")
        ));
    }
    let rows = rows
        .map(|get| fields.iter().map(|f| get(f)).collect())
        .collect();
    Response::table(fields.to_vec(), rows)
}

const QUEUE_FIELDS: &[&str] = &[
    "name",
    "vhost",
    "durable",
    "auto_delete",
    "exclusive",
    "arguments",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "message_bytes",
    "message_bytes_ready",
    "message_bytes_unacknowledged",
    "consumers",
    "memory",
    "state",
    "type",
    "node",
    "leader",
    "members",
    "online",
    "exclusive_consumer_tag",
    "messages_persistent",
    "policy",
    "operator_policy",
    "effective_policy_definition",
];

/// A queue's policy columns: its policy's name, its operator policy's name (empty when
/// none, as RabbitMQ prints them) and the settings they give it together.
fn policy_cells(state: &crate::meta::MetaState, r: &QueueRecord) -> [Value; 3] {
    let (user, operator) = state.queue_policies(r);
    [
        json!(user.map_or("", |p| p.name.as_str())),
        json!(operator.map_or("", |p| p.name.as_str())),
        crate::meta::policy::definition_json(&crate::broker::policies::queue_definition(state, r)),
    ]
}

fn policy_cell(field: &str, cells: &[Value; 3]) -> Option<Value> {
    match field {
        "policy" => Some(cells[0].clone()),
        "operator_policy" => Some(cells[1].clone()),
        "effective_policy_definition" => Some(cells[2].clone()),
        _ => None,
    }
}

impl NodeHandler {
    /// Every queue of the cluster: this node's, the other running nodes'
    /// (asked for theirs), and those whose owner is down (state "down").
    pub(super) async fn list_queues_cluster(&self, req: &Request) -> Response {
        if req.options.contains_key("local_only") {
            return self.list_queues(req);
        }
        // The names tell which queues some node listed; asked for here
        // when the caller did not ask for them, and dropped again at the end.
        let mut req = req.clone();
        let added_name = !req.args.is_empty() && !req.args.iter().any(|a| a == "name");
        if added_name {
            req.args.push("name".into());
        }
        let req = &req;
        let mut resp = self.list_queues(req);
        if !resp.ok {
            return resp;
        }
        let Some(cluster) = self.broker.meta.cluster() else {
            return resp;
        };
        let me = &self.node.config().node_name;
        let (disc, ram) = cluster.members();
        let mut answered = vec![me.clone()];
        let mut rows = resp.rows.take().unwrap_or_default();
        for n in disc.into_iter().chain(ram) {
            if &n.name == me || !cluster.is_up(&n) {
                continue;
            }
            let ask = QueueRows {
                args: req.args.clone(),
                options: req.options.clone(),
            };
            if let Ok(Ok(theirs)) = cluster
                .peers
                .call(&n, &ask, std::time::Duration::from_secs(5))
                .await
            {
                rows.extend(
                    theirs
                        .into_iter()
                        .map(|row| row.into_iter().map(Value::from).collect::<Vec<_>>()),
                );
                answered.push(n.name.clone());
            }
        }
        // Queues whose owner did not answer are listed from the metadata, and
        // so are quorum queues no node serves right now (between leaders).
        let vhost = Self::vhost_opt(req);
        let mut columns = resp.columns.clone().unwrap_or_default();
        let name_at = columns.iter().position(|c| c == "name");
        let listed: std::collections::HashSet<String> = rows
            .iter()
            .filter_map(|r| name_at.and_then(|i| r.get(i)?.as_str().map(String::from)))
            .collect();
        let down: Vec<QueueRecord> = self
            .broker
            .meta
            .read()
            .queues
            .values()
            .filter(|q| {
                q.vhost == vhost
                    && if crate::quorum::is_quorum(q) {
                        !listed.contains(&q.name)
                    } else {
                        !answered.contains(&q.node)
                    }
            })
            .cloned()
            .collect();
        let broker = self.broker.clone();
        for r in down {
            let policies = policy_cells(&broker.meta.read(), &r);
            rows.push(
                columns
                    .iter()
                    .map(|f| match f.as_str() {
                        f @ ("policy" | "operator_policy" | "effective_policy_definition") => {
                            policy_cell(f, &policies).unwrap_or(Value::Null)
                        }
                        "name" => json!(r.name),
                        "vhost" => json!(r.vhost),
                        "durable" => json!(r.durable),
                        "auto_delete" => json!(r.auto_delete),
                        "exclusive" => json!(r.exclusive_owner.is_some()),
                        "arguments" => table_to_json(&r.arguments),
                        "state" => json!(if crate::quorum::is_quorum(&r) {
                            "minority"
                        } else {
                            "down"
                        }),
                        "node" => json!(r.node),
                        "leader" => json!(if crate::quorum::is_quorum(&r) {
                            String::new()
                        } else {
                            r.node.clone()
                        }),
                        "members" => json!(r.members),
                        "online" => json!(broker.quorum_online_of(&r.members)),
                        "type" => json!(
                            crate::queue::QueueConfig::parse(&r.arguments, &r.name, &r.vhost)
                                .map(|c| c.queue_type.as_str())
                                .unwrap_or("classic")
                        ),
                        // Counts of a queue whose node does not answer are unknown: an empty
                        // cell, as RabbitMQ shows them, never a 0 nobody measured.
                        _ => Value::Null,
                    })
                    .collect(),
            );
        }
        let name_col = columns.iter().position(|c| c == "name");
        if let Some(i) = name_col {
            rows.sort_by(|a, b| {
                a.get(i)
                    .and_then(|v| v.as_str())
                    .cmp(&b.get(i).and_then(|v| v.as_str()))
            });
        }
        if added_name {
            columns.pop();
            for r in &mut rows {
                r.pop();
            }
            resp.columns = Some(columns);
        }
        resp.rows = Some(rows);
        resp
    }

    pub(super) fn list_queues(&self, req: &Request) -> Response {
        let vhost = Self::vhost_opt(req);
        let broker = &self.broker;
        let Some(v) = broker.vhost(&vhost) else {
            return Response::error(
                exit_code::DATA_ERR,
                format!("Virtual host '{vhost}' does not exist"),
            );
        };
        let mut queues: Vec<_> = v.queues.read().values().cloned().collect();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        let rows = queues.into_iter().map(|q| {
            let s = q.stats();
            let r = q.record.clone();
            let qtype = q.queue_type().as_str();
            let consumers = q.consumers();
            let quorum = crate::quorum::is_quorum(&r);
            let me = broker.config.node.clone();
            // The live queue's record is a copy from when it started here;
            // members change after that.
            let state = broker.meta.read();
            let members = state
                .queue(&r.vhost, &r.name)
                .map(|m| m.members.clone())
                .unwrap_or_default();
            let policies = policy_cells(&state, &r);
            drop(state);
            let online = broker.quorum_online_of(&members);
            let state = q.state();
            Box::new(move |f: &str| match f {
                "name" => json!(r.name),
                "vhost" => json!(r.vhost),
                "durable" => json!(r.durable),
                "auto_delete" => json!(r.auto_delete),
                "exclusive" => json!(r.exclusive_owner.is_some()),
                "arguments" => table_to_json(&r.arguments),
                "messages" => json!(s.messages_ready + s.messages_unacknowledged),
                "messages_ready" => json!(s.messages_ready),
                "messages_unacknowledged" => json!(s.messages_unacknowledged),
                "message_bytes" => json!(s.message_bytes_ready + s.message_bytes_unacknowledged),
                "message_bytes_ready" => json!(s.message_bytes_ready),
                "message_bytes_unacknowledged" => json!(s.message_bytes_unacknowledged),
                "consumers" => json!(s.consumers),
                "memory" => json!(s.memory),
                "state" => json!(state),
                "type" => json!(qtype),
                "node" | "leader" if quorum => json!(me),
                "node" | "leader" => json!(r.node),
                "members" => json!(members),
                "online" => json!(online),
                "exclusive_consumer_tag" => consumers
                    .iter()
                    .find(|c| c.exclusive)
                    .map_or(Value::Null, |c| json!(c.tag)),
                // RabbitMQ: always 0 for a transient queue.
                "messages_persistent" => json!(if r.durable { s.messages_persistent } else { 0 }),
                f => policy_cell(f, &policies).unwrap_or(Value::Null),
            }) as Row
        });
        table(&req.args, QUEUE_FIELDS, rows)
    }

    pub(super) fn list_exchanges(&self, req: &Request) -> Response {
        let vhost = Self::vhost_opt(req);
        let state = self.broker.meta.read();
        let rows: Vec<ExchangeRecord> = state
            .exchanges
            .values()
            .filter(|x| x.vhost == vhost)
            .cloned()
            .collect();
        let rows: Vec<(ExchangeRecord, String)> = rows
            .into_iter()
            .map(|x| {
                let policy = state.exchange_policies(&x).0.map(|p| p.name.clone());
                (x, policy.unwrap_or_default())
            })
            .collect();
        drop(state);
        let rows = rows.into_iter().map(|(x, policy)| {
            Box::new(move |f: &str| match f {
                "policy" => json!(policy),
                "name" => json!(x.name),
                "vhost" => json!(x.vhost),
                "type" => json!(x.kind),
                "durable" => json!(x.durable),
                "auto_delete" => json!(x.auto_delete),
                "internal" => json!(x.internal),
                "arguments" => table_to_json(&x.arguments),
                _ => Value::Null,
            }) as Row
        });
        table(
            &req.args,
            &[
                "name",
                "vhost",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
                "policy",
            ],
            rows,
        )
    }

    pub(super) fn list_bindings(&self, req: &Request) -> Response {
        let vhost = Self::vhost_opt(req);
        let state = self.broker.meta.read();
        // The default exchange's implicit binding to every queue is listed first, as RabbitMQ does.
        let mut rows: Vec<BindingRecord> = state
            .queues
            .values()
            .filter(|q| q.vhost == vhost)
            .map(|q| BindingRecord {
                vhost: vhost.clone(),
                source: String::new(),
                destination: q.name.clone(),
                destination_kind: DestinationKind::Queue,
                routing_key: q.name.clone(),
                arguments: FieldTable::default(),
            })
            .collect();
        let mut explicit: Vec<BindingRecord> = state
            .bindings
            .values()
            .filter(|b| b.vhost == vhost)
            .cloned()
            .collect();
        explicit.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        rows.extend(explicit);
        drop(state);
        let rows = rows.into_iter().map(|b| {
            Box::new(move |f: &str| match f {
                "source_name" => json!(b.source),
                "source_kind" => json!("exchange"),
                "destination_name" => json!(b.destination),
                "destination_kind" => json!(b.destination_kind.as_str()),
                "routing_key" => json!(b.routing_key),
                "arguments" => table_to_json(&b.arguments),
                "vhost" => json!(b.vhost),
                _ => Value::Null,
            }) as Row
        });
        table(
            &req.args,
            &[
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
                "vhost",
            ],
            rows,
        )
    }

    pub(super) fn list_connections(&self, req: &Request) -> Response {
        let conns = self.broker.connection_list();
        let node = self.node.config().node_name.clone();
        let alarm = self.broker.alarms.borrow().any();
        let rows = conns.into_iter().map(|c| {
            let node = node.clone();
            Box::new(move |f: &str| match f {
                "name" => json!(c.name),
                "user" => json!(c.user),
                "vhost" => json!(c.vhost),
                "peer_host" => json!(c.peer.ip().to_string()),
                "peer_port" => json!(c.peer.port()),
                // RabbitMQ's: blocked once held by an alarm, blocking while an alarm is on
                // and the connection has not published.
                "state" => json!(if c.blocked.load(Ordering::Relaxed) {
                    "blocked"
                } else if alarm {
                    "blocking"
                } else {
                    "running"
                }),
                "channels" => json!(c.channels.load(Ordering::Relaxed)),
                "protocol" => json!("AMQP 0-9-1"),
                "node" => json!(node),
                "client_properties" => json!(c.client_properties),
                "connected_at" => json!(c.connected_at),
                "recv_oct" => json!(c.recv_oct.load(Ordering::Relaxed)),
                "send_oct" => json!(c.send_oct.load(Ordering::Relaxed)),
                // Bytes waiting for the client's socket (every channel shares the writer).
                "send_pend" => json!(
                    c.channel_handles
                        .lock()
                        .values()
                        .next()
                        .map_or(0, |h| h.pending_bytes())
                ),
                "auth_mechanism" => json!(c.auth_mechanism),
                _ => Value::Null,
            }) as Row
        });
        table(
            &req.args,
            &[
                "name",
                "user",
                "vhost",
                "peer_host",
                "peer_port",
                "state",
                "channels",
                "protocol",
                "node",
                "client_properties",
                "connected_at",
                "recv_oct",
                "send_oct",
                "send_pend",
                "auth_mechanism",
            ],
            rows,
        )
    }

    /// Consumers of every queue in a vhost (or all vhosts), with their queue's name.
    fn consumers(&self, vhost: Option<&str>) -> Vec<(String, String, crate::queue::ConsumerInfo)> {
        let broker = &self.broker;
        let mut out = Vec::new();
        for vname in broker.vhost_names() {
            if vhost.is_some_and(|v| v != vname) {
                continue;
            }
            if let Some(v) = broker.vhost(&vname) {
                for q in v.queues.read().values() {
                    for c in q.consumers() {
                        out.push((vname.clone(), q.name().to_string(), c));
                    }
                }
            }
        }
        out
    }

    fn channel_pid(&self, connection: u64, channel: u16) -> String {
        format!(
            "<{}.{}.{}>",
            self.node.config().node_name,
            connection,
            channel
        )
    }

    pub(super) fn list_channels(&self, req: &Request) -> Response {
        let conns = self.broker.connection_list();
        let consumers = self.consumers(None);
        let mut rows = Vec::new();
        for c in conns {
            for (id, h) in c.channel_handles.lock().iter() {
                let consumer_count = consumers
                    .iter()
                    .filter(|(_, _, ci)| ci.connection == c.id && ci.channel == *id)
                    .count();
                let pid = self.channel_pid(c.id, *id);
                let user = c.user.clone();
                let vhost = c.vhost.clone();
                let conn_name = c.name.clone();
                let unacked = h.unacked_count();
                let prefetch = h.prefetch();
                let global = h.prefetch_global();
                let confirm = h.confirm();
                let tx = h.transactional();
                let number = *id;
                let state = if h.is_closed() { "closing" } else { "running" };
                rows.push(Box::new(move |f: &str| match f {
                    "pid" => json!(pid),
                    "name" => json!(format!("{conn_name} ({number})")),
                    "connection" => json!(conn_name),
                    "number" => json!(number),
                    "user" => json!(user),
                    "vhost" => json!(vhost),
                    "consumer_count" => json!(consumer_count),
                    "messages_unacknowledged" => json!(unacked),
                    "prefetch_count" => json!(prefetch),
                    "global_prefetch_count" => json!(global),
                    "confirm" => json!(confirm),
                    "transactional" => json!(tx),
                    "state" => json!(state),
                    _ => Value::Null,
                }) as Row);
            }
        }
        table(
            &req.args,
            &[
                "pid",
                "name",
                "connection",
                "number",
                "user",
                "vhost",
                "consumer_count",
                "messages_unacknowledged",
                "prefetch_count",
                "global_prefetch_count",
                "confirm",
                "transactional",
                "state",
            ],
            rows.into_iter(),
        )
    }

    pub(super) fn list_consumers(&self, req: &Request) -> Response {
        let vhost = Self::vhost_opt(req);
        let rows: Vec<Row> = self
            .consumers(Some(&vhost))
            .into_iter()
            .map(|(_, queue, c)| {
                let pid = self.channel_pid(c.connection, c.channel);
                Box::new(move |f: &str| match f {
                    "queue_name" => json!(queue),
                    "channel_pid" => json!(pid),
                    "consumer_tag" => json!(c.tag),
                    "ack_required" => json!(c.ack_required),
                    "prefetch_count" => json!(c.prefetch),
                    "active" => json!(c.active),
                    "exclusive" => json!(c.exclusive),
                    "priority" => json!(c.priority),
                    "arguments" => table_to_json(&c.arguments),
                    _ => Value::Null,
                }) as Row
            })
            .collect();
        table(
            &req.args,
            &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "exclusive",
                "priority",
                "arguments",
            ],
            rows.into_iter(),
        )
    }
}
