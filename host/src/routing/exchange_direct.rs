//! The `direct` exchange type: a binding matches when its key equals the
//! message's routing key byte for byte (case-sensitive, no wildcards).

use std::collections::HashMap;

use amq_protocol::types::FieldTable;

use crate::routing::exchange_type::{BindingId, ExchangeRouter, ExchangeType, RouteInput};

/// Factory for direct exchanges.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectExchange;

impl ExchangeType for DirectExchange {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeRouter>, String> {
        Ok(Box::new(DirectRouter::default()))
    }
}

/// Routing state of one direct exchange.
#[derive(Debug, Default)]
pub struct DirectRouter {
    by_key: HashMap<String, Vec<BindingId>>,
    // Unbind only receives the id, so remember where each id lives.
    key_of: HashMap<BindingId, String>,
}

impl ExchangeRouter for DirectRouter {
    fn bind(
        &mut self,
        id: BindingId,
        routing_key: &str,
        _arguments: &FieldTable,
    ) -> Result<(), String> {
        self.unbind(id);
        self.by_key
            .entry(routing_key.to_owned())
            .or_default()
            .push(id);
        self.key_of.insert(id, routing_key.to_owned());
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        let Some(key) = self.key_of.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_key.get_mut(&key) {
            ids.retain(|b| *b != id);
            if ids.is_empty() {
                // Drop empty entries so churny keys (e.g. reply queues) don't leak.
                self.by_key.remove(&key);
            }
        }
    }

    fn route(&self, msg: &RouteInput<'_>, out: &mut Vec<BindingId>) {
        if let Some(ids) = self.by_key.get(msg.routing_key) {
            out.extend_from_slice(ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(r: &DirectRouter, key: &str) -> Vec<BindingId> {
        let mut out = Vec::new();
        r.route(
            &RouteInput {
                routing_key: key,
                headers: None,
            },
            &mut out,
        );
        out.sort_unstable();
        out
    }

    #[test]
    fn exact_match_only() {
        let mut r = DirectRouter::default();
        let a = FieldTable::default();
        r.bind(1, "orders", &a).unwrap();
        r.bind(2, "orders", &a).unwrap();
        r.bind(3, "Orders", &a).unwrap();
        r.bind(4, "orders.*", &a).unwrap();
        assert_eq!(route(&r, "orders"), [1, 2]);
        assert_eq!(route(&r, "Orders"), [3]);
        assert_eq!(route(&r, "orders.x"), Vec::<BindingId>::new());
        assert_eq!(route(&r, "orders.*"), [4]);
    }

    #[test]
    fn empty_key_is_a_key() {
        let mut r = DirectRouter::default();
        r.bind(1, "", &FieldTable::default()).unwrap();
        assert_eq!(route(&r, ""), [1]);
        assert!(route(&r, "x").is_empty());
    }

    #[test]
    fn rebind_same_id_replaces_and_unbind_cleans_up() {
        let mut r = DirectRouter::default();
        let a = FieldTable::default();
        r.bind(1, "a", &a).unwrap();
        r.bind(1, "b", &a).unwrap();
        assert!(route(&r, "a").is_empty());
        assert_eq!(route(&r, "b"), [1]);
        r.bind(1, "b", &a).unwrap();
        assert_eq!(route(&r, "b"), [1]);
        r.unbind(1);
        r.unbind(1);
        r.unbind(42);
        assert!(route(&r, "b").is_empty());
        assert!(r.by_key.is_empty() && r.key_of.is_empty());
    }
}
