//! A `warrenctl` request read into a typed command: the verb picks the command, and its
//! arguments and options are checked here, once, before anything runs. Each area's
//! commands run in the area's file (`lifecycle`, `membership`, `quorum_members`, `access`,
//! `plugins`, `listings`).

use std::collections::BTreeMap;

use super::policies::PolicyCommand;
use super::protocol::Request;
use super::refusal::Refused;
use crate::cluster::NodeKind;
use crate::meta::TopicPermissionRecord;
use crate::meta::policy::PolicyKind;

/// Node lifecycle (`lifecycle.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleCommand {
    Status,
    AwaitStartup,
    Stop,
    StopApp,
    StartApp,
    Reset { force: bool },
}

/// Cluster membership (`membership.rs`). Node names are as typed (`name` or `name@host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipCommand {
    ClusterStatus,
    JoinCluster { node: String, kind: NodeKind },
    ForgetClusterNode { node: String },
    ChangeClusterNodeType { kind: NodeKind },
    SetClusterName { name: String },
}

/// Quorum queue membership (`quorum_members.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumCommand {
    Status {
        vhost: String,
        queue: String,
    },
    AddMember {
        vhost: String,
        queue: String,
        node: String,
    },
    DeleteMember {
        vhost: String,
        queue: String,
        node: String,
    },
    Grow {
        node: String,
        even_only: bool,
    },
    Shrink {
        node: String,
    },
}

/// Users, virtual hosts and permissions (`access.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessCommand {
    AddUser {
        name: String,
        password: String,
    },
    DeleteUser {
        name: String,
    },
    ChangePassword {
        name: String,
        password: String,
    },
    SetUserTags {
        name: String,
        tags: Vec<String>,
    },
    AuthenticateUser {
        name: String,
        password: String,
    },
    AddVhost {
        name: String,
    },
    DeleteVhost {
        name: String,
    },
    SetPermissions {
        user: String,
        vhost: String,
        configure: String,
        write: String,
        read: String,
    },
    ClearPermissions {
        user: String,
        vhost: String,
    },
    ListUsers,
    ListVhosts {
        fields: Vec<String>,
    },
    ListPermissions {
        vhost: String,
    },
    ListUserPermissions {
        user: String,
    },
    SetTopicPermissions(TopicPermissionRecord),
    ClearTopicPermissions {
        user: String,
        vhost: String,
        exchange: Option<String>,
    },
    ListTopicPermissions {
        vhost: String,
    },
    ListUserTopicPermissions {
        user: String,
    },
}

/// Plugins on this node (`plugins.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginsCommand {
    List,
    Enable(Vec<String>),
    Disable(Vec<String>),
}

/// Listings of the broker's objects (`listings.rs`): the columns and options as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lifecycle(LifecycleCommand),
    Membership(MembershipCommand),
    Quorum(QuorumCommand),
    Access(AccessCommand),
    Policy(PolicyCommand),
    Plugins(PluginsCommand),
    /// Listings keep their request: the fields it names are the columns.
    List(Listing, Request),
}

/// A request's arguments, each fetched with the name to print when it is missing.
struct Args<'a> {
    args: &'a [String],
    options: &'a BTreeMap<String, String>,
}

impl Args<'_> {
    fn get(&self, i: usize, what: &str) -> Result<String, Refused> {
        self.args
            .get(i)
            .cloned()
            .ok_or_else(|| Refused::usage(format!("missing argument: {what}")))
    }

    fn rest(&self, from: usize) -> Vec<String> {
        self.args.get(from..).unwrap_or_default().to_vec()
    }

    fn vhost(&self) -> String {
        self.options
            .get("vhost")
            .cloned()
            .unwrap_or_else(|| "/".to_string())
    }
}

