//! Turning values into stored bytes and back: the codec (JSON or MessagePack) and the header.
//!
//! A stored value is `header ++ payload` (see [`header`]). The header names the codec that wrote
//! the payload, so a store reads values written with another codec, and refuses bytes it does not
//! understand instead of misreading them.

pub(crate) mod header;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use header::{HEADER_LEN, Header, PayloadKind};

/// How a store encodes typed values.
///
/// Values written with one codec stay readable by a store configured with the other: the codec is
/// recorded in each value's header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON via `serde_json` (the default): readable with any tool.
    #[default]
    Json,
    /// MessagePack via `rmp-serde`, with named fields: smaller and faster. Needs the `msgpack`
    /// feature.
    #[cfg(feature = "msgpack")]
    #[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
    MessagePack,
}

impl Codec {
    fn kind(self) -> PayloadKind {
        match self {
            Codec::Json => PayloadKind::Json,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => PayloadKind::MessagePack,
        }
    }

    /// Encodes `value` with its header.
    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&Header::plain(self.kind()).to_bytes());
        match self {
            Codec::Json => {
                serde_json::to_writer(&mut out, value).map_err(|e| Error::Encode(Box::new(e)))?
            }
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => rmp_serde::encode::write_named(&mut out, value)
                .map_err(|e| Error::Encode(Box::new(e)))?,
        }
        Ok(Bytes::from(out))
    }
}

/// Wraps raw bytes (`set_bytes`) with their header.
pub(crate) fn encode_raw(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&Header::plain(PayloadKind::Raw).to_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Length of the payload of an encoded value (what the maximum value size limits).
pub(crate) fn payload_len(stored: &Bytes) -> usize {
    stored.len().saturating_sub(HEADER_LEN)
}

/// Decodes a stored typed value, whichever codec wrote it.
///
/// # Errors
/// [`Error::Format`] for a bad header or an encrypted value; [`Error::Decode`] when the payload is
/// raw bytes or does not match `T`.
pub(crate) fn decode<T: DeserializeOwned>(stored: &[u8]) -> Result<T> {
    let (header, payload) = Header::parse(stored)?;
    refuse_encrypted(header)?;
    match header.kind {
        PayloadKind::Json => serde_json::from_slice(payload).map_err(|e| {
            Error::decode(
                format!("JSON value does not match the requested type: {e}"),
                Some(Box::new(e)),
            )
        }),
        PayloadKind::MessagePack => decode_msgpack(payload),
        PayloadKind::Raw => Err(Error::decode(
            "the value was stored as raw bytes; read it with get_bytes",
            None,
        )),
        PayloadKind::PasswordHash => Err(password_denied()),
    }
}

#[cfg(feature = "msgpack")]
fn decode_msgpack<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    rmp_serde::from_slice(payload).map_err(|e| {
        Error::decode(
            format!("MessagePack value does not match the requested type: {e}"),
            Some(Box::new(e)),
        )
    })
}

#[cfg(not(feature = "msgpack"))]
fn decode_msgpack<T: DeserializeOwned>(_payload: &[u8]) -> Result<T> {
    Err(Error::Format(
        "the value is MessagePack; enable livedict's `msgpack` feature to read it".into(),
    ))
}

/// The payload of a value stored with `set_bytes`, sharing the stored buffer (no copy, no
/// reference-count traffic).
///
/// # Errors
/// [`Error::Format`] for a bad header; [`Error::Decode`] when the value is a typed value.
#[inline]
pub(crate) fn decode_raw(mut stored: Bytes) -> Result<Bytes> {
    let (header, _) = Header::parse(&stored)?;
    refuse_encrypted(header)?;
    match header.kind {
        PayloadKind::Raw => {
            bytes::Buf::advance(&mut stored, HEADER_LEN);
            Ok(stored)
        }
        PayloadKind::PasswordHash => Err(password_denied()),
        other => Err(Error::decode(
            format!("the value is {}; read it with get", other.name()),
            None,
        )),
    }
}

/// Whether `head`, the first bytes of a stored value, is the header of plain (not encrypted) raw
/// bytes, which [`decode_raw`] returns as they are after it.
#[inline]
pub(crate) fn is_plain_raw(head: &[u8; HEADER_LEN]) -> bool {
    Header::parse(head).is_ok_and(|(h, _)| h.kind == PayloadKind::Raw && !h.encrypted)
}

fn refuse_encrypted(header: Header) -> Result<()> {
    if header.encrypted {
        return Err(Error::Crypto(
            "the value is encrypted and this store has no keyring".into(),
        ));
    }
    Ok(())
}

fn password_denied() -> Error {
    Error::AccessDenied("a password key is read only through verify_password".into())
}

/// Wraps an argon2id PHC string as a password-key value.
pub(crate) fn encode_password_hash(phc: &str) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + phc.len());
    out.extend_from_slice(&Header::plain(PayloadKind::PasswordHash).to_bytes());
    out.extend_from_slice(phc.as_bytes());
    Bytes::from(out)
}

/// The PHC string of a (plain) password-key value.
///
/// # Errors
/// [`Error::Decode`] if the value is not a password key.
pub(crate) fn decode_password_hash(plain: &[u8]) -> Result<String> {
    let (header, payload) = Header::parse(plain)?;
    refuse_encrypted(header)?;
    if header.kind != PayloadKind::PasswordHash {
        return Err(Error::decode(
            format!("the value is {}, not a password key", header.kind.name()),
            None,
        ));
    }
    String::from_utf8(payload.to_vec())
        .map_err(|e| Error::decode("the password hash is not UTF-8", Some(Box::new(e))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct User {
        name: String,
        age: u32,
    }

    fn codecs() -> Vec<Codec> {
        vec![
            Codec::Json,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack,
        ]
    }

    #[test]
    fn typed_round_trip_with_every_codec() {
        let user = User {
            name: "ann".into(),
            age: 7,
        };
        for codec in codecs() {
            let stored = codec.encode(&user).unwrap();
            assert_eq!(decode::<User>(&stored).unwrap(), user);
            // A map-shaped view of the same value, whatever the codec.
            let v: serde_json::Value = decode(&stored).unwrap();
            assert_eq!(v["name"], "ann");
        }
    }

    #[test]
    fn wrong_type_is_a_decode_error() {
        for codec in codecs() {
            let stored = codec.encode(&"text").unwrap();
            assert!(matches!(decode::<u64>(&stored), Err(Error::Decode { .. })));
        }
    }

    #[test]
    fn raw_and_typed_do_not_mix() {
        let raw = encode_raw(b"\x00\x01");
        assert_eq!(&decode_raw(raw.clone()).unwrap()[..], b"\x00\x01");
        assert!(matches!(decode::<Vec<u8>>(&raw), Err(Error::Decode { .. })));
        let typed = Codec::Json.encode(&1).unwrap();
        assert!(matches!(decode_raw(typed), Err(Error::Decode { .. })));
    }

    #[test]
    fn corrupted_payload_is_a_decode_error() {
        let mut stored = Codec::Json.encode(&vec![1, 2, 3]).unwrap().to_vec();
        stored[4] = b'}';
        assert!(matches!(
            decode::<Vec<u8>>(&stored),
            Err(Error::Decode { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode::<serde_json::Value>(&bytes);
            let _ = decode_raw(Bytes::from(bytes));
        }
    }
}
