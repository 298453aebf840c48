//! Policies and operator policies: `set_policy`, `clear_policy`, `list_policies` and their
//! `_operator_` twins. A definition is validated here with RabbitMQ's wording before it
//! becomes one metadata change; what a policy does to queues is `broker::policies`.

use serde_json::{Value, json};

use super::protocol::Response;
use super::refusal::Refused;
use crate::broker::Broker;
use crate::meta::MetaCommand;
use crate::meta::policy::{self, ApplyTo, PolicyKind, PolicyRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyCommand {
    Set {
        kind: PolicyKind,
        vhost: String,
        name: String,
        pattern: String,
        /// As typed: JSON text.
        definition: String,
        priority: Option<String>,
        apply_to: Option<String>,
    },
    Clear {
        kind: PolicyKind,
        vhost: String,
        name: String,
    },
    List {
        kind: PolicyKind,
        vhost: String,
    },
}

fn validation(reason: impl std::fmt::Display) -> Refused {
    Refused::Invalid(format!("Validation failed\n\n{reason}"))
}

/// Builds a policy from the pieces the CLI, the HTTP API and definitions files give: the
/// definition as a JSON value, priority and apply-to as given (absent: 0 and `all`).
pub fn build(
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    pattern: &str,
    definition: &Value,
    priority: Option<&Value>,
    apply_to: Option<&str>,
) -> Result<PolicyRecord, Refused> {
    let priority = match priority {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| validation(format!("\"{s}\" is not a valid priority")))?,
        Some(other) => return Err(validation(format!("{other} is not a valid priority"))),
    };
    let apply_to = match apply_to {
        None => ApplyTo::All,
        Some(s) => ApplyTo::parse(s).map_err(validation)?,
    };
    let record = PolicyRecord {
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern: pattern.to_string(),
        apply_to,
        priority,
        definition: policy::parse_definition(definition, kind).map_err(validation)?,
    };
    record.validate(kind).map_err(validation)?;
    Ok(record)
}

pub async fn set(broker: &Broker, kind: PolicyKind, policy: PolicyRecord) -> Result<(), Refused> {
    broker
        .meta
        .submit(MetaCommand::SetPolicy { kind, policy })
        .await?;
    Ok(())
}

pub async fn clear(
    broker: &Broker,
    kind: PolicyKind,
    vhost: &str,
    name: &str,
) -> Result<(), Refused> {
    broker
        .meta
        .submit(MetaCommand::ClearPolicy {
            kind,
            vhost: vhost.to_string(),
            name: name.to_string(),
        })
        .await?;
    Ok(())
}

/// A vhost's policies of one kind (every vhost's when `vhost` is None), by name.
pub fn list(broker: &Broker, kind: PolicyKind, vhost: Option<&str>) -> Vec<PolicyRecord> {
    let state = broker.meta.read();
    let all = match kind {
        PolicyKind::User => &state.policies,
        PolicyKind::Operator => &state.operator_policies,
    };
    all.values()
        .filter(|p| vhost.is_none_or(|v| p.vhost == v))
        .cloned()
        .collect()
}

pub async fn run(broker: &Broker, cmd: PolicyCommand) -> Result<Response, Refused> {
    Ok(match cmd {
        PolicyCommand::Set {
            kind,
            vhost,
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => {
            let definition: Value = serde_json::from_str(&definition).map_err(|e| {
                Refused::Invalid(format!(
                    "Validation failed\n\n'{definition}' is not a valid JSON document: {e}"
                ))
            })?;
            let priority = priority.map(Value::String);
            let record = build(
                kind,
                &vhost,
                &name,
                &pattern,
                &definition,
                priority.as_ref(),
                apply_to.as_deref(),
            )?;
            if broker.vhost(&vhost).is_none() {
                return Err(Refused::NotFound(format!(
                    "Virtual host '{vhost}' does not exist"
                )));
            }
            set(broker, kind, record).await?;
            Response::ok()
        }
        PolicyCommand::Clear { kind, vhost, name } => {
            clear(broker, kind, &vhost, &name).await?;
            Response::ok()
        }
        PolicyCommand::List { kind, vhost } => {
            if broker.vhost(&vhost).is_none() {
                return Err(Refused::NotFound(format!(
                    "Virtual host '{vhost}' does not exist"
                )));
            }
            let mut policies = list(broker, kind, Some(&vhost));
            // RabbitMQ lists them by ascending priority, the definition as JSON text.
            policies.sort_by_key(|p| p.priority);
            let rows = policies
                .into_iter()
                .map(|p| {
                    vec![
                        json!(p.vhost),
                        json!(p.name),
                        json!(p.pattern),
                        json!(p.apply_to.as_str()),
                        json!(p.definition_json().to_string()),
                        json!(p.priority),
                    ]
                })
                .collect();
            Response::table(
                [
                    "vhost",
                    "name",
                    "pattern",
                    "apply-to",
                    "definition",
                    "priority",
                ]
                .iter()
                .map(|c| c.to_string())
                .collect(),
                rows,
            )
        }
    })
}
