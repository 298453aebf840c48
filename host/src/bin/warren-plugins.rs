//! `warren-plugins`: Warren's `rabbitmq-plugins`.
//!
//! `list`, `enable NAME...` and `disable NAME...` for one node (`-n`). On a
//! running node the change takes effect at once (the node loads or unloads
//! the plugin and rewrites its `enabled_plugins`); on a stopped node only the
//! file changes, after the plugin was checked to load.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use warren::cli::{self as ctl_protocol, CtlError, Request, exit_code};
use warren::config::{self, NodeConfig};
use warren::{PluginError, PluginStatus, edit_offline};

#[derive(Debug, Parser)]
#[command(
    name = "warren-plugins",
    version,
    about = "Lists, enables and disables a Warren node's plugins (Warren's rabbitmq-plugins)",
    disable_help_subcommand = true
)]
struct Cli {
    /// Node whose plugins to manage: name@host, or a name completed with @<short hostname>
    #[arg(short = 'n', long = "node", global = true, value_name = "NODE")]
    node: Option<String>,
    /// Suppress informational messages
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Formatter::Table)]
    formatter: Formatter,
    /// Operation timeout in seconds (default 60 for list; 300 for enable and disable, which
    /// compile plugins on the node)
    #[arg(short = 't', long = "timeout", global = true, value_name = "SECONDS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Formatter {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists plugins: [E*] = explicitly enabled and running, [e*] = enabled as a dependency
    List {
        /// Only plugins whose name matches this regular expression
        pattern: Option<String>,
        /// Show descriptions and what each plugin provides
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Only enabled plugins (explicitly or implicitly)
        #[arg(short = 'e', long = "enabled")]
        enabled: bool,
        /// Only explicitly enabled plugins
        #[arg(short = 'E', long = "explicit")]
        explicit: bool,
        /// Names only
        #[arg(short = 'm', long = "minimal")]
        minimal: bool,
    },
    /// Enables plugins (and what they depend on)
    Enable {
        #[arg(required = true)]
        names: Vec<String>,
        /// Only edit the enabled_plugins file, even if the node runs
        #[arg(long)]
        offline: bool,
    },
    /// Disables plugins
    Disable {
        #[arg(required = true)]
        names: Vec<String>,
        /// Only edit the enabled_plugins file, even if the node runs
        #[arg(long)]
        offline: bool,
    },
}

struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
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
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("usage error");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("Error: {first} (see 'warren-plugins --help')");
            return exit(exit_code::USAGE);
        }
    };
    let code = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => match rt.block_on(run(&cli)) {
            Ok(()) => exit_code::OK,
            Err(f) => {
                eprintln!("Error: {}", f.message.lines().next().unwrap_or(""));
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

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| "the timeout is too large".to_string())
        }
        _ => Err("expected a positive number of seconds".to_string()),
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(70))
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let cfg_failure = |e: config::ConfigError| Failure::new(exit_code::USAGE, e.to_string());
    let target = config::ctl_target(cli.node.as_deref()).map_err(cfg_failure)?;
    let offline_forced = match &cli.command {
        Command::Enable { offline, .. } | Command::Disable { offline, .. } => *offline,
        Command::List { .. } => false,
    };
    // A node is online if it answers on its dist port; a stopped node gets a file edit.
    let client = if offline_forced {
        None
    } else {
        let cookie = config::load_or_create_cookie().map_err(cfg_failure)?;
        match ctl_protocol::client_connect(
            &target.addr(),
            &cookie,
            &format!("warren-plugins-{}", std::process::id()),
            ctl_protocol::CONNECT_TIMEOUT,
        )
        .await
        {
            Ok(c) if config::same_node(c.node(), &target.node) => Some(c),
            Ok(_) => None,
            Err(e) if e.is_unreachable() => None,
            Err(e) => return Err(Failure::new(e.exit_code(), e.to_string())),
        }
    };
    let node = target.node.clone();
    match client {
        Some(mut client) => {
            let request = match &cli.command {
                Command::List { .. } => Request::new("plugins_list"),
                Command::Enable { names, .. } => Request::new("plugins_enable").args(names.clone()),
                Command::Disable { names, .. } => {
                    Request::new("plugins_disable").args(names.clone())
                }
            };
            if !cli.quiet && cli.formatter == Formatter::Table {
                match &cli.command {
                    Command::Enable { names, .. } => {
                        println!("Enabling plugins on node {node}:\n{}", names.join("\n"))
                    }
                    Command::Disable { names, .. } => {
                        println!("Disabling plugins on node {node}:\n{}", names.join("\n"))
                    }
                    Command::List { .. } => {}
                }
            }
            client.set_request_timeout(cli.timeout.unwrap_or(match &cli.command {
                Command::List { .. } => ctl_protocol::DEFAULT_REQUEST_TIMEOUT,
                // A large component (a Python plugin is tens of MB) takes a while to compile.
                Command::Enable { .. } | Command::Disable { .. } => Duration::from_secs(300),
            }));
            let resp = client
                .call(&request)
                .await
                .map_err(|e: CtlError| Failure::new(e.exit_code(), format!("node {node}: {e}")))?;
            if !resp.ok {
                return Err(Failure::new(
                    resp.effective_exit_code(),
                    resp.error.unwrap_or_else(|| "failed".into()),
                ));
            }
            let data = resp.data.unwrap_or(Value::Null);
            let list: Vec<PluginStatus> =
                serde_json::from_value(data["plugins"].clone()).unwrap_or_default();
            match &cli.command {
                Command::List { .. } => print_list(cli, &node, &list),
                Command::Enable { .. } | Command::Disable { .. } => {
                    let changed: Vec<String> =
                        serde_json::from_value(data["changed"].clone()).unwrap_or_default();
                    report_change(cli, &node, &list, &changed, true);
                }
            }
            Ok(())
        }
        None => offline(cli, &node).await,
    }
}

