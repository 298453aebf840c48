//! Warren plugin SDK: write an exchange type, an auth backend or an HTTP
//! endpoint for Warren in a few dozen lines of Rust, built to a WebAssembly
//! component with `cargo build --target wasm32-wasip2`.
//!
//! The interfaces live in `wit/warren-plugin.wit`; this crate generates their
//! bindings once, so a plugin crate depends on `warren-sdk` alone.
//!
//! An exchange type implements [`ExchangeType`] and exports it:
//!
//! ```ignore
//! use warren_sdk::{ExchangeType, Message, FieldTable, BindingId};
//! use std::collections::HashMap;
//!
//! #[derive(Default)]
//! struct ByKey(HashMap<String, Vec<BindingId>>);
//!
//! impl ExchangeType for ByKey {
//!     fn create(_args: &FieldTable) -> Result<Self, String> { Ok(Self::default()) }
//!     fn bind(&mut self, id: BindingId, key: &str, _args: &FieldTable) -> Result<(), String> {
//!         self.unbind(id);
//!         self.0.entry(key.to_string()).or_default().push(id);
//!         Ok(())
//!     }
//!     fn unbind(&mut self, id: BindingId) {
//!         self.0.retain(|_, ids| { ids.retain(|b| *b != id); !ids.is_empty() });
//!     }
//!     fn route(&self, msg: &Message, out: &mut Vec<BindingId>) {
//!         out.extend(self.0.get(&msg.routing_key).into_iter().flatten());
//!     }
//! }
//! warren_sdk::export_exchange_type!(ByKey);
//! ```
//!
//! Auth backends implement [`auth::Guest`] and use [`export_auth_backend!`];
//! HTTP endpoints implement [`http::Guest`] and use [`export_http_handler!`].

/// Bindings of the `exchange-plugin` world.
pub mod exchange {
    wit_bindgen::generate!({
        path: "../wit",
        world: "warren:plugin/exchange-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_exchange_plugin",
        default_bindings_module: "warren_sdk::exchange",
    });
}

/// Bindings of the `auth-plugin` world.
pub mod auth_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "warren:plugin/auth-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_auth_plugin",
        default_bindings_module: "warren_sdk::auth_world",
    });
}

/// Bindings of the `http-plugin` world.
pub mod http_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "warren:plugin/http-plugin@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_http_plugin",
        default_bindings_module: "warren_sdk::http_world",
    });
}

pub use exchange::exports::warren::plugin::exchange_type::{BindingId, Message, Properties};
pub use exchange::warren::plugin::types::{FieldTable, FieldValue};

/// What an auth backend implements, and the types it uses.
pub mod auth {
    pub use crate::auth_world::exports::warren::plugin::auth_backend::{
        AuthedUser, Guest, Permission, ResourceKind,
    };
    pub use crate::auth_world::warren::plugin::config;
    pub use crate::auth_world::warren::plugin::log;
    pub use crate::auth_world::warren::plugin::users;

    /// Splits a PLAIN response (`authzid\0username\0password`) into username
    /// and password. The host presents AMQPLAIN logins in this form too.
    pub fn parse_plain(response: &[u8]) -> Option<(String, String)> {
        let mut parts = response.split(|b| *b == 0);
        let _authzid = parts.next()?;
        let user = parts.next()?;
        let pass = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        Some((
            String::from_utf8(user.to_vec()).ok()?,
            String::from_utf8(pass.to_vec()).ok()?,
        ))
    }
}

/// What an HTTP endpoint implements, and the types it uses.
pub mod http {
    pub use crate::http_world::exports::warren::plugin::http_handler::{Guest, Request, Response};
    pub use crate::http_world::warren::plugin::config;
    pub use crate::http_world::warren::plugin::log;
    pub use crate::http_world::warren::plugin::stats;
}

/// Logging and configuration for exchange types.
pub use exchange::warren::plugin::{config, log};

/// An exchange type: the routing state of one exchange.
///
/// The host calls `create` once per declared exchange, `bind`/`unbind` as
/// bindings change, and `route` for every message published to the exchange.
/// Keep `route` cheap: it runs on every publish.
pub trait ExchangeType: Sized + 'static {
    /// Set when `route` reads `message.headers`; otherwise the host leaves them empty.
    const NEEDS_HEADERS: bool = false;
    /// Set when `route` reads `message.properties`; otherwise the host leaves them out.
    const NEEDS_PROPERTIES: bool = false;
    /// Set when `route`'s answer depends only on the routing key and the bindings (no
    /// randomness, no rotation): the host then remembers it per routing key until a
    /// binding changes, and most publishes do not call into the plugin at all.
    const SAME_KEY_SAME_ROUTE: bool = false;

    /// Validates the exchange's declare arguments; an error refuses the
    /// declare with 406 PRECONDITION_FAILED and the text.
    fn create(arguments: &FieldTable) -> Result<Self, String>;
    /// Adds a binding (or replaces the binding with this id). An error refuses
    /// the bind with 406 PRECONDITION_FAILED and the text.
    fn bind(
        &mut self,
        id: BindingId,
        binding_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), String>;
    /// Removes a binding; unknown ids are ignored.
    fn unbind(&mut self, id: BindingId);
    /// Appends the ids of the bindings the message matches, each at most once.
    fn route(&self, message: &Message, out: &mut Vec<BindingId>);
}

