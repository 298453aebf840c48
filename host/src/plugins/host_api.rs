//! What a plugin may ask of its node: logging, its own config keys, users and
//! permissions, statistics. Each plugin store carries one [`PluginCtx`].

use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::bindings::auth::warren::plugin::users;
use super::bindings::exchange::warren::plugin::{config, log};
use super::bindings::http::warren::plugin::stats;
use super::manifest::Manifest;
use super::runtime::State;
use crate::config::Settings;

/// The broker-side answers to plugins' questions (implemented by the broker).
pub trait HostServices: Send + Sync {
    fn lookup_user(&self, name: &str) -> Option<users::User>;
    fn vhost_exists(&self, vhost: &str) -> bool;
    fn user_permissions(&self, user: &str, vhost: &str) -> Option<users::Permissions>;
    fn user_topic_permissions(&self, user: &str, vhost: &str) -> Vec<users::TopicPermissions>;
    fn node_stats(&self) -> stats::NodeStats;
    fn queue_stats(&self) -> Vec<stats::QueueStats>;
    fn cluster_name(&self) -> String;
}

/// Set once the broker exists; plugins load before it so that metadata replay
/// at boot can already create plugin exchanges.
pub type ServicesSlot = Arc<OnceLock<Weak<dyn HostServices>>>;

/// One plugin's view of its node.
pub struct PluginCtx {
    pub name: String,
    pub manifest: Manifest,
    pub settings: Arc<Settings>,
    pub services: ServicesSlot,
}

impl PluginCtx {
    fn services(&self) -> Option<Arc<dyn HostServices>> {
        self.services.get().and_then(Weak::upgrade)
    }

    fn config_value(&self, key: &str) -> Option<String> {
        if !self.manifest.may_read(key) {
            return None;
        }
        let value = self.settings.get(key)?.to_string();
        if self.manifest.is_file_key(key) {
            return match std::fs::read_to_string(&value) {
                Ok(text) => Some(text),
                Err(e) => {
                    tracing::warn!(plugin = %self.name, key, path = %value, error = %e, "cannot read the file a plugin config key names");
                    None
                }
            };
        }
        Some(value)
    }
}

impl log::Host for State {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &self.ctx.name;
        match level {
            log::Level::Error => tracing::error!(plugin = %plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin = %plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin = %plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin = %plugin, "{message}"),
        }
    }
}

impl config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.ctx.config_value(&key)
    }

    fn with_prefix(&mut self, prefix: String) -> Vec<(String, String)> {
        let keys: Vec<String> = self
            .ctx
            .settings
            .raw
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.ctx.config_value(&k).map(|v| (k, v)))
            .collect()
    }
}

impl users::Host for State {
    fn lookup(&mut self, name: String) -> Option<users::User> {
        self.ctx.services()?.lookup_user(&name)
    }

    fn vhost_exists(&mut self, vhost: String) -> bool {
        self.ctx.services().is_some_and(|s| s.vhost_exists(&vhost))
    }

    fn user_permissions(&mut self, user: String, vhost: String) -> Option<users::Permissions> {
        self.ctx.services()?.user_permissions(&user, &vhost)
    }

    fn user_topic_permissions(
        &mut self,
        user: String,
        vhost: String,
    ) -> Vec<users::TopicPermissions> {
        self.ctx
            .services()
            .map(|s| s.user_topic_permissions(&user, &vhost))
            .unwrap_or_default()
    }
}

impl stats::Host for State {
    fn node(&mut self) -> stats::NodeStats {
        match self.ctx.services() {
            Some(s) => s.node_stats(),
            None => stats::NodeStats {
                node: String::new(),
                connections: 0,
                channels: 0,
                queues: 0,
                exchanges: 0,
                consumers: 0,
                messages_published_total: 0,
                messages_delivered_total: 0,
                messages_acknowledged_total: 0,
                messages_confirmed_total: 0,
                messages_unroutable_total: 0,
                memory_used_bytes: 0,
                uptime_seconds: 0,
            },
        }
    }

    fn queues(&mut self) -> Vec<stats::QueueStats> {
        self.ctx
            .services()
            .map(|s| s.queue_stats())
            .unwrap_or_default()
    }

    fn cluster_name(&mut self) -> String {
        self.ctx
            .services()
            .map(|s| s.cluster_name())
            .unwrap_or_default()
    }
}

/// A plugin's stdout and stderr: lines go to the node's log, tagged with the
/// plugin's name (a panicking Rust plugin or a Python traceback shows up there).
#[derive(Clone)]
pub struct LogStream {
    plugin: Arc<str>,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl LogStream {
    pub fn new(plugin: String) -> LogStream {
        LogStream {
            plugin: plugin.into(),
            pending: Arc::default(),
        }
    }

    fn emit_lines(&self, flush_all: bool) {
        let mut buf = self.pending.lock();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            tracing::warn!(plugin = %self.plugin, "plugin output: {text}");
        }
        // A runaway writer must not grow the host's memory without bound.
        if flush_all || buf.len() > 16 * 1024 {
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(&buf).into_owned();
                tracing::warn!(plugin = %self.plugin, "plugin output: {text}");
            }
            buf.clear();
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.pending.lock().extend_from_slice(&bytes);
        self.emit_lines(false);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if Arc::strong_count(&self.pending) == 1 {
            self.emit_lines(true);
        }
    }
}
