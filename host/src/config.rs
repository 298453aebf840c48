//! Who a node is and where its files live.
//!
//! A node is identified by its name (`name@host`) and ports; everything it writes lives under
//! `$WARREN_BASE/<node name>/`, so several nodes can share one machine without colliding (see
//! CONVENTIONS.md). This module resolves that identity from the environment, parses the
//! rabbitmq.conf-style config file, manages the shared cookie and the small `node.json` runtime
//! file through which the CLI finds a running node.
//!
//! Every function that reads the environment has a `*_from_vars` twin taking a lookup function,
//! so tests never have to mutate the process environment (which is unsound with threads).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Environment variable names: part of the contract in CONVENTIONS.md.
pub const ENV_NODENAME: &str = "WARREN_NODENAME";
pub const ENV_NODE_PORT: &str = "WARREN_NODE_PORT";
pub const ENV_DIST_PORT: &str = "WARREN_DIST_PORT";
pub const ENV_BASE: &str = "WARREN_BASE";
pub const ENV_CONFIG_FILE: &str = "WARREN_CONFIG_FILE";
pub const ENV_ENABLED_PLUGINS_FILE: &str = "WARREN_ENABLED_PLUGINS_FILE";
pub const ENV_COOKIE: &str = "WARREN_COOKIE";

/// Default AMQP port and the offset of the dist port (RabbitMQ's 25672 rule).
pub const DEFAULT_AMQP_PORT: u16 = 5672;
pub const DIST_PORT_OFFSET: u16 = 20000;
/// The node-name prefix used when none is given.
pub const DEFAULT_NODE_PREFIX: &str = "warren";
/// File names inside the base directory, home directory and data directory.
pub const COOKIE_FILE_NAME: &str = ".warren.cookie";
pub const CONFIG_FILE_NAME: &str = "warren.conf";
pub const ENABLED_PLUGINS_FILE_NAME: &str = "enabled_plugins";
pub const RUNTIME_FILE_NAME: &str = "node.json";

/// Defaults of the typed settings, as RabbitMQ documents them.
pub const DEFAULT_HEARTBEAT: u16 = 60;
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
pub const DEFAULT_VM_MEMORY_HIGH_WATERMARK_RELATIVE: f64 = 0.6;
/// RabbitMQ's default `disk_free_limit.absolute = 50MB`, where MB is decimal.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Length of a generated cookie: the same as Erlang's `.erlang.cookie`.
const COOKIE_LEN: usize = 20;

/// Everything that can go wrong while working out a node's identity and files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for environment variable {var}: {reason}")]
    InvalidEnv {
        var: String,
        value: String,
        reason: String,
    },
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName { name: String, reason: String },
    #[error("cannot locate the home directory: HOME is not set")]
    NoHome,
    #[error("cannot read config file {}: {source}", path.display())]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("{}:{line}: syntax error: {reason}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}:{line}: invalid value {value:?} for key '{key}': {reason}", file.display())]
    InvalidValue {
        file: PathBuf,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "{}:{line}: unknown key '{key}': neither Warren nor any of its plugins reads it (see docs/configuration.md)",
        file.display()
    )]
    UnknownKey {
        file: PathBuf,
        line: usize,
        key: String,
    },
    #[error(
        "cannot derive the dist port from AMQP port {amqp_port}: it would exceed 65535; set {ENV_DIST_PORT}"
    )]
    DistPortOverflow { amqp_port: u16 },
    #[error("cannot read cookie file {}: {source}", path.display())]
    CookieRead { path: PathBuf, source: io::Error },
    #[error("cannot create cookie file {}: {source}", path.display())]
    CookieWrite { path: PathBuf, source: io::Error },
    #[error("cookie file {} must be accessible by owner only (its mode is {mode:o}; run chmod 400 on it)", path.display())]
    CookiePermissions { path: PathBuf, mode: u32 },
    #[error("cookie file {} is empty", path.display())]
    CookieEmpty { path: PathBuf },
    #[error("cannot {action} node runtime file {}: {source}", path.display())]
    RuntimeFileIo {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("node runtime file {} is not valid: {source}", path.display())]
    RuntimeFileParse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The identity and file locations of one node, plus its parsed config file.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `name@host`.
    pub node_name: String,
    pub amqp_port: u16,
    pub dist_port: u16,
    pub base_dir: PathBuf,
    /// `base_dir/<node_name>`: everything the node writes lives here.
    pub data_dir: PathBuf,
    pub config_file: PathBuf,
    pub enabled_plugins_file: PathBuf,
    pub settings: Settings,
}

/// Reads the real process environment; the default lookup of all `*_from_vars` functions.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Environment lookup that treats empty values as unset, as shells make `VAR=` easy to leave
/// behind and an empty port or path is never what was meant.
fn lookup(vars: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    vars(name).filter(|v| !v.trim().is_empty())
}

fn parse_port_env(
    vars: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<u16>, ConfigError> {
    match lookup(vars, name) {
        None => Ok(None),
        Some(v) => parse_port(v.trim())
            .map(Some)
            .map_err(|reason| ConfigError::InvalidEnv {
                var: name.to_string(),
                value: v.clone(),
                reason,
            }),
    }
}

fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed".to_string()),
        Ok(p) => Ok(p),
        Err(_) => Err("expected a port number between 1 and 65535".to_string()),
    }
}

impl NodeConfig {
    /// The configuration of the node described by the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&process_env, None)
    }

    /// Like [`NodeConfig::from_env`] but with an explicit node name (`warrenctl -n`); `None`
    /// falls back to `WARREN_NODENAME`.
    pub fn for_node(name: Option<&str>) -> Result<Self, ConfigError> {
        Self::from_vars(&process_env, name)
    }

    /// The injectable core of [`NodeConfig::from_env`] / [`NodeConfig::for_node`].
    pub fn from_vars(
        vars: &dyn Fn(&str) -> Option<String>,
        node: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let node_name = node_name_from_vars(vars, node)?;
        let base_dir = base_dir_from_vars(vars)?;
        let data_dir = base_dir.join(&node_name);
        let config_file = lookup(vars, ENV_CONFIG_FILE)
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join(CONFIG_FILE_NAME));
        let enabled_plugins_file = lookup(vars, ENV_ENABLED_PLUGINS_FILE)
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join(ENABLED_PLUGINS_FILE_NAME));
        let settings = Settings::load(&config_file)?;

        // Env wins over the config file, so that a test harness or script can always move a
        // node to a free port without editing its config.
        let amqp_port = match parse_port_env(vars, ENV_NODE_PORT)? {
            Some(p) => p,
            None => settings
                .listeners_tcp_default
                .map(|l| l.port)
                .unwrap_or(DEFAULT_AMQP_PORT),
        };
        let dist_port = match parse_port_env(vars, ENV_DIST_PORT)? {
            Some(p) => p,
            None => default_dist_port(amqp_port)?,
        };
        Ok(NodeConfig {
            node_name,
            amqp_port,
            dist_port,
            base_dir,
            data_dir,
            config_file,
            enabled_plugins_file,
            settings,
        })
    }

    /// Where this node's runtime file lives.
    pub fn runtime_file_path(&self) -> PathBuf {
        NodeRuntimeFile::path(&self.data_dir)
    }
}