/// The value of `key` in a field table, if present.
pub fn field<'a>(table: &'a FieldTable, key: &str) -> Option<&'a FieldValue> {
    table.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Exports a type implementing [`ExchangeType`] as this component's exchange type.
#[macro_export]
macro_rules! export_exchange_type {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __WarrenExchange(::core::cell::RefCell<$ty>);
        #[doc(hidden)]
        pub struct __WarrenExchangeComponent;

        impl $crate::exchange::exports::warren::plugin::exchange_type::Guest
            for __WarrenExchangeComponent
        {
            type Exchange = __WarrenExchange;
            fn info() -> $crate::exchange::exports::warren::plugin::exchange_type::TypeInfo {
                $crate::exchange::exports::warren::plugin::exchange_type::TypeInfo {
                    needs_headers: <$ty as $crate::ExchangeType>::NEEDS_HEADERS,
                    needs_properties: <$ty as $crate::ExchangeType>::NEEDS_PROPERTIES,
                    same_key_same_route: <$ty as $crate::ExchangeType>::SAME_KEY_SAME_ROUTE,
                }
            }
        }

        impl $crate::exchange::exports::warren::plugin::exchange_type::GuestExchange
            for __WarrenExchange
        {
            fn create(
                arguments: $crate::FieldTable,
            ) -> ::core::result::Result<
                $crate::exchange::exports::warren::plugin::exchange_type::Exchange,
                ::std::string::String,
            > {
                let state = <$ty as $crate::ExchangeType>::create(&arguments)?;
                Ok(
                    $crate::exchange::exports::warren::plugin::exchange_type::Exchange::new(
                        __WarrenExchange(::core::cell::RefCell::new(state)),
                    ),
                )
            }
            fn bind(
                &self,
                id: u64,
                binding_key: ::std::string::String,
                arguments: $crate::FieldTable,
            ) -> ::core::result::Result<(), ::std::string::String> {
                <$ty as $crate::ExchangeType>::bind(
                    &mut self.0.borrow_mut(),
                    id,
                    &binding_key,
                    &arguments,
                )
            }
            fn unbind(&self, id: u64) {
                <$ty as $crate::ExchangeType>::unbind(&mut self.0.borrow_mut(), id)
            }
            fn route(&self, message: $crate::Message) -> ::std::vec::Vec<u64> {
                let mut out = ::std::vec::Vec::new();
                <$ty as $crate::ExchangeType>::route(&self.0.borrow(), &message, &mut out);
                out
            }
            fn route_batch(
                &self,
                messages: ::std::vec::Vec<$crate::Message>,
            ) -> ::std::vec::Vec<::std::vec::Vec<u64>> {
                let state = self.0.borrow();
                messages
                    .iter()
                    .map(|m| {
                        let mut out = ::std::vec::Vec::new();
                        <$ty as $crate::ExchangeType>::route(&state, m, &mut out);
                        out
                    })
                    .collect()
            }
        }

        // Native builds (a plugin's unit tests) cannot link the component export names.
        #[cfg(target_arch = "wasm32")]
        $crate::exchange::export_exchange_plugin!(__WarrenExchangeComponent with_types_in $crate::exchange);
    };
}

/// Exports a type implementing [`auth::Guest`] as this component's auth backend.
#[macro_export]
macro_rules! export_auth_backend {
    ($ty:ty) => {
        // wit-bindgen's export macro takes a plain name.
        #[doc(hidden)]
        pub type __WarrenAuthBackend = $ty;
        #[cfg(target_arch = "wasm32")]
        $crate::auth_world::export_auth_plugin!(__WarrenAuthBackend with_types_in $crate::auth_world);
    };
}

/// Exports a type implementing [`http::Guest`] as this component's HTTP handler.
#[macro_export]
macro_rules! export_http_handler {
    ($ty:ty) => {
        #[doc(hidden)]
        pub type __WarrenHttpHandler = $ty;
        #[cfg(target_arch = "wasm32")]
        $crate::http_world::export_http_plugin!(__WarrenHttpHandler with_types_in $crate::http_world);
    };
}
