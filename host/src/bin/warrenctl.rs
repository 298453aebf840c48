//! `warrenctl`: Warren's `rabbitmqctl`.
//!
//! Parses the command line, finds the node (`-n`), authenticates with the cookie over the
//! node's dist port and forwards the command; the node does the work and answers with a
//! message or a table, which is printed as rabbitmqctl prints it. Exit codes follow
//! CONVENTIONS.md: 64 usage, 69 node unreachable, the node's code (default 70) for failures.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use warren::cli::{self as ctl_protocol, CtlClient, CtlError, Request, Response, exit_code};
use warren::config::{self, ConfigError, CtlTarget};

/// How long `await_startup` and `stop` wait unless `-t` says otherwise (RabbitMQ's default for
/// await_startup).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Pause between attempts while waiting for a node to start or to stop.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Parser)]
#[command(
    name = "warrenctl",
    version,
    about = "Manages a Warren node (Warren's rabbitmqctl)",
    disable_help_subcommand = true
)]
struct Cli {
    /// Node to talk to: name@host, or a name completed with @<short hostname>
    #[arg(short = 'n', long = "node", global = true, value_name = "NODE")]
    node: Option<String>,
    /// Suppress informational messages
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    /// Like -q, and no table headers either
    #[arg(short = 's', long, global = true)]
    silent: bool,
    /// Do not print the header row of tables
    #[arg(long = "no-table-headers", global = true)]
    no_table_headers: bool,
    /// Operation timeout in seconds
    #[arg(short = 't', long = "timeout", global = true, value_name = "SECONDS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Formatter::Table)]
    formatter: Formatter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Formatter {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct VhostArg {
    /// Virtual host
    #[arg(short = 'p', long = "vhost", value_name = "VHOST", default_value = "/")]
    vhost: String,
}

/// What `set_policy` and `set_operator_policy` take.
#[derive(Debug, Args)]
struct PolicyArgs {
    #[command(flatten)]
    vhost: VhostArg,
    /// Priority: of the policies matching a name, the one of highest priority applies
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    priority: Option<String>,
    /// What the policy applies to: queues, classic_queues, quorum_queues, exchanges or all
    #[arg(long = "apply-to", value_name = "KIND")]
    apply_to: Option<String>,
    name: String,
    /// A regular expression matched against queue and exchange names
    #[arg(allow_hyphen_values = true)]
    pattern: String,
    /// The settings, as a JSON object, e.g. '{"max-length":1000}'
    #[arg(allow_hyphen_values = true)]
    definition: String,
}

impl PolicyArgs {
    fn request(&self, verb: &str) -> Request {
        let mut r = Request::new(verb)
            .args([&self.name, &self.pattern, &self.definition])
            .option("vhost", &self.vhost.vhost);
        if let Some(p) = &self.priority {
            r = r.option("priority", p);
        }
        if let Some(a) = &self.apply_to {
            r = r.option("apply_to", a);
        }
        r
    }

    fn banner(&self, what: &str) -> String {
        format!(
            "Setting {what} \"{}\" for pattern \"{}\" to \"{}\" with priority \"{}\" for vhost \"{}\" ...",
            self.name,
            self.pattern,
            self.definition,
            self.priority.as_deref().unwrap_or("0"),
            self.vhost.vhost
        )
    }
}

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Waits for the node to start (up to --timeout, default 300 s)
    AwaitStartup,
    /// Displays the node's status
    Status,
    /// Stops the node and waits until its process is gone
    Stop,
    /// Stops the broker application, leaving the node process running
    StopApp,
    /// Starts the broker application
    StartApp,
    /// Returns the node to its virgin state (the application must be stopped)
    Reset,
    /// Like reset, ignoring the cluster state
    ForceReset,
    /// Joins the cluster of NODE (the application must be stopped)
    JoinCluster {
        // Not `node`: clap would merge it with the global `-n/--node`.
        #[arg(value_name = "NODE")]
        cluster_node: String,
        /// Join as a RAM node
        #[arg(long, conflicts_with = "disc")]
        ram: bool,
        /// Join as a disc node (the default)
        #[arg(long)]
        disc: bool,
    },
    /// Displays the cluster's nodes and their state
    ClusterStatus,
    /// Removes NODE from the cluster
    ForgetClusterNode {
        #[arg(value_name = "NODE")]
        cluster_node: String,
        /// Run against a stopped node
        #[arg(long)]
        offline: bool,
    },
    /// Changes this node's type (the application must be stopped)
    ChangeClusterNodeType {
        #[arg(value_parser = ["disc", "disk", "ram"], value_name = "disc|ram")]
        node_type: String,
    },
    /// Shows each member of a quorum queue's Raft group (rabbitmq-queues quorum_status)
    QuorumStatus {
        #[command(flatten)]
        vhost: VhostArg,
        queue: String,
    },
    /// Adds NODE to a quorum queue's members (rabbitmq-queues add_member)
    AddMember {
        #[command(flatten)]
        vhost: VhostArg,
        queue: String,
        #[arg(value_name = "NODE")]
        member_node: String,
    },
    /// Removes NODE from a quorum queue's members (rabbitmq-queues delete_member)
    DeleteMember {
        #[command(flatten)]
        vhost: VhostArg,
        queue: String,
        #[arg(value_name = "NODE")]
        member_node: String,
    },
    /// Adds NODE to every quorum queue (all), or to those with an even member count (even)
    Grow {
        #[arg(value_name = "NODE")]
        member_node: String,
        #[arg(value_parser = ["all", "even"], value_name = "all|even")]
        strategy: String,
    },
    /// Removes NODE from every quorum queue it is a member of (never the last member)
    Shrink {
        #[arg(value_name = "NODE")]
        member_node: String,
    },
    /// Lists queues (default fields: name messages)
    ListQueues {
        #[command(flatten)]
        vhost: VhostArg,
        fields: Vec<String>,
    },
    /// Lists exchanges (default fields: name type)
    ListExchanges {
        #[command(flatten)]
        vhost: VhostArg,
        fields: Vec<String>,
    },
    /// Lists bindings
    ListBindings {
        #[command(flatten)]
        vhost: VhostArg,
        fields: Vec<String>,
    },
    /// Lists AMQP connections
    ListConnections { fields: Vec<String> },
    /// Lists AMQP channels
    ListChannels { fields: Vec<String> },
    /// Lists consumers
    ListConsumers {
        #[command(flatten)]
        vhost: VhostArg,
        fields: Vec<String>,
    },
    /// Lists users
    ListUsers,
    /// Creates a user
    AddUser {
        user: String,
        #[arg(allow_hyphen_values = true)]
        password: String,
    },
    /// Deletes a user
    DeleteUser { user: String },
    /// Changes a user's password
    ChangePassword {
        user: String,
        #[arg(allow_hyphen_values = true)]
        password: String,
    },
    /// Sets a user's tags (none clears them)
    SetUserTags { user: String, tags: Vec<String> },
    /// Lists virtual hosts
    ListVhosts { fields: Vec<String> },
    /// Creates a virtual host
    AddVhost { vhost: String },
    /// Names the cluster (shown by cluster_status, to clients and in metrics)
    SetClusterName { name: String },
    /// Deletes a virtual host
    DeleteVhost { vhost: String },
    /// Sets a user's permissions in a virtual host
    SetPermissions {
        #[command(flatten)]
        vhost: VhostArg,
        user: String,
        #[arg(allow_hyphen_values = true)]
        conf: String,
        #[arg(allow_hyphen_values = true)]
        write: String,
        #[arg(allow_hyphen_values = true)]
        read: String,
    },
    /// Revokes a user's permissions in a virtual host
    ClearPermissions {
        #[command(flatten)]
        vhost: VhostArg,
        user: String,
    },
    /// Lists the permissions of every user in a virtual host
    ListPermissions {
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Lists a user's permissions in every virtual host
    ListUserPermissions { user: String },
    /// Sets a user's topic permissions on a topic exchange (routing keys to publish and bind with)
    SetTopicPermissions {
        #[command(flatten)]
        vhost: VhostArg,
        user: String,
        exchange: String,
        #[arg(allow_hyphen_values = true)]
        write: String,
        #[arg(allow_hyphen_values = true)]
        read: String,
    },
    /// Clears a user's topic permissions (on one exchange, or all in the vhost)
    ClearTopicPermissions {
        #[command(flatten)]
        vhost: VhostArg,
        user: String,
        exchange: Option<String>,
    },
    /// Lists the topic permissions in a virtual host
    ListTopicPermissions {
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Lists a user's topic permissions in every virtual host
    ListUserTopicPermissions { user: String },
    /// Sets a policy: settings for the queues and exchanges whose names match PATTERN
    SetPolicy {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Clears a policy
    ClearPolicy {
        #[command(flatten)]
        vhost: VhostArg,
        name: String,
    },
    /// Lists the policies of a virtual host
    ListPolicies {
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Sets an operator policy: limits that cap those of user policies and queue arguments
    SetOperatorPolicy {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Clears an operator policy
    ClearOperatorPolicy {
        #[command(flatten)]
        vhost: VhostArg,
        name: String,
    },
    /// Lists the operator policies of a virtual host
    ListOperatorPolicies {
        #[command(flatten)]
        vhost: VhostArg,
    },
    /// Checks a user's credentials
    AuthenticateUser {
        user: String,
        #[arg(allow_hyphen_values = true)]
        password: String,
    },
}

/// A failure to report: one line on stderr and an exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
    /// Whether waiting may help (the node is not up yet): `await_startup` retries these.
    retry: bool,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            retry: false,
        }
    }

    fn retryable(mut self) -> Self {
        self.retry = true;
        self
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| "the timeout is too large".to_string())
        }
        _ => Err("expected a positive number of seconds".to_string()),
    }
}

/// The error text on one line: the contract is one line on stderr.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> ExitCode {
    // Output piped into `head` or `grep -q` ends the program quietly, as it ends any Unix
    // tool, instead of a panic on the broken pipe (Rust ignores SIGPIPE by default).
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return exit(usage_error(e)),
    };
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(run(&cli)) {
            Ok(()) => exit_code::OK,
            Err(f) => {
                eprintln!("Error: {}", one_line(&f.message));
                f.code
            }
        },
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            exit_code::SOFTWARE
        }
    };
    exit(code)
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(70))
}

