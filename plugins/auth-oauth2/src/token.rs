//! From a verified token to a login: username, tags and the scopes kept for
//! later checks (`rabbit_auth_backend_oauth2:authenticate/2`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::jwt::{self, Refusal};
use crate::scopes;

/// RabbitMQ refuses tokens with more (prefixed) scopes than this.
pub const MAX_SCOPE_COUNT: usize = 2048;
/// Where Keycloak's Requesting Party Tokens carry scopes; always consulted.
const RPT_SCOPES: &str = "authorization.permissions.scopes";
/// The username when none of the preferred claims is a string.
const UNKNOWN_USER: &str = "unknown";

/// What a connection keeps of its token (as `AuthedUser.state`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The token's expiry; every check fails from then on, as in RabbitMQ.
    pub exp: i64,
    /// Scopes with the prefix removed, sorted and deduplicated; `tag:` scopes excluded.
    pub scopes: Vec<String>,
    /// String claims the scopes' `{name}` variables refer to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

impl Session {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a session always serializes")
    }

    pub fn decode(state: &[u8]) -> Option<Session> {
        serde_json::from_slice(state).ok()
    }

    pub fn expired(&self, now: i64) -> bool {
        now >= self.exp
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub tags: Vec<String>,
    pub session: Session,
}

/// Verifies `token` and maps it to a login.
pub fn login(token: &str, cfg: &Config, now: i64) -> Result<Login, Refusal> {
    let claims = jwt::decode_and_verify(token, cfg)?;
    jwt::validate_claims(&claims, cfg, now)?;
    let exp = jwt::expiry(&claims)?;

    let mut all = scope_list(claims.get("scope"));
    all.extend(claim_path(&claims, RPT_SCOPES, cfg));
    if let Some(paths) = &cfg.additional_scopes_key {
        for path in paths.split(' ').filter(|p| !p.is_empty()) {
            all.extend(claim_path(&claims, path, cfg));
        }
    }
    let mut kept: Vec<String> = all
        .into_iter()
        .filter_map(|s| s.strip_prefix(cfg.scope_prefix.as_str()).map(str::to_owned))
        .collect();
    kept.sort();
    kept.dedup();
    if kept.len() > MAX_SCOPE_COUNT {
        return Err(Refusal::TooManyScopes);
    }
    let (tag_scopes, scopes): (Vec<String>, Vec<String>) =
        kept.into_iter().partition(|s| s.starts_with("tag:"));
    let tags = tag_scopes
        .into_iter()
        .map(|t| t["tag:".len()..].to_owned())
        .filter(|t| !t.is_empty())
        .collect();

    let vars = scopes::variables(&scopes)
        .filter_map(|name| {
            let value = claims.get(name)?.as_str()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();

    let username = cfg
        .preferred_username_claims
        .iter()
        .find_map(|c| claims.get(c).and_then(Value::as_str))
        .unwrap_or(UNKNOWN_USER)
        .to_owned();

    Ok(Login {
        username,
        tags,
        session: Session { exp, scopes, vars },
    })
}

/// The `scope` claim's forms: a space-separated string or an array of strings.
fn scope_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Scopes at a dotted claim path, as RabbitMQ's `extract_token_value`:
/// objects are descended by key, arrays of objects element by element; the
/// value found is a scope string or array, or an object whose
/// resource-server-id entry holds unprefixed scopes (which get the
/// `<resource_server_id>.` prefix).
fn claim_path(claims: &Map<String, Value>, path: &str, cfg: &Config) -> Vec<String> {
    let keys: Vec<&str> = path.split('.').filter(|k| !k.is_empty()).collect();
    let mut out = Vec::new();
    if let Some((v, rest)) = keys
        .split_first()
        .and_then(|(first, rest)| Some((claims.get(*first)?, rest)))
    {
        collect(v, rest, cfg, &mut out);
    }
    out
}

fn collect(value: &Value, path: &[&str], cfg: &Config, out: &mut Vec<String>) {
    match (path.split_first(), value) {
        (None, Value::Object(map)) => {
            let id = &cfg.resource_server_id;
            if let v @ Some(Value::String(_) | Value::Array(_)) = map.get(id) {
                out.extend(scope_list(v).into_iter().map(|s| format!("{id}.{s}")));
            }
        }
        (None, Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    Value::Object(_) => collect(item, path, cfg, out),
                    _ => {}
                }
            }
        }
        (None, v) => out.extend(scope_list(Some(v))),
        (Some((key, rest)), Value::Object(map)) => {
            if let Some(v) = map.get(*key) {
                collect(v, rest, cfg, out);
            }
        }
        (Some(_), Value::Array(items)) => {
            for item in items.iter().filter(|i| i.is_object()) {
                collect(item, path, cfg, out);
            }
        }
        (Some(_), _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::*;
    use serde_json::json;

    fn hs(claims: Value) -> String {
        mint_hs256(
            &json!({"alg": "HS256", "kid": "hmac-key"}),
            &claims,
            HMAC_SECRET.as_bytes(),
        )
    }

    #[test]
    fn fixture_logins() {
        let cfg = fixture_config();
        let l = login(VALID.trim(), &cfg, NOW).unwrap();
        assert_eq!(l.username, "oauth-user");
        assert_eq!(l.tags, ["management"]);
        assert_eq!(l.session.exp, 4_102_444_800);
        assert_eq!(l.session.scopes, ["configure:*/*", "read:*/*", "write:*/*"]);
        assert!(l.session.vars.is_empty());
        assert_eq!(
            Session::decode(&l.session.encode()),
            Some(l.session.clone())
        );

        let l = login(READONLY.trim(), &cfg, NOW).unwrap();
        assert_eq!(l.username, "oauth-readonly");
        assert!(l.tags.is_empty());
        assert_eq!(l.session.scopes, ["configure:*/*", "read:*/*"]);

        let l = login(VALID_HS.trim(), &cfg, NOW).unwrap();
        assert_eq!(l.username, "oauth-hmac-user");

        assert_eq!(login(EXPIRED.trim(), &cfg, NOW), Err(Refusal::Expired));
        assert_eq!(
            login(BAD_SIG.trim(), &cfg, NOW),
            Err(Refusal::InvalidSignature)
        );
        // The fixtures expire in 2100.
        assert_eq!(
            login(VALID.trim(), &cfg, 4_102_444_800),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn prefix_filtering_and_tags() {
        let cfg = fixture_config();
        let token = hs(json!({
            "sub": "u", "aud": "rabbitmq", "exp": NOW + 60,
            "scope": ["rabbitmq.read:*/*", "openid", "other.write:*/*", "rabbitmq.tag:administrator",
                      "rabbitmq.tag:management", "rabbitmq.read:*/*", "rabbitmq.tag:", 7],
        }));
        let l = login(&token, &cfg, NOW).unwrap();
        assert_eq!(l.session.scopes, ["read:*/*"]);
        assert_eq!(l.tags, ["administrator", "management"]);

        let custom = Config {
            scope_prefix: "api://".into(),
            ..fixture_config()
        };
        let token = hs(json!({
            "aud": "rabbitmq", "exp": NOW + 60,
            "scope": "api://write:vh/* rabbitmq.read:*/*  api://tag:monitoring",
        }));
        let l = login(&token, &custom, NOW).unwrap();
        assert_eq!(l.session.scopes, ["write:vh/*"]);
        assert_eq!(l.tags, ["monitoring"]);
        assert_eq!(l.username, "unknown");

        let none = Config {
            scope_prefix: String::new(),
            ..fixture_config()
        };
        let l = login(&token, &none, NOW).unwrap();
        assert_eq!(
            l.session.scopes,
            [
                "api://tag:monitoring",
                "api://write:vh/*",
                "rabbitmq.read:*/*"
            ]
        );
    }

    #[test]
    fn additional_scopes_and_rpt() {
        let cfg = Config {
            additional_scopes_key: Some("roles realm_access.roles resource_access".into()),
            ..fixture_config()
        };
        let token = hs(json!({
            "aud": "rabbitmq", "exp": NOW + 60,
            "scope": "rabbitmq.read:a/*",
            "roles": "rabbitmq.write:b/* ignored",
            "realm_access": {"roles": ["rabbitmq.configure:c/*", "offline_access"]},
            "resource_access": {"rabbitmq": ["tag:policymaker", "read:d/*"], "account": ["x"]},
            "authorization": {"permissions": [
                {"scopes": ["rabbitmq.write:e/*"], "rsid": "1"},
                {"scopes": "rabbitmq.write:f/*"},
                {"other": 1},
            ]},
        }));
        let l = login(&token, &cfg, NOW).unwrap();
        assert_eq!(
            l.session.scopes,
            [
                "configure:c/*",
                "read:a/*",
                "read:d/*",
                "write:b/*",
                "write:e/*",
                "write:f/*"
            ]
        );
        assert_eq!(l.tags, ["policymaker"]);
        // Without the setting only `scope` and the RPT location count.
        let l = login(&token, &fixture_config(), NOW).unwrap();
        assert_eq!(l.session.scopes, ["read:a/*", "write:e/*", "write:f/*"]);
    }

    #[test]
    fn preferred_username() {
        let claims = json!({"aud": "rabbitmq", "exp": NOW + 60, "sub": "s", "client_id": "c", "user_name": "un", "email": 5});
        let token = hs(claims);
        let l = login(&token, &fixture_config(), NOW).unwrap();
        assert_eq!(l.username, "s");
        let cfg = Config {
            preferred_username_claims: vec!["email".into(), "user_name".into(), "sub".into()],
            ..fixture_config()
        };
        assert_eq!(login(&token, &cfg, NOW).unwrap().username, "un");
        let token = hs(json!({"aud": "rabbitmq", "exp": NOW + 60, "client_id": "c"}));
        assert_eq!(login(&token, &fixture_config(), NOW).unwrap().username, "c");
    }

    #[test]
    fn variables_are_captured() {
        let token = hs(json!({
            "aud": "rabbitmq", "exp": NOW + 60, "client_id": "app1", "n": 3,
            "scope": "rabbitmq.configure:{vhost}/{client_id}.* rabbitmq.read:*/{n}",
        }));
        let l = login(&token, &fixture_config(), NOW).unwrap();
        assert_eq!(
            l.session.vars,
            [("client_id".to_string(), "app1".to_string())].into()
        );
    }

    #[test]
    fn too_many_scopes() {
        let many: Vec<String> = (0..=MAX_SCOPE_COUNT)
            .map(|i| format!("rabbitmq.read:*/q{i}"))
            .collect();
        let token = hs(json!({"aud": "rabbitmq", "exp": NOW + 60, "scope": many}));
        assert_eq!(
            login(&token, &fixture_config(), NOW),
            Err(Refusal::TooManyScopes)
        );
        // Duplicates and other prefixes don't count.
        let mut some: Vec<String> = vec!["rabbitmq.read:*/*".into(); MAX_SCOPE_COUNT + 5];
        some.extend((0..10).map(|i| format!("other.read:*/q{i}")));
        let token = hs(json!({"aud": "rabbitmq", "exp": NOW + 60, "scope": some}));
        assert!(login(&token, &fixture_config(), NOW).is_ok());
    }

    #[test]
    fn audience_with_custom_resource_server() {
        let cfg = Config {
            resource_server_id: "my_rabbit".into(),
            scope_prefix: "my_rabbit.".into(),
            ..fixture_config()
        };
        let err = login(VALID.trim(), &cfg, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ACCESS_REFUSED - token audience does not include 'my_rabbit'"
        );
        let token =
            hs(json!({"aud": ["my_rabbit"], "exp": NOW + 60, "scope": "my_rabbit.read:*/*"}));
        assert_eq!(
            login(&token, &cfg, NOW).unwrap().session.scopes,
            ["read:*/*"]
        );
    }
}
