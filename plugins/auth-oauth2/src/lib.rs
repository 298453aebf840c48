//! The `oauth2` auth backend: JWT access tokens as passwords, with the
//! semantics of RabbitMQ's `rabbitmq_auth_backend_oauth2`.
//!
//! A client logs in with SASL PLAIN (or AMQPLAIN, which the host converts),
//! any username, and a JWT as the password. The token must carry a valid
//! signature by one of the configured keys (`auth_oauth2.signing_keys.<kid>`,
//! PEM RSA public keys, or `auth_oauth2.symmetric_keys.<kid>`, HMAC secrets),
//! an `exp` in the future and, unless `auth_oauth2.verify_aud = false`, an
//! `aud` naming the resource server (`auth_oauth2.resource_server_id`,
//! default `rabbitmq`). Scopes starting with the scope prefix (default
//! `<resource_server_id>.`) become permissions and tags, see [`scopes`].
//!
//! The connection's state (`AuthedUser.state`) is the token's scopes as JSON;
//! every check fails once the token has expired, as in RabbitMQ.
//!
//! The logic lives in modules that take configuration and time as arguments,
//! so it is unit-tested natively; [`OAuth2`]'s `Guest` impl only fetches.

pub mod config;
pub mod jwt;
pub mod scopes;
pub mod token;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use warren_sdk::auth::{
    AuthedUser, Guest, Permission, ResourceKind, config as host_config, log, parse_plain,
};

use config::Config;
use jwt::Refusal;
use token::Session;

/// Checks a login at time `now` (Unix seconds).
pub fn authenticate_with(
    cfg: &Config,
    mechanism: &str,
    response: &[u8],
    now: i64,
) -> Result<AuthedUser, Refusal> {
    if mechanism != "PLAIN" {
        return Err(Refusal::Mechanism(mechanism.to_owned()));
    }
    // The username is ignored; the token is the password.
    let (_username, token) =
        parse_plain(response).ok_or(Refusal::Malformed("malformed PLAIN response"))?;
    let login = token::login(token.trim(), cfg, now)?;
    Ok(AuthedUser {
        username: login.username,
        tags: login.tags,
        state: login.session.encode(),
        expires_at: u64::try_from(login.session.exp).ok(),
    })
}

/// The name a resource is checked under: RabbitMQ checks the default
/// exchange `""` as `amq.default` for every backend. Idempotent.
pub fn checked_name(kind: ResourceKind, name: &str) -> &str {
    match kind {
        ResourceKind::Exchange if name.is_empty() => "amq.default",
        _ => name,
    }
}

/// May the session open `vhost` at time `now`?
pub fn vhost_allowed(session: &Session, vhost: &str, now: i64) -> bool {
    !session.expired(now) && scopes::vhost_access(&session.scopes, &session.vars, vhost)
}

/// May the session exercise `permission` on the resource at time `now`?
pub fn resource_allowed(
    session: &Session,
    vhost: &str,
    kind: ResourceKind,
    name: &str,
    permission: Permission,
    now: i64,
) -> bool {
    !session.expired(now)
        && scopes::resource_access(
            &session.scopes,
            &session.vars,
            vhost,
            checked_name(kind, name),
            permission,
        )
}

/// May the session use `routing_key` on the topic exchange at time `now`?
pub fn topic_allowed(
    session: &Session,
    vhost: &str,
    exchange: &str,
    routing_key: &str,
    permission: Permission,
    now: i64,
) -> bool {
    !session.expired(now)
        && scopes::topic_access(
            &session.scopes,
            &session.vars,
            vhost,
            exchange,
            routing_key,
            permission,
        )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The configuration, read once per instance (the host rebuilds instances
/// when a node's configuration changes).
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (cfg, warnings) = Config::load(host_config::get, host_config::with_prefix);
        for w in warnings {
            log::log(log::Level::Warn, &w);
        }
        cfg
    })
}

thread_local! {
    /// The last decoded state: checks for one connection come in runs.
    static LAST: RefCell<Option<(Vec<u8>, Rc<Session>)>> = const { RefCell::new(None) };
}

