//! JWS compact tokens: decoding, signature verification and the time and
//! audience checks (`uaa_jwt` in rabbitmq_auth_backend_oauth2).

use std::fmt;

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::config::{Config, Key};

/// base64url, with or without `=` padding.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The signature algorithms accepted (`none` never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            _ => return None,
        })
    }

    fn fits(self, key: &Key) -> bool {
        let hmac = matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512);
        hmac == matches!(key, Key::Hmac(_))
    }
}

/// Why a token was refused. `Display` gives the text the client is closed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not PLAIN: the token travels as the PLAIN password.
    Mechanism(String),
    /// Not a JWS compact token (three base64url parts, JSON objects).
    Malformed(&'static str),
    /// `alg` is `none`, unknown, or not in `auth_oauth2.algorithms`.
    Algorithm(String),
    /// No `kid`, and no default (or single) key to fall back on.
    NoKey,
    /// The `kid` names no configured key.
    UnknownKey(String),
    /// `alg` doesn't suit the key (e.g. HS256 with an RSA key).
    AlgorithmMismatch {
        alg: String,
        kid: String,
    },
    InvalidSignature,
    NoExpiry,
    Expired,
    NotYetValid,
    Audience(String),
    TooManyScopes,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Mechanism(m) => write!(
                f,
                "ACCESS_REFUSED - Login was refused using authentication mechanism {m}. For details see the broker logfile."
            ),
            Refusal::Malformed(why) => {
                write!(f, "ACCESS_REFUSED - provided token is invalid: {why}")
            }
            Refusal::Algorithm(alg) => {
                write!(
                    f,
                    "ACCESS_REFUSED - token signing algorithm '{alg}' is not allowed"
                )
            }
            Refusal::NoKey => write!(
                f,
                "ACCESS_REFUSED - token has no key id and no default signing key is configured"
            ),
            Refusal::UnknownKey(kid) => write!(f, "ACCESS_REFUSED - signing key '{kid}' not found"),
            Refusal::AlgorithmMismatch { alg, kid } => write!(
                f,
                "ACCESS_REFUSED - token signing algorithm '{alg}' does not match signing key '{kid}'"
            ),
            Refusal::InvalidSignature => write!(f, "ACCESS_REFUSED - invalid signature"),
            Refusal::NoExpiry => write!(f, "ACCESS_REFUSED - token has no valid exp claim"),
            Refusal::Expired => write!(f, "ACCESS_REFUSED - token expired"),
            Refusal::NotYetValid => write!(f, "ACCESS_REFUSED - token not yet valid (nbf)"),
            Refusal::Audience(id) => {
                write!(f, "ACCESS_REFUSED - token audience does not include '{id}'")
            }
            Refusal::TooManyScopes => write!(f, "ACCESS_REFUSED - token has too many scopes"),
        }
    }
}

fn decode_json(part: &str) -> Result<Map<String, Value>, Refusal> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| Refusal::Malformed("bad base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::Malformed("not a JSON object")),
    }
}

/// Checks the token's form, algorithm and signature against the configured
/// keys and returns its claims (not yet checked, see [`validate_claims`]).
pub fn decode_and_verify(token: &str, cfg: &Config) -> Result<Map<String, Value>, Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed(
            "not a signed JWT (header.payload.signature)",
        ));
    };
    let header_json = decode_json(header)?;
    let Some(alg_name) = header_json.get("alg").and_then(Value::as_str) else {
        return Err(Refusal::Malformed("no alg in header"));
    };
    let alg = Alg::from_name(alg_name).ok_or_else(|| Refusal::Algorithm(alg_name.to_owned()))?;
    if cfg
        .algorithms
        .as_ref()
        .is_some_and(|allowed| !allowed.contains(&alg))
    {
        return Err(Refusal::Algorithm(alg_name.to_owned()));
    }
    if header_json.contains_key("crit") {
        return Err(Refusal::Malformed("unsupported critical header"));
    }
    let kid = match header_json.get("kid") {
        Some(Value::String(kid)) => kid.clone(),
        Some(_) => return Err(Refusal::Malformed("kid is not a string")),
        None => match (&cfg.default_key, cfg.keys.len()) {
            (Some(kid), _) => kid.clone(),
            (None, 1) => cfg.keys.keys().next().expect("one key").clone(),
            (None, _) => return Err(Refusal::NoKey),
        },
    };
    let key = cfg
        .keys
        .get(&kid)
        .ok_or_else(|| Refusal::UnknownKey(kid.clone()))?;
    if !alg.fits(key) {
        return Err(Refusal::AlgorithmMismatch {
            alg: alg_name.to_owned(),
            kid,
        });
    }
    let signature = B64URL
        .decode(signature)
        .map_err(|_| Refusal::Malformed("bad base64url"))?;
    let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
    if !verify_signature(alg, key, signed, &signature) {
        return Err(Refusal::InvalidSignature);
    }
    decode_json(payload)
}

