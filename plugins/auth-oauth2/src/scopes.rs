//! RabbitMQ's scope-to-permission mapping (`rabbit_oauth2_scope` and
//! `wildcard` in rabbitmq_auth_backend_oauth2).
//!
//! Scopes here have had the scope prefix removed already. A permission scope
//! is `<permission>:<vhost>/<name>[/<routing_key>]`, permission one of
//! `configure`, `write`, `read`; anything else (including `tag:` scopes and
//! scopes with more than three `/`-separated parts) grants nothing. Each part
//! is a wildcard pattern: `*` matches any sequence of characters and the
//! whole subject must match; the text between wildcards is URL-decoded, so
//! `%2F`, `%2A` and `%25` stand for a literal `/`, `*` and `%`.

use std::collections::BTreeMap;

use warren_sdk::auth::Permission;

/// One parsed permission scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionScope<'a> {
    pub permission: Permission,
    pub vhost: &'a str,
    pub name: &'a str,
    pub routing_key: Option<&'a str>,
}

/// Parses a prefix-stripped scope; `None` for scopes that grant no permission.
pub fn parse(scope: &str) -> Option<PermissionScope<'_>> {
    let (permission, rest) = if let Some(rest) = scope.strip_prefix("configure:") {
        (Permission::Configure, rest)
    } else if let Some(rest) = scope.strip_prefix("write:") {
        (Permission::Write, rest)
    } else if let Some(rest) = scope.strip_prefix("read:") {
        (Permission::Read, rest)
    } else {
        return None;
    };
    let mut parts = rest.split('/');
    let vhost = parts.next()?;
    let name = parts.next()?;
    let routing_key = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some(PermissionScope {
        permission,
        vhost,
        name,
        routing_key,
    })
}

