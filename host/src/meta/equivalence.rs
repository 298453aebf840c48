//! RabbitMQ's "inequivalent arg" rule: re-declaring an entity with different properties is a
//! 406 naming the first property that differs.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::model::{ExchangeRecord, QueueRecord};

/// Compares two argument values as RabbitMQ does: integers of different widths are equal when
/// their values are.
pub fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

pub fn as_int(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => *i as i128,
        AMQPValue::ShortShortUInt(i) => *i as i128,
        AMQPValue::ShortInt(i) => *i as i128,
        AMQPValue::ShortUInt(i) => *i as i128,
        AMQPValue::LongInt(i) => *i as i128,
        AMQPValue::LongUInt(i) => *i as i128,
        AMQPValue::LongLongInt(i) => *i as i128,
        AMQPValue::Timestamp(i) => *i as i128,
        _ => return None,
    })
}

pub fn describe_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => format!(
            "the value '{}' of type 'longstr'",
            String::from_utf8_lossy(s.as_bytes())
        ),
        AMQPValue::ShortString(s) => format!("the value '{s}' of type 'shortstr'"),
        AMQPValue::Boolean(b) => format!("the value '{b}' of type 'bool'"),
        other => match as_int(other) {
            Some(i) => format!("the value '{i}' of type '{}'", type_name(other)),
            None => format!("the value '{other:?}'"),
        },
    }
}

/// A value as RabbitMQ prints it without its type: `'2000'`, `'reject-publish'`, `'true'`.
fn bare_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => format!("'{}'", String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => format!("'{s}'"),
        AMQPValue::Boolean(b) => format!("'{b}'"),
        other => match as_int(other) {
            Some(i) => format!("'{i}'"),
            None => format!("'{other:?}'"),
        },
    }
}

/// RabbitMQ's name for a field-table value's type, as it appears in its error texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

fn differing_argument(
    current: &FieldTable,
    received: &FieldTable,
) -> Option<(String, String, String)> {
    let mut keys: Vec<&str> = current
        .inner()
        .keys()
        .chain(received.inner().keys())
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let c = current.inner().get(key);
        let r = received.inner().get(key);
        let same = match (c, r) {
            (Some(a), Some(b)) => values_equal(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            // RabbitMQ names the type only when one side is missing ("received none but
            // current is the value '1000' of type 'signedint'"); two present values are shown
            // bare ("received '2000' but current is '1000'").
            return Some(match (r, c) {
                (Some(r), Some(c)) => (key.to_string(), bare_value(r), bare_value(c)),
                _ => {
                    let show = |v: Option<&AMQPValue>| {
                        v.map(describe_value).unwrap_or_else(|| "none".into())
                    };
                    (key.to_string(), show(r), show(c))
                }
            });
        }
    }
    None
}

/// Queue arguments that take part in equivalence (RabbitMQ ignores unknown ones).
const QUEUE_EQUIVALENCE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-mode",
    "x-queue-master-locator",
    "x-queue-leader-locator",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
];

fn filtered(table: &FieldTable, keys: &[&str]) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table {
        if keys.contains(&k.as_str()) {
            // A classic queue declared without x-queue-type equals one declared "classic".
            if k.as_str() == "x-queue-type"
                && let AMQPValue::LongString(s) = v
                && s.as_bytes() == b"classic"
            {
                continue;
            }
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

pub fn check_queue(current: &QueueRecord, received: &QueueRecord) -> Result<(), String> {
    let what = format!("for queue '{}' in vhost '{}'", current.name, current.vhost);
    if current.durable != received.durable {
        return Err(format!(
            "inequivalent arg 'durable' {what}: received '{}' but current is '{}'",
            received.durable, current.durable
        ));
    }
    if current.auto_delete != received.auto_delete {
        return Err(format!(
            "inequivalent arg 'auto_delete' {what}: received '{}' but current is '{}'",
            received.auto_delete, current.auto_delete
        ));
    }
    let c = filtered(&current.arguments, QUEUE_EQUIVALENCE_ARGS);
    let r = filtered(&received.arguments, QUEUE_EQUIVALENCE_ARGS);
    if let Some((key, got, cur)) = differing_argument(&c, &r) {
        return Err(format!(
            "inequivalent arg '{key}' {what}: received {got} but current is {cur}"
        ));
    }
    Ok(())
}

pub fn check_exchange(current: &ExchangeRecord, received: &ExchangeRecord) -> Result<(), String> {
    let what = format!(
        "for exchange '{}' in vhost '{}'",
        current.name, current.vhost
    );
    let pairs: [(&str, String, String); 4] = [
        ("type", received.kind.clone(), current.kind.clone()),
        (
            "durable",
            received.durable.to_string(),
            current.durable.to_string(),
        ),
        (
            "auto_delete",
            received.auto_delete.to_string(),
            current.auto_delete.to_string(),
        ),
        (
            "internal",
            received.internal.to_string(),
            current.internal.to_string(),
        ),
    ];
    for (name, got, cur) in pairs {
        if got != cur {
            return Err(format!(
                "inequivalent arg '{name}' {what}: received '{got}' but current is '{cur}'"
            ));
        }
    }
    let keys = ["alternate-exchange"];
    let c = filtered(&current.arguments, &keys);
    let r = filtered(&received.arguments, &keys);
    if let Some((key, got, cur)) = differing_argument(&c, &r) {
        return Err(format!(
            "inequivalent arg '{key}' {what}: received {got} but current is {cur}"
        ));
    }
    Ok(())
}
