//! The routing seam: the broker asks an exchange's type which of its bindings
//! a message matches. Every exchange type is a plugin (see `crate::plugins`);
//! only the default exchange is a protocol rule, in `broker::routing`.

pub mod exchange_type;
