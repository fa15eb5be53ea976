//! The error type of every livedict operation.

use std::fmt;

/// A boxed error from a library livedict builds on (a backend driver, a codec, a user closure).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with livedict's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in livedict.
///
/// Every variant means "nothing was changed by the failed call", except [`Error::Backend`] raised
/// by a remote backend after the request left the process, where the outcome is unknown (as with any
/// network store); livedict never reports `Ok` for a write it did not make.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is empty, longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes, or otherwise unusable.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// Why the key was refused.
        reason: &'static str,
    },
    /// A time to live of zero, or one too long to represent.
    #[error("invalid ttl: {reason}")]
    InvalidTtl {
        /// Why the TTL was refused.
        reason: &'static str,
    },
    /// The encoded value is larger than the store's maximum value size.
    #[error("value of {size} bytes exceeds the maximum of {max} bytes")]
    ValueTooLarge {
        /// Encoded size of the refused value.
        size: usize,
        /// The store's limit.
        max: usize,
    },
    /// `require` found no live value under the key.
    #[error("key not found: {key:?}")]
    KeyNotFound {
        /// The missing key.
        key: String,
    },
    /// A stored value could not be decoded as the requested type (wrong type, corrupted payload).
    #[error("cannot decode value: {message}")]
    Decode {
        /// What did not match.
        message: String,
        /// The codec's own error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A value could not be encoded by the store's codec.
    #[error("cannot encode value: {0}")]
    Encode(#[source] BoxError),
    /// Stored bytes are not in a format this version understands (bad header, newer format, not a
    /// livedict store).
    #[error("format error: {0}")]
    Format(String),
    /// Encryption or decryption failed: a wrong or unknown key, a value that does not authenticate
    /// (tampered, truncated, moved from another key), an encrypted value and no keyring, or a
    /// keyring operation that is refused.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// The value may not be read this way: a password key read with `get`.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// An arithmetic operation (`incr`) would overflow a 64-bit integer.
    #[error("integer overflow in incr on {key:?}")]
    Overflow {
        /// The key being incremented.
        key: String,
    },
    /// The store (or another store on the same backend) was used from inside a closure it is
    /// running (`update`, `try_update`), which would deadlock or break atomicity.
    #[error("re-entrant call: the store was used from inside one of its own update closures")]
    Reentrant,
    /// A user closure given to `try_update` returned an error; nothing was changed.
    #[error("update aborted by its closure: {0}")]
    Aborted(#[source] BoxError),
    /// The store has been closed.
    #[error("the store is closed")]
    Closed,
    /// A namespace template is malformed, or a binding misses, repeats or adds a parameter (the
    /// message names it), or an operation is not available on a namespace handle.
    #[error("namespace error: {0}")]
    Namespace(String),
    /// The store's access policy refused the operation; nothing was done.
    #[error("permission denied: {operation} on {key:?}")]
    PermissionDenied {
        /// The refused operation.
        operation: crate::access::Operation,
        /// The key, or for bulk operations the prefix they cover (`""`: the whole store).
        key: String,
    },
    /// The storage backend failed (I/O error, connection lost, ...).
    #[error("backend error: {0}")]
    Backend(#[source] BoxError),
}

impl Error {
    pub(crate) fn decode(message: impl fmt::Display, source: Option<BoxError>) -> Self {
        Error::Decode {
            message: message.to_string(),
            source,
        }
    }
}
