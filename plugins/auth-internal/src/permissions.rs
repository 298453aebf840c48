//! Permission checks like `rabbit_auth_backend_internal:check_resource_access/4`.
//!
//! A user's permissions on a vhost are three regular expressions (configure,
//! write, read). An empty pattern is replaced by `^$`; any other pattern is
//! searched for *unanchored* in the resource name (`re:run(Name, Regex)`), so
//! `^amq\.` style patterns anchor themselves, `foo` allows `xfooy`, `.*`
//! allows everything and `""` allows only the empty name.
//!
//! Patterns use the `regex` crate rather than PCRE; common patterns behave
//! the same, but look-around and back-references never compile, and a
//! pattern that doesn't compile allows nothing.

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};
use warren_sdk::auth::users::{Permissions, TopicPermissions};
use warren_sdk::auth::{Permission, ResourceKind};

/// At most this many compiled patterns are kept; past it the cache starts over.
const CACHE_CAPACITY: usize = 128;
/// Bounds on one compiled pattern, so a pathological pattern can't exhaust
/// the instance's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiled patterns keyed by their text. The patterns themselves are fetched
/// from the host on every check, so a permission change takes effect at once:
/// a changed pattern is simply a different key.
#[derive(Default)]
pub struct PatternCache {
    compiled: HashMap<String, Option<Regex>>,
}

