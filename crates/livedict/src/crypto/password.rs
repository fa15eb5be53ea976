//! Password keys: stored only as argon2id hashes (PHC strings), with OWASP's parameters
//! (19 MiB of memory, 2 passes, 1 lane: argon2's defaults).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use crate::error::{Error, Result};

/// The PHC string of `password`, with a fresh random salt.
pub(crate) fn hash(password: &[u8]) -> Result<String> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| Error::Crypto(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches the PHC string `phc`.
///
/// # Errors
/// [`Error::Format`] if `phc` is not a PHC string.
pub(crate) fn verify(password: &[u8], phc: &str) -> Result<bool> {
    match Argon2::default().verify_password(password, phc) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(Error::Format(format!(
            "the stored password hash is unreadable: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash(b"hunter2").unwrap();
        let b = hash(b"hunter2").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "a fresh salt per hash");
        assert!(verify(b"hunter2", &a).unwrap());
        assert!(!verify(b"hunter3", &a).unwrap());
        assert!(verify(b"x", "not a phc string").is_err());
    }
}
