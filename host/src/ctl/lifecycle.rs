//! What the control commands need of the node they run in, beyond its broker: its settings
//! and its lifecycle. The node implements it; nothing in `ctl` names the node's own type, so
//! the node may start the control listener without an import circle.

use std::time::Instant;

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
