//! Exchange types served by plugin components.
//!
//! Each exchange-type plugin runs in a few shards, each one component instance
//! holding the routing state of the exchanges hashed to it. Publishes to
//! exchanges on different shards never share a lock; within a shard a call is
//! a short critical section. The shard remembers every exchange's arguments
//! and bindings, so when a call traps, runs past its deadline or exceeds its
//! memory cap, the shard rebuilds its instance from that record and only the
//! failing operation fails.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::PluginError;
use super::bindings::exchange::{ExchangePlugin, ExchangePluginPre};
use super::bindings::xt;
use super::fields::{self, WitTable};
use super::host_api::PluginCtx;
use super::runtime::{Runtime, State, instantiation_failed, root_cause, run_now};
use crate::routing::exchange_type::{
    BindingId, ExchangeRouter, ExchangeType, RouteInput, RouterError,
};

/// An exchange type provided by a plugin.
pub struct WasmExchangeType {
    type_name: String,
    plugin: String,
    info: xt::TypeInfo,
    shards: Vec<Arc<Shard>>,
    next_router: AtomicU64,
}

struct Shard {
    runtime: Arc<Runtime>,
    pre: ExchangePluginPre<State>,
    ctx: Arc<PluginCtx>,
    inner: Mutex<ShardInner>,
}

struct ShardInner {
    live: Option<Live>,
    routers: HashMap<u64, RouterRecord>,
}

struct Live {
    store: Store<State>,
    bindings: ExchangePlugin,
}

/// What the host remembers of one exchange, to rebuild it after a failure.
struct RouterRecord {
    arguments: WitTable,
    bindings: BTreeMap<BindingId, (String, WitTable)>,
    handle: Option<ResourceAny>,
}

impl WasmExchangeType {
    pub fn load(
        runtime: &Arc<Runtime>,
        ctx: Arc<PluginCtx>,
        component: &wasmtime::component::Component,
        shards: usize,
    ) -> Result<WasmExchangeType, PluginError> {
        let name = ctx.name.clone();
        let pre =
            runtime.instance_pre(&name, "exchange-plugin", component, ExchangePluginPre::new)?;
        let type_name = ctx.manifest.exchange_type.clone().unwrap_or_default();
        let mut built = Vec::new();
        let mut info = None;
        for _ in 0..shards.max(1) {
            let shard = Shard {
                runtime: runtime.clone(),
                pre: pre.clone(),
                ctx: ctx.clone(),
                inner: Mutex::new(ShardInner {
                    live: None,
                    routers: HashMap::new(),
                }),
            };
            {
                let mut inner = shard.inner.lock();
                let live = shard.instantiate()?;
                inner.live = Some(live);
                if info.is_none() {
                    let live = inner
                        .live
                        .as_mut()
                        .ok_or_else(|| PluginError::Call("no instance".into()))?;
                    runtime.arm(&mut live.store);
                    let got = run_now(
                        live.bindings
                            .warren_plugin_exchange_type()
                            .call_info(&mut live.store),
                    )?
                    .map_err(|e| PluginError::Call(format!("{name}: info: {}", root_cause(&e))))?;
                    info = Some(got);
                }
            }
            built.push(Arc::new(shard));
        }
        Ok(WasmExchangeType {
            type_name,
            plugin: name,
            info: info.unwrap_or(xt::TypeInfo {
                needs_headers: false,
                needs_properties: false,
                same_key_same_route: false,
            }),
            shards: built,
            next_router: AtomicU64::new(1),
        })
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }
}

impl Shard {
    fn instantiate(&self) -> Result<Live, PluginError> {
        let mut store = self.runtime.store(self.ctx.clone());
        self.runtime.arm(&mut store);
        let bindings = run_now(self.pre.instantiate_async(&mut store))?
            .map_err(|e| instantiation_failed(&self.ctx.name, &e))?;
        Ok(Live { store, bindings })
    }

    /// Recreates the instance and every exchange in it, after a failed call.
    fn rebuild(&self, inner: &mut ShardInner) {
        inner.live = None;
        for r in inner.routers.values_mut() {
            r.handle = None;
        }
        match self.instantiate() {
            Ok(live) => inner.live = Some(live),
            Err(e) => {
                tracing::error!(plugin = %self.ctx.name, error = %e, "cannot rebuild plugin instance");
                return;
            }
        }
        let keys: Vec<u64> = inner.routers.keys().copied().collect();
        for key in keys {
            if let Err(e) = self.ensure_handle(inner, key) {
                tracing::error!(plugin = %self.ctx.name, error = %reason(e), "cannot rebuild an exchange after a plugin failure");
            }
        }
        tracing::warn!(plugin = %self.ctx.name, exchanges = inner.routers.len(), "plugin instance rebuilt");
    }

