//! Answers `warrenctl` commands from the node's state: user, vhost and permission changes
//! (through the metadata store), node lifecycle, cluster and quorum membership, status and
//! stop. The `list_*` listings are in `listings.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::lifecycle::Lifecycle;
use super::listings::{Row, table};
use super::protocol::{CtlHandler, Request, Response, exit_code};
use crate::broker::Broker;
use crate::meta::*;

pub struct NodeHandler {
    pub node: Arc<dyn Lifecycle>,
    pub broker: Arc<Broker>,
}

/// Where to reach another node by name: its node.json when it runs on this
/// machine, else its host and the conventional dist port.
fn peer_of(name: &str) -> Result<crate::cluster::ClusterNode, String> {
    let target = crate::config::ctl_target(Some(name)).map_err(|e| e.to_string())?;
    Ok(crate::cluster::ClusterNode {
        name: target.node.clone(),
        addr: target.addr(),
    })
}

fn member_failure(e: crate::quorum::members::MemberError) -> Response {
    use crate::quorum::members::MemberError;
    let code = match e {
        MemberError::Invalid(_) => exit_code::DATA_ERR,
        MemberError::Unavailable(_) => exit_code::TEMP_FAIL,
    };
    Response::error(code, e.to_string())
}

fn meta_failure(e: MetaError) -> Response {
    let code = match e {
        MetaError::NotFound(_)
        | MetaError::AlreadyExists(_)
        | MetaError::Precondition(_)
        | MetaError::Locked(_) => exit_code::DATA_ERR,
        MetaError::Unavailable(_) => exit_code::TEMP_FAIL,
        MetaError::Storage(_) => exit_code::SOFTWARE,
    };
    Response::error(code, e.to_string())
}

pub(super) fn usage(msg: impl Into<String>) -> Response {
    Response::error(exit_code::USAGE, msg)
}

// Responses are built once per CLI request; boxing the error side buys nothing.
#[allow(clippy::result_large_err)]
impl NodeHandler {
    pub(super) fn vhost_opt(req: &Request) -> String {
        req.options
            .get("vhost")
            .cloned()
            .unwrap_or_else(|| "/".to_string())
    }

    /// Returns the node to a fresh state (warrenctl reset): it leaves its
    /// cluster (telling the others, unless `force`), forgets every vhost with
    /// its exchanges, queues and messages, and every user, and starts over as
    /// a single disc node with the default vhost and user.
    async fn reset(&self, force: bool) -> Result<(), MetaError> {
        let meta = &self.broker.meta;
        if !force && let Some(cluster) = meta.cluster() {
            let (disc, ram) = cluster.members();
            if disc.len() + ram.len() > 1 {
                cluster.remove_member(&self.node.config().node_name).await?;
            }
        }
        meta.wipe(crate::cluster::NodeKind::Disc, true).await?;
        self.broker.seed_defaults().await
    }

    async fn submit(&self, cmd: MetaCommand) -> Result<(), Response> {
        self.broker
            .meta
            .submit(cmd)
            .await
            .map(|_| ())
            .map_err(meta_failure)
    }

