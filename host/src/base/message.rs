//! A message as the broker holds it: shared (`Arc`) between every queue it was routed to, with
//! its property bytes kept exactly as the publisher sent them.

use std::sync::OnceLock;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::FieldTable;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::gen_properties;

#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// The few properties the broker acts on; the rest stay encoded in `properties_raw`
    /// (a parsed property set costs more memory than a small message itself).
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    expiration: Option<Box<str>>,
    headers: Option<Box<FieldTable>>,
    pub properties_raw: Bytes,
    pub body: Bytes,
    /// When the broker took the message (ms since the epoch): TTLs count from here, also
    /// after a restart.
    pub published_at: u64,
    /// The store's encoding, made once however many durable queues take the message.
    encoded: OnceLock<Bytes>,
}

impl Message {
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: AMQPProperties,
        properties_raw: Bytes,
        body: Bytes,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            delivery_mode: *properties.delivery_mode(),
            priority: *properties.priority(),
            expiration: properties.expiration().as_ref().map(|e| e.as_str().into()),
            headers: properties.headers().clone().map(Box::new),
            properties_raw,
            body,
            published_at: super::clock::now_ms(),
            encoded: OnceLock::new(),
        }
    }

    /// A copy with new properties (dead-lettering rewrites headers), re-encoded for the wire.
    pub fn with_properties(
        &self,
        exchange: String,
        routing_key: String,
        properties: AMQPProperties,
    ) -> Message {
        let raw = encode_properties(&properties);
        Message::new(exchange, routing_key, properties, raw, self.body.clone())
    }

    /// All properties, decoded from the bytes the publisher sent (dead-lettering, BCC).
    pub fn properties(&self) -> AMQPProperties {
        match amq_protocol::protocol::basic::parse_properties(&self.properties_raw[..]) {
            Ok(([], p)) => p,
            // The bytes were parsed once already when the message arrived.
            _ => AMQPProperties::default(),
        }
    }

    pub fn headers(&self) -> Option<&FieldTable> {
        self.headers.as_deref()
    }

    pub fn persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(0)
    }

    /// Per-message TTL from the `expiration` property, in milliseconds. `Err` for a value that
    /// is not a non-negative integer (RabbitMQ refuses those with 406).
    pub fn expiration_ms(&self) -> Result<Option<u64>, String> {
        match self.expiration.as_deref() {
            None => Ok(None),
            Some(s) => parse_expiration(s)
                .map(Some)
                .map_err(|why| format!("invalid expiration '{s}': {why}")),
        }
    }

    /// Bytes the message occupies, as RabbitMQ counts message_bytes (the body).
    pub fn size(&self) -> usize {
        self.body.len()
    }

    /// Heap bytes the message holds while queued, for a queue's `memory`: the structure, its
    /// strings, the raw properties and the body. A parsed headers table is counted at its
    /// encoded size (its real size is larger but not measurable without walking it). The store
    /// encoding is left out: it is made lazily, so counting it would change the figure
    /// between a message's enqueue and its removal.
    pub fn footprint(&self) -> u64 {
        let strings = self.exchange.capacity()
            + self.routing_key.capacity()
            + self.expiration.as_ref().map_or(0, |e| e.len());
        let headers = if self.headers.is_some() {
            self.properties_raw.len()
        } else {
            0
        };
        (std::mem::size_of::<Message>()
            + strings
            + headers
            + self.properties_raw.len()
            + self.body.len()) as u64
    }

    pub fn encoded(&self) -> Bytes {
        self.encoded_ref().clone()
    }

    /// The store's encoding, borrowed: serializing a message twice per destination (measure,
    /// then write) need not touch the shared count of its bytes each time.
    pub fn encoded_ref(&self) -> &Bytes {
        self.encoded.get_or_init(|| {
            let mut out = BytesMut::with_capacity(
                12 + self.exchange.len()
                    + self.routing_key.len()
                    + self.properties_raw.len()
                    + self.body.len(),
            );
            out.put_u64(self.published_at);
            out.put_u8(self.exchange.len() as u8);
            out.extend_from_slice(self.exchange.as_bytes());
            out.put_u8(self.routing_key.len() as u8);
            out.extend_from_slice(self.routing_key.as_bytes());
            out.put_u32(self.properties_raw.len() as u32);
            out.extend_from_slice(&self.properties_raw);
            out.extend_from_slice(&self.body);
            out.freeze()
        })
    }

    /// Reads a message back from the store's encoding.
    /// The store encoding as base64 text: how a message crosses to another
    /// node inside the (JSON) control protocol.
    pub fn to_wire_text(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.encoded())
    }

    pub fn from_wire_text(text: &str) -> Option<Message> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .ok()?;
        Message::decode(bytes.into())
    }

    pub fn decode(mut data: Bytes) -> Option<Message> {
        let original = data.clone();
        let short = |data: &mut Bytes| -> Option<String> {
            if data.remaining() < 1 {
                return None;
            }
            let len = data.get_u8() as usize;
            if data.remaining() < len {
                return None;
            }
            let s = data.split_to(len);
            String::from_utf8(s.to_vec()).ok()
        };
        if data.remaining() < 8 {
            return None;
        }
        let published_at = data.get_u64();
        let exchange = short(&mut data)?;
        let routing_key = short(&mut data)?;
        if data.remaining() < 4 {
            return None;
        }
        let plen = data.get_u32() as usize;
        if data.remaining() < plen {
            return None;
        }
        let properties_raw = data.split_to(plen);
        // Fed by peers and the disk: the recursive parser only sees bounded nesting.
        crate::field_depth::check_properties(&properties_raw).ok()?;
        let properties = match amq_protocol::protocol::basic::parse_properties(&properties_raw[..])
        {
            Ok(([], p)) => p,
            _ => return None,
        };
        let mut msg = Message::new(exchange, routing_key, properties, properties_raw, data);
        msg.published_at = published_at;
        let _ = msg.encoded.set(original);
        Some(msg)
    }
}

