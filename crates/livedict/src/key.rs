//! Key validation: the one place that decides what a key may be.

use crate::error::{Error, Result};

/// The longest key livedict accepts, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a key: non-empty, at most [`MAX_KEY_LEN`] bytes, no NUL byte (which SQLite's text
/// functions and many tools treat as an end of string).
#[inline]
pub(crate) fn validate(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            reason: "the key is empty",
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            reason: "the key is longer than 1024 bytes",
        });
    }
    if key.as_bytes().contains(&0) {
        return Err(Error::InvalidKey {
            reason: "the key contains a NUL byte",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_boundary_keys() {
        validate("a").unwrap();
        validate("user:1:session").unwrap();
        validate("ключ-🔑").unwrap();
        validate(&"x".repeat(MAX_KEY_LEN)).unwrap();
    }

    #[test]
    fn refuses_empty_long_and_nul() {
        for bad in [
            String::new(),
            "x".repeat(MAX_KEY_LEN + 1),
            "a\0b".to_string(),
        ] {
            assert!(matches!(validate(&bad), Err(Error::InvalidKey { .. })));
        }
        // 1024 bytes, but a multi-byte character pushes it over.
        let mut k = "x".repeat(MAX_KEY_LEN - 1);
        k.push('é');
        assert!(validate(&k).is_err());
    }
}
