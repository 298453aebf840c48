//! What this node answers its peers: every typed call of the peer protocol, by area, each
//! handed to the part of the node that owns it. The calls themselves are declared where
//! their work is done (`cluster::calls`, `quorum::calls`, `broker::calls`, `ctl::listings`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Node;
use crate::broker::calls::*;
use crate::cluster::calls::*;
use crate::cluster::{Cluster, QUORUM_WAIT};
use crate::ctl::listings::QueueRows;
use crate::peer::{Failure, Router, code};
use crate::quorum::QuorumGroup;
use crate::quorum::calls::*;

fn alive(node: &Weak<Node>) -> Result<Arc<Node>, Failure> {
    node.upgrade()
        .ok_or_else(|| Failure::internal("the node is shutting down"))
}

fn cluster(node: &Weak<Node>) -> Result<Arc<Cluster>, Failure> {
    alive(node)?
        .broker
        .meta
        .cluster()
        .ok_or_else(|| Failure::internal("the node's metadata store is restarting"))
}

fn group(node: &Weak<Node>, uid: u64) -> Result<Arc<QuorumGroup>, Failure> {
    alive(node)?.broker.quorum.get(uid).ok_or_else(|| {
        Failure::not_found(format!(
            "no member of quorum queue group {uid:016x} on this node"
        ))
    })
}

fn not_served(vhost: &str, name: &str) -> Failure {
    Failure::not_found(format!(
        "queue '{name}' in vhost '{vhost}' is not served here"
    ))
}

/// Registers `handler` for call `C` with a handle on the node.
macro_rules! on {
    ($router:expr, $node:expr, |$n:ident, $req:ident: $call:ty| $body:expr) => {{
        let weak = $node.clone();
        $router.on(move |$req: $call| {
            let $n = weak.clone();
            async move { $body }
        });
    }};
}

