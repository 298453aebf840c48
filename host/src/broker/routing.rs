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
    pub name: Arc<str>,
    pub exchanges: RwLock<HashMap<String, Arc<ExchangeRt>>>,
    pub queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Queues owned by other cluster nodes, by name.
    pub remote: RwLock<HashMap<String, RemoteQueue>>,
}

/// A queue another node owns, as routing hands it on: shared names, so that routing a
/// message to it allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteQueue {
    pub node: Arc<str>,
    pub name: Arc<str>,
}

impl RemoteQueue {
    pub fn new(node: &str, name: &str) -> RemoteQueue {
        RemoteQueue {
            node: node.into(),
            name: name.into(),
        }
    }
}

/// Where a routed message goes: local queues, and queues on other nodes.
#[derive(Default)]
pub struct Destinations {
    pub local: Vec<Arc<Queue>>,
    /// Each once.
    pub remote: Vec<RemoteQueue>,
}

impl Destinations {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }

    fn push_remote(&mut self, queue: &RemoteQueue) {
        if !self.remote.iter().any(|r| r == queue) {
            self.remote.push(queue.clone());
        }
    }
}

impl VhostRt {
    pub fn new(name: &str) -> VhostRt {
        VhostRt {
            name: name.into(),
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
            } else if let Some(r) = self.remote.read().get(routing_key) {
                dest.push_remote(r);
            }
            return Ok(());
        }
        let input = RouteInput {
            routing_key,
            headers,
            message,
        };
        // The exchange published to, then any reached through exchange bindings and
        // alternate exchanges; nothing is allocated for a message that goes no further.
        let Some(first) = self.exchange(exchange) else {
            return Ok(());
        };
        let mut next = Some(first.clone());
        let mut first_seen = false;
        // Those after the first.
        let mut visited: Vec<Arc<ExchangeRt>> = Vec::new();
        let mut pending: Vec<String> = Vec::new();
        let mut ids: Vec<BindingId> = Vec::new();
        loop {
            let x = match next.take() {
                Some(x) => x,
                None => match pending.pop() {
                    Some(name) => match self.exchange(&name) {
                        Some(x) => x,
                        None => continue,
                    },
                    None => break,
                },
            };
            if first_seen {
                if Arc::ptr_eq(&x, &first) || visited.iter().any(|v| Arc::ptr_eq(v, &x)) {
                    continue;
                }
                visited.push(x.clone());
            }
            first_seen = true;
            let before = dest.local.len() + dest.remote.len();
            let mut reached_exchange = false;
            {
                let routing = x.routing.read();
                ids.clear();
                // An exchange whose type plugin is disabled routes nowhere.
                if let Some(router) = &routing.router {
                    routing
                        .matched(router.as_ref(), &input, &mut ids)
                        .map_err(|e| {
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
                            } else if let Some(r) = self.remote.read().get(name) {
                                dest.push_remote(r);
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
                && let Some(ae) = x.alternate()
            {
                pending.push(ae);
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

/// Routing keys whose matches an exchange remembers: enough for any key space a workload
/// repeats, small enough that one of unique keys (forgotten wholesale when full) costs little.
const REMEMBERED_KEYS: usize = 1024;

struct Routing {
    router: Option<Box<dyn ExchangeRouter>>,
    destinations: HashMap<BindingId, (DestinationKind, String)>,
    /// The bindings each routing key matched, for a type whose answer depends on the key
    /// alone (see `ExchangeRouter::same_key_same_route`): a publish with a known key does
    /// not call into the plugin, which costs more than the rest of routing together.
    /// Emptied whenever the bindings or the router change, under the write lock that
    /// keeps `route` out meanwhile.
    known: RwLock<HashMap<String, Box<[BindingId]>>>,
}

impl Routing {
    fn matched(
        &self,
        router: &dyn ExchangeRouter,
        input: &RouteInput<'_>,
        ids: &mut Vec<BindingId>,
    ) -> Result<(), String> {
        if !router.same_key_same_route() {
            return router.route(input, ids);
        }
        if let Some(known) = self.known.read().get(input.routing_key) {
            ids.extend_from_slice(known);
            return Ok(());
        }
        let from = ids.len();
        router.route(input, ids)?;
        let mut known = self.known.write();
        if known.len() >= REMEMBERED_KEYS {
            known.clear();
        }
        known.insert(input.routing_key.to_string(), ids[from..].into());
        Ok(())
    }

    fn forget_keys(&mut self) {
        self.known.get_mut().clear();
    }
}

pub struct ExchangeRt {
    pub record: ExchangeRecord,
    /// Its `alternate-exchange` argument, else its policy's (`broker::policies`).
    alternate: RwLock<Option<String>>,
    routing: RwLock<Routing>,
}

impl ExchangeRt {
    pub fn new(record: ExchangeRecord, router: Option<Box<dyn ExchangeRouter>>) -> ExchangeRt {
        ExchangeRt {
            alternate: RwLock::new(string_arg(&record.arguments, "alternate-exchange")),
            record,
            routing: RwLock::new(Routing {
                router,
                destinations: HashMap::new(),
                known: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn alternate(&self) -> Option<String> {
        self.alternate.read().clone()
    }

    pub fn set_alternate(&self, alternate: Option<String>) {
        *self.alternate.write() = alternate;
    }

    pub fn bind(&self, id: BindingId, b: &BindingRecord) {
        self.apply_binding(&mut self.routing.write(), id, b);
    }

    /// Tells the router (if the type is enabled) and records the destination.
    fn apply_binding(&self, r: &mut Routing, id: BindingId, b: &BindingRecord) {
        r.forget_keys();
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
        r.forget_keys();
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
        r.forget_keys();
        if r.router.is_some() {
            for (id, b) in bindings {
                self.apply_binding(&mut r, *id, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A direct exchange that counts how often it is asked.
    struct CountingDirect {
        keys: HashMap<BindingId, String>,
        calls: Arc<AtomicUsize>,
        same_key_same_route: bool,
    }

    impl ExchangeRouter for CountingDirect {
        fn bind(&mut self, id: BindingId, key: &str, _: &FieldTable) -> Result<(), RouterError> {
            self.keys.insert(id, key.to_string());
            Ok(())
        }
        fn unbind(&mut self, id: BindingId) {
            self.keys.remove(&id);
        }
        fn route(&self, msg: &RouteInput<'_>, out: &mut Vec<BindingId>) -> Result<(), String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            out.extend(
                self.keys
                    .iter()
                    .filter(|(_, k)| *k == msg.routing_key)
                    .map(|(id, _)| *id),
            );
            Ok(())
        }
        fn same_key_same_route(&self) -> bool {
            self.same_key_same_route
        }
    }

    fn vhost_with_exchange(same_key_same_route: bool) -> (VhostRt, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let router = CountingDirect {
            keys: HashMap::new(),
            calls: calls.clone(),
            same_key_same_route,
        };
        let record = ExchangeRecord {
            vhost: "/".into(),
            name: "x".into(),
            kind: "direct".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        };
        let v = VhostRt::new("/");
        v.exchanges.write().insert(
            "x".into(),
            Arc::new(ExchangeRt::new(record, Some(Box::new(router)))),
        );
        for q in ["q1", "q2"] {
            v.remote
                .write()
                .insert(q.into(), RemoteQueue::new("n9@h", q));
        }
        (v, calls)
    }

    fn binding(queue: &str, key: &str) -> BindingRecord {
        BindingRecord {
            vhost: "/".into(),
            source: "x".into(),
            destination: queue.into(),
            destination_kind: DestinationKind::Queue,
            routing_key: key.into(),
            arguments: FieldTable::default(),
        }
    }

    fn queues(v: &VhostRt, key: &str) -> Vec<String> {
        let mut dest = Destinations::default();
        v.route("x", key, None, None, &mut dest).unwrap();
        let mut names: Vec<String> = dest
            .remote
            .into_iter()
            .map(|r| r.name.to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_known_key_is_not_routed_again_until_the_bindings_change() {
        let (v, calls) = vhost_with_exchange(true);
        let x = v.exchange("x").unwrap();
        assert!(queues(&v, "k").is_empty());
        x.bind(1, &binding("q1", "k"));
        assert_eq!(queues(&v, "k"), ["q1"], "a bind must be seen at once");
        assert_eq!(queues(&v, "k"), ["q1"]);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "the repeat came from memory"
        );
        x.bind(2, &binding("q2", "k"));
        assert_eq!(queues(&v, "k"), ["q1", "q2"]);
        x.unbind(1);
        assert_eq!(queues(&v, "k"), ["q2"], "an unbind must be seen at once");
        x.set_router(None, &[]);
        assert!(queues(&v, "k").is_empty(), "a disabled type routes nowhere");
    }

    #[test]
    fn a_type_that_does_not_promise_it_is_asked_every_time() {
        let (v, calls) = vhost_with_exchange(false);
        v.exchange("x").unwrap().bind(1, &binding("q1", "k"));
        for _ in 0..3 {
            assert_eq!(queues(&v, "k"), ["q1"]);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_exchange_bound_to_itself_routes_once() {
        let (v, calls) = vhost_with_exchange(false);
        let x = v.exchange("x").unwrap();
        x.bind(1, &binding("q1", "k"));
        let mut to_itself = binding("x", "k");
        to_itself.destination_kind = DestinationKind::Exchange;
        x.bind(2, &to_itself);
        assert_eq!(queues(&v, "k"), ["q1"]);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
