//! The plugin's settings, read from the node's `auth_oauth2.*` config keys.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;

use crate::jwt::Alg;

pub const RESOURCE_SERVER_ID: &str = "auth_oauth2.resource_server_id";
pub const VERIFY_AUD: &str = "auth_oauth2.verify_aud";
pub const SCOPE_PREFIX: &str = "auth_oauth2.scope_prefix";
pub const ADDITIONAL_SCOPES_KEY: &str = "auth_oauth2.additional_scopes_key";
pub const PREFERRED_USERNAME_CLAIMS: &str = "auth_oauth2.preferred_username_claims";
pub const DEFAULT_KEY: &str = "auth_oauth2.default_key";
pub const SIGNING_KEYS: &str = "auth_oauth2.signing_keys.";
pub const SYMMETRIC_KEYS: &str = "auth_oauth2.symmetric_keys.";
pub const ALGORITHMS: &str = "auth_oauth2.algorithms.";

/// The claims a username is taken from after any configured ones, as in RabbitMQ.
pub const DEFAULT_USERNAME_CLAIMS: [&str; 2] = ["sub", "client_id"];

/// A key tokens are verified with.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// An RSA public key: RS256/384/512 and PS256/384/512 tokens.
    Rsa(RsaPublicKey),
    /// A shared secret: HS256/384/512 tokens.
    Hmac(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub resource_server_id: String,
    /// Whether `aud` must name the resource server.
    pub verify_aud: bool,
    /// Only scopes starting with this count; it is removed before mapping.
    pub scope_prefix: String,
    /// Space-separated claim paths (dots descend into objects) holding more scopes.
    pub additional_scopes_key: Option<String>,
    /// Claims the username is taken from, first string claim present wins.
    pub preferred_username_claims: Vec<String>,
    /// Key id for tokens whose header has no `kid`.
    pub default_key: Option<String>,
    pub keys: BTreeMap<String, Key>,
    /// When set, only these algorithms are accepted.
    pub algorithms: Option<Vec<Alg>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            resource_server_id: "rabbitmq".into(),
            verify_aud: true,
            scope_prefix: "rabbitmq.".into(),
            additional_scopes_key: None,
            preferred_username_claims: DEFAULT_USERNAME_CLAIMS.map(String::from).to_vec(),
            default_key: None,
            keys: BTreeMap::new(),
            algorithms: None,
        }
    }
}

/// Sorts `prefix.N` entries by N (numerically where N is a number), returning values.
fn ordered(prefix: &str, entries: Vec<(String, String)>) -> Vec<String> {
    let mut entries: Vec<(String, String)> = entries
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(prefix).unwrap_or(&k).to_owned(), v))
        .collect();
    entries.sort_by(
        |(a, _), (b, _)| match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => a.cmp(b),
        },
    );
    entries.into_iter().map(|(_, v)| v).collect()
}

/// Parses a PEM RSA public key: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1
/// (`BEGIN RSA PUBLIC KEY`).
pub fn parse_rsa_pem(pem: &str) -> Result<RsaPublicKey, String> {
    let pem = pem.trim();
    if pem.contains("-----BEGIN RSA PUBLIC KEY-----") {
        RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("invalid PKCS#1 RSA public key: {e}"))
    } else if pem.contains("-----BEGIN PUBLIC KEY-----") {
        RsaPublicKey::from_public_key_pem(pem).map_err(|e| format!("invalid RSA public key: {e}"))
    } else if pem.contains("-----BEGIN CERTIFICATE-----") {
        Err(
            "certificates are not supported; give the PEM public key (openssl x509 -pubkey -noout)"
                .into(),
        )
    } else if pem.contains("-----BEGIN") {
        Err("not a PEM RSA public key (expected BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)".into())
    } else {
        Err("not PEM; the value should be the contents of a PEM file (was a path given to a host that does not read it?)".into())
    }
}