impl Command {
    pub fn parse(req: Request) -> Result<Command, Refused> {
        use AccessCommand as A;
        use LifecycleCommand as L;
        use MembershipCommand as M;
        use QuorumCommand as Q;
        let a = Args {
            args: &req.args,
            options: &req.options,
        };
        let command = match req.command.as_str() {
            "status" => Command::Lifecycle(L::Status),
            "await_startup" => Command::Lifecycle(L::AwaitStartup),
            "stop" => Command::Lifecycle(L::Stop),
            "stop_app" => Command::Lifecycle(L::StopApp),
            "start_app" => Command::Lifecycle(L::StartApp),
            "reset" => Command::Lifecycle(L::Reset { force: false }),
            "force_reset" => Command::Lifecycle(L::Reset { force: true }),

            "cluster_status" => Command::Membership(M::ClusterStatus),
            "join_cluster" => Command::Membership(M::JoinCluster {
                node: a.get(0, "node")?,
                kind: match req.options.get("node_type").map(String::as_str) {
                    Some("ram") => NodeKind::Ram,
                    _ => NodeKind::Disc,
                },
            }),
            "forget_cluster_node" => Command::Membership(M::ForgetClusterNode {
                node: a.get(0, "node")?,
            }),
            "change_cluster_node_type" => {
                let kind = match a.get(0, "disc|ram")?.as_str() {
                    "ram" => NodeKind::Ram,
                    "disc" | "disk" => NodeKind::Disc,
                    other => {
                        return Err(Refused::usage(format!(
                            "unknown node type '{other}': use disc or ram"
                        )));
                    }
                };
                Command::Membership(M::ChangeClusterNodeType { kind })
            }
            "set_cluster_name" => Command::Membership(M::SetClusterName {
                name: a.get(0, "name")?,
            }),

            "quorum_status" => Command::Quorum(Q::Status {
                vhost: a.vhost(),
                queue: a.get(0, "queue")?,
            }),
            "add_member" => Command::Quorum(Q::AddMember {
                vhost: a.vhost(),
                queue: a.get(0, "queue")?,
                node: a.get(1, "node")?,
            }),
            "delete_member" => Command::Quorum(Q::DeleteMember {
                vhost: a.vhost(),
                queue: a.get(0, "queue")?,
                node: a.get(1, "node")?,
            }),
            "grow" => {
                let node = a.get(0, "node")?;
                let even_only = match req.args.get(1).map(String::as_str) {
                    Some("all") => false,
                    Some("even") => true,
                    _ => return Err(Refused::usage("grow takes a node and 'all' or 'even'")),
                };
                Command::Quorum(Q::Grow { node, even_only })
            }
            "shrink" => Command::Quorum(Q::Shrink {
                node: a.get(0, "node")?,
            }),

            "add_user" => Command::Access(A::AddUser {
                name: a.get(0, "user")?,
                password: a.get(1, "password")?,
            }),
            "delete_user" => Command::Access(A::DeleteUser {
                name: a.get(0, "user")?,
            }),
            "change_password" => Command::Access(A::ChangePassword {
                name: a.get(0, "user")?,
                password: a.get(1, "password")?,
            }),
            "set_user_tags" => Command::Access(A::SetUserTags {
                name: a.get(0, "user")?,
                tags: a.rest(1),
            }),
            "authenticate_user" => Command::Access(A::AuthenticateUser {
                name: a.get(0, "user")?,
                password: a.get(1, "password")?,
            }),
            "add_vhost" => Command::Access(A::AddVhost {
                name: a.get(0, "vhost")?,
            }),
            "delete_vhost" => Command::Access(A::DeleteVhost {
                name: a.get(0, "vhost")?,
            }),
            "set_permissions" => Command::Access(A::SetPermissions {
                user: a.get(0, "user")?,
                configure: a.get(1, "conf")?,
                write: a.get(2, "write")?,
                read: a.get(3, "read")?,
                vhost: a.vhost(),
            }),
            "clear_permissions" => Command::Access(A::ClearPermissions {
                user: a.get(0, "user")?,
                vhost: a.vhost(),
            }),
            "list_users" => Command::Access(A::ListUsers),
            "list_vhosts" => Command::Access(A::ListVhosts { fields: a.rest(0) }),
            "list_permissions" => Command::Access(A::ListPermissions { vhost: a.vhost() }),
            "list_user_permissions" => Command::Access(A::ListUserPermissions {
                user: a.get(0, "user")?,
            }),
            "set_topic_permissions" => {
                Command::Access(A::SetTopicPermissions(TopicPermissionRecord {
                    user: a.get(0, "user")?,
                    vhost: a.vhost(),
                    exchange: a.get(1, "exchange")?,
                    write: a.get(2, "write")?,
                    read: a.get(3, "read")?,
                }))
            }
            "clear_topic_permissions" => Command::Access(A::ClearTopicPermissions {
                user: a.get(0, "user")?,
                vhost: a.vhost(),
                exchange: req.args.get(1).cloned(),
            }),
            "list_topic_permissions" => {
                Command::Access(A::ListTopicPermissions { vhost: a.vhost() })
            }
            "list_user_topic_permissions" => Command::Access(A::ListUserTopicPermissions {
                user: a.get(0, "user")?,
            }),

            "set_policy" | "set_operator_policy" => Command::Policy(PolicyCommand::Set {
                kind: policy_kind(&req.command),
                vhost: a.vhost(),
                name: a.get(0, "name")?,
                pattern: a.get(1, "pattern")?,
                definition: a.get(2, "definition")?,
                priority: req.options.get("priority").cloned(),
                apply_to: req.options.get("apply_to").cloned(),
            }),
            "clear_policy" | "clear_operator_policy" => Command::Policy(PolicyCommand::Clear {
                kind: policy_kind(&req.command),
                vhost: a.vhost(),
                name: a.get(0, "name")?,
            }),
            "list_policies" | "list_operator_policies" => Command::Policy(PolicyCommand::List {
                kind: policy_kind(&req.command),
                vhost: a.vhost(),
            }),

            "plugins_list" => Command::Plugins(PluginsCommand::List),
            "plugins_enable" | "plugins_disable" => {
                let names = a.rest(0);
                if names.is_empty() {
                    return Err(Refused::usage("at least one plugin name is required"));
                }
                Command::Plugins(if req.command == "plugins_enable" {
                    PluginsCommand::Enable(names)
                } else {
                    PluginsCommand::Disable(names)
                })
            }

            "list_queues" => Command::List(Listing::Queues, req),
            "list_exchanges" => Command::List(Listing::Exchanges, req),
            "list_bindings" => Command::List(Listing::Bindings, req),
            "list_connections" => Command::List(Listing::Connections, req),
            "list_channels" => Command::List(Listing::Channels, req),
            "list_consumers" => Command::List(Listing::Consumers, req),
            other => return Err(Refused::usage(format!("unknown command '{other}'"))),
        };
        Ok(command)
    }
}

