//! Policies and operator policies: named, prioritised sets of queue and exchange settings
//! that apply to every queue or exchange whose name matches a pattern, now and later. They
//! are metadata like any other (replicated, applied by `MetaState::apply`); this file is
//! their record, RabbitMQ's validation of a definition, and which policy applies to what.
//!
//! A definition is typed (each value an integer or a string) rather than free JSON: it is
//! kept in the Raft log and snapshots, whose encoding has no untyped values, and validation
//! happens once, before a change is submitted, with RabbitMQ's wording.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What kinds of object a policy applies to (`--apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyTo {
    All,
    /// Every queue, whatever its type.
    Queues,
    ClassicQueues,
    QuorumQueues,
    Exchanges,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Result<ApplyTo, String> {
        Ok(match s {
            "all" => ApplyTo::All,
            "queues" => ApplyTo::Queues,
            "classic_queues" => ApplyTo::ClassicQueues,
            "quorum_queues" => ApplyTo::QuorumQueues,
            "exchanges" => ApplyTo::Exchanges,
            // RabbitMQ's text (rabbit_policy:apply_to_validation), less the streams Warren
            // does not have.
            other => {
                return Err(format!(
                    "apply-to '{other}' unrecognised; should be one of: 'queues', 'classic_queues', 'quorum_queues', 'exchanges', or 'all'"
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::ClassicQueues => "classic_queues",
            ApplyTo::QuorumQueues => "quorum_queues",
            ApplyTo::Exchanges => "exchanges",
        }
    }

    fn covers(self, target: Target) -> bool {
        matches!(
            (self, target),
            (ApplyTo::All, _)
                | (ApplyTo::Exchanges, Target::Exchange)
                | (ApplyTo::Queues, Target::ClassicQueue | Target::QuorumQueue)
                | (ApplyTo::ClassicQueues, Target::ClassicQueue)
                | (ApplyTo::QuorumQueues, Target::QuorumQueue)
        )
    }
}

/// What a policy is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Exchange,
    ClassicQueue,
    QuorumQueue,
}

/// One value of a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyValue {
    Int(i64),
    Text(String),
}

impl PolicyValue {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            PolicyValue::Int(i) => serde_json::Value::from(*i),
            PolicyValue::Text(s) => serde_json::Value::from(s.as_str()),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            PolicyValue::Int(i) => Some(*i),
            PolicyValue::Text(_) => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            PolicyValue::Int(_) => None,
            PolicyValue::Text(s) => Some(s),
        }
    }
}

/// A validated definition: setting name → value.
pub type Definition = BTreeMap<String, PolicyValue>;

/// User policies (`set_policy`) and operator policies (`set_operator_policy`) differ in the
/// keys they accept and in how they combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    User,
    Operator,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    pub apply_to: ApplyTo,
    pub priority: i64,
    pub definition: Definition,
}

impl PolicyRecord {
    /// The definition as RabbitMQ shows it (a JSON object).
    pub fn definition_json(&self) -> serde_json::Value {
        definition_json(&self.definition)
    }

    /// Checks what `parse_definition` and `ApplyTo::parse` cannot see: the pattern. Run
    /// again when the change is applied, so that a peer cannot put an unusable record in the
    /// log.
    pub fn validate(&self, kind: PolicyKind) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("the policy name must not be empty".into());
        }
        if let Err(e) = regex::Regex::new(&self.pattern) {
            return Err(format!(
                "pattern should be regular expression but is invalid: {}",
                last_line(&e.to_string())
            ));
        }
        if self.definition.is_empty() {
            return Err("no policy provided".into());
        }
        for (key, value) in &self.definition {
            check_value(kind, key, value)?;
        }
        Ok(())
    }

    fn matches(&self, name: &str, target: Target) -> bool {
        self.apply_to.covers(target)
            && !self.definition.keys().any(|k| unsupported(target, k))
            && pattern_matches(&self.pattern, name)
    }
}

/// Compiled patterns, so that a policy change over a vhost of many queues compiles each
/// pattern once, not once per queue. Bounded: cleared when it grows past a few thousand.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    static COMPILED: std::sync::LazyLock<
        parking_lot::Mutex<HashMap<String, Option<regex::Regex>>>,
    > = std::sync::LazyLock::new(Default::default);
    let mut cache = COMPILED.lock();
    if cache.len() > 4096 {
        cache.clear();
    }
    if let Some(compiled) = cache.get(pattern) {
        return compiled.as_ref().is_some_and(|re| re.is_match(name));
    }
    let compiled = regex::Regex::new(pattern).ok();
    let matched = compiled.as_ref().is_some_and(|re| re.is_match(name));
    cache.insert(pattern.to_string(), compiled);
    matched
}

