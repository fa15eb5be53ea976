//! The storage backend contract: small, byte-level, atomic operations with deadlines.
//!
//! A backend stores opaque values (already encoded, with their header) under string keys, each with
//! an optional deadline. Everything that does no I/O (key validation, TTL policy, codecs, statistics,
//! the expiry driver) lives in the front-end's engine, once; a backend only has to make each
//! operation below atomic, and to treat an entry as absent from the instant `now >= deadline`,
//! whether or not it has been removed yet.
//!
//! Times are [`Millis`] since the Unix epoch. Operations receive the store clock's `now`; a backend
//! with a clock of its own (Redis judges deadlines by the server's clock) may use that instead.

mod asynchronous;
pub mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

#[cfg(feature = "async")]
pub use asynchronous::OffRuntime;
pub use asynchronous::{AsyncBackend, BoxFuture, UpdateFn};

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::{Millis, Now};
use crate::error::Result;

/// When an entry expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// No deadline.
    Never,
    /// `ttl` milliseconds after the operation; if `sliding`, every read or write pushes the deadline
    /// to that time + `ttl` again.
    After {
        /// Time to live in milliseconds (never zero).
        ttl: Millis,
        /// Whether accesses renew the deadline.
        sliding: bool,
    },
}

impl Expiry {
    /// The deadline this expiry gives at `now`, and the sliding TTL to remember (0 = fixed).
    pub fn deadline_at(self, now: Millis) -> (Option<Millis>, Millis) {
        match self {
            Expiry::Never => (None, 0),
            Expiry::After { ttl, sliding } => {
                (Some(now.saturating_add(ttl)), if sliding { ttl } else { 0 })
            }
        }
    }
}

/// The expiry a write applies, and whether an existing live entry keeps the deadline it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteExpiry {
    /// Expiry of the written value (of a new key only, when `keep_existing`).
    pub expiry: Expiry,
    /// Keep the deadline (and sliding TTL) of a live entry being overwritten.
    pub keep_existing: bool,
}

impl WriteExpiry {
    /// Always apply `expiry`.
    pub fn replace(expiry: Expiry) -> Self {
        WriteExpiry {
            expiry,
            keep_existing: false,
        }
    }

    /// Keep an existing entry's deadline; a new entry gets `expiry`.
    pub fn keep_or(expiry: Expiry) -> Self {
        WriteExpiry {
            expiry,
            keep_existing: true,
        }
    }
}

/// Whether a read renews a sliding deadline and the entry's last-access time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// A real access: renews a sliding deadline and the last-access time.
    Touch,
    /// A look that leaves the entry as it was.
    Peek,
}

/// When a `set` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always (plain `SET`).
    Always,
    /// Only if no live entry exists (`SET NX`); otherwise the live value is returned as `previous`.
    IfAbsent,
    /// Only if a live entry exists (`SET XX`).
    IfPresent,
}

/// What a `set` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Whether the value was written (false only when the [`Condition`] refused it).
    pub written: bool,
    /// The live value that was replaced or, when not written under `IfAbsent`, the live value found.
    pub previous: Option<Bytes>,
    /// A value whose deadline had passed but which was still stored, removed by this operation.
    pub expired: Option<Bytes>,
}

/// What a removal (`delete`, an update that deletes) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The live value removed, if any.
    pub previous: Option<Bytes>,
    /// A dead (past-deadline) value removed along the way.
    pub expired: Option<Bytes>,
}

/// The decision of an update closure, made while the backend holds the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Leave the entry as it is.
    Keep,
    /// Store a new value.
    Write {
        /// The encoded value.
        value: Bytes,
        /// Its expiry.
        expiry: WriteExpiry,
    },
    /// Remove the entry.
    Delete,
    /// Replace the stored bytes of a live entry with an equivalent encoding (re-encryption),
    /// keeping its deadline, sliding TTL and last-access time exactly as they are.
    Replace {
        /// The new stored bytes.
        value: Bytes,
    },
}

/// What an update did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Updated {
    /// The live value the closure saw.
    pub previous: Option<Bytes>,
    /// A dead value removed along the way.
    pub expired: Option<Bytes>,
}

impl From<Written> for Updated {
    fn from(w: Written) -> Self {
        Updated {
            previous: w.previous,
            expired: w.expired,
        }
    }
}

impl From<Removed> for Updated {
    fn from(r: Removed) -> Self {
        Updated {
            previous: r.previous,
            expired: r.expired,
        }
    }
}

