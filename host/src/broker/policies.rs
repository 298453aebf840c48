//! Policies at run time: a queue runs with its arguments combined with the policy and
//! operator policy that match it, and an exchange takes its alternate exchange the same
//! way. When a vhost's policies change (on any node: they are metadata), every live queue
//! and exchange of that vhost on this node takes its settings again, at once.

use super::Broker;
use crate::meta::policy::{self, Definition};
use crate::meta::{ExchangeRecord, MetaState, QueueRecord};
use crate::queue::{QueueConfig, QueueType};

/// The settings a policy gives a queue: its policy's definition capped by its operator
/// policy's (what `effective_policy_definition` shows).
pub fn queue_definition(state: &MetaState, rec: &QueueRecord) -> Definition {
    let (user, operator) = state.queue_policies(rec);
    policy::effective(user, operator)
}

/// The settings a queue runs with.
pub fn queue_config(state: &MetaState, rec: &QueueRecord) -> QueueConfig {
    let mut config = match QueueConfig::parse(&rec.arguments, &rec.name, &rec.vhost) {
        Ok(c) => c,
        Err(e) => {
            // Arguments were validated at declare time; a stored record that no longer
            // parses keeps working with defaults rather than vanishing.
            tracing::warn!(queue = %rec.name, error = %e, "stored queue has invalid arguments; using defaults");
            QueueConfig::default()
        }
    };
    if rec.is_quorum() {
        config.queue_type = QueueType::Quorum;
    }
    config.with_policy(&queue_definition(state, rec))
}

/// An exchange's alternate exchange: its `alternate-exchange` argument, else its policy's.
pub fn alternate_exchange(state: &MetaState, rec: &ExchangeRecord) -> Option<String> {
    crate::meta::state::string_arg(&rec.arguments, "alternate-exchange").or_else(|| {
        let (user, operator) = state.exchange_policies(rec);
        policy::effective(user, operator)
            .get("alternate-exchange")
            .and_then(|v| v.as_text())
            .map(str::to_string)
    })
}

impl Broker {
    /// A vhost's policies changed: its queues and exchanges here take their settings again.
    pub(crate) fn policies_changed(&self, state: &MetaState, vhost: &str) {
        let Some(v) = self.vhost(vhost) else {
            return;
        };
        let queues: Vec<_> = v.queues.read().values().cloned().collect();
        for q in queues {
            // The record the queue was built from; a quorum queue's members may have moved on
            // since, but members are not a policy's business.
            let config = queue_config(state, &q.record);
            q.set_config(config);
        }
        let exchanges: Vec<_> = v.exchanges.read().values().cloned().collect();
        for x in exchanges {
            x.set_alternate(alternate_exchange(state, &x.record));
        }
    }

    /// The settings of a queue about to be built on this node, outside a metadata event
    /// (which hands its state to `queue_config` instead: the store's lock is held then).
    pub(crate) fn queue_config_now(&self, rec: &QueueRecord) -> QueueConfig {
        queue_config(&self.meta.read(), rec)
    }
}