/// `amqp_port + 20000`, RabbitMQ's rule for the distribution port.
pub fn default_dist_port(amqp_port: u16) -> Result<u16, ConfigError> {
    amqp_port
        .checked_add(DIST_PORT_OFFSET)
        .ok_or(ConfigError::DistPortOverflow { amqp_port })
}

/// The node name from an explicit value, else `WARREN_NODENAME`, else `warren@<short hostname>`,
/// completed with `@<short hostname>` when it has no host part.
pub fn node_name_from_vars(
    vars: &dyn Fn(&str) -> Option<String>,
    explicit: Option<&str>,
) -> Result<String, ConfigError> {
    let raw = match explicit {
        Some(n) => n.to_string(),
        None => lookup(vars, ENV_NODENAME).unwrap_or_else(|| DEFAULT_NODE_PREFIX.to_string()),
    };
    normalize_node_name(&raw, &short_hostname())
}

/// Completes a node name the way RabbitMQ's CLI does for short names: `rabbit` becomes
/// `rabbit@<host>`. Both halves must be non-empty and free of characters that would break a
/// directory name or the `name@host` split.
pub fn normalize_node_name(name: &str, host: &str) -> Result<String, ConfigError> {
    let name = name.trim();
    let bad = |reason: &str| ConfigError::InvalidNodeName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let (local, host) = match name.split_once('@') {
        Some((l, h)) => (l, h),
        None => (name, host),
    };
    if local.is_empty() {
        return Err(bad("the part before '@' is empty"));
    }
    if host.is_empty() {
        return Err(bad("the host part after '@' is empty"));
    }
    let valid = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid(local) || !valid(host) {
        return Err(bad(
            "only letters, digits, '-', '_' and '.' are allowed around a single '@'",
        ));
    }
    if local == "." || local == ".." {
        return Err(bad("the name may not be '.' or '..'"));
    }
    Ok(format!("{local}@{host}"))
}

/// The part of a node name after `@` (the whole name if there is none).
pub fn node_host(node_name: &str) -> &str {
    node_name
        .split_once('@')
        .map(|(_, h)| h)
        .unwrap_or(node_name)
}

/// `$WARREN_BASE`, else `$HOME/.warren`.
pub fn base_dir_from_vars(vars: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, ConfigError> {
    if let Some(b) = lookup(vars, ENV_BASE) {
        return Ok(PathBuf::from(b));
    }
    Ok(home_from_vars(vars)?.join(".warren"))
}

fn home_from_vars(vars: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, ConfigError> {
    lookup(vars, "HOME")
        .map(PathBuf::from)
        .ok_or(ConfigError::NoHome)
}

/// The machine's host name as `gethostname(2)` reports it; "localhost" if that fails.
pub fn full_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call; gethostname
    // writes at most `len` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast::<libc::c_char>(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// The host name up to its first '.', as Erlang's short names use it.
pub fn short_hostname() -> String {
    let full = full_hostname();
    match full.split('.').next() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => full,
    }
}

/// Whether a node's host part designates this machine (so that we may connect to 127.0.0.1
/// and inspect its pid).
pub fn is_local_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host == "127.0.0.1"
        || host == "::1"
        || host == short_hostname().to_ascii_lowercase()
        || host == full_hostname().to_ascii_lowercase()
}

// ---------------------------------------------------------------------------------------------
// Settings: the config file
// ---------------------------------------------------------------------------------------------

/// `listeners.tcp.default`: either a bare port or `ip:port` (`::1:5672` for IPv6, as
/// rabbitmq.conf writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpListenerSpec {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

/// The memory alarm threshold (`vm_memory_high_watermark.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    /// Fraction of total RAM.
    Relative(f64),
    /// Bytes.
    Absolute(u64),
}

impl MemoryWatermark {
    /// The limit in bytes for a machine with `total_memory` bytes of RAM.
    pub fn limit_bytes(&self, total_memory: u64) -> u64 {
        match *self {
            MemoryWatermark::Relative(f) => (total_memory as f64 * f) as u64,
            MemoryWatermark::Absolute(b) => b,
        }
    }
}

/// The free disk space alarm threshold (`disk_free_limit.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFreeLimit {
    /// Bytes.
    Absolute(u64),
    /// Multiple of total RAM (RabbitMQ's `mem_relative`).
    MemRelative(f64),
}

impl DiskFreeLimit {
    /// The limit in bytes for a machine with `total_memory` bytes of RAM.
    pub fn limit_bytes(&self, total_memory: u64) -> u64 {
        match *self {
            DiskFreeLimit::Absolute(b) => b,
            DiskFreeLimit::MemRelative(f) => (total_memory as f64 * f) as u64,
        }
    }
}

/// The parsed config file: every key in `raw` (plugins read their own keys from there) plus
/// typed values for the keys the node itself uses, named as rabbitmq.conf names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Every `key = value` of the file, last one winning, with the line it was set on (to
    /// name it in errors found after parsing).
    pub raw: BTreeMap<String, (usize, String)>,
    /// `listeners.tcp.default`; `WARREN_NODE_PORT` overrides its port.
    pub listeners_tcp_default: Option<TcpListenerSpec>,
    /// `distribution.listener.interface` (RabbitMQ's key): the one address the dist port
    /// binds; every interface when unset, as RabbitMQ's Erlang distribution listens.
    pub distribution_listener_interface: Option<IpAddr>,
    pub default_user: String,
    pub default_pass: String,
    pub default_vhost: String,
    /// Users that may connect only from loopback (`["guest"]` by default).
    pub loopback_users: Vec<String>,
    /// Seconds; 0 disables heartbeats.
    pub heartbeat: u16,
    pub frame_max: u32,
    pub channel_max: u16,
    pub vm_memory_high_watermark: MemoryWatermark,
    pub disk_free_limit: DiskFreeLimit,
    /// `log.console.level`, lower-cased.
    pub log_console_level: String,
    /// `consumer_timeout` in milliseconds; `None` when set to 0 or `false` (no timeout).
    pub consumer_timeout_ms: Option<u64>,
    /// `warren.message_store.fsync`: whether persistent messages are fsynced before their
    /// confirm (true by default; false trades durability on power loss for speed).
    pub message_store_fsync: bool,
    /// `plugins.call_timeout_ms`: how long one plugin call may run.
    pub plugins_call_timeout_ms: Option<u64>,
    /// `plugins.memory_limit_mb`: each plugin instance's linear memory cap.
    pub plugins_memory_limit_mb: Option<usize>,
    /// `auth_backends.N` values in the order of N.
    pub auth_backends: Vec<String>,
    /// The file the settings came from (empty for defaults).
    pub file: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            raw: BTreeMap::new(),
            listeners_tcp_default: None,
            distribution_listener_interface: None,
            default_user: "guest".to_string(),
            default_pass: "guest".to_string(),
            default_vhost: "/".to_string(),
            loopback_users: vec!["guest".to_string()],
            heartbeat: DEFAULT_HEARTBEAT,
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            vm_memory_high_watermark: MemoryWatermark::Relative(
                DEFAULT_VM_MEMORY_HIGH_WATERMARK_RELATIVE,
            ),
            disk_free_limit: DiskFreeLimit::Absolute(DEFAULT_DISK_FREE_LIMIT),
            log_console_level: DEFAULT_LOG_LEVEL.to_string(),
            consumer_timeout_ms: Some(DEFAULT_CONSUMER_TIMEOUT_MS),
            message_store_fsync: true,
            plugins_call_timeout_ms: None,
            plugins_memory_limit_mb: None,
            auth_backends: Vec::new(),
            file: PathBuf::new(),
        }
    }
}