impl From<Written> for Removed {
    fn from(w: Written) -> Self {
        Removed {
            previous: w.previous,
            expired: w.expired,
        }
    }
}

/// An entry removed by [`Backend::sweep`] because its deadline passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredEntry {
    /// Its key.
    pub key: std::sync::Arc<str>,
    /// Its last value.
    pub value: Bytes,
    /// The deadline it had.
    pub deadline: Millis,
}

/// A key and its value, from a scan or a removal.
pub type KeyValue = (String, Bytes);

/// A key and, if asked for, its value, from [`Backend::scan`].
pub type ScanEntry = (String, Option<Bytes>);

/// What [`Backend::clear`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Live entries removed.
    pub removed: usize,
    /// Entries found past their deadline and removed with them.
    pub expired: Vec<ExpiredEntry>,
}

/// One write of an all-or-nothing batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Store `value` under `key`.
    Set {
        /// The key (validated).
        key: String,
        /// The encoded value.
        value: Bytes,
        /// Its expiry.
        expiry: WriteExpiry,
    },
    /// Remove `key`.
    Delete {
        /// The key (validated).
        key: String,
    },
}

impl BatchOp {
    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            BatchOp::Set { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// The remaining life of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTtl {
    /// No live entry under the key.
    Missing,
    /// The entry never expires.
    Never,
    /// The entry expires after this long (for a sliding entry: unless read or written before).
    Remaining(Duration),
}

/// How many bytes at the start of every stored value hold its header (written by livedict's
/// codec): the length of a [`ValueHead`].
pub const VALUE_HEAD_LEN: usize = crate::codec::header::HEADER_LEN;

/// A copy of a stored value's first [`VALUE_HEAD_LEN`] bytes (see [`Backend::get_with_head`]).
pub type ValueHead = [u8; VALUE_HEAD_LEN];

/// A value read by [`Backend::get_with_head`]: its bytes, and a copy of their head when the
/// backend keeps one.
pub type Found = (Bytes, Option<ValueHead>);

/// A storage backend: byte-level, atomic operations with deadlines.
///
/// Every method is atomic with respect to every other on the same key, in this process and, for
/// shared backends, across processes. An entry whose deadline is `<= now` is invisible to every
/// method: reads treat it as missing, writes as absent (reporting its value as `expired` when they
/// remove it). Object safe, so a store holds `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The live value under `key`. With [`ReadMode::Touch`] a sliding deadline is renewed and the
    /// last-access time set to now.
    ///
    /// Reads take the time as a lazy [`Now`]: a backend that can answer from
    /// [`Now::before`] (is the deadline still ahead?) spares the precise clock read on most reads;
    /// others call [`Now::exact`].
    fn get(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Bytes>>;

    /// Reads as [`get`](Self::get) does, and returns with the value a copy of its first
    /// [`VALUE_HEAD_LEN`] bytes (livedict's header: format version and kind of payload) when the
    /// backend keeps one in the entry itself. `get_bytes` then checks the header without reading
    /// the value's buffer, which on a large in-memory store is a cache miss of its own. The copy
    /// must equal the value's first bytes (the engine trusts it); a value shorter than that has
    /// none. The default keeps no copy. Only the sync front-end asks for it: the async one calls
    /// [`AsyncBackend::get`].
    fn get_with_head(&self, key: &str, now: &Now<'_>, mode: ReadMode) -> Result<Option<Found>> {
        Ok(self.get(key, now, mode)?.map(|value| (value, None)))
    }

    /// The live values under `keys`, in order. Backends with round trips should override this.
    fn get_many(&self, keys: &[&str], now: &Now<'_>, mode: ReadMode) -> Result<Vec<Option<Bytes>>> {
        keys.iter().map(|k| self.get(k, now, mode)).collect()
    }

    /// Whether a live entry exists, without touching it.
    fn contains(&self, key: &str, now: &Now<'_>) -> Result<bool> {
        Ok(self.get(key, now, ReadMode::Peek)?.is_some())
    }

    /// Stores `value` under `key` if `condition` allows, with `expiry`.
    fn set(
        &self,
        key: &str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Result<Written>;

    /// Removes `key`.
    fn delete(&self, key: &str, now: Millis) -> Result<Removed>;

    /// Runs `f` on the live value under `key` while holding the key, and applies its [`Change`].
    ///
    /// `f` is called exactly once; if it returns an error, nothing changes and the error is
    /// returned. Other writers of the key wait until the change is applied.
    fn update(
        &self,
        key: &str,
        now: Millis,
        f: &mut dyn FnMut(Option<&Bytes>) -> Result<Change>,
    ) -> Result<Updated>;

    /// The remaining life of `key`.
    fn ttl(&self, key: &str, now: Millis) -> Result<KeyTtl>;

    /// Gives a live entry a new expiry (`Expiry::Never` removes its deadline). False when there is
    /// no live entry.
    fn set_expiry(&self, key: &str, expiry: Expiry, now: Millis) -> Result<bool>;

    /// Live entries whose key starts with `prefix` (all with `""`), with their values if
    /// `with_values`. The order is unspecified; the result is consistent per key, not a snapshot of
    /// the whole store.
    fn scan(&self, prefix: &str, now: Millis, with_values: bool) -> Result<Vec<ScanEntry>>;

    /// The number of live entries.
    fn len(&self, now: Millis) -> Result<usize>;

    /// Removes every entry.
    fn clear(&self, now: Millis) -> Result<Cleared>;

    /// Removes and returns some live entry (which one is unspecified), or `None` when empty.
    fn pop_any(&self, now: Millis) -> Result<Option<KeyValue>>;

    /// Applies every operation or none; no reader sees some applied and others not. Returns, per
    /// operation, what it replaced or removed.
    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> Result<Vec<Removed>>;

    /// Removes up to `limit` entries whose deadline is `<= now` and returns them. Each expired
    /// entry is returned by exactly one call, across threads and processes.
    /// The entries are appended to `out`, which the caller reuses from sweep to sweep: with glibc's
    /// allocator, allocating a fresh buffer of a kilobyte or more consolidates every small free
    /// chunk of the heap first, a pause of up to hundreds of milliseconds after mass expiry.
    ///
    /// Returns whether more may be due: true when the call stopped at its limit of work (it
    /// returned `limit` entries, or a backend whose expiry index is kept lazily moved that many
    /// records reached early), false when nothing it could take is left (entries held by an
    /// update may remain). The caller calls again while it is true, so a call's work stays
    /// bounded.
    fn sweep(&self, now: Millis, limit: usize, out: &mut Vec<ExpiredEntry>) -> Result<bool>;

    /// The earliest deadline that may be due, if the backend can tell cheaply; the expiry driver
    /// sleeps until then. `None` means "nothing scheduled" (or unknown, for shared backends, which
    /// are also polled).
    fn next_deadline(&self) -> Result<Option<Millis>>;

    /// Removes live entries whose key starts with `prefix` (all with `""`) last read or written
    /// before `idle_since`, and returns them. A backend may track reads coarsely (the memory
    /// backend to the second) but never removes an entry accessed since `idle_since`.
    fn remove_inactive(
        &self,
        prefix: &str,
        idle_since: Millis,
        now: Millis,
    ) -> Result<Vec<KeyValue>>;

    /// Takes the lock `name` for `owner` until `now + lease`, if it is free or its lease has run
    /// out, and returns its fencing token: a number that grows with every acquisition of the
    /// lock, so that a resource can refuse a holder whose lease ran out (its token is older).
    /// `None` when someone else holds it. Locks are advisory and live apart from the entries:
    /// a lock named like a key does not stop writes of the key. On shared backends the lock holds
    /// across processes.
    ///
    /// The default, for backends without locks, is an [`Error::Backend`](crate::Error::Backend).
    fn try_lock(&self, name: &str, owner: &str, lease: Millis, now: Millis) -> Result<Option<u64>> {
        let _ = (name, owner, lease, now);
        Err(crate::Error::Backend("this backend has no locks".into()))
    }

    /// Releases the lock `name` if `owner` holds it (and its lease has not run out); false
    /// otherwise. Nobody but the owner can release a lock.
    fn unlock(&self, name: &str, owner: &str, now: Millis) -> Result<bool> {
        let _ = (name, owner, now);
        Err(crate::Error::Backend("this backend has no locks".into()))
    }

    /// Whether other processes may change this backend's data (then waits poll, and the expiry
    /// driver polls too).
    fn is_shared(&self) -> bool {
        false
    }

    /// This backend as an [`AsyncBackend`], for the async front-end. The default runs each
    /// operation on tokio's blocking threads ([`OffRuntime`]), right for backends that block
    /// (SQLite); a backend that never blocks, or has native async I/O, returns itself.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn to_async(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn AsyncBackend> {
        std::sync::Arc::new(OffRuntime::new(self))
    }
}
