//! Node lifecycle: status, stop, stop_app / start_app, await_startup and reset. What the
//! commands need of the node they run in, beyond its broker, is the `Lifecycle` trait: the
//! node implements it, and nothing in `ctl` names the node's own type, so the node may start
//! the control listener without an import circle.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::command::LifecycleCommand;
use super::protocol::Response;
use super::refusal::Refused;
use crate::broker::Broker;
use crate::config::NodeConfig;

pub trait Lifecycle: Send + Sync + 'static {
    fn config(&self) -> &NodeConfig;
    fn started_at(&self) -> Instant;
    /// Whether the AMQP listeners accept connections (`stop_app` / `start_app`).
    fn app_running(&self) -> bool;
    /// `stop_app` (which also closes every client connection) or `start_app`.
    fn set_app_running(&self, running: bool);
    /// Metadata caught up and the AMQP listeners bound.
    fn serving(&self) -> bool;
    /// Stops the whole node.
    fn stop(&self);
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub protocol: &'static str,
    pub interface: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alarms {
    pub memory: bool,
    pub disk: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub segments: usize,
    pub bytes: u64,
    pub live_messages: u64,
}

/// What `warrenctl status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub pid: u32,
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub running: bool,
    pub listeners: Vec<Listener>,
    pub data_directory: String,
    pub memory_bytes: u64,
    /// What the memory alarm compares with its limit (see resources.rs).
    pub memory_accounted_bytes: u64,
    pub memory_limit_bytes: u64,
    pub alarms: Alarms,
    pub connections: usize,
    pub queues: usize,
    pub messages: usize,
    pub message_store: Option<StoreStatus>,
    #[serde(skip)]
    memory_strategy: &'static str,
    #[serde(skip)]
    alarm_reason: Option<String>,
}

pub fn status(node: &dyn Lifecycle, broker: &Broker) -> NodeStatus {
    let alarms = broker.alarms.borrow().clone();
    let (mut queues, mut messages) = (0usize, 0usize);
    for v in broker.vhost_names() {
        if let Some(v) = broker.vhost(&v) {
            for q in v.queues.read().values() {
                queues += 1;
                let s = q.stats();
                messages += s.messages_ready + s.messages_unacknowledged;
            }
        }
    }
    let config = node.config();
    let settings = &config.settings;
    let shown = |ip: Option<std::net::IpAddr>| match ip {
        Some(ip) if ip.is_ipv6() => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => "[::]".to_string(),
    };
    NodeStatus {
        node: config.node_name.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: node.started_at().elapsed().as_secs(),
        running: node.app_running(),
        listeners: vec![
            Listener {
                protocol: "amqp",
                interface: shown(settings.listeners_tcp_default.as_ref().and_then(|l| l.ip)),
                port: config.amqp_port,
            },
            Listener {
                protocol: "clustering",
                interface: shown(settings.distribution_listener_interface),
                port: config.dist_port,
            },
        ],
        data_directory: config.data_dir.display().to_string(),
        memory_bytes: crate::resources::process_memory(),
        memory_accounted_bytes: crate::resources::memory_used(),
        memory_limit_bytes: broker.memory_limit.load(Ordering::Relaxed),
        alarms: Alarms {
            memory: alarms.memory,
            disk: alarms.disk,
        },
        connections: broker.connections.lock().len(),
        queues,
        messages,
        message_store: broker.store.as_ref().map(|s| {
            let s = s.stats();
            StoreStatus {
                segments: s.segments,
                bytes: s.bytes,
                live_messages: s.live_messages,
            }
        }),
        memory_strategy: if crate::memory::allocated().is_some() {
            "allocated"
        } else {
            "rss"
        },
        alarm_reason: alarms.any().then(|| alarms.reason().to_string()),
    }
}

