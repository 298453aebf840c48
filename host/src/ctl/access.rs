//! Users, virtual hosts and permissions: each change goes through the metadata store (one
//! Raft-replicated command), each listing reads the replicated state. These functions are
//! what `warrenctl` runs and what an HTTP API calls.

use serde_json::{Value, json};

use super::command::AccessCommand;
use super::listings::{Row, table};
use super::protocol::Response;
use super::refusal::Refused;
use crate::broker::Broker;
use crate::meta::{
    MetaCommand, PASSWORD_HASHING_SHA256, PermissionRecord, TopicPermissionRecord, UserRecord,
    VhostRecord,
};

async fn submit(broker: &Broker, cmd: MetaCommand) -> Result<(), Refused> {
    broker.meta.submit(cmd).await?;
    Ok(())
}

pub async fn add_user(broker: &Broker, name: &str, password: &str) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::AddUser(UserRecord {
            name: name.to_string(),
            password_hash: crate::auth::hash_password(password),
            hashing_algorithm: PASSWORD_HASHING_SHA256.into(),
            tags: Vec::new(),
        }),
    )
    .await
}

pub async fn delete_user(broker: &Broker, name: &str) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::DeleteUser {
            name: name.to_string(),
        },
    )
    .await
}

pub async fn change_password(broker: &Broker, name: &str, password: &str) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::ChangePassword {
            name: name.to_string(),
            password_hash: crate::auth::hash_password(password),
        },
    )
    .await
}

pub async fn set_user_tags(broker: &Broker, name: &str, tags: Vec<String>) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::SetUserTags {
            name: name.to_string(),
            tags,
        },
    )
    .await
}

/// Whether `password` logs `name` in (through the node's auth backends, as a client would).
pub fn authenticate_user(broker: &Broker, name: &str, password: &str) -> Result<(), Refused> {
    let plain = format!("\0{name}\0{password}");
    broker
        .login(
            "PLAIN",
            plain.as_bytes(),
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .map(|_| ())
        .map_err(|_| Refused::Invalid(format!("Error: failed to authenticate user \"{name}\"")))
}

pub async fn add_vhost(broker: &Broker, name: &str, description: &str) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::AddVhost(VhostRecord {
            name: name.to_string(),
            description: description.to_string(),
        }),
    )
    .await
}

pub async fn delete_vhost(broker: &Broker, name: &str) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::DeleteVhost {
            name: name.to_string(),
        },
    )
    .await
}

/// Sets a user's permissions in a vhost; each of the three must be a valid regex.
pub async fn set_permissions(broker: &Broker, p: PermissionRecord) -> Result<(), Refused> {
    for (what, re) in [
        ("configure", &p.configure),
        ("write", &p.write),
        ("read", &p.read),
    ] {
        if regex::Regex::new(re).is_err() {
            return Err(Refused::Invalid(format!("invalid {what} regex: {re}")));
        }
    }
    submit(broker, MetaCommand::SetPermissions(p)).await
}

pub async fn clear_permissions(broker: &Broker, user: &str, vhost: &str) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::ClearPermissions {
            user: user.to_string(),
            vhost: vhost.to_string(),
        },
    )
    .await
}

/// Sets a user's topic permission on one exchange; write and read must be valid regexes.
pub async fn set_topic_permissions(
    broker: &Broker,
    t: TopicPermissionRecord,
) -> Result<(), Refused> {
    for (what, re) in [("write", &t.write), ("read", &t.read)] {
        // Checked as the backend will see it, with its variables filled in.
        let expanded = re
            .replace("{username}", "u")
            .replace("{vhost}", "v")
            .replace("{client_id}", "c");
        if regex::Regex::new(&expanded).is_err() {
            return Err(Refused::Invalid(format!("invalid {what} regex: {re}")));
        }
    }
    submit(broker, MetaCommand::SetTopicPermissions(t)).await
}

pub async fn clear_topic_permissions(
    broker: &Broker,
    user: &str,
    vhost: &str,
    exchange: Option<&str>,
) -> Result<(), Refused> {
    submit(
        broker,
        MetaCommand::ClearTopicPermissions {
            user: user.to_string(),
            vhost: vhost.to_string(),
            exchange: exchange.map(str::to_string),
        },
    )
    .await
}

/// Topic permissions matching `keep`, after checking that what `missing` names exists.
fn topic_permissions_where(
    broker: &Broker,
    missing: Option<Refused>,
    keep: impl Fn(&TopicPermissionRecord) -> bool,
) -> Result<Vec<TopicPermissionRecord>, Refused> {
    if let Some(refused) = missing {
        return Err(refused);
    }
    Ok(broker
        .meta
        .read()
        .topic_permissions
        .values()
        .filter(|t| keep(t))
        .cloned()
        .collect())
}

pub fn vhost_topic_permissions(
    broker: &Broker,
    vhost: &str,
) -> Result<Vec<TopicPermissionRecord>, Refused> {
    let missing = (!broker.meta.read().vhosts.contains_key(vhost))
        .then(|| Refused::NotFound(format!("Virtual host '{vhost}' does not exist")));
    topic_permissions_where(broker, missing, |t| t.vhost == vhost)
}

pub fn user_topic_permissions(
    broker: &Broker,
    user: &str,
) -> Result<Vec<TopicPermissionRecord>, Refused> {
    let missing = (!broker.meta.read().users.contains_key(user))
        .then(|| Refused::NotFound(format!("User \"{user}\" does not exist")));
    topic_permissions_where(broker, missing, |t| t.user == user)
}