/// Maps clap's errors to the contract: help and version exit 0, everything else is a usage
/// error (64, where clap would use 2) reported on one line.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            exit_code::OK
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!("Error: no command given (see 'warrenctl --help')");
            exit_code::USAGE
        }
        _ => {
            // clap's text is "error: <what>\n  <details>\n\nUsage: ..."; keep the part before
            // the first blank line, joined into one line.
            let text = e.to_string();
            let head: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let head = head.join(" ");
            let head = head.strip_prefix("error: ").unwrap_or(&head);
            eprintln!("Error: {head} (see 'warrenctl --help')");
            exit_code::USAGE
        }
    }
}

/// What to send for a command, what to say before it, and which columns to ask for.
struct Plan {
    request: Request,
    banner: Option<String>,
}

fn fields_or(fields: &[String], default: &[&str]) -> Vec<String> {
    if fields.is_empty() {
        default.iter().map(|s| s.to_string()).collect()
    } else {
        fields.to_vec()
    }
}

fn full_node_name(name: &str) -> Result<String, Failure> {
    config::normalize_node_name(name, &config::short_hostname())
        .map_err(|e| Failure::new(exit_code::USAGE, e.to_string()))
}

fn plan(cmd: &Command, node: &str) -> Result<Plan, Failure> {
    use Command as C;
    let listing = |command: &str, vhost: Option<&str>, fields: Vec<String>, banner: String| {
        let mut request = Request::new(command).args(fields);
        if let Some(v) = vhost {
            request = request.option("vhost", v);
        }
        Plan {
            request,
            banner: Some(banner),
        }
    };
    let simple = |command: &str, banner: Option<String>| Plan {
        request: Request::new(command),
        banner,
    };
    Ok(match cmd {
        C::AwaitStartup => simple("await_startup", None),
        C::Status => simple("status", Some(format!("Status of node {node} ..."))),
        C::Stop => simple(
            "stop",
            Some(format!("Stopping and halting node {node} ...")),
        ),
        C::StopApp => simple(
            "stop_app",
            Some(format!("Stopping rabbit application on node {node} ...")),
        ),
        C::StartApp => simple("start_app", Some(format!("Starting node {node} ..."))),
        C::Reset => simple("reset", Some(format!("Resetting node {node} ..."))),
        C::ForceReset => simple(
            "force_reset",
            Some(format!("Forcefully resetting node {node} ...")),
        ),
        C::JoinCluster {
            cluster_node: other,
            ram,
            ..
        } => {
            let other = full_node_name(other)?;
            let node_type = if *ram { "ram" } else { "disc" };
            Plan {
                banner: Some(format!("Clustering node {node} with {other}")),
                request: Request::new("join_cluster")
                    .arg(other)
                    .option("node_type", node_type),
            }
        }
        C::ClusterStatus => simple(
            "cluster_status",
            Some(format!("Cluster status of node {node} ...")),
        ),
        C::ForgetClusterNode {
            cluster_node: other,
            offline,
        } => {
            let other = full_node_name(other)?;
            // RabbitMQ's --offline edits a stopped node's own database; Warren's stopped node
            // has no such path yet, and accepting the flag while doing the online thing
            // would say something false.
            if *offline {
                return Err(Failure::new(
                    exit_code::USAGE,
                    "forget_cluster_node --offline is not supported: start the node and run forget_cluster_node without --offline".to_string(),
                ));
            }
            let request = Request::new("forget_cluster_node").arg(other.clone());
            Plan {
                banner: Some(format!("Removing node {other} from the cluster")),
                request,
            }
        }
        C::ChangeClusterNodeType { node_type } => {
            // "disk" is accepted as rabbitmqctl accepts it, but the node only sees "disc".
            let t = if node_type == "ram" { "ram" } else { "disc" };
            Plan {
                banner: Some(format!("Turning {node} into a {t} node")),
                request: Request::new("change_cluster_node_type").arg(t),
            }
        }
        C::QuorumStatus { vhost, queue } => Plan {
            banner: Some(format!("Status of quorum queue {queue} on node {node} ...")),
            request: Request::new("quorum_status")
                .arg(queue.clone())
                .option("vhost", &vhost.vhost),
        },
        C::AddMember {
            vhost,
            queue,
            member_node,
        }
        | C::DeleteMember {
            vhost,
            queue,
            member_node,
        } => {
            let member = full_node_name(member_node)?;
            let (command, banner) = if matches!(cmd, C::AddMember { .. }) {
                (
                    "add_member",
                    format!("Adding a replica for queue {queue} on node {member}..."),
                )
            } else {
                (
                    "delete_member",
                    format!("Removing a replica of queue {queue} on node {member}..."),
                )
            };
            Plan {
                banner: Some(banner),
                request: Request::new(command)
                    .arg(queue.clone())
                    .arg(member)
                    .option("vhost", &vhost.vhost),
            }
        }
        C::Grow {
            member_node,
            strategy,
        } => {
            let member = full_node_name(member_node)?;
            Plan {
                banner: Some(format!("Growing {strategy} quorum queues onto {member}...")),
                request: Request::new("grow").arg(member).arg(strategy.clone()),
            }
        }
        C::Shrink { member_node } => {
            let member = full_node_name(member_node)?;
            Plan {
                banner: Some(format!("Shrinking all quorum queues on {member}...")),
                request: Request::new("shrink").arg(member),
            }
        }
        C::ListQueues { vhost, fields } => listing(
            "list_queues",
            Some(&vhost.vhost),
            fields_or(fields, &["name", "messages"]),
            format!("Listing queues for vhost {} ...", vhost.vhost),
        ),
        C::ListExchanges { vhost, fields } => listing(
            "list_exchanges",
            Some(&vhost.vhost),
            fields_or(fields, &["name", "type"]),
            format!("Listing exchanges for vhost {} ...", vhost.vhost),
        ),
        C::ListBindings { vhost, fields } => listing(
            "list_bindings",
            Some(&vhost.vhost),
            fields_or(
                fields,
                &[
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                ],
            ),
            format!("Listing bindings for vhost {}...", vhost.vhost),
        ),
        C::ListConnections { fields } => listing(
            "list_connections",
            None,
            fields_or(fields, &["user", "peer_host", "peer_port", "state"]),
            "Listing connections ...".to_string(),
        ),
        C::ListChannels { fields } => listing(
            "list_channels",
            None,
            fields_or(
                fields,
                &["pid", "user", "consumer_count", "messages_unacknowledged"],
            ),
            "Listing channels ...".to_string(),
        ),
        C::ListConsumers { vhost, fields } => listing(
            "list_consumers",
            Some(&vhost.vhost),
            fields_or(
                fields,
                &[
                    "queue_name",
                    "channel_pid",
                    "consumer_tag",
                    "ack_required",
                    "prefetch_count",
                    "active",
                    "arguments",
                ],
            ),
            format!("Listing consumers in vhost {} ...", vhost.vhost),
        ),
        C::ListUsers => simple("list_users", Some("Listing users ...".to_string())),
        C::AddUser { user, password } => Plan {
            request: Request::new("add_user").args([user, password]),
            banner: Some(format!("Adding user \"{user}\" ...")),
        },
        C::DeleteUser { user } => Plan {
            request: Request::new("delete_user").arg(user),
            banner: Some(format!("Deleting user \"{user}\" ...")),
        },
        C::ChangePassword { user, password } => Plan {
            request: Request::new("change_password").args([user, password]),
            banner: Some(format!("Changing password for user \"{user}\" ...")),
        },
        C::SetUserTags { user, tags } => Plan {
            request: Request::new("set_user_tags").arg(user).args(tags),
            banner: Some(format!(
                "Setting tags for user \"{user}\" to [{}] ...",
                tags.join(", ")
            )),
        },
        C::ListVhosts { fields } => listing(
            "list_vhosts",
            None,
            fields_or(fields, &["name"]),
            "Listing vhosts ...".to_string(),
        ),
        C::SetClusterName { name } => Plan {
            request: Request::new("set_cluster_name").arg(name),
            banner: Some(format!("Setting cluster name to {name} ...")),
        },
        C::AddVhost { vhost } => Plan {
            request: Request::new("add_vhost").arg(vhost),
            banner: Some(format!("Adding vhost \"{vhost}\" ...")),
        },
        C::DeleteVhost { vhost } => Plan {
            request: Request::new("delete_vhost").arg(vhost),
            banner: Some(format!("Deleting vhost \"{vhost}\" ...")),
        },
        C::SetPermissions {
            vhost,
            user,
            conf,
            write,
            read,
        } => Plan {
            request: Request::new("set_permissions")
                .args([user, conf, write, read])
                .option("vhost", &vhost.vhost),
            banner: Some(format!(
                "Setting permissions for user \"{user}\" in vhost \"{}\" ...",
                vhost.vhost
            )),
        },
        C::ClearPermissions { vhost, user } => Plan {
            request: Request::new("clear_permissions")
                .arg(user)
                .option("vhost", &vhost.vhost),
            banner: Some(format!(
                "Clearing permissions for user \"{user}\" in vhost \"{}\" ...",
                vhost.vhost
            )),
        },
        C::ListPermissions { vhost } => Plan {
            request: Request::new("list_permissions").option("vhost", &vhost.vhost),
            banner: Some(format!(
                "Listing permissions for vhost \"{}\" ...",
                vhost.vhost
            )),
        },
        C::SetTopicPermissions {
            vhost,
            user,
            exchange,
            write,
            read,
        } => Plan {
            request: Request::new("set_topic_permissions")
                .args([user, exchange, write, read])
                .option("vhost", &vhost.vhost),
            banner: Some(format!(
                "Setting topic permissions on \"{exchange}\" for user \"{user}\" in vhost \"{}\" ...",
                vhost.vhost
            )),
        },
        C::ClearTopicPermissions {
            vhost,
            user,
            exchange,
        } => Plan {
            request: Request::new("clear_topic_permissions")
                .args(std::iter::once(user).chain(exchange.iter()))
                .option("vhost", &vhost.vhost),
            banner: Some(match exchange {
                Some(x) => format!(
                    "Clearing topic permissions on \"{x}\" for user \"{user}\" in vhost \"{}\" ...",
                    vhost.vhost
                ),
                None => format!(
                    "Clearing topic permissions for user \"{user}\" in vhost \"{}\" ...",
                    vhost.vhost
                ),
            }),
        },
        C::ListTopicPermissions { vhost } => listing(
            "list_topic_permissions",
            Some(&vhost.vhost),
            Vec::new(),
            format!(
                "Listing topic permissions for vhost \"{}\" ...",
                vhost.vhost
            ),
        ),
        C::ListUserTopicPermissions { user } => Plan {
            request: Request::new("list_user_topic_permissions").arg(user),
            banner: Some(format!("Listing topic permissions for user \"{user}\" ...")),
        },
        C::SetPolicy { policy } => Plan {
            request: policy.request("set_policy"),
            banner: Some(policy.banner("policy")),
        },
        C::SetOperatorPolicy { policy } => Plan {
            request: policy.request("set_operator_policy"),
            banner: Some(policy.banner("operator policy override")),
        },
        C::ClearPolicy { vhost, name } => Plan {
            request: Request::new("clear_policy")
                .arg(name)
                .option("vhost", &vhost.vhost),
            banner: Some(format!(
                "Clearing policy \"{name}\" on vhost \"{}\" ...",
                vhost.vhost
            )),
        },
        C::ClearOperatorPolicy { vhost, name } => Plan {
            request: Request::new("clear_operator_policy")
                .arg(name)
                .option("vhost", &vhost.vhost),
            banner: Some(format!(
                "Clearing operator policy \"{name}\" on vhost \"{}\" ...",
                vhost.vhost
            )),
        },
        C::ListPolicies { vhost } => listing(
            "list_policies",
            Some(&vhost.vhost),
            Vec::new(),
            format!("Listing policies for vhost \"{}\" ...", vhost.vhost),
        ),
        C::ListOperatorPolicies { vhost } => listing(
            "list_operator_policies",
            Some(&vhost.vhost),
            Vec::new(),
            format!(
                "Listing operator policy overrides for vhost \"{}\" ...",
                vhost.vhost
            ),
        ),
        C::ListUserPermissions { user } => Plan {
            request: Request::new("list_user_permissions").arg(user),
            banner: Some(format!("Listing permissions for user \"{user}\" ...")),
        },
        C::AuthenticateUser { user, password } => Plan {
            request: Request::new("authenticate_user").args([user, password]),
            banner: Some(format!("Authenticating user \"{user}\" ...")),
        },
    })
}

