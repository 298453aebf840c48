//! The `x-consistent-hash` exchange type, with the interface of RabbitMQ's
//! `rabbitmq_consistent_hash_exchange`: each message goes to exactly one
//! binding, chosen by hashing the message's routing key, a header
//! (exchange argument `hash-header`) or a property (`hash-property`). A
//! binding's key is its weight, an integer from 1 to 10000: a binding of
//! weight 2 gets on average twice the messages of one of weight 1.
//!
//! Where this differs from RabbitMQ:
//!
//! * The choice is weighted rendezvous hashing over the binding ids, not jump
//!   consistent hashing over buckets numbered in bind order. It is a function
//!   of the current bindings alone, so every node and every rebuilt instance
//!   routes a key alike whatever order the bindings arrived in, and adding or
//!   removing a binding moves only the keys that binding gains or loses (in
//!   RabbitMQ removing a binding shifts the buckets of all later ones).
//! * A message without the hashed header or property routes nowhere
//!   (RabbitMQ sends all of them to one arbitrary queue).
//! * `hash-property` accepts every property the host passes, not only
//!   `message_id`, `correlation_id` and `timestamp`.
//! * Two bindings to one destination are two bindings here; RabbitMQ ignores
//!   the second. The host hides destinations from exchange types.

use std::collections::HashMap;
use std::fmt::Write as _;

use warren_sdk::{BindingId, ExchangeType, FieldTable, FieldValue, Message, Properties};

/// RabbitMQ's limit on a binding's weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// What a message is hashed on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    RoutingKey,
    Header(String),
    Property(Property),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Property {
    ContentType,
    ContentEncoding,
    DeliveryMode,
    Priority,
    CorrelationId,
    ReplyTo,
    Expiration,
    MessageId,
    Timestamp,
    Type,
    UserId,
    AppId,
}

impl Property {
    /// Property names as RabbitMQ spells them in `hash-property`.
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "content_type" => Self::ContentType,
            "content_encoding" => Self::ContentEncoding,
            "delivery_mode" => Self::DeliveryMode,
            "priority" => Self::Priority,
            "correlation_id" => Self::CorrelationId,
            "reply_to" => Self::ReplyTo,
            "expiration" => Self::Expiration,
            "message_id" => Self::MessageId,
            "timestamp" => Self::Timestamp,
            "type" => Self::Type,
            "user_id" => Self::UserId,
            "app_id" => Self::AppId,
            _ => return None,
        })
    }

    /// Feeds the property's value to `h`; false when the message lacks it.
    fn hash_into(self, p: &Properties, h: &mut Hasher) -> bool {
        let text = match self {
            Self::ContentType => &p.content_type,
            Self::ContentEncoding => &p.content_encoding,
            Self::CorrelationId => &p.correlation_id,
            Self::ReplyTo => &p.reply_to,
            Self::Expiration => &p.expiration,
            Self::MessageId => &p.message_id,
            Self::Type => &p.type_,
            Self::UserId => &p.user_id,
            Self::AppId => &p.app_id,
            // Numbers hash as their decimal text, as RabbitMQ does for the
            // timestamp (in seconds), so they land where that routing key would.
            Self::DeliveryMode => return p.delivery_mode.is_some_and(|v| h.decimal(v)),
            Self::Priority => return p.priority.is_some_and(|v| h.decimal(v)),
            Self::Timestamp => return p.timestamp.is_some_and(|v| h.decimal(v)),
        };
        text.as_deref().is_some_and(|t| h.bytes(t.as_bytes()))
    }
}

/// Bindings of one weight. Within a group the highest draw wins outright, so
/// route needs one logarithm per distinct weight, not one per binding.
#[derive(Debug)]
struct Group {
    weight: u32,
    // Each binding's salt is a function of its id alone.
    members: Vec<(BindingId, u64)>,
}

/// Routing state of one consistent-hash exchange.
#[derive(Debug)]
pub struct ConsistentHash {
    source: Source,
    groups: Vec<Group>,
    weight_of: HashMap<BindingId, u32>,
}

