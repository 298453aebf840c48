//! Metadata changes as values. Every change to vhosts, users, permissions, exchanges, queues
//! and bindings is one of these, applied by one function (`MetaState::apply`); a single node
//! applies it locally, a cluster will first agree on it through Raft.

use serde::{Deserialize, Serialize};

use super::model::*;
use super::policy::{PolicyKind, PolicyRecord};
use super::state::MetaError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    AddVhost(VhostRecord),
    DeleteVhost {
        name: String,
    },
    AddUser(UserRecord),
    /// Replaces the password hash of an existing user.
    ChangePassword {
        name: String,
        password_hash: String,
    },
    SetUserTags {
        name: String,
        tags: Vec<String>,
    },
    DeleteUser {
        name: String,
    },
    SetPermissions(PermissionRecord),
    ClearPermissions {
        user: String,
        vhost: String,
    },
    DeclareExchange(ExchangeRecord),
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
    },
    DeclareQueue(QueueRecord),
    DeleteQueue {
        vhost: String,
        name: String,
    },
    Bind(BindingRecord),
    Unbind(BindingRecord),
    /// A quorum queue's members changed (`add_member`, `delete_member`,
    /// `grow`, `shrink`); announced again as `QueueAdded`.
    SetQueueMembers {
        vhost: String,
        name: String,
        uid: u64,
        members: Vec<String>,
    },
    /// Changes applied in order until the first that fails: a channel's pipelined
    /// binds become one Raft entry (one disk write) instead of one each.
    Batch(Vec<MetaCommand>),
    /// A node started again: what lived only in its memory is gone. Its
    /// transient and exclusive queues go; when it is the whole cluster,
    /// transient exchanges go too (RabbitMQ's rule for a full restart).
    NodeRestarted {
        node: String,
        whole_cluster: bool,
    },
    /// `set_cluster_name`; also seeded with the founding node's name on a fresh node, as
    /// RabbitMQ's default cluster name is its first node's name.
    SetClusterName {
        name: String,
    },
    /// `set_policy` / `set_operator_policy`: adds or replaces the policy of that name.
    SetPolicy {
        kind: PolicyKind,
        policy: PolicyRecord,
    },
    ClearPolicy {
        kind: PolicyKind,
        vhost: String,
        name: String,
    },
    SetTopicPermissions(TopicPermissionRecord),
    /// One exchange's, or all of the user's in the vhost when `exchange` is None.
    ClearTopicPermissions {
        user: String,
        vhost: String,
        exchange: Option<String>,
    },
}

impl MetaCommand {
    /// Refuses a change whose field tables nest deeper than the wire allows
    /// (`field_depth::MAX_DEPTH`): one that came from the CLI or a peer rather than a frame
    /// must not reach the log in a shape that cannot be read back.
    pub fn check_nesting(&self) -> Result<(), MetaError> {
        let mut pending = vec![self];
        while let Some(cmd) = pending.pop() {
            let args = match cmd {
                MetaCommand::DeclareExchange(x) => &x.arguments,
                MetaCommand::DeclareQueue(q) => &q.arguments,
                MetaCommand::Bind(b) | MetaCommand::Unbind(b) => &b.arguments,
                MetaCommand::Batch(cmds) => {
                    pending.extend(cmds);
                    continue;
                }
                _ => continue,
            };
            if crate::field_depth::table_depth(args) > crate::field_depth::MAX_DEPTH {
                return Err(MetaError::Precondition(format!(
                    "arguments nested deeper than {} levels",
                    crate::field_depth::MAX_DEPTH
                )));
            }
        }
        Ok(())
    }
}

/// What applying a command changed, for the node's runtime (routers, queue processes) to follow.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaEvent {
    VhostAdded(VhostRecord),
    VhostDeleted(String),
    UsersChanged,
    ExchangeAdded(ExchangeRecord),
    ExchangeDeleted {
        vhost: String,
        name: String,
    },
    QueueAdded(QueueRecord),
    QueueDeleted {
        vhost: String,
        name: String,
        uid: u64,
    },
    BindingAdded {
        id: u64,
        binding: BindingRecord,
    },
    BindingRemoved {
        id: u64,
        binding: BindingRecord,
    },
    /// The policies or operator policies of a vhost changed: its queues and exchanges take
    /// their settings again.
    PoliciesChanged {
        vhost: String,
    },
}

/// The answer to a command, beside its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOutcome {
    Done,
    /// A declare found an equivalent entity already there.
    AlreadyExists,
    /// A batch's answers, one per command up to and including the first failure.
    Batch(Vec<Result<MetaOutcome, MetaError>>),
}
