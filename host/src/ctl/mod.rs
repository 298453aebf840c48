//! The control side of a node: the listener on the dist port that `warrenctl` talks to
//! (cookie-authenticated, see `protocol`), and its commands: read into a typed `Command`
//! (`command`), routed by `handler`, and run by area, each area a file of functions that an
//! HTTP API can call as well:
//!
//! - `lifecycle`: status, stop, stop_app / start_app, await_startup, reset (and the
//!   `Lifecycle` trait, what the commands need of the node itself);
//! - `membership`: cluster_status, join / forget / change type, the cluster's name;
//! - `quorum_members`: quorum_status, add / delete member, grow / shrink;
//! - `access`: users, vhosts, permissions;
//! - `plugins`: list, enable, disable;
//! - `policies`: policies and operator policies;
//! - `listings`: queues, exchanges, bindings, connections, channels, consumers.
//!
//! Why a command is refused is a `Refused` (`refusal`), an exit code for the CLI.

pub mod access;
pub mod command;
pub mod handler;
pub mod lifecycle;
pub mod listings;
pub mod membership;
pub mod plugins;
pub mod policies;
pub mod protocol;
pub mod quorum_members;
pub mod refusal;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::broker::Broker;
use protocol::{CtlServer, default_bind_addrs};

pub use handler::NodeHandler;
pub use lifecycle::Lifecycle;

/// Binds the control listener on the dist port: on the one address `interface` names, or on
/// every IPv4 and IPv6 interface.
pub async fn bind(
    interface: Option<IpAddr>,
    port: u16,
    cookie: &str,
    handler: NodeHandler,
) -> Result<CtlServer<NodeHandler>, protocol::CtlError> {
    let addrs = match interface {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => default_bind_addrs(port),
    };
    let name = handler.node.config().node_name.clone();
    CtlServer::bind(&addrs, &name, cookie, Arc::new(handler)).await
}

/// A handler for `node`'s commands on `broker`.
pub fn handler(node: Arc<dyn Lifecycle>, broker: Arc<Broker>) -> NodeHandler {
    NodeHandler { node, broker }
}
