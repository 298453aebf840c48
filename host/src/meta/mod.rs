//! Metadata: vhosts, users, permissions, exchanges, queues and bindings, changed only by
//! commands applied through one store.

pub mod command;
pub mod equivalence;
pub mod model;
pub mod policy;
pub mod state;

pub use command::{MetaCommand, MetaEvent, MetaOutcome};
pub use model::*;
pub use state::{MetaError, MetaState};

/// The node's runtime (routers, queues) follows applied changes through this.
pub trait MetaListener: Send + Sync {
    fn on_events(&self, state: &MetaState, events: &[MetaEvent]);
}
