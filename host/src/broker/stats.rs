//! Node-wide message counters (for `warrenctl status` and metrics plugins),
//! and the answers the broker gives plugins about users and statistics.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Broker;
use crate::meta::ExchangeRecord;
use crate::plugins::ExchangeTypeHooks;
use crate::plugins::bindings::auth::warren::plugin::users;
use crate::plugins::bindings::http::warren::plugin::stats as wit;
use crate::plugins::host_api::HostServices;

#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub unroutable: AtomicU64,
    pub confirmed: AtomicU64,
    /// Deliveries and acks of queues since deleted, so totals never go down.
    pub retired_delivered: AtomicU64,
    pub retired_acked: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl HostServices for Broker {
    fn lookup_user(&self, name: &str) -> Option<users::User> {
        let state = self.meta.read();
        let u = state.users.get(name)?;
        Some(users::User {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            hashing_algorithm: u.hashing_algorithm.clone(),
            tags: u.tags.clone(),
        })
    }

    fn vhost_exists(&self, vhost: &str) -> bool {
        self.meta.read().vhosts.contains_key(vhost)
    }

    fn user_permissions(&self, user: &str, vhost: &str) -> Option<users::Permissions> {
        let state = self.meta.read();
        let p = state.permission(vhost, user)?;
        Some(users::Permissions {
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        })
    }

    fn user_topic_permissions(&self, user: &str, vhost: &str) -> Vec<users::TopicPermissions> {
        let state = self.meta.read();
        let from = (vhost.to_string(), user.to_string(), String::new());
        state
            .topic_permissions
            .range(from..)
            .take_while(|((v, u, _), _)| v == vhost && u == user)
            .map(|(_, t)| users::TopicPermissions {
                exchange: t.exchange.clone(),
                write: t.write.clone(),
                read: t.read.clone(),
            })
            .collect()
    }

    fn node_stats(&self) -> wit::NodeStats {
        let connections = self.connection_list();
        let channels: u64 = connections
            .iter()
            .map(|c| c.channels.load(Ordering::Relaxed))
            .sum();
        let mut queues = 0u32;
        let mut exchanges = 0u32;
        let mut consumers = 0u32;
        let mut delivered = self.stats.retired_delivered.load(Ordering::Relaxed);
        let mut acked = self.stats.retired_acked.load(Ordering::Relaxed);
        for name in self.vhost_names() {
            let Some(v) = self.vhost(&name) else { continue };
            exchanges += v.exchanges.read().len() as u32;
            for q in v.queues.read().values() {
                let s = q.stats();
                queues += 1;
                consumers += s.consumers as u32;
                delivered += s.delivered;
                acked += s.acked;
            }
        }
        wit::NodeStats {
            node: self.config.node.clone(),
            connections: connections.len() as u32,
            channels: channels as u32,
            queues,
            exchanges,
            consumers,
            messages_published_total: self.stats.published.load(Ordering::Relaxed),
            messages_delivered_total: delivered,
            messages_acknowledged_total: acked,
            messages_confirmed_total: self.stats.confirmed.load(Ordering::Relaxed),
            messages_unroutable_total: self.stats.unroutable.load(Ordering::Relaxed),
            memory_used_bytes: crate::resources::process_memory(),
            uptime_seconds: self.uptime().as_secs(),
        }
    }

    fn cluster_name(&self) -> String {
        Broker::cluster_name(self)
    }

    fn queue_stats(&self) -> Vec<wit::QueueStats> {
        let mut out = Vec::new();
        for name in self.vhost_names() {
            let Some(v) = self.vhost(&name) else { continue };
            let mut qs: Vec<_> = v.queues.read().values().cloned().collect();
            qs.sort_by(|a, b| a.name().cmp(b.name()));
            for q in qs {
                let s = q.stats();
                out.push(wit::QueueStats {
                    vhost: name.clone(),
                    name: q.name().to_string(),
                    queue_type: q.queue_type().as_str().to_string(),
                    messages_ready: s.messages_ready as u64,
                    messages_unacknowledged: s.messages_unacknowledged as u64,
                    consumers: s.consumers as u32,
                });
            }
        }
        out
    }
}

impl ExchangeTypeHooks for Broker {
    fn exchanges_blocking_disable(&self, exchange_type: &str) -> Vec<String> {
        let state = self.meta.read();
        state
            .exchanges
            .values()
            .filter(|x| x.kind == exchange_type && !is_standard(x))
            .map(|x| format!("exchange '{}' in vhost '{}'", x.name, x.vhost))
            .collect()
    }

    fn exchange_types_changed(&self, types: &[String]) {
        let state = self.meta.read();
        for name in self.vhost_names() {
            let Some(v) = self.vhost(&name) else { continue };
            let exchanges: Vec<_> = v.exchanges.read().values().cloned().collect();
            for x in exchanges {
                if !types.contains(&x.record.kind) || x.record.name.is_empty() {
                    continue;
                }
                let router = self.router_for(&x.record);
                let bindings: Vec<_> = state
                    .bindings
                    .iter()
                    .filter(|(_, b)| b.vhost == name && b.source == x.record.name)
                    .map(|(id, b)| (*id, b.clone()))
                    .collect();
                x.set_router(router, &bindings);
            }
        }
    }
}

/// The exchanges every vhost is born with (amq.*): they never block disabling
/// their type's plugin; they just route nowhere while it is off.
fn is_standard(x: &ExchangeRecord) -> bool {
    x.name.is_empty() || x.name.starts_with("amq.")
}