/// RabbitMQ's default consumer timeout: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 1_800_000;

/// The keys the node itself reads; a key ending in `.` stands for every key under it.
/// Plugins add the keys their manifests declare (see [`Settings::check_keys`]).
pub const NODE_KEYS: &[&str] = &[
    "listeners.tcp.default",
    "distribution.listener.interface",
    "default_user",
    "default_pass",
    "default_vhost",
    "loopback_users",
    "loopback_users.",
    "heartbeat",
    "frame_max",
    "channel_max",
    "vm_memory_high_watermark.relative",
    "vm_memory_high_watermark.absolute",
    "disk_free_limit.relative",
    "disk_free_limit.absolute",
    "log.console.level",
    "consumer_timeout",
    "warren.message_store.fsync",
    "plugins.call_timeout_ms",
    "plugins.memory_limit_mb",
    "auth_backends.",
];

/// Whether `pattern` (an exact key, or a prefix ending in `.`) covers `key`.
pub fn key_matches(pattern: &str, key: &str) -> bool {
    if pattern.ends_with('.') {
        key.len() > pattern.len() && key.starts_with(pattern)
    } else {
        pattern == key
    }
}

/// The tracing filter level for a `log.console.level` (Erlang logger's names, which tracing
/// does not parse: an unparsed level would silently leave only errors).
pub fn tracing_level(level: &str) -> &'static str {
    match level {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        "error" | "critical" | "alert" | "emergency" => "error",
        "none" => "off",
        _ => "info",
    }
}

/// Log levels accepted by `log.console.level` (RabbitMQ's, which are Erlang logger's).
const LOG_LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
    "none",
];

impl Settings {
    /// Reads and parses `path`; a missing file means all defaults (a fresh node has none).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(source) => Err(ConfigError::ReadConfig {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses rabbitmq.conf-style text; `file` only names the source in errors.
    ///
    /// Syntax: `key = value` per line; blank lines and lines starting with `#` are ignored; a
    /// `#` preceded by whitespace starts a trailing comment. Unlike cuttlefish, a `#` glued to
    /// a value stays part of it, so that passwords such as `pa#ss` survive.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        // key -> (line, value); the line is kept to name it in errors about the value.
        let mut entries: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for (idx, line) in text.lines().enumerate() {
            let line_no = idx + 1;
            let content = strip_comment(line).trim();
            if content.is_empty() {
                continue;
            }
            let Some((key, value)) = content.split_once('=') else {
                return Err(ConfigError::Syntax {
                    file: file.to_path_buf(),
                    line: line_no,
                    reason: format!("expected 'key = value', got {content:?}"),
                });
            };
            let key = key.trim();
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                return Err(ConfigError::Syntax {
                    file: file.to_path_buf(),
                    line: line_no,
                    reason: format!("invalid key {key:?}"),
                });
            }
            entries.insert(key.to_string(), (line_no, value.trim().to_string()));
        }
        Self::from_entries(entries, file)
    }

    fn from_entries(
        entries: BTreeMap<String, (usize, String)>,
        file: &Path,
    ) -> Result<Self, ConfigError> {
        let mut s = Settings::default();
        let e = &entries;
        let invalid = |key: &str, reason: String| invalid_value(e, file, key, reason);

        if let Some(l) = typed(e, file, "listeners.tcp.default", parse_listener)? {
            s.listeners_tcp_default = Some(l);
        }
        s.distribution_listener_interface =
            typed(e, file, "distribution.listener.interface", |v| {
                v.trim_matches(|c| c == '[' || c == ']')
                    .parse::<IpAddr>()
                    .map_err(|_| "expected an IPv4 or IPv6 address".to_string())
            })?;
        for (key, field) in [
            ("default_user", &mut s.default_user),
            ("default_pass", &mut s.default_pass),
            ("default_vhost", &mut s.default_vhost),
        ] {
            if let Some(v) = typed(e, file, key, non_empty)? {
                *field = v;
            }
        }
        if let Some(v) = typed(e, file, "heartbeat", |v| {
            v.parse::<u16>()
                .map_err(|_| "expected whole seconds between 0 and 65535".to_string())
        })? {
            s.heartbeat = v;
        }
        if let Some(v) = typed(e, file, "frame_max", |v| {
            // AMQP 0-9-1 requires frame_max >= 4096 (frame-min-size); 0 means "no limit".
            match v.parse::<u32>() {
                Ok(n) if n == 0 || n >= 4096 => Ok(n),
                Ok(_) => Err("must be 0 (unlimited) or at least 4096".to_string()),
                Err(_) => Err("expected a whole number of bytes".to_string()),
            }
        })? {
            s.frame_max = v;
        }
        if let Some(v) = typed(e, file, "channel_max", |v| {
            v.parse::<u16>()
                .map_err(|_| "expected a whole number between 0 and 65535".to_string())
        })? {
            s.channel_max = v;
        }

        // RabbitMQ ignores the absolute watermark when a relative one is also set; the same
        // precedence is applied to the disk limit for consistency.
        let mem_abs = typed(
            e,
            file,
            "vm_memory_high_watermark.absolute",
            parse_information_unit,
        )?;
        let mem_rel = typed(e, file, "vm_memory_high_watermark.relative", parse_fraction)?;
        s.vm_memory_high_watermark = match (mem_rel, mem_abs) {
            (Some(r), _) => MemoryWatermark::Relative(r),
            (None, Some(a)) => MemoryWatermark::Absolute(a),
            (None, None) => s.vm_memory_high_watermark,
        };
        let disk_abs = typed(e, file, "disk_free_limit.absolute", parse_information_unit)?;
        let disk_rel = typed(e, file, "disk_free_limit.relative", |v| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| "expected a non-negative number (multiple of total RAM)".to_string())
        })?;
        s.disk_free_limit = match (disk_rel, disk_abs) {
            (Some(r), _) => DiskFreeLimit::MemRelative(r),
            (None, Some(a)) => DiskFreeLimit::Absolute(a),
            (None, None) => s.disk_free_limit,
        };

        if let Some(v) = typed(e, file, "log.console.level", |v| {
            let l = v.to_ascii_lowercase();
            if LOG_LEVELS.contains(&l.as_str()) {
                Ok(l)
            } else {
                Err(format!("expected one of {}", LOG_LEVELS.join(", ")))
            }
        })? {
            s.log_console_level = v;
        }

        if let Some(v) = typed(e, file, "consumer_timeout", |v| match v {
            "false" | "0" => Ok(None),
            v => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| "expected milliseconds (a whole number), or 0/false for none".into()),
        })? {
            s.consumer_timeout_ms = v;
        }
        if let Some(v) = typed(e, file, "warren.message_store.fsync", parse_bool)? {
            s.message_store_fsync = v;
        }
        s.plugins_call_timeout_ms = typed(e, file, "plugins.call_timeout_ms", |v| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "expected a whole number of milliseconds, at least 1".to_string())
        })?;
        s.plugins_memory_limit_mb = typed(e, file, "plugins.memory_limit_mb", |v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| "expected a whole number of MiB between 1 and 4096".to_string())
        })?;
        let mut backends: Vec<(u32, String)> = Vec::new();
        for (key, (_, v)) in entries.range("auth_backends.".to_string()..) {
            let Some(n) = key.strip_prefix("auth_backends.") else {
                break;
            };
            let n = n.parse::<u32>().map_err(|_| {
                invalid(
                    key,
                    "the key must be auth_backends.N with N a number".into(),
                )
            })?;
            let name = non_empty(v).map_err(|r| invalid(key, r))?;
            backends.push((n, name));
        }
        backends.sort();
        s.auth_backends = backends.into_iter().map(|(_, v)| v).collect();

        s.loopback_users = loopback_users(&entries, &invalid)?;
        s.raw = entries;
        s.file = file.to_path_buf();
        Ok(s)
    }

    /// Refuses a key neither the node nor any available plugin reads (as RabbitMQ refuses to
    /// boot on a key its schema does not know), so that a typo never goes unnoticed.
    /// `plugin_reads` answers for the plugins' declared keys.
    pub fn check_keys(&self, plugin_reads: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        for (key, (line, _)) in &self.raw {
            let known = NODE_KEYS.iter().any(|p| key_matches(p, key)) || plugin_reads(key);
            if !known {
                return Err(ConfigError::UnknownKey {
                    file: self.file.clone(),
                    line: *line,
                    key: key.clone(),
                });
            }
        }
        Ok(())
    }

    /// A raw value, for keys the node does not type (plugins' keys).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw.get(key).map(|(_, v)| v.as_str())
    }

    /// Whether `user` may connect only from loopback.
    pub fn is_loopback_user(&self, user: &str) -> bool {
        self.loopback_users.iter().any(|u| u == user)
    }
}

