//! A queue's declare arguments, validated once (in one place) and kept typed.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::meta::equivalence::{as_int, type_name};
use crate::meta::policy::{Definition, PolicyValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueConfig {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub queue_type: QueueType,
    /// Redeliveries allowed before a message is dead-lettered; None: no limit.
    pub delivery_limit: Option<u64>,
    /// `x-delivery-limit` as declared (-1 and below: no limit), before policies and defaults.
    delivery_limit_arg: Option<i64>,
    /// Whether `x-overflow` was declared (it then wins over a policy's).
    overflow_from_arg: bool,
}

/// RabbitMQ 4's delivery limit for a quorum queue that sets none.
pub const QUORUM_DEFAULT_DELIVERY_LIMIT: u64 = 20;

/// The longest TTL RabbitMQ accepts (`rabbit_misc:check_expiry`): ten years, in milliseconds.
const MAX_EXPIRY_MS: i128 = 315_360_000_000;

/// A queue declared without arguments.
impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
            queue_type: QueueType::Classic,
            delivery_limit: None,
            delivery_limit_arg: None,
            overflow_from_arg: false,
        }
    }
}

impl QueueConfig {
    /// Parses and validates arguments; the error is RabbitMQ's 406 text (without the prefix).
    /// The checks, their order and their reasons follow `rabbit_amqqueue:declare_args/0`.
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<QueueConfig, String> {
        let invalid = |key: &str, why: String| {
            format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}")
        };
        let get = |key: &str| args.inner().get(key);
        let unacceptable = |v: &AMQPValue| format!("{{unacceptable_type,{}}}", type_name(v));
        // check_int_arg: any integer type (not timestamp).
        let int = |key: &str| -> Result<Option<i128>, String> {
            let Some(v) = get(key) else {
                return Ok(None);
            };
            let value = match v {
                AMQPValue::Timestamp(_) => None,
                _ => as_int(v),
            };
            value
                .map(Some)
                .ok_or_else(|| invalid(key, format!("\"expected integer, got {}\"", type_name(v))))
        };
        let non_negative = |key: &str| -> Result<Option<u64>, String> {
            match int(key)? {
                Some(i) if i < 0 => Err(invalid(key, format!("{{value_negative,{i}}}"))),
                other => Ok(other.map(|i| i.min(u64::MAX as i128) as u64)),
            }
        };
        let expiry = |key: &str, zero_allowed: bool| -> Result<Option<u64>, String> {
            match int(key)? {
                Some(0) if !zero_allowed => Err(invalid(key, "{value_zero,0}".to_string())),
                Some(i) if i < 0 => Err(invalid(key, format!("{{value_negative,{i}}}"))),
                Some(i) if i > MAX_EXPIRY_MS => {
                    Err(invalid(key, format!("{{value_too_large,{i}}}")))
                }
                other => Ok(other.map(|i| i as u64)),
            }
        };
        let string = |key: &str| -> Result<Option<String>, String> {
            match get(key) {
                None => Ok(None),
                Some(AMQPValue::LongString(s)) => {
                    Ok(Some(String::from_utf8_lossy(s.as_bytes()).into_owned()))
                }
                Some(AMQPValue::ShortString(s)) => Ok(Some(s.as_str().to_string())),
                Some(v) => Err(invalid(key, unacceptable(v))),
            }
        };

