//! A queue's declare arguments, validated once (in one place) and kept typed.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::meta::equivalence::as_int;

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
    pub delivery_limit: Option<u64>,
}

fn string_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

impl QueueConfig {
    /// Parses and validates arguments; the error is RabbitMQ's 406 text (without the prefix).
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<QueueConfig, String> {
        let invalid = |key: &str, why: String| {
            format!("invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {why}")
        };
        let get = |key: &str| args.inner().get(key);
        let non_negative = |key: &str, positive: bool| -> Result<Option<u64>, String> {
            match get(key) {
                None => Ok(None),
                Some(v) => match as_int(v) {
                    Some(i) if i < 0 || (positive && i == 0) => {
                        Err(invalid(key, format!("{{value_zero_or_less,{i}}}")))
                    }
                    Some(i) => Ok(Some(i.min(u64::MAX as i128) as u64)),
                    None => Err(invalid(key, format!("{{unacceptable_type,{v:?}}}"))),
                },
            }
        };
        let string = |key: &str| -> Result<Option<String>, String> {
            match get(key) {
                None => Ok(None),
                Some(v) => string_value(v)
                    .map(Some)
                    .ok_or_else(|| invalid(key, format!("{{unacceptable_type,{v:?}}}"))),
            }
        };
        let overflow = match string("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(other) => {
                return Err(invalid(
                    "x-overflow",
                    format!("{{unknown_overflow,\"{other}\"}}"),
                ));
            }
        };
        let max_priority = match get("x-max-priority") {
            None => None,
            Some(v) => match as_int(v) {
                Some(i) if (0..=255).contains(&i) => Some(i as u8),
                Some(i) => {
                    return Err(invalid(
                        "x-max-priority",
                        format!("{{value_out_of_range,{i}}}"),
                    ));
                }
                None => {
                    return Err(invalid(
                        "x-max-priority",
                        format!("{{unacceptable_type,{v:?}}}"),
                    ));
                }
            },
        };
        let single_active_consumer = match get("x-single-active-consumer") {
            None => false,
            Some(AMQPValue::Boolean(b)) => *b,
            Some(v) => {
                return Err(invalid(
                    "x-single-active-consumer",
                    format!("{{unacceptable_type,{v:?}}}"),
                ));
            }
        };
        let queue_type = match string("x-queue-type")?.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("unsupported queue type '{other}'"),
                ));
            }
        };
        let dead_letter_exchange = string("x-dead-letter-exchange")?;
        let dead_letter_routing_key = string("x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "Key x-dead-letter-routing-key should be specified together with x-dead-letter-exchange".into(),
            ));
        }
        Ok(QueueConfig {
            message_ttl: non_negative("x-message-ttl", false)?,
            expires: non_negative("x-expires", true)?,
            max_length: non_negative("x-max-length", false)?,
            max_length_bytes: non_negative("x-max-length-bytes", false)?,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            single_active_consumer,
            queue_type,
            delivery_limit: non_negative("x-delivery-limit", false)?,
        })
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
}
