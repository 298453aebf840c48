//! A message as it crosses to another node or sits in a quorum queue's log: the store's
//! encoding, written as raw bytes by binary formats (the peer protocol) and as base64 text by
//! human-readable ones (quorum logs are JSON in redb, and logs written before the peer
//! protocol must still read back).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::message::Message;

#[derive(Debug, Clone)]
pub struct Carried(pub Arc<Message>);

impl Carried {
    pub fn new(msg: Arc<Message>) -> Carried {
        Carried(msg)
    }

    pub fn into_message(self) -> Arc<Message> {
        self.0
    }
}

/// The same message: the same bytes in the store's encoding.
impl PartialEq for Carried {
    fn eq(&self, other: &Carried) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.encoded() == other.0.encoded()
    }
}

impl Serialize for Carried {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.0.to_wire_text())
        } else {
            s.serialize_bytes(self.0.encoded_ref())
        }
    }
}

impl<'de> Deserialize<'de> for Carried {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Carried, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Message::from_wire_text(&text)
                .map(|m| Carried(Arc::new(m)))
                .ok_or_else(|| de::Error::custom("undecodable message"))
        } else {
            d.deserialize_bytes(Encoded)
        }
    }
}

struct Encoded;

impl<'de> Visitor<'de> for Encoded {
    type Value = Carried;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message in the store's encoding")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Carried, E> {
        Message::decode(Bytes::copy_from_slice(v))
            .map(|m| Carried(Arc::new(m)))
            .ok_or_else(|| E::custom("undecodable message"))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Carried, E> {
        Message::decode(Bytes::from(v))
            .map(|m| Carried(Arc::new(m)))
            .ok_or_else(|| E::custom("undecodable message"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Arc<Message> {
        let props = amq_protocol::protocol::basic::AMQPProperties::default();
        let raw = crate::base::message::encode_properties(&props);
        Arc::new(Message::new(
            "ex".into(),
            "rk".into(),
            props,
            raw,
            Bytes::from_static(b"hello"),
        ))
    }

    #[test]
    fn binary_formats_carry_raw_bytes_and_json_base64() {
        let m = msg();
        let bin = postcard::to_allocvec(&Carried(m.clone())).unwrap();
        // One length byte, then the encoding itself: no base64.
        assert_eq!(&bin[1..], &m.encoded()[..]);
        let back: Carried = postcard::from_bytes(&bin).unwrap();
        assert_eq!(back.0.body, m.body);
        assert_eq!(back.0.routing_key, "rk");

        let json = serde_json::to_string(&Carried(m.clone())).unwrap();
        assert_eq!(json, format!("\"{}\"", m.to_wire_text()));
        let back: Carried = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0.exchange, "ex");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(postcard::from_bytes::<Carried>(&[2, 0, 1]).is_err());
        assert!(serde_json::from_str::<Carried>("\"!!\"").is_err());
    }
}