/// Reads a string-valued exchange argument; other types are refused, as
/// RabbitMQ only ever reads these as long strings.
fn string_argument<'a>(arguments: &'a FieldTable, name: &str) -> Result<Option<&'a str>, String> {
    match warren_sdk::field(arguments, name) {
        None => Ok(None),
        Some(FieldValue::Text(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

impl ExchangeType for ConsistentHash {
    // `hash-header` and `hash-property` exchanges need them; the flags are
    // per type, and copying properties is cheap.
    const NEEDS_HEADERS: bool = true;
    const NEEDS_PROPERTIES: bool = true;

    fn create(arguments: &FieldTable) -> Result<Self, String> {
        let header = string_argument(arguments, "hash-header")?;
        let property = string_argument(arguments, "hash-property")?;
        let source = match (header, property) {
            (Some(_), Some(_)) => {
                return Err("hash-header and hash-property are mutually exclusive".into());
            }
            (Some(h), None) => Source::Header(h.to_owned()),
            (None, Some(p)) => Source::Property(
                Property::parse(p).ok_or_else(|| format!("Unsupported property: {p}"))?,
            ),
            (None, None) => Source::RoutingKey,
        };
        Ok(Self {
            source,
            groups: Vec::new(),
            weight_of: HashMap::new(),
        })
    }

    fn bind(
        &mut self,
        id: BindingId,
        binding_key: &str,
        _arguments: &FieldTable,
    ) -> Result<(), String> {
        let weight = parse_weight(binding_key)?;
        self.unbind(id);
        let at = match self.groups.binary_search_by_key(&weight, |g| g.weight) {
            Ok(at) => at,
            Err(at) => {
                self.groups.insert(
                    at,
                    Group {
                        weight,
                        members: Vec::new(),
                    },
                );
                at
            }
        };
        self.groups[at].members.push((id, salt(id)));
        self.weight_of.insert(id, weight);
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        let Some(weight) = self.weight_of.remove(&id) else {
            return;
        };
        if let Ok(at) = self.groups.binary_search_by_key(&weight, |g| g.weight) {
            let members = &mut self.groups[at].members;
            members.retain(|(b, _)| *b != id);
            if members.is_empty() {
                self.groups.remove(at);
            }
        }
    }

    fn route(&self, message: &Message, out: &mut Vec<BindingId>) {
        if self.groups.is_empty() {
            return;
        }
        let Some(key) = self.key_hash(message) else {
            return;
        };
        let best_in = |g: &Group| {
            g.members
                .iter()
                .map(|(id, salt)| (fmix64(key ^ salt), *id))
                .max()
        };
        if let [only] = self.groups.as_slice() {
            out.extend(best_in(only).map(|(_, id)| id));
            return;
        }
        // Weighted rendezvous: binding i scores w_i / -ln(u_i) with u_i
        // uniform in (0, 1), and wins with probability w_i / sum(w).
        let mut best: Option<(f64, BindingId)> = None;
        for g in &self.groups {
            let Some((draw, id)) = best_in(g) else {
                continue;
            };
            let score = f64::from(g.weight) / -unit(draw).ln();
            if best.is_none_or(|b| (score, id) > b) {
                best = Some((score, id));
            }
        }
        out.extend(best.map(|(_, id)| id));
    }
}

impl ConsistentHash {
    /// The hash of the message's hash source, if it has one.
    fn key_hash(&self, message: &Message) -> Option<u64> {
        let mut h = Hasher::new();
        let present = match &self.source {
            Source::RoutingKey => h.bytes(message.routing_key.as_bytes()),
            Source::Header(name) => {
                warren_sdk::field(&message.headers, name).is_some_and(|v| h.value(v))
            }
            Source::Property(p) => message
                .properties
                .as_ref()
                .is_some_and(|props| p.hash_into(props, &mut h)),
        };
        present.then(|| h.finish())
    }
}

/// Parses a binding key as a weight, refusing as RabbitMQ's
/// `validate_binding` does (Erlang's `list_to_integer`: optional sign, digits).
pub fn parse_weight(key: &str) -> Result<u32, String> {
    let digits = key.strip_prefix(['+', '-']).unwrap_or(key);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "The binding key must be an integer: {}",
            erlang_binary(key.as_bytes())
        ));
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() || key.starts_with('-') {
        return Err("The binding key must be greater than 0".into());
    }
    match significant.parse::<u32>() {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(format!("The binding key must not exceed {MAX_WEIGHT}")),
    }
}

/// Renders a binary the way Erlang's `~tp` does, so error texts match
/// RabbitMQ's: `<<"foo">>`, `<<"é"/utf8>>`, or `<<1,2>>`.
fn erlang_binary(bytes: &[u8]) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    match std::str::from_utf8(bytes) {
        Ok(s) if s.bytes().all(|b| (0x20..0x7f).contains(&b)) => format!("<<\"{}\">>", escape(s)),
        Ok(s) if !s.chars().any(char::is_control) => format!("<<\"{}\"/utf8>>", escape(s)),
        _ => {
            let parts: Vec<String> = bytes.iter().map(u8::to_string).collect();
            format!("<<{}>>", parts.join(","))
        }
    }
}