fn session(user: &AuthedUser) -> Option<Rc<Session>> {
    LAST.with_borrow_mut(|last| {
        if let Some((_, session)) = last.as_ref().filter(|(state, _)| *state == user.state) {
            return Some(session.clone());
        }
        let session = Rc::new(Session::decode(&user.state)?);
        *last = Some((user.state.clone(), session.clone()));
        Some(session)
    })
}

/// The component.
pub struct OAuth2;

impl Guest for OAuth2 {
    fn authenticate(mechanism: String, response: Vec<u8>) -> Result<AuthedUser, String> {
        authenticate_with(config(), &mechanism, &response, now()).map_err(|refusal| {
            log::log(
                log::Level::Info,
                &format!("OAuth 2 login refused: {refusal}"),
            );
            refusal.to_string()
        })
    }

    fn check_vhost(user: AuthedUser, vhost: String) -> bool {
        session(&user).is_some_and(|s| vhost_allowed(&s, &vhost, now()))
    }

    fn check_resource(
        user: AuthedUser,
        vhost: String,
        kind: ResourceKind,
        name: String,
        permission: Permission,
    ) -> bool {
        session(&user).is_some_and(|s| resource_allowed(&s, &vhost, kind, &name, permission, now()))
    }

    fn check_topic(
        user: AuthedUser,
        vhost: String,
        exchange: String,
        routing_key: String,
        permission: Permission,
    ) -> bool {
        session(&user)
            .is_some_and(|s| topic_allowed(&s, &vhost, &exchange, &routing_key, permission, now()))
    }
}

