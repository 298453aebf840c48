//! The plugin host: exchange types, auth backends and HTTP endpoints as
//! WebAssembly components, enabled per node.
//!
//! - `manifest` / `catalog`: what plugins exist (built in, or in `WARREN_PLUGINS_DIR`).
//! - `enabled_file`: which ones this node enables (`enabled_plugins`).
//! - `runtime`: the wasmtime engine, linker, limits and compiled-component cache.
//! - `host_api`: what a plugin may ask of its node.
//! - `exchange` / `auth` / `http`: one module per kind of plugin.

pub mod auth;
pub mod bindings;
pub mod catalog;
pub mod enabled_file;
pub mod exchange;
pub mod fields;
pub mod host_api;
pub mod http;
pub mod manifest;
pub mod runtime;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use self::auth::WasmAuth;
use self::catalog::Available;
use self::exchange::WasmExchangeType;
use self::host_api::{HostServices, PluginCtx, ServicesSlot};
use self::http::WasmHttp;
use self::manifest::Kind;
use self::runtime::{Limits, Runtime};
use crate::config::Settings;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    NotAComponent(String),
    #[error("{0}")]
    WrongWorld(String),
    #[error("{0}")]
    BadManifest(String),
    #[error("{0}")]
    BadConfig(String),
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Call(String),
    #[error("{0}")]
    Runtime(String),
}

impl PluginError {
    /// The CLI exit code for this failure (sysexits).
    pub fn exit_code(&self) -> i32 {
        match self {
            PluginError::Unknown(_) => 64,
            PluginError::NotAComponent(_)
            | PluginError::WrongWorld(_)
            | PluginError::BadManifest(_)
            | PluginError::BadConfig(_)
            | PluginError::InUse(_) => 65,
            _ => 70,
        }
    }
}

/// Changes the broker must follow when exchange types come and go.
pub trait ExchangeTypeHooks: Send + Sync {
    /// Live exchanges of a type that block disabling it (user-declared ones).
    fn exchanges_blocking_disable(&self, exchange_type: &str) -> Vec<String>;
    /// Exchanges of these types get (or lose) their routers.
    fn exchange_types_changed(&self, types: &[String]);
}

/// A loaded, running plugin.
enum Loaded {
    Exchange(Arc<WasmExchangeType>),
    Auth(Arc<WasmAuth>),
    Http(Arc<WasmHttp>),
}

/// One row of `warren-plugins list`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: String,
    pub description: String,
    pub provides: String,
    pub explicit: bool,
    pub implicit: bool,
    pub running: bool,
}

pub struct PluginHost {
    runtime: Arc<Runtime>,
    settings: Arc<Settings>,
    services: ServicesSlot,
    hooks: OnceLock<Weak<dyn ExchangeTypeHooks>>,
    plugins_dir: Option<PathBuf>,
    enabled_file: PathBuf,
    shards: usize,
    /// Explicitly enabled plugin names (the file's contents).
    explicit: Mutex<Vec<String>>,
    loaded: RwLock<BTreeMap<String, Loaded>>,
    exchange_types: RwLock<HashMap<String, Arc<WasmExchangeType>>>,
    /// Serialises enable/disable so two CLI calls never interleave.
    changing: tokio::sync::Mutex<()>,
}

/// Node config keys of the plugin host itself.
pub fn limits_from(settings: &Settings) -> Limits {
    let mut l = Limits::default();
    if let Some(ms) = settings.plugins_call_timeout_ms {
        l.call_timeout = Duration::from_millis(ms);
    }
    if let Some(mb) = settings.plugins_memory_limit_mb {
        l.memory_bytes = mb << 20;
    }
    l
}

