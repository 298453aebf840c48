//! The control side of a node: the listener on the dist port that `warrenctl` talks to
//! (cookie-authenticated, see `protocol`), and the handler that answers its commands.

pub mod handler;
pub mod listings;
pub mod protocol;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::node::Node;
use protocol::{CtlServer, default_bind_addrs};

pub use handler::NodeHandler;

/// Binds the control listener on the dist port: on the one address `interface` names, or on
/// every IPv4 and IPv6 interface.
pub async fn bind(
    interface: Option<IpAddr>,
    port: u16,
    node: &Arc<Node>,
) -> Result<CtlServer<NodeHandler>, protocol::CtlError> {
    let addrs = match interface {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => default_bind_addrs(port),
    };
    CtlServer::bind(
        &addrs,
        &node.config.node_name,
        &node.cookie,
        Arc::new(NodeHandler { node: node.clone() }),
    )
    .await
}

pub async fn serve(server: CtlServer<NodeHandler>, node: Arc<Node>) {
    let mut shutdown = node.shutdown.subscribe();
    server
        .run(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
}
