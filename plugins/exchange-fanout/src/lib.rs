//! The `fanout` exchange type: every binding matches every message; binding
//! keys and arguments are ignored, as in RabbitMQ.

use std::collections::HashMap;

use warren_sdk::{BindingId, ExchangeType, FieldTable, Message};

/// Routing state of one fanout exchange.
#[derive(Debug, Default)]
pub struct Fanout {
    ids: Vec<BindingId>,
    // Position of each id in `ids`, so a fanout with thousands of bindings
    // binds and unbinds in O(1) instead of scanning.
    slot: HashMap<BindingId, usize>,
}

impl ExchangeType for Fanout {
    const SAME_KEY_SAME_ROUTE: bool = true;

    fn create(_arguments: &FieldTable) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn bind(
        &mut self,
        id: BindingId,
        _binding_key: &str,
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

    fn route(&self, _message: &Message, out: &mut Vec<BindingId>) {
        out.extend_from_slice(&self.ids);
    }
}

warren_sdk::export_exchange_type!(Fanout);

#[cfg(test)]
mod tests {
    use super::*;

    fn route(r: &Fanout, key: &str) -> Vec<BindingId> {
        let mut out = Vec::new();
        r.route(
            &Message {
                routing_key: key.into(),
                headers: vec![],
                properties: None,
            },
            &mut out,
        );
        out.sort_unstable();
        out
    }

    #[test]
    fn every_binding_gets_every_message() {
        let mut r = Fanout::create(&vec![]).unwrap();
        let a = FieldTable::default();
        r.bind(1, "x", &a).unwrap();
        r.bind(2, "", &a).unwrap();
        r.bind(3, "#", &a).unwrap();
        assert_eq!(route(&r, ""), [1, 2, 3]);
        assert_eq!(route(&r, "whatever.key"), [1, 2, 3]);
    }

    #[test]
    fn rebind_is_idempotent_and_unbind_keeps_index_consistent() {
        let mut r = Fanout::default();
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
