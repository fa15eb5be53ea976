//! The engine: everything a store does that is not I/O, written once and used by every front-end.
//!
//! A front-end method is three steps: the engine prepares the call (closed and re-entrancy checks,
//! key validation, the clock, encoding and TTL policy), the backend does the atomic byte-level
//! operation, and the engine accounts for the outcome (statistics, expirations found on the way,
//! waking the expiry driver and `wait_for` callers) and decodes the result.

mod change_signal;
pub(crate) mod reentrancy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::access::{AccessPolicy, Operation};
use crate::backend::{
    BatchOp, Change, Cleared, Expiry, Found, Removed, Updated, VALUE_HEAD_LEN, ValueHead,
    WriteExpiry, Written,
};
use crate::clock::{Clock, Millis, Now};
use crate::codec::{self, Codec};
use crate::crypto::{Keyring, Sealer};
use crate::error::{BoxError, Error, Result};
use crate::events::{
    Cause, EntryHooks, EntryLock, EventHub, EventKind, EventSettings, HookFn, KeptValue,
};
use crate::expiry::DriverControl;
use crate::key;
use crate::stats::{Counter, Counters};
use crate::ttl::TtlPolicy;
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
    pub(crate) events: EventHub,
    pub(crate) sealer: Option<Sealer>,
    access: Option<AccessPolicy>,
    closed: AtomicBool,
}

/// The settings an engine is built from.
#[derive(Debug)]
pub(crate) struct EngineConfig {
    pub(crate) clock: Clock,
    pub(crate) codec: Codec,
    pub(crate) policy: TtlPolicy,
    pub(crate) max_value_size: usize,
    pub(crate) events: EventSettings,
    pub(crate) keyring: Option<(Keyring, bool)>,
    pub(crate) access: Option<AccessPolicy>,
    /// Identifies the backend: stores sharing one backend share re-entrancy checks, since an
    /// update closure holds the backend's lock whichever store it came through.
    pub(crate) backend_id: u64,
}

impl Engine {
    pub(crate) fn new(config: EngineConfig) -> Engine {
        let sealer = config.keyring.map(|(keyring, encrypt_all)| Sealer {
            keyring: Arc::new(parking_lot::RwLock::new(keyring)),
            encrypt_all,
        });
        Engine {
            id: config.backend_id,
            clock: config.clock,
            codec: config.codec,
            policy: config.policy,
            max_value_size: config.max_value_size,
            counters: Counters::new(),
            changes: ChangeSignal::default(),
            expiry: Arc::new(DriverControl::default()),
            events: EventHub::new(config.events, sealer.clone()),
            sealer,
            access: config.access,
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
        Ok(self.clock.now_of_operation())
    }

    /// `Err(Error::Reentrant)` inside one of this store's update closures (what
    /// [`begin`](Self::begin) checks besides closing).
    pub(crate) fn check_reentrancy(&self) -> Result<()> {
        reentrancy::check(self.id)
    }

    /// [`begin`](Self::begin) plus key validation.
    #[inline]
    pub(crate) fn begin_key(&self, key: &str) -> Result<Millis> {
        key::validate(key)?;
        self.begin()
    }

    /// Like [`begin_key`](Self::begin_key) for a read: the time is read lazily (see [`Now`]).
    #[inline]
    pub(crate) fn begin_read(&self, key: &str) -> Result<Now<'_>> {
        key::validate(key)?;
        self.begin_lazy()
    }

