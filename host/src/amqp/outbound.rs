//! What a connection's writer task sends. Producers (channels, queues) hand over values; the
//! writer encodes them in batches, so a queue never formats frames while holding its lock.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;

use crate::broker::message::Message;

#[derive(Debug)]
pub enum Outbound {
    Method {
        channel: u16,
        method: AMQPClass,
    },
    Deliver {
        channel: u16,
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        redelivered: bool,
        msg: Arc<Message>,
    },
    GetOk {
        channel: u16,
        delivery_tag: u64,
        redelivered: bool,
        message_count: u32,
        msg: Arc<Message>,
    },
    Return {
        channel: u16,
        reply_code: u16,
        reply_text: &'static str,
        msg: Arc<Message>,
    },
    /// Flush what is queued, then close the socket.
    Close,
}

pub type OutboundTx = tokio::sync::mpsc::UnboundedSender<Outbound>;
