//! The broker: the runtime side of metadata (vhosts, exchange routers, queues), routing,
//! dead-lettering, users and permissions. Metadata changes arrive as events from the metadata
//! store; the AMQP layer calls in here for everything that is not wire protocol.

pub mod calls;
pub mod channels;
pub mod dead_letter;
pub mod direct_reply;
pub mod forward;
pub mod forward_backlog;
pub mod forward_ledger;
pub mod permissions;
pub mod policies;
pub mod proxy;
pub mod queue_delete;
pub mod quorum_members;
pub mod quorum_queues;
pub mod relay_sink;
pub mod remote_session;
pub mod routing;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::cluster::MetaStore;
use crate::meta::*;
use crate::plugins::PluginHost;
use crate::plugins::exchange::WasmExchangeType;
use crate::queue::{DeathReason, Entry, Queue, QueueOwner};
use crate::resources::{AlarmHolder, Alarms};
use crate::routing::exchange_type::{ExchangeRouter, ExchangeType, RouterError};
use crate::store::message_store::MessageStore;
use routing::RemoteQueue;
pub use routing::{ExchangeRt, VhostRt};

/// What the broker needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node: String,
    pub data_dir: PathBuf,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// Users that may only connect from loopback (RabbitMQ's loopback_users, default guest).
    pub loopback_users: Vec<String>,
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// RabbitMQ's consumer_timeout: a delivery unacknowledged for longer closes its channel.
    pub consumer_timeout_ms: Option<u64>,
}

/// A client connection as listings show it.
pub struct ConnectionInfo {
    pub id: u64,
    pub name: String,
    pub peer: std::net::SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: String,
    pub connected_at: u64,
    pub channels: AtomicU64,
    pub recv_oct: AtomicU64,
    pub send_oct: AtomicU64,
    /// The SASL mechanism the client logged in with.
    pub auth_mechanism: &'static str,
    /// Whether the connection is held by a resource alarm (it has published).
    pub blocked: std::sync::atomic::AtomicBool,
    pub channel_handles: Mutex<BTreeMap<u16, Arc<dyn channels::ClientChannel>>>,
    /// Closing the connection from the broker (vhost deleted, node stopping).
    pub kill: tokio::sync::Notify,
}

pub struct Broker {
    pub config: BrokerConfig,
    pub meta: Arc<MetaStore>,
    pub store: Option<MessageStore>,
    vhosts: RwLock<HashMap<String, Arc<VhostRt>>>,
    pub plugins: Arc<PluginHost>,
    pub stats: stats::Counters,
    started: std::time::Instant,
    msg_ids: AtomicU64,
    recovered: Mutex<HashMap<u64, Vec<Entry>>>,
    pub connections: Mutex<BTreeMap<u64, Arc<ConnectionInfo>>>,
    next_connection: AtomicU64,
    pub alarms: watch::Sender<Alarms>,
    /// The memory alarm's threshold in accounted bytes (`u64::MAX` until the monitor runs),
    /// for readers to check between frames without waiting for the monitor's tick.
    pub memory_limit: AtomicU64,
    permissions: permissions::PermissionCache,
    /// Publishes on their way to queues owned by other nodes.
    pub forward: forward::Forwarders,
    /// Forwarded batches already run here, for answering repeats.
    pub forward_ledger: forward_ledger::ForwardLedger,
    /// Sessions other nodes opened on this node's queues.
    pub proxies: proxy::ProxySessions,
    /// Sessions this node's channels opened on other nodes' queues.
    pub remote_sessions: remote_session::RemoteSessions,
    /// Direct reply-to consumers of this node's channels.
    pub direct_replies: direct_reply::DirectReplies,
    /// This node's members of quorum queue groups.
    pub quorum: crate::quorum::QuorumQueues,
    pub(crate) me: Weak<Broker>,
}

impl QueueOwner for Broker {
    fn dead_letter(&self, from: &Arc<Queue>, dead: Vec<(Entry, DeathReason)>) {
        Broker::dead_letter(self, from, dead);
    }
    fn delete_queue_later(&self, vhost: String, name: String) {
        Broker::delete_queue_later(self, vhost, name);
    }
}

impl AlarmHolder for Broker {
    fn alarms(&self) -> &watch::Sender<Alarms> {
        &self.alarms
    }
    fn memory_limit(&self) -> &AtomicU64 {
        &self.memory_limit
    }
}