/// Serialises properties the way a content header carries them (used when Warren itself
/// changes a message's headers, e.g. x-death when dead-lettering).
pub fn encode_properties(properties: &AMQPProperties) -> Bytes {
    let ctx = WriteContext::from(Vec::with_capacity(64));
    match gen_properties(properties)(ctx) {
        Ok(ctx) => Bytes::from(ctx.write),
        // Writing into a Vec cannot fail for lack of room; an empty property set is a safe fallback.
        Err(_) => Bytes::from_static(&[0, 0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_encoding_round_trips() {
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_priority(3);
        let raw = encode_properties(&props);
        let m = Message::new(
            "x".into(),
            "rk".into(),
            props,
            raw,
            Bytes::from_static(b"hello"),
        );
        let back = Message::decode(m.encoded()).unwrap();
        assert_eq!(back.exchange, "x");
        assert_eq!(back.routing_key, "rk");
        assert_eq!(&back.body[..], b"hello");
        assert!(back.persistent());
        assert_eq!(back.priority(), 3);
    }
}

/// The longest per-message TTL RabbitMQ accepts: ten years, in milliseconds.
const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// Parses an `expiration` the way RabbitMQ does (`string:to_integer` and `check_expiry`); the
/// error is the reason as RabbitMQ prints it (`no_integer`, `{leftover_string,"x"}`,
/// `{value_negative,-5}`, `{value_too_large,N}`).
pub fn parse_expiration(s: &str) -> Result<u64, String> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("no_integer".to_string());
    }
    if digits < rest.len() {
        return Err(format!("{{leftover_string,{:?}}}", &rest[digits..]));
    }
    let magnitude = rest.trim_start_matches('0');
    let magnitude = if magnitude.is_empty() { "0" } else { magnitude };
    if negative && magnitude != "0" {
        return Err(format!("{{value_negative,-{magnitude}}}"));
    }
    match magnitude.parse::<u64>() {
        Ok(n) if n <= MAX_EXPIRY_MS => Ok(n),
        _ => Err(format!("{{value_too_large,{magnitude}}}")),
    }
}

#[cfg(test)]
mod expiration_tests {
    use super::parse_expiration;

    #[test]
    fn parses_like_rabbitmq() {
        assert_eq!(parse_expiration("1000"), Ok(1000));
        assert_eq!(parse_expiration("+5"), Ok(5));
        assert_eq!(parse_expiration("-0"), Ok(0));
        assert_eq!(parse_expiration("soon"), Err("no_integer".into()));
        assert_eq!(parse_expiration(""), Err("no_integer".into()));
        assert_eq!(
            parse_expiration("10abc"),
            Err("{leftover_string,\"abc\"}".into())
        );
        assert_eq!(parse_expiration("-5"), Err("{value_negative,-5}".into()));
        assert_eq!(
            parse_expiration("315360000001"),
            Err("{value_too_large,315360000001}".into())
        );
    }
}
