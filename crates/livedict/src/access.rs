//! Access control: an optional policy the store asks before every operation.
//!
//! The policy is a function of ([`Operation`], key) set with
//! [`Builder::access_policy`](crate::Builder::access_policy). It is called before the operation
//! touches anything, with the full key (namespace prefix included); bulk and scanning operations
//! pass the prefix they cover (`""` for the whole store), and an operation on many keys
//! (`get_many`, a batch) asks once per key. A refusal is [`Error::PermissionDenied`] and changes
//! nothing.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// What a caller is about to do, as the access policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Read a value (`get` and its forms, `peek`, `get_many`, `wait_for`, `verify_password`).
    Read,
    /// Check existence or remaining life (`contains`, `ttl`).
    Inspect,
    /// Write a value (`set` and its forms, `setdefault`, `replace`, batch writes, `import`).
    Write,
    /// Read-modify-write (`update`, `incr`, `merge`, `get_or_compute`).
    Update,
    /// Remove a value (`delete`, `pop`, `popitem`, batch deletes).
    Delete,
    /// Change a deadline (`expire`, `persist`).
    Expire,
    /// List or count (`keys`, `values`, `items`, `iter`, `len`, `export`), or register a hook;
    /// the key is the prefix (a hook's: the key or prefix it listens to, under the handle's
    /// namespace; `""` for every key).
    Scan,
    /// Remove everything under a prefix (`clear`, `cleanup_inactive`, `sweep_expired`).
    Clear,
    /// Take a lock on a key (`lock`, `get_or_compute`).
    Lock,
    /// Bind a namespace; the key is the bound prefix.
    Namespace,
    /// Keyring administration (`rotate_key`, `rekey`, `retire_key`); the key is `""`.
    Admin,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Operation::Read => "read",
            Operation::Inspect => "inspect",
            Operation::Write => "write",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Expire => "expire",
            Operation::Scan => "scan",
            Operation::Clear => "clear",
            Operation::Lock => "lock",
            Operation::Namespace => "namespace",
            Operation::Admin => "admin",
        };
        f.write_str(name)
    }
}

/// The function deciding whether an operation on a key may go ahead.
type Decide = dyn Fn(Operation, &str) -> bool + Send + Sync;

/// The policy of a store.
#[derive(Clone)]
pub(crate) struct AccessPolicy(Arc<Decide>);

impl fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessPolicy")
    }
}

impl AccessPolicy {
    pub(crate) fn new(f: impl Fn(Operation, &str) -> bool + Send + Sync + 'static) -> Self {
        AccessPolicy(Arc::new(f))
    }
}

/// Asks `policy` (if any) whether `operation` on `key` may go ahead.
#[inline]
pub(crate) fn check(policy: Option<&AccessPolicy>, operation: Operation, key: &str) -> Result<()> {
    match policy {
        Some(p) if !(p.0)(operation, key) => Err(Error::PermissionDenied {
            operation,
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}
