//! Warren: a RabbitMQ-compatible AMQP 0-9-1 broker node.
//!
//! The path of a frame: `amqp::connection` reads frames (`amqp::codec`), hands methods to the
//! per-class handlers in `amqp::methods`, which change metadata only through `cluster::MetaStore`
//! (one command type, one apply function) and publish through `broker` routing (exchange types
//! in `routing`) into `queue`s, whose persistent messages go to `store::message_store`.
//! Metadata is replicated by Raft (`cluster`); each quorum queue is a Raft group of its own
//! (`quorum`). `ctl` answers `warrenctl`; `node` wires it all together.

pub mod amqp;
pub mod auth;
pub mod base;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod field_depth;
pub mod memory;
pub mod meta;
pub mod node;
pub mod peer;
pub mod plugins;
pub mod queue;
pub mod quorum;
pub mod resources;
pub mod routing;
pub mod store;
