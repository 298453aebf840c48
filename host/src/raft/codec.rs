//! How Raft's log entries, votes and snapshots are kept in redb: postcard, the encoding of
//! the peer protocol (`peer/`), behind a one-byte format tag. Entries carry messages as raw
//! bytes (`base::carried`), so a quorum queue's log holds each body once, not in base64.
//!
//! Logs and snapshots written before this encoding are JSON; they still read. A JSON value
//! never starts with the tag byte (0x01), so the first byte says which decoder to use.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every value written in postcard.
const POSTCARD_V1: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode (postcard): {0}")]
    Postcard(#[from] postcard::Error),
    #[error("cannot decode (JSON, written by an earlier version): {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot decode: empty value")]
    Empty,
}

/// Encodes `value` for redb (and for snapshots sent to peers).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    crate::base::encoding::to_vec(&[POSTCARD_V1], value)
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes what `encode` wrote, or the JSON an earlier version wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&POSTCARD_V1, rest)) => {
            let (value, unread) = postcard::take_from_bytes(rest)?;
            if !unread.is_empty() {
                return Err(CodecError::Postcard(
                    postcard::Error::DeserializeBadEncoding,
                ));
            }
            Ok(value)
        }
        Some(_) => decode_legacy_json(bytes),
        None => Err(CodecError::Empty),
    }
}

/// Reads a value this node wrote as JSON before. The depth limit is lifted: a node must be
/// able to start from its own log, also one with a change nested past serde_json's default
/// limit (written before such changes were refused).
fn decode_legacy_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        term: u64,
        name: String,
        body: Vec<u8>,
        seen: BTreeMap<String, Option<u64>>,
    }

    fn sample() -> Sample {
        Sample {
            term: 7,
            name: "rabbit@a".into(),
            body: vec![0, 1, 2, 255],
            seen: [("x".to_string(), None), ("y".to_string(), Some(3))].into(),
        }
    }

    #[test]
    fn values_round_trip_and_start_with_the_tag() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(bytes[0], POSTCARD_V1);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn json_written_by_an_earlier_version_still_reads() {
        let json = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&json).unwrap(), sample());
        let none: Option<u64> = decode(b"null").unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        assert!(matches!(decode::<Sample>(&[]), Err(CodecError::Empty)));
        let bytes = encode(&sample()).unwrap();
        for cut in 1..bytes.len() {
            assert!(decode::<Sample>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<Sample>(&longer).is_err());
        assert!(decode::<Sample>(b"{not json").is_err());
    }
}