impl PluginHost {
    /// Sets up the runtime and catalog without loading anything.
    pub fn new(
        data_dir: &std::path::Path,
        enabled_file: PathBuf,
        plugins_dir: Option<PathBuf>,
        settings: Arc<Settings>,
    ) -> Result<Arc<PluginHost>, PluginError> {
        let runtime = Runtime::new(data_dir.join("plugin-cache"), limits_from(&settings))?;
        let shards = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        Ok(Arc::new(PluginHost {
            runtime,
            settings,
            services: Arc::new(OnceLock::new()),
            hooks: OnceLock::new(),
            plugins_dir,
            enabled_file,
            shards,
            explicit: Mutex::new(Vec::new()),
            loaded: RwLock::new(BTreeMap::new()),
            exchange_types: RwLock::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn set_services(
        &self,
        services: Weak<dyn HostServices>,
        hooks: Weak<dyn ExchangeTypeHooks>,
    ) {
        let _ = self.services.set(services);
        let _ = self.hooks.set(hooks);
    }

    fn hooks(&self) -> Option<Arc<dyn ExchangeTypeHooks>> {
        self.hooks.get().and_then(Weak::upgrade)
    }

    pub fn catalog(&self) -> BTreeMap<String, Available> {
        let (found, problems) = catalog::scan(self.plugins_dir.as_deref());
        for p in problems {
            tracing::warn!(error = %p, "skipping plugin");
        }
        found
    }

    /// The explicitly enabled plugins: the file's list, or the defaults when
    /// the node has no file yet.
    pub fn configured(&self) -> Result<Vec<String>, PluginError> {
        configured(&self.enabled_file, &self.catalog())
    }

    /// Loads the node's enabled plugins at start. A plugin that fails to load
    /// is logged and skipped: the node still starts and serves.
    pub fn load_enabled(&self) -> Result<(), PluginError> {
        let catalog = self.catalog();
        let explicit = configured(&self.enabled_file, &catalog)?;
        let wanted = closure(&explicit, &catalog);
        for name in wanted {
            match catalog.get(&name) {
                Some(a) => {
                    if let Err(e) = self.load(a) {
                        tracing::error!(plugin = %name, error = %e, "plugin failed to load; continuing without it");
                    }
                }
                None => {
                    tracing::error!(plugin = %name, "enabled plugin not found; continuing without it")
                }
            }
        }
        *self.explicit.lock() = explicit;
        Ok(())
    }

    /// Compiles (or loads from cache) and instantiates one plugin.
    fn prepare(&self, a: &Available) -> Result<Loaded, PluginError> {
        let m = &a.manifest;
        let wasm = a.wasm()?;
        let component = self.runtime.component(&m.name, &wasm)?;
        let ctx = Arc::new(PluginCtx {
            name: m.name.clone(),
            manifest: m.clone(),
            settings: self.settings.clone(),
            services: self.services.clone(),
        });
        Ok(match m.kind {
            Kind::ExchangeType => Loaded::Exchange(Arc::new(WasmExchangeType::load(
                &self.runtime,
                ctx,
                &component,
                self.shards,
            )?)),
            Kind::AuthBackend => {
                Loaded::Auth(Arc::new(WasmAuth::load(&self.runtime, ctx, &component)?))
            }
            Kind::Http => Loaded::Http(WasmHttp::load(&self.runtime, ctx, &component)?),
        })
    }

    fn load(&self, a: &Available) -> Result<(), PluginError> {
        if self.loaded.read().contains_key(&a.manifest.name) {
            return Ok(());
        }
        let loaded = self.prepare(a)?;
        self.install(&a.manifest.name, loaded);
        Ok(())
    }

    fn install(&self, name: &str, loaded: Loaded) {
        match &loaded {
            Loaded::Exchange(x) => {
                use crate::routing::exchange_type::ExchangeType;
                self.exchange_types
                    .write()
                    .insert(x.name().to_string(), x.clone());
            }
            Loaded::Http(h) => {
                let h = h.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = h.start().await {
                            tracing::error!(error = %e, "plugin listener failed");
                        }
                    });
                }
            }
            Loaded::Auth(_) => {}
        }
        self.loaded.write().insert(name.to_string(), loaded);
    }

    /// Checks that a plugin loads (a component of the right world), without
    /// running it: `warren-plugins enable` on a stopped node. Compiling here
    /// also fills the node's cache.
    pub fn validate(&self, names: &[String]) -> Result<(), PluginError> {
        let catalog = self.catalog();
        for name in closure(names, &catalog) {
            let a = catalog
                .get(&name)
                .ok_or_else(|| unknown(std::slice::from_ref(&name)))?;
            self.prepare(a)?;
        }
        Ok(())
    }

    pub fn exchange_type(&self, name: &str) -> Option<Arc<WasmExchangeType>> {
        self.exchange_types.read().get(name).cloned()
    }

    /// The enabled auth backends in the order the node's config asks
    /// (`auth_backends.1 = internal`, ...), else in name order.
    pub fn auth_backends(&self) -> Vec<Arc<WasmAuth>> {
        let loaded = self.loaded.read();
        let all: Vec<Arc<WasmAuth>> = loaded
            .values()
            .filter_map(|l| match l {
                Loaded::Auth(a) => Some(a.clone()),
                _ => None,
            })
            .collect();
        let order: Vec<&String> = self.settings.auth_backends.iter().collect();
        if order.is_empty() {
            // The internal backend first, as RabbitMQ's default chain.
            let mut all = all;
            all.sort_by_key(|a| (a.backend != "internal", a.backend.clone()));
            return all;
        }
        order
            .into_iter()
            .filter_map(|want| {
                let want = want.trim().trim_start_matches("rabbit_auth_backend_");
                all.iter()
                    .find(|a| a.backend == want || a.plugin == want)
                    .cloned()
            })
            .collect()
    }

    pub fn list(&self) -> Vec<PluginStatus> {
        let catalog = self.catalog();
        let explicit = self.explicit.lock().clone();
        let implied = closure(&explicit, &catalog);
        let loaded = self.loaded.read();
        catalog
            .values()
            .map(|a| {
                let m = &a.manifest;
                PluginStatus {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    description: m.description.clone(),
                    provides: m.provides(),
                    explicit: explicit.contains(&m.name),
                    implicit: !explicit.contains(&m.name) && implied.contains(&m.name),
                    running: loaded.contains_key(&m.name),
                }
            })
            .collect()
    }

    /// Enables plugins on this running node at once (and in its file).
    pub async fn enable(&self, names: &[String]) -> Result<Vec<String>, PluginError> {
        let _serial = self.changing.lock().await;
        let catalog = self.catalog();
        check_known(names, &catalog)?;
        let mut explicit = self.explicit.lock().clone();
        for n in names {
            if !explicit.contains(n) {
                explicit.push(n.clone());
            }
        }
        let wanted = closure(&explicit, &catalog);
        // Load everything new before changing anything, so a bad plugin
        // leaves the node exactly as it was.
        let mut prepared = Vec::new();
        for name in &wanted {
            if self.loaded.read().contains_key(name) {
                continue;
            }
            let a = &catalog[name];
            if let Some(t) = &a.manifest.exchange_type
                && let Some(existing) = self.exchange_type(t)
            {
                return Err(PluginError::InUse(format!(
                    "exchange type '{t}' is already provided by plugin '{}'",
                    existing.plugin()
                )));
            }
            prepared.push((name.clone(), self.prepare(a)?));
        }
        enabled_file::write(&self.enabled_file, &explicit)?;
        *self.explicit.lock() = explicit;
        let mut new_types = Vec::new();
        let mut started = Vec::new();
        for (name, loaded) in prepared {
            if let Loaded::Exchange(x) = &loaded {
                use crate::routing::exchange_type::ExchangeType;
                new_types.push(x.name().to_string());
            }
            if let Loaded::Http(h) = &loaded {
                h.start().await?;
                self.loaded.write().insert(name.clone(), loaded);
            } else {
                self.install(&name, loaded);
            }
            started.push(name);
        }
        if !new_types.is_empty()
            && let Some(h) = self.hooks()
        {
            h.exchange_types_changed(&new_types);
        }
        Ok(started)
    }

    /// Disables plugins on this running node at once (and in its file).
    pub async fn disable(&self, names: &[String]) -> Result<Vec<String>, PluginError> {
        let _serial = self.changing.lock().await;
        let catalog = self.catalog();
        check_known(names, &catalog)?;
        let explicit: Vec<String> = self
            .explicit
            .lock()
            .iter()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        let remaining = closure(&explicit, &catalog);
        check_disable(names, &remaining, &catalog)?;
        let loaded_names: Vec<String> = self.loaded.read().keys().cloned().collect();
        let stopping: Vec<String> = loaded_names
            .into_iter()
            .filter(|n| !remaining.contains(n))
            .collect();
        if let Some(hooks) = self.hooks() {
            for name in &stopping {
                if let Some(t) = catalog
                    .get(name)
                    .and_then(|a| a.manifest.exchange_type.clone())
                {
                    let users = hooks.exchanges_blocking_disable(&t);
                    if !users.is_empty() {
                        return Err(PluginError::InUse(format!(
                            "plugin '{name}' is in use: exchange type '{t}' is used by {}",
                            users.join(", ")
                        )));
                    }
                }
            }
        }
        let auth_left = remaining
            .iter()
            .filter(|n| {
                catalog
                    .get(*n)
                    .is_some_and(|a| a.manifest.kind == Kind::AuthBackend)
            })
            .count();
        let auth_stopping = stopping.iter().any(|n| {
            catalog
                .get(n)
                .is_some_and(|a| a.manifest.kind == Kind::AuthBackend)
        });
        if auth_stopping && auth_left == 0 {
            return Err(PluginError::InUse(
                "disabling would leave the node with no auth backend: nobody could log in".into(),
            ));
        }
        enabled_file::write(&self.enabled_file, &explicit)?;
        *self.explicit.lock() = explicit;
        let mut gone_types = Vec::new();
        for name in &stopping {
            let removed = self.loaded.write().remove(name);
            match removed {
                Some(Loaded::Exchange(x)) => {
                    use crate::routing::exchange_type::ExchangeType;
                    self.exchange_types.write().remove(x.name());
                    gone_types.push(x.name().to_string());
                }
                Some(Loaded::Http(h)) => h.stop(),
                _ => {}
            }
        }
        if !gone_types.is_empty()
            && let Some(h) = self.hooks()
        {
            h.exchange_types_changed(&gone_types);
        }
        Ok(stopping)
    }

    /// Reads the node's configured list without loading anything (offline listings).
    pub fn read_configuration(&self) -> Result<(), PluginError> {
        *self.explicit.lock() = self.configured()?;
        Ok(())
    }
}

/// Refuses names the catalog does not have, all named in one line.
fn check_known(names: &[String], catalog: &BTreeMap<String, Available>) -> Result<(), PluginError> {
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !catalog.contains_key(*n))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(unknown(&missing))
    }
}

