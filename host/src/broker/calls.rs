//! The data plane's calls between nodes (ids 200–299): publishes forwarded to a queue's
//! owner, consumers and basic.get served through another node, and the queue operations a
//! non-owner asks of the owner.

use serde::{Deserialize, Serialize};

use super::forward::PublishBatch;
use super::proxy::{DeliverBatch, Delivered, OpenRequest, SettleRequest};
use super::queue_delete::{DeleteRefusal, DeleteRequest};
use crate::peer_call;

/// One forwarder's batch: the owner's answer is one flag per message, true once it is in all
/// its queues (on disk if persistent).
#[derive(Serialize, Deserialize)]
pub struct Publish(pub PublishBatch);
peer_call!(Publish, 200, "data", Vec<bool>);

#[derive(Serialize, Deserialize)]
pub struct ProxyOpen(pub OpenRequest);
peer_call!(ProxyOpen, 201, "data", ());

#[derive(Serialize, Deserialize)]
pub struct ProxyGet {
    pub session: String,
    pub no_ack: bool,
}
peer_call!(ProxyGet, 202, "data", Option<Delivered>);

#[derive(Serialize, Deserialize)]
pub struct ProxySettle(pub SettleRequest);
peer_call!(ProxySettle, 203, "data", ());

#[derive(Serialize, Deserialize)]
pub struct ProxyCancel(pub String);
peer_call!(ProxyCancel, 204, "data", ());

#[derive(Serialize, Deserialize)]
pub struct ProxyClose(pub String);
peer_call!(ProxyClose, 205, "data", ());

/// The owner relays deliveries; the answer says whether the consuming node has room for more.
#[derive(Serialize, Deserialize)]
pub struct ProxyDeliver(pub DeliverBatch);
peer_call!(ProxyDeliver, 206, "data", bool);

/// The owner says a relayed consumer was cancelled (its queue went away).
#[derive(Serialize, Deserialize)]
pub struct ProxyCancelled(pub String);
peer_call!(ProxyCancelled, 207, "data", ());

/// Purges a queue on its owner: the answer is how many messages went.
#[derive(Serialize, Deserialize)]
pub struct QueuePurge {
    pub vhost: String,
    pub name: String,
}
peer_call!(QueuePurge, 208, "misc", u32);

#[derive(Serialize, Deserialize)]
pub struct QueueDelete(pub DeleteRequest);
peer_call!(QueueDelete, 209, "misc", Result<u32, DeleteRefusal>);

/// Ready messages and consumers of a queue on its owner (queue.declare-ok's counts).
#[derive(Serialize, Deserialize)]
pub struct QueueCounts {
    pub vhost: String,
    pub name: String,
}
peer_call!(QueueCounts, 210, "misc", (u32, u32));

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::base::carried::Carried;
    use crate::base::message::{Message, encode_properties};
    use crate::broker::forward::{PublishItem, PublishTarget};
    use crate::peer::Call;

    #[test]
    fn a_forwarded_batch_carries_its_messages_as_bytes() {
        let props = amq_protocol::protocol::basic::AMQPProperties::default().with_delivery_mode(2);
        let raw = encode_properties(&props);
        let body = Bytes::from(vec![7u8; 1024]);
        let msg = Arc::new(Message::new(
            "".into(),
            "q".into(),
            props,
            raw,
            body.clone(),
        ));
        let batch = Publish(PublishBatch {
            from: "rabbit@a".into(),
            id: 7,
            targets: vec![PublishTarget {
                vhost: "/".into(),
                queues: vec!["q".into()],
            }],
            items: vec![PublishItem {
                target: 0,
                message: Carried(msg.clone()),
            }],
        });
        let wire = postcard::to_allocvec(&batch).unwrap();
        // The body once, not base64's 4/3 of it, and little else around it.
        assert!(wire.len() < body.len() + 64, "{} bytes", wire.len());
        let back: Publish = crate::peer::decode_call(&wire).unwrap();
        let m = back.0.items[0].message.0.clone();
        assert_eq!((m.body.clone(), m.persistent()), (body, true));
        assert_eq!(Publish::ID, 200);
    }
}
