//! The `direct` exchange type: a binding matches when its key equals the
//! message's routing key byte for byte (case-sensitive, no wildcards).

use std::collections::HashMap;

use warren_sdk::{BindingId, ExchangeType, FieldTable, Message};

/// Routing state of one direct exchange.
#[derive(Debug, Default)]
pub struct Direct {
    by_key: HashMap<String, Vec<BindingId>>,
    // Unbind only receives the id, so remember where each id lives.
    key_of: HashMap<BindingId, String>,
}

impl ExchangeType for Direct {
    const SAME_KEY_SAME_ROUTE: bool = true;

    fn create(_arguments: &FieldTable) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn bind(&mut self, id: BindingId, key: &str, _arguments: &FieldTable) -> Result<(), String> {
        self.unbind(id);
        self.by_key.entry(key.to_owned()).or_default().push(id);
        self.key_of.insert(id, key.to_owned());
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

    fn route(&self, message: &Message, out: &mut Vec<BindingId>) {
        if let Some(ids) = self.by_key.get(&message.routing_key) {
            out.extend_from_slice(ids);
        }
    }
}

warren_sdk::export_exchange_type!(Direct);

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: &str) -> Message {
        Message {
            routing_key: key.into(),
            headers: vec![],
            properties: None,
        }
    }

    #[test]
    fn exact_case_sensitive_match_and_unbind() {
        let mut d = Direct::create(&vec![]).unwrap();
        d.bind(1, "k", &vec![]).unwrap();
        d.bind(2, "k", &vec![]).unwrap();
        d.bind(3, "K", &vec![]).unwrap();
        let mut out = vec![];
        d.route(&msg("k"), &mut out);
        assert_eq!(out, [1, 2]);
        d.unbind(1);
        out.clear();
        d.route(&msg("k"), &mut out);
        assert_eq!(out, [2]);
        // Rebinding an id moves it.
        d.bind(2, "K", &vec![]).unwrap();
        out.clear();
        d.route(&msg("k"), &mut out);
        assert!(out.is_empty());
    }
}
