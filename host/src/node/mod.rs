//! A node: opens its stores, recovers metadata and messages, and runs the AMQP listeners,
//! the control listener and the resource monitor until it is told to stop.

mod peer_calls;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::base::message::Message;
use crate::broker::{Broker, BrokerConfig};
use crate::cluster::MetaStore;
use crate::config::{NodeConfig, NodeRuntimeFile};
use crate::plugins::PluginHost;
use crate::queue::Entry;
use crate::resources::{self, Limits};
use crate::store::message_store::{MessageStore, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::store::message_store::StoreError),
    #[error("{0}")]
    Meta(#[from] crate::meta::MetaError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Plugin(#[from] crate::plugins::PluginError),
}

/// The node's plugin host: runtime, catalog and enabled-plugins file.
pub fn plugin_host(config: &NodeConfig) -> Result<Arc<PluginHost>, crate::plugins::PluginError> {
    PluginHost::new(
        &config.data_dir,
        config.enabled_plugins_file.clone(),
        crate::config::process_env("WARREN_PLUGINS_DIR").map(std::path::PathBuf::from),
        Arc::new(config.settings.clone()),
    )
}

/// A running node, as the control protocol sees it.
pub struct Node {
    pub config: NodeConfig,
    pub broker: Arc<Broker>,
    pub cookie: String,
    /// Whether the AMQP listeners accept connections (stop_app / start_app).
    pub app_running: watch::Sender<bool>,
    /// Set to stop the whole node.
    pub shutdown: watch::Sender<bool>,
    /// Set once the metadata has caught up and the AMQP listeners are bound.
    pub serving: watch::Sender<bool>,
    pub started_at: std::time::Instant,
}

pub fn broker_config(cfg: &NodeConfig) -> BrokerConfig {
    let s = &cfg.settings;
    BrokerConfig {
        node: cfg.node_name.clone(),
        data_dir: cfg.data_dir.clone(),
        frame_max: s.frame_max,
        channel_max: s.channel_max,
        heartbeat: s.heartbeat,
        loopback_users: s.loopback_users.clone(),
        default_user: s.default_user.clone(),
        default_pass: s.default_pass.clone(),
        default_vhost: s.default_vhost.clone(),
        consumer_timeout_ms: s.consumer_timeout_ms,
    }
}

/// Opens the node's stores and rebuilds its state.
pub async fn open(config: NodeConfig, cookie: String) -> Result<Arc<Node>, NodeError> {
    // Plugins are set up first: their manifests say which config keys they read, and a key
    // nobody reads is refused before anything is opened.
    let plugins = plugin_host(&config)?;
    let catalog = plugins.catalog();
    config
        .settings
        .check_keys(&|key| catalog.values().any(|a| a.manifest.may_read(key)))?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::DataDir(config.data_dir.display().to_string(), e))?;
    let fsync = config.settings.message_store_fsync;
    let (store, recovery) = MessageStore::open(
        &config.data_dir.join("msg_store"),
        StoreOptions {
            fsync,
            ..StoreOptions::default()
        },
    )?;
    let mut recovered: HashMap<u64, Vec<Entry>> = HashMap::new();
    let count = recovery.messages.len();
    for m in recovery.messages {
        let Some(msg) = Message::decode(m.payload) else {
            tracing::warn!(
                queue = m.queue,
                id = m.id,
                "skipping undecodable stored message"
            );
            continue;
        };
        recovered.entry(m.queue).or_default().push(Entry {
            id: m.id,
            msg: Arc::new(msg),
            // As RabbitMQ: redelivered if a consumer may have seen it before the restart.
            redelivered: m.delivered,
            delivery_count: 0,
            expires_at: None,
            stored: true,
        });
    }
    tracing::info!(messages = count, "message store recovered");
    // Plugins load before metadata replays, so stored exchanges find their types.
    plugins.load_enabled()?;
    let me = crate::cluster::ClusterNode {
        name: config.node_name.clone(),
        addr: advertised_addr(&config),
    };
    let meta = Arc::new(MetaStore::new(config.data_dir.clone(), me, cookie.clone()));
    let broker = Broker::new(
        broker_config(&config),
        meta.clone(),
        Some(store),
        recovery.next_msg_id,
        recovered,
        plugins,
    );
    let fresh = meta.start(broker.clone()).await?;
    if fresh {
        broker.seed_defaults().await?;
    }
    Ok(Arc::new(Node {
        config,
        broker,
        cookie,
        app_running: watch::channel(true).0,
        shutdown: watch::channel(false).0,
        serving: watch::channel(false).0,
        started_at: std::time::Instant::now(),
    }))
}