        let queue_type = match string("x-queue-type")?.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("\"unsupported queue type '{other}'\""),
                ));
            }
        };
        let expires = expiry("x-expires", false)?;
        let message_ttl = expiry("x-message-ttl", true)?;
        let dead_letter_exchange = string("x-dead-letter-exchange")?;
        let dead_letter_routing_key = string("x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        let max_length = non_negative("x-max-length")?;
        let max_length_bytes = non_negative("x-max-length-bytes")?;
        let max_priority = match non_negative("x-max-priority")? {
            None => None,
            Some(p) if p <= 255 => Some(p as u8),
            Some(p) => {
                return Err(invalid(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{p}}}"),
                ));
            }
        };
        let overflow_from_arg = get("x-overflow").is_some();
        let overflow = match string("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(_) => return Err(invalid("x-overflow", "invalid_overflow".into())),
        };
        let single_active_consumer = match get("x-single-active-consumer") {
            None => false,
            Some(AMQPValue::Boolean(b)) => *b,
            Some(v) => return Err(invalid("x-single-active-consumer", unacceptable(v))),
        };
        let delivery_limit_arg =
            int("x-delivery-limit")?.map(|i| i.clamp(-1, i64::MAX as i128) as i64);
        let mut config = QueueConfig {
            message_ttl,
            expires,
            max_length,
            max_length_bytes,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            single_active_consumer,
            queue_type,
            delivery_limit: None,
            delivery_limit_arg,
            overflow_from_arg,
        };
        config.settle_delivery_limit(delivery_limit_arg);
        Ok(config)
    }

    /// The settings once a policy's (already merged with an operator policy's) apply, by
    /// RabbitMQ's rules: for TTLs, expiry and length limits the lower of argument and policy
    /// wins; for dead-lettering the argument wins over the policy; for the delivery limit a
    /// limit beats none and the lower limit beats the higher.
    pub fn with_policy(mut self, policy: &Definition) -> QueueConfig {
        let int = |key: &str| policy.get(key).and_then(PolicyValue::as_int);
        let text = |key: &str| {
            policy
                .get(key)
                .and_then(PolicyValue::as_text)
                .map(str::to_string)
        };
        let non_negative = |key: &str| int(key).filter(|i| *i >= 0).map(|i| i as u64);
        let lower = |arg: Option<u64>, pol: Option<u64>| match (arg, pol) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
        self.message_ttl = lower(self.message_ttl, non_negative("message-ttl"));
        self.expires = lower(self.expires, non_negative("expires").filter(|e| *e > 0));
        self.max_length = lower(self.max_length, non_negative("max-length"));
        self.max_length_bytes = lower(self.max_length_bytes, non_negative("max-length-bytes"));
        // A quorum queue takes the policy's overflow over its argument (RabbitMQ's
        // `policy_has_precedence`), a classic queue its argument.
        if !self.overflow_from_arg || self.queue_type == QueueType::Quorum {
            match text("overflow").as_deref() {
                Some("reject-publish") => self.overflow = Overflow::RejectPublish,
                Some("reject-publish-dlx") => self.overflow = Overflow::RejectPublishDlx,
                Some("drop-head") => self.overflow = Overflow::DropHead,
                _ => {}
            }
        }
        if self.dead_letter_exchange.is_none() {
            self.dead_letter_exchange = text("dead-letter-exchange");
        }
        if self.dead_letter_routing_key.is_none() {
            self.dead_letter_routing_key = text("dead-letter-routing-key");
        }
        let limit = match (self.delivery_limit_arg, int("delivery-limit")) {
            // A negative value on either side turns the limit off (RabbitMQ 4's -1).
            (Some(a), Some(p)) if a < 0 || p < 0 => Some(a.max(p)),
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
        self.settle_delivery_limit(limit);
        self
    }

    fn settle_delivery_limit(&mut self, limit: Option<i64>) {
        self.delivery_limit = match (limit, self.queue_type) {
            (Some(l), _) if l < 0 => None,
            (Some(l), _) => Some(l as u64),
            (None, QueueType::Quorum) => Some(QUORUM_DEFAULT_DELIVERY_LIMIT),
            (None, QueueType::Classic) => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn parses_the_usual_arguments() {
        let c = QueueConfig::parse(
            &table(&[
                ("x-message-ttl", AMQPValue::LongInt(1000)),
                ("x-max-length", AMQPValue::ShortShortUInt(5)),
                ("x-overflow", AMQPValue::LongString("reject-publish".into())),
                ("x-max-priority", AMQPValue::LongLongInt(10)),
            ]),
            "q",
            "/",
        )
        .unwrap();
        assert_eq!(c.message_ttl, Some(1000));
        assert_eq!(c.max_length, Some(5));
        assert_eq!(c.overflow, Overflow::RejectPublish);
        assert_eq!(c.max_priority, Some(10));
    }

    #[test]
    fn negative_ttl_and_bad_overflow_are_refused() {
        assert!(
            QueueConfig::parse(
                &table(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
                "q",
                "/"
            )
            .is_err()
        );
        assert!(
            QueueConfig::parse(
                &table(&[("x-overflow", AMQPValue::LongString("nope".into()))]),
                "q",
                "/"
            )
            .is_err()
        );
        assert!(
            QueueConfig::parse(&table(&[("x-expires", AMQPValue::LongInt(0))]), "q", "/").is_err()
        );
    }

    #[test]
    fn refusals_read_like_rabbitmq() {
        let err = |k: &str, v: AMQPValue| {
            QueueConfig::parse(&table(&[(k, v)]), "q", "/")
                .unwrap_err()
                .split_once(": ")
                .map(|(_, why)| why.to_string())
                .unwrap()
        };
        assert_eq!(
            err("x-message-ttl", AMQPValue::LongString("soon".into())),
            "\"expected integer, got longstr\""
        );
        assert_eq!(
            err("x-message-ttl", AMQPValue::LongInt(-1)),
            "{value_negative,-1}"
        );
        assert_eq!(
            err("x-message-ttl", AMQPValue::LongLongInt(315_360_000_001)),
            "{value_too_large,315360000001}"
        );
        assert_eq!(err("x-expires", AMQPValue::LongInt(0)), "{value_zero,0}");
        assert_eq!(
            err("x-max-length", AMQPValue::LongInt(-1)),
            "{value_negative,-1}"
        );
        assert_eq!(
            err("x-max-priority", AMQPValue::LongInt(300)),
            "{max_value_exceeded,300}"
        );
        assert_eq!(
            err("x-overflow", AMQPValue::LongString("nope".into())),
            "invalid_overflow"
        );
        assert_eq!(
            err("x-dead-letter-exchange", AMQPValue::LongInt(5)),
            "{unacceptable_type,signedint}"
        );
        assert_eq!(
            err(
                "x-dead-letter-routing-key",
                AMQPValue::LongString("k".into())
            ),
            "routing_key_but_no_dlx_defined"
        );
        assert_eq!(
            err(
                "x-single-active-consumer",
                AMQPValue::LongString("yes".into())
            ),
            "{unacceptable_type,longstr}"
        );
        assert_eq!(
            err("x-queue-type", AMQPValue::LongString("nope".into())),
            "\"unsupported queue type 'nope'\""
        );
    }
}