fn verify_signature(alg: Alg, key: &Key, signed: &[u8], signature: &[u8]) -> bool {
    match key {
        Key::Hmac(secret) => match alg {
            Alg::HS256 => hmac_ok::<Hmac<Sha256>>(secret, signed, signature),
            Alg::HS384 => hmac_ok::<Hmac<Sha384>>(secret, signed, signature),
            Alg::HS512 => hmac_ok::<Hmac<Sha512>>(secret, signed, signature),
            _ => false,
        },
        Key::Rsa(key) => match alg {
            Alg::RS256 => rsa_ok(
                key,
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(signed),
                signature,
            ),
            Alg::RS384 => rsa_ok(
                key,
                Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(signed),
                signature,
            ),
            Alg::RS512 => rsa_ok(
                key,
                Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(signed),
                signature,
            ),
            Alg::PS256 => rsa_ok(
                key,
                Pss::new::<Sha256>(),
                &Sha256::digest(signed),
                signature,
            ),
            Alg::PS384 => rsa_ok(
                key,
                Pss::new::<Sha384>(),
                &Sha384::digest(signed),
                signature,
            ),
            Alg::PS512 => rsa_ok(
                key,
                Pss::new::<Sha512>(),
                &Sha512::digest(signed),
                signature,
            ),
            _ => false,
        },
    }
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(secret: &[u8], signed: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as Mac>::new_from_slice(secret) else {
        return false;
    };
    mac.update(signed);
    // Constant-time comparison.
    mac.verify_slice(signature).is_ok()
}

fn rsa_ok(
    key: &RsaPublicKey,
    scheme: impl rsa::traits::SignatureScheme,
    hashed: &[u8],
    sig: &[u8],
) -> bool {
    key.verify(scheme, hashed, sig).is_ok()
}

/// A numeric date claim as whole seconds (RabbitMQ truncates fractions).
fn seconds(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.trunc() as i64)
        })
}

/// The token's `exp` claim, which must be present and numeric.
pub fn expiry(claims: &Map<String, Value>) -> Result<i64, Refusal> {
    claims.get("exp").and_then(seconds).ok_or(Refusal::NoExpiry)
}

