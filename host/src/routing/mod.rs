//! Exchange types behind the routing seam: the broker asks an exchange's type which of its
//! bindings a message matches. These native types move into WASM plugins later.

pub mod exchange_direct;
pub mod exchange_fanout;
pub mod exchange_headers;
pub mod exchange_topic;
pub mod exchange_type;
