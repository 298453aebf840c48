//! Credentials, compatible with RabbitMQ's internal auth backend.
//!
//! * Password hashes use `rabbit_password_hashing_sha256`, so hashes exported
//!   from RabbitMQ definitions (`password_hash` with
//!   `hashing_algorithm: rabbit_password_hashing_sha256`) verify unchanged.
//! * SASL PLAIN and AMQPLAIN responses are parsed into username/password.
//!
//! Checking passwords and permissions is the auth backends' work (plugins, see
//! `plugins/auth.rs`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const SALT_LEN: usize = 4;
const DIGEST_LEN: usize = 32;

fn salted_hash(salt: &[u8; SALT_LEN], password: &str) -> [u8; SALT_LEN + DIGEST_LEN] {
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut out = [0u8; SALT_LEN + DIGEST_LEN];
    out[..SALT_LEN].copy_from_slice(salt);
    out[SALT_LEN..].copy_from_slice(&digest);
    out
}

/// RabbitMQ's rabbit_password_hashing_sha256: base64(salt(4 random bytes) ++ sha256(salt ++ utf8 password)).
pub fn hash_password(password: &str) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    STANDARD.encode(salted_hash(&salt, password))
}

/// Parses a SASL PLAIN response, `authzid \0 authcid \0 password` (RFC 4616),
/// returning (authcid, password).
///
/// RabbitMQ itself only accepts an empty authzid; this also accepts a
/// non-empty one and ignores it, which grants nothing extra since the user
/// authenticated is always authcid. As in RabbitMQ the password runs to the
/// end, so a further NUL makes the response invalid. Non-UTF-8 names are
/// refused since they can't name any user here.
pub fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.splitn(3, |b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if pass.contains(&0) {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32_len(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok()
    }
}

/// Parses an AMQPLAIN response: the entries of a field table (no 4-byte size
/// prefix, as the response long string already carries the size) holding
/// `LOGIN` and `PASSWORD` as long strings.
///
/// Other entries are skipped for every field type RabbitMQ knows; an unknown
/// type or truncated data makes the whole response invalid because the rest
/// can't be located. As with RabbitMQ's `lists:keysearch`, the first
/// occurrence of a duplicated name wins. `LOGIN`/`PASSWORD` of any type
/// other than long string are refused.
pub fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut r = Reader(response);
    let mut login: Option<Option<&[u8]>> = None;
    let mut password: Option<Option<&[u8]>> = None;
    while !r.0.is_empty() {
        let name_len = usize::from(r.u8()?);
        let name = r.take(name_len)?;
        let kind = r.u8()?;
        let value = match kind {
            b'S' => {
                let n = r.u32_len()?;
                Some(r.take(n)?)
            }
            b't' | b'b' | b'B' => r.take(1).map(|_| None)?,
            b's' | b'u' | b'U' => r.take(2).map(|_| None)?,
            b'I' | b'i' | b'f' => r.take(4).map(|_| None)?,
            b'D' => r.take(5).map(|_| None)?,
            b'l' | b'L' | b'd' | b'T' => r.take(8).map(|_| None)?,
            b'F' | b'A' | b'x' => {
                let n = r.u32_len()?;
                r.take(n).map(|_| None)?
            }
            b'V' => None,
            _ => return None,
        };
        let slot = match name {
            b"LOGIN" => &mut login,
            b"PASSWORD" => &mut password,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    let user = login??;
    let pass = password??;
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // What a backend that checks passwords does with `hash_password`'s format (the internal
    // backend plugin has its own copy): here it checks that the format is RabbitMQ's.
    /// Verifies `password` against a stored hash in the format of [`hash_password`].
    /// Malformed hashes (bad base64, wrong length, and the empty string RabbitMQ
    /// uses to disable password login) never match.
    fn check_password(password: &str, password_hash_b64: &str) -> bool {
        let Ok(stored) = STANDARD.decode(password_hash_b64) else {
            return false;
        };
        let Ok(stored) = <[u8; SALT_LEN + DIGEST_LEN]>::try_from(stored.as_slice()) else {
            return false;
        };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&stored[..SALT_LEN]);
        constant_time_eq(&salted_hash(&salt, password), &stored)
    }

    /// Compares without an early exit so timing doesn't reveal how many leading
    /// bytes of a guess were right.
    fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }

    #[test]
    fn verifies_hash_exported_by_rabbitmq() {
        // A RabbitMQ-generated hash of the password "1", from a definitions
        // export quoted on Stack Overflow (question 41306350).
        let h = "y4xPTRVfzXg68sz9ALqeQzARam3CwnGo53xS752cDV5+Utzh";
        assert!(check_password("1", h));
        assert!(!check_password("2", h));
        assert!(!check_password("", h));
    }

    #[test]
    fn hand_computed_vectors() {
        // Computed independently with Python's hashlib/base64.
        // salt "abcd", empty password: sha256("abcd") = 88d4266f…
        assert!(check_password(
            "",
            "YWJjZIjUJm/U5jONE7hF/PKJV50gnIl4I7khfaPhYZNvAxWJ"
        ));
        // Non-ASCII passwords are hashed as UTF-8.
        assert!(check_password(
            "pässwörd",
            "ytUImy8p8klq/bmT1B8rornAd4yIyn6LZztlFEBa55RYtAWs"
        ));
        assert!(!check_password(
            "passwort",
            "ytUImy8p8klq/bmT1B8rornAd4yIyn6LZztlFEBa55RYtAWs"
        ));

        // And assembled by hand from the definition.
        let salt = [0xCA, 0xD5, 0x08, 0x9B];
        let mut hasher = Sha256::new();
        hasher.update([0xCA, 0xD5, 0x08, 0x9B, b's', b'i', b'm', b'o', b'n']);
        let mut raw = salt.to_vec();
        raw.extend_from_slice(&hasher.finalize());
        assert_eq!(raw.len(), 36);
        let b64 = STANDARD.encode(&raw);
        assert_eq!(b64.len(), 48);
        assert!(check_password("simon", &b64));
        assert_eq!(STANDARD.encode(salted_hash(&salt, "simon")), b64);
    }

    #[test]
    fn round_trip_with_random_salt() {
        let a = hash_password("s3cret");
        let b = hash_password("s3cret");
        assert_eq!(a.len(), 48);
        assert!(check_password("s3cret", &a));
        assert!(check_password("s3cret", &b));
        assert!(!check_password("s3cret ", &a));
        // 2^-32 chance of a salt collision; a failure here means salts aren't random.
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_hashes_never_match() {
        assert!(!check_password("", ""));
        assert!(!check_password("x", "not base64!"));
        assert!(!check_password("x", "YWJjZA=="));
        let good = hash_password("x");
        assert!(!check_password("x", &good[..44]));
        assert!(!check_password("x", &format!("{good}AAAA")));
    }

    #[test]
    fn plain() {
        assert_eq!(
            parse_plain(b"\0guest\0guest"),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            parse_plain(b"admin\0guest\0pw"),
            Some(("guest".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"\0user\0"), Some(("user".into(), "".into())));
        assert_eq!(parse_plain(b"\0\0pw"), Some(("".into(), "pw".into())));
        assert_eq!(
            parse_plain("\0jürgen\0pä ss".as_bytes()),
            Some(("jürgen".into(), "pä ss".into()))
        );
        assert_eq!(parse_plain(b""), None);
        assert_eq!(parse_plain(b"guest"), None);
        assert_eq!(parse_plain(b"\0guest"), None);
        assert_eq!(parse_plain(b"\0user\0pass\0extra"), None);
        assert_eq!(parse_plain(b"\0us\xffer\0pass"), None);
    }

    fn entry(out: &mut Vec<u8>, name: &str, kind: u8, value: &[u8]) {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(kind);
        out.extend_from_slice(value);
    }

    fn longstr(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    #[test]
    fn amqplain_basic_and_order_independent() {
        let mut t = Vec::new();
        entry(&mut t, "LOGIN", b'S', &longstr(b"guest"));
        entry(&mut t, "PASSWORD", b'S', &longstr(b"secret"));
        assert_eq!(parse_amqplain(&t), Some(("guest".into(), "secret".into())));
        let mut t = Vec::new();
        entry(&mut t, "PASSWORD", b'S', &longstr(b""));
        entry(&mut t, "LOGIN", b'S', &longstr(b"u"));
        assert_eq!(parse_amqplain(&t), Some(("u".into(), "".into())));
    }

    #[test]
    fn amqplain_skips_other_fields_of_every_type() {
        let mut t = Vec::new();
        entry(&mut t, "b", b't', &[1]);
        entry(&mut t, "i8", b'b', &[0xff]);
        entry(&mut t, "i16", b's', &[0, 1]);
        entry(&mut t, "i32", b'I', &[0, 0, 0, 1]);
        entry(&mut t, "f", b'f', &[0; 4]);
        entry(&mut t, "dec", b'D', &[2, 0, 0, 0, 100]);
        entry(&mut t, "LOGIN", b'S', &longstr(b"guest"));
        entry(&mut t, "i64", b'l', &[0; 8]);
        entry(&mut t, "ts", b'T', &[0; 8]);
        entry(&mut t, "d", b'd', &[0; 8]);
        entry(&mut t, "tbl", b'F', &longstr(b"\x01kS\0\0\0\x01v"));
        entry(&mut t, "arr", b'A', &longstr(b"S\0\0\0\x01v"));
        entry(&mut t, "bin", b'x', &longstr(b"\0\x01"));
        entry(&mut t, "nil", b'V', &[]);
        entry(&mut t, "PASSWORD", b'S', &longstr(b"pw"));
        assert_eq!(parse_amqplain(&t), Some(("guest".into(), "pw".into())));
    }

    #[test]
    fn amqplain_first_duplicate_wins() {
        let mut t = Vec::new();
        entry(&mut t, "LOGIN", b'S', &longstr(b"first"));
        entry(&mut t, "LOGIN", b'S', &longstr(b"second"));
        entry(&mut t, "PASSWORD", b'S', &longstr(b"pw"));
        assert_eq!(parse_amqplain(&t), Some(("first".into(), "pw".into())));
    }

    #[test]
    fn amqplain_rejects_bad_input() {
        let mut ok = Vec::new();
        entry(&mut ok, "LOGIN", b'S', &longstr(b"guest"));
        entry(&mut ok, "PASSWORD", b'S', &longstr(b"guest"));
        for cut in 0..ok.len() {
            assert_eq!(parse_amqplain(&ok[..cut]), None, "truncated at {cut}");
        }
        // With the table's own size prefix, as some clients wrongly send it.
        let mut prefixed = (ok.len() as u32).to_be_bytes().to_vec();
        prefixed.extend_from_slice(&ok);
        assert_eq!(parse_amqplain(&prefixed), None);

        let mut missing = Vec::new();
        entry(&mut missing, "LOGIN", b'S', &longstr(b"guest"));
        assert_eq!(parse_amqplain(&missing), None);

        let mut wrong_type = Vec::new();
        entry(&mut wrong_type, "LOGIN", b'x', &longstr(b"guest"));
        entry(&mut wrong_type, "PASSWORD", b'S', &longstr(b"guest"));
        assert_eq!(parse_amqplain(&wrong_type), None);

        let mut unknown = Vec::new();
        entry(&mut unknown, "z", b'?', &[]);
        unknown.extend_from_slice(&ok);
        assert_eq!(parse_amqplain(&unknown), None);

        let mut huge = Vec::new();
        entry(&mut huge, "LOGIN", b'S', &u32::MAX.to_be_bytes());
        assert_eq!(parse_amqplain(&huge), None);

        let mut bad_utf8 = Vec::new();
        entry(&mut bad_utf8, "LOGIN", b'S', &longstr(b"\xc3"));
        entry(&mut bad_utf8, "PASSWORD", b'S', &longstr(b"x"));
        assert_eq!(parse_amqplain(&bad_utf8), None);
        assert_eq!(parse_amqplain(&[]), None);
    }
}