impl PatternCache {
    /// Whether `pattern` (RabbitMQ semantics, see the module docs) matches
    /// `name`. A pattern that doesn't compile matches nothing; its error is
    /// returned once, when it is first compiled, so the caller can log it
    /// without repeating itself on every check.
    pub fn is_match(&mut self, pattern: &str, name: &str) -> Result<bool, regex::Error> {
        if let Some(compiled) = self.compiled.get(pattern) {
            return Ok(compiled.as_ref().is_some_and(|re| re.is_match(name)));
        }
        if self.compiled.len() >= CACHE_CAPACITY {
            self.compiled.clear();
        }
        let result = compile(pattern);
        let matched = result.as_ref().is_ok_and(|re| re.is_match(name));
        let (entry, err) = match result {
            Ok(re) => (Some(re), None),
            Err(e) => (None, Some(e)),
        };
        self.compiled.insert(pattern.to_owned(), entry);
        match err {
            Some(e) => Err(e),
            None => Ok(matched),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.compiled.len()
    }
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(if pattern.is_empty() { "^$" } else { pattern })
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// The pattern of `perms` that governs `permission`.
pub fn pattern_for(perms: &Permissions, permission: Permission) -> &str {
    match permission {
        Permission::Configure => &perms.configure,
        Permission::Write => &perms.write,
        Permission::Read => &perms.read,
    }
}

/// The name a resource is checked under: the default exchange `""` is
/// checked as `amq.default` (`rabbit_access_control:check_resource_access/4`),
/// so a user with an empty write pattern still cannot publish to it. The
/// substitution is idempotent, so it is harmless if the host already made it.
pub fn checked_name(kind: ResourceKind, name: &str) -> &str {
    match kind {
        ResourceKind::Exchange if name.is_empty() => "amq.default",
        _ => name,
    }
}

/// May a user with `perms` on the vhost (`None`: no permissions entry there)
/// exercise `permission` on the named resource?
pub fn resource_allowed(
    cache: &mut PatternCache,
    perms: Option<&Permissions>,
    kind: ResourceKind,
    name: &str,
    permission: Permission,
) -> Result<bool, regex::Error> {
    let Some(perms) = perms else {
        return Ok(false);
    };
    cache.is_match(pattern_for(perms, permission), checked_name(kind, name))
}

/// May the user publish with (write) or bind with (read) `routing_key` on a topic exchange,
/// given their topic permission on it (`rabbit_auth_backend_internal:check_topic_access/4`)?
/// No topic permission on the exchange allows every key; an empty pattern allows only the
/// empty key; `{username}` and `{vhost}` in a pattern stand for the user's name and the vhost.
pub fn topic_allowed(
    cache: &mut PatternCache,
    topic: Option<&TopicPermissions>,
    username: &str,
    vhost: &str,
    routing_key: &str,
    permission: Permission,
) -> Result<bool, regex::Error> {
    let Some(topic) = topic else {
        return Ok(true);
    };
    let pattern = match permission {
        Permission::Write => &topic.write,
        Permission::Read => &topic.read,
        // Topic permissions have no configure side; RabbitMQ never asks for it.
        Permission::Configure => return Ok(true),
    };
    let expanded = pattern
        .replace("{username}", username)
        .replace("{vhost}", vhost);
    cache.is_match(&expanded, routing_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_keys_are_checked_only_where_a_topic_permission_exists() {
        let mut cache = PatternCache::default();
        let t = TopicPermissions {
            exchange: "amq.topic".into(),
            write: "^{username}\\.".into(),
            read: "".into(),
        };
        let check = |cache: &mut PatternCache, topic, key, perm| {
            topic_allowed(cache, topic, "bob", "/", key, perm).unwrap()
        };
        assert!(check(&mut cache, None, "anything", Permission::Write));
        assert!(check(&mut cache, Some(&t), "bob.orders", Permission::Write));
        assert!(!check(
            &mut cache,
            Some(&t),
            "alice.orders",
            Permission::Write
        ));
        assert!(check(&mut cache, Some(&t), "", Permission::Read));
        assert!(!check(&mut cache, Some(&t), "bob.orders", Permission::Read));
    }

    fn perms(configure: &str, write: &str, read: &str) -> Permissions {
        Permissions {
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        }
    }

    fn allowed(p: &Permissions, kind: ResourceKind, name: &str, perm: Permission) -> bool {
        resource_allowed(&mut PatternCache::default(), Some(p), kind, name, perm).unwrap()
    }

    #[test]
    fn unanchored_search_like_rabbitmq() {
        let p = perms("foo", "^amq\\.", ".*");
        let q = ResourceKind::Queue;
        assert!(allowed(&p, q, "foo", Permission::Configure));
        assert!(allowed(&p, q, "xfooy", Permission::Configure));
        assert!(!allowed(&p, q, "fo", Permission::Configure));
        assert!(allowed(&p, q, "amq.topic", Permission::Write));
        assert!(!allowed(&p, q, "x.amq.topic", Permission::Write));
        assert!(!allowed(&p, q, "amqXtopic", Permission::Write));
        assert!(allowed(&p, q, "", Permission::Read));
        assert!(allowed(&p, q, "anything", Permission::Read));
    }

    #[test]
    fn empty_pattern_allows_only_the_empty_name() {
        let p = perms("", "", "");
        for perm in [Permission::Configure, Permission::Write, Permission::Read] {
            assert!(allowed(&p, ResourceKind::Queue, "", perm));
            assert!(!allowed(&p, ResourceKind::Queue, "q", perm));
        }
    }

    #[test]
    fn default_exchange_is_checked_as_amq_default() {
        let q = ResourceKind::Queue;
        let x = ResourceKind::Exchange;
        // An empty pattern matches the empty queue name but not the default exchange.
        let p = perms("", "", "");
        assert!(!allowed(&p, x, "", Permission::Write));
        assert!(allowed(&p, q, "", Permission::Write));
        let p = perms("", "^amq\\.default$", "");
        assert!(allowed(&p, x, "", Permission::Write));
        assert!(allowed(&p, x, "amq.default", Permission::Write));
        assert_eq!(checked_name(x, ""), "amq.default");
        assert_eq!(checked_name(x, "amq.default"), "amq.default");
        assert_eq!(checked_name(q, ""), "");
    }

    #[test]
    fn no_permissions_entry_allows_nothing() {
        let mut cache = PatternCache::default();
        for perm in [Permission::Configure, Permission::Write, Permission::Read] {
            assert!(!resource_allowed(&mut cache, None, ResourceKind::Queue, "q", perm).unwrap());
        }
    }

    #[test]
    fn invalid_pattern_reports_once_and_allows_nothing() {
        let mut cache = PatternCache::default();
        let p = perms("(unclosed", "(?=look)ahead", ".*");
        let q = ResourceKind::Queue;
        assert!(
            resource_allowed(&mut cache, Some(&p), q, "(unclosed", Permission::Configure).is_err()
        );
        assert!(
            !resource_allowed(&mut cache, Some(&p), q, "(unclosed", Permission::Configure).unwrap()
        );
        assert!(resource_allowed(&mut cache, Some(&p), q, "lookahead", Permission::Write).is_err());
        assert!(
            !resource_allowed(&mut cache, Some(&p), q, "lookahead", Permission::Write).unwrap()
        );
        assert!(resource_allowed(&mut cache, Some(&p), q, "x", Permission::Read).unwrap());
    }

    #[test]
    fn cache_follows_pattern_changes_and_stays_bounded() {
        let mut cache = PatternCache::default();
        let q = ResourceKind::Queue;
        let before = perms("^a", "^a", "^a");
        let after = perms("^b", "^b", "^b");
        assert!(resource_allowed(&mut cache, Some(&before), q, "a1", Permission::Read).unwrap());
        // The same cache, once the stored permissions change, answers by the new pattern.
        assert!(!resource_allowed(&mut cache, Some(&after), q, "a1", Permission::Read).unwrap());
        assert!(resource_allowed(&mut cache, Some(&after), q, "b1", Permission::Read).unwrap());
        for i in 0..1000 {
            cache.is_match(&format!("^q{i}$"), "q1").unwrap();
            assert!(cache.len() <= CACHE_CAPACITY);
        }
        assert!(cache.is_match("^q1$", "q1").unwrap());
        assert!(!cache.is_match("^q2$", "q1").unwrap());
    }
}