pub fn router(node: &Arc<Node>) -> Router {
    let node = Arc::downgrade(node);
    let mut r = Router::new();

    // The metadata cluster.
    on!(r, node, |n, req: MetaAppend| Ok(cluster(&n)?
        .raft
        .append_entries(req.0)
        .await));
    on!(r, node, |n, req: MetaVote| Ok(cluster(&n)?
        .raft
        .vote(req.0)
        .await));
    on!(r, node, |n, req: MetaSnapshot| Ok(cluster(&n)?
        .raft
        .install_snapshot(req.0)
        .await));
    on!(r, node, |n, req: MetaSubmit| Ok(cluster(&n)?
        .submit_as_leader(req.0, QUORUM_WAIT)
        .await));
    on!(r, node, |n, _req: MetaApplied| Ok(*cluster(&n)?
        .shared
        .applied
        .borrow()));
    on!(r, node, |n, req: MetaWaitApplied| {
        let c = cluster(&n)?;
        let applied =
            tokio::time::timeout(Duration::from_secs(2), c.shared.wait_applied(req.0)).await;
        // Only a real apply is a yes.
        Ok(applied.is_ok())
    });
    on!(r, node, |n, _req: ClusterInfo| Ok(cluster(&n)?.status()));
    on!(r, node, |n, req: ClusterJoin| {
        let c = cluster(&n)?;
        let joined = c.add_member(req.0).await;
        if joined.is_ok() {
            alive(&n)?.broker.meta.remember_peers();
        }
        Ok(joined)
    });
    on!(r, node, |n, req: ClusterLeave| Ok(cluster(&n)?
        .remove_member(&req.0)
        .await));
    on!(r, node, |n, req: ClusterSetKind| Ok(cluster(&n)?
        .set_member_kind(&req.0, req.1)
        .await));
    // The answer says whether this node's application runs (stop_app).
    on!(r, node, |n, _req: Ping| Ok(*alive(&n)?
        .app_running
        .borrow()));
    on!(r, node, |n, req: AppState| {
        let c = cluster(&n)?;
        c.peers.reachability.mark(&req.node, true);
        c.peers.reachability.set_app_running(&req.node, req.running);
        Ok(true)
    });

    // Quorum queues.
    on!(r, node, |n, req: QqAppend| Ok(group(&n, req.group)?
        .raft
        .append_entries(req.rpc)
        .await));
    on!(r, node, |n, req: QqVote| Ok(group(&n, req.group)?
        .raft
        .vote(req.rpc)
        .await));
    on!(r, node, |n, req: QqSnapshot| Ok(group(&n, req.group)?
        .raft
        .install_snapshot(req.rpc)
        .await));
    on!(r, node, |n, req: QqServing| Ok(alive(&n)?
        .broker
        .quorum
        .serving(req.0)));
    on!(r, node, |n, req: QqStatus| Ok(group(&n, req.0)?.status()));
    on!(r, node, |n, req: QqSetVoters| alive(&n)?
        .broker
        .quorum_set_voters(req.group, req.members)
        .await
        .map_err(|e| Failure::new(
            code::PRECONDITION_FAILED,
            e.to_string()
        )));
    on!(r, node, |n, req: QqLeader| {
        alive(&n)?
            .broker
            .quorum_leader_announced(&req.vhost, &req.name, req.group, &req.leader);
        Ok(true)
    });

    // The data plane.
    {
        // In the read loop: a peer's batches are enqueued in the order they came.
        let weak = node.clone();
        r.on_ordered(move |req: Publish| {
            let accepting = alive(&weak).map(|n| n.broker.accept_forward_batch(req.0));
            async move { Ok(accepting?.await) }
        });
    }
    on!(r, node, |n, req: ProxyOpen| alive(&n)?
        .broker
        .proxy_open(req.0)
        .map_err(Failure::from));
    on!(r, node, |n, req: ProxyGet| alive(&n)?
        .broker
        .proxy_get(&req.session, req.no_ack)
        .map_err(Failure::not_found));
    on!(r, node, |n, req: ProxySettle| {
        alive(&n)?.broker.proxy_settle(req.0);
        Ok(())
    });
    on!(r, node, |n, req: ProxyCancel| {
        alive(&n)?.broker.proxy_cancel(&req.0);
        Ok(())
    });
    on!(r, node, |n, req: ProxyClose| {
        alive(&n)?.broker.proxy_close(&req.0);
        Ok(())
    });
    {
        // In the read loop: an owner's relay batches reach the client in the order they came.
        let weak = node.clone();
        r.on_ordered(move |req: ProxyDeliver| {
            let accepting = alive(&weak).map(|n| n.broker.accept_proxied(req.0));
            async move { accepting?.await.map_err(Failure::not_found) }
        });
    }
    on!(r, node, |n, req: ProxyCancelled| {
        alive(&n)?.broker.proxied_cancelled(&req.0);
        Ok(())
    });
    on!(r, node, |n, req: QueuePurge| {
        let b = alive(&n)?.broker.clone();
        b.vhost(&req.vhost)
            .and_then(|v| v.queue(&req.name))
            .map(|q| q.purge())
            .ok_or_else(|| not_served(&req.vhost, &req.name))
    });
    on!(r, node, |n, req: QueueDelete| Ok(alive(&n)?
        .broker
        .delete_local_queue(&req.0)
        .await));
    on!(r, node, |n, req: QueueCounts| {
        let b = alive(&n)?.broker.clone();
        b.vhost(&req.vhost)
            .and_then(|v| v.queue(&req.name))
            .map(|q| {
                let s = q.stats();
                (s.messages_ready as u32, s.consumers as u32)
            })
            .ok_or_else(|| not_served(&req.vhost, &req.name))
    });

    // Listings across the cluster.
    on!(r, node, |n, req: QueueRows| {
        let node = alive(&n)?;
        let handler = crate::ctl::handler(node.clone(), node.broker.clone());
        Ok(handler.queue_rows(req))
    });
    r
}
