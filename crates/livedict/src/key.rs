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
    if has_nul(key.as_bytes()) {
        return Err(Error::InvalidKey {
            reason: "the key contains a NUL byte",
        });
    }
    Ok(())
}

/// Whether `bytes` holds a zero byte, tested eight bytes at a time: keys are short, and a byte
/// loop (what `contains` does below 16 bytes) costs a branch per byte on every operation. The
/// `memchr` crate was measured in its place and cost about 40 more instructions per call on
/// short keys (its call and runtime CPU dispatch; `examples/call_cost.rs`).
#[inline]
fn has_nul(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Non-zero exactly when some byte of the word is zero.
    let zero_in = |word: &[u8]| {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    if bytes.len() < 8 {
        let mut word = [0xFF; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        return zero_in(&word);
    }
    // Whole words, then the last eight bytes (overlapping the last whole word).
    bytes.chunks_exact(8).any(zero_in) || zero_in(&bytes[bytes.len() - 8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_at_every_position_of_every_short_length() {
        for len in 0..40 {
            let clean = vec![b'k'; len];
            assert!(!has_nul(&clean), "len {len}");
            // Bytes with the high bit set must not look like zeros either.
            assert!(!has_nul(&vec![0x80; len]), "len {len}");
            assert!(!has_nul(&vec![0x01; len]), "len {len}");
            for at in 0..len {
                let mut k = clean.clone();
                k[at] = 0;
                assert!(has_nul(&k), "len {len}, NUL at {at}");
            }
        }
    }

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