/// The regex crate explains an error over several lines, the reason last.
fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
}

pub fn definition_json(d: &Definition) -> serde_json::Value {
    serde_json::Value::Object(d.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// How a key's value is checked, and how a user policy's and an operator policy's values for
/// it combine.
#[derive(Clone, Copy)]
enum Rule {
    /// A string; the text names what it should have been.
    Text(&'static str),
    /// One of these strings.
    OneOf(&'static [&'static str], &'static str),
    /// An integer at least `min`; the text names what it should have been.
    IntAtLeast(i64, &'static str),
    /// An integer in a range.
    IntBetween(i64, i64, &'static str),
}

/// The keys RabbitMQ 4.x accepts in a policy (rabbit_policies, rabbit_quorum_queue), whether
/// an operator policy may set them too, and their rules. Keys of features Warren does not
/// have (streams' own settings, federation, classic mirroring, which RabbitMQ 4 removed too)
/// and of guarantees it does not give (at-least-once dead-lettering) are not recognised, so
/// a policy never claims an effect it lacks.
const KEYS: &[(&str, bool, Rule)] = &[
    (
        "alternate-exchange",
        false,
        Rule::Text("alternate exchange name"),
    ),
    (
        "dead-letter-exchange",
        false,
        Rule::Text("dead letter exchange name"),
    ),
    (
        "dead-letter-routing-key",
        false,
        Rule::Text("dead letter routing key"),
    ),
    ("message-ttl", true, Rule::IntAtLeast(0, "message TTL")),
    ("expires", true, Rule::IntAtLeast(1, "queue expiry")),
    ("max-length", true, Rule::IntAtLeast(0, "maximum length")),
    (
        "max-length-bytes",
        true,
        Rule::IntAtLeast(0, "maximum length in bytes"),
    ),
    (
        "overflow",
        true,
        Rule::OneOf(
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            "overflow value",
        ),
    ),
    // Any integer: a negative one is "no limit" (RabbitMQ 4).
    (
        "delivery-limit",
        true,
        Rule::IntAtLeast(i64::MIN, "delivery limit"),
    ),
    (
        "queue-leader-locator",
        false,
        Rule::OneOf(
            &["client-local", "balanced", "random", "least-leaders"],
            "queue leader locator value",
        ),
    ),
    // A stream's setting in RabbitMQ (no classic or quorum queue takes a policy that has
    // it); validated so that definitions that carry it import.
    (
        "initial-cluster-size",
        false,
        Rule::IntAtLeast(0, "cluster size"),
    ),
    // Accepted for definitions exported from RabbitMQ 3.x; Warren's classic queues have one
    // storage format, so neither changes anything.
    (
        "queue-mode",
        false,
        Rule::OneOf(&["default", "lazy"], "queue-mode value"),
    ),
    (
        "queue-version",
        true,
        Rule::IntBetween(1, 2, "queue-version value"),
    ),
];

/// Keys a queue type does not support: a policy that has one does not apply to it at all
/// (RabbitMQ's `unsupported_policies` of each queue type), and the next match applies.
fn unsupported(target: Target, key: &str) -> bool {
    match target {
        Target::ClassicQueue => matches!(key, "delivery-limit" | "initial-cluster-size"),
        Target::QuorumQueue => matches!(key, "queue-mode" | "initial-cluster-size"),
        Target::Exchange => false,
    }
}

/// How an operator policy's value for `key` combines with the user policy's.
fn merge(key: &str, user: &PolicyValue, operator: &PolicyValue) -> PolicyValue {
    match (key, user, operator) {
        // A limit beats no limit (negative); otherwise the lower limit.
        ("delivery-limit", PolicyValue::Int(u), PolicyValue::Int(o)) if *u < 0 || *o < 0 => {
            PolicyValue::Int((*u).max(*o))
        }
        (
            "message-ttl" | "expires" | "max-length" | "max-length-bytes" | "delivery-limit",
            PolicyValue::Int(u),
            PolicyValue::Int(o),
        ) => PolicyValue::Int((*u).min(*o)),
        _ => operator.clone(),
    }
}

fn rule_of(kind: PolicyKind, key: &str) -> Option<Rule> {
    KEYS.iter()
        .find(|(k, operator_ok, _)| *k == key && (kind == PolicyKind::User || *operator_ok))
        .map(|(_, _, rule)| *rule)
}

fn not_recognised(pairs: &[String]) -> String {
    format!("[{}] are not recognised policy settings", pairs.join(","))
}

/// A value as Erlang's `~tp` prints it in RabbitMQ's messages.
fn erlang_term(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => format!("<<\"{s}\">>"),
        serde_json::Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn check_value(kind: PolicyKind, key: &str, value: &PolicyValue) -> Result<(), String> {
    let Some(rule) = rule_of(kind, key) else {
        return Err(not_recognised(&[format!(
            "{{<<\"{key}\">>,{}}}",
            erlang_term(&value.to_json())
        )]));
    };
    let ok = match (rule, value) {
        (Rule::Text(_), PolicyValue::Text(_)) => true,
        (Rule::OneOf(allowed, _), PolicyValue::Text(s)) => allowed.contains(&s.as_str()),
        (Rule::IntAtLeast(min, _), PolicyValue::Int(i)) => *i >= min,
        (Rule::IntBetween(min, max, _), PolicyValue::Int(i)) => (min..=max).contains(i),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "{} is not a valid {}",
        erlang_term(&value.to_json()),
        rule.what()
    ))
}

impl Rule {
    fn what(self) -> &'static str {
        match self {
            Rule::Text(w)
            | Rule::OneOf(_, w)
            | Rule::IntAtLeast(_, w)
            | Rule::IntBetween(_, _, w) => w,
        }
    }
}

/// Reads a definition given as JSON (warrenctl's argument, the HTTP API's body, a
/// definitions file) and validates it. The error is RabbitMQ's text after "Validation
/// failed".
pub fn parse_definition(json: &serde_json::Value, kind: PolicyKind) -> Result<Definition, String> {
    let serde_json::Value::Object(map) = json else {
        return Err(format!(
            "{json} is not a valid policy definition (a JSON object)"
        ));
    };
    if map.is_empty() {
        return Err("no policy provided".into());
    }
    let unknown: Vec<String> = map
        .iter()
        .filter(|(k, _)| rule_of(kind, k).is_none())
        .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang_term(v)))
        .collect();
    if !unknown.is_empty() {
        return Err(not_recognised(&unknown));
    }
    let mut out = Definition::new();
    for (key, json) in map {
        let value = match json {
            serde_json::Value::String(s) => PolicyValue::Text(s.clone()),
            serde_json::Value::Number(n) if n.is_i64() => {
                PolicyValue::Int(n.as_i64().unwrap_or_default())
            }
            other => {
                let what = rule_of(kind, key).map_or("policy setting", Rule::what);
                return Err(format!("{} is not a valid {what}", erlang_term(other)));
            }
        };
        check_value(kind, key, &value)?;
        out.insert(key.clone(), value);
    }
    Ok(out)
}

/// The policy that applies to `name`: the matching one of highest priority; among equal
/// priorities the first by name, as RabbitMQ's stable sort of its sorted table leaves them.
pub fn applicable<'a>(
    policies: impl Iterator<Item = &'a PolicyRecord>,
    vhost: &str,
    name: &str,
    target: Target,
) -> Option<&'a PolicyRecord> {
    let mut best: Option<&PolicyRecord> = None;
    for p in policies.filter(|p| p.vhost == vhost && p.matches(name, target)) {
        let better = match best {
            None => true,
            Some(b) => p.priority > b.priority || (p.priority == b.priority && p.name < b.name),
        };
        if better {
            best = Some(p);
        }
    }
    best
}