/// RabbitMQ's rule: `loopback_users = none` empties the list; otherwise, if any
/// `loopback_users.<user> = true|false` lines exist, the list is exactly the users set to
/// true (so `loopback_users.guest = false` lets guest in from anywhere); with neither, the
/// default `[guest]` stays.
fn loopback_users(
    entries: &BTreeMap<String, (usize, String)>,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<String>, ConfigError> {
    if let Some((_, v)) = entries.get("loopback_users") {
        if v.eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        return Err(invalid(
            "loopback_users",
            "expected 'none' (use loopback_users.<user> = true|false for single users)".into(),
        ));
    }
    let mut users = Vec::new();
    let mut any = false;
    for (key, (_, v)) in entries.range("loopback_users.".to_string()..) {
        let Some(user) = key.strip_prefix("loopback_users.") else {
            break;
        };
        any = true;
        if parse_bool(v).map_err(|r| invalid(key, r))? {
            users.push(user.to_string());
        }
    }
    if any {
        Ok(users)
    } else {
        Ok(vec!["guest".to_string()])
    }
}

/// The error for a bad value of `key`, naming the file and line where the value was set.
fn invalid_value(
    entries: &BTreeMap<String, (usize, String)>,
    file: &Path,
    key: &str,
    reason: String,
) -> ConfigError {
    let (line, value) = entries
        .get(key)
        .map(|(l, v)| (*l, v.clone()))
        .unwrap_or((0, String::new()));
    ConfigError::InvalidValue {
        file: file.to_path_buf(),
        line,
        key: key.to_string(),
        value,
        reason,
    }
}

/// Parses `key` with `parse` if it is set.
fn typed<T>(
    entries: &BTreeMap<String, (usize, String)>,
    file: &Path,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    match entries.get(key) {
        None => Ok(None),
        Some((_, v)) => parse(v)
            .map(Some)
            .map_err(|r| invalid_value(entries, file, key, r)),
    }
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return &line[..i];
        }
    }
    line
}

fn non_empty(v: &str) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(v.to_string())
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

fn parse_fraction(v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .ok_or_else(|| "expected a fraction such as 0.4".to_string())
}

fn parse_listener(v: &str) -> Result<TcpListenerSpec, String> {
    if let Ok(port) = parse_port(v) {
        return Ok(TcpListenerSpec { ip: None, port });
    }
    // "ip:port"; for IPv6 the port follows the last ':' (rabbitmq.conf writes `::1:5672`).
    let (ip, port) = v
        .rsplit_once(':')
        .ok_or_else(|| "expected a port or ip:port".to_string())?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let port = parse_port(port)?;
    Ok(TcpListenerSpec { ip: Some(ip), port })
}

/// Parses an amount of bytes with an optional unit, as RabbitMQ 4.x does: `k`/`kB`, `M`/`MB`,
/// `G`/`GB`, `T`/`TB`, `P`/`PB` are powers of 1000 (Kubernetes' reading, which RabbitMQ adopted
/// in 3.13), `Ki`/`KiB`, `Mi`/`MiB`, ... are powers of 1024. Units are case-insensitive.
pub fn parse_information_unit(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let digits_end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits_end);
    let err = || {
        format!(
            "expected a number of bytes with an optional unit (kB, MB, GB, KiB, MiB, GiB, ...), got {v:?}"
        )
    };
    if num.is_empty() {
        return Err(err());
    }
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "p" | "pb" => 1_000_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        "pi" | "pib" => 1 << 50,
        _ => return Err(err()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{v:?} is too large"))
}

