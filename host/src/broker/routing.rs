//! Where a message finds its queues: the default exchange is a protocol rule, every other
//! exchange asks its exchange type's router, following exchange-to-exchange bindings and
//! alternate exchanges.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::RwLock;

use crate::base::message::Message;
use crate::meta::state::string_arg;
use crate::meta::{BindingRecord, DestinationKind, ExchangeRecord};
use crate::queue::Queue;
use crate::routing::exchange_type::{BindingId, ExchangeRouter, RouteInput, RouterError};

pub struct VhostRt {
    pub name: String,
    pub exchanges: RwLock<HashMap<String, Arc<ExchangeRt>>>,
    pub queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Queues owned by other cluster nodes: name → owner node.
    pub remote: RwLock<HashMap<String, String>>,
}

/// Where a routed message goes: local queues, and queues on other nodes.
#[derive(Default)]
pub struct Destinations {
    pub local: Vec<Arc<Queue>>,
    /// (owner node, queue name), each once.
    pub remote: Vec<(String, String)>,
}

impl Destinations {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }

    fn push_remote(&mut self, node: &str, queue: &str) {
        if !self.remote.iter().any(|(n, q)| n == node && q == queue) {
            self.remote.push((node.to_string(), queue.to_string()));
        }
    }
}

impl VhostRt {
    pub fn new(name: &str) -> VhostRt {
        VhostRt {
            name: name.to_string(),
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            remote: RwLock::new(HashMap::new()),
        }
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<ExchangeRt>> {
        self.exchanges.read().get(name).cloned()
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// The queues a message published to `exchange` reaches, each once.
    /// Err is an exchange type's failure, worded for a 541 INTERNAL_ERROR.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        message: Option<&Message>,
        dest: &mut Destinations,
    ) -> Result<(), String> {
        if exchange.is_empty() {
            if let Some(q) = self.queue(routing_key) {
                if !dest.local.iter().any(|o| Arc::ptr_eq(o, &q)) {
                    dest.local.push(q);
                }
            } else if let Some(node) = self.remote.read().get(routing_key) {
                dest.push_remote(node, routing_key);
            }
            return Ok(());
        }
        let input = RouteInput {
            routing_key,
            headers,
            message,
        };
        let mut visited: Vec<String> = Vec::new();
        let mut pending = vec![exchange.to_string()];
        let mut ids: Vec<BindingId> = Vec::new();
        while let Some(name) = pending.pop() {
            if visited.contains(&name) {
                continue;
            }
            let Some(x) = self.exchange(&name) else {
                continue;
            };
            visited.push(name);
            let before = dest.local.len() + dest.remote.len();
            let mut reached_exchange = false;
            {
                let routing = x.routing.read();
                ids.clear();
                // An exchange whose type plugin is disabled routes nowhere.
                if let Some(router) = &routing.router {
                    router.route(&input, &mut ids).map_err(|e| {
                        format!(
                            "INTERNAL_ERROR - routing on exchange '{}' in vhost '{}': {e}",
                            x.record.name, self.name
                        )
                    })?;
                }
                for id in &ids {
                    match routing.destinations.get(id) {
                        Some((DestinationKind::Queue, name)) => {
                            if let Some(q) = self.queue(name) {
                                if !dest.local.iter().any(|o| Arc::ptr_eq(o, &q)) {
                                    dest.local.push(q);
                                }
                            } else if let Some(node) = self.remote.read().get(name) {
                                dest.push_remote(node, name);
                            }
                        }
                        Some((DestinationKind::Exchange, e)) => {
                            reached_exchange = true;
                            pending.push(e.clone());
                        }
                        None => {}
                    }
                }
            }
            if dest.local.len() + dest.remote.len() == before
                && !reached_exchange
                && let Some(ae) = &x.alternate
            {
                pending.push(ae.clone());
            }
        }
        Ok(())
    }
}

/// Sender-selected distribution: the routing keys in a message's `CC` and `BCC` headers,
/// which RabbitMQ routes by as well as the routing key.
pub fn sender_selected_keys(headers: Option<&FieldTable>) -> Vec<String> {
    let mut keys = Vec::new();
    let Some(h) = headers else { return keys };
    for name in ["CC", "BCC"] {
        if let Some(amq_protocol::types::AMQPValue::FieldArray(a)) = h.inner().get(name) {
            for v in a.as_slice() {
                match v {
                    amq_protocol::types::AMQPValue::LongString(s) => {
                        keys.push(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    amq_protocol::types::AMQPValue::ShortString(s) => {
                        keys.push(s.as_str().to_string())
                    }
                    _ => {}
                }
            }
        }
    }
    keys
}

struct Routing {
    router: Option<Box<dyn ExchangeRouter>>,
    destinations: HashMap<BindingId, (DestinationKind, String)>,
}

pub struct ExchangeRt {
    pub record: ExchangeRecord,
    pub alternate: Option<String>,
    routing: RwLock<Routing>,
}

impl ExchangeRt {
    pub fn new(record: ExchangeRecord, router: Option<Box<dyn ExchangeRouter>>) -> ExchangeRt {
        ExchangeRt {
            alternate: string_arg(&record.arguments, "alternate-exchange"),
            record,
            routing: RwLock::new(Routing {
                router,
                destinations: HashMap::new(),
            }),
        }
    }

    pub fn bind(&self, id: BindingId, b: &BindingRecord) {
        self.apply_binding(&mut self.routing.write(), id, b);
    }

    /// Tells the router (if the type is enabled) and records the destination.
    fn apply_binding(&self, r: &mut Routing, id: BindingId, b: &BindingRecord) {
        let accepted = match r.router.as_mut() {
            Some(router) => router.bind(id, &b.routing_key, &b.arguments),
            None => Ok(()),
        };
        match accepted {
            Ok(()) => {
                r.destinations
                    .insert(id, (b.destination_kind, b.destination.clone()));
            }
            Err(RouterError::Refused(e) | RouterError::Failed(e)) => {
                tracing::warn!(exchange = %self.record.name, error = %e, "binding not applied by exchange type")
            }
        }
    }

    pub fn unbind(&self, id: BindingId) {
        let mut r = self.routing.write();
        if let Some(router) = r.router.as_mut() {
            router.unbind(id);
        }
        r.destinations.remove(&id);
    }

    /// Gives the exchange a router (its type plugin was enabled), replaying its
    /// bindings; or takes it away (the plugin was disabled).
    pub fn set_router(
        &self,
        router: Option<Box<dyn ExchangeRouter>>,
        bindings: &[(BindingId, BindingRecord)],
    ) {
        let mut r = self.routing.write();
        r.router = router;
        if r.router.is_some() {
            for (id, b) in bindings {
                self.apply_binding(&mut r, *id, b);
            }
        }
    }
}
