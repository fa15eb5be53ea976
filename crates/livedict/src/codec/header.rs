//! The small self-describing header in front of every stored value.
//!
//! ```text
//! byte 0   magic 0xD7 ("this is a livedict value")
//! byte 1   format version (currently 1)
//! byte 2   bits 0-3: payload kind (0 raw bytes, 1 JSON, 2 MessagePack)
//!          bit  4:   payload is encrypted (an envelope follows instead of the plain payload)
//!          bits 5-7: reserved, must be zero
//! ```
//! A reader refuses anything else with [`Error::Format`], so a corrupted value, a value from a newer
//! livedict, or bytes that never came from livedict are reported, not misread.

use crate::error::{Error, Result};

/// First byte of every stored value.
pub(crate) const MAGIC: u8 = 0xD7;
/// The format version this build writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Length of the header in bytes.
pub(crate) const HEADER_LEN: usize = 3;

const KIND_MASK: u8 = 0x0F;
const ENCRYPTED: u8 = 0x10;
const RESERVED: u8 = 0xE0;

/// What the payload after the header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// Bytes stored as given (`set_bytes`).
    Raw,
    /// A serde value encoded as JSON.
    Json,
    /// A serde value encoded as MessagePack (maps with field names).
    MessagePack,
    /// An argon2id password hash (PHC string) of a password key.
    PasswordHash,
}

impl PayloadKind {
    fn code(self) -> u8 {
        match self {
            PayloadKind::Raw => 0,
            PayloadKind::Json => 1,
            PayloadKind::MessagePack => 2,
            PayloadKind::PasswordHash => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(PayloadKind::Raw),
            1 => Some(PayloadKind::Json),
            2 => Some(PayloadKind::MessagePack),
            3 => Some(PayloadKind::PasswordHash),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            PayloadKind::Raw => "raw bytes",
            PayloadKind::Json => "JSON",
            PayloadKind::MessagePack => "MessagePack",
            PayloadKind::PasswordHash => "a password hash",
        }
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: PayloadKind,
    pub(crate) encrypted: bool,
}

impl Header {
    pub(crate) fn plain(kind: PayloadKind) -> Self {
        Header {
            kind,
            encrypted: false,
        }
    }

    /// The three header bytes.
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let flags = self.kind.code() | if self.encrypted { ENCRYPTED } else { 0 };
        [MAGIC, FORMAT_VERSION, flags]
    }

    /// Splits `stored` into its header and the rest.
    ///
    /// # Errors
    /// [`Error::Format`] for a truncated header, a wrong magic byte, a newer format version, or
    /// reserved bits set.
    #[inline]
    pub(crate) fn parse(stored: &[u8]) -> Result<(Header, &[u8])> {
        if let Some((&[MAGIC, version, flags], rest)) = stored.split_first_chunk::<HEADER_LEN>()
            && (1..=FORMAT_VERSION).contains(&version)
            && flags & RESERVED == 0
            && let Some(kind) = PayloadKind::from_code(flags & KIND_MASK)
        {
            let encrypted = flags & ENCRYPTED != 0;
            return Ok((Header { kind, encrypted }, rest));
        }
        Err(malformed(stored))
    }
}

/// Why `stored` does not start with a valid header (the slow path of [`Header::parse`]).
#[cold]
fn malformed(stored: &[u8]) -> Error {
    let Some(&[magic, version, flags]) = stored.first_chunk::<HEADER_LEN>() else {
        return Error::Format(format!(
            "value of {} bytes is shorter than the {HEADER_LEN}-byte header",
            stored.len()
        ));
    };
    Error::Format(if magic != MAGIC {
        format!("not a livedict value (first byte {magic:#04x})")
    } else if version == 0 || version > FORMAT_VERSION {
        format!(
            "value format version {version} is not supported (this build reads 1..={FORMAT_VERSION})"
        )
    } else if flags & RESERVED != 0 {
        format!("reserved header bits set ({flags:#04x})")
    } else {
        format!("unknown payload kind {}", flags & KIND_MASK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for kind in [
            PayloadKind::Raw,
            PayloadKind::Json,
            PayloadKind::MessagePack,
            PayloadKind::PasswordHash,
        ] {
            for encrypted in [false, true] {
                let h = Header { kind, encrypted };
                let mut bytes = h.to_bytes().to_vec();
                bytes.extend_from_slice(b"payload");
                let (parsed, rest) = Header::parse(&bytes).unwrap();
                assert_eq!(parsed, h);
                assert_eq!(rest, b"payload");
            }
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let cases: &[&[u8]] = &[
            b"",
            &[MAGIC],
            &[MAGIC, 1],
            &[0x7B, 1, 1],     // '{': a bare JSON document
            &[MAGIC, 0, 1],    // version 0
            &[MAGIC, 2, 1],    // newer format
            &[MAGIC, 1, 0x0F], // unknown kind
            &[MAGIC, 1, 0x21], // reserved bit
        ];
        for bytes in cases {
            assert!(
                matches!(Header::parse(bytes), Err(Error::Format(_))),
                "{bytes:?} was accepted"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..16)) {
            let _ = Header::parse(&bytes);
        }
    }
}