impl NodeStatus {
    /// The report `rabbitmq-diagnostics status` prints, section by section.
    pub fn text(&self) -> String {
        let [amqp, dist] = [&self.listeners[0], &self.listeners[1]];
        format!(
            "Runtime\n\nOS PID: {pid}\nWarren version: {ver}\nUptime (seconds): {up}\n\nData directory\n\n{dir}\n\nListeners\n\nInterface: {amqp_if}, port: {port}, protocol: amqp, purpose: AMQP 0-9-1\nInterface: {dist_if}, port: {dist}, protocol: clustering, purpose: inter-node and CLI tool communication\n\nMemory\n\nTotal memory used: {mem} bytes\nCalculation strategy: {strategy}\nAccounted memory: {accounted} bytes\nMemory high watermark: {limit} bytes\n\nAlarms\n\n{alarms}\n\nTotals\n\nConnection count: {conns}\nQueue count: {queues}\nMessages: {messages}",
            pid = self.pid,
            ver = self.version,
            up = self.uptime_seconds,
            dir = self.data_directory,
            amqp_if = amqp.interface,
            port = amqp.port,
            dist_if = dist.interface,
            dist = dist.port,
            mem = self.memory_bytes,
            strategy = self.memory_strategy,
            accounted = self.memory_accounted_bytes,
            limit = self.memory_limit_bytes,
            alarms = self.alarm_reason.as_deref().unwrap_or("(none)"),
            conns = self.connections,
            queues = self.queues,
            messages = self.messages,
        )
    }
}

/// Started means serving AMQP: metadata caught up, listeners bound, app running. "Not yet"
/// is a temporary failure the CLI retries until its --timeout.
pub fn await_startup(node: &dyn Lifecycle) -> Result<(), Refused> {
    let serving = node.serving();
    if serving && node.app_running() {
        return Ok(());
    }
    Err(Refused::TryAgain(format!(
        "node {} is not serving clients yet{}",
        node.config().node_name,
        if serving {
            " (its application is stopped)"
        } else {
            ""
        }
    )))
}

/// Stops the node shortly after answering; the other nodes stop listing it as running
/// before this returns.
pub async fn stop(node: Arc<dyn Lifecycle>, broker: &Broker) -> u32 {
    if let Some(c) = broker.meta.cluster() {
        c.announce_app_state(false).await;
    }
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        node.stop();
    });
    std::process::id()
}

/// `stop_app` (closing every client connection) or `start_app`, told to the other nodes.
pub async fn set_app_running(node: &dyn Lifecycle, broker: &Broker, running: bool) {
    node.set_app_running(running);
    if let Some(c) = broker.meta.cluster() {
        c.announce_app_state(running).await;
    }
}

/// Returns the node to a fresh state (warrenctl reset): it leaves its cluster (telling the
/// others, unless `force`), forgets every vhost with its exchanges, queues and messages, and
/// every user, and starts over as a single disc node with the default vhost and user. The
/// application must be stopped first.
pub async fn reset(node: &dyn Lifecycle, broker: &Broker, force: bool) -> Result<(), Refused> {
    let node_name = &node.config().node_name;
    if node.app_running() {
        return Err(Refused::Internal(format!(
            "the application is still running on node {node_name}. Please stop it with warrenctl stop_app first"
        )));
    }
    let meta = &broker.meta;
    if !force && let Some(cluster) = meta.cluster() {
        let (disc, ram) = cluster.members();
        if disc.len() + ram.len() > 1 {
            cluster.remove_member(node_name).await?;
        }
    }
    meta.wipe(crate::cluster::NodeKind::Disc, true).await?;
    broker.seed_defaults().await?;
    Ok(())
}

/// Runs one command for `warrenctl`.
pub async fn run(
    node: &Arc<dyn Lifecycle>,
    broker: &Broker,
    cmd: LifecycleCommand,
) -> Result<Response, Refused> {
    Ok(match cmd {
        LifecycleCommand::Status => {
            let s = status(node.as_ref(), broker);
            let mut r = Response::data(serde_json::to_value(&s).unwrap_or_default());
            r.message = Some(s.text());
            r
        }
        LifecycleCommand::AwaitStartup => {
            await_startup(node.as_ref())?;
            Response::ok()
        }
        LifecycleCommand::Stop => {
            let pid = stop(node.clone(), broker).await;
            Response::data(serde_json::json!({ "pid": pid }))
        }
        LifecycleCommand::StopApp => {
            set_app_running(node.as_ref(), broker, false).await;
            Response::ok()
        }
        LifecycleCommand::StartApp => {
            set_app_running(node.as_ref(), broker, true).await;
            Response::ok()
        }
        LifecycleCommand::Reset { force } => {
            reset(node.as_ref(), broker, force).await?;
            Response::ok()
        }
    })
}