    fn status(&self) -> Response {
        let node = &self.node;
        let broker = &self.broker;
        let alarms = broker.alarms.borrow().clone();
        let store = broker.store.as_ref().map(|s| s.stats());
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
        let settings = &node.config().settings;
        let shown = |ip: Option<std::net::IpAddr>| match ip {
            Some(ip) if ip.is_ipv6() => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => "[::]".to_string(),
        };
        let amqp_if = shown(settings.listeners_tcp_default.as_ref().and_then(|l| l.ip));
        let dist_if = shown(settings.distribution_listener_interface);
        let data = json!({
            "node": node.config().node_name,
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": node.started_at().elapsed().as_secs(),
            "running": node.app_running(),
            "listeners": [
                {"protocol": "amqp", "interface": amqp_if, "port": node.config().amqp_port},
                {"protocol": "clustering", "interface": dist_if, "port": node.config().dist_port},
            ],
            "data_directory": node.config().data_dir.display().to_string(),
            "memory_bytes": crate::resources::process_memory(),
            // What the memory alarm compares with its limit (see resources.rs).
            "memory_accounted_bytes": crate::resources::memory_used(),
            "memory_limit_bytes": broker.memory_limit.load(Ordering::Relaxed),
            "alarms": {"memory": alarms.memory, "disk": alarms.disk},
            "connections": broker.connections.lock().len(),
            "queues": queues,
            "messages": messages,
            "message_store": store.map(|s| json!({"segments": s.segments, "bytes": s.bytes, "live_messages": s.live_messages})),
        });
        let text = format!(
            "Runtime\n\nOS PID: {pid}\nWarren version: {ver}\nUptime (seconds): {up}\n\nData directory\n\n{dir}\n\nListeners\n\nInterface: {amqp_if}, port: {port}, protocol: amqp, purpose: AMQP 0-9-1\nInterface: {dist_if}, port: {dist}, protocol: clustering, purpose: inter-node and CLI tool communication\n\nMemory\n\nTotal memory used: {mem} bytes\nCalculation strategy: {strategy}\nAccounted memory: {accounted} bytes\nMemory high watermark: {limit} bytes\n\nAlarms\n\n{alarms}\n\nTotals\n\nConnection count: {conns}\nQueue count: {queues}\nMessages: {messages}",
            pid = std::process::id(),
            ver = env!("CARGO_PKG_VERSION"),
            up = node.started_at().elapsed().as_secs(),
            dir = node.config().data_dir.display(),
            port = node.config().amqp_port,
            dist = node.config().dist_port,
            mem = crate::resources::process_memory(),
            strategy = if crate::memory::allocated().is_some() {
                "allocated"
            } else {
                "rss"
            },
            accounted = crate::resources::memory_used(),
            limit = broker.memory_limit.load(Ordering::Relaxed),
            alarms = if alarms.any() {
                alarms.reason().to_string()
            } else {
                "(none)".to_string()
            },
            conns = broker.connections.lock().len(),
        );
        let mut r = Response::data(data);
        r.message = Some(text);
        r
    }

    fn cluster_status(&self) -> Response {
        let node = &self.node.config().node_name;
        let running = self.node.app_running();
        let alarms = self.broker.alarms.borrow().clone();
        let status = match self.broker.meta.cluster() {
            Some(c) => c.status(),
            None => crate::cluster::Status {
                disc: vec![node.clone()],
                ram: vec![],
                running: vec![],
                leader: None,
            },
        };
        let mut running_nodes = status.running.clone();
        if !running {
            running_nodes.retain(|n| n != node);
        }
        let cluster_name = self.broker.cluster_name();
        let data = json!({
            "cluster_name": cluster_name,
            "disk_nodes": status.disc,
            "ram_nodes": status.ram,
            "running_nodes": running_nodes,
            "leader": status.leader,
            // No "partitions" until partitions are detected (issue 17): an empty map would
            // claim that none exist.
            "alarms": if alarms.any() { vec![format!("{} on node {node}", alarms.reason())] } else { vec![] },
        });
        let text = format!(
            "Basics\n\nCluster name: {cluster_name}\n\nDisk Nodes\n\n{disc}\n\nRAM Nodes\n\n{ram}\n\nRunning Nodes\n\n{running}\n\nAlarms\n\n{alarms}",
            disc = status.disc.join("\n"),
            ram = status.ram.join("\n"),
            running = running_nodes.join("\n"),
            alarms = if alarms.any() {
                alarms.reason()
            } else {
                "(none)"
            },
        );
        let mut r = Response::data(data);
        r.message = Some(text);
        r
    }

    /// Cluster membership changes need the app stopped, as in RabbitMQ.
    fn app_must_be_stopped(&self) -> Result<(), Response> {
        if self.node.app_running() {
            return Err(Response::error(
                exit_code::SOFTWARE,
                format!(
                    "Mnesia is still running on node {}. Please stop the node with warrenctl stop_app first.",
                    self.node.config().node_name
                ),
            ));
        }
        Ok(())
    }

    fn cluster(&self) -> Result<Arc<crate::cluster::Cluster>, Response> {
        self.broker.meta.cluster().ok_or_else(|| {
            Response::error(
                exit_code::TEMP_FAIL,
                "the node's metadata store is restarting",
            )
        })
    }

    /// A node name argument, completed as everywhere (`name` → `name@host`), and named as
    /// the cluster member it designates calls itself (`x@localhost` is `x@<hostname>` here).
    fn node_arg(&self, req: &Request, i: usize) -> Result<String, Response> {
        let raw = Self::arg(req, i, "node")?;
        let name = crate::config::normalize_node_name(raw, &crate::config::short_hostname())
            .map_err(|e| usage(e.to_string()))?;
        Ok(self.member_name(name))
    }