fn config_failure(e: ConfigError) -> Failure {
    let code = match e {
        ConfigError::InvalidNodeName { .. } | ConfigError::InvalidEnv { .. } => exit_code::USAGE,
        ConfigError::CookiePermissions { .. } | ConfigError::CookieEmpty { .. } => {
            exit_code::DATA_ERR
        }
        _ => exit_code::SOFTWARE,
    };
    Failure::new(code, e.to_string())
}

/// The one-line explanation of a failed connection, naming the node.
fn connect_failure(node: &str, e: &CtlError) -> Failure {
    let message = match e {
        CtlError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            format!("unable to connect to node {node}: connection refused (is the node running?)")
        }
        CtlError::Connect { addr, source } => {
            format!("unable to connect to node {node} at {addr}: {source}")
        }
        CtlError::ConnectTimeout { .. } | CtlError::HandshakeTimeout { .. } => {
            format!("unable to connect to node {node}: {e}")
        }
        CtlError::AuthFailed { .. } | CtlError::PeerAuthFailed { .. } => e.to_string(),
        _ => format!("unable to connect to node {node}: {e}"),
    };
    let f = Failure::new(e.exit_code(), message);
    if e.is_unreachable() { f.retryable() } else { f }
}

fn client_id() -> String {
    format!(
        "warrenctl-{}@{}",
        std::process::id(),
        config::short_hostname()
    )
}