// The hash functions below decide which binding every key lands on: changing
// any of them moves keys between queues across an upgrade. The pinned-answer
// test guards them.

/// FNV-1a over the source's bytes. Its weak mixing is repaired by `fmix64`
/// before any bit of it is used.
struct Hasher(u64);

impl Hasher {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Always true, so callers can chain "present and hashed".
    fn bytes(&mut self, bytes: &[u8]) -> bool {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        true
    }

    fn decimal(&mut self, n: impl std::fmt::Display) -> bool {
        // Writing to a Hasher cannot fail.
        let _ = write!(self, "{n}");
        true
    }

    /// Header values: strings and byte arrays by their bytes, numbers by
    /// their decimal text (so `5` and `"5"` land alike), arrays and tables by
    /// their wire bytes. A void header counts as missing.
    fn value(&mut self, v: &FieldValue) -> bool {
        match v {
            FieldValue::Void => false,
            FieldValue::Boolean(b) => self.decimal(b),
            FieldValue::Int(n) => self.decimal(n),
            FieldValue::Timestamp(n) => self.decimal(n),
            FieldValue::Float(f) => self.decimal(f),
            FieldValue::Text(s) => self.bytes(s.as_bytes()),
            FieldValue::Bytes(b) | FieldValue::Encoded(b) => self.bytes(b),
        }
    }

    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

impl std::fmt::Write for Hasher {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// MurmurHash3's 64-bit finaliser: a bijection in which every input bit
/// flips each output bit with probability about one half.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A binding's salt. Distinct ids give distinct salts, and `fmix64` being a
/// bijection then gives distinct draws for one key, so no two bindings of a
/// group ever tie.
fn salt(id: BindingId) -> u64 {
    fmix64(id ^ 0x5851_f42d_4c95_7f2d)
}

/// Maps a draw to the open interval (0, 1), so its logarithm is finite and negative.
fn unit(draw: u64) -> f64 {
    ((draw >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

warren_sdk::export_exchange_type!(ConsistentHash);

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64, so the tests need no dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix64(self.0)
        }

        fn key(&mut self) -> String {
            format!("key-{:x}", self.next())
        }
    }

    fn msg(key: &str) -> Message {
        Message {
            routing_key: key.into(),
            headers: vec![],
            properties: None,
        }
    }

    fn route(x: &ConsistentHash, m: &Message) -> Vec<BindingId> {
        let mut out = Vec::new();
        x.route(m, &mut out);
        out
    }

    fn exchange(bindings: &[(BindingId, &str)]) -> ConsistentHash {
        let mut x = ConsistentHash::create(&vec![]).unwrap();
        for (id, key) in bindings {
            x.bind(*id, key, &vec![]).unwrap();
        }
        x
    }

    fn one(x: &ConsistentHash, key: &str) -> BindingId {
        let got = route(x, &msg(key));
        assert_eq!(got.len(), 1, "{key:?} -> {got:?}");
        got[0]
    }

    fn counts(x: &ConsistentHash, n: usize, seed: u64) -> HashMap<BindingId, usize> {
        let mut rng = Rng(seed);
        let mut counts = HashMap::new();
        for _ in 0..n {
            *counts.entry(one(x, &rng.key())).or_default() += 1;
        }
        counts
    }

    fn props() -> Properties {
        Properties {
            content_type: None,
            content_encoding: None,
            delivery_mode: None,
            priority: None,
            correlation_id: None,
            reply_to: None,
            expiration: None,
            message_id: None,
            timestamp: None,
            type_: None,
            user_id: None,
            app_id: None,
        }
    }

    fn text(s: &str) -> FieldValue {
        FieldValue::Text(s.into())
    }

    fn args(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn weights_one_and_two_split_one_to_two() {
        let x = exchange(&[(1, "1"), (2, "2")]);
        let c = counts(&x, 10_000, 1);
        let ratio = c[&2] as f64 / c[&1] as f64;
        assert!((1.8..=2.2).contains(&ratio), "{c:?}");
    }

    #[test]
    fn distribution_follows_weights() {
        let x = exchange(&[(10, "1"), (11, "1"), (12, "3"), (13, "5"), (14, "10")]);
        let n = 40_000;
        let c = counts(&x, n, 2);
        let total_weight = 20.0;
        for (id, w) in [(10, 1.0), (11, 1.0), (12, 3.0), (13, 5.0), (14, 10.0)] {
            let want = n as f64 * w / total_weight;
            let got = c[&id] as f64;
            assert!((got - want).abs() < want * 0.1, "{id}: {got} vs {want}");
        }
    }

    #[test]
    fn equal_weights_split_evenly() {
        let bindings: Vec<(BindingId, &str)> = (100..108).map(|id| (id, "7")).collect();
        let c = counts(&exchange(&bindings), 16_000, 3);
        for (id, _) in bindings {
            assert!((1800..=2200).contains(&c[&id]), "{c:?}");
        }
    }

    #[test]
    fn each_message_goes_to_exactly_one_binding_and_sticks() {
        let x = exchange(&[(1, "1"), (2, "2"), (3, "3")]);
        let mut rng = Rng(4);
        for _ in 0..1000 {
            let k = rng.key();
            assert_eq!(one(&x, &k), one(&x, &k));
        }
        assert!(route(&exchange(&[]), &msg("k")).is_empty());
    }

    #[test]
    fn answer_depends_on_the_bindings_not_their_order() {
        let a = exchange(&[(1, "1"), (2, "2"), (3, "3"), (4, "3")]);
        let b = exchange(&[(4, "3"), (2, "2"), (3, "3"), (1, "1")]);
        let mut c = exchange(&[(3, "9"), (9, "1"), (4, "3"), (1, "1"), (2, "2")]);
        c.unbind(9);
        c.bind(3, "3", &vec![]).unwrap();
        let mut rng = Rng(5);
        for _ in 0..2000 {
            let k = rng.key();
            assert_eq!(one(&a, &k), one(&b, &k));
            assert_eq!(one(&a, &k), one(&c, &k));
        }
    }

    #[test]
    fn adding_or_removing_a_binding_moves_only_its_keys() {
        let mut x = exchange(&[(1, "1"), (2, "2"), (3, "4")]);
        let mut rng = Rng(6);
        let keys: Vec<String> = (0..5000).map(|_| rng.key()).collect();
        let before: Vec<BindingId> = keys.iter().map(|k| one(&x, k)).collect();
        x.bind(4, "3", &vec![]).unwrap();
        let mut moved = 0;
        for (k, was) in keys.iter().zip(&before) {
            let now = one(&x, k);
            if now != *was {
                assert_eq!(
                    now, 4,
                    "{k} moved from {was} to {now}, not to the new binding"
                );
                moved += 1;
            }
        }
        // The new binding has 3 of 10 weight units.
        assert!((1250..=1750).contains(&moved), "{moved}");
        x.unbind(2);
        let with_4: Vec<BindingId> = keys.iter().map(|k| one(&x, k)).collect();
        x.bind(2, "2", &vec![]).unwrap();
        x.unbind(4);
        for ((k, was), mid) in keys.iter().zip(&before).zip(&with_4) {
            assert_eq!(one(&x, k), *was, "{k} back to the original bindings");
            assert_ne!(*mid, 2);
        }
    }

    #[test]
    fn rebinding_changes_the_weight_and_unbind_cleans_up() {
        let mut x = exchange(&[(1, "1"), (2, "1")]);
        x.bind(2, "4", &vec![]).unwrap();
        let c = counts(&x, 10_000, 7);
        let ratio = c[&2] as f64 / c[&1] as f64;
        assert!((3.6..=4.4).contains(&ratio), "{c:?}");
        x.unbind(1);
        x.unbind(2);
        x.unbind(3);
        assert!(x.groups.is_empty() && x.weight_of.is_empty());
        assert!(route(&x, &msg("k")).is_empty());
    }

    #[test]
    fn pinned_answers() {
        // Changing these answers moves existing keys to other queues on upgrade.
        let x = exchange(&[(1, "1"), (2, "2"), (3, "3"), (4, "3")]);
        let got: Vec<BindingId> = ["", "a", "b", "order.42", "user-7", "é", "x.y.z", "0"]
            .iter()
            .map(|k| one(&x, k))
            .collect();
        assert_eq!(got, [2, 4, 4, 4, 2, 4, 1, 4]);
        assert_eq!(x.key_hash(&msg("order.42")), Some(0x175c_6800_1387_0884));
        assert_eq!(salt(1), 0x5cc8_0982_c981_db6b);
    }

    #[test]
    fn binding_keys_are_weights() {
        assert_eq!(parse_weight("1"), Ok(1));
        assert_eq!(parse_weight("+7"), Ok(7));
        assert_eq!(parse_weight("007"), Ok(7));
        assert_eq!(parse_weight("10000"), Ok(10_000));
        assert_eq!(parse_weight("000010000"), Ok(10_000));
        for bad in ["", "a", "1.5", " 1", "1 ", "+", "-", "0x10", "１"] {
            let err = parse_weight(bad).unwrap_err();
            assert!(
                err.starts_with("The binding key must be an integer: <<"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(
            parse_weight("abc").unwrap_err(),
            "The binding key must be an integer: <<\"abc\">>"
        );
        assert_eq!(
            parse_weight("é").unwrap_err(),
            "The binding key must be an integer: <<\"é\"/utf8>>"
        );
        for small in ["0", "-0", "-1", "-99999999999999999999999", "000"] {
            assert_eq!(
                parse_weight(small).unwrap_err(),
                "The binding key must be greater than 0",
                "{small:?}"
            );
        }
        for big in ["10001", "4294967296", "99999999999999999999999"] {
            assert_eq!(
                parse_weight(big).unwrap_err(),
                "The binding key must not exceed 10000",
                "{big:?}"
            );
        }
        let mut x = exchange(&[(1, "1")]);
        assert!(x.bind(1, "zero", &vec![]).is_err());
        assert_eq!(
            route(&x, &msg("k")),
            [1],
            "refused rebind keeps the binding"
        );
    }

    #[test]
    fn declare_arguments_are_checked() {
        let err = ConsistentHash::create(&args(&[
            ("hash-header", text("h")),
            ("hash-property", text("message_id")),
        ]))
        .unwrap_err();
        assert_eq!(err, "hash-header and hash-property are mutually exclusive");
        let err = ConsistentHash::create(&args(&[("hash-property", text("body"))])).unwrap_err();
        assert_eq!(err, "Unsupported property: body");
        let err =
            ConsistentHash::create(&args(&[("hash-header", FieldValue::Int(1))])).unwrap_err();
        assert_eq!(err, "hash-header must be a string");
        for p in [
            "content_type",
            "content_encoding",
            "delivery_mode",
            "priority",
            "correlation_id",
            "reply_to",
            "expiration",
            "message_id",
            "timestamp",
            "type",
            "user_id",
            "app_id",
        ] {
            let x = ConsistentHash::create(&args(&[("hash-property", text(p))])).unwrap();
            assert!(matches!(x.source, Source::Property(_)), "{p}");
        }
        // Unrelated arguments are fine.
        let x = ConsistentHash::create(&args(&[("alternate-exchange", text("ae"))])).unwrap();
        assert_eq!(x.source, Source::RoutingKey);
    }

    #[test]
    fn hash_header() {
        let mut x = ConsistentHash::create(&args(&[("hash-header", text("shard"))])).unwrap();
        for (id, w) in [(1, "1"), (2, "1"), (3, "1")] {
            x.bind(id, w, &vec![]).unwrap();
        }
        let by_key = exchange(&[(1, "1"), (2, "1"), (3, "1")]);
        let with = |v: FieldValue, rk: &str| Message {
            routing_key: rk.into(),
            headers: args(&[("other", text("x")), ("shard", v)]),
            properties: None,
        };
        let mut rng = Rng(8);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let k = rng.key();
            let got = route(&x, &with(text(&k), "ignored"));
            // The header value hashes as that routing key would.
            assert_eq!(got, [one(&by_key, &k)]);
            assert_eq!(got, route(&x, &with(text(&k), "different")));
            seen.insert(got[0]);
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(
            route(&x, &with(FieldValue::Int(42), "")),
            route(&x, &with(text("42"), "")),
        );
        assert_eq!(
            route(&x, &with(FieldValue::Encoded(vec![b'A', 0, 0, 0, 0]), "")).len(),
            1
        );
        // Missing or void: nowhere.
        assert!(route(&x, &msg("k")).is_empty());
        assert!(route(&x, &with(FieldValue::Void, "k")).is_empty());
    }

    #[test]
    fn hash_property() {
        let mut x =
            ConsistentHash::create(&args(&[("hash-property", text("message_id"))])).unwrap();
        x.bind(1, "1", &vec![]).unwrap();
        x.bind(2, "2", &vec![]).unwrap();
        let by_key = exchange(&[(1, "1"), (2, "2")]);
        let with = |p: Properties| Message {
            routing_key: "same".into(),
            headers: vec![],
            properties: Some(p),
        };
        let mut rng = Rng(9);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let k = rng.key();
            let got = route(
                &x,
                &with(Properties {
                    message_id: Some(k.clone()),
                    ..props()
                }),
            );
            assert_eq!(got, [one(&by_key, &k)]);
            seen.insert(got[0]);
        }
        assert_eq!(seen.len(), 2);
        assert!(route(&x, &with(props())).is_empty(), "no message id");
        assert!(route(&x, &msg("k")).is_empty(), "no properties at all");

        let mut t = ConsistentHash::create(&args(&[("hash-property", text("timestamp"))])).unwrap();
        t.bind(1, "1", &vec![]).unwrap();
        t.bind(2, "2", &vec![]).unwrap();
        for ts in [0u64, 1_700_000_000, 1_700_000_001, u64::MAX] {
            let got = route(
                &t,
                &with(Properties {
                    timestamp: Some(ts),
                    ..props()
                }),
            );
            assert_eq!(got, [one(&by_key, &ts.to_string())], "{ts}");
        }
    }

    #[test]
    fn declares_what_it_reads() {
        const { assert!(<ConsistentHash as ExchangeType>::NEEDS_HEADERS) };
        const { assert!(<ConsistentHash as ExchangeType>::NEEDS_PROPERTIES) };
    }
}