// ---------------------------------------------------------------------------------------------
// The cookie
// ---------------------------------------------------------------------------------------------

/// The path of the cookie file: `~/.warren.cookie`.
pub fn cookie_path_from_vars(
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, ConfigError> {
    Ok(home_from_vars(vars)?.join(COOKIE_FILE_NAME))
}

/// The cookie: `WARREN_COOKIE` if set, else the trimmed contents of `~/.warren.cookie`, which
/// is created with a random 20-letter value and mode 0400 when missing (as Erlang does with
/// `.erlang.cookie`). A cookie file readable by group or others is refused, as Erlang does.
pub fn load_or_create_cookie() -> Result<String, ConfigError> {
    load_or_create_cookie_from_vars(&process_env)
}

/// The injectable core of [`load_or_create_cookie`].
pub fn load_or_create_cookie_from_vars(
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if let Some(c) = lookup(vars, ENV_COOKIE) {
        return Ok(c.trim().to_string());
    }
    let path = cookie_path_from_vars(vars)?;
    match read_cookie_file(&path) {
        Err(ConfigError::CookieRead { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            create_cookie_file(&path)?;
            read_cookie_file(&path)
        }
        other => other,
    }
}

fn read_cookie_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::CookieRead {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::CookiePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    let cookie = text.trim();
    if cookie.is_empty() {
        return Err(ConfigError::CookieEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(cookie.to_string())
}

/// Creates the cookie file atomically: the value is written to a private temporary file that
/// is then hard-linked into place, so two nodes starting at once never see a half-written
/// cookie, and the loser of the race simply reads the winner's.
fn create_cookie_file(path: &Path) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::CookieWrite {
        path: path.to_path_buf(),
        source,
    };
    let mut rng = rand::thread_rng();
    let cookie: String = (0..COOKIE_LEN)
        .map(|_| char::from(rng.gen_range(b'A'..=b'Z')))
        .collect();
    let tmp = path.with_file_name(format!(
        "{COOKIE_FILE_NAME}.tmp.{}.{}",
        std::process::id(),
        rng.r#gen::<u32>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        f.write_all(cookie.as_bytes())?;
        f.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    })();
    // The temporary name is ours alone; failing to remove it only leaves litter.
    let _ = fs::remove_file(&tmp);
    result.map_err(write_err)
}

// ---------------------------------------------------------------------------------------------
// node.json
// ---------------------------------------------------------------------------------------------

/// What a running node tells the CLI about itself: written to `data_dir/node.json` at start
/// and removed at clean stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRuntimeFile {
    pub node: String,
    pub pid: u32,
    pub amqp_port: u16,
    pub dist_port: u16,
    /// The one address the dist port listens on (`distribution.listener.interface`), for a
    /// CLI on this machine to connect to; absent when it listens on every interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dist_ip: Option<IpAddr>,
}

impl NodeRuntimeFile {
    /// The runtime file of the current process for `cfg`.
    pub fn for_config(cfg: &NodeConfig) -> Self {
        NodeRuntimeFile {
            node: cfg.node_name.clone(),
            pid: std::process::id(),
            amqp_port: cfg.amqp_port,
            dist_port: cfg.dist_port,
            dist_ip: cfg.settings.distribution_listener_interface,
        }
    }

    /// `data_dir/node.json`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(RUNTIME_FILE_NAME)
    }

    /// Writes the file atomically (temporary file + rename) so that a CLI never reads half of it.
    pub fn write(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let path = Self::path(data_dir);
        let io_err = |source| ConfigError::RuntimeFileIo {
            action: "write",
            path: path.clone(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(io_err)?;
        let tmp = data_dir.join(format!("{RUNTIME_FILE_NAME}.tmp.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| io_err(io::Error::other(e)))?;
        fs::write(&tmp, json).map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })
    }

    /// Reads the file; `Ok(None)` when it does not exist (the node is not running, or never
    /// wrote it).
    pub fn read(data_dir: &Path) -> Result<Option<Self>, ConfigError> {
        let path = Self::path(data_dir);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ConfigError::RuntimeFileIo {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| ConfigError::RuntimeFileParse { path, source })
    }

    /// Removes the file; a missing file is fine (stop is idempotent).
    pub fn remove(data_dir: &Path) -> Result<(), ConfigError> {
        let path = Self::path(data_dir);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ConfigError::RuntimeFileIo {
                action: "remove",
                path,
                source,
            }),
        }
    }

    /// Whether the recorded process still runs on this machine.
    pub fn process_alive(&self) -> bool {
        process_alive(self.pid)
    }
}

/// Whether process `pid` exists and is not a zombie. Zombies count as gone: a node started by
/// a test harness stays a zombie until its parent reaps it, and waiting for the reap would
/// deadlock a parent that runs `warrenctl stop` before waiting on its child.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_t <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 {
        // EPERM means it exists but belongs to someone else.
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !stat[i + 1..].trim_start().starts_with(['Z', 'X']),
            None => true,
        },
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// How a CLI reaches a node
// ---------------------------------------------------------------------------------------------

/// Port a CLI tries when nothing says otherwise (5672 + 20000).
pub const DEFAULT_DIST_PORT: u16 = DEFAULT_AMQP_PORT + DIST_PORT_OFFSET;

/// Where a CLI (`warrenctl -n NODE`, `warren-plugins -n NODE`) finds a node's control port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlTarget {
    /// Full node name, `name@host`.
    pub node: String,
    /// The host to connect to: the node's host part, or 127.0.0.1 when it names this machine.
    pub connect_host: String,
    pub dist_port: u16,
    /// `$WARREN_BASE/<node>`.
    pub data_dir: PathBuf,
    /// The node's `node.json`, if it exists, parses and names this node.
    pub runtime: Option<NodeRuntimeFile>,
    /// Whether the node's host is this machine (so its pid can be watched).
    pub local: bool,
}

impl CtlTarget {
    /// `host:port` for [`crate::ctl::protocol::client_connect`].
    pub fn addr(&self) -> String {
        format!("{}:{}", self.connect_host, self.dist_port)
    }
}

/// [`ctl_target_from_vars`] with the process environment.
pub fn ctl_target(node: Option<&str>) -> Result<CtlTarget, ConfigError> {
    ctl_target_from_vars(&process_env, node)
}