    /// Like [`begin`](Self::begin), with the time read lazily.
    #[inline]
    pub(crate) fn begin_lazy(&self) -> Result<Now<'_>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        reentrancy::check(self.id)?;
        Ok(Now::of(&self.clock))
    }

    /// Asks the access policy whether `operation` on `key` may go ahead.
    #[inline]
    pub(crate) fn allow(&self, operation: Operation, key: &str) -> Result<()> {
        crate::access::check(self.access.as_ref(), operation, key)
    }

    /// The store's TTL policy (a namespace may bring its own).
    pub(crate) fn policy(&self) -> &TtlPolicy {
        &self.policy
    }

    /// Adds the keys of `keys` to the store's keyring.
    pub(crate) fn rotate_key(&self, keys: Keyring) -> Result<()> {
        self.begin()?;
        self.allow(Operation::Admin, "")?;
        self.sealer()?.keyring.write().merge(keys)
    }

    /// Registers a store-wide hook.
    pub(crate) fn register_hook(&self, hook: crate::events::Hook) -> Result<crate::events::HookId> {
        self.begin()?;
        self.events.register(hook)
    }

    /// The store's encryption, which key operations need.
    pub(crate) fn sealer(&self) -> Result<&Sealer> {
        self.sealer.as_ref().ok_or_else(crate::crypto::no_keyring)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The store's statistics, hooks included.
    pub(crate) fn stats(&self) -> crate::stats::Stats {
        let mut stats = self.counters.snapshot();
        let d = &self.events.counters;
        stats.hooks_delivered = d.delivered.load(Ordering::Relaxed);
        stats.hooks_failed = d.failed.load(Ordering::Relaxed);
        stats.hooks_timed_out = d.timed_out.load(Ordering::Relaxed);
        stats.events_dropped = d.dropped.load(Ordering::Relaxed);
        stats
    }

    /// Checks an encoded value against the maximum value size.
    pub(crate) fn check_size(&self, stored: Bytes) -> Result<Bytes> {
        let size = codec::payload_len(&stored);
        if size > self.max_value_size {
            return Err(Error::ValueTooLarge {
                size,
                max: self.max_value_size,
            });
        }
        Ok(stored)
    }

    /// Encodes a typed value of `key` with the store's codec, within the size limit, encrypted
    /// if the store encrypts every value or the write is `secret`.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        secret: bool,
    ) -> Result<Bytes> {
        let plain = self.check_size(self.codec.encode(value)?)?;
        self.seal_if_needed(key, plain, secret)
    }

    /// Wraps raw bytes of `key`, within the size limit, encrypted as [`encode`](Self::encode).
    pub(crate) fn encode_raw(&self, key: &str, value: &[u8], secret: bool) -> Result<Bytes> {
        if value.len() > self.max_value_size {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                max: self.max_value_size,
            });
        }
        self.seal_if_needed(key, codec::encode_raw(value), secret)
    }

    /// Encrypts a plain value when the store or the write asks for it.
    pub(crate) fn seal_if_needed(&self, key: &str, plain: Bytes, secret: bool) -> Result<Bytes> {
        match &self.sealer {
            Some(s) if s.encrypt_all || secret => s.seal(key, &plain),
            None if secret => Err(crate::crypto::no_keyring()),
            _ => Ok(plain),
        }
    }

    /// Whether a plain write must look at the value it replaces: in a store that encrypts only
    /// secret values, a write over a secret stays secret.
    pub(crate) fn secrets_stick(&self) -> bool {
        self.sealer.as_ref().is_some_and(|s| !s.encrypt_all)
    }

    /// The change a plain write makes under `condition` when secrets stick: the value, encrypted
    /// if the value it replaces was.
    pub(crate) fn write_keeping_secrecy(
        &self,
        key: &str,
        current: Option<&Bytes>,
        value: &Bytes,
        expiry: WriteExpiry,
        condition: crate::backend::Condition,
    ) -> Result<Change> {
        use crate::backend::Condition;
        match (condition, current) {
            (Condition::IfAbsent, Some(_)) | (Condition::IfPresent, None) => Ok(Change::Keep),
            _ => {
                let secret = current.is_some_and(|c| crate::crypto::is_encrypted(c));
                Ok(Change::Write {
                    value: self.seal_if_needed(key, value.clone(), secret)?,
                    expiry,
                })
            }
        }
    }

    /// Decrypts a stored value of `key` if need be (plain values pass as they are).
    #[inline]
    pub(crate) fn open(&self, key: &str, stored: Bytes) -> Result<Bytes> {
        crate::crypto::open(self.sealer.as_ref(), key, stored)
    }

    /// Decodes a stored value of `key`. When the value was encrypted, a decode error says only
    /// that the type did not match: serde's message would quote the plaintext.
    pub(crate) fn decode<T: DeserializeOwned>(&self, key: &str, stored: Bytes) -> Result<T> {
        let encrypted = self.sealer.is_some() && crate::crypto::is_encrypted(&stored);
        let plain = self.open(key, stored)?;
        codec::decode(&plain).map_err(|e| {
            if encrypted {
                crate::crypto::redact(e)
            } else {
                e
            }
        })
    }

    /// Decodes an optional stored value of `key`.
    pub(crate) fn decode_opt<T: DeserializeOwned>(
        &self,
        key: &str,
        stored: Option<Bytes>,
    ) -> Result<Option<T>> {
        stored.map(|b| self.decode(key, b)).transpose()
    }

    /// The payload of a raw value read with its head: when the backend kept a copy of the header
    /// and it says plain raw bytes (which this store may return as they are), the payload is cut
    /// from the value without reading its buffer; otherwise as [`decode_raw`](Self::decode_raw).
    #[inline(always)]
    pub(crate) fn decode_raw_found(
        &self,
        key: &str,
        found: Option<Found>,
    ) -> Result<Option<Bytes>> {
        match found {
            None => Ok(None),
            Some((mut value, Some(head)))
                if value.len() >= VALUE_HEAD_LEN && self.passes_plain(&head) =>
            {
                debug_assert_eq!(
                    value[..VALUE_HEAD_LEN],
                    head,
                    "a backend's head copy is stale"
                );
                bytes::Buf::advance(&mut value, VALUE_HEAD_LEN);
                Ok(Some(value))
            }
            Some((value, _)) => self.decode_raw(key, value).map(Some),
        }
    }

    /// Whether a value with header `head` is plain raw bytes that a read may return as they are:
    /// not encrypted, and not in a store that encrypts every value (which refuses plain ones).
    #[inline]
    fn passes_plain(&self, head: &ValueHead) -> bool {
        self.sealer.as_ref().is_none_or(|s| !s.encrypt_all) && codec::is_plain_raw(head)
    }

    /// The payload of a stored raw value of `key` (decrypted if need be).
    pub(crate) fn decode_raw(&self, key: &str, stored: Bytes) -> Result<Bytes> {
        codec::decode_raw(self.open(key, stored)?)
    }

    // ---- accounting for an outcome ----------------------------------------------------------
    //
    // Each of these counts the outcome of one backend operation, publishes its events, keeps the
    // entry hooks in step (under the key's entry lock, when the caller took it), and wakes the
    // expiry driver and `wait_for` callers as needed.

    /// Accounts for an access read of `key` that found `found`; `on_access` is the entry's
    /// access hook, if it has one.
    #[inline(always)]
    pub(crate) fn read(
        &self,
        key: &str,
        found: Option<&Bytes>,
        now: &Now<'_>,
        on_access: Option<HookFn>,
    ) {
        self.counters.add(
            if found.is_some() {
                Counter::Hit
            } else {
                Counter::Miss
            },
            1,
        );
        if let Some(value) = found
            && (on_access.is_some() || self.events.registry.store_wide(EventKind::Access))
        {
            self.publish_access(key, value, now, on_access);
        }
    }

    /// The `Access` event of a read (out of line: most reads have no access hook to tell).
    #[inline(never)]
    fn publish_access(&self, key: &str, value: &Bytes, now: &Now<'_>, on_access: Option<HookFn>) {
        self.events.publish(
            EventKind::Access,
            Cause::Explicit,
            key,
            Some(value),
            None,
            now.exact(),
            on_access,
        );
    }

    /// Accounts for a write of `key` (`value` is the copy kept for the `Set` event, if wanted),
    /// and attaches the write's entry hooks.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn wrote(
        &self,
        key: &str,
        written: &Written,
        value: Option<&KeptValue>,
        expiry: WriteExpiry,
        now: Millis,
        mut lock: Option<EntryLock<'_>>,
        hooks: EntryHooks,
    ) {
        // Hook-table work under the entry lock; events only once it is released (a hook that
        // writes to this key must never wait on a publisher that waits on it).
        let old_on_expire = match (&written.expired, lock.as_mut()) {
            (Some(_), Some(l)) => l.detach(key).and_then(|h| h.on_expire),
            _ => None,
        };
        if written.written
            && let Some(l) = lock.as_mut()
        {
            l.attach(key, hooks);
        }
        drop(lock);
        if let Some(dead) = &written.expired {
            self.expire_one(key, dead, now, old_on_expire);
        }
        if written.written {
            self.counters.add(Counter::Set, 1);
            self.schedule(expiry, now);
            self.changes.notify();
            if let Some(value) = value {
                self.events
                    .publish_set(key, value, written.previous.as_ref(), now);
            }
        }
    }

    /// Accounts for a removal of `key` by a call.
    pub(crate) fn removed(
        &self,
        key: &str,
        removed: &Removed,
        now: Millis,
        mut lock: Option<EntryLock<'_>>,
    ) {
        let hooks = lock.as_mut().and_then(|l| l.detach(key));
        drop(lock);
        if let Some(dead) = &removed.expired {
            self.expire_one(key, dead, now, hooks.and_then(|h| h.on_expire));
        } else if let Some(previous) = &removed.previous {
            self.deleted_one(key, previous, Cause::Explicit, now);
        }
    }

    /// Accounts for an update of `key` that applied `change`.
    pub(crate) fn updated(
        &self,
        key: &str,
        updated: &Updated,
        change: Option<&Change>,
        now: Millis,
        mut lock: Option<EntryLock<'_>>,
    ) {
        let old_on_expire = match (&updated.expired, lock.as_mut()) {
            (Some(_), Some(l)) => l.detach(key).and_then(|h| h.on_expire),
            _ => None,
        };
        if let (Some(Change::Delete), Some(_), Some(l)) = (change, &updated.previous, lock.as_mut())
        {
            l.detach(key);
        }
        drop(lock);
        if let Some(dead) = &updated.expired {
            self.expire_one(key, dead, now, old_on_expire);
        }
        match change {
            Some(Change::Write { expiry, value }) => {
                self.counters.add(Counter::Set, 1);
                self.schedule(*expiry, now);
                self.changes.notify();
                if self.events.wants(EventKind::Set) {
                    self.events.publish(
                        EventKind::Set,
                        Cause::Explicit,
                        key,
                        Some(value),
                        updated.previous.as_ref(),
                        now,
                        None,
                    );
                }
            }
            Some(Change::Delete) => {
                if let Some(previous) = &updated.previous {
                    self.deleted_one(key, previous, Cause::Explicit, now);
                }
            }
            _ => {}
        }
    }

    /// Accounts for one entry removed because its deadline passed.
    pub(crate) fn expire_one(
        &self,
        key: &str,
        value: &Bytes,
        at: Millis,
        on_expire: Option<HookFn>,
    ) {
        self.counters.add(Counter::Expiration, 1);
        if on_expire.is_some() || self.events.wants(EventKind::Expire) {
            self.events.publish(
                EventKind::Expire,
                Cause::Expired,
                key,
                Some(value),
                None,
                at,
                on_expire,
            );
        }
    }

    /// Accounts for one entry removed by a call, or for inactivity.
    pub(crate) fn deleted_one(&self, key: &str, value: &Bytes, cause: Cause, now: Millis) {
        self.counters.add(
            if cause == Cause::Inactive {
                Counter::Inactive
            } else {
                Counter::Delete
            },
            1,
        );
        self.changes.notify();
        if self.events.wants(EventKind::Delete) {
            self.events
                .publish(EventKind::Delete, cause, key, Some(value), None, now, None);
        }
    }

    /// What accounting a batch needs once its operations have moved into the backend.
    pub(crate) fn plan_batch(&self, ops: &[BatchOp]) -> Vec<PlannedOp> {
        ops.iter()
            .map(|op| match op {
                BatchOp::Set { key, value, expiry } => PlannedOp {
                    key: key.clone(),
                    set: Some((*expiry, self.events.copy_for_set(key, value))),
                },
                BatchOp::Delete { key } => PlannedOp {
                    key: key.clone(),
                    set: None,
                },
            })
            .collect()
    }

    /// Accounts for one applied operation of a batch (`lock`: its key's entry-hook lock, if
    /// entry hooks are in play). A batch write carries no entry hooks.
    pub(crate) fn batch_op_applied(
        &self,
        op: PlannedOp,
        removed: Removed,
        now: Millis,
        lock: Option<EntryLock<'_>>,
    ) {
        match op.set {
            Some((expiry, event_value)) => {
                let written = Written {
                    written: true,
                    previous: removed.previous,
                    expired: removed.expired,
                };
                let hooks = EntryHooks::default();
                self.wrote(
                    &op.key,
                    &written,
                    event_value.as_ref(),
                    expiry,
                    now,
                    lock,
                    hooks,
                );
            }
            None => self.removed(&op.key, &removed, now, lock),
        }
    }

    /// Accounts for a `clear` (its expired entries and entry hooks already dealt with).
    pub(crate) fn cleared(&self, cleared: &Cleared, now: Millis) {
        self.counters.add(Counter::Delete, cleared.removed as u64);
        self.changes.notify();
        self.events
            .publish(EventKind::Clear, Cause::Cleared, "", None, None, now, None);
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
        key: &str,
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
        // The guard covers `T`'s `Deserialize` and `Serialize` too: they are the application's
        // code, run while the backend may hold the key (a shard's write lock), so touching the
        // store from them must be `Error::Reentrant`, not a deadlock.
        let _guard = reentrancy::Guard::enter(self.id);
        let old = self.decode_opt::<T>(key, current.cloned())?;
        let secret = current.is_some_and(|b| crate::crypto::is_encrypted(b));
        let new = f(old).map_err(|e| Error::Aborted(e.into()))?;
        let change = match &new {
            Some(v) => Change::Write {
                value: self.encode(key, v, secret)?,
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
        expiry: WriteExpiry,
        out: &mut i64,
    ) -> Result<Change> {
        let old: i64 = match current {
            Some(b) => self.decode(key, b.clone()).map_err(|e| match e {
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
        let secret = current.is_some_and(|b| crate::crypto::is_encrypted(b));
        Ok(Change::Write {
            value: self.encode(key, &new, secret)?,
            expiry,
        })
    }

    /// The change `merge(patch)` makes: the patch's fields set into the stored map.
    pub(crate) fn merge(
        &self,
        key: &str,
        current: Option<&Bytes>,
        patch: &serde_json::Value,
        expiry: WriteExpiry,
    ) -> Result<Change> {
        let serde_json::Value::Object(fields) = patch else {
            return Err(Error::Encode(
                "merge: the patch must serialize to a map".into(),
            ));
        };
        let mut map = match current {
            None => serde_json::Map::new(),
            Some(b) => match self.decode::<serde_json::Value>(key, b.clone())? {
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
        let secret = current.is_some_and(|b| crate::crypto::is_encrypted(b));
        Ok(Change::Write {
            value: self.encode(key, &map, secret)?,
            expiry,
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

/// One operation of a batch, as accounting sees it: its key, and for a write its expiry and the
/// copy of its value kept for the `Set` event.
pub(crate) struct PlannedOp {
    pub(crate) key: String,
    set: Option<(WriteExpiry, Option<KeptValue>)>,
}
