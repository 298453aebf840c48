//! RabbitMQ's direct reply-to: a client consumes (no-ack) from the pseudo-queue
//! `amq.rabbitmq.reply-to`; requests it publishes with `reply_to = amq.rabbitmq.reply-to` get
//! a `reply_to` naming its channel, and replies published to that name on the default exchange
//! go straight to the consumer, with no queue in between.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::channels::ClientChannel;
use crate::base::message::Message;

pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A reply consumer: its channel and consumer tag.
type ReplyConsumer = (Arc<dyn ClientChannel>, Arc<str>);

/// Reply consumers of this node, by the key that `reply_to` carries.
#[derive(Default)]
pub struct DirectReplies {
    consumers: Mutex<HashMap<String, ReplyConsumer>>,
}

impl DirectReplies {
    /// Registers a channel's reply consumer; returns the key its requests will carry.
    pub fn register(&self, channel: Arc<dyn ClientChannel>, tag: Arc<str>) -> String {
        let key = crate::base::ids::generated_name("");
        self.consumers.lock().insert(key.clone(), (channel, tag));
        key
    }

    pub fn unregister(&self, key: &str) {
        self.consumers.lock().remove(key);
    }

    /// The `reply_to` value for requests of the consumer registered under `key`.
    pub fn address(key: &str) -> String {
        format!("{PREFIX}{key}")
    }

    /// Whether a default-exchange routing key is a direct reply address.
    pub fn is_address(routing_key: &str) -> bool {
        routing_key.starts_with(PREFIX)
    }

    /// Delivers a reply; false when its consumer is gone (the reply is unroutable).
    pub fn deliver(&self, routing_key: &str, msg: Arc<Message>) -> bool {
        let Some(key) = routing_key.strip_prefix(PREFIX) else {
            return false;
        };
        let target = self.consumers.lock().get(key).cloned();
        match target {
            Some((channel, tag)) if !channel.is_closed() => {
                channel.deliver_untracked(&tag, msg);
                true
            }
            _ => false,
        }
    }
}
