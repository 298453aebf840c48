//! The routing seam between the broker and exchange types.
//!
//! The broker owns exchanges, bindings and destinations; an exchange type only
//! sees binding ids and answers "which bindings match this message". Keeping
//! destinations out of the routers lets one router serve queue and
//! exchange-to-exchange bindings alike, and keeps routers free of locking
//! concerns beyond `Send + Sync`.

use amq_protocol::types::FieldTable;

/// Identifies one binding of one exchange; the broker maps it to a destination (queue or exchange).
pub type BindingId = u64;

/// What an exchange type sees of a message when routing.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub routing_key: &'a str,
    pub headers: Option<&'a FieldTable>,
}

/// An exchange type (direct, fanout, …). The broker holds one instance per type name.
pub trait ExchangeType: Send + Sync {
    /// The type name clients use in `exchange.declare`, e.g. "topic".
    fn name(&self) -> &'static str;
    /// Validates the exchange's declare arguments and creates its routing state.
    fn create(&self, arguments: &FieldTable) -> Result<Box<dyn ExchangeRouter>, String>;
}

/// One exchange's routing state. Bind/unbind are rare, route is hot: structures
/// are chosen so that route is cheap (a hash map for direct, a trie for topic).
///
/// Every built-in router treats `bind` with an id it already holds as a
/// replacement of that binding, and `unbind` of an unknown id as a no-op, so the
/// broker never has to pre-check.
pub trait ExchangeRouter: Send + Sync {
    /// Adds a binding; Err(reason) refuses it (e.g. a headers binding with a bad
    /// x-match value), with the reason worded as RabbitMQ words it.
    fn bind(
        &mut self,
        id: BindingId,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), String>;
    /// Removes a binding; unknown ids are ignored.
    fn unbind(&mut self, id: BindingId);
    /// Appends the ids of matching bindings to `out` (each at most once).
    /// Entries already in `out` are left untouched.
    fn route(&self, msg: &RouteInput<'_>, out: &mut Vec<BindingId>);
}

/// The four exchange types every RabbitMQ broker provides.
pub fn builtin_types() -> Vec<Box<dyn ExchangeType>> {
    vec![
        Box::new(crate::routing::exchange_direct::DirectExchange),
        Box::new(crate::routing::exchange_fanout::FanoutExchange),
        Box::new(crate::routing::exchange_topic::TopicExchange),
        Box::new(crate::routing::exchange_headers::HeadersExchange),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, LongString};

    fn find(name: &str) -> Box<dyn ExchangeType> {
        builtin_types()
            .into_iter()
            .find(|t| t.name() == name)
            .unwrap()
    }

    #[test]
    fn builtin_names_are_the_amqp_ones() {
        let names: Vec<_> = builtin_types().iter().map(|t| t.name()).collect();
        assert_eq!(names, ["direct", "fanout", "topic", "headers"]);
    }

    #[test]
    fn builtin_types_accept_arbitrary_declare_arguments() {
        // RabbitMQ's built-in types validate nothing at declare time.
        let mut args = FieldTable::default();
        args.insert(
            "x-whatever".into(),
            AMQPValue::LongString(LongString::from("y")),
        );
        for t in builtin_types() {
            assert!(t.create(&args).is_ok(), "{}", t.name());
        }
    }

    #[test]
    fn routers_behave_through_the_trait_object() {
        let empty = FieldTable::default();
        let cases: [(&str, &str, &str, bool); 5] = [
            ("direct", "k", "k", true),
            ("direct", "k", "K", false),
            ("fanout", "ignored", "anything", true),
            ("topic", "a.*", "a.b", true),
            ("headers", "", "", true), // no args, x-match all: matches everything
        ];
        for (ty, binding_key, routing_key, expected) in cases {
            let mut r = find(ty).create(&empty).unwrap();
            r.bind(7, binding_key, &empty).unwrap();
            let mut out = vec![99];
            r.route(
                &RouteInput {
                    routing_key,
                    headers: None,
                },
                &mut out,
            );
            let want: Vec<BindingId> = if expected { vec![99, 7] } else { vec![99] };
            assert_eq!(out, want, "{ty} {binding_key} {routing_key}");
            r.unbind(7);
            out.clear();
            r.route(
                &RouteInput {
                    routing_key,
                    headers: None,
                },
                &mut out,
            );
            assert!(out.is_empty(), "{ty} after unbind");
        }
    }
}
