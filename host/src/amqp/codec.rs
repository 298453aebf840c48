//! Frames on the wire: splitting the byte stream into frames and encoding replies.
//!
//! Bodies never go through amq-protocol's parser (it copies into a `Vec`): a body frame's
//! payload is a zero-copy slice of the read buffer, and the content header's property bytes
//! are kept verbatim so that properties and headers reach consumers byte for byte.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, basic::AMQPProperties, constants};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::base::error::{AmqpError, ReplyCode};

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_END: u8 = constants::FRAME_END;
/// Frame header (type, channel, size) plus the frame-end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may ask for (spec: 4096).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// One frame as it came off the wire, before its method is decoded.
#[derive(Debug)]
pub enum RawFrame {
    Method { channel: u16, payload: Bytes },
    Header { channel: u16, payload: Bytes },
    Body { channel: u16, payload: Bytes },
    Heartbeat { channel: u16 },
}

/// A content header as Warren keeps it: the parsed properties for routing decisions, and the
/// raw property bytes to send on unchanged.
#[derive(Debug, Clone)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: AMQPProperties,
    pub properties_raw: Bytes,
}

/// Takes one complete frame off the front of `buf`, if there is one.
/// `frame_max` is the negotiated maximum frame size (0 = unlimited).
pub fn take_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<RawFrame>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if frame_max != 0 && size as usize + FRAME_OVERHEAD > frame_max as usize {
        return Err(AmqpError::connection(
            ReplyCode::FrameError,
            format!(
                "FRAME_ERROR - type {kind}, size {} exceeds frame_max {frame_max}",
                size as usize + FRAME_OVERHEAD
            ),
        ));
    }
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(AmqpError::connection(
            ReplyCode::FrameError,
            format!("FRAME_ERROR - frame end marker missing (type {kind}, channel {channel})"),
        ));
    }
    buf.advance(7);
    let payload = buf.split_to(size as usize).freeze();
    buf.advance(1);
    let frame = match kind {
        constants::FRAME_METHOD => RawFrame::Method { channel, payload },
        constants::FRAME_HEADER => RawFrame::Header { channel, payload },
        constants::FRAME_BODY => RawFrame::Body { channel, payload },
        constants::FRAME_HEARTBEAT => RawFrame::Heartbeat { channel },
        other => {
            return Err(AmqpError::connection(
                ReplyCode::FrameError,
                format!("FRAME_ERROR - unknown frame type {other}"),
            ));
        }
    };
    Ok(Some(frame))
}

const KNOWN_METHODS: &[(u16, &[u16])] = &[
    (
        10,
        &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
    ),
    (20, &[10, 11, 20, 21, 40, 41]),
    (30, &[10, 11]),
    (40, &[10, 11, 20, 21, 30, 31, 40, 51]),
    (50, &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51]),
    (
        60,
        &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
    ),
    (85, &[10, 11]),
    (90, &[10, 11, 20, 21, 30, 31]),
];

/// Decodes a method frame's payload. Unknown classes and methods and malformed arguments get
/// the reply codes the spec gives them.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, AmqpError> {
    if payload.len() < 4 {
        return Err(AmqpError::connection(
            ReplyCode::FrameError,
            "FRAME_ERROR - method frame too short".to_string(),
        ));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    let Some((_, methods)) = KNOWN_METHODS.iter().find(|(c, _)| *c == class_id) else {
        return Err(AmqpError::connection(
            ReplyCode::NotImplemented,
            format!("NOT_IMPLEMENTED - unknown class id {class_id}"),
        ));
    };
    if !methods.contains(&method_id) {
        return Err(AmqpError::connection(
            ReplyCode::CommandInvalid,
            format!("COMMAND_INVALID - unknown method {method_id} of class {class_id}"),
        ));
    }
    // amq-protocol's parser drops basic.qos's prefetch-size; RabbitMQ refuses any but 0.
    if (class_id, method_id) == (60, 10) && payload.len() >= 8 {
        let size = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        if size != 0 {
            return Err(
                AmqpError::not_implemented(format!("prefetch_size!=0 ({size})"))
                    .with_method(60, 10),
            );
        }
    }
    // amq-protocol parses tables recursively: measure their nesting first.
    if let Err(e) = crate::field_depth::check_method(payload) {
        return Err(AmqpError::connection(
            ReplyCode::SyntaxError,
            format!("SYNTAX_ERROR - {e} in the arguments of method {class_id}.{method_id}"),
        ));
    }
    match amq_protocol::protocol::parse_class(payload) {
        Ok(([], class)) => Ok(class),
        _ => Err(AmqpError::connection(
            ReplyCode::SyntaxError,
            format!("SYNTAX_ERROR - malformed arguments of method {class_id}.{method_id}"),
        )),
    }
}