/// Resolves a node for a CLI: the name is completed with `@<short hostname>`; the dist port is
/// read from `$WARREN_BASE/<node>/node.json` if present, else `WARREN_DIST_PORT`, else
/// `WARREN_NODE_PORT + 20000`, else 25672. The config file is deliberately not read: a CLI must
/// keep working when it is broken (to stop the node, for one).
pub fn ctl_target_from_vars(
    vars: &dyn Fn(&str) -> Option<String>,
    node: Option<&str>,
) -> Result<CtlTarget, ConfigError> {
    let mut node = node_name_from_vars(vars, node)?;
    let base = base_dir_from_vars(vars)?;
    let mut data_dir = base.join(&node);
    // A stale or half-written file must not break the CLI: it falls back to the env rules.
    let mut runtime = NodeRuntimeFile::read(&data_dir)
        .ok()
        .flatten()
        .filter(|r| r.node == node);
    if runtime.is_none()
        && !data_dir.exists()
        && let Some((name, dir, found)) = local_alias(&base, &node)
    {
        // `test_rabbit_1@localhost` for the node that calls itself `test_rabbit_1@vm`:
        // one node, shown by its own name.
        node = name;
        data_dir = dir;
        runtime = found;
    }
    // The environment's ports are those of the environment's own node: another node's
    // (a peer named in join_cluster, say) must not be looked for there.
    let env_node =
        lookup(vars, ENV_NODENAME).and_then(|n| normalize_node_name(&n, &short_hostname()).ok());
    let env_is_this_node = env_node.as_deref().is_none_or(|n| same_node(n, &node));
    let dist_port = match &runtime {
        Some(r) => r.dist_port,
        None if !env_is_this_node => DEFAULT_DIST_PORT,
        None => match parse_port_env(vars, ENV_DIST_PORT)? {
            Some(p) => p,
            None => match parse_port_env(vars, ENV_NODE_PORT)? {
                Some(p) => default_dist_port(p)?,
                None => DEFAULT_DIST_PORT,
            },
        },
    };
    let host = node_host(&node);
    let local = is_local_host(host);
    // A local node whose dist port listens on one address only is reached there.
    let bound_ip = runtime
        .as_ref()
        .and_then(|r| r.dist_ip)
        .filter(|ip| !ip.is_unspecified());
    let connect_host = match bound_ip {
        Some(ip) if local => match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        },
        _ if local => "127.0.0.1".to_string(),
        _ => host.to_string(),
    };
    Ok(CtlTarget {
        node,
        connect_host,
        dist_port,
        data_dir,
        runtime,
        local,
    })
}

/// The local node that `node` (whose host part names this machine) designates under another
/// local host name: its real name, data directory and runtime file (if it runs). A running
/// one is preferred over a stopped one.
fn local_alias(base: &Path, node: &str) -> Option<(String, PathBuf, Option<NodeRuntimeFile>)> {
    let entries = std::fs::read_dir(base).ok()?;
    let mut stopped = None;
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(String::from) else {
            continue;
        };
        if name == node || !name.contains('@') || !same_node(&name, node) {
            continue;
        }
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let runtime = NodeRuntimeFile::read(&dir)
            .ok()
            .flatten()
            .filter(|r| r.node == name);
        if runtime.is_some() {
            return Some((name, dir, runtime));
        }
        stopped.get_or_insert((name, dir, None));
    }
    stopped
}