/// The settings that apply when both a policy and an operator policy match: the operator
/// policy's value caps numeric limits (the lower one wins) and is taken where the user
/// policy has none.
pub fn effective(user: Option<&PolicyRecord>, operator: Option<&PolicyRecord>) -> Definition {
    let mut out = user.map(|p| p.definition.clone()).unwrap_or_default();
    if let Some(op) = operator {
        for (key, value) in &op.definition {
            let merged = match out.get(key) {
                Some(mine) => merge(key, mine, value),
                None => value.clone(),
            };
            out.insert(key.clone(), merged);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, pattern: &str, priority: i64, def: serde_json::Value) -> PolicyRecord {
        PolicyRecord {
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: ApplyTo::All,
            priority,
            definition: parse_definition(&def, PolicyKind::User).unwrap(),
        }
    }

    #[test]
    fn definitions_are_refused_with_rabbitmq_s_reasons() {
        let user = |v| parse_definition(&v, PolicyKind::User).unwrap_err();
        assert_eq!(
            user(json!({"message-ttl": "abc"})),
            "<<\"abc\">> is not a valid message TTL"
        );
        assert_eq!(
            user(json!({"max-length": -1})),
            "-1 is not a valid maximum length"
        );
        assert_eq!(user(json!({"expires": 0})), "0 is not a valid queue expiry");
        assert_eq!(
            user(json!({"overflow": "sometimes"})),
            "<<\"sometimes\">> is not a valid overflow value"
        );
        assert_eq!(
            user(json!({"foo": 1, "ha-mode": "all"})),
            "[{<<\"foo\">>,1},{<<\"ha-mode\">>,<<\"all\">>}] are not recognised policy settings"
        );
        assert_eq!(user(json!({})), "no policy provided");
        assert_eq!(
            parse_definition(&json!({"dead-letter-exchange": "x"}), PolicyKind::Operator)
                .unwrap_err(),
            "[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings"
        );
        assert!(ApplyTo::parse("streams").is_err());
    }

    #[test]
    fn the_highest_priority_match_applies_and_ties_go_to_the_first_name() {
        let ps = [
            policy("b", "^q", 1, json!({"max-length": 1})),
            policy("a", "^q", 1, json!({"max-length": 2})),
            policy("c", "^q\\.", 5, json!({"max-length": 3})),
            policy("d", "nomatch", 9, json!({"max-length": 4})),
        ];
        let pick =
            |name| applicable(ps.iter(), "/", name, Target::ClassicQueue).map(|p| p.name.as_str());
        assert_eq!(pick("q.1"), Some("c"));
        assert_eq!(pick("qq"), Some("a"));
        assert_eq!(pick("x"), None);
        assert_eq!(
            applicable(ps.iter(), "other", "q.1", Target::ClassicQueue),
            None
        );
        let mut exchanges_only = policy("e", ".*", 100, json!({"alternate-exchange": "ae"}));
        exchanges_only.apply_to = ApplyTo::Exchanges;
        assert_eq!(
            applicable([&exchanges_only].into_iter(), "/", "q", Target::QuorumQueue),
            None
        );
    }

    #[test]
    fn an_operator_policy_caps_limits_and_fills_what_the_policy_leaves_out() {
        let user = policy("u", ".*", 0, json!({"max-length": 100, "message-ttl": 5}));
        let mut op = policy("o", ".*", 0, json!({"max-length": 10, "expires": 60000}));
        op.definition = parse_definition(
            &json!({"max-length": 10, "message-ttl": 60000, "expires": 60000}),
            PolicyKind::Operator,
        )
        .unwrap();
        let e = effective(Some(&user), Some(&op));
        assert_eq!(
            definition_json(&e),
            json!({"max-length": 10, "message-ttl": 5, "expires": 60000})
        );
        assert_eq!(effective(None, None), Definition::new());
        // A limit beats no limit; the operator's overflow is taken.
        let user = policy(
            "u",
            ".*",
            0,
            json!({"delivery-limit": -1, "overflow": "drop-head"}),
        );
        op.definition = parse_definition(
            &json!({"delivery-limit": 5, "overflow": "reject-publish"}),
            PolicyKind::Operator,
        )
        .unwrap();
        assert_eq!(
            definition_json(&effective(Some(&user), Some(&op))),
            json!({"delivery-limit": 5, "overflow": "reject-publish"})
        );
    }

    #[test]
    fn a_policy_with_a_key_a_queue_type_lacks_does_not_apply_to_that_type() {
        let ps = [
            policy(
                "limit",
                ".*",
                9,
                json!({"delivery-limit": 3, "max-length": 1}),
            ),
            policy("plain", ".*", 0, json!({"max-length": 2})),
        ];
        let pick = |target| applicable(ps.iter(), "/", "q", target).map(|p| p.name.as_str());
        assert_eq!(pick(Target::QuorumQueue), Some("limit"));
        assert_eq!(pick(Target::ClassicQueue), Some("plain"));
    }
}