fn unknown(names: &[String]) -> PluginError {
    PluginError::Unknown(format!(
        "The following plugins could not be found: {}",
        names.join(", ")
    ))
}

/// The file's list, or the default-enabled plugins when there is no file.
pub fn configured(
    file: &std::path::Path,
    catalog: &BTreeMap<String, Available>,
) -> Result<Vec<String>, PluginError> {
    Ok(match enabled_file::read(file)? {
        Some(list) => list,
        None => catalog
            .values()
            .filter(|a| a.manifest.default_enabled)
            .map(|a| a.manifest.name.clone())
            .collect(),
    })
}

/// The plugins `explicit` needs, dependencies included, in dependency order.
pub fn closure(explicit: &[String], catalog: &BTreeMap<String, Available>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        catalog: &BTreeMap<String, Available>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some(a) = catalog.get(name) {
            for d in &a.manifest.depends {
                visit(d, catalog, seen, out);
            }
        }
        out.push(name.to_string());
    }
    for n in explicit {
        visit(n, catalog, &mut seen, &mut out);
    }
    out
}

/// Refuses to disable a plugin another remaining plugin depends on.
pub fn check_disable(
    names: &[String],
    remaining: &[String],
    catalog: &BTreeMap<String, Available>,
) -> Result<(), PluginError> {
    for name in names {
        if remaining.contains(name) {
            let users: Vec<&String> = remaining
                .iter()
                .filter(|r| {
                    catalog
                        .get(*r)
                        .is_some_and(|a| a.manifest.depends.contains(name))
                })
                .collect();
            return Err(PluginError::InUse(format!(
                "plugin '{name}' is needed by enabled plugin(s) {}",
                users
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// Offline `warren-plugins enable|disable`: edits the node's file.
pub fn edit_offline(
    host: &PluginHost,
    enable: bool,
    names: &[String],
) -> Result<Vec<String>, PluginError> {
    let catalog = host.catalog();
    check_known(names, &catalog)?;
    let mut explicit = configured(&host.enabled_file, &catalog)?;
    if enable {
        host.validate(names)?;
        for n in names {
            if !explicit.contains(n) {
                explicit.push(n.clone());
            }
        }
    } else {
        explicit.retain(|n| !names.contains(n));
        let remaining = closure(&explicit, &catalog);
        check_disable(names, &remaining, &catalog)?;
    }
    enabled_file::write(&host.enabled_file, &explicit)?;
    *host.explicit.lock() = explicit.clone();
    Ok(explicit)
}