/// Connects and authenticates, and checks that the node answering is the one asked for (two
/// nodes on one host differ only by port, and `stop` must not hit the wrong one).
async fn connect(target: &CtlTarget, cookie: &str) -> Result<CtlClient, Failure> {
    let addr = target.addr();
    let client =
        ctl_protocol::client_connect(&addr, cookie, &client_id(), ctl_protocol::CONNECT_TIMEOUT)
            .await
            .map_err(|e| connect_failure(&target.node, &e))?;
    if !config::same_node(client.node(), &target.node) {
        return Err(Failure::new(
            exit_code::UNAVAILABLE,
            format!(
                "unable to connect to node {}: {addr} is node {} instead",
                target.node,
                client.node()
            ),
        )
        // The right node may take the port once the wrong one is gone.
        .retryable());
    }
    Ok(client)
}

struct Output {
    quiet: bool,
    headers: bool,
    formatter: Formatter,
}

impl Output {
    fn banner(&self, banner: &Option<String>) {
        // JSON output stays machine-readable: no banner.
        if let Some(b) = banner
            && !self.quiet
            && self.formatter == Formatter::Table
        {
            println!("{b}");
        }
    }

    fn response(&self, resp: &Response) {
        if let Some(columns) = &resp.columns {
            let empty = Vec::new();
            let rows = resp.rows.as_ref().unwrap_or(&empty);
            match self.formatter {
                Formatter::Table => print!("{}", format_table(columns, rows, self.headers)),
                Formatter::Json => print!("{}", format_json_rows(columns, rows)),
            }
            return;
        }
        match self.formatter {
            Formatter::Table => {
                if let Some(m) = &resp.message {
                    println!("{m}");
                } else if let Some(d) = &resp.data {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(d).unwrap_or_else(|_| d.to_string())
                    );
                }
            }
            Formatter::Json => {
                if let Some(d) = &resp.data {
                    println!("{d}");
                } else if let Some(m) = &resp.message {
                    println!("{}", serde_json::Value::String(m.clone()));
                }
            }
        }
    }
}