    /// The name a cluster member gives itself for `name` (which may use another local host
    /// name for it); `name` unchanged when no member matches.
    fn member_name(&self, name: String) -> String {
        if crate::config::same_node(&name, &self.node.config().node_name) {
            return self.node.config().node_name.clone();
        }
        let Some(cluster) = self.broker.meta.cluster() else {
            return name;
        };
        let (disc, ram) = cluster.members();
        disc.into_iter()
            .chain(ram)
            .map(|n| n.name)
            .find(|m| crate::config::same_node(m, &name))
            .unwrap_or(name)
    }

    fn arg<'a>(req: &'a Request, i: usize, what: &str) -> Result<&'a str, Response> {
        req.args
            .get(i)
            .map(|s| s.as_str())
            .ok_or_else(|| usage(format!("missing argument: {what}")))
    }

    async fn dispatch(&self, req: Request) -> Result<Response, Response> {
        let broker = &self.broker;
        Ok(match req.command.as_str() {
            "status" => self.status(),
            "plugins_list" => {
                let plugins = &self.broker.plugins;
                Response::data(json!({
                    "node": self.node.config().node_name,
                    "plugins": plugins.list(),
                }))
            }
            "plugins_enable" | "plugins_disable" => {
                let plugins = &self.broker.plugins;
                let names = req.args.clone();
                if names.is_empty() {
                    return Err(usage("at least one plugin name is required"));
                }
                let changed = if req.command == "plugins_enable" {
                    plugins.enable(&names).await
                } else {
                    plugins.disable(&names).await
                };
                match changed {
                    Ok(changed) => Response::data(json!({
                        "node": self.node.config().node_name,
                        "changed": changed,
                        "plugins": plugins.list(),
                    })),
                    Err(e) => return Err(Response::error(e.exit_code(), e.to_string())),
                }
            }
            // Started means serving AMQP: metadata caught up, listeners bound, app running.
            // "Not yet" is a temporary failure the CLI retries until its --timeout.
            "await_startup" => {
                let serving = self.node.serving();
                let running = self.node.app_running();
                if !serving || !running {
                    return Err(Response::error(
                        exit_code::TEMP_FAIL,
                        format!(
                            "node {} is not serving clients yet{}",
                            self.node.config().node_name,
                            if serving {
                                " (its application is stopped)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                Response::ok()
            }
            "stop" => {
                // Other nodes stop listing this one as running before the command returns.
                if let Some(c) = broker.meta.cluster() {
                    c.announce_app_state(false).await;
                }
                let node = self.node.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    node.stop();
                });
                Response::data(json!({"pid": std::process::id()}))
            }
            "stop_app" => {
                self.node.set_app_running(false);
                if let Some(c) = broker.meta.cluster() {
                    c.announce_app_state(false).await;
                }
                Response::ok()
            }
            "start_app" => {
                self.node.set_app_running(true);
                if let Some(c) = broker.meta.cluster() {
                    c.announce_app_state(true).await;
                }
                Response::ok()
            }
            "cluster_status" => self.cluster_status(),
            "reset" | "force_reset" => {
                let node_name = &self.node.config().node_name;
                if self.node.app_running() {
                    return Err(Response::error(
                        exit_code::SOFTWARE,
                        format!(
                            "the application is still running on node {node_name}. Please stop it with warrenctl stop_app first"
                        ),
                    ));
                }
                self.reset(req.command == "force_reset")
                    .await
                    .map_err(meta_failure)?;
                Response::ok()
            }
            "join_cluster" => {
                let node_name = &self.node.config().node_name;
                self.app_must_be_stopped()?;
                let target = self.node_arg(&req, 0)?;
                if &target == node_name {
                    return Err(Response::error(
                        exit_code::DATA_ERR,
                        format!("cannot cluster node {node_name} with itself"),
                    ));
                }
                let peer =
                    peer_of(&target).map_err(|e| Response::error(exit_code::UNAVAILABLE, e))?;
                let kind = match req.options.get("node_type").map(String::as_str) {
                    Some("ram") => crate::cluster::NodeKind::Ram,
                    _ => crate::cluster::NodeKind::Disc,
                };
                broker.meta.join(peer, kind).await.map_err(meta_failure)?;
                // Joined with the application stopped: not running until start_app.
                if let Some(c) = broker.meta.cluster() {
                    c.announce_app_state(false).await;
                }
                Response::ok()
            }
            "forget_cluster_node" => {
                let target = self.node_arg(&req, 0)?;
                let node_name = &self.node.config().node_name;
                if &target == node_name {
                    return Err(Response::error(
                        exit_code::DATA_ERR,
                        format!(
                            "Cannot forget node {node_name} from itself: use warrenctl reset on it instead"
                        ),
                    ));
                }
                let cluster = self.cluster()?;
                if cluster.peers.reachability.is_up(&target) {
                    return Err(Response::error(
                        exit_code::DATA_ERR,
                        format!(
                            "Node {target} is running: stop it (warrenctl -n {target} stop_app) before forgetting it"
                        ),
                    ));
                }
                // Its quorum queue copies go with it, as in RabbitMQ (the
                // remaining members carry on).
                for record in broker.quorum_records() {
                    if record.members.contains(&target)
                        && record.members.len() > 1
                        && let Err(e) = broker.quorum_delete_member(&record, &target).await
                    {
                        tracing::warn!(queue = %record.name, node = %target, error = %e, "could not drop the forgotten node from a quorum queue");
                    }
                }
                cluster.remove_member(&target).await.map_err(meta_failure)?;
                Response::ok()
            }
            "change_cluster_node_type" => {
                let t = Self::arg(&req, 0, "disc|ram")?;
                let kind = match t {
                    "ram" => crate::cluster::NodeKind::Ram,
                    "disc" | "disk" => crate::cluster::NodeKind::Disc,
                    other => {
                        return Err(usage(format!(
                            "unknown node type '{other}': use disc or ram"
                        )));
                    }
                };
                let node_name = &self.node.config().node_name;
                self.app_must_be_stopped()?;
                let cluster = self.cluster()?;
                let (disc, ram) = cluster.members();
                if disc.len() + ram.len() <= 1 {
                    return Err(Response::error(
                        exit_code::DATA_ERR,
                        format!(
                            "Non-clustered node {node_name} cannot change its type: it is its cluster's only disc node"
                        ),
                    ));
                }
                if cluster.kind_of(node_name) == Some(kind) {
                    return Ok(Response::message(format!(
                        "Node {node_name} is already a {} node",
                        kind.as_str()
                    )));
                }
                cluster
                    .set_member_kind(node_name, kind)
                    .await
                    .map_err(meta_failure)?;
                // The node's storage follows its kind: rejoin through a peer with the new kind.
                let peer = disc
                    .into_iter()
                    .chain(ram)
                    .find(|n| &n.name != node_name && cluster.is_up(n))
                    .ok_or_else(|| {
                        Response::error(exit_code::TEMP_FAIL, "no other cluster node is reachable")
                    })?;
                cluster
                    .remove_member(node_name)
                    .await
                    .map_err(meta_failure)?;
                broker.meta.join(peer, kind).await.map_err(meta_failure)?;
                Response::message(format!("Turned {node_name} into a {} node", kind.as_str()))
            }
            "quorum_status" => {
                let name = Self::arg(&req, 0, "queue")?;
                let record = broker
                    .quorum_record(&Self::vhost_opt(&req), name)
                    .map_err(member_failure)?;
                let rows = broker
                    .quorum_status(&record)
                    .await
                    .into_iter()
                    .map(|m| {
                        vec![
                            json!(m.node),
                            json!(m.raft_state),
                            json!(m.log_index),
                            json!(m.commit_index),
                            json!(m.snapshot_index),
                            json!(m.term),
                        ]
                    })
                    .collect();
                Response::table(
                    [
                        "Node Name",
                        "Raft State",
                        "Log Index",
                        "Commit Index",
                        "Snapshot Index",
                        "Term",
                    ]
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                    rows,
                )
            }
            "add_member" | "delete_member" => {
                let name = Self::arg(&req, 0, "queue")?;
                let node = self.node_arg(&req, 1)?;
                let vhost = Self::vhost_opt(&req);
                let record = broker.quorum_record(&vhost, name).map_err(member_failure)?;
                if req.command == "add_member" {
                    broker.quorum_add_member(&record, &node).await
                } else {
                    broker.quorum_delete_member(&record, &node).await
                }
                .map_err(member_failure)?;
                Response::message(format!(
                    "{} {node} {} quorum queue '{name}' in vhost '{vhost}'",
                    if req.command == "add_member" {
                        "Added"
                    } else {
                        "Removed"
                    },
                    if req.command == "add_member" {
                        "to"
                    } else {
                        "from"
                    },
                ))
            }
            "grow" | "shrink" => {
                let node = self.node_arg(&req, 0)?;
                let grow = req.command == "grow";
                let even_only = match (grow, req.args.get(1).map(String::as_str)) {
                    (false, _) | (true, Some("all")) => false,
                    (true, Some("even")) => true,
                    (true, _) => return Err(usage("grow takes a node and 'all' or 'even'")),
                };
                let mut rows = Vec::new();
                for record in broker.quorum_records() {
                    let member = record.members.contains(&node);
                    let wanted = if grow {
                        !member && (!even_only || record.members.len() % 2 == 0)
                    } else {
                        member && record.members.len() > 1
                    };
                    if !wanted {
                        continue;
                    }
                    let result = if grow {
                        broker.quorum_add_member(&record, &node).await
                    } else {
                        broker.quorum_delete_member(&record, &node).await
                    };
                    let size = record.members.len() as i64 + if grow { 1 } else { -1 };
                    let (size, outcome) = match result {
                        Ok(()) => (size, "ok".to_string()),
                        Err(e) => (record.members.len() as i64, e.to_string()),
                    };
                    rows.push(vec![
                        json!(record.vhost),
                        json!(record.name),
                        json!(size),
                        json!(outcome),
                    ]);
                }
                Response::table(
                    ["vhost", "name", "size", "result"]
                        .iter()
                        .map(|c| c.to_string())
                        .collect(),
                    rows,
                )
            }
            "list_queues" => self.list_queues_cluster(&req).await,
            "list_exchanges" => self.list_exchanges(&req),
            "list_bindings" => self.list_bindings(&req),
            "list_connections" => self.list_connections(&req),
            "list_channels" => self.list_channels(&req),
            "list_consumers" => self.list_consumers(&req),
            "list_users" => {
                let state = broker.meta.read();
                let rows = state
                    .users
                    .values()
                    .map(|u| vec![json!(u.name), json!(format!("[{}]", u.tags.join(", ")))])
                    .collect();
                Response::table(vec!["user".into(), "tags".into()], rows)
            }
            "list_vhosts" => {
                let state = broker.meta.read();
                let fields = if req.args.is_empty() {
                    vec!["name".to_string()]
                } else {
                    req.args.clone()
                };
                let vhosts: Vec<VhostRecord> = state.vhosts.values().cloned().collect();
                drop(state);
                let rows = vhosts.into_iter().map(|v| {
                    Box::new(move |f: &str| match f {
                        "name" => json!(v.name),
                        "description" => json!(v.description),
                        // Warren has no firehose tracer (`trace_on` is an unknown verb, exit
                        // 64), so no vhost is ever traced: false is measured, not assumed.
                        "tracing" => json!(false),
                        _ => Value::Null,
                    }) as Row
                });
                table(&fields, &["name", "description", "tracing"], rows)
            }
            "list_permissions" => {
                let vhost = Self::vhost_opt(&req);
                let state = broker.meta.read();
                if !state.vhosts.contains_key(&vhost) {
                    return Err(Response::error(
                        exit_code::DATA_ERR,
                        format!("Virtual host '{vhost}' does not exist"),
                    ));
                }
                let rows = state
                    .permissions
                    .values()
                    .filter(|p| p.vhost == vhost)
                    .map(|p| {
                        vec![
                            json!(p.user),
                            json!(p.configure),
                            json!(p.write),
                            json!(p.read),
                        ]
                    })
                    .collect();
                Response::table(
                    vec![
                        "user".into(),
                        "configure".into(),
                        "write".into(),
                        "read".into(),
                    ],
                    rows,
                )
            }
            "list_user_permissions" => {
                let user = Self::arg(&req, 0, "user")?;
                let state = broker.meta.read();
                if !state.users.contains_key(user) {
                    return Err(Response::error(
                        exit_code::DATA_ERR,
                        format!("User \"{user}\" does not exist"),
                    ));
                }
                let rows = state
                    .permissions
                    .values()
                    .filter(|p| p.user == user)
                    .map(|p| {
                        vec![
                            json!(p.vhost),
                            json!(p.configure),
                            json!(p.write),
                            json!(p.read),
                        ]
                    })
                    .collect();
                Response::table(
                    vec![
                        "vhost".into(),
                        "configure".into(),
                        "write".into(),
                        "read".into(),
                    ],
                    rows,
                )
            }
            "add_user" => {
                let user = Self::arg(&req, 0, "user")?;
                let pass = Self::arg(&req, 1, "password")?;
                self.submit(MetaCommand::AddUser(UserRecord {
                    name: user.to_string(),
                    password_hash: crate::auth::hash_password(pass),
                    hashing_algorithm: PASSWORD_HASHING_SHA256.into(),
                    tags: Vec::new(),
                }))
                .await?;
                Response::ok()
            }
            "delete_user" => {
                let user = Self::arg(&req, 0, "user")?;
                self.submit(MetaCommand::DeleteUser {
                    name: user.to_string(),
                })
                .await?;
                Response::ok()
            }
            "change_password" => {
                let user = Self::arg(&req, 0, "user")?;
                let pass = Self::arg(&req, 1, "password")?;
                self.submit(MetaCommand::ChangePassword {
                    name: user.to_string(),
                    password_hash: crate::auth::hash_password(pass),
                })
                .await?;
                Response::ok()
            }
            "set_user_tags" => {
                let user = Self::arg(&req, 0, "user")?;
                self.submit(MetaCommand::SetUserTags {
                    name: user.to_string(),
                    tags: req.args[1..].to_vec(),
                })
                .await?;
                Response::ok()
            }
            "authenticate_user" => {
                let user = Self::arg(&req, 0, "user")?;
                let pass = Self::arg(&req, 1, "password")?;
                let plain = format!("\0{user}\0{pass}");
                match broker.login(
                    "PLAIN",
                    plain.as_bytes(),
                    std::net::Ipv4Addr::LOCALHOST.into(),
                ) {
                    Ok(_) => Response::message("Success"),
                    Err(_) => {
                        return Err(Response::error(
                            exit_code::DATA_ERR,
                            format!("Error: failed to authenticate user \"{user}\""),
                        ));
                    }
                }
            }
            "set_cluster_name" => {
                let name = Self::arg(&req, 0, "name")?;
                self.submit(MetaCommand::SetClusterName {
                    name: name.to_string(),
                })
                .await?;
                Response::ok()
            }
            "add_vhost" => {
                let vhost = Self::arg(&req, 0, "vhost")?;
                self.submit(MetaCommand::AddVhost(VhostRecord {
                    name: vhost.to_string(),
                    description: String::new(),
                }))
                .await?;
                Response::ok()
            }
            "delete_vhost" => {
                let vhost = Self::arg(&req, 0, "vhost")?;
                self.submit(MetaCommand::DeleteVhost {
                    name: vhost.to_string(),
                })
                .await?;
                Response::ok()
            }
            "set_permissions" => {
                let user = Self::arg(&req, 0, "user")?;
                let configure = Self::arg(&req, 1, "conf")?;
                let write = Self::arg(&req, 2, "write")?;
                let read = Self::arg(&req, 3, "read")?;
                for (what, re) in [("configure", configure), ("write", write), ("read", read)] {
                    if regex::Regex::new(re).is_err() {
                        return Err(Response::error(
                            exit_code::DATA_ERR,
                            format!("invalid {what} regex: {re}"),
                        ));
                    }
                }
                self.submit(MetaCommand::SetPermissions(PermissionRecord {
                    user: user.to_string(),
                    vhost: Self::vhost_opt(&req),
                    configure: configure.to_string(),
                    write: write.to_string(),
                    read: read.to_string(),
                }))
                .await?;
                Response::ok()
            }
            "clear_permissions" => {
                let user = Self::arg(&req, 0, "user")?;
                self.submit(MetaCommand::ClearPermissions {
                    user: user.to_string(),
                    vhost: Self::vhost_opt(&req),
                })
                .await?;
                Response::ok()
            }
            other => return Err(usage(format!("unknown command '{other}'"))),
        })
    }
}

impl CtlHandler for NodeHandler {
    async fn handle(&self, req: Request) -> Response {
        match self.dispatch(req).await {
            Ok(r) | Err(r) => r,
        }
    }
}
