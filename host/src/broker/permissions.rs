//! Users and permissions as the AMQP layer asks about them: who may log in, from where, and
//! which exchanges and queues they may configure, write to and read from.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Broker;
use crate::amqp::error::AmqpError;
use crate::auth::{CompiledPermission, Permission, check_password};

/// (vhost, user) → compiled permission; `None` caches "no permission on this vhost".
type CompiledByUser = HashMap<(String, String), Option<Arc<CompiledPermission>>>;

#[derive(Default)]
pub struct PermissionCache {
    compiled: Mutex<CompiledByUser>,
}

impl PermissionCache {
    pub fn clear(&self) {
        self.compiled.lock().clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong user or password (RabbitMQ words both the same way).
    Refused(String),
    /// The user may only connect from loopback.
    LoopbackOnly(String),
}

impl Broker {
    /// Checks a user's credentials; returns the user's tags.
    pub fn login(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Vec<String>, LoginError> {
        let refused = || {
            LoginError::Refused("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.".to_string())
        };
        let state = self.meta.read();
        let Some(u) = state.users.get(user) else {
            return Err(refused());
        };
        if u.password_hash.is_empty() || !check_password(password, &u.password_hash) {
            return Err(refused());
        }
        if self.config.loopback_users.iter().any(|l| l == user) && !peer.is_loopback() {
            return Err(LoginError::LoopbackOnly(format!(
                "ACCESS_REFUSED - User '{user}' can only connect via localhost"
            )));
        }
        Ok(u.tags.clone())
    }

    fn compiled_permission(&self, vhost: &str, user: &str) -> Option<Arc<CompiledPermission>> {
        let key = (vhost.to_string(), user.to_string());
        if let Some(p) = self.permissions.compiled.lock().get(&key) {
            return p.clone();
        }
        let compiled = self.meta.read().permission(vhost, user).and_then(|p| {
            CompiledPermission::new(&Permission {
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            })
            .ok()
            .map(Arc::new)
        });
        self.permissions
            .compiled
            .lock()
            .insert(key, compiled.clone());
        compiled
    }

    pub fn check_vhost_access(&self, user: &str, vhost: &str) -> Result<(), AmqpError> {
        let not_allowed =
            |text: String| AmqpError::connection(crate::amqp::error::ReplyCode::NotAllowed, text);
        if self.vhost(vhost).is_none() {
            return Err(not_allowed(format!(
                "NOT_ALLOWED - vhost {vhost} not found"
            )));
        }
        if self.compiled_permission(vhost, user).is_none() {
            return Err(not_allowed(format!(
                "NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'"
            )));
        }
        Ok(())
    }

    /// RabbitMQ's check_resource_access: `kind` is "exchange" or "queue".
    pub fn check_access(
        &self,
        user: &str,
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
        let allowed = self
            .compiled_permission(vhost, user)
            .is_some_and(|p| match access {
                Access::Configure => p.can_configure(checked),
                Access::Write => p.can_write(checked),
                Access::Read => p.can_read(checked),
            });
        if allowed {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "{} access to {kind} '{checked}' in vhost '{vhost}' refused for user '{user}'",
                access.as_str()
            )))
        }
    }
}
