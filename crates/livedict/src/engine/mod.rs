//! The engine: everything a store does that is not I/O, written once and used by every front-end.
//!
//! A front-end method is three steps: the engine prepares the call (closed and re-entrancy checks,
//! key validation, the clock, encoding and TTL policy), the backend does the atomic byte-level
//! operation, and the engine accounts for the outcome (statistics, expirations found on the way,
//! waking the expiry driver and `wait_for` callers) and decodes the result.

mod change_signal;
pub(crate) mod reentrancy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Change, ExpiredEntry, Expiry, Removed, Updated, WriteExpiry, Written};
use crate::clock::{Clock, Millis};
use crate::codec::{self, Codec};
use crate::error::{BoxError, Error, Result};
use crate::expiry::DriverControl;
use crate::key;
use crate::stats::{Counter, Counters};
use crate::ttl::{TtlPolicy, WriteOptions};
pub(crate) use change_signal::ChangeSignal;

/// The default maximum encoded value size: 16 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// The settings and shared state of one store.
#[derive(Debug)]
pub(crate) struct Engine {
    id: u64,
    pub(crate) clock: Clock,
    codec: Codec,
    policy: TtlPolicy,
    max_value_size: usize,
    pub(crate) counters: Counters,
    pub(crate) changes: ChangeSignal,
    pub(crate) expiry: Arc<DriverControl>,
    closed: AtomicBool,
}

/// The settings an engine is built from.
#[derive(Debug)]
pub(crate) struct EngineConfig {
    pub(crate) clock: Clock,
    pub(crate) codec: Codec,
    pub(crate) policy: TtlPolicy,
    pub(crate) max_value_size: usize,
}