fn policy_kind(verb: &str) -> PolicyKind {
    if verb.contains("operator") {
        PolicyKind::Operator
    } else {
        PolicyKind::User
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(verb: &str, args: &[&str]) -> Result<Command, Refused> {
        Command::parse(Request::new(verb).args(args.iter().copied()))
    }

    #[test]
    fn arguments_are_checked_before_anything_runs() {
        assert_eq!(
            parse("add_user", &["guest"]),
            Err(Refused::usage("missing argument: password"))
        );
        assert_eq!(
            parse("grow", &["rabbit@b", "some"]),
            Err(Refused::usage("grow takes a node and 'all' or 'even'"))
        );
        assert_eq!(
            parse("change_cluster_node_type", &["tape"]),
            Err(Refused::usage("unknown node type 'tape': use disc or ram"))
        );
        assert_eq!(parse("frobnicate", &[]).map_err(|e| e.exit_code()), Err(64));
        assert_eq!(
            parse("plugins_enable", &[]).map_err(|e| e.exit_code()),
            Err(64)
        );
    }

    #[test]
    fn options_and_the_rest_of_the_arguments_are_typed() {
        let req = Request::new("set_permissions")
            .args(["bob", ".*", "^w", ""])
            .option("vhost", "v1");
        assert_eq!(
            Command::parse(req),
            Ok(Command::Access(AccessCommand::SetPermissions {
                user: "bob".into(),
                vhost: "v1".into(),
                configure: ".*".into(),
                write: "^w".into(),
                read: "".into(),
            }))
        );
        assert_eq!(
            parse("set_user_tags", &["bob"]),
            Ok(Command::Access(AccessCommand::SetUserTags {
                name: "bob".into(),
                tags: vec![]
            }))
        );
        let join = Request::new("join_cluster")
            .arg("rabbit@a")
            .option("node_type", "ram");
        assert_eq!(
            Command::parse(join),
            Ok(Command::Membership(MembershipCommand::JoinCluster {
                node: "rabbit@a".into(),
                kind: NodeKind::Ram
            }))
        );
    }
}
