//! The `internal` auth backend: users, password hashes and permissions from
//! Warren's replicated metadata (through the `users` import), with the
//! semantics of RabbitMQ's `rabbit_auth_backend_internal`.
//!
//! * Logins arrive as SASL PLAIN (the host converts AMQPLAIN); the password
//!   is checked against RabbitMQ's salted SHA-256 (or SHA-512) hash, so
//!   hashes exported from RabbitMQ definitions verify unchanged.
//! * A user may open a vhost that exists and on which they have a
//!   permissions entry.
//! * Resource permissions are three regular expressions per user and vhost,
//!   see [`permissions`]. They are looked up on every check, so changes take
//!   effect immediately; only compiled regexes are cached, keyed by pattern.
//! * Topic permissions (`set_topic_permissions`) restrict the routing keys a user may
//!   publish (write) and bind (read) with on a topic exchange; an exchange without one
//!   allows every key, see [`permissions::topic_allowed`].
//!
//! The logic lives in functions that take the looked-up data as arguments,
//! so it is unit-tested natively; [`Internal`]'s `Guest` impl only fetches.

pub mod password;
pub mod permissions;

use std::cell::RefCell;

use warren_sdk::auth::users::{self, Permissions, User};
use warren_sdk::auth::{AuthedUser, Guest, Permission, ResourceKind, log, parse_plain};

use permissions::PatternCache;

/// RabbitMQ's wording for a wrong user or password (both alike, so a client
/// can't probe which users exist).
pub const REFUSED: &str = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.";

/// Why a login failed, for the node's log; the client only ever sees [`REFUSED`]
/// (or the mechanism-specific equivalent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    Mechanism(String),
    Malformed,
    NoSuchUser(String),
    NoPassword(String),
    UnknownHashing { user: String, algorithm: String },
    WrongPassword(String),
}

impl LoginFailure {
    /// The refusal text the client is closed with.
    pub fn refusal(&self) -> String {
        match self {
            LoginFailure::Mechanism(m) => format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {m}. For details see the broker logfile."
            ),
            _ => REFUSED.to_owned(),
        }
    }

    /// What the broker log says about it.
    pub fn log_message(&self) -> String {
        match self {
            LoginFailure::Mechanism(m) => {
                format!("login refused: mechanism {m} is not supported (only PLAIN)")
            }
            LoginFailure::Malformed => "login refused: malformed PLAIN response".to_owned(),
            LoginFailure::NoSuchUser(u) => format!("login refused: user '{u}' does not exist"),
            LoginFailure::NoPassword(u) => {
                format!("login refused: user '{u}' has no password (password login disabled)")
            }
            LoginFailure::UnknownHashing { user, algorithm } => format!(
                "login refused: user '{user}' has a password hash of unsupported algorithm '{algorithm}'"
            ),
            LoginFailure::WrongPassword(u) => {
                format!("login refused: user '{u}' - invalid credentials")
            }
        }
    }
}

/// Checks a login: `lookup` finds a user record by name.
pub fn authenticate_with(
    mechanism: &str,
    response: &[u8],
    lookup: impl FnOnce(&str) -> Option<User>,
) -> Result<AuthedUser, LoginFailure> {
    if mechanism != "PLAIN" {
        return Err(LoginFailure::Mechanism(mechanism.to_owned()));
    }
    let (username, password) = parse_plain(response).ok_or(LoginFailure::Malformed)?;
    let user = lookup(&username).ok_or_else(|| LoginFailure::NoSuchUser(username.clone()))?;
    if user.password_hash.is_empty() {
        return Err(LoginFailure::NoPassword(username));
    }
    let algorithm = user.hashing_algorithm.as_str();
    if !matches!(algorithm, "" | password::SHA256 | password::SHA512) {
        return Err(LoginFailure::UnknownHashing {
            user: username,
            algorithm: algorithm.to_owned(),
        });
    }
    if !password::check_password(&password, &user.password_hash, algorithm) {
        return Err(LoginFailure::WrongPassword(username));
    }
    Ok(AuthedUser {
        // The stored name, which equals the one given.
        username: user.name,
        tags: user.tags,
        state: Vec::new(),
        // A password does not expire.
        expires_at: None,
    })
}

/// May the user open the vhost? It must exist and the user needs a
/// permissions entry there (any entry, even all-empty patterns).
pub fn vhost_allowed(vhost_exists: bool, perms: Option<&Permissions>) -> bool {
    vhost_exists && perms.is_some()
}

thread_local! {
    static PATTERNS: RefCell<PatternCache> = RefCell::new(PatternCache::default());
}

/// The component: every call fetches what it needs through the `users` import.
pub struct Internal;

impl Guest for Internal {
    fn authenticate(mechanism: String, response: Vec<u8>) -> Result<AuthedUser, String> {
        authenticate_with(&mechanism, &response, users::lookup).map_err(|failure| {
            log::log(log::Level::Info, &failure.log_message());
            failure.refusal()
        })
    }

    fn check_vhost(user: AuthedUser, vhost: String) -> bool {
        // Only ask for permissions on vhosts that exist.
        if !users::vhost_exists(&vhost) {
            return false;
        }
        vhost_allowed(
            true,
            users::user_permissions(&user.username, &vhost).as_ref(),
        )
    }

