//! The encryption envelope: how an encrypted value is laid out and bound to its key name.
//!
//! ```text
//! header (3 bytes, "encrypted" bit set, payload kind as for a plain value)
//! key id (4 bytes, big-endian)
//! nonce (12 bytes, fresh and random for every write)
//! ciphertext of the payload, then the 16-byte GCM tag
//! ```
//!
//! AES-256-GCM authenticates, as associated data, the header, the key id and the full key name:
//! a ciphertext copied to another key, a changed header, or any flipped bit fails to decrypt.

use aes_gcm::Nonce;
use aes_gcm::aead::{Aead, Payload};
use bytes::Bytes;

use super::keyring::Keyring;
use crate::codec::header::{HEADER_LEN, Header};
use crate::error::{Error, Result};

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes an envelope adds to a plain value.
#[cfg(test)]
pub(crate) const OVERHEAD: usize = KEY_ID_LEN + NONCE_LEN + TAG_LEN;

fn aad(header: &[u8], key_id: &[u8], key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + key_id.len() + key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(key_id);
    aad.extend_from_slice(key.as_bytes());
    aad
}

/// Encrypts the plain value `plain` (header + payload) stored under `key` with the keyring's
/// current key.
pub(crate) fn seal(keyring: &Keyring, key: &str, plain: &[u8]) -> Result<Bytes> {
    let (header, payload) = Header::parse(plain)?;
    let (id, material) = keyring
        .current()
        .ok_or_else(|| Error::Crypto("the keyring is empty".into()))?;
    let header = Header {
        encrypted: true,
        ..header
    }
    .to_bytes();
    let key_id = id.to_be_bytes();
    // A fresh random nonce from the operating system, for every write. Not from the thread's
    // CSPRNG: a forked child inherits that generator's state (rand does not reseed it on fork),
    // and parent and child would then seal with the same nonces under the same key, which
    // breaks AES-GCM. A system call per encrypted write is the price.
    let mut nonce_bytes = [0u8; 12];
    getrandom::fill(&mut nonce_bytes)
        .map_err(|e| Error::Crypto(format!("no randomness for a nonce: {e}")))?;
    let nonce = Nonce::from(nonce_bytes);
    let sealed = material
        .cipher
        .encrypt(
            &nonce,
            Payload {
                msg: payload,
                aad: &aad(&header, &key_id, key),
            },
        )
        .map_err(|_| Error::Crypto("encryption failed".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + KEY_ID_LEN + NONCE_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&key_id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(Bytes::from(out))
}

/// The key id of an encrypted value, or `None` for a plain one.
pub(crate) fn key_id(stored: &[u8]) -> Result<Option<u32>> {
    let (header, rest) = Header::parse(stored)?;
    if !header.encrypted {
        return Ok(None);
    }
    let id: [u8; KEY_ID_LEN] = rest
        .get(..KEY_ID_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Format("truncated encryption envelope".into()))?;
    Ok(Some(u32::from_be_bytes(id)))
}

/// Decrypts a stored value of `key` into its plain form (header without the encrypted bit, then
/// the payload). A plain value is returned as it is, unless `require_encrypted` (a store that
/// encrypts every value accepts no plain value: one could only have been injected, or made by
/// clearing the encrypted bit of a ciphertext).
///
/// # Errors
/// [`Error::Format`] for a truncated envelope; [`Error::Crypto`] for a plain value where one is
/// not accepted, an unknown key id, a missing keyring, or a value that does not authenticate
/// (tampered, truncated, wrong key, moved from another key name).
pub(crate) fn open(
    keyring: Option<&Keyring>,
    key: &str,
    stored: Bytes,
    require_encrypted: bool,
) -> Result<Bytes> {
    let (header, rest) = Header::parse(&stored)?;
    if !header.encrypted {
        if require_encrypted {
            return Err(Error::Crypto(format!(
                "the value of {key:?} is not encrypted, in a store that encrypts every value"
            )));
        }
        return Ok(stored);
    }
    if rest.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
        return Err(Error::Format(format!(
            "truncated encryption envelope ({} bytes after the header)",
            rest.len()
        )));
    }
    let keyring = keyring.ok_or_else(|| {
        Error::Crypto("the value is encrypted and this store has no keyring".into())
    })?;
    let (key_id, rest) = rest.split_at(KEY_ID_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let id = u32::from_be_bytes(key_id.try_into().expect("4 bytes"));
    let material = keyring
        .get(id)
        .ok_or_else(|| Error::Crypto(format!("the value needs key id {id}, not in the keyring")))?;
    let nonce = Nonce::try_from(nonce).map_err(|_| Error::Format("bad nonce".into()))?;
    let payload = material
        .cipher
        .decrypt(
            &nonce,
            Payload {
                msg: sealed,
                aad: &aad(&stored[..HEADER_LEN], key_id, key),
            },
        )
        .map_err(|_| {
            Error::Crypto(format!(
                "the value of {key:?} does not authenticate (tampered, wrong key, or moved from another key)"
            ))
        })?;
    let mut plain = Vec::with_capacity(HEADER_LEN + payload.len());
    plain.extend_from_slice(
        &Header {
            encrypted: false,
            ..header
        }
        .to_bytes(),
    );
    plain.extend_from_slice(&payload);
    Ok(Bytes::from(plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    fn ring() -> Keyring {
        Keyring::from_bytes(7, &[42u8; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let plain = Codec::Json.encode(&"secret").unwrap();
        let a = seal(&ring(), "k", &plain).unwrap();
        let b = seal(&ring(), "k", &plain).unwrap();
        assert_ne!(a, b, "a fresh nonce per write");
        assert_eq!(a.len(), plain.len() + OVERHEAD);
        assert_eq!(key_id(&a).unwrap(), Some(7));
        assert_eq!(open(Some(&ring()), "k", a, true).unwrap(), plain);
        assert_eq!(
            open(None, "k", plain.clone(), false).unwrap(),
            plain,
            "plain values pass"
        );
    }

    #[test]
    fn every_failure_is_an_error() {
        let plain = Codec::Json.encode(&"secret").unwrap();
        let sealed = seal(&ring(), "k", &plain).unwrap();
        // Moved to another key name.
        assert!(matches!(
            open(Some(&ring()), "k2", sealed.clone(), true),
            Err(Error::Crypto(_))
        ));
        // Wrong key material under the same id.
        let other = Keyring::from_bytes(7, &[1u8; 32]).unwrap();
        assert!(matches!(
            open(Some(&other), "k", sealed.clone(), true),
            Err(Error::Crypto(_))
        ));
        // Unknown key id.
        let unknown = Keyring::from_bytes(8, &[42u8; 32]).unwrap();
        assert!(matches!(
            open(Some(&unknown), "k", sealed.clone(), true),
            Err(Error::Crypto(_))
        ));
        // No keyring.
        assert!(matches!(
            open(None, "k", sealed.clone(), true),
            Err(Error::Crypto(_))
        ));
        // Every single flipped bit.
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.to_vec();
                bad[i] ^= 1 << bit;
                assert!(
                    open(Some(&ring()), "k", Bytes::from(bad), true).is_err(),
                    "flipping bit {bit} of byte {i} went unnoticed"
                );
            }
        }
        // Every truncation.
        for len in 0..sealed.len() {
            assert!(
                open(Some(&ring()), "k", sealed.slice(..len), true).is_err(),
                "truncated to {len}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_envelopes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let mut b = bytes.clone();
            if b.len() >= 3 { b[0] = 0xD7; b[1] = 1; b[2] = 0x11; }
            let _ = open(Some(&ring()), "k", Bytes::from(b), true);
            let _ = open(Some(&ring()), "k", Bytes::from(bytes), false);
        }
    }
}
