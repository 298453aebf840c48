//! The control side of a node: the listener on the dist port that `warrenctl` talks to
//! (cookie-authenticated, see `protocol`), and the handler that answers its commands. What
//! the commands need of the node itself is the `Lifecycle` trait.

pub mod handler;
pub mod lifecycle;
pub mod listings;
pub mod protocol;

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
