//! Dead-lettering: messages rejected, expired or pushed out by max-length go to the queue's
//! dead-letter exchange with an `x-death` history, as RabbitMQ records it.

use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::Broker;
use crate::base::clock::now_ms;
use crate::base::message::Message;
use crate::queue::{DeathReason, Entry, Queue};

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn str_of(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The message's properties after one more death in `queue` for `reason`.
pub fn with_death(msg: &Message, queue: &str, reason: DeathReason) -> AMQPProperties {
    let properties = msg.properties();
    let mut headers = properties.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let existing = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            str_of(t.inner().get("queue")).as_deref() == Some(queue)
                && str_of(t.inner().get("reason")).as_deref() == Some(reason.as_str())
        }
        _ => false,
    });
    let now = now_ms() / 1000;
    let entry = match existing {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::default(),
            };
            let count = match t.inner().get("count") {
                Some(v) => crate::meta::equivalence::as_int(v).unwrap_or(0) as i64,
                None => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long(reason.as_str()));
            t.insert("queue".into(), long(queue));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert("exchange".into(), long(&msg.exchange));
            let mut keys = FieldArray::default();
            keys.push(long(&msg.routing_key));
            t.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
            if let Some(exp) = properties.expiration() {
                t.insert("original-expiration".into(), long(exp.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), long(reason.as_str()));
        headers.insert("x-first-death-queue".into(), long(queue));
        headers.insert("x-first-death-exchange".into(), long(&msg.exchange));
    }
    headers.insert("x-last-death-reason".into(), long(reason.as_str()));
    headers.insert("x-last-death-queue".into(), long(queue));
    headers.insert("x-last-death-exchange".into(), long(&msg.exchange));
    // A dead-lettered message does not carry its old TTL along (RabbitMQ removes it).
    without_expiration(&properties).with_headers(headers)
}

/// A copy of `p` with every property but `expiration` (the generated type has no unsetter).
fn without_expiration(p: &AMQPProperties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

impl Broker {
    pub fn dead_letter(&self, from: &Arc<Queue>, dead: Vec<(Entry, DeathReason)>) {
        let vhost = self.vhost(from.vhost());
        let config = from.config();
        for (entry, reason) in dead {
            if let (Some(dlx), Some(vhost)) = (&config.dead_letter_exchange, &vhost) {
                let rk = config
                    .dead_letter_routing_key
                    .clone()
                    .unwrap_or_else(|| entry.msg.routing_key.clone());
                let props = with_death(&entry.msg, from.name(), reason);
                let msg = Arc::new(entry.msg.with_properties(dlx.clone(), rk.clone(), props));
                let mut dest = super::routing::Destinations::default();
                if let Err(e) = vhost.route(dlx, &rk, msg.headers(), Some(&msg), &mut dest) {
                    // Nobody to tell: the message is dropped as if unroutable.
                    tracing::warn!(queue = %from.name(), error = %e, "dead-lettering failed");
                }
                let id = self.next_message_id();
                for r in std::mem::take(&mut dest.remote) {
                    // A dead letter has no publisher to hold back: the backlog is only counted.
                    let _ = self.forward.send(
                        self,
                        &r.node,
                        vhost.name.clone(),
                        Box::new([r.name]),
                        msg.clone(),
                        None,
                    );
                }
                for q in dest.local {
                    // A message expiring back into its own queue would cycle forever.
                    if Arc::ptr_eq(&q, from) && reason != DeathReason::Rejected {
                        continue;
                    }
                    q.publish(msg.clone(), id);
                }
            }
            from.discard(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn second_death_in_same_queue_increments_count() {
        let m = Message::new(
            "x".into(),
            "k".into(),
            AMQPProperties::default().with_expiration("100".into()),
            Bytes::new(),
            Bytes::new(),
        );
        let p1 = with_death(&m, "q", DeathReason::Expired);
        assert!(p1.expiration().is_none());
        let m2 = m.with_properties("dlx".into(), "k".into(), p1);
        let p2 = with_death(&m2, "q", DeathReason::Expired);
        let headers = p2.headers().clone().unwrap();
        let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
            panic!("no x-death");
        };
        assert_eq!(deaths.as_slice().len(), 1);
        let AMQPValue::FieldTable(t) = &deaths.as_slice()[0] else {
            panic!()
        };
        assert_eq!(t.inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(
            str_of(headers.inner().get("x-first-death-reason")).as_deref(),
            Some("expired")
        );
    }
}