pub fn decode_content_header(payload: Bytes) -> Result<ContentHeader, AmqpError> {
    let bad = || {
        AmqpError::connection(
            ReplyCode::FrameError,
            "FRAME_ERROR - malformed content header".to_string(),
        )
    };
    if payload.len() < 14 {
        return Err(bad());
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let body_size = u64::from_be_bytes(payload[4..12].try_into().map_err(|_| bad())?);
    // A copy: a slice would pin the whole read buffer for as long as the message lives.
    let properties_raw = Bytes::copy_from_slice(&payload[12..]);
    if let Err(e) = crate::field_depth::check_properties(&properties_raw) {
        return Err(AmqpError::connection(
            ReplyCode::FrameError,
            format!("FRAME_ERROR - content header: {e}"),
        ));
    }
    let properties = match amq_protocol::protocol::basic::parse_properties(&properties_raw[..]) {
        Ok(([], p)) => p,
        _ => return Err(bad()),
    };
    Ok(ContentHeader {
        class_id,
        body_size,
        properties,
        properties_raw,
    })
}

/// Appends a method frame.
pub fn encode_method(out: &mut BytesMut, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let ctx = WriteContext::from(Vec::with_capacity(64));
    if let Ok(ctx) = gen_frame(&frame)(ctx) {
        out.extend_from_slice(&ctx.write);
    }
}

/// Appends a content header frame and the body frames, split by frame_max.
pub fn encode_content(
    out: &mut BytesMut,
    channel: u16,
    properties_raw: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    out.reserve(FRAME_OVERHEAD * 2 + 12 + properties_raw.len() + body.len());
    out.put_u8(constants::FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32((12 + properties_raw.len()) as u32);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.extend_from_slice(properties_raw);
    out.put_u8(FRAME_END);
    let chunk = if frame_max == 0 {
        body.len().max(1)
    } else {
        frame_max as usize - FRAME_OVERHEAD
    };
    for piece in body.chunks(chunk) {
        out.put_u8(constants::FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(piece.len() as u32);
        out.extend_from_slice(piece);
        out.put_u8(FRAME_END);
    }
}

pub fn encode_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[constants::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic;

    #[test]
    fn method_round_trips_through_the_codec() {
        let mut out = BytesMut::new();
        let method = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: true,
        }));
        encode_method(&mut out, 3, method.clone());
        let Some(RawFrame::Method { channel, payload }) = take_frame(&mut out, 131072).unwrap()
        else {
            panic!("expected a method frame");
        };
        assert_eq!(channel, 3);
        assert_eq!(decode_method(&payload).unwrap(), method);
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_frame_is_a_frame_error() {
        let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 1, 0, 0][..]);
        let err = take_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(err.code, ReplyCode::FrameError);
    }

    #[test]
    fn missing_frame_end_is_a_frame_error() {
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            take_frame(&mut buf, 4096).unwrap_err().code,
            ReplyCode::FrameError
        );
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0, 4, 1, 2][..]);
        assert!(take_frame(&mut buf, 4096).unwrap().is_none());
        buf.extend_from_slice(&[3, 4, FRAME_END]);
        match take_frame(&mut buf, 4096).unwrap() {
            Some(RawFrame::Body { channel, payload }) => {
                assert_eq!(channel, 1);
                assert_eq!(&payload[..], &[1, 2, 3, 4]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_class_is_not_implemented_and_unknown_method_is_command_invalid() {
        assert_eq!(
            decode_method(&[0, 99, 0, 10]).unwrap_err().code,
            ReplyCode::NotImplemented
        );
        assert_eq!(
            decode_method(&[0, 60, 0, 99]).unwrap_err().code,
            ReplyCode::CommandInvalid
        );
    }

    #[test]
    fn qos_with_a_prefetch_size_is_not_implemented() {
        // basic.qos: prefetch-size 4096, prefetch-count 10, global false.
        let err = decode_method(&[0, 60, 0, 10, 0, 0, 16, 0, 0, 10, 0]).unwrap_err();
        assert_eq!(err.code, ReplyCode::NotImplemented);
        assert_eq!(err.text, "NOT_IMPLEMENTED - prefetch_size!=0 (4096)");
        assert_eq!((err.class_id, err.method_id), (60, 10));
        assert!(decode_method(&[0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0]).is_ok());
    }

    #[test]
    fn body_is_split_by_frame_max() {
        let mut out = BytesMut::new();
        let body = vec![7u8; 10_000];
        encode_content(&mut out, 1, &[0, 0], &body, 4096);
        let mut bodies = 0;
        let mut total = 0;
        while let Some(frame) = take_frame(&mut out, 4096).unwrap() {
            if let RawFrame::Body { payload, .. } = frame {
                bodies += 1;
                total += payload.len();
            }
        }
        assert_eq!(bodies, 3);
        assert_eq!(total, 10_000);
    }
}