/// Checks `exp` (required; expired once `now >= exp`), `nbf` (if present)
/// and, when `verify_aud`, that `aud` (a string or an array) names the
/// resource server.
pub fn validate_claims(claims: &Map<String, Value>, cfg: &Config, now: i64) -> Result<(), Refusal> {
    if now >= expiry(claims)? {
        return Err(Refusal::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = seconds(nbf).ok_or(Refusal::Malformed("nbf is not a number"))?;
        if now < nbf {
            return Err(Refusal::NotYetValid);
        }
    }
    if cfg.verify_aud {
        let id = cfg.resource_server_id.as_str();
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == id,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(id)),
            _ => false,
        };
        if !ok {
            return Err(Refusal::Audience(cfg.resource_server_id.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::parse_rsa_pem;
    use std::collections::BTreeMap;

    pub const VALID: &str = include_str!("../../../tests/fixtures/oauth2/valid-rs256.jwt");
    pub const EXPIRED: &str = include_str!("../../../tests/fixtures/oauth2/expired-rs256.jwt");
    pub const BAD_SIG: &str =
        include_str!("../../../tests/fixtures/oauth2/bad-signature-rs256.jwt");
    pub const READONLY: &str = include_str!("../../../tests/fixtures/oauth2/readonly-rs256.jwt");
    pub const VALID_HS: &str = include_str!("../../../tests/fixtures/oauth2/valid-hs256.jwt");
    pub const HMAC_SECRET: &str = include_str!("../../../tests/fixtures/oauth2/hmac-secret.txt");
    pub const PUBLIC: &str = include_str!("../../../tests/fixtures/oauth2/public.pem");
    pub const PUBLIC_PKCS1: &str = include_str!("../../../tests/fixtures/oauth2/public-pkcs1.pem");
    pub const OTHER_PUBLIC: &str = include_str!("../../../tests/fixtures/oauth2/other-public.pem");
    /// 2023-11-14, between the fixtures' iat and exp.
    pub const NOW: i64 = 1_700_000_000;

    /// The fixtures' keys: `rsa-key` (public.pem) and `hmac-key`.
    pub fn fixture_config() -> Config {
        let mut keys = BTreeMap::new();
        keys.insert(
            "rsa-key".to_owned(),
            Key::Rsa(parse_rsa_pem(PUBLIC).unwrap()),
        );
        keys.insert(
            "hmac-key".to_owned(),
            Key::Hmac(HMAC_SECRET.as_bytes().to_vec()),
        );
        Config {
            keys,
            ..Config::default()
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Mints an HMAC-SHA256 token over the given header and claims.
    pub fn mint_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    fn claims_of(token: &str) -> Map<String, Value> {
        decode_json(token.split('.').nth(1).unwrap()).unwrap()
    }

    #[test]
    fn fixture_tokens() {
        let cfg = fixture_config();
        let claims = decode_and_verify(VALID.trim(), &cfg).unwrap();
        assert_eq!(claims["sub"], "oauth-user");
        validate_claims(&claims, &cfg, NOW).unwrap();
        let claims = decode_and_verify(READONLY.trim(), &cfg).unwrap();
        validate_claims(&claims, &cfg, NOW).unwrap();
        let claims = decode_and_verify(VALID_HS.trim(), &cfg).unwrap();
        validate_claims(&claims, &cfg, NOW).unwrap();

        let claims = decode_and_verify(EXPIRED.trim(), &cfg).unwrap();
        assert_eq!(validate_claims(&claims, &cfg, NOW), Err(Refusal::Expired));
        assert_eq!(
            Refusal::Expired.to_string(),
            "ACCESS_REFUSED - token expired"
        );

        let err = decode_and_verify(BAD_SIG.trim(), &cfg).unwrap_err();
        assert_eq!(err, Refusal::InvalidSignature);
        assert_eq!(err.to_string(), "ACCESS_REFUSED - invalid signature");
    }

    #[test]
    fn pkcs1_key_and_the_other_key() {
        let mut cfg = fixture_config();
        cfg.keys.insert(
            "rsa-key".into(),
            Key::Rsa(parse_rsa_pem(PUBLIC_PKCS1).unwrap()),
        );
        assert!(decode_and_verify(VALID.trim(), &cfg).is_ok());
        assert_eq!(
            decode_and_verify(BAD_SIG.trim(), &cfg),
            Err(Refusal::InvalidSignature)
        );
        cfg.keys.insert(
            "rsa-key".into(),
            Key::Rsa(parse_rsa_pem(OTHER_PUBLIC).unwrap()),
        );
        assert!(decode_and_verify(BAD_SIG.trim(), &cfg).is_ok());
        assert_eq!(
            decode_and_verify(VALID.trim(), &cfg),
            Err(Refusal::InvalidSignature)
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let cfg = fixture_config();
        let token = VALID.trim();
        let parts: Vec<&str> = token.split('.').collect();
        // The same signature over changed claims.
        let mut claims = claims_of(token);
        claims.insert("sub".into(), "admin".into());
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(Value::Object(claims).to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            decode_and_verify(&forged, &cfg),
            Err(Refusal::InvalidSignature)
        );
        // A flipped signature bit.
        let mut sig = B64URL.decode(parts[2]).unwrap();
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert_eq!(
            decode_and_verify(&flipped, &cfg),
            Err(Refusal::InvalidSignature)
        );
        // Padding is tolerated (a 256-byte signature takes two `=`).
        let padded = format!("{}.{}.{}==", parts[0], parts[1], parts[2]);
        assert!(decode_and_verify(&padded, &cfg).is_ok());
    }

    #[test]
    fn hs256_tokens_minted_here() {
        let cfg = fixture_config();
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "hmac-key"});
        let claims = serde_json::json!({"sub": "u", "aud": ["x", "rabbitmq"], "exp": NOW + 60});
        let token = mint_hs256(&header, &claims, HMAC_SECRET.as_bytes());
        let got = decode_and_verify(&token, &cfg).unwrap();
        validate_claims(&got, &cfg, NOW).unwrap();
        assert_eq!(validate_claims(&got, &cfg, NOW + 60), Err(Refusal::Expired));
        assert_eq!(validate_claims(&got, &cfg, NOW + 59), Ok(()));
        // The wrong secret.
        let token = mint_hs256(&header, &claims, b"not the secret");
        assert_eq!(
            decode_and_verify(&token, &cfg),
            Err(Refusal::InvalidSignature)
        );
    }

    #[test]
    fn algorithm_confusion_and_none_are_refused() {
        let cfg = fixture_config();
        let claims = serde_json::json!({"sub": "u", "aud": "rabbitmq", "exp": NOW + 60});
        // HS256 "signed" with the RSA public key's PEM text, naming the RSA key.
        let token = mint_hs256(
            &serde_json::json!({"alg": "HS256", "kid": "rsa-key"}),
            &claims,
            PUBLIC.as_bytes(),
        );
        assert_eq!(
            decode_and_verify(&token, &cfg),
            Err(Refusal::AlgorithmMismatch {
                alg: "HS256".into(),
                kid: "rsa-key".into()
            })
        );
        // RS256 naming the HMAC key.
        let parts: Vec<&str> = VALID.trim().split('.').collect();
        let header = b64(br#"{"alg":"RS256","kid":"hmac-key"}"#);
        let token = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(
            decode_and_verify(&token, &cfg),
            Err(Refusal::AlgorithmMismatch { .. })
        ));
        // alg none, with or without a signature.
        let none = b64(br#"{"alg":"none","kid":"rsa-key"}"#);
        for token in [
            format!("{none}.{}.", parts[1]),
            format!("{none}.{}.{}", parts[1], parts[2]),
        ] {
            let err = decode_and_verify(&token, &cfg).unwrap_err();
            assert_eq!(err, Refusal::Algorithm("none".into()));
            assert_eq!(
                err.to_string(),
                "ACCESS_REFUSED - token signing algorithm 'none' is not allowed"
            );
        }
        // alg restricted by configuration.
        let mut only_hs = fixture_config();
        only_hs.algorithms = Some(vec![Alg::HS256]);
        assert_eq!(
            decode_and_verify(VALID.trim(), &only_hs),
            Err(Refusal::Algorithm("RS256".into()))
        );
        assert!(decode_and_verify(VALID_HS.trim(), &only_hs).is_ok());
    }

    #[test]
    fn key_selection() {
        let claims = serde_json::json!({"sub": "u", "aud": "rabbitmq", "exp": NOW + 60});
        let no_kid = mint_hs256(
            &serde_json::json!({"alg": "HS256"}),
            &claims,
            HMAC_SECRET.as_bytes(),
        );
        // Two keys, no default: refused.
        let mut cfg = fixture_config();
        assert_eq!(decode_and_verify(&no_kid, &cfg), Err(Refusal::NoKey));
        // The default key.
        cfg.default_key = Some("hmac-key".into());
        assert!(decode_and_verify(&no_kid, &cfg).is_ok());
        cfg.default_key = Some("rsa-key".into());
        assert!(matches!(
            decode_and_verify(&no_kid, &cfg),
            Err(Refusal::AlgorithmMismatch { .. })
        ));
        // The only key.
        cfg.default_key = None;
        cfg.keys.remove("rsa-key");
        assert!(decode_and_verify(&no_kid, &cfg).is_ok());
        // An unknown kid is refused even with a default key.
        let other = mint_hs256(
            &serde_json::json!({"alg": "HS256", "kid": "nope"}),
            &claims,
            HMAC_SECRET.as_bytes(),
        );
        cfg.default_key = Some("hmac-key".into());
        let err = decode_and_verify(&other, &cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ACCESS_REFUSED - signing key 'nope' not found"
        );
    }

    #[test]
    fn malformed_tokens() {
        let cfg = fixture_config();
        let good = VALID.trim();
        for bad in [
            "".to_owned(),
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{good}.extra"),
            format!("!!!.{}", good.split_once('.').unwrap().1),
            format!("{}.{}.sig", b64(b"[1,2]"), b64(b"{}")),
            format!("{}.{}.sig", b64(br#"{"kid":"rsa-key"}"#), b64(b"{}")),
            format!("{}.{}.sig", b64(br#"{"alg":"RS256","kid":7}"#), b64(b"{}")),
            format!(
                "{}.{}.sig",
                b64(br#"{"alg":"RS256","kid":"rsa-key","crit":["b64"]}"#),
                b64(b"{}")
            ),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(
                matches!(decode_and_verify(&bad, &cfg), Err(Refusal::Malformed(_))),
                "{bad:.80}"
            );
        }
        // A good signature over a payload that isn't a JSON object.
        let token = mint_hs256(
            &serde_json::json!({"alg": "HS256", "kid": "hmac-key"}),
            &serde_json::json!([1]),
            HMAC_SECRET.as_bytes(),
        );
        assert_eq!(
            decode_and_verify(&token, &cfg),
            Err(Refusal::Malformed("not a JSON object"))
        );
    }

    #[test]
    fn claim_checks() {
        let cfg = fixture_config();
        let check = |claims: Value| {
            let Value::Object(map) = claims else {
                unreachable!()
            };
            validate_claims(&map, &cfg, NOW)
        };
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq"})),
            Err(Refusal::NoExpiry)
        );
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq", "exp": "later"})),
            Err(Refusal::NoExpiry)
        );
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq", "exp": NOW})),
            Err(Refusal::Expired)
        );
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq", "exp": NOW as f64 + 0.5})),
            Err(Refusal::Expired)
        );
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq", "exp": NOW + 1})),
            Ok(())
        );
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq", "exp": NOW + 1, "nbf": NOW + 1})),
            Err(Refusal::NotYetValid)
        );
        assert_eq!(
            check(serde_json::json!({"aud": "rabbitmq", "exp": NOW + 1, "nbf": NOW})),
            Ok(())
        );
        let aud: Result<(), Refusal> = Err(Refusal::Audience("rabbitmq".into()));
        assert_eq!(check(serde_json::json!({"exp": NOW + 1})), aud);
        assert_eq!(
            check(serde_json::json!({"aud": "other", "exp": NOW + 1})),
            aud
        );
        assert_eq!(
            check(serde_json::json!({"aud": ["a", "b"], "exp": NOW + 1})),
            aud
        );
        assert_eq!(
            check(serde_json::json!({"aud": ["a", "rabbitmq"], "exp": NOW + 1})),
            Ok(())
        );
        assert_eq!(
            Refusal::Audience("rabbitmq".into()).to_string(),
            "ACCESS_REFUSED - token audience does not include 'rabbitmq'"
        );
        let lax = Config {
            verify_aud: false,
            ..fixture_config()
        };
        let Value::Object(map) = serde_json::json!({"aud": "other", "exp": NOW + 1}) else {
            unreachable!()
        };
        assert_eq!(validate_claims(&map, &lax, NOW), Ok(()));
    }
}
