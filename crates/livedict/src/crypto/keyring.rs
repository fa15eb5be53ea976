//! The keyring: AES-256 keys with ids, the newest used for new writes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// One key, ready to use: the AES-256-GCM cipher with its round keys expanded once, when the key
/// joins the keyring (not on every seal and open). The raw material is zeroized as soon as the
/// cipher is built, and the cipher's own round keys when it is dropped (aes-gcm's `zeroize`).
#[derive(Clone)]
pub(crate) struct KeyMaterial {
    pub(crate) cipher: Aes256Gcm,
}

impl KeyMaterial {
    fn new(raw: &mut [u8; 32]) -> Self {
        let mut key = aes_gcm::Key::<Aes256Gcm>::from(*raw);
        let cipher = Aes256Gcm::new(&key);
        key.as_mut_slice().zeroize();
        raw.zeroize();
        KeyMaterial { cipher }
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

/// AES-256 keys, each with an id written into the values it encrypts. New writes use the newest
/// key (the highest id); reads pick the key by the id in the value (no trial decryption).
///
/// Key material is zeroized when dropped and never shown by `Debug`.
///
/// # Examples
/// ```
/// use livedict::{Keyring, LiveDict};
///
/// let keyring = Keyring::from_bytes(1, &[7u8; 32])?;
/// let store = LiveDict::builder().keyring(keyring).build()?;
/// store.set("card", &"4111 1111 1111 1111")?; // stored encrypted
/// assert_eq!(store.get::<String>("card")?.as_deref(), Some("4111 1111 1111 1111"));
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<u32, KeyMaterial>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn bad_key(why: impl fmt::Display) -> Error {
    Error::Crypto(format!("bad key: {why}"))
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Self {
        Self::default()
    }

    /// A keyring with one key, given as 32 bytes.
    ///
    /// # Errors
    /// [`Error::Crypto`] if `key` is not 32 bytes long.
    pub fn from_bytes(id: u32, key: &[u8]) -> Result<Self> {
        let mut ring = Self::new();
        ring.add_bytes(id, key)?;
        Ok(ring)
    }

    /// A keyring with one key, given in standard base64.
    ///
    /// # Errors
    /// [`Error::Crypto`] if it is not base64 of 32 bytes.
    pub fn from_base64(id: u32, key: &str) -> Result<Self> {
        let mut ring = Self::new();
        ring.add_base64(id, key)?;
        Ok(ring)
    }

    /// A keyring with one key read (base64) from the environment variable `var`.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the variable is missing or not base64 of 32 bytes.
    pub fn from_env(id: u32, var: &str) -> Result<Self> {
        let value = zeroize::Zeroizing::new(
            std::env::var(var).map_err(|_| bad_key(format!("${var} is not set")))?,
        );
        Self::from_base64(id, value.trim())
    }

    /// A keyring with one key read from a file: 32 raw bytes, or base64 text of them.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the file cannot be read or holds no key.
    pub fn from_file(id: u32, path: impl AsRef<Path>) -> Result<Self> {
        let mut content = std::fs::read(path.as_ref())
            .map_err(|e| bad_key(format!("cannot read {}: {e}", path.as_ref().display())))?;
        let ring = if content.len() == 32 {
            Self::from_bytes(id, &content)
        } else {
            let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&content).trim().to_owned());
            Self::from_base64(id, &text)
        };
        content.zeroize();
        ring
    }

    /// A keyring with one fresh random key.
    pub fn generate(id: u32) -> Self {
        use aes_gcm::aead::Generate as _;
        let mut fresh = aes_gcm::Key::<aes_gcm::Aes256Gcm>::generate();
        let mut material = [0u8; 32];
        material.copy_from_slice(&fresh);
        fresh.zeroize();
        let mut ring = Self::new();
        ring.keys.insert(id, KeyMaterial::new(&mut material));
        ring
    }

    /// Adds a key given as 32 bytes.
    ///
    /// # Errors
    /// [`Error::Crypto`] if it is not 32 bytes, or `id` is taken.
    pub fn add_bytes(&mut self, id: u32, key: &[u8]) -> Result<()> {
        if self.keys.contains_key(&id) {
            return Err(bad_key(format!("key id {id} is already in the keyring")));
        }
        let mut material: [u8; 32] = key
            .try_into()
            .map_err(|_| bad_key(format!("{} bytes instead of 32", key.len())))?;
        self.keys.insert(id, KeyMaterial::new(&mut material));
        Ok(())
    }

    /// Adds a key given in standard base64.
    ///
    /// # Errors
    /// As [`add_bytes`](Self::add_bytes), or if it is not base64.
    pub fn add_base64(&mut self, id: u32, key: &str) -> Result<()> {
        let mut raw = BASE64
            .decode(key.as_bytes())
            .map_err(|e| bad_key(format!("not base64: {e}")))?;
        let added = self.add_bytes(id, &raw);
        raw.zeroize();
        added
    }

    /// The ids of the keys, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// The id of the key new writes use (the highest).
    pub fn current_id(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    pub(crate) fn current(&self) -> Option<(u32, &KeyMaterial)> {
        self.keys.iter().next_back().map(|(id, k)| (*id, k))
    }

    pub(crate) fn get(&self, id: u32) -> Option<&KeyMaterial> {
        self.keys.get(&id)
    }

    pub(crate) fn merge(&mut self, other: Keyring) -> Result<()> {
        for id in other.keys.keys() {
            if self.keys.contains_key(id) {
                return Err(bad_key(format!("key id {id} is already in the keyring")));
            }
        }
        self.keys.extend(other.keys.clone());
        Ok(())
    }

    pub(crate) fn remove(&mut self, id: u32) -> bool {
        self.keys.remove(&id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_material() {
        let ring = Keyring::from_bytes(3, &[0xAB; 32]).unwrap();
        let shown = format!("{ring:?} {:?}", ring.get(3).unwrap());
        assert!(!shown.to_lowercase().contains("ab, ab") && !shown.contains("171"));
        assert!(shown.contains("key_ids: [3]") && shown.contains("redacted"));
    }

    #[test]
    fn sources_and_refusals() {
        let b64 = BASE64.encode([5u8; 32]);
        assert_eq!(Keyring::from_base64(1, &b64).unwrap().ids(), vec![1]);
        assert!(Keyring::from_bytes(1, &[0; 31]).is_err());
        assert!(Keyring::from_base64(1, "!!!").is_err());
        assert!(Keyring::from_env(1, "LIVEDICT_SURELY_UNSET_VARIABLE").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("raw"), [9u8; 32]).unwrap();
        std::fs::write(dir.path().join("b64"), format!("{b64}\n")).unwrap();
        assert!(Keyring::from_file(1, dir.path().join("raw")).is_ok());
        assert!(Keyring::from_file(1, dir.path().join("b64")).is_ok());
        let mut ring = Keyring::generate(1);
        assert!(ring.add_bytes(1, &[0; 32]).is_err(), "duplicate id");
        ring.add_bytes(2, &[1; 32]).unwrap();
        assert_eq!(ring.current_id(), Some(2));
        // Two generated keys differ: the same plaintext and nonce encrypt differently.
        use aes_gcm::aead::Aead;
        let nonce = aes_gcm::Nonce::default();
        let a = Keyring::generate(1)
            .get(1)
            .unwrap()
            .cipher
            .encrypt(&nonce, &b"x"[..])
            .unwrap();
        let b = Keyring::generate(1)
            .get(1)
            .unwrap()
            .cipher
            .encrypt(&nonce, &b"x"[..])
            .unwrap();
        assert_ne!(a, b);
    }
}
