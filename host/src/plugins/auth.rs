//! Auth backends served by plugin components.

use std::sync::Arc;

use parking_lot::Mutex;
use wasmtime::Store;

use super::PluginError;
use super::bindings::auth::exports::warren::plugin::auth_backend as ab;
use super::bindings::auth::{AuthPlugin, AuthPluginPre};
use super::host_api::PluginCtx;
use super::runtime::{Runtime, State, instantiation_failed, root_cause, run_now};

pub use ab::{AuthedUser, Permission, ResourceKind};

pub struct WasmAuth {
    /// The name `auth_backends.N` config entries use, e.g. `internal`.
    pub backend: String,
    pub plugin: String,
    runtime: Arc<Runtime>,
    pre: AuthPluginPre<State>,
    ctx: Arc<PluginCtx>,
    live: Mutex<Option<(Store<State>, AuthPlugin)>>,
}

type Call<'a, R> =
    dyn FnOnce(&mut Store<State>, &AuthPlugin) -> Result<wasmtime::Result<R>, PluginError> + 'a;

impl WasmAuth {
    pub fn load(
        runtime: &Arc<Runtime>,
        ctx: Arc<PluginCtx>,
        component: &wasmtime::component::Component,
    ) -> Result<WasmAuth, PluginError> {
        let name = ctx.name.clone();
        let pre = runtime.instance_pre(&name, "auth-plugin", component, AuthPluginPre::new)?;
        let auth = WasmAuth {
            backend: ctx.manifest.auth_backend.clone().unwrap_or_default(),
            plugin: name,
            runtime: runtime.clone(),
            pre,
            ctx,
            live: Mutex::new(None),
        };
        let live = auth.instantiate()?;
        *auth.live.lock() = Some(live);
        Ok(auth)
    }

    fn instantiate(&self) -> Result<(Store<State>, AuthPlugin), PluginError> {
        let mut store = self.runtime.store(self.ctx.clone());
        self.runtime.arm(&mut store);
        let bindings = run_now(self.pre.instantiate_async(&mut store))?
            .map_err(|e| instantiation_failed(&self.plugin, &e))?;
        Ok((store, bindings))
    }

    /// Runs one call; a failure drops the instance so the next call gets a fresh one.
    fn call<R>(&self, what: &str, f: Box<Call<'_, R>>) -> Result<R, String> {
        let mut live = self.live.lock();
        if live.is_none() {
            *live = Some(self.instantiate().map_err(|e| e.to_string())?);
        }
        let Some((store, bindings)) = live.as_mut() else {
            return Err(format!("plugin '{}' has no instance", self.plugin));
        };
        self.runtime.arm(store);
        let failed = |reason: String| format!("plugin '{}' failed {what}: {reason}", self.plugin);
        match f(store, bindings) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                *live = None;
                Err(failed(root_cause(&e)))
            }
            Err(e) => {
                *live = None;
                Err(failed(e.to_string()))
            }
        }
    }

    /// Ok(Ok(user)) accepted, Ok(Err(text)) refused, Err(text) the plugin failed.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
    ) -> Result<Result<AuthedUser, String>, String> {
        self.call(
            "authenticating",
            Box::new(|store, b| {
                run_now(
                    b.warren_plugin_auth_backend()
                        .call_authenticate(store, mechanism, response),
                )
            }),
        )
    }

    pub fn check_vhost(&self, user: &AuthedUser, vhost: &str) -> Result<bool, String> {
        self.call(
            "checking vhost access",
            Box::new(|store, b| {
                run_now(
                    b.warren_plugin_auth_backend()
                        .call_check_vhost(store, user, vhost),
                )
            }),
        )
    }

    pub fn check_resource(
        &self,
        user: &AuthedUser,
        vhost: &str,
        kind: ResourceKind,
        name: &str,
        permission: Permission,
    ) -> Result<bool, String> {
        self.call(
            "checking resource access",
            Box::new(|store, b| {
                run_now(
                    b.warren_plugin_auth_backend()
                        .call_check_resource(store, user, vhost, kind, name, permission),
                )
            }),
        )
    }

    pub fn check_topic(
        &self,
        user: &AuthedUser,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        permission: Permission,
    ) -> Result<bool, String> {
        self.call(
            "checking topic access",
            Box::new(|store, b| {
                run_now(b.warren_plugin_auth_backend().call_check_topic(
                    store,
                    user,
                    vhost,
                    exchange,
                    routing_key,
                    permission,
                ))
            }),
        )
    }
}
