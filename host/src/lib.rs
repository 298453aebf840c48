//! Warren: a RabbitMQ-compatible AMQP 0-9-1 broker node.
//!
//! The path of a frame: `amqp::connection` reads frames (`amqp::codec`), hands methods to the
//! per-class handlers in `amqp::methods`, which change metadata only through `cluster::MetaStore`
//! (one command type, one apply function) and publish through `broker` routing (exchange types
//! in `routing`) into `queue`s, whose persistent messages go to `store::message_store`.
//! Metadata is replicated by Raft (`cluster`, on the shared plumbing of `raft`); each quorum
//! queue is a Raft group of its own (`quorum`). Nodes talk over `peer`. `ctl` answers
//! `warrenctl`; `node` wires it all together.
//!
//! The library's surface is what the programs need: open a node (`open`), its settings
//! (`config`), the control protocol the CLIs speak (`cli`), the plugin host for offline
//! edits (`plugin_host`), the counting allocator (`memory`), and the decoders the fuzz
//! targets feed (`fuzzing`). Everything else is the node's inside.

mod amqp;
mod auth;
mod base;
mod broker;
mod cluster;
mod ctl;
mod field_depth;
mod meta;
mod node;
mod peer;
mod plugins;
mod queue;
mod quorum;
mod raft;
mod resources;
mod routing;
mod store;

pub mod config;
pub mod memory;

pub use node::{Node, open, plugin_host};
pub use plugins::{PluginError, PluginStatus, edit_offline};

/// The control protocol `warrenctl` and `warren-plugins` speak over a node's dist port.
pub mod cli {
    pub use crate::ctl::protocol::*;
}

/// The decoders that meet bytes from clients, peers and the disk, for the fuzz targets
/// (`fuzz/`, bodies in `tests/src/fuzz.rs`).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::amqp::codec;
    pub use crate::base::message::Message;
    pub use crate::ctl::listings::QueueRows;
    pub use crate::field_depth::check_table;
    pub use crate::peer::{decode_call, frame};
    pub mod calls {
        pub use crate::broker::calls::*;
        pub use crate::cluster::calls::*;
        pub use crate::quorum::calls::*;
    }
}

/// What the micro-benchmarks in `host/examples/` measure directly (a route call through a
/// plugin, the message store's appends): the node's insides, not a supported API.
#[doc(hidden)]
pub mod bench {
    pub use crate::broker::Broker;
    pub use crate::broker::routing::{Destinations, VhostRt};
    pub use crate::meta::QueueRecord;
    pub use crate::plugins::PluginHost;
    pub use crate::queue::Queue;
    pub use crate::queue::config::QueueConfig;
    pub use crate::routing::exchange_type::{ExchangeType, RouteInput};
    pub use crate::store::message_store::{MessageStore, StoreOptions};
}
