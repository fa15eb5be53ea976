//! Encryption at rest and password hashing.
//!
//! - [`Keyring`]: AES-256 keys with ids; new writes use the newest, reads pick the key by the id
//!   written in the value.
//! - The envelope: AES-256-GCM with a fresh random nonce per write, and the header, key id and full
//!   key name bound in as associated data, so a ciphertext moved to another key fails to decrypt.
//! - Password keys: argon2id PHC hashes (OWASP parameters), never the password.

pub(crate) mod envelope;
pub(crate) mod keyring;
pub(crate) mod password;

pub use keyring::Keyring;

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::codec::header::Header;
use crate::error::{Error, Result};

/// A store's encryption: its keyring, and whether every value is encrypted (or only secret ones).
/// Shared with the store's events, which decrypt values on demand.
#[derive(Clone, Debug)]
pub(crate) struct Sealer {
    pub(crate) keyring: Arc<RwLock<Keyring>>,
    pub(crate) encrypt_all: bool,
}

impl Sealer {
    /// Encrypts a plain value of `key` with the current key.
    pub(crate) fn seal(&self, key: &str, plain: &[u8]) -> Result<Bytes> {
        envelope::seal(&self.keyring.read(), key, plain)
    }

    /// Decrypts a stored value of `key`. A plain one passes only if the store does not encrypt
    /// every value.
    pub(crate) fn open(&self, key: &str, stored: Bytes) -> Result<Bytes> {
        envelope::open(Some(&self.keyring.read()), key, stored, self.encrypt_all)
    }

    /// Decrypts a stored value of `key`, letting plain values pass (to encrypt them: `rekey`).
    pub(crate) fn open_any(&self, key: &str, stored: Bytes) -> Result<Bytes> {
        envelope::open(Some(&self.keyring.read()), key, stored, false)
    }

    /// Whether `stored` must be re-encrypted to use only the current key (and, when every value
    /// is encrypted, to be encrypted at all).
    pub(crate) fn needs_rekey(&self, stored: &[u8]) -> Result<bool> {
        let current = self.keyring.read().current_id();
        Ok(match envelope::key_id(stored)? {
            Some(id) => Some(id) != current,
            None => self.encrypt_all,
        })
    }
}

/// Decrypts `stored` if it is encrypted and a sealer is at hand.
#[inline]
pub(crate) fn open(sealer: Option<&Sealer>, key: &str, stored: Bytes) -> Result<Bytes> {
    match sealer {
        Some(s) => s.open(key, stored),
        None => Ok(stored),
    }
}

/// A decode error of a decrypted value, without serde's message (which quotes the value).
pub(crate) fn redact(e: Error) -> Error {
    match e {
        Error::Decode { .. } => Error::decode(
            "the decrypted value does not match the requested type (details withheld: they would \
             show the plaintext)",
            None,
        ),
        other => other,
    }
}

/// Whether a stored value is encrypted.
pub(crate) fn is_encrypted(stored: &[u8]) -> bool {
    Header::parse(stored).is_ok_and(|(h, _)| h.encrypted)
}

/// The error of a secret write in a store without a keyring.
pub(crate) fn no_keyring() -> Error {
    Error::Crypto("secret values need a keyring (LiveDict::builder().keyring(...))".into())
}
