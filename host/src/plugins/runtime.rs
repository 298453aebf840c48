//! The WebAssembly runtime every plugin shares: one wasmtime engine, one
//! linker (set up here, in one place), the per-store state, the on-disk cache
//! of compiled components and the isolation limits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginError;
use super::bindings::{auth, exchange, http};
use super::host_api::PluginCtx;

/// How often the epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Isolation limits for every plugin call, from the node's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub call_timeout: Duration,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(1000),
            memory_bytes: 256 << 20,
        }
    }
}

/// Shared by every plugin of one node.
pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<State>,
    pub limits: Limits,
    cache_dir: PathBuf,
}

/// The data of one plugin store.
pub struct State {
    pub ctx: Arc<PluginCtx>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Runtime {
    pub fn new(cache_dir: PathBuf, limits: Limits) -> Result<Arc<Runtime>, PluginError> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            // Every call runs on a fiber; the pool keeps their stacks (and
            // instance slots) warm instead of mapping fresh ones per call.
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool(&limits)));
        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime(e.to_string()))?;
        let mut linker = Linker::<State>::new(&engine);
        let link = |r: wasmtime::Result<()>| r.map_err(|e| PluginError::Runtime(e.to_string()));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker))?;
        link(exchange::warren::plugin::log::add_to_linker::<
            State,
            HasSelf<State>,
        >(&mut linker, |s| s))?;
        link(exchange::warren::plugin::config::add_to_linker::<
            State,
            HasSelf<State>,
        >(&mut linker, |s| s))?;
        link(auth::warren::plugin::users::add_to_linker::<
            State,
            HasSelf<State>,
        >(&mut linker, |s| s))?;
        link(http::warren::plugin::stats::add_to_linker::<
            State,
            HasSelf<State>,
        >(&mut linker, |s| s))?;

        // Deadlines are counted in epochs; one thread advances them for every store.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("warren-plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Runtime(e.to_string()))?;

        Ok(Arc::new(Runtime {
            engine,
            linker,
            limits,
            cache_dir,
        }))
    }

    /// Compiles a component, or loads it from this node's cache of compiled
    /// components so that a restart does not compile again.
    pub fn component(&self, name: &str, wasm: &[u8]) -> Result<Component, PluginError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(PluginError::NotAComponent(format!(
                "{name}: not a WebAssembly file"
            )));
        }
        // A core module has version 1; components use the layer-1 encoding.
        if wasm.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(PluginError::NotAComponent(format!(
                "{name}: a core WebAssembly module, not a component"
            )));
        }
        let mut h = Sha256::new();
        h.update(wasm);
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut compat);
        h.update(std::hash::Hasher::finish(&compat).to_le_bytes());
        let digest = h.finalize();
        let key: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let path = self.cache_dir.join(format!("{name}-{key}.cwasm"));
        if path.exists() {
            // SAFETY: the file is one this node wrote with `precompile_component`
            // for an engine with the same compatibility hash (part of its name);
            // wasmtime still validates the header and refuses a mismatch.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(plugin = name, error = %e, "cached compiled component unusable; recompiling")
                }
            }
        }
        let started = std::time::Instant::now();
        let compiled = self.engine.precompile_component(wasm).map_err(|e| {
            PluginError::NotAComponent(format!("{name}: not a valid component: {}", root_cause(&e)))
        })?;
        tracing::info!(
            plugin = name,
            ms = started.elapsed().as_millis() as u64,
            "compiled plugin component"
        );
        if let Err(e) = write_atomically(&self.cache_dir, &path, &compiled) {
            tracing::warn!(plugin = name, error = %e, "could not cache compiled component");
        }
        // SAFETY: `compiled` was produced just above by this engine.
        unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| PluginError::Runtime(format!("{name}: {e}")))
    }

    /// Links a component against the host's imports, once per plugin; a
    /// component that is not of `world` (wrong exports or imports) is refused.
    pub fn instance_pre<P>(
        &self,
        name: &str,
        world: &str,
        component: &Component,
        typed: impl FnOnce(InstancePre<State>) -> wasmtime::Result<P>,
    ) -> Result<P, PluginError> {
        let wrong_world = |e: wasmtime::Error| {
            PluginError::WrongWorld(format!(
                "{name}: not an {world} component: {}",
                root_cause(&e)
            ))
        };
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(wrong_world)?;
        typed(pre).map_err(wrong_world)
    }

    pub fn store(&self, ctx: Arc<PluginCtx>) -> Store<State> {
        let stderr = super::host_api::LogStream::new(ctx.name.clone());
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .stdout(stderr)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &self.engine,
            State {
                ctx,
                wasi,
                table: ResourceTable::new(),
                limits,
            },
        );
        store.limiter(|s| &mut s.limits);
        store
    }

    /// Arms the deadline for the next call into `store`.
    pub fn arm(&self, store: &mut Store<State>) {
        let ticks = (self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
    }
}

/// Slots for a node's plugin instances. A few dozen are live at once (a few
/// shards per exchange-type plugin, one per auth or http plugin); the
/// per-component maxima are sized for interpreters such as componentize-py's.
fn pool(limits: &Limits) -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(256)
        .total_core_instances(2048)
        .total_memories(256)
        .total_tables(1024)
        .total_stacks(256)
        .max_core_instances_per_component(64)
        .max_memories_per_component(8)
        .max_tables_per_component(32)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        .table_elements(200_000)
        .max_memory_size(limits.memory_bytes);
    p
}

/// Drives a plugin call to completion on the calling thread.
///
/// Plugin stores are async only so that WASI never blocks on a runtime from
/// inside one (see bindings.rs); a call whose host functions are all
/// synchronous completes in one poll. One that would wait on I/O is a plugin
/// doing something it must not on a hot path: the call fails and the caller
/// rebuilds the instance.
pub fn run_now<F: Future>(f: F) -> Result<F::Output, PluginError> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => Err(PluginError::Call(
            "the plugin waited on I/O inside a call".into(),
        )),
    }
}

/// The error of an instantiation that failed (a start function trapped, the
/// memory cap was too small for its initial memory, ...).
pub fn instantiation_failed(plugin: &str, e: &wasmtime::Error) -> PluginError {
    PluginError::Call(format!("{plugin}: instantiation failed: {}", root_cause(e)))
}

/// The innermost message of a wasmtime error: traps say what happened there.
pub fn root_cause(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => "deadline exceeded (runaway call interrupted)".into(),
            wasmtime::Trap::UnreachableCodeReached => {
                "trapped (unreachable: the plugin panicked or aborted)".into()
            }
            other => format!("trapped ({other})"),
        };
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory")
        || text.contains("memory") && text.contains("limit")
    {
        return "memory limit exceeded".into();
    }
    e.root_cause().to_string()
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