impl Engine {
    pub(crate) fn new(config: EngineConfig) -> Engine {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Engine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            clock: config.clock,
            codec: config.codec,
            policy: config.policy,
            max_value_size: config.max_value_size,
            counters: Counters::new(),
            changes: ChangeSignal::default(),
            expiry: Arc::new(DriverControl::default()),
            closed: AtomicBool::new(false),
        }
    }

    // ---- preparing a call -------------------------------------------------------------------

    /// Checks that the store may be used here and now, and returns the time.
    #[inline]
    pub(crate) fn begin(&self) -> Result<Millis> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        reentrancy::check(self.id)?;
        Ok(self.clock.now())
    }

    /// [`begin`](Self::begin) plus key validation.
    #[inline]
    pub(crate) fn begin_key(&self, key: &str) -> Result<Millis> {
        key::validate(key)?;
        self.begin()
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn check_size(&self, stored: Bytes) -> Result<Bytes> {
        let size = codec::payload_len(&stored);
        if size > self.max_value_size {
            return Err(Error::ValueTooLarge {
                size,
                max: self.max_value_size,
            });
        }
        Ok(stored)
    }

    /// Encodes a typed value with the store's codec, within the size limit.
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes> {
        self.check_size(self.codec.encode(value)?)
    }

    /// Wraps raw bytes, within the size limit.
    pub(crate) fn encode_raw(&self, value: &[u8]) -> Result<Bytes> {
        if value.len() > self.max_value_size {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                max: self.max_value_size,
            });
        }
        Ok(codec::encode_raw(value))
    }

    /// The expiry a write with `options` applies.
    pub(crate) fn expiry(&self, options: WriteOptions) -> Result<WriteExpiry> {
        self.policy.resolve(options)
    }

    /// The expiry of an in-place update without options: keep the key's deadline.
    pub(crate) fn update_expiry(&self) -> WriteExpiry {
        self.policy.for_update()
    }

    // ---- accounting for an outcome ----------------------------------------------------------

    /// Counts a read.
    #[inline]
    pub(crate) fn read(&self, found: bool) {
        self.counters
            .add(if found { Counter::Hit } else { Counter::Miss }, 1);
    }

    /// Accounts for a write made at `now` with `expiry`.
    pub(crate) fn wrote(&self, written: &Written, expiry: WriteExpiry, now: Millis) {
        self.found_expired(written.expired.is_some());
        if written.written {
            self.counters.add(Counter::Set, 1);
            self.schedule(expiry, now);
            self.changes.notify();
        }
    }

    /// Accounts for a removal.
    pub(crate) fn removed(&self, removed: &Removed) {
        self.found_expired(removed.expired.is_some());
        if removed.previous.is_some() {
            self.counters.add(Counter::Delete, 1);
            self.changes.notify();
        }
    }

    /// Accounts for an update that applied `change`.
    pub(crate) fn updated(&self, updated: &Updated, change: Option<&Change>, now: Millis) {
        self.found_expired(updated.expired.is_some());
        match change {
            Some(Change::Write { expiry, .. }) => {
                self.counters.add(Counter::Set, 1);
                self.schedule(*expiry, now);
                self.changes.notify();
            }
            Some(Change::Delete) if updated.previous.is_some() => {
                self.counters.add(Counter::Delete, 1);
                self.changes.notify();
            }
            _ => {}
        }
    }

    /// Accounts for entries removed because their deadline passed.
    pub(crate) fn expired(&self, entries: &[ExpiredEntry]) {
        self.counters.add(Counter::Expiration, entries.len() as u64);
    }

    /// Accounts for entries removed by `cleanup_inactive`.
    pub(crate) fn inactive_removed(&self, count: usize) {
        self.counters.add(Counter::Inactive, count as u64);
        if count > 0 {
            self.changes.notify();
        }
    }

    /// Accounts for `count` entries removed by `clear` or `pop_any`.
    pub(crate) fn deleted(&self, count: usize) {
        self.counters.add(Counter::Delete, count as u64);
        if count > 0 {
            self.changes.notify();
        }
    }

    fn found_expired(&self, found: bool) {
        if found {
            self.counters.add(Counter::Expiration, 1);
        }
    }

    /// Tells the expiry driver about a new deadline, so it wakes in time for it.
    pub(crate) fn schedule(&self, expiry: WriteExpiry, now: Millis) {
        if let Expiry::After { ttl, .. } = expiry.expiry {
            self.expiry.note_deadline(now.saturating_add(ttl));
        }
    }

    // ---- update closures --------------------------------------------------------------------

    /// Runs a user closure on the decoded current value and turns its answer into a [`Change`].
    ///
    /// The closure runs with the re-entrancy guard up, so touching this store from inside it is
    /// [`Error::Reentrant`].
    pub(crate) fn decide<T, E, F>(
        &self,
        current: Option<&Bytes>,
        f: F,
        expiry: WriteExpiry,
        out: &mut Option<T>,
    ) -> Result<Change>
    where
        T: Serialize + DeserializeOwned,
        E: Into<BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E>,
    {
        let old = current.map(|b| codec::decode::<T>(b)).transpose()?;
        let new = {
            let _guard = reentrancy::Guard::enter(self.id);
            f(old).map_err(|e| Error::Aborted(e.into()))?
        };
        let change = match &new {
            Some(v) => Change::Write {
                value: self.encode(v)?,
                expiry,
            },
            None if current.is_some() => Change::Delete,
            None => Change::Keep,
        };
        *out = new;
        Ok(change)
    }

    /// The change `incr(delta)` makes to the current value, and the new integer.
    pub(crate) fn increment(
        &self,
        key: &str,
        current: Option<&Bytes>,
        delta: i64,
        out: &mut i64,
    ) -> Result<Change> {
        let old: i64 = match current {
            Some(b) => codec::decode(b).map_err(|e| match e {
                Error::Decode { source, .. } => Error::Decode {
                    message: format!("incr: the value of {key:?} is not a 64-bit integer"),
                    source,
                },
                other => other,
            })?,
            None => 0,
        };
        let new = old.checked_add(delta).ok_or_else(|| Error::Overflow {
            key: key.to_owned(),
        })?;
        *out = new;
        Ok(Change::Write {
            value: self.encode(&new)?,
            expiry: self.update_expiry(),
        })
    }

    /// The change `merge(patch)` makes: the patch's fields set into the stored map.
    pub(crate) fn merge(
        &self,
        current: Option<&Bytes>,
        patch: &serde_json::Value,
    ) -> Result<Change> {
        let serde_json::Value::Object(fields) = patch else {
            return Err(Error::Encode(
                "merge: the patch must serialize to a map".into(),
            ));
        };
        let mut map = match current {
            None => serde_json::Map::new(),
            Some(b) => match codec::decode::<serde_json::Value>(b)? {
                serde_json::Value::Object(map) => map,
                other => {
                    return Err(Error::decode(
                        format!(
                            "merge: the stored value is not a map but {}",
                            json_kind(&other)
                        ),
                        None,
                    ));
                }
            },
        };
        for (k, v) in fields {
            map.insert(k.clone(), v.clone());
        }
        Ok(Change::Write {
            value: self.encode(&map)?,
            expiry: self.update_expiry(),
        })
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "a map",
    }
}

/// Decodes an optional stored value.
pub(crate) fn decode_opt<T: DeserializeOwned>(stored: Option<Bytes>) -> Result<Option<T>> {
    stored.map(|b| codec::decode(&b)).transpose()
}

/// Decodes an optional raw value.
pub(crate) fn decode_raw_opt(stored: Option<Bytes>) -> Result<Option<Bytes>> {
    stored.map(|b| codec::decode_raw(&b)).transpose()
}