async fn offline(cli: &Cli, node: &str) -> Result<(), Failure> {
    let cfg = NodeConfig::for_node(Some(node))
        .map_err(|e| Failure::new(exit_code::USAGE, e.to_string()))?;
    let host = warren::plugin_host(&cfg).map_err(|e| Failure::new(e.exit_code(), e.to_string()))?;
    let fail = |e: PluginError| Failure::new(e.exit_code(), e.to_string());
    match &cli.command {
        Command::List { .. } => {
            host.read_configuration().map_err(fail)?;
            print_list(cli, node, &host.list());
        }
        Command::Enable { names, .. } | Command::Disable { names, .. } => {
            let enable = matches!(cli.command, Command::Enable { .. });
            if !cli.quiet && cli.formatter == Formatter::Table {
                println!(
                    "{} plugins on node {node}:\n{}",
                    if enable { "Enabling" } else { "Disabling" },
                    names.join("\n")
                );
            }
            edit_offline(&host, enable, names).map_err(fail)?;
            report_change(cli, node, &host.list(), &[], false);
        }
    }
    Ok(())
}

fn report_change(cli: &Cli, node: &str, list: &[PluginStatus], changed: &[String], online: bool) {
    if cli.formatter == Formatter::Json {
        let enabled: Vec<&str> = list
            .iter()
            .filter(|p| p.explicit || p.implicit)
            .map(|p| p.name.as_str())
            .collect();
        println!(
            "{}",
            serde_json::json!({"node": node, "enabled": enabled, "changed": changed, "online": online})
        );
        return;
    }
    if cli.quiet {
        return;
    }
    println!("The following plugins have been configured:");
    for p in list.iter().filter(|p| p.explicit || p.implicit) {
        println!("  {}", p.name);
    }
    if online {
        println!("Applying plugin configuration to {node}...");
        if changed.is_empty() {
            println!("Plugin configuration unchanged.");
        } else {
            println!("The following plugins have been changed:");
            for c in changed {
                println!("  {c}");
            }
        }
    } else {
        println!("Offline change; changes will take effect at broker restart.");
    }
}

fn print_list(cli: &Cli, node: &str, list: &[PluginStatus]) {
    let Command::List {
        pattern,
        verbose,
        enabled,
        explicit,
        minimal,
    } = &cli.command
    else {
        return;
    };
    let re = pattern.as_deref().and_then(|p| regex::Regex::new(p).ok());
    let shown: Vec<&PluginStatus> = list
        .iter()
        .filter(|p| re.as_ref().is_none_or(|r| r.is_match(&p.name)))
        .filter(|p| !*enabled || p.explicit || p.implicit)
        .filter(|p| !*explicit || p.explicit)
        .collect();
    if cli.formatter == Formatter::Json {
        println!("{}", serde_json::json!({"node": node, "plugins": shown}));
        return;
    }
    if *minimal {
        for p in shown {
            println!("{}", p.name);
        }
        return;
    }
    if !cli.quiet {
        println!(
            "Listing plugins with pattern \"{}\" ...",
            pattern.as_deref().unwrap_or(".*")
        );
        println!(" Configured: E = explicitly enabled; e = implicitly enabled");
        println!(" | Status: * = running on {node}");
        println!(" |/");
    }
    let width = shown.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in shown {
        let configured = if p.explicit {
            'E'
        } else if p.implicit {
            'e'
        } else {
            ' '
        };
        let running = if p.running { '*' } else { ' ' };
        println!(
            "[{configured}{running}] {:width$} {}",
            p.name,
            p.version,
            width = width
        );
        if *verbose {
            println!("     {}", p.provides);
            if !p.description.is_empty() {
                println!("     {}", p.description);
            }
        }
    }
}
