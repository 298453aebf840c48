//! The AMQP 0-9-1 wire protocol: frames in and out, the connection and channel state machines,
//! and the per-class method handlers.

pub mod channel;
pub mod codec;
pub mod connection;
pub mod delivery;
pub mod methods;
pub mod outbound;
pub mod panic_guard;
pub mod server_properties;
pub mod short_string;
pub mod writer;