/// A table cell as rabbitmqctl prints it; tabs and newlines are escaped so that a row stays
/// one line of tab-separated fields.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
        other => other.to_string(),
    }
}

fn format_table(columns: &[String], rows: &[Vec<serde_json::Value>], headers: bool) -> String {
    let mut out = String::new();
    if headers {
        out.push_str(&columns.join("\t"));
        out.push('\n');
    }
    for row in rows {
        let cells: Vec<String> = (0..columns.len())
            .map(|i| row.get(i).map(cell).unwrap_or_default())
            .collect();
        out.push_str(&cells.join("\t"));
        out.push('\n');
    }
    out
}

/// rabbitmqctl's JSON formatter: an array with one object per line, keys in column order.
fn format_json_rows(columns: &[String], rows: &[Vec<serde_json::Value>]) -> String {
    let null = serde_json::Value::Null;
    let objects: Vec<String> = rows
        .iter()
        .map(|row| {
            let pairs: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(c.clone()),
                        row.get(i).unwrap_or(&null)
                    )
                })
                .collect();
            format!("{{{}}}", pairs.join(","))
        })
        .collect();
    if objects.is_empty() {
        "[]\n".to_string()
    } else {
        format!("[\n{}\n]\n", objects.join(",\n"))
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let target = config::ctl_target(cli.node.as_deref()).map_err(config_failure)?;
    let plan = plan(&cli.command, &target.node)?;
    let cookie = config::load_or_create_cookie().map_err(config_failure)?;
    let out = Output {
        quiet: cli.quiet || cli.silent,
        headers: !(cli.silent || cli.no_table_headers),
        formatter: cli.formatter,
    };
    let mut request = plan.request;
    if let Some(t) = cli.timeout {
        // Lets the node bound its own work by what the user is prepared to wait.
        request = request.option("timeout", format!("{}", t.as_secs_f64()));
    }
    match cli.command {
        Command::AwaitStartup => await_startup(cli, &cookie, &request).await,
        Command::Stop => stop(cli, target, &cookie, &request, &out, &plan.banner).await,
        _ => {
            let mut client = connect(&target, &cookie).await?;
            client
                .set_request_timeout(cli.timeout.unwrap_or(ctl_protocol::DEFAULT_REQUEST_TIMEOUT));
            out.banner(&plan.banner);
            let resp = client
                .call(&request)
                .await
                .map_err(|e| call_failure(&target.node, &e))?;
            finish(&out, &resp)
        }
    }
}