/// Whether two node names designate the same node: equal, or equal names on hosts that are
/// both this machine (`warren@localhost` and `warren@<hostname>`).
pub fn same_node(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.split_once('@'), b.split_once('@')) {
        (Some((na, ha)), Some((nb, hb))) => na == nb && is_local_host(ha) && is_local_host(hb),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/etc/warren.conf"))
    }

    #[test]
    fn units_follow_rabbitmq_4() {
        assert_eq!(parse_information_unit("1024"), Ok(1024));
        assert_eq!(parse_information_unit("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_information_unit("1024MB"), Ok(1_024_000_000));
        assert_eq!(parse_information_unit("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_information_unit("2Gi"), Ok(2 << 30));
        assert_eq!(parse_information_unit("50mb"), Ok(50_000_000));
        assert_eq!(parse_information_unit("3k"), Ok(3000));
        assert_eq!(parse_information_unit("4KiB"), Ok(4096));
        assert!(parse_information_unit("").is_err());
        assert!(parse_information_unit("GB").is_err());
        assert!(parse_information_unit("1.5GB").is_err());
        assert!(parse_information_unit("10 XB").is_err());
        assert!(parse_information_unit("99999999999PB").is_err());
    }

    #[test]
    fn defaults_when_file_is_empty() {
        let s = parse("# nothing\n\n").unwrap();
        assert_eq!(
            s,
            Settings {
                file: s.file.clone(),
                ..Settings::default()
            }
        );
        assert_eq!(s.heartbeat, 60);
        assert_eq!(s.frame_max, 131_072);
        assert_eq!(s.channel_max, 2047);
        assert_eq!(s.vm_memory_high_watermark, MemoryWatermark::Relative(0.6));
        assert_eq!(s.disk_free_limit, DiskFreeLimit::Absolute(50_000_000));
        assert_eq!(s.loopback_users, vec!["guest".to_string()]);
        assert_eq!(s.log_console_level, "info");
        assert_eq!(s.default_vhost, "/");
    }

    #[test]
    fn typed_keys_and_unknown_keys() {
        let s = parse(
            "listeners.tcp.default = 5673\n\
             default_user = admin   # trailing comment\n\
             default_pass = pa#ss\n\
             heartbeat = 30\n\
             frame_max = 8192\n\
             channel_max = 100\n\
             vm_memory_high_watermark.absolute = 1GB\n\
             disk_free_limit.absolute = 512MiB\n\
             log.console.level = DEBUG\n\
             management.tcp.port = 15673\n",
        )
        .unwrap();
        assert_eq!(
            s.listeners_tcp_default,
            Some(TcpListenerSpec {
                ip: None,
                port: 5673
            })
        );
        assert_eq!(s.default_user, "admin");
        assert_eq!(s.default_pass, "pa#ss");
        assert_eq!(s.heartbeat, 30);
        assert_eq!(s.frame_max, 8192);
        assert_eq!(s.channel_max, 100);
        assert_eq!(
            s.vm_memory_high_watermark,
            MemoryWatermark::Absolute(1_000_000_000)
        );
        assert_eq!(s.disk_free_limit, DiskFreeLimit::Absolute(512 << 20));
        assert_eq!(s.log_console_level, "debug");
        assert_eq!(s.get("management.tcp.port"), Some("15673"));
        assert_eq!(s.get("default_user"), Some("admin"));
    }

    #[test]
    fn keys_nobody_reads_are_refused_with_their_line() {
        let s = parse("heartbeat = 10\nheartbeet = 5\n").unwrap();
        let err = s.check_keys(&|_| false).unwrap_err().to_string();
        assert!(err.contains(":2: unknown key 'heartbeet'"), "{err}");
        let s = parse(
            "prometheus.tcp.port = 15693\nloopback_users.guest = false\nauth_backends.1 = internal\n",
        )
        .unwrap();
        s.check_keys(&|k| k == "prometheus.tcp.port").unwrap();
        let err = s.check_keys(&|_| false).unwrap_err().to_string();
        assert!(
            err.contains(":1: unknown key 'prometheus.tcp.port'"),
            "{err}"
        );
        // A prefix covers the keys under it, not the prefix itself.
        let s = parse("auth_backends = internal\n").unwrap();
        assert!(s.check_keys(&|_| false).is_err());
    }

    #[test]
    fn bad_values_of_node_keys_are_refused() {
        for text in [
            "consumer_timeout = 30s\n",
            "warren.message_store.fsync = maybe\n",
            "plugins.call_timeout_ms = 0\n",
            "plugins.memory_limit_mb = lots\n",
            "auth_backends.first = internal\n",
        ] {
            let err = parse(text).unwrap_err().to_string();
            let key = text.split(' ').next().unwrap();
            assert!(err.contains(&format!("for key '{key}'")), "{text}: {err}");
        }
        let s = parse(
            "consumer_timeout = false\nauth_backends.10 = internal\nauth_backends.2 = oauth2\n",
        )
        .unwrap();
        assert_eq!(s.consumer_timeout_ms, None);
        assert_eq!(s.auth_backends, vec!["oauth2", "internal"]);
        assert!(s.message_store_fsync);
        let s = parse("consumer_timeout = 5000\nwarren.message_store.fsync = false\n").unwrap();
        assert_eq!(s.consumer_timeout_ms, Some(5000));
        assert!(!s.message_store_fsync);
    }

    #[test]
    fn relative_watermark_wins_over_absolute() {
        let s = parse(
            "vm_memory_high_watermark.absolute = 2GB\nvm_memory_high_watermark.relative = 0.6\n",
        )
        .unwrap();
        assert_eq!(s.vm_memory_high_watermark, MemoryWatermark::Relative(0.6));
        assert_eq!(s.vm_memory_high_watermark.limit_bytes(1000), 600);
        let s = parse("disk_free_limit.relative = 1.5\n").unwrap();
        assert_eq!(s.disk_free_limit, DiskFreeLimit::MemRelative(1.5));
    }

    #[test]
    fn every_accepted_log_level_means_a_tracing_level() {
        for level in LOG_LEVELS {
            let t = tracing_level(level);
            assert!(
                tracing_subscriber::EnvFilter::try_new(format!("warren={t}")).is_ok(),
                "{level} -> {t}"
            );
        }
        assert_eq!(tracing_level("warning"), "warn");
        assert_eq!(tracing_level("notice"), "info");
        assert_eq!(tracing_level("critical"), "error");
        assert_eq!(tracing_level("none"), "off");
    }

    #[test]
    fn distribution_listener_interface() {
        let s = parse("distribution.listener.interface = 127.0.0.1\n").unwrap();
        assert_eq!(
            s.distribution_listener_interface,
            Some("127.0.0.1".parse().unwrap())
        );
        let s = parse("distribution.listener.interface = [::1]\n").unwrap();
        assert_eq!(
            s.distribution_listener_interface,
            Some("::1".parse().unwrap())
        );
        let e = parse("distribution.listener.interface = everywhere\n").unwrap_err();
        assert!(
            e.to_string().contains("distribution.listener.interface"),
            "{e}"
        );
        assert_eq!(parse("").unwrap().distribution_listener_interface, None);
    }

    #[test]
    fn listener_with_address() {
        let s = parse("listeners.tcp.default = 127.0.0.1:5680\n").unwrap();
        let l = s.listeners_tcp_default.unwrap();
        assert_eq!(l.port, 5680);
        assert_eq!(l.ip, Some("127.0.0.1".parse().unwrap()));
        let s = parse("listeners.tcp.default = ::1:5681\n").unwrap();
        assert_eq!(s.listeners_tcp_default.unwrap().port, 5681);
    }

    #[test]
    fn loopback_users_rules() {
        assert!(
            parse("loopback_users = none\n")
                .unwrap()
                .loopback_users
                .is_empty()
        );
        let s = parse("loopback_users.guest = false\n").unwrap();
        assert!(!s.is_loopback_user("guest"));
        let s = parse("loopback_users.guest = false\nloopback_users.bob = true\n").unwrap();
        assert_eq!(s.loopback_users, vec!["bob".to_string()]);
        assert!(parse("loopback_users.bob = maybe\n").is_err());
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let err = parse("# c\nheartbeat = 10\nframe_max = lots\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/warren.conf:3"), "{msg}");
        assert!(msg.contains("frame_max"), "{msg}");
        assert!(msg.contains("lots"), "{msg}");
        let err = parse("vm_memory_high_watermark.absolute = 1XB\n").unwrap_err();
        assert!(matches!(err, ConfigError::InvalidValue { line: 1, .. }));
        let err = parse("\n\njust words\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }));
        assert!(parse("log.console.level = chatty\n").is_err());
    }

    #[test]
    fn node_name_defaulting() {
        let host = short_hostname();
        assert!(!host.contains('.'));
        let v = vars(&[("HOME", "/home/u")]);
        assert_eq!(
            node_name_from_vars(&v, None).unwrap(),
            format!("warren@{host}")
        );
        let v = vars(&[("HOME", "/home/u"), ("WARREN_NODENAME", "hare")]);
        assert_eq!(
            node_name_from_vars(&v, None).unwrap(),
            format!("hare@{host}")
        );
        assert_eq!(
            node_name_from_vars(&v, Some("x@box")).unwrap(),
            "x@box".to_string()
        );
        assert!(normalize_node_name("a@", "h").is_err());
        assert!(normalize_node_name("@h", "h").is_err());
        assert!(normalize_node_name("a/b", "h").is_err());
        assert!(normalize_node_name("a@b@c", "h").is_err());
    }

    #[test]
    fn node_config_defaults_and_env_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let v = vars(&[("HOME", &home)]);
        let c = NodeConfig::from_vars(&v, Some("n1@h")).unwrap();
        assert_eq!(c.node_name, "n1@h");
        assert_eq!(c.amqp_port, 5672);
        assert_eq!(c.dist_port, 25672);
        assert_eq!(c.base_dir, dir.path().join(".warren"));
        assert_eq!(c.data_dir, dir.path().join(".warren/n1@h"));
        assert_eq!(c.config_file, c.data_dir.join("warren.conf"));
        assert_eq!(c.enabled_plugins_file, c.data_dir.join("enabled_plugins"));
        assert_eq!(c.settings, Settings::default());

        // The config file's listener port is used when the env says nothing ...
        let base = dir.path().join("base");
        fs::create_dir_all(base.join("n1@h")).unwrap();
        fs::write(
            base.join("n1@h/warren.conf"),
            "listeners.tcp.default = 6000\n",
        )
        .unwrap();
        let base_s = base.to_str().unwrap().to_string();
        let v = vars(&[("HOME", &home), ("WARREN_BASE", &base_s)]);
        let c = NodeConfig::from_vars(&v, Some("n1@h")).unwrap();
        assert_eq!((c.amqp_port, c.dist_port), (6000, 26000));

        // ... but the env wins, and an explicit dist port wins over the +20000 rule.
        let v = vars(&[
            ("HOME", &home),
            ("WARREN_BASE", &base_s),
            ("WARREN_NODE_PORT", "5700"),
        ]);
        let c = NodeConfig::from_vars(&v, Some("n1@h")).unwrap();
        assert_eq!((c.amqp_port, c.dist_port), (5700, 25700));
        let v = vars(&[
            ("HOME", &home),
            ("WARREN_BASE", &base_s),
            ("WARREN_NODE_PORT", "5700"),
            ("WARREN_DIST_PORT", "31000"),
            ("WARREN_CONFIG_FILE", "/nonexistent/x.conf"),
            ("WARREN_ENABLED_PLUGINS_FILE", "/tmp/ep"),
        ]);
        let c = NodeConfig::from_vars(&v, Some("n1@h")).unwrap();
        assert_eq!((c.amqp_port, c.dist_port), (5700, 31000));
        assert_eq!(c.config_file, PathBuf::from("/nonexistent/x.conf"));
        assert_eq!(c.enabled_plugins_file, PathBuf::from("/tmp/ep"));

        let v = vars(&[("HOME", &home), ("WARREN_NODE_PORT", "seven")]);
        assert!(matches!(
            NodeConfig::from_vars(&v, None),
            Err(ConfigError::InvalidEnv { .. })
        ));
        let v = vars(&[("HOME", &home), ("WARREN_NODE_PORT", "50000")]);
        assert!(matches!(
            NodeConfig::from_vars(&v, None),
            Err(ConfigError::DistPortOverflow { .. })
        ));
        assert!(matches!(
            NodeConfig::from_vars(&vars(&[]), None),
            Err(ConfigError::NoHome)
        ));
    }

    #[test]
    fn cookie_is_created_once_with_mode_0400() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let v = vars(&[("HOME", &home)]);
        let c1 = load_or_create_cookie_from_vars(&v).unwrap();
        assert_eq!(c1.len(), 20);
        assert!(c1.chars().all(|c| c.is_ascii_uppercase()));
        let path = dir.path().join(".warren.cookie");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(load_or_create_cookie_from_vars(&v).unwrap(), c1);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        // The environment wins over the file.
        let v2 = vars(&[("HOME", &home), ("WARREN_COOKIE", " SECRET ")]);
        assert_eq!(load_or_create_cookie_from_vars(&v2).unwrap(), "SECRET");
    }

    #[test]
    fn cookie_with_loose_permissions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".warren.cookie");
        fs::write(&path, "ABC\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let err = load_or_create_cookie_from_vars(&vars(&[("HOME", &home)])).unwrap_err();
        assert!(matches!(err, ConfigError::CookiePermissions { .. }));
        assert!(err.to_string().contains("owner only"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_or_create_cookie_from_vars(&vars(&[("HOME", &home)])).unwrap(),
            "ABC"
        );
    }

    #[test]
    fn runtime_file_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("n@h");
        assert_eq!(NodeRuntimeFile::read(&data).unwrap(), None);
        let f = NodeRuntimeFile {
            node: "n@h".into(),
            pid: std::process::id(),
            amqp_port: 5672,
            dist_port: 25672,
            dist_ip: Some("127.0.0.2".parse().unwrap()),
        };
        f.write(&data).unwrap();
        assert_eq!(NodeRuntimeFile::read(&data).unwrap(), Some(f.clone()));
        assert!(f.process_alive());
        NodeRuntimeFile::remove(&data).unwrap();
        NodeRuntimeFile::remove(&data).unwrap();
        assert_eq!(NodeRuntimeFile::read(&data).unwrap(), None);
        fs::write(NodeRuntimeFile::path(&data), "{not json").unwrap();
        assert!(matches!(
            NodeRuntimeFile::read(&data),
            Err(ConfigError::RuntimeFileParse { .. })
        ));
    }

    #[test]
    fn ctl_target_port_rules() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_str().unwrap().to_string();
        let host = short_hostname();
        let v = vars(&[("WARREN_BASE", &base)]);
        let t = ctl_target_from_vars(&v, Some("a")).unwrap();
        assert_eq!(t.node, format!("a@{host}"));
        assert_eq!(t.addr(), "127.0.0.1:25672");
        assert!(t.local);
        let v = vars(&[("WARREN_BASE", &base), ("WARREN_NODE_PORT", "5680")]);
        assert_eq!(
            ctl_target_from_vars(&v, Some("a")).unwrap().dist_port,
            25680
        );
        let v = vars(&[
            ("WARREN_BASE", &base),
            ("WARREN_NODE_PORT", "5680"),
            ("WARREN_DIST_PORT", "30001"),
        ]);
        assert_eq!(
            ctl_target_from_vars(&v, Some("a")).unwrap().dist_port,
            30001
        );
        // node.json wins over the environment.
        let rt = NodeRuntimeFile {
            node: format!("a@{host}"),
            pid: 1,
            amqp_port: 7000,
            dist_port: 27000,
            dist_ip: None,
        };
        rt.write(&dir.path().join(format!("a@{host}"))).unwrap();
        let t = ctl_target_from_vars(&v, Some("a")).unwrap();
        assert_eq!(t.dist_port, 27000);
        assert_eq!(t.addr(), "127.0.0.1:27000");
        assert_eq!(t.runtime, Some(rt.clone()));
        // A dist port bound to one address is reached there.
        let one = NodeRuntimeFile {
            dist_ip: Some("127.0.0.3".parse().unwrap()),
            ..rt.clone()
        };
        one.write(&dir.path().join(format!("a@{host}"))).unwrap();
        let t = ctl_target_from_vars(&v, Some("a")).unwrap();
        assert_eq!(t.addr(), "127.0.0.3:27000");
        rt.write(&dir.path().join(format!("a@{host}"))).unwrap();
        let t = ctl_target_from_vars(&v, Some("b@elsewhere.example")).unwrap();
        assert_eq!(t.addr(), "elsewhere.example:30001");
        assert!(!t.local);
        assert!(same_node(&format!("a@{host}"), "a@localhost"));
        assert!(!same_node("a@localhost", "b@localhost"));
        assert!(!same_node("a@x.example", "a@y.example"));
    }
}
