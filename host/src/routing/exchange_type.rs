//! The routing seam between the broker and exchange types.
//!
//! The broker owns exchanges, bindings and destinations; an exchange type only
//! sees binding ids and answers "which bindings match this message". Keeping
//! destinations out of the routers lets one router serve queue and
//! exchange-to-exchange bindings alike. The implementations are plugin
//! components (`crate::plugins::exchange`).

use amq_protocol::types::FieldTable;

use crate::base::message::Message;

/// Identifies one binding of one exchange; the broker maps it to a destination (queue or exchange).
pub type BindingId = u64;

/// What an exchange type sees of a message when routing.
#[derive(Clone, Copy)]
pub struct RouteInput<'a> {
    pub routing_key: &'a str,
    pub headers: Option<&'a FieldTable>,
    /// For exchange types that route on properties (parsed only when asked).
    pub message: Option<&'a Message>,
}

/// Why an exchange type did not create an exchange or accept a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// The type refused (bad arguments): 406 PRECONDITION_FAILED with this text.
    Refused(String),
    /// The type failed (a plugin trapped, ran out of time or memory): 541 INTERNAL_ERROR.
    Failed(String),
}

/// An exchange type (direct, fanout, …).
pub trait ExchangeType: Send + Sync {
    /// The type name clients use in `exchange.declare`, e.g. "topic".
    fn name(&self) -> &str;
    /// Validates the exchange's declare arguments and creates its routing state.
    fn create(&self, arguments: &FieldTable) -> Result<Box<dyn ExchangeRouter>, RouterError>;
}

/// One exchange's routing state. Bind/unbind are rare, route is hot.
///
/// `bind` with an id already held replaces that binding; `unbind` of an
/// unknown id is a no-op, so the broker never has to pre-check.
pub trait ExchangeRouter: Send + Sync {
    fn bind(
        &mut self,
        id: BindingId,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), RouterError>;
    fn unbind(&mut self, id: BindingId);
    /// Appends the ids of matching bindings to `out` (each at most once);
    /// Err is a failure of the type, worded for a 541 INTERNAL_ERROR.
    fn route(&self, msg: &RouteInput<'_>, out: &mut Vec<BindingId>) -> Result<(), String>;
    /// True when `route`'s answer depends on nothing but the routing key and the bindings:
    /// the broker may then remember it per key until a binding changes.
    fn same_key_same_route(&self) -> bool {
        false
    }
}
