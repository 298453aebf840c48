//! Plugins on this node: list, enable and disable (`warren-plugins`). Plugins are per node:
//! nothing here touches another node.

use serde_json::json;

use super::command::PluginsCommand;
use super::protocol::Response;
use super::refusal::Refused;
use crate::broker::Broker;
use crate::plugins::PluginStatus;

pub fn list(broker: &Broker) -> Vec<PluginStatus> {
    broker.plugins.list()
}

/// Enables (`enable`) or disables plugins by name; answers the names whose state changed.
pub async fn change(
    broker: &Broker,
    names: &[String],
    enable: bool,
) -> Result<Vec<String>, Refused> {
    let plugins = &broker.plugins;
    Ok(if enable {
        plugins.enable(names).await?
    } else {
        plugins.disable(names).await?
    })
}

/// Runs one command for `warren-plugins`.
pub async fn run(
    node_name: &str,
    broker: &Broker,
    cmd: PluginsCommand,
) -> Result<Response, Refused> {
    let (names, enable) = match cmd {
        PluginsCommand::List => {
            return Ok(Response::data(json!({
                "node": node_name,
                "plugins": list(broker),
            })));
        }
        PluginsCommand::Enable(names) => (names, true),
        PluginsCommand::Disable(names) => (names, false),
    };
    let changed = change(broker, &names, enable).await?;
    Ok(Response::data(json!({
        "node": node_name,
        "changed": changed,
        "plugins": list(broker),
    })))
}
