//! One file per AMQP class: where a decoded method becomes a broker operation.

pub mod basic;
pub mod exchange;
pub mod queue;
