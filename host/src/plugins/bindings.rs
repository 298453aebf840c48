//! Host-side bindings of the three plugin worlds (wit/warren-plugin.wit).
//!
//! Exports are async because plugins run on async stores: WASI's synchronous
//! bindings block on a Tokio runtime, which would panic on the broker's
//! worker threads. Imports are plain synchronous host functions.

pub mod exchange {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warren:plugin/exchange-plugin",
        exports: { default: async },
    });
}

pub mod auth {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warren:plugin/auth-plugin",
        exports: { default: async },
        with: {
            "warren:plugin/log": super::exchange::warren::plugin::log,
            "warren:plugin/config": super::exchange::warren::plugin::config,
        },
    });
}

pub mod http {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "warren:plugin/http-plugin",
        exports: { default: async },
        with: {
            "warren:plugin/log": super::exchange::warren::plugin::log,
            "warren:plugin/config": super::exchange::warren::plugin::config,
        },
    });
}

pub use exchange::exports::warren::plugin::exchange_type as xt;
pub use exchange::warren::plugin::types::FieldValue;