/// Whether `subject` matches the wildcard `pattern` as a whole.
///
/// Unlike RabbitMQ's `wildcard:match/2`, which places each literal part at
/// its leftmost occurrence and so refuses `foo*bar` for `foobarbar`, this
/// implements the documented meaning ("starting with foo and ending with
/// bar"). A pattern with an invalid %-escape matches nothing, as in RabbitMQ.
pub fn wildcard_match(subject: &str, pattern: &str) -> bool {
    let Some(parts) = pattern
        .split('*')
        .map(url_decode)
        .collect::<Option<Vec<Vec<u8>>>>()
    else {
        return false;
    };
    let subject = subject.as_bytes();
    let (first, rest) = parts.split_first().expect("split yields at least one part");
    let Some((last, middle)) = rest.split_last() else {
        return subject == first.as_slice();
    };
    if subject.len() < first.len() + last.len()
        || !subject.starts_with(first)
        || !subject.ends_with(last)
    {
        return false;
    }
    // The middle parts, in order and without overlap, between the fixed ends;
    // taking each at its leftmost occurrence is optimal.
    let mut window = &subject[first.len()..subject.len() - last.len()];
    for part in middle {
        if part.is_empty() {
            continue;
        }
        match find(window, part) {
            Some(at) => window = &window[at + part.len()..],
            None => return false,
        }
    }
    true
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// URL-decoding as `cow_qs:urldecode/1`, which RabbitMQ uses: `%XX` is a
/// byte, `+` a space; a malformed escape makes the whole pattern invalid.
fn url_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Expands the `{name}` variables of a scope like RabbitMQ's
/// `get_expanded_scopes`: `{vhost}` is the vhost being checked, any other
/// `{claim}` is that claim's string value from the token (or the bare name
/// when the token has no such string claim). Names can't contain `.`, `*`,
/// `{` or `}`; a malformed variable makes the scope grant nothing (`None`).
pub fn expand(scope: &str, vhost: &str, vars: &BTreeMap<String, String>) -> Option<String> {
    if !scope.contains('{') {
        return Some(scope.to_owned());
    }
    let mut out = String::with_capacity(scope.len());
    let mut rest = scope;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(['}', '{', '.', '*'])?;
        if !after[close..].starts_with('}') || close == 0 {
            return None;
        }
        let name = &after[..close];
        if name == "vhost" {
            out.push_str(vhost);
        } else {
            out.push_str(vars.get(name).map_or(name, String::as_str));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// The variable names (other than `vhost`) the scopes refer to, whose claim
/// values must be kept for [`expand`].
pub fn variables(scopes: &[String]) -> impl Iterator<Item = &str> {
    scopes.iter().flat_map(|s| {
        s.split('{')
            .skip(1)
            .filter_map(|tail| tail.split_once('}').map(|(name, _)| name))
            .filter(|name| *name != "vhost" && !name.is_empty() && !name.contains(['.', '*', '{']))
    })
}

/// The permission scopes, expanded for `vhost`, that pass `keep`.
fn any_scope(
    scopes: &[String],
    vhost: &str,
    vars: &BTreeMap<String, String>,
    keep: impl Fn(&PermissionScope<'_>) -> bool,
) -> bool {
    scopes.iter().any(|raw| {
        expand(raw, vhost, vars)
            .as_deref()
            .and_then(parse)
            .is_some_and(|scope| keep(&scope))
    })
}

/// May the token open `vhost`? Any permission scope whose vhost pattern matches.
pub fn vhost_access(scopes: &[String], vars: &BTreeMap<String, String>, vhost: &str) -> bool {
    any_scope(scopes, vhost, vars, |s| wildcard_match(vhost, s.vhost))
}

/// May the token exercise `permission` on the named exchange or queue?
pub fn resource_access(
    scopes: &[String],
    vars: &BTreeMap<String, String>,
    vhost: &str,
    name: &str,
    permission: Permission,
) -> bool {
    any_scope(scopes, vhost, vars, |s| {
        s.permission == permission && wildcard_match(vhost, s.vhost) && wildcard_match(name, s.name)
    })
}

/// May the token publish (write) or bind (read) with `routing_key` on the
/// topic exchange?
///
/// A scope without a routing-key part allows any routing key. RabbitMQ
/// 3.x/4.x differs here: its `topic_access` only counts three-part scopes,
/// so there `write:*/*` alone can't publish to a topic exchange and tokens
/// need `write:*/*/*`.
pub fn topic_access(
    scopes: &[String],
    vars: &BTreeMap<String, String>,
    vhost: &str,
    exchange: &str,
    routing_key: &str,
    permission: Permission,
) -> bool {
    any_scope(scopes, vhost, vars, |s| {
        s.permission == permission
            && wildcard_match(vhost, s.vhost)
            && wildcard_match(exchange, s.name)
            && s.routing_key
                .is_none_or(|rk| wildcard_match(routing_key, rk))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const NO_VARS: &BTreeMap<String, String> = &BTreeMap::new();

    #[test]
    fn wildcards() {
        // From the RabbitMQ docs and its wildcard_match_SUITE.
        for (subject, pattern) in [
            ("anything", "*"),
            ("", "*"),
            ("foo", "foo"),
            ("foobar", "foo*"),
            ("foo", "foo*"),
            ("barfoo", "*foo"),
            ("foo-baz-bar", "foo*bar"),
            ("foobar", "foo*bar"),
            ("foobarbar", "foo*bar"),
            ("start-middle-end", "start*middle*end"),
            ("startmiddleend", "start*middle*end"),
            ("xbeforeyaftery", "*before*after*"),
            ("beforeafter", "*before*after*"),
            ("a", "**a**"),
            ("юникод", "юни*"),
            ("foo/bar", "foo%2Fbar"),
            ("foo/bar", "foo%2fbar"),
            ("foo*", "foo%2A"),
            ("100%", "100%25"),
            ("a b", "a+b"),
            ("a b", "a%20b"),
        ] {
            assert!(
                wildcard_match(subject, pattern),
                "{subject:?} ~ {pattern:?}"
            );
        }
        for (subject, pattern) in [
            ("foo", "bar"),
            ("foo", ""),
            ("xfoo", "foo*"),
            ("foox", "*foo"),
            ("fooba", "foo*bar"),
            ("foobar", "foo*obar"),
            ("startend", "start*middle*end"),
            ("afterbefore", "*before*after*"),
            ("fooX", "foo%2A"),
            ("foo/bar", "foo%2"),
            ("foo%", "foo%"),
            ("foo/bar", "foo%zzbar"),
            ("a+b", "a+b"),
        ] {
            assert!(
                !wildcard_match(subject, pattern),
                "{subject:?} !~ {pattern:?}"
            );
        }
        assert!(wildcard_match("", ""));
    }

    #[test]
    fn parsing() {
        assert_eq!(
            parse("write:vh/ex/rk*"),
            Some(PermissionScope {
                permission: Permission::Write,
                vhost: "vh",
                name: "ex",
                routing_key: Some("rk*"),
            })
        );
        assert_eq!(parse("read:*/*").unwrap().routing_key, None);
        assert_eq!(
            parse("configure:*/*").unwrap().permission,
            Permission::Configure
        );
        assert_eq!(parse("read:*"), None);
        assert_eq!(parse("read:a/b/c/d"), None);
        assert_eq!(parse("tag:administrator"), None);
        assert_eq!(parse("admin:*/*"), None);
        assert_eq!(parse("READ:*/*"), None);
    }

    #[test]
    fn all_wildcards_like_rabbitmq_scope_suite() {
        let vhosts = ["/", "foo", "*", "foo/bar", "юникод"];
        let names = ["foo", "foo/bar", "*", "*/*", "юникод"];
        for (perm, two, three) in [
            (Permission::Read, "read:*/*", "read:*/*/*"),
            (Permission::Write, "write:*/*", "write:*/*/*"),
            (Permission::Configure, "configure:*/*", "configure:*/*/*"),
        ] {
            for s in [two, three] {
                let s = scopes(&[s]);
                for v in vhosts {
                    assert!(vhost_access(&s, NO_VARS, v));
                    for n in names {
                        for p in [Permission::Read, Permission::Write, Permission::Configure] {
                            assert_eq!(resource_access(&s, NO_VARS, v, n, p), p == perm);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn vhost_and_encoded_patterns() {
        let s = scopes(&["read:foo/*", "tag:management"]);
        assert!(vhost_access(&s, NO_VARS, "foo"));
        assert!(!vhost_access(&s, NO_VARS, "bar"));
        assert!(resource_access(&s, NO_VARS, "foo", "q", Permission::Read));
        assert!(!resource_access(&s, NO_VARS, "bar", "q", Permission::Read));
        assert!(!resource_access(&s, NO_VARS, "foo", "q", Permission::Write));
        // The default vhost "/" and a resource named with a "*" and "/", encoded.
        let s = scopes(&["write:%2F/bar%2A%2Fbaz", "configure:foo%2Fbar%2F%2A%2F/*"]);
        assert!(vhost_access(&s, NO_VARS, "/"));
        assert!(resource_access(
            &s,
            NO_VARS,
            "/",
            "bar*/baz",
            Permission::Write
        ));
        assert!(!resource_access(
            &s,
            NO_VARS,
            "/",
            "barx/baz",
            Permission::Write
        ));
        assert!(vhost_access(&s, NO_VARS, "foo/bar/*/"));
        assert!(!vhost_access(&s, NO_VARS, "foo/bar/x/"));
        assert!(resource_access(
            &s,
            NO_VARS,
            "foo/bar/*/",
            "any",
            Permission::Configure
        ));
        // No scopes, no access.
        assert!(!vhost_access(&[], NO_VARS, "/"));
        assert!(!vhost_access(&scopes(&["tag:administrator"]), NO_VARS, "/"));
    }

    #[test]
    fn topics() {
        let s = scopes(&["read:*/*/*", "write:vhost/amq.topic/rout*", "write:other/x"]);
        for v in ["/", "foo", "vhost"] {
            for rk in ["rout", "norout", "a.b.c"] {
                assert!(topic_access(&s, NO_VARS, v, "ex", rk, Permission::Read));
            }
        }
        assert!(topic_access(
            &s,
            NO_VARS,
            "vhost",
            "amq.topic",
            "routing",
            Permission::Write
        ));
        assert!(!topic_access(
            &s,
            NO_VARS,
            "vhost",
            "amq.topic",
            "norout",
            Permission::Write
        ));
        assert!(!topic_access(
            &s,
            NO_VARS,
            "vhost",
            "other.topic",
            "rout",
            Permission::Write
        ));
        // A two-part scope allows any routing key (see topic_access's docs).
        assert!(topic_access(
            &s,
            NO_VARS,
            "other",
            "x",
            "any.key",
            Permission::Write
        ));
        assert!(!topic_access(
            &s,
            NO_VARS,
            "other",
            "y",
            "any.key",
            Permission::Write
        ));
        assert!(!topic_access(
            &s,
            NO_VARS,
            "other",
            "x",
            "any.key",
            Permission::Configure
        ));
        let suffix = scopes(&["read:*/*/*rout"]);
        for rk in ["rout", "norout", "sprout"] {
            assert!(topic_access(
                &suffix,
                NO_VARS,
                "/",
                "ex",
                rk,
                Permission::Read
            ));
        }
        assert!(!topic_access(
            &suffix,
            NO_VARS,
            "/",
            "ex",
            "routx",
            Permission::Read
        ));
    }

    #[test]
    fn variable_expansion() {
        let vars: BTreeMap<String, String> = [("client_id".to_string(), "app1".to_string())].into();
        assert_eq!(expand("read:{vhost}/*", "v1", &vars).unwrap(), "read:v1/*");
        assert_eq!(
            expand("write:*/{client_id}-*", "v", &vars).unwrap(),
            "write:*/app1-*"
        );
        // Unknown claims expand to their own name.
        assert_eq!(expand("read:*/{nope}", "v", &vars).unwrap(), "read:*/nope");
        // Malformed variables void the scope.
        assert_eq!(expand("read:*/{open", "v", &vars), None);
        assert_eq!(expand("read:*/{a.b}", "v", &vars), None);
        assert_eq!(expand("read:*/{}", "v", &vars), None);
        assert_eq!(expand("read:*/x}", "v", &vars).unwrap(), "read:*/x}");
        // A claim value is inserted literally, never expanded again.
        let tricky: BTreeMap<String, String> = [("sub".to_string(), "{vhost}".to_string())].into();
        assert_eq!(
            expand("read:*/{sub}", "v", &tricky).unwrap(),
            "read:*/{vhost}"
        );

        let s = scopes(&["configure:{vhost}/{client_id}.*", "read:*/{client_id}"]);
        assert!(vhost_access(&s, &vars, "anything"));
        assert!(resource_access(
            &s,
            &vars,
            "v",
            "app1.q",
            Permission::Configure
        ));
        assert!(!resource_access(
            &s,
            &vars,
            "v",
            "app2.q",
            Permission::Configure
        ));
        assert!(resource_access(&s, &vars, "v", "app1", Permission::Read));
        let names: Vec<&str> = variables(&s).collect();
        assert_eq!(names, ["client_id", "client_id"]);
    }
}