impl Config {
    /// Reads the configuration through `get` (one key) and `with_prefix`
    /// (every key under a prefix, with its value). Problems are returned as
    /// warnings to log; the setting in question falls back to its default or
    /// the key is left out.
    pub fn load(
        get: impl Fn(&str) -> Option<String>,
        with_prefix: impl Fn(&str) -> Vec<(String, String)>,
    ) -> (Config, Vec<String>) {
        let mut warnings = Vec::new();
        let mut cfg = Config::default();

        if let Some(id) = get(RESOURCE_SERVER_ID) {
            let id = id.trim().to_owned();
            if id.is_empty() {
                warnings.push(format!("{RESOURCE_SERVER_ID} is empty; using \"rabbitmq\""));
            } else {
                cfg.resource_server_id = id;
            }
        }
        cfg.scope_prefix = match get(SCOPE_PREFIX) {
            // May be empty: then every scope counts.
            Some(prefix) => prefix.trim().to_owned(),
            None => format!("{}.", cfg.resource_server_id),
        };
        if let Some(v) = get(VERIFY_AUD) {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" => cfg.verify_aud = true,
                "false" => cfg.verify_aud = false,
                other => warnings.push(format!(
                    "{VERIFY_AUD} = {other:?} is not true or false; verifying the audience"
                )),
            }
        }
        cfg.additional_scopes_key = get(ADDITIONAL_SCOPES_KEY)
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());

        let mut claims: Vec<String> = get(PREFERRED_USERNAME_CLAIMS)
            .map(|list| list.split(',').map(|c| c.trim().to_owned()).collect())
            .unwrap_or_default();
        let prefix = format!("{PREFERRED_USERNAME_CLAIMS}.");
        claims.extend(
            ordered(&prefix, with_prefix(&prefix))
                .into_iter()
                .map(|c| c.trim().to_owned()),
        );
        claims.extend(DEFAULT_USERNAME_CLAIMS.map(String::from));
        let mut unique = Vec::new();
        for c in claims {
            if !c.is_empty() && !unique.contains(&c) {
                unique.push(c);
            }
        }
        cfg.preferred_username_claims = unique;

        for (key, value) in with_prefix(SIGNING_KEYS) {
            let kid = key.strip_prefix(SIGNING_KEYS).unwrap_or(&key).to_owned();
            match parse_rsa_pem(&value) {
                Ok(k) => {
                    cfg.keys.insert(kid, Key::Rsa(k));
                }
                Err(e) => warnings.push(format!("{SIGNING_KEYS}{kid} ignored: {e}")),
            }
        }
        for (key, value) in with_prefix(SYMMETRIC_KEYS) {
            let kid = key.strip_prefix(SYMMETRIC_KEYS).unwrap_or(&key).to_owned();
            if value.is_empty() {
                warnings.push(format!("{SYMMETRIC_KEYS}{kid} ignored: empty secret"));
                continue;
            }
            match cfg.keys.entry(kid) {
                Entry::Occupied(e) => warnings.push(format!(
                    "{SYMMETRIC_KEYS}{kid} ignored: {SIGNING_KEYS}{kid} uses the same key id",
                    kid = e.key()
                )),
                Entry::Vacant(e) => {
                    e.insert(Key::Hmac(value.into_bytes()));
                }
            }
        }
        cfg.default_key = get(DEFAULT_KEY)
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        if let Some(kid) = cfg
            .default_key
            .as_ref()
            .filter(|k| !cfg.keys.contains_key(*k))
        {
            warnings.push(format!("{DEFAULT_KEY} = {kid:?} names no configured key"));
        }
        if cfg.keys.is_empty() {
            warnings.push(format!(
                "no signing keys configured ({SIGNING_KEYS}<kid> or {SYMMETRIC_KEYS}<kid>); every token will be refused"
            ));
        }

        let algs = ordered(ALGORITHMS, with_prefix(ALGORITHMS));
        if !algs.is_empty() {
            let mut allowed = Vec::new();
            for name in algs {
                match Alg::from_name(name.trim()) {
                    Some(a) => allowed.push(a),
                    None => warnings.push(format!(
                        "{ALGORITHMS}: unsupported algorithm {name:?} ignored"
                    )),
                }
            }
            cfg.algorithms = Some(allowed);
        }
        (cfg, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC_SPKI: &str = include_str!("../../../tests/fixtures/oauth2/public.pem");
    const PUBLIC_PKCS1: &str = include_str!("../../../tests/fixtures/oauth2/public-pkcs1.pem");

    fn load(pairs: &[(&str, &str)]) -> (Config, Vec<String>) {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(
            |k| {
                pairs
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            },
            |p| {
                pairs
                    .iter()
                    .filter(|(k, _)| k.starts_with(p))
                    .cloned()
                    .collect()
            },
        )
    }

    #[test]
    fn defaults() {
        let (cfg, warnings) = load(&[]);
        assert_eq!(cfg.resource_server_id, "rabbitmq");
        assert_eq!(cfg.scope_prefix, "rabbitmq.");
        assert!(cfg.verify_aud);
        assert_eq!(cfg.preferred_username_claims, ["sub", "client_id"]);
        assert!(cfg.keys.is_empty());
        assert!(cfg.algorithms.is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn everything_set() {
        let (cfg, warnings) = load(&[
            ("auth_oauth2.resource_server_id", "my_rabbit"),
            ("auth_oauth2.verify_aud", "False"),
            ("auth_oauth2.additional_scopes_key", "roles extra.scopes"),
            ("auth_oauth2.preferred_username_claims.2", "user_name"),
            ("auth_oauth2.preferred_username_claims.10", "email"),
            ("auth_oauth2.preferred_username_claims.1", "username"),
            ("auth_oauth2.default_key", "spki"),
            ("auth_oauth2.signing_keys.spki", PUBLIC_SPKI),
            ("auth_oauth2.signing_keys.pkcs1", PUBLIC_PKCS1),
            ("auth_oauth2.symmetric_keys.hmac", "s3cret"),
            ("auth_oauth2.algorithms.1", "RS256"),
            ("auth_oauth2.algorithms.2", "HS256"),
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.resource_server_id, "my_rabbit");
        assert_eq!(cfg.scope_prefix, "my_rabbit.");
        assert!(!cfg.verify_aud);
        assert_eq!(
            cfg.additional_scopes_key.as_deref(),
            Some("roles extra.scopes")
        );
        assert_eq!(
            cfg.preferred_username_claims,
            ["username", "user_name", "email", "sub", "client_id"]
        );
        assert_eq!(cfg.default_key.as_deref(), Some("spki"));
        assert_eq!(cfg.keys.len(), 3);
        // Both PEM forms give the same key.
        assert_eq!(cfg.keys["spki"], cfg.keys["pkcs1"]);
        assert_eq!(cfg.keys["hmac"], Key::Hmac(b"s3cret".to_vec()));
        assert_eq!(cfg.algorithms, Some(vec![Alg::RS256, Alg::HS256]));
    }

    #[test]
    fn scope_prefix_may_be_set_or_empty() {
        let (cfg, _) = load(&[("auth_oauth2.scope_prefix", "api://")]);
        assert_eq!(cfg.scope_prefix, "api://");
        let (cfg, _) = load(&[
            ("auth_oauth2.resource_server_id", "x"),
            ("auth_oauth2.scope_prefix", ""),
        ]);
        assert_eq!(cfg.scope_prefix, "");
        let (cfg, _) = load(&[("auth_oauth2.preferred_username_claims", "a, sub ,b")]);
        assert_eq!(
            cfg.preferred_username_claims,
            ["a", "sub", "b", "client_id"]
        );
    }

    #[test]
    fn bad_settings_warn_and_fall_back() {
        let (cfg, warnings) = load(&[
            ("auth_oauth2.resource_server_id", " "),
            ("auth_oauth2.verify_aud", "maybe"),
            ("auth_oauth2.signing_keys.path", "/etc/warren/key.pem"),
            (
                "auth_oauth2.signing_keys.garbage",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            ),
            (
                "auth_oauth2.signing_keys.cert",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            ("auth_oauth2.symmetric_keys.empty", ""),
            ("auth_oauth2.signing_keys.dup", PUBLIC_SPKI),
            ("auth_oauth2.symmetric_keys.dup", "x"),
            ("auth_oauth2.default_key", "missing"),
            ("auth_oauth2.algorithms.1", "none"),
        ]);
        assert_eq!(cfg.resource_server_id, "rabbitmq");
        assert!(cfg.verify_aud);
        assert_eq!(cfg.keys.keys().collect::<Vec<_>>(), ["dup"]);
        assert!(matches!(cfg.keys["dup"], Key::Rsa(_)));
        assert_eq!(cfg.algorithms, Some(vec![]));
        assert_eq!(warnings.len(), 9, "{warnings:#?}");
        assert!(warnings.iter().any(|w| w.contains("was a path given")));
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("certificates are not supported"))
        );
    }
}
