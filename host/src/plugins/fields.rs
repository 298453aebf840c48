//! AMQP field tables and message properties in their WIT form.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};

use super::bindings::FieldValue;
use super::bindings::xt;

pub type WitTable = Vec<(String, FieldValue)>;

pub fn table(t: &FieldTable) -> WitTable {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value(v)))
        .collect()
}

pub fn value(v: &AMQPValue) -> FieldValue {
    match v {
        AMQPValue::Boolean(b) => FieldValue::Boolean(*b),
        AMQPValue::ShortShortInt(i) => FieldValue::Int((*i).into()),
        AMQPValue::ShortShortUInt(i) => FieldValue::Int((*i).into()),
        AMQPValue::ShortInt(i) => FieldValue::Int((*i).into()),
        AMQPValue::ShortUInt(i) => FieldValue::Int((*i).into()),
        AMQPValue::LongInt(i) => FieldValue::Int((*i).into()),
        AMQPValue::LongUInt(i) => FieldValue::Int((*i).into()),
        AMQPValue::LongLongInt(i) => FieldValue::Int(*i),
        AMQPValue::Float(f) => FieldValue::Float((*f).into()),
        AMQPValue::Double(f) => FieldValue::Float(*f),
        AMQPValue::ShortString(s) => FieldValue::Text(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => FieldValue::Text(text.to_string()),
            Err(_) => FieldValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::ByteArray(b) => FieldValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::Void => FieldValue::Void,
        AMQPValue::DecimalValue(_) | AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => {
            let encode = amq_protocol::types::generation::gen_value(v);
            FieldValue::Encoded(cookie_factory::gen_simple(encode, Vec::new()).unwrap_or_default())
        }
    }
}

pub fn properties(p: &BasicProperties) -> xt::Properties {
    let s =
        |v: &Option<amq_protocol::types::ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    xt::Properties {
        content_type: s(p.content_type()),
        content_encoding: s(p.content_encoding()),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: s(p.correlation_id()),
        reply_to: s(p.reply_to()),
        expiration: s(p.expiration()),
        message_id: s(p.message_id()),
        timestamp: *p.timestamp(),
        type_: s(p.kind()),
        user_id: s(p.user_id()),
        app_id: s(p.app_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldArray, LongString};

    #[test]
    fn integers_of_every_width_are_one_int_and_nested_values_stay_comparable() {
        assert!(matches!(
            value(&AMQPValue::ShortShortInt(-3)),
            FieldValue::Int(-3)
        ));
        assert!(matches!(value(&AMQPValue::LongUInt(7)), FieldValue::Int(7)));
        assert!(
            matches!(value(&AMQPValue::LongString(LongString::from("x"))), FieldValue::Text(t) if t == "x")
        );
        let a = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)]));
        let FieldValue::Encoded(bytes) = value(&a) else {
            panic!("arrays are encoded")
        };
        assert_eq!(bytes, [b'A', 0, 0, 0, 2, b't', 1]);
    }
}
