//! The base every layer may use and which uses none of them: the message as the broker holds
//! it, the errors it answers with (AMQP reply codes and RabbitMQ's texts), and the clock.
//! Nothing here imports another module of the crate.

pub mod carried;
pub mod clock;
pub mod encoding;
pub mod error;
pub mod ids;
pub mod message;