    /// Makes sure the exchange `key` exists in the live instance, creating it
    /// and replaying its bindings if needed. The plugin's own `err` from
    /// `create` is a refusal; anything else is a failure.
    fn ensure_handle(&self, inner: &mut ShardInner, key: u64) -> Result<ResourceAny, RouterError> {
        let failed = RouterError::Failed;
        if inner.live.is_none() {
            inner.live = Some(self.instantiate().map_err(|e| failed(e.to_string()))?);
        }
        let ShardInner { live, routers } = inner;
        let Some(live) = live.as_mut() else {
            return Err(failed("plugin instance unavailable".into()));
        };
        let Some(rec) = routers.get_mut(&key) else {
            return Err(failed("exchange not known to its plugin shard".into()));
        };
        if let Some(h) = rec.handle {
            return Ok(h);
        }
        let guest = live.bindings.warren_plugin_exchange_type().exchange();
        self.runtime.arm(&mut live.store);
        let handle = match run_now(guest.call_create(&mut live.store, &rec.arguments)) {
            Ok(Ok(Ok(h))) => h,
            Ok(Ok(Err(refused))) => return Err(RouterError::Refused(refused)),
            Ok(Err(e)) => return Err(failed(root_cause(&e))),
            Err(e) => return Err(failed(e.to_string())),
        };
        for (id, (k, args)) in &rec.bindings {
            self.runtime.arm(&mut live.store);
            match run_now(guest.call_bind(&mut live.store, handle, *id, k, args)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(failed(root_cause(&e))),
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        rec.handle = Some(handle);
        Ok(handle)
    }
}

/// The text of either kind of error, for messages that wrap it.
fn reason(e: RouterError) -> String {
    match e {
        RouterError::Refused(r) | RouterError::Failed(r) => r,
    }
}

impl ExchangeType for WasmExchangeType {
    fn name(&self) -> &str {
        &self.type_name
    }

    fn create(&self, arguments: &FieldTable) -> Result<Box<dyn ExchangeRouter>, RouterError> {
        let key = self.next_router.fetch_add(1, Ordering::Relaxed);
        // Spread exchanges over shards; the key is unique so consecutive
        // declares land on different shards.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = self.shards[(h.finish() as usize) % self.shards.len()].clone();
        let mut inner = shard.inner.lock();
        inner.routers.insert(
            key,
            RouterRecord {
                arguments: fields::table(arguments),
                bindings: BTreeMap::new(),
                handle: None,
            },
        );
        match shard.ensure_handle(&mut inner, key) {
            Ok(_) => {}
            Err(RouterError::Refused(r)) => {
                inner.routers.remove(&key);
                return Err(RouterError::Refused(r));
            }
            Err(RouterError::Failed(r)) => {
                // The instance may be broken: rebuild it without this exchange.
                inner.routers.remove(&key);
                shard.rebuild(&mut inner);
                return Err(RouterError::Failed(format!(
                    "plugin '{}' failed creating an exchange: {r}",
                    self.plugin
                )));
            }
        }
        drop(inner);
        Ok(Box::new(WasmRouter {
            shard,
            key,
            plugin: self.plugin.clone(),
            info: self.info,
        }))
    }
}

/// One exchange's routing state, living in a plugin shard.
pub struct WasmRouter {
    shard: Arc<Shard>,
    key: u64,
    plugin: String,
    info: xt::TypeInfo,
}

impl WasmRouter {
    fn failed(&self, what: &str, reason: &str) -> String {
        format!("plugin '{}' failed {what}: {reason}", self.plugin)
    }
}

impl ExchangeRouter for WasmRouter {
    fn same_key_same_route(&self) -> bool {
        // A type that reads headers or properties routes on more than the key, whatever
        // it says.
        self.info.same_key_same_route && !self.info.needs_headers && !self.info.needs_properties
    }

    fn bind(
        &mut self,
        id: BindingId,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), RouterError> {
        let shard = &self.shard;
        let mut inner = shard.inner.lock();
        let handle = match shard.ensure_handle(&mut inner, self.key) {
            Ok(h) => h,
            Err(e) => {
                shard.rebuild(&mut inner);
                return Err(RouterError::Failed(self.failed("binding", &reason(e))));
            }
        };
        let args = fields::table(arguments);
        let result = {
            let Some(live) = inner.live.as_mut() else {
                return Err(RouterError::Failed(self.failed("binding", "no instance")));
            };
            shard.runtime.arm(&mut live.store);
            run_now(
                live.bindings
                    .warren_plugin_exchange_type()
                    .exchange()
                    .call_bind(&mut live.store, handle, id, routing_key, &args),
            )
        };
        match result {
            Ok(Ok(Ok(()))) => {
                if let Some(rec) = inner.routers.get_mut(&self.key) {
                    rec.bindings.insert(id, (routing_key.to_string(), args));
                }
                Ok(())
            }
            Ok(Ok(Err(refused))) => Err(RouterError::Refused(refused)),
            Ok(Err(e)) => {
                shard.rebuild(&mut inner);
                Err(RouterError::Failed(self.failed("binding", &root_cause(&e))))
            }
            Err(e) => {
                shard.rebuild(&mut inner);
                Err(RouterError::Failed(self.failed("binding", &e.to_string())))
            }
        }
    }

    fn unbind(&mut self, id: BindingId) {
        let shard = &self.shard;
        let mut inner = shard.inner.lock();
        let Some(rec) = inner.routers.get_mut(&self.key) else {
            return;
        };
        if rec.bindings.remove(&id).is_none() {
            return;
        }
        let Some(handle) = rec.handle else {
            return;
        };
        let Some(live) = inner.live.as_mut() else {
            return;
        };
        shard.runtime.arm(&mut live.store);
        let result = run_now(
            live.bindings
                .warren_plugin_exchange_type()
                .exchange()
                .call_unbind(&mut live.store, handle, id),
        );
        if !matches!(result, Ok(Ok(()))) {
            // The record no longer has the binding, so a rebuild drops it too.
            shard.rebuild(&mut inner);
        }
    }

    fn route(&self, input: &RouteInput<'_>, out: &mut Vec<BindingId>) -> Result<(), String> {
        let message = xt::Message {
            routing_key: input.routing_key.to_string(),
            headers: match (self.info.needs_headers, input.headers) {
                (true, Some(h)) => fields::table(h),
                _ => Vec::new(),
            },
            properties: match (self.info.needs_properties, input.message) {
                (true, Some(m)) => Some(fields::properties(&m.properties())),
                _ => None,
            },
        };
        let shard = &self.shard;
        let mut inner = shard.inner.lock();
        let handle = match shard.ensure_handle(&mut inner, self.key) {
            Ok(h) => h,
            Err(e) => {
                shard.rebuild(&mut inner);
                return Err(self.failed("routing", &reason(e)));
            }
        };
        let result = {
            let Some(live) = inner.live.as_mut() else {
                return Err(self.failed("routing", "no instance"));
            };
            shard.runtime.arm(&mut live.store);
            run_now(
                live.bindings
                    .warren_plugin_exchange_type()
                    .exchange()
                    .call_route(&mut live.store, handle, &message),
            )
        };
        match result {
            Ok(Ok(ids)) => {
                // Plugins return each id once; only ids already in `out` need
                // checking (a linear scan per id would be quadratic for fanouts).
                if out.is_empty() {
                    out.extend(ids);
                } else {
                    for id in ids {
                        if !out.contains(&id) {
                            out.push(id);
                        }
                    }
                }
                Ok(())
            }
            Ok(Err(e)) => {
                let cause = root_cause(&e);
                shard.rebuild(&mut inner);
                Err(self.failed("routing", &cause))
            }
            Err(e) => {
                shard.rebuild(&mut inner);
                Err(self.failed("routing", &e.to_string()))
            }
        }
    }
}

impl Drop for WasmRouter {
    fn drop(&mut self) {
        let shard = &self.shard;
        let mut inner = shard.inner.lock();
        let Some(rec) = inner.routers.remove(&self.key) else {
            return;
        };
        if let (Some(handle), Some(live)) = (rec.handle, inner.live.as_mut()) {
            shard.runtime.arm(&mut live.store);
            let dropped = run_now(handle.resource_drop_async(&mut live.store));
            if !matches!(dropped, Ok(Ok(()))) {
                shard.rebuild(&mut inner);
            }
        }
    }
}