impl Broker {
    pub fn new(
        config: BrokerConfig,
        meta: Arc<MetaStore>,
        store: Option<MessageStore>,
        next_msg_id: u64,
        recovered: HashMap<u64, Vec<Entry>>,
        plugins: Arc<PluginHost>,
    ) -> Arc<Broker> {
        let broker = Arc::new_cyclic(|me| Broker {
            config,
            meta,
            store,
            vhosts: RwLock::new(HashMap::new()),
            plugins,
            stats: Default::default(),
            started: std::time::Instant::now(),
            msg_ids: AtomicU64::new(next_msg_id.max(1)),
            recovered: Mutex::new(recovered),
            connections: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(1),
            alarms: watch::channel(Alarms::default()).0,
            memory_limit: AtomicU64::new(u64::MAX),
            permissions: permissions::PermissionCache::default(),
            direct_replies: Default::default(),
            forward: Default::default(),
            forward_ledger: Default::default(),
            proxies: Default::default(),
            remote_sessions: Default::default(),
            quorum: Default::default(),
            me: me.clone(),
        });
        let services: std::sync::Weak<dyn crate::plugins::host_api::HostServices> =
            Arc::downgrade(&broker) as _;
        let hooks: std::sync::Weak<dyn crate::plugins::ExchangeTypeHooks> =
            Arc::downgrade(&broker) as _;
        broker.plugins.set_services(services, hooks);
        broker
    }

