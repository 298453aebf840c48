//! Cluster membership: cluster_status, join_cluster, forget_cluster_node,
//! change_cluster_node_type and set_cluster_name, with RabbitMQ's rules (membership changes
//! need the application stopped; a node cannot join or forget itself).

use std::sync::Arc;

use serde::Serialize;

use super::command::MembershipCommand;
use super::lifecycle::Lifecycle;
use super::protocol::Response;
use super::refusal::Refused;
use crate::broker::Broker;
use crate::cluster::{Cluster, ClusterNode, NodeKind};
use crate::meta::MetaCommand;

/// What `cluster_status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub disk_nodes: Vec<String>,
    pub ram_nodes: Vec<String>,
    pub running_nodes: Vec<String>,
    pub leader: Option<String>,
    // No "partitions" until partitions are detected (issue 17): an empty map would claim
    // that none exist.
    pub alarms: Vec<String>,
    #[serde(skip)]
    alarm_reason: Option<String>,
}

pub fn cluster_status(node: &dyn Lifecycle, broker: &Broker) -> ClusterStatus {
    let me = &node.config().node_name;
    let alarms = broker.alarms.borrow().clone();
    let status = match broker.meta.cluster() {
        Some(c) => c.status(),
        None => crate::cluster::Status {
            disc: vec![me.clone()],
            ram: vec![],
            running: vec![],
            leader: None,
        },
    };
    let mut running = status.running;
    if !node.app_running() {
        running.retain(|n| n != me);
    }
    ClusterStatus {
        cluster_name: broker.cluster_name(),
        disk_nodes: status.disc,
        ram_nodes: status.ram,
        running_nodes: running,
        leader: status.leader,
        alarms: if alarms.any() {
            vec![format!("{} on node {me}", alarms.reason())]
        } else {
            vec![]
        },
        alarm_reason: alarms.any().then(|| alarms.reason().to_string()),
    }
}

impl ClusterStatus {
    pub fn text(&self) -> String {
        format!(
            "Basics\n\nCluster name: {}\n\nDisk Nodes\n\n{}\n\nRAM Nodes\n\n{}\n\nRunning Nodes\n\n{}\n\nAlarms\n\n{}",
            self.cluster_name,
            self.disk_nodes.join("\n"),
            self.ram_nodes.join("\n"),
            self.running_nodes.join("\n"),
            self.alarm_reason.as_deref().unwrap_or("(none)"),
        )
    }
}

/// A node name as typed, completed as everywhere (`name` → `name@host`), and named as the
/// cluster member it designates calls itself (`x@localhost` is `x@<hostname>` here).
pub fn member_name(node: &dyn Lifecycle, broker: &Broker, typed: &str) -> Result<String, Refused> {
    let name = crate::config::normalize_node_name(typed, &crate::config::short_hostname())
        .map_err(|e| Refused::Usage(e.to_string()))?;
    if crate::config::same_node(&name, &node.config().node_name) {
        return Ok(node.config().node_name.clone());
    }
    let Some(cluster) = broker.meta.cluster() else {
        return Ok(name);
    };
    let (disc, ram) = cluster.members();
    Ok(disc
        .into_iter()
        .chain(ram)
        .map(|n| n.name)
        .find(|m| crate::config::same_node(m, &name))
        .unwrap_or(name))
}

/// Where to reach another node by name: its node.json when it runs on this machine, else
/// its host and the conventional dist port.
fn peer_of(name: &str) -> Result<ClusterNode, Refused> {
    let target =
        crate::config::ctl_target(Some(name)).map_err(|e| Refused::Unavailable(e.to_string()))?;
    Ok(ClusterNode {
        name: target.node.clone(),
        addr: target.addr(),
    })
}

/// Cluster membership changes need the app stopped, as in RabbitMQ.
fn app_must_be_stopped(node: &dyn Lifecycle) -> Result<(), Refused> {
    if node.app_running() {
        return Err(Refused::Internal(format!(
            "Mnesia is still running on node {}. Please stop the node with warrenctl stop_app first.",
            node.config().node_name
        )));
    }
    Ok(())
}

fn cluster(broker: &Broker) -> Result<Arc<Cluster>, Refused> {
    broker
        .meta
        .cluster()
        .ok_or_else(|| Refused::TryAgain("the node's metadata store is restarting".into()))
}

