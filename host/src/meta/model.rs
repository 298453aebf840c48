//! The records that make up a broker's metadata. Every node holds the same set; they are
//! serialised into the metadata database (and, with clustering, into the Raft log).

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostRecord {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

pub const PASSWORD_HASHING_SHA256: &str = "rabbit_password_hashing_sha256";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// base64(salt ++ sha256(salt ++ password)), as RabbitMQ stores it; empty = no password login.
    pub password_hash: String,
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionRecord {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// `set_topic_permissions`: on one topic exchange, the routing keys a user may publish with
/// (write) and bind with (read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPermissionRecord {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that owns an exclusive queue (`<node>/<connection number>`).
    pub exclusive_owner: Option<String>,
    pub arguments: FieldTable,
    /// Fresh for every declare, so messages of a deleted queue never leak into a new one of
    /// the same name.
    pub uid: u64,
    /// The node whose disk and memory hold the queue's messages. For a
    /// quorum queue: the member that started its group (its first leader).
    pub node: String,
    /// A quorum queue's group members (node names); empty for other queues.
    #[serde(default)]
    pub members: Vec<String>,
}

impl QueueRecord {
    /// Whether this is a quorum queue's record (declared with `x-queue-type: quorum`).
    pub fn is_quorum(&self) -> bool {
        super::state::string_arg(&self.arguments, "x-queue-type").as_deref() == Some("quorum")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DestinationKind {
    Queue,
    Exchange,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Queue => "queue",
            DestinationKind::Exchange => "exchange",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_kind: DestinationKind,
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl BindingRecord {
    /// Two bindings are the same binding when source, destination, key and arguments match.
    pub fn identity(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.vhost,
            self.source,
            self.destination_kind.as_str(),
            self.destination,
            self.routing_key,
            serde_json::to_string(&self.arguments).unwrap_or_default()
        )
    }
}
