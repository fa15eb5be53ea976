//! Where a store's data lives in Redis: the names of its keys, and which bucket a key belongs to.
//!
//! ```text
//! <prefix>:meta                  hash   format = 3, buckets = N
//! <prefix>:{<b>}:k:<key>         string one entry: a 33-byte head ('L', then deadline, sliding
//!                                        TTL, last access and native expiry as big-endian
//!                                        doubles), then the stored bytes (see store.lua)
//! <prefix>:{<b>}:index           zset   the bucket's keys, scored by deadline (+inf: none)
//!                                        or earlier (see store.lua)
//! <prefix>:{<b>}:lock:<key>      string token of the update holding the key (with a lease)
//! ```
//!
//! `<b>` is the key's bucket, `0..N`. The braces make it the Redis Cluster hash tag, so a bucket's
//! entries, index and locks share one slot and every script touching one bucket runs on one
//! node, while different buckets spread over the masters. A key carrying a hash tag of its own
//! (`user:{42}:name`) is bucketed by that tag, so keys sharing a tag share a bucket, as in Redis.

use crate::error::{Error, Result};

/// The format written to `<prefix>:meta`.
pub(super) const FORMAT: &str = "3";

/// The names of one store's keys.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    prefix: String,
    /// `<prefix>:{<b>}:` per bucket.
    bases: Vec<String>,
    /// `<prefix>:{<b>}:index` per bucket.
    indexes: Vec<String>,
}

impl Layout {
    /// Checks a prefix: non-empty, at most 128 bytes, no braces (they would change the hash tag),
    /// no whitespace or control characters.
    pub(super) fn check_prefix(prefix: &str) -> Result<()> {
        let reason = if prefix.is_empty() {
            "is empty"
        } else if prefix.len() > 128 {
            "is longer than 128 bytes"
        } else if prefix.contains(['{', '}']) {
            "contains a brace (braces are the Redis Cluster hash tag of the store's buckets)"
        } else if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            "contains whitespace or a control character"
        } else {
            return Ok(());
        };
        Err(Error::Backend(
            format!("invalid Redis key prefix {prefix:?}: it {reason}").into(),
        ))
    }

    pub(super) fn new(prefix: &str, buckets: u32) -> Self {
        let bases: Vec<String> = (0..buckets).map(|b| format!("{prefix}:{{{b}}}:")).collect();
        let indexes = bases.iter().map(|b| format!("{b}index")).collect();
        Layout {
            prefix: prefix.to_owned(),
            bases,
            indexes,
        }
    }

    pub(super) fn meta_key(prefix: &str) -> String {
        format!("{prefix}:meta")
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(super) fn buckets(&self) -> usize {
        self.bases.len()
    }

    /// The bucket of `key`: FNV-1a of its hash tag (or of the whole key), modulo the buckets.
    pub(super) fn bucket(&self, key: &str) -> usize {
        let hashed = hash_tag(key).unwrap_or(key);
        let mut h: u32 = 0x811c_9dc5;
        for &byte in hashed.as_bytes() {
            h ^= u32::from(byte);
            h = h.wrapping_mul(0x0100_0193);
        }
        h as usize % self.bases.len()
    }

    pub(super) fn data_key(&self, bucket: usize, key: &str) -> String {
        self.key_in(bucket, "k:", key)
    }

    pub(super) fn lock_key(&self, bucket: usize, key: &str) -> String {
        self.key_in(bucket, "lock:", key)
    }

    /// `<base><kind><key>`, built without `format!` (on every operation's path: `format!` took
    /// ~300 instructions a key).
    fn key_in(&self, bucket: usize, kind: &str, key: &str) -> String {
        let base = &self.bases[bucket];
        let mut k = String::with_capacity(base.len() + kind.len() + key.len());
        k.push_str(base);
        k.push_str(kind);
        k.push_str(key);
        k
    }

    /// The hash of the named lock `name` (`Backend::try_lock`), apart from update locks.
    pub(super) fn named_lock_key(&self, bucket: usize, name: &str) -> String {
        format!("{}ulock:{name}", self.bases[bucket])
    }

    pub(super) fn index(&self, bucket: usize) -> &str {
        &self.indexes[bucket]
    }

    pub(super) fn indexes(&self) -> &[String] {
        &self.indexes
    }
}

/// The Redis hash tag of `key`: the text between its first `{` and the next `}`, if not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// A ZSCAN `MATCH` pattern for members starting with `prefix`: glob characters escaped.
pub(super) fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_hash_tags() {
        let layout = Layout::new("app", 16);
        assert_eq!(layout.bucket("user:{42}:name"), layout.bucket("x{42}"));
        assert_eq!(layout.bucket("a{}b"), layout.bucket("a{}b"));
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(hash_tag("a{x}{y}"), Some("x"));
        let spread: std::collections::HashSet<usize> = (0..1000)
            .map(|i| layout.bucket(&format!("key{i}")))
            .collect();
        assert_eq!(spread.len(), 16);
        assert_eq!(layout.data_key(3, "k"), "app:{3}:k:k");
        assert_eq!(layout.index(3), "app:{3}:index");
        assert_eq!(layout.lock_key(3, "k"), "app:{3}:lock:k");
    }

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(prefix_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
        assert_eq!(prefix_pattern(""), "*");
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(Layout::check_prefix("livedict").is_ok());
        for bad in ["", "a{b", "a}b", "a b", &"x".repeat(129)] {
            assert!(Layout::check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
