//! Quorum queue membership: quorum_status, add_member / delete_member, and grow / shrink
//! over every quorum queue, as `rabbitmq-queues` does them.

use serde::Serialize;
use serde_json::json;

use super::command::QuorumCommand;
use super::lifecycle::Lifecycle;
use super::membership::member_name;
use super::protocol::Response;
use super::refusal::Refused;
use crate::broker::Broker;
use crate::quorum::members::MemberStatus;

/// Every member's view of the queue's group (a member that does not answer is `noproc`).
pub async fn quorum_status(
    broker: &Broker,
    vhost: &str,
    queue: &str,
) -> Result<Vec<MemberStatus>, Refused> {
    let record = broker.quorum_record(vhost, queue)?;
    Ok(broker.quorum_status(&record).await)
}

/// Adds `node` to the queue's group, or removes it (`add` false).
pub async fn change_member(
    broker: &Broker,
    vhost: &str,
    queue: &str,
    node: &str,
    add: bool,
) -> Result<(), Refused> {
    let record = broker.quorum_record(vhost, queue)?;
    if add {
        broker.quorum_add_member(&record, node).await?;
    } else {
        broker.quorum_delete_member(&record, node).await?;
    }
    Ok(())
}

/// One queue's outcome of grow or shrink.
#[derive(Debug, Clone, Serialize)]
pub struct Resized {
    pub vhost: String,
    pub name: String,
    /// The group's size after the change (unchanged when it failed).
    pub size: usize,
    /// "ok", or why not.
    pub result: String,
}

/// Adds `node` to every quorum queue it is not a member of (`even_only`: only to groups of
/// an even size), or removes it from every group it is in that has another member.
pub async fn resize(broker: &Broker, node: &str, grow: bool, even_only: bool) -> Vec<Resized> {
    let mut out = Vec::new();
    for record in broker.quorum_records() {
        let member = record.members.iter().any(|m| m == node);
        let size = record.members.len();
        let wanted = if grow {
            !member && (!even_only || size % 2 == 0)
        } else {
            member && size > 1
        };
        if !wanted {
            continue;
        }
        let result = if grow {
            broker.quorum_add_member(&record, node).await
        } else {
            broker.quorum_delete_member(&record, node).await
        };
        let (size, result) = match result {
            Ok(()) if grow => (size + 1, "ok".to_string()),
            Ok(()) => (size - 1, "ok".to_string()),
            Err(e) => (size, e.to_string()),
        };
        out.push(Resized {
            vhost: record.vhost.clone(),
            name: record.name.clone(),
            size,
            result,
        });
    }
    out
}

fn columns(names: &[&str]) -> Vec<String> {
    names.iter().map(|c| c.to_string()).collect()
}

/// Runs one command for `warrenctl`.
pub async fn run(
    node: &dyn Lifecycle,
    broker: &Broker,
    cmd: QuorumCommand,
) -> Result<Response, Refused> {
    use QuorumCommand as Q;
    Ok(match cmd {
        Q::Status { vhost, queue } => {
            let rows = quorum_status(broker, &vhost, &queue)
                .await?
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
                columns(&[
                    "Node Name",
                    "Raft State",
                    "Log Index",
                    "Commit Index",
                    "Snapshot Index",
                    "Term",
                ]),
                rows,
            )
        }
        Q::AddMember {
            vhost,
            queue,
            node: typed,
        } => {
            let target = member_name(node, broker, &typed)?;
            change_member(broker, &vhost, &queue, &target, true).await?;
            Response::message(format!(
                "Added {target} to quorum queue '{queue}' in vhost '{vhost}'"
            ))
        }
        Q::DeleteMember {
            vhost,
            queue,
            node: typed,
        } => {
            let target = member_name(node, broker, &typed)?;
            change_member(broker, &vhost, &queue, &target, false).await?;
            Response::message(format!(
                "Removed {target} from quorum queue '{queue}' in vhost '{vhost}'"
            ))
        }
        Q::Grow {
            node: typed,
            even_only,
        } => {
            let target = member_name(node, broker, &typed)?;
            table(resize(broker, &target, true, even_only).await)
        }
        Q::Shrink { node: typed } => {
            let target = member_name(node, broker, &typed)?;
            table(resize(broker, &target, false, false).await)
        }
    })
}

fn table(rows: Vec<Resized>) -> Response {
    Response::table(
        columns(&["vhost", "name", "size", "result"]),
        rows.into_iter()
            .map(|r| {
                vec![
                    json!(r.vhost),
                    json!(r.name),
                    json!(r.size),
                    json!(r.result),
                ]
            })
            .collect(),
    )
}
