//! Answers `warrenctl`: each request is read into a typed command (`command.rs`) and run by
//! its area (`lifecycle`, `membership`, `quorum_members`, `access`, `plugins`, `listings`).
//! This file only routes.

use std::sync::Arc;

use super::command::{Command, Listing};
use super::lifecycle::Lifecycle;
use super::protocol::{CtlHandler, Request, Response, exit_code};
use super::{access, lifecycle, membership, plugins, policies, quorum_members};
use crate::broker::Broker;

pub struct NodeHandler {
    pub node: Arc<dyn Lifecycle>,
    pub broker: Arc<Broker>,
}

pub(super) fn usage(msg: impl Into<String>) -> Response {
    Response::error(exit_code::USAGE, msg)
}

impl NodeHandler {
    pub(super) fn vhost_opt(req: &Request) -> String {
        req.options
            .get("vhost")
            .cloned()
            .unwrap_or_else(|| "/".to_string())
    }

    async fn run(&self, command: Command) -> Response {
        let (node, broker) = (&self.node, &self.broker);
        let answer = match command {
            Command::Lifecycle(c) => lifecycle::run(node, broker, c).await,
            Command::Membership(c) => membership::run(node.as_ref(), broker, c).await,
            Command::Quorum(c) => quorum_members::run(node.as_ref(), broker, c).await,
            Command::Access(c) => access::run(broker, c).await,
            Command::Policy(c) => policies::run(broker, c).await,
            Command::Plugins(c) => plugins::run(&node.config().node_name, broker, c).await,
            Command::List(listing, req) => Ok(match listing {
                Listing::Queues => self.list_queues_cluster(&req).await,
                Listing::Exchanges => self.list_exchanges(&req),
                Listing::Bindings => self.list_bindings(&req),
                Listing::Connections => self.list_connections(&req),
                Listing::Channels => self.list_channels(&req),
                Listing::Consumers => self.list_consumers(&req),
            }),
        };
        answer.unwrap_or_else(|refused| refused.into_response())
    }
}

impl CtlHandler for NodeHandler {
    async fn handle(&self, req: Request) -> Response {
        match Command::parse(req) {
            Ok(command) => self.run(command).await,
            Err(refused) => refused.into_response(),
        }
    }
}