/// Joins the cluster `target` belongs to, as a `kind` node, with the application stopped
/// (it stays stopped until start_app).
pub async fn join_cluster(
    node: &dyn Lifecycle,
    broker: &Broker,
    target: &str,
    kind: NodeKind,
) -> Result<(), Refused> {
    let me = &node.config().node_name;
    app_must_be_stopped(node)?;
    let target = member_name(node, broker, target)?;
    if &target == me {
        return Err(Refused::Invalid(format!(
            "cannot cluster node {me} with itself"
        )));
    }
    let peer = peer_of(&target)?;
    broker.meta.join(peer, kind).await?;
    if let Some(c) = broker.meta.cluster() {
        c.announce_app_state(false).await;
    }
    Ok(())
}

/// Removes a stopped node from the cluster, with its quorum queue copies (the remaining
/// members carry on), as in RabbitMQ.
pub async fn forget_cluster_node(
    node: &dyn Lifecycle,
    broker: &Broker,
    target: &str,
) -> Result<(), Refused> {
    let target = member_name(node, broker, target)?;
    let me = &node.config().node_name;
    if &target == me {
        return Err(Refused::Invalid(format!(
            "Cannot forget node {me} from itself: use warrenctl reset on it instead"
        )));
    }
    let cluster = cluster(broker)?;
    if cluster.peers.reachability.is_up(&target) {
        return Err(Refused::Invalid(format!(
            "Node {target} is running: stop it (warrenctl -n {target} stop_app) before forgetting it"
        )));
    }
    for record in broker.quorum_records() {
        if record.members.contains(&target)
            && record.members.len() > 1
            && let Err(e) = broker.quorum_delete_member(&record, &target).await
        {
            tracing::warn!(queue = %record.name, node = %target, error = %e, "could not drop the forgotten node from a quorum queue");
        }
    }
    cluster.remove_member(&target).await?;
    Ok(())
}

/// Whether change_cluster_node_type changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindChange {
    Changed,
    AlreadySo,
}

/// Turns this (stopped, clustered) node into a `kind` node: its storage follows its kind, so
/// it leaves and rejoins through a reachable peer.
pub async fn change_cluster_node_type(
    node: &dyn Lifecycle,
    broker: &Broker,
    kind: NodeKind,
) -> Result<KindChange, Refused> {
    let me = &node.config().node_name;
    app_must_be_stopped(node)?;
    let cluster = cluster(broker)?;
    let (disc, ram) = cluster.members();
    if disc.len() + ram.len() <= 1 {
        return Err(Refused::Invalid(format!(
            "Non-clustered node {me} cannot change its type: it is its cluster's only disc node"
        )));
    }
    if cluster.kind_of(me) == Some(kind) {
        return Ok(KindChange::AlreadySo);
    }
    cluster.set_member_kind(me, kind).await?;
    let peer = disc
        .into_iter()
        .chain(ram)
        .find(|n| &n.name != me && cluster.is_up(n))
        .ok_or_else(|| Refused::TryAgain("no other cluster node is reachable".into()))?;
    cluster.remove_member(me).await?;
    broker.meta.join(peer, kind).await?;
    Ok(KindChange::Changed)
}

/// Names the cluster (replicated: every node reports the same name).
pub async fn set_cluster_name(broker: &Broker, name: &str) -> Result<(), Refused> {
    broker
        .meta
        .submit(MetaCommand::SetClusterName {
            name: name.to_string(),
        })
        .await?;
    Ok(())
}

/// Runs one command for `warrenctl`.
pub async fn run(
    node: &dyn Lifecycle,
    broker: &Broker,
    cmd: MembershipCommand,
) -> Result<Response, Refused> {
    use MembershipCommand as M;
    Ok(match cmd {
        M::ClusterStatus => {
            let s = cluster_status(node, broker);
            let mut r = Response::data(serde_json::to_value(&s).unwrap_or_default());
            r.message = Some(s.text());
            r
        }
        M::JoinCluster { node: target, kind } => {
            join_cluster(node, broker, &target, kind).await?;
            Response::ok()
        }
        M::ForgetClusterNode { node: target } => {
            forget_cluster_node(node, broker, &target).await?;
            Response::ok()
        }
        M::ChangeClusterNodeType { kind } => {
            let me = &node.config().node_name;
            match change_cluster_node_type(node, broker, kind).await? {
                KindChange::AlreadySo => {
                    Response::message(format!("Node {me} is already a {} node", kind.as_str()))
                }
                KindChange::Changed => {
                    Response::message(format!("Turned {me} into a {} node", kind.as_str()))
                }
            }
        }
        M::SetClusterName { name } => {
            set_cluster_name(broker, &name).await?;
            Response::ok()
        }
    })
}