fn call_failure(node: &str, e: &CtlError) -> Failure {
    match e {
        CtlError::RequestTimeout { .. } => Failure::new(e.exit_code(), e.to_string()),
        _ => Failure::new(
            e.exit_code(),
            format!("lost the connection to node {node}: {e}"),
        ),
    }
}

fn finish(out: &Output, resp: &Response) -> Result<(), Failure> {
    if resp.ok {
        out.response(resp);
        Ok(())
    } else {
        Err(Failure::new(
            resp.effective_exit_code(),
            resp.error
                .clone()
                .unwrap_or_else(|| "the node reported an error".to_string()),
        ))
    }
}

/// Retries until the node answers that it has started, or the timeout passes. The target is
/// re-resolved each round because the node writes node.json (with its port) as it starts.
async fn await_startup(cli: &Cli, cookie: &str, request: &Request) -> Result<(), Failure> {
    let wait = cli.timeout.unwrap_or(DEFAULT_WAIT);
    let deadline = Instant::now() + wait;
    let mut last: Failure;
    loop {
        let target = config::ctl_target(cli.node.as_deref()).map_err(config_failure)?;
        last = match connect(&target, cookie).await {
            Ok(mut client) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                client.set_request_timeout(remaining.max(Duration::from_millis(100)));
                match client.call(request).await {
                    Ok(resp) if resp.ok => return Ok(()),
                    Ok(resp) => {
                        let code = resp.effective_exit_code();
                        let f = Failure::new(
                            code,
                            resp.error.unwrap_or_else(|| "node not started".to_string()),
                        );
                        // A booting node answers "not yet" with a temporary code.
                        if code != exit_code::TEMP_FAIL && code != exit_code::UNAVAILABLE {
                            return Err(f);
                        }
                        f
                    }
                    Err(e) => call_failure(&target.node, &e),
                }
            }
            Err(f) if f.retry => f,
            // A wrong cookie, or something that is not a Warren node, will not fix itself.
            Err(f) => return Err(f),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(Failure::new(
                exit_code::UNAVAILABLE,
                format!(
                    "node {} did not start within {} s: {}",
                    target.node,
                    wait.as_secs_f64(),
                    last.message
                ),
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asks the node to stop, then waits until its process is gone (or, when its pid is not
/// known, until its port refuses connections).
async fn stop(
    cli: &Cli,
    target: CtlTarget,
    cookie: &str,
    request: &Request,
    out: &Output,
    banner: &Option<String>,
) -> Result<(), Failure> {
    let mut client = connect(&target, cookie).await?;
    client.set_request_timeout(cli.timeout.unwrap_or(ctl_protocol::DEFAULT_REQUEST_TIMEOUT));
    out.banner(banner);
    let mut pid = None;
    match client.call(request).await {
        Ok(resp) if resp.ok => {
            pid = resp
                .data
                .as_ref()
                .and_then(|d| d.get("pid"))
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u32::try_from(p).ok());
        }
        Ok(resp) => return finish(out, &resp),
        // The node may halt before its answer gets out; the wait below tells whether it did.
        Err(e @ (CtlError::Closed { .. } | CtlError::Io { .. })) => {
            tracing::debug!("connection closed during stop: {e}");
        }
        Err(e) => return Err(call_failure(&target.node, &e)),
    }
    drop(client);
    if target.local {
        pid = pid.or(target.runtime.as_ref().map(|r| r.pid));
    } else {
        pid = None;
    }
    let wait = cli.timeout.unwrap_or(DEFAULT_WAIT);
    let deadline = Instant::now() + wait;
    loop {
        let gone = match pid {
            Some(p) => !config::process_alive(p),
            None => port_closed(&target.addr()).await,
        };
        if gone {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit_code::TEMP_FAIL,
                format!(
                    "node {} is still running {} s after it was asked to stop",
                    target.node,
                    wait.as_secs_f64()
                ),
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether nothing accepts connections at `addr` any more.
async fn port_closed(addr: &str) -> bool {
    match tokio::time::timeout(
        ctl_protocol::CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(_)) => false,
        Ok(Err(_)) => true,
        // Unanswered connects are not a refusal: the host may be busy; keep waiting.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn table_and_json_formats() {
        let cols = vec!["name".to_string(), "messages".to_string()];
        let rows = vec![
            vec![json!("q1"), json!(3)],
            vec![json!("a\tb"), json!(null)],
        ];
        assert_eq!(
            format_table(&cols, &rows, true),
            "name\tmessages\nq1\t3\na\\tb\t\n"
        );
        assert_eq!(format_table(&cols, &rows, false), "q1\t3\na\\tb\t\n");
        assert_eq!(
            format_json_rows(&cols, &rows),
            "[\n{\"name\":\"q1\",\"messages\":3},\n{\"name\":\"a\\tb\",\"messages\":null}\n]\n"
        );
        assert_eq!(format_json_rows(&cols, &[]), "[]\n");
    }

    #[test]
    fn one_line_joins() {
        assert_eq!(one_line("a\n  b\r\n\nc"), "a b c");
    }
}