warren_sdk::export_auth_backend!(OAuth2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::*;
    use serde_json::json;

    fn plain(token: &str) -> Vec<u8> {
        format!("\0ignored\0{token}").into_bytes()
    }

    fn login(token: &str) -> Result<AuthedUser, Refusal> {
        authenticate_with(&fixture_config(), "PLAIN", &plain(token.trim()), NOW)
    }

    fn session_of(user: &AuthedUser) -> Session {
        Session::decode(&user.state).unwrap()
    }

    #[test]
    fn full_access_token() {
        let user = login(VALID).unwrap();
        assert_eq!(user.username, "oauth-user");
        assert_eq!(user.tags, ["management"]);
        let s = session_of(&user);
        for vhost in ["/", "other"] {
            assert!(vhost_allowed(&s, vhost, NOW));
            for kind in [ResourceKind::Exchange, ResourceKind::Queue] {
                for perm in [Permission::Configure, Permission::Write, Permission::Read] {
                    assert!(resource_allowed(&s, vhost, kind, "x", perm, NOW));
                    assert!(resource_allowed(&s, vhost, kind, "", perm, NOW));
                }
            }
            assert!(topic_allowed(
                &s,
                vhost,
                "amq.topic",
                "a.b",
                Permission::Write,
                NOW
            ));
            assert!(topic_allowed(
                &s,
                vhost,
                "amq.topic",
                "a.b",
                Permission::Read,
                NOW
            ));
        }
        // Once the token expires, nothing is allowed any more.
        let later = 4_102_444_800;
        assert!(!vhost_allowed(&s, "/", later));
        assert!(!resource_allowed(
            &s,
            "/",
            ResourceKind::Queue,
            "x",
            Permission::Read,
            later
        ));
        assert!(!topic_allowed(
            &s,
            "/",
            "amq.topic",
            "k",
            Permission::Write,
            later
        ));
    }

    #[test]
    fn readonly_token_cannot_write() {
        let user = login(READONLY).unwrap();
        assert_eq!(user.username, "oauth-readonly");
        assert!(user.tags.is_empty());
        let s = session_of(&user);
        assert!(vhost_allowed(&s, "/", NOW));
        let q = ResourceKind::Queue;
        let x = ResourceKind::Exchange;
        assert!(resource_allowed(
            &s,
            "/",
            q,
            "q",
            Permission::Configure,
            NOW
        ));
        assert!(resource_allowed(&s, "/", q, "q", Permission::Read, NOW));
        assert!(!resource_allowed(&s, "/", x, "", Permission::Write, NOW));
        assert!(!resource_allowed(
            &s,
            "/",
            x,
            "amq.topic",
            Permission::Write,
            NOW
        ));
        assert!(!topic_allowed(
            &s,
            "/",
            "amq.topic",
            "k",
            Permission::Write,
            NOW
        ));
        assert!(topic_allowed(
            &s,
            "/",
            "amq.topic",
            "k",
            Permission::Read,
            NOW
        ));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            login(EXPIRED).unwrap_err().to_string(),
            "ACCESS_REFUSED - token expired"
        );
        assert_eq!(
            login(BAD_SIG).unwrap_err().to_string(),
            "ACCESS_REFUSED - invalid signature"
        );
        assert!(matches!(login("not a token"), Err(Refusal::Malformed(_))));
        assert!(matches!(
            authenticate_with(&fixture_config(), "PLAIN", b"no nuls", NOW),
            Err(Refusal::Malformed(_))
        ));
        let err = authenticate_with(&fixture_config(), "EXTERNAL", &plain(VALID.trim()), NOW)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile."
        );
        // No keys configured at all.
        let err =
            authenticate_with(&Config::default(), "PLAIN", &plain(VALID.trim()), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ACCESS_REFUSED - signing key 'rsa-key' not found"
        );
    }

    #[test]
    fn username_may_be_empty_and_token_padded() {
        let resp = format!("\0\0{}\n", VALID.trim()).into_bytes();
        assert!(authenticate_with(&fixture_config(), "PLAIN", &resp, NOW).is_ok());
    }

    #[test]
    fn scoped_hs256_token() {
        let token = mint_hs256(
            &json!({"alg": "HS256", "kid": "hmac-key"}),
            &json!({
                "sub": "svc", "aud": "rabbitmq", "exp": NOW + 3600, "client_id": "orders",
                "scope": "rabbitmq.configure:prod/{client_id}.* rabbitmq.write:prod/amq.default \
                          rabbitmq.write:prod/events/orders.* rabbitmq.read:prod/{client_id}.* rabbitmq.read:prod/events",
            }),
            HMAC_SECRET.as_bytes(),
        );
        let user = login(&token).unwrap();
        let s = session_of(&user);
        let q = ResourceKind::Queue;
        let x = ResourceKind::Exchange;
        assert!(vhost_allowed(&s, "prod", NOW));
        assert!(!vhost_allowed(&s, "/", NOW));
        assert!(resource_allowed(
            &s,
            "prod",
            q,
            "orders.in",
            Permission::Configure,
            NOW
        ));
        assert!(!resource_allowed(
            &s,
            "prod",
            q,
            "billing.in",
            Permission::Configure,
            NOW
        ));
        assert!(resource_allowed(&s, "prod", x, "", Permission::Write, NOW));
        assert!(resource_allowed(
            &s,
            "prod",
            x,
            "events",
            Permission::Write,
            NOW
        ));
        assert!(!resource_allowed(
            &s,
            "prod",
            x,
            "other",
            Permission::Write,
            NOW
        ));
        assert!(topic_allowed(
            &s,
            "prod",
            "events",
            "orders.created",
            Permission::Write,
            NOW
        ));
        assert!(!topic_allowed(
            &s,
            "prod",
            "events",
            "billing.created",
            Permission::Write,
            NOW
        ));
        // `read:prod/events` has no routing-key part: any key may be bound.
        assert!(topic_allowed(
            &s,
            "prod",
            "events",
            "billing.#",
            Permission::Read,
            NOW
        ));
        assert!(!resource_allowed(
            &s,
            "staging",
            q,
            "orders.in",
            Permission::Read,
            NOW
        ));
    }

    #[test]
    fn state_round_trip_and_garbage_state() {
        let user = login(VALID).unwrap();
        let s1 = session(&user).unwrap();
        let s2 = session(&user).unwrap();
        assert!(Rc::ptr_eq(&s1, &s2));
        let garbage = AuthedUser {
            state: b"nope".to_vec(),
            ..user
        };
        assert!(session(&garbage).is_none());
    }
}