/// Where other nodes reach this one: its host part and dist port.
pub fn advertised_addr(config: &NodeConfig) -> String {
    let host = crate::config::node_host(&config.node_name);
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", config.dist_port)
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        // IPv4 has its own listener, as RabbitMQ binds both families separately.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The AMQP listeners: 0.0.0.0 and [::] on the node port (or the one address the config names).
pub fn amqp_listeners(config: &NodeConfig) -> Result<Vec<TcpListener>, NodeError> {
    let port = config.amqp_port;
    let mut out = Vec::new();
    // `listeners.tcp.default = 127.0.0.1:5672` binds that one address only.
    if let Some(ip) = config
        .settings
        .listeners_tcp_default
        .as_ref()
        .and_then(|l| l.ip)
    {
        let addr = SocketAddr::new(ip, port);
        out.push(bind_listener(addr).map_err(|e| NodeError::Listen(addr, e))?);
        return Ok(out);
    }
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    out.push(bind_listener(v4).map_err(|e| NodeError::Listen(v4, e))?);
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match bind_listener(v6) {
        Ok(l) => out.push(l),
        Err(e) => tracing::warn!(error = %e, "no IPv6 listener"),
    }
    Ok(out)
}

/// Retries the catch-up until the replica is current, then drops the messages of
/// queues that are really gone (those of queues that showed up meanwhile were
/// handed to their queues as their records arrived).
async fn discard_orphans_once_current(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if broker.meta.catch_up().await {
            broker.discard_orphaned_messages();
            return;
        }
    }
}

async fn accept_loop(listener: TcpListener, node: Arc<Node>) {
    let mut running = node.app_running.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((socket, peer)) => {
                        if !*running.borrow() {
                            drop(socket);
                            continue;
                        }
                        let broker = node.broker.clone();
                        tokio::spawn(crate::amqp::connection::serve(socket, peer, broker));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            changed = running.changed() => if changed.is_err() { return },
        }
    }
}

impl crate::ctl::Lifecycle for Node {
    fn config(&self) -> &NodeConfig {
        &self.config
    }

    fn started_at(&self) -> std::time::Instant {
        self.started_at
    }

    fn app_running(&self) -> bool {
        *self.app_running.borrow()
    }

    fn set_app_running(&self, running: bool) {
        self.app_running.send_replace(running);
        if !running {
            self.close_connections();
        }
    }

    fn serving(&self) -> bool {
        *self.serving.borrow()
    }

    fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Node {
    /// Closes every client connection (stop_app, shutdown).
    pub fn close_connections(&self) {
        for c in self.broker.connections.lock().values() {
            c.kill.notify_one();
        }
    }

    /// Runs the node until it is stopped.
    pub async fn run(self: Arc<Node>) -> Result<(), NodeError> {
        let interface = self.config.settings.distribution_listener_interface;
        let dist = SocketAddr::new(
            interface.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            self.config.dist_port,
        );
        let handler = crate::ctl::handler(self.clone(), self.broker.clone());
        let ctl = crate::ctl::bind(interface, self.config.dist_port, &self.cookie, handler)
            .await
            .map_err(|e| NodeError::Listen(dist, std::io::Error::other(e.to_string())))?
            .with_peers(Arc::new(peer_calls::router(&self)));
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(ctl.run(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        }));
        let caught_up = self.broker.meta.catch_up().await;
        // Messages recovered for a queue the replica does not know are dropped only
        // once the replica is known to be current: after a kill -9 it can lag the
        // cluster (its committed index is a hint), and a queue declared elsewhere
        // just before the crash would otherwise lose its confirmed messages.
        if caught_up {
            self.broker.discard_orphaned_messages();
        } else {
            tokio::spawn(discard_orphans_once_current(self.broker.clone()));
        }
        // Bound only now: a client connecting earlier is refused at once and
        // tries another node, instead of waiting in the listen backlog.
        let listeners = amqp_listeners(&self.config)?;
        for l in listeners {
            tokio::spawn(accept_loop(l, self.clone()));
        }
        self.serving.send_replace(true);
        if let Some(c) = self.broker.meta.cluster() {
            c.announce_app_state(true).await;
        }
        let total = resources::total_memory();
        tokio::spawn(resources::monitor(
            self.broker.clone(),
            Limits {
                memory_bytes: self
                    .config
                    .settings
                    .vm_memory_high_watermark
                    .limit_bytes(total),
                disk_free_bytes: self.config.settings.disk_free_limit.limit_bytes(total),
                data_dir: self.config.data_dir.clone(),
            },
        ));
        NodeRuntimeFile::for_config(&self.config).write(&self.config.data_dir)?;
        tracing::info!(
            node = %self.config.node_name,
            port = self.config.amqp_port,
            dist_port = self.config.dist_port,
            "Warren node started"
        );
        let mut shutdown = self.shutdown.subscribe();
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match sigterm.as_mut() {
                    Some(s) => { s.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        tracing::info!("stopping node");
        self.close_connections();
        // Give connections a moment to say goodbye before the store closes.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Some(store) = &self.broker.store {
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        let _ = NodeRuntimeFile::remove(&self.config.data_dir);
        Ok(())
    }
}