    pub fn next_message_id(&self) -> u64 {
        self.msg_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub fn exchange_type(&self, name: &str) -> Option<Arc<WasmExchangeType>> {
        self.plugins.exchange_type(name)
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VhostRt>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Deletes a queue from outside any queue lock (auto-delete, x-expires).
    pub fn delete_queue_later(&self, vhost: String, name: String) {
        let meta = self.meta.clone();
        tokio::spawn(async move {
            let _ = meta.submit(MetaCommand::DeleteQueue { vhost, name }).await;
        });
    }

    /// The cluster's name, the same on every node: the one `set_cluster_name` gave, else the
    /// founding node's name (seeded on its first start); metadata written before names were
    /// kept falls back to the first disc node's name.
    pub fn cluster_name(&self) -> String {
        if let Some(n) = self.meta.read().cluster_name.clone() {
            return n;
        }
        self.meta
            .cluster()
            .and_then(|c| c.members().0.into_iter().map(|n| n.name).min())
            .unwrap_or_else(|| self.config.node.clone())
    }

    /// Seeds a fresh node: vhost `/`, user guest/guest with full permissions.
    pub async fn seed_defaults(&self) -> Result<(), MetaError> {
        let c = &self.config;
        self.meta
            .submit(MetaCommand::SetClusterName {
                name: c.node.clone(),
            })
            .await?;
        self.meta
            .submit(MetaCommand::AddVhost(VhostRecord {
                name: c.default_vhost.clone(),
                description: "Default virtual host".into(),
            }))
            .await?;
        self.meta
            .submit(MetaCommand::AddUser(UserRecord {
                name: c.default_user.clone(),
                password_hash: crate::auth::hash_password(&c.default_pass),
                hashing_algorithm: PASSWORD_HASHING_SHA256.into(),
                tags: vec!["administrator".into()],
            }))
            .await?;
        self.meta
            .submit(MetaCommand::SetPermissions(PermissionRecord {
                user: c.default_user.clone(),
                vhost: c.default_vhost.clone(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            }))
            .await?;
        Ok(())
    }

    fn create_queue(&self, state: &MetaState, rec: &QueueRecord) {
        let Some(vhost) = self.vhost(&rec.vhost) else {
            return;
        };
        let config = policies::queue_config(state, rec);
        let recovered = self.recovered.lock().remove(&rec.uid).unwrap_or_default();
        if !recovered.is_empty() {
            tracing::info!(queue = %rec.name, vhost = %rec.vhost, messages = recovered.len(), "queue recovered its messages");
        }
        let store = if rec.durable {
            self.store.clone()
        } else {
            None
        };
        let q = Queue::new(rec.clone(), config, store, self.me.clone(), recovered);
        vhost.queues.write().insert(rec.name.clone(), q);
    }

    fn create_exchange(&self, state: &MetaState, rec: &ExchangeRecord) {
        let Some(vhost) = self.vhost(&rec.vhost) else {
            return;
        };
        let x = ExchangeRt::new(rec.clone(), self.router_for(rec));
        x.set_alternate(policies::alternate_exchange(state, rec));
        vhost
            .exchanges
            .write()
            .insert(rec.name.clone(), Arc::new(x));
    }

    /// The routing state for an exchange, from its type's plugin. The default
    /// exchange needs none (it is a protocol rule); an exchange whose type
    /// plugin is not enabled gets none and routes nowhere until it is.
    pub(crate) fn router_for(&self, rec: &ExchangeRecord) -> Option<Box<dyn ExchangeRouter>> {
        if rec.name.is_empty() {
            return None;
        }
        let Some(t) = self.exchange_type(&rec.kind) else {
            tracing::warn!(exchange = %rec.name, kind = %rec.kind, "exchange type not enabled; the exchange routes nowhere");
            return None;
        };
        match t.create(&rec.arguments) {
            Ok(router) => Some(router),
            Err(RouterError::Refused(e) | RouterError::Failed(e)) => {
                tracing::warn!(exchange = %rec.name, error = %e, "exchange type refused a stored exchange");
                None
            }
        }
    }

    /// Queues whose messages were recovered from disk but whose metadata is gone are dropped.
    pub fn discard_orphaned_messages(&self) {
        let orphans: Vec<u64> = self.recovered.lock().drain().map(|(uid, _)| uid).collect();
        if !orphans.is_empty() {
            tracing::info!(
                queues = orphans.len(),
                "dropping stored messages of queues the cluster no longer has"
            );
        }
        if let Some(store) = &self.store {
            for uid in orphans {
                store.delete_queue(uid);
            }
        }
    }

    pub fn register_connection(&self, info: Arc<ConnectionInfo>) {
        self.connections.lock().insert(info.id, info);
    }

    /// A snapshot of the open client connections (for listings).
    pub fn connection_list(&self) -> Vec<Arc<ConnectionInfo>> {
        self.connections.lock().values().cloned().collect()
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.lock().remove(&id);
    }
}

impl MetaListener for Broker {
    fn on_events(&self, state: &MetaState, events: &[MetaEvent]) {
        for e in events {
            match e {
                MetaEvent::VhostAdded(v) => {
                    self.vhosts
                        .write()
                        .entry(v.name.clone())
                        .or_insert_with(|| Arc::new(VhostRt::new(&v.name)));
                }
                MetaEvent::VhostDeleted(name) => {
                    self.vhosts.write().remove(name);
                    for c in self.connections.lock().values() {
                        if &c.vhost == name {
                            c.kill.notify_one();
                        }
                    }
                }
                MetaEvent::UsersChanged => self.permissions.clear(),
                MetaEvent::ExchangeAdded(x) => self.create_exchange(state, x),
                MetaEvent::ExchangeDeleted { vhost, name } => {
                    if let Some(v) = self.vhost(vhost) {
                        v.exchanges.write().remove(name);
                    }
                }
                MetaEvent::QueueAdded(q) => {
                    if crate::quorum::is_quorum(q) {
                        self.quorum_queue_added(q);
                    } else if q.node == self.config.node {
                        self.create_queue(state, q);
                    } else if let Some(v) = self.vhost(&q.vhost) {
                        v.remote
                            .write()
                            .insert(q.name.clone(), RemoteQueue::new(&q.node, &q.name));
                    }
                }
                MetaEvent::QueueDeleted { vhost, name, uid } => {
                    // A record that changed (a quorum queue's members, seen
                    // through a snapshot) comes as deleted-then-added: the
                    // queue itself stays.
                    if state.queue(vhost, name).is_some_and(|q| q.uid == *uid) {
                        continue;
                    }
                    self.quorum_queue_deleted(*uid);
                    if let Some(v) = self.vhost(vhost) {
                        v.remote.write().remove(name);
                    }
                    let q = self
                        .vhost(vhost)
                        .and_then(|v| v.queues.write().remove(name));
                    if let Some(q) = q {
                        let s = q.stats();
                        stats::Counters::add(&self.stats.retired_delivered, s.delivered);
                        stats::Counters::add(&self.stats.retired_acked, s.acked);
                        q.on_deleted();
                    }
                }
                MetaEvent::BindingAdded { id, binding } => {
                    if let Some(x) = self
                        .vhost(&binding.vhost)
                        .and_then(|v| v.exchange(&binding.source))
                    {
                        x.bind(*id, binding);
                    }
                }
                MetaEvent::PoliciesChanged { vhost } => self.policies_changed(state, vhost),
                MetaEvent::BindingRemoved { id, binding } => {
                    if let Some(x) = self
                        .vhost(&binding.vhost)
                        .and_then(|v| v.exchange(&binding.source))
                    {
                        x.unbind(*id);
                    }
                }
            }
        }
    }
}
