//! Users and permissions as the AMQP layer asks about them. The answers come
//! from the node's auth backend plugins (auth-internal by default), tried in
//! the configured order; the host keeps only the protocol rules (loopback-only
//! users, the default exchange's name for permission purposes) and a
//! per-connection cache of answers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::Broker;
use crate::base::error::{AmqpError, ReplyCode};
use crate::plugins::auth::{AuthedUser, Permission, ResourceKind, WasmAuth};

/// Bumped whenever users or permissions change, so cached answers are dropped.
#[derive(Default)]
pub struct PermissionCache {
    generation: AtomicU64,
}

impl PermissionCache {
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }

    fn permission(self) -> Permission {
        match self {
            Access::Configure => Permission::Configure,
            Access::Write => Permission::Write,
            Access::Read => Permission::Read,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong user or password (RabbitMQ words both the same way).
    Refused(String),
    /// The user may only connect from loopback.
    LoopbackOnly(String),
}

type CacheKey = (bool, String, Access);
/// (exchange, routing key, access) → allowed, and the permission generation it holds for.
type TopicCache = (u64, HashMap<(String, String, Access), bool>);

/// A logged-in user, and the backend that vouched for them.
pub struct AuthSession {
    pub username: String,
    pub tags: Vec<String>,
    user: AuthedUser,
    backend: Arc<WasmAuth>,
    cache: Mutex<(u64, HashMap<CacheKey, bool>)>,
    /// The last answer again, compared without allocating: a publisher asks
    /// the same question (write on one exchange) for every message.
    last: Mutex<Option<(u64, CacheKey, bool)>>,
    /// Answers about routing keys on topic exchanges: (exchange, key, access).
    topics: Mutex<TopicCache>,
}

impl AuthSession {
    pub fn backend_name(&self) -> &str {
        &self.backend.backend
    }

    /// Whether the credential has expired by `now_secs` (Unix seconds): the connection must
    /// then close, unless the client sends a new secret first.
    pub fn expired(&self, now_secs: u64) -> bool {
        self.user.expires_at.is_some_and(|t| now_secs >= t)
    }
}

fn plugin_failure(e: String) -> AmqpError {
    AmqpError::connection(ReplyCode::InternalError, format!("INTERNAL_ERROR - {e}"))
}

impl Broker {
    /// Checks credentials with the node's auth backends. `mechanism` and
    /// `response` are as the client sent them, except that AMQPLAIN arrives
    /// converted to PLAIN form.
    pub fn login(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<Arc<AuthSession>, LoginError> {
        let refused = || {
            LoginError::Refused(format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ))
        };
        let backends = self.plugins.auth_backends();
        if backends.is_empty() {
            tracing::error!("login refused: no auth backend plugin is enabled");
            return Err(refused());
        }
        let mut accepted = None;
        for b in backends {
            match b.authenticate(mechanism, response) {
                Ok(Ok(user)) => {
                    accepted = Some((b, user));
                    break;
                }
                Ok(Err(reason)) => {
                    tracing::info!(backend = %b.backend, reason, "auth backend refused login")
                }
                Err(e) => tracing::error!(backend = %b.backend, error = %e, "auth backend failed"),
            }
        }
        let Some((backend, user)) = accepted else {
            return Err(refused());
        };
        if self.config.loopback_users.contains(&user.username) && !peer.is_loopback() {
            return Err(LoginError::LoopbackOnly(format!(
                "ACCESS_REFUSED - User '{}' can only connect via localhost",
                user.username
            )));
        }
        Ok(Arc::new(AuthSession {
            username: user.username.clone(),
            tags: user.tags.clone(),
            user,
            backend,
            cache: Mutex::new((0, HashMap::new())),
            last: Mutex::new(None),
            topics: Mutex::new((0, HashMap::new())),
        }))
    }

    pub fn check_vhost_access(&self, session: &AuthSession, vhost: &str) -> Result<(), AmqpError> {
        let not_allowed = |text: String| AmqpError::connection(ReplyCode::NotAllowed, text);
        if self.vhost(vhost).is_none() {
            return Err(not_allowed(format!(
                "NOT_ALLOWED - vhost {vhost} not found"
            )));
        }
        let allowed = session
            .backend
            .check_vhost(&session.user, vhost)
            .map_err(plugin_failure)?;
        if !allowed {
            return Err(not_allowed(format!(
                "NOT_ALLOWED - access to vhost '{vhost}' refused for user '{}'",
                session.username
            )));
        }
        Ok(())
    }

    /// RabbitMQ's check_resource_access: `kind` is "exchange" or "queue".
    pub fn check_access(
        &self,
        session: &AuthSession,
        vhost: &str,
        kind: &str,
        name: &str,
        access: Access,
    ) -> Result<(), AmqpError> {
        // The default exchange is named "amq.default" for permission purposes.
        let checked = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let is_exchange = kind == "exchange";
        let generation = self.permissions.generation.load(Ordering::Relaxed);
        let remembered = session
            .last
            .lock()
            .as_ref()
            .and_then(|(g, (x, name, a), allowed)| {
                (*g == generation && *x == is_exchange && *a == access && name == checked)
                    .then_some(*allowed)
            });
        let allowed = match remembered {
            Some(a) => a,
            None => self.ask_backend(session, vhost, is_exchange, checked, access, generation)?,
        };
        if allowed {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "{} access to {kind} '{checked}' in vhost '{vhost}' refused for user '{}'",
                access.as_str(),
                session.username
            )))
        }
    }

    /// RabbitMQ's topic authorisation: may the user publish with (write) or bind with (read)
    /// `routing_key` on the topic exchange `exchange`? Asked of the backend that logged the
    /// user in; answers are remembered per session until users or permissions change.
    pub fn check_topic_access(
        &self,
        session: &AuthSession,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        access: Access,
    ) -> Result<(), AmqpError> {
        let generation = self.permissions.generation.load(Ordering::Relaxed);
        let key = (exchange.to_string(), routing_key.to_string(), access);
        let cached = {
            let mut c = session.topics.lock();
            if c.0 != generation {
                *c = (generation, HashMap::new());
            }
            c.1.get(&key).copied()
        };
        let allowed = match cached {
            Some(a) => a,
            None => {
                let a = session
                    .backend
                    .check_topic(
                        &session.user,
                        vhost,
                        exchange,
                        routing_key,
                        access.permission(),
                    )
                    .map_err(plugin_failure)?;
                let mut c = session.topics.lock();
                // Routing keys are open-ended: bounded like the resource cache.
                if c.1.len() > 1024 {
                    c.1.clear();
                }
                c.1.insert(key, a);
                a
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "{} access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{}'",
                access.as_str(),
                session.username
            )))
        }
    }

    /// The session's cached answer, else the auth backend's (then cached).
    fn ask_backend(
        &self,
        session: &AuthSession,
        vhost: &str,
        is_exchange: bool,
        checked: &str,
        access: Access,
        generation: u64,
    ) -> Result<bool, AmqpError> {
        let key = (is_exchange, checked.to_string(), access);
        let cached = {
            let mut c = session.cache.lock();
            if c.0 != generation {
                *c = (generation, HashMap::new());
            }
            c.1.get(&key).copied()
        };
        let allowed = match cached {
            Some(a) => a,
            None => {
                let kind_wit = if is_exchange {
                    ResourceKind::Exchange
                } else {
                    ResourceKind::Queue
                };
                let a = session
                    .backend
                    .check_resource(&session.user, vhost, kind_wit, checked, access.permission())
                    .map_err(plugin_failure)?;
                let mut c = session.cache.lock();
                // Publishing to many generated names must not grow this forever.
                if c.1.len() > 1024 {
                    c.1.clear();
                }
                c.1.insert(key.clone(), a);
                a
            }
        };
        *session.last.lock() = Some((generation, key, allowed));
        Ok(allowed)
    }
}
