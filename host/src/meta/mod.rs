//! Metadata: vhosts, users, permissions, exchanges, queues and bindings, changed only by
//! commands applied through one store.

pub mod command;
pub mod equivalence;
pub mod model;
pub mod state;
pub mod store;

pub use command::{MetaCommand, MetaEvent, MetaOutcome};
pub use model::*;
pub use state::{MetaError, MetaState};
pub use store::{MetaListener, MetaStore};