    fn check_resource(
        user: AuthedUser,
        vhost: String,
        kind: ResourceKind,
        name: String,
        permission: Permission,
    ) -> bool {
        let perms = users::user_permissions(&user.username, &vhost);
        PATTERNS.with_borrow_mut(|cache| {
            permissions::resource_allowed(cache, perms.as_ref(), kind, &name, permission)
                .unwrap_or_else(|e| {
                    let pattern = perms
                        .as_ref()
                        .map(|p| permissions::pattern_for(p, permission))
                        .unwrap_or_default();
                    log::log(
                        log::Level::Warn,
                        &format!(
                            "permission pattern {pattern:?} of user '{}' in vhost '{vhost}' does not compile, so it allows nothing: {e}",
                            user.username
                        ),
                    );
                    false
                })
        })
    }

    fn check_topic(
        user: AuthedUser,
        vhost: String,
        exchange: String,
        routing_key: String,
        permission: Permission,
    ) -> bool {
        let topics = users::user_topic_permissions(&user.username, &vhost);
        let topic = topics.iter().find(|t| t.exchange == exchange);
        PATTERNS.with_borrow_mut(|cache| {
            permissions::topic_allowed(
                cache,
                topic,
                &user.username,
                &vhost,
                &routing_key,
                permission,
            )
            .unwrap_or_else(|e| {
                log::log(
                    log::Level::Warn,
                    &format!(
                        "topic permission pattern of user '{}' on exchange '{exchange}' in vhost '{vhost}' does not compile, so it allows nothing: {e}",
                        user.username
                    ),
                );
                false
            })
        })
    }
}

warren_sdk::export_auth_backend!(Internal);

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, algorithm: &str, tags: &[&str]) -> User {
        User {
            name: name.into(),
            password_hash: if password.is_empty() {
                String::new()
            } else {
                password::hash_password(*b"s4lt", password, algorithm)
            },
            hashing_algorithm: algorithm.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    fn db(name: &str) -> Option<User> {
        match name {
            "guest" => Some(user("guest", "guest", password::SHA256, &["administrator"])),
            "legacy" => Some(user("legacy", "pw", "", &[])),
            "strong" => Some(user(
                "strong",
                "pw512",
                password::SHA512,
                &["monitoring", "management"],
            )),
            "nopass" => Some(user("nopass", "", password::SHA256, &[])),
            "md5" => Some(User {
                hashing_algorithm: "rabbit_password_hashing_md5".into(),
                ..user("md5", "pw", password::SHA256, &[])
            }),
            _ => None,
        }
    }

    #[test]
    fn good_logins_carry_tags_and_empty_state() {
        let u = authenticate_with("PLAIN", b"\0guest\0guest", db).unwrap();
        assert_eq!(u.username, "guest");
        assert_eq!(u.tags, ["administrator"]);
        assert!(u.state.is_empty());
        let u = authenticate_with("PLAIN", b"\0legacy\0pw", db).unwrap();
        assert!(u.tags.is_empty());
        let u = authenticate_with("PLAIN", b"\0strong\0pw512", db).unwrap();
        assert_eq!(u.tags, ["monitoring", "management"]);
        // A non-empty authzid is ignored.
        assert!(authenticate_with("PLAIN", b"someone\0guest\0guest", db).is_ok());
    }

    #[test]
    fn refusals_are_worded_like_rabbitmq() {
        let cases: [(&[u8], LoginFailure); 6] = [
            (
                b"\0guest\0wrong",
                LoginFailure::WrongPassword("guest".into()),
            ),
            (
                b"\0nobody\0guest",
                LoginFailure::NoSuchUser("nobody".into()),
            ),
            (b"\0nopass\0", LoginFailure::NoPassword("nopass".into())),
            (
                b"\0md5\0pw",
                LoginFailure::UnknownHashing {
                    user: "md5".into(),
                    algorithm: "rabbit_password_hashing_md5".into(),
                },
            ),
            (b"guest", LoginFailure::Malformed),
            (b"\0guest\0guest\0", LoginFailure::Malformed),
        ];
        for (response, expected) in cases {
            let err = authenticate_with("PLAIN", response, db).unwrap_err();
            assert_eq!(err, expected);
            assert_eq!(
                err.refusal(),
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
            );
        }
    }

    #[test]
    fn only_plain_is_accepted() {
        let err = authenticate_with("EXTERNAL", b"\0guest\0guest", db).unwrap_err();
        assert_eq!(err, LoginFailure::Mechanism("EXTERNAL".into()));
        assert!(err.refusal().contains("mechanism EXTERNAL"));
        assert!(authenticate_with("AMQPLAIN", b"\0guest\0guest", db).is_err());
    }

    #[test]
    fn lookup_is_by_the_given_name() {
        let mut asked = None;
        let _ = authenticate_with("PLAIN", "\0jürgen\0x".as_bytes(), |n| {
            asked = Some(n.to_owned());
            None
        });
        assert_eq!(asked.as_deref(), Some("jürgen"));
    }

    #[test]
    fn vhost_needs_existence_and_a_permissions_entry() {
        let p = Permissions {
            configure: String::new(),
            write: String::new(),
            read: String::new(),
        };
        assert!(vhost_allowed(true, Some(&p)));
        assert!(!vhost_allowed(true, None));
        assert!(!vhost_allowed(false, Some(&p)));
        assert!(!vhost_allowed(false, None));
    }
}
