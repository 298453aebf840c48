//! The `fanout` exchange type: every binding matches every message; binding
//! keys and arguments are ignored, as in RabbitMQ.

use std::collections::HashMap;

use amq_protocol::types::FieldTable;

use crate::routing::exchange_type::{BindingId, ExchangeRouter, ExchangeType, RouteInput};

/// Factory for fanout exchanges.
#[derive(Debug, Default, Clone, Copy)]
pub struct FanoutExchange;

impl ExchangeType for FanoutExchange {
    fn name(&self) -> &'static str {
        "fanout"
    }

    fn create(&self, _arguments: &FieldTable) -> Result<Box<dyn ExchangeRouter>, String> {
        Ok(Box::new(FanoutRouter::default()))
    }
}

/// Routing state of one fanout exchange.
#[derive(Debug, Default)]
pub struct FanoutRouter {
    ids: Vec<BindingId>,
    // Position of each id in `ids`, so a fanout with thousands of bindings
    // binds and unbinds in O(1) instead of scanning.
    slot: HashMap<BindingId, usize>,
}

impl ExchangeRouter for FanoutRouter {
    fn bind(
        &mut self,
        id: BindingId,
        _routing_key: &str,
        _arguments: &FieldTable,
    ) -> Result<(), String> {
        if !self.slot.contains_key(&id) {
            self.slot.insert(id, self.ids.len());
            self.ids.push(id);
        }
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        let Some(pos) = self.slot.remove(&id) else {
            return;
        };
        self.ids.swap_remove(pos);
        if let Some(&moved) = self.ids.get(pos) {
            self.slot.insert(moved, pos);
        }
    }

    fn route(&self, _msg: &RouteInput<'_>, out: &mut Vec<BindingId>) {
        out.extend_from_slice(&self.ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(r: &FanoutRouter, key: &str) -> Vec<BindingId> {
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
    fn every_binding_gets_every_message() {
        let mut r = FanoutRouter::default();
        let a = FieldTable::default();
        r.bind(1, "x", &a).unwrap();
        r.bind(2, "", &a).unwrap();
        r.bind(3, "#", &a).unwrap();
        assert_eq!(route(&r, ""), [1, 2, 3]);
        assert_eq!(route(&r, "whatever.key"), [1, 2, 3]);
    }

    #[test]
    fn rebind_is_idempotent_and_unbind_keeps_index_consistent() {
        let mut r = FanoutRouter::default();
        let a = FieldTable::default();
        for id in 0..10 {
            r.bind(id, "", &a).unwrap();
        }
        r.bind(3, "other", &a).unwrap();
        assert_eq!(route(&r, "k").len(), 10);
        r.unbind(0);
        r.unbind(5);
        r.unbind(9);
        r.unbind(100);
        assert_eq!(route(&r, "k"), [1, 2, 3, 4, 6, 7, 8]);
        for (id, pos) in &r.slot {
            assert_eq!(r.ids[*pos], *id);
        }
        for id in [1, 2, 3, 4, 6, 7, 8] {
            r.unbind(id);
        }
        assert!(route(&r, "k").is_empty());
        assert!(r.slot.is_empty());
    }
}
