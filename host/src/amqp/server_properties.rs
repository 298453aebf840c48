//! What Warren tells a client about itself in connection.start, shaped like RabbitMQ's table
//! so that clients enable the same extensions.

use amq_protocol::types::{AMQPValue, FieldTable, LongString};

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    t.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    t.insert("cluster_name".into(), long(cluster_name));
    t.insert("copyright".into(), long("Copyright (c) the Warren authors"));
    t.insert(
        "information".into(),
        long("Licensed under the Apache License 2.0. Website: https://github.com/warren-mq"),
    );
    t.insert("platform".into(), long("Rust/tokio"));
    t.insert("product".into(), long("Warren"));
    t.insert("version".into(), long(env!("CARGO_PKG_VERSION")));
    t
}

/// Whether the client announced a capability in its client-properties.
pub fn client_has_capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}