fn topic_permission_table(first: &str, rows: Vec<TopicPermissionRecord>) -> Response {
    let rows = rows
        .into_iter()
        .map(|t| {
            vec![
                json!(if first == "user" { t.user } else { t.vhost }),
                json!(t.exchange),
                json!(t.write),
                json!(t.read),
            ]
        })
        .collect();
    Response::table(
        [first, "exchange", "write", "read"]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        rows,
    )
}

pub fn users(broker: &Broker) -> Vec<UserRecord> {
    broker.meta.read().users.values().cloned().collect()
}

pub fn vhosts(broker: &Broker) -> Vec<VhostRecord> {
    broker.meta.read().vhosts.values().cloned().collect()
}

/// Everyone's permissions in `vhost`.
pub fn vhost_permissions(broker: &Broker, vhost: &str) -> Result<Vec<PermissionRecord>, Refused> {
    let state = broker.meta.read();
    if !state.vhosts.contains_key(vhost) {
        return Err(Refused::NotFound(format!(
            "Virtual host '{vhost}' does not exist"
        )));
    }
    Ok(state
        .permissions
        .values()
        .filter(|p| p.vhost == vhost)
        .cloned()
        .collect())
}

/// `user`'s permissions in every vhost.
pub fn user_permissions(broker: &Broker, user: &str) -> Result<Vec<PermissionRecord>, Refused> {
    let state = broker.meta.read();
    if !state.users.contains_key(user) {
        return Err(Refused::NotFound(format!("User \"{user}\" does not exist")));
    }
    Ok(state
        .permissions
        .values()
        .filter(|p| p.user == user)
        .cloned()
        .collect())
}

fn permission_table(first: &str, rows: Vec<PermissionRecord>, user_first: bool) -> Response {
    let rows = rows
        .into_iter()
        .map(|p| {
            vec![
                json!(if user_first { p.user } else { p.vhost }),
                json!(p.configure),
                json!(p.write),
                json!(p.read),
            ]
        })
        .collect();
    Response::table(
        [first, "configure", "write", "read"]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        rows,
    )
}

/// Runs one command for `warrenctl`.
pub async fn run(broker: &Broker, cmd: AccessCommand) -> Result<Response, Refused> {
    use AccessCommand as A;
    Ok(match cmd {
        A::AddUser { name, password } => {
            add_user(broker, &name, &password).await?;
            Response::ok()
        }
        A::DeleteUser { name } => {
            delete_user(broker, &name).await?;
            Response::ok()
        }
        A::ChangePassword { name, password } => {
            change_password(broker, &name, &password).await?;
            Response::ok()
        }
        A::SetUserTags { name, tags } => {
            set_user_tags(broker, &name, tags).await?;
            Response::ok()
        }
        A::AuthenticateUser { name, password } => {
            authenticate_user(broker, &name, &password)?;
            Response::message("Success")
        }
        A::AddVhost { name } => {
            add_vhost(broker, &name, "").await?;
            Response::ok()
        }
        A::DeleteVhost { name } => {
            delete_vhost(broker, &name).await?;
            Response::ok()
        }
        A::SetPermissions {
            user,
            vhost,
            configure,
            write,
            read,
        } => {
            set_permissions(
                broker,
                PermissionRecord {
                    user,
                    vhost,
                    configure,
                    write,
                    read,
                },
            )
            .await?;
            Response::ok()
        }
        A::ClearPermissions { user, vhost } => {
            clear_permissions(broker, &user, &vhost).await?;
            Response::ok()
        }
        A::ListUsers => {
            let rows = users(broker)
                .into_iter()
                .map(|u| vec![json!(u.name), json!(format!("[{}]", u.tags.join(", ")))])
                .collect();
            Response::table(vec!["user".into(), "tags".into()], rows)
        }
        A::ListVhosts { fields } => {
            let fields = if fields.is_empty() {
                vec!["name".to_string()]
            } else {
                fields
            };
            let rows = vhosts(broker).into_iter().map(|v| {
                Box::new(move |f: &str| match f {
                    "name" => json!(v.name),
                    "description" => json!(v.description),
                    // Warren has no firehose tracer (`trace_on` is an unknown verb, exit
                    // 64), so no vhost is ever traced: false is measured, not assumed.
                    "tracing" => json!(false),
                    _ => Value::Null,
                }) as Row
            });
            table(&fields, &["name", "description", "tracing"], rows)
        }
        A::ListPermissions { vhost } => {
            permission_table("user", vhost_permissions(broker, &vhost)?, true)
        }
        A::ListUserPermissions { user } => {
            permission_table("vhost", user_permissions(broker, &user)?, false)
        }
        A::SetTopicPermissions(t) => {
            set_topic_permissions(broker, t).await?;
            Response::ok()
        }
        A::ClearTopicPermissions {
            user,
            vhost,
            exchange,
        } => {
            clear_topic_permissions(broker, &user, &vhost, exchange.as_deref()).await?;
            Response::ok()
        }
        A::ListTopicPermissions { vhost } => {
            topic_permission_table("user", vhost_topic_permissions(broker, &vhost)?)
        }
        A::ListUserTopicPermissions { user } => {
            topic_permission_table("vhost", user_topic_permissions(broker, &user)?)
        }
    })
}
