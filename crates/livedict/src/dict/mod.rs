//! The dictionary operations, written once for both front-ends.
//!
//! [`Dict`] pairs a store's [`Engine`] (validation, TTL policy, codec, encryption, events) with a
//! [`Port`] to its backend. Each operation is three steps: the engine prepares the call, the port
//! does the atomic byte-level operation, and the engine accounts for the outcome and decodes it.
//! Work that borrows the caller's values (encoding a `&T`) is done eagerly, before the returned
//! future, so async futures own everything they hold across an await.
//!
//! [`LiveDict`](crate::LiveDict) runs these operations over a [`SyncPort`] with [`run_ready`];
//! `AsyncLiveDict` awaits them over an `AsyncPort`. The sync front-end's hottest calls (`get`,
//! `get_bytes`, `peek`, and `set`/`set_bytes` without hooks) take the same steps without the
//! futures (see `ready.rs`).

mod port;
mod ready;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(feature = "async")]
pub(crate) use port::AsyncPort;
pub(crate) use port::{Port, SyncPort, run_ready};

use crate::access::Operation;
use crate::backend::WriteExpiry;
use crate::backend::{Change, Condition, ExpiredEntry, Expiry, KeyTtl, ReadMode, Written};
use crate::batch::Batch;
use crate::clock::{Millis, Now};
use crate::engine::Engine;
use crate::error::{BoxError, Error, Result};
use crate::events::{Cause, EntryHookTable, EntryHooks, EntryLock, EventKind};
use crate::namespace::{Key, KeyKind, Namespace, Scope};
use crate::transfer::Exported;
use crate::ttl::{self, TtlPolicy, WriteOptions};

/// How often `wait_for` re-reads a key on a backend other processes write to.
const SHARED_WAIT_POLL: Duration = Duration::from_millis(20);
/// Entries removed per sweep call; sweeping loops while sweeps come back full.
pub(crate) const SWEEP_BATCH: usize = 256;
/// Entries re-encrypted between two progress reports of `rekey`.
const REKEY_BATCH: usize = 256;
/// Backoff between attempts to take a lock.
const LOCK_BACKOFF_MIN: Duration = Duration::from_micros(50);
const LOCK_BACKOFF_MAX: Duration = Duration::from_millis(5);
/// The lease of the lock `get_or_compute` holds while its loader runs, and how long it waits
/// for the lock before looking for the value again.
const COMPUTE_LEASE: Duration = Duration::from_secs(30);
const COMPUTE_LOCK_WAIT: Duration = Duration::from_secs(1);
/// Keys removed per atomic batch by `clear` on a namespace handle.
const CLEAR_CHUNK: usize = 1000;
/// How often a task waiting for room in a full event queue looks again without a wake-up (the
/// sync publisher's interval too): a safety net, wake-ups come with each take.
const ROOM_POLL: Duration = Duration::from_millis(50);

/// A store's engine and a port to its backend.
#[derive(Clone, Copy)]
pub(crate) struct Dict<'s, P> {
    pub(crate) engine: &'s Arc<Engine>,
    pub(crate) port: P,
    /// The namespace a handle is bound to: keys are under its prefix.
    pub(crate) scope: Option<&'s Scope>,
}

/// A lock taken by [`Dict::acquire_lock`]: its name (a full key), owner token and fencing token.
#[derive(Debug)]
pub(crate) struct HeldLock {
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) fence: u64,
}

/// `f`'s output, or the panic that polling it raised.
async fn catch_unwind<F: Future>(f: F) -> std::thread::Result<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    })
    .await
}

/// How a namespace's parameters are given.
pub(crate) enum Binding<'p> {
    /// By name.
    Params(&'p [(&'p str, &'p str)]),
    /// The value of a template's only parameter.
    One(&'p str),
}

/// A prepared write of a typed key: an encoded value, or a password still to hash.
pub(crate) enum KeyWrite<'k> {
    Value(PreparedWrite<'k>),
    Password {
        key: &'k str,
        password: zeroize::Zeroizing<String>,
        options: WriteOptions,
    },
}

/// A write whose value is encoded and whose expiry is resolved, ready for the backend.
pub(crate) struct PreparedWrite<'k> {
    key: Cow<'k, str>,
    now: Millis,
    value: Bytes,
    expiry: WriteExpiry,
    secret: bool,
    condition: Condition,
    hooks: EntryHooks,
}

#[cfg(feature = "async")]
impl PreparedWrite<'_> {
    /// The same write, owning its key (to run on another task).
    pub(crate) fn into_owned(self) -> PreparedWrite<'static> {
        PreparedWrite {
            key: Cow::Owned(self.key.into_owned()),
            now: self.now,
            value: self.value,
            expiry: self.expiry,
            secret: self.secret,
            condition: self.condition,
            hooks: self.hooks,
        }
    }
}

impl<'s, P: Port> Dict<'s, P> {
    // ---- namespaces and access ----------------------------------------------------------------

    /// The full key of `key`: under the handle's namespace prefix, if any.
    #[inline(always)]
    fn full<'k>(&self, key: &'k str) -> Result<Cow<'k, str>> {
        match self.scope {
            None => Ok(Cow::Borrowed(key)),
            Some(scope) => {
                crate::key::validate(key)?;
                Ok(Cow::Owned(format!("{}{key}", scope.prefix)))
            }
        }
    }

    /// The full key of `key`, once the access policy allows `operation` on it.
    #[inline(always)]
    fn allowed<'k>(&self, operation: Operation, key: &'k str) -> Result<Cow<'k, str>> {
        let full = self.full(key)?;
        self.engine.allow(operation, &full)?;
        Ok(full)
    }

    /// The handle's prefix (`""` for the whole store), once the policy allows `operation` on it.
    fn allowed_prefix(&self, operation: Operation) -> Result<&'s str> {
        let prefix = self.scope.map_or("", |s| s.prefix.as_str());
        self.engine.allow(operation, prefix)?;
        Ok(prefix)
    }

    /// A full key as the handle names it.
    fn relative(&self, full: String) -> String {
        match self.scope {
            Some(scope) => full
                .strip_prefix(scope.prefix.as_str())
                .map_or(full.clone(), str::to_owned),
            None => full,
        }
    }

    /// The TTL policy of this handle: its namespace's, else the store's.
    fn ttl_policy(&self) -> &TtlPolicy {
        match self.scope.and_then(|s| s.policy.as_ref()) {
            Some(p) => p,
            None => self.engine.policy(),
        }
    }

    /// The expiry a write with `options` applies.
    pub(crate) fn expiry(&self, options: &WriteOptions) -> Result<WriteExpiry> {
        self.ttl_policy().resolve(options)
    }

    /// The expiry of an in-place update without options.
    pub(crate) fn update_expiry(&self) -> WriteExpiry {
        self.ttl_policy().for_update()
    }

    /// The scope of `namespace` bound with `params` (or, with [`Binding::One`], its only
    /// parameter) inside this handle's, once the policy allows [`Operation::Namespace`] on it.
    pub(crate) fn bind(&self, namespace: &Namespace, binding: Binding<'_>) -> Result<Arc<Scope>> {
        let bound = match binding {
            Binding::Params(params) => namespace.bind(params)?,
            Binding::One(value) => namespace.bind_one(value)?,
        };
        let scope = Scope::of_prefix(self.scope, namespace, bound, self.engine.policy())?;
        self.engine.allow(Operation::Namespace, &scope.prefix)?;
        Ok(Arc::new(scope))
    }

    /// The prefix of this handle's namespace, with its trailing separator (`""` for the store).
    pub(crate) fn prefix(&self) -> &'s str {
        self.scope.map_or("", |s| s.prefix.as_str())
    }

    /// Registers `hook` through this handle: under a namespace it hears only keys under the
    /// prefix (its key or prefix filter taken as relative to it), once the policy allows
    /// [`Operation::Scan`] on what it listens to (its key, its prefix, or the handle's prefix).
    pub(crate) fn register_hook(&self, hook: crate::events::Hook) -> Result<crate::events::HookId> {
        let hook = hook.scoped(self.prefix());
        self.engine.allow(Operation::Scan, hook.watched())?;
        self.engine.register_hook(hook)
    }

    /// Enables or disables a hook registered through this handle or a namespace inside it.
    pub(crate) fn set_hook_enabled(&self, id: crate::events::HookId, enabled: bool) -> bool {
        self.engine
            .events
            .registry
            .set_enabled(id, enabled, self.prefix())
    }

    /// Unregisters a hook registered through this handle or a namespace inside it.
    pub(crate) fn unregister_hook(&self, id: crate::events::HookId) -> bool {
        self.engine.events.registry.unregister(id, self.prefix())
    }

    /// An empty batch whose keys are under this handle's namespace.
    pub(crate) fn batch(&self, scope: Option<Arc<Scope>>) -> Batch {
        Batch::new(self.engine.clone(), scope)
    }

    // ---- entry-hook locks ---------------------------------------------------------------------

    /// The entry-hook lock of `key`, when entry hooks are in play.
    #[inline(always)]
    async fn entry_lock(&self, key: &str, hooks: &EntryHooks) -> Result<Option<EntryLock<'s>>> {
        if !self.engine.events.needs_entry_lock(hooks)? {
            return Ok(None);
        }
        Ok(Some(self.lock_entry(key).await))
    }

    /// Locks `key`'s stripe unconditionally (the caller checked that entry hooks are in use).
    /// The future borrows only the store (`'s`), not `self` or `key`.
    #[inline(always)]
    fn lock_entry(&self, key: &str) -> impl Future<Output = EntryLock<'s>> + Send + 's {
        let table = self.engine.events.registry.entries();
        Self::lock_stripe(table, table.stripe(key))
    }

    /// Locks one stripe of the entry-hook table. A future that names only the store's lifetime
    /// (`'s`): awaited in a loop over the stripes, the acquisition written inline made the
    /// caller's future one that rustc cannot prove `Send` for every lifetime
    /// (rust-lang/rust#100013), which the async front-end needs to run it as a task.
    #[allow(clippy::manual_async_fn)] // as an `async fn` its future would name `P`'s lifetime
    fn lock_stripe(
        table: &'s EntryHookTable,
        stripe: &'s async_lock::Mutex<std::collections::HashMap<String, EntryHooks>>,
    ) -> impl Future<Output = EntryLock<'s>> + Send + 's {
        async move { EntryLock::new(table, P::acquire(stripe).await) }
    }

    // ---- reading ------------------------------------------------------------------------------

    /// The stored bytes under the full key `key`, accounted as an access with
    /// [`ReadMode::Touch`].
    #[inline(always)]
    async fn read_full(&self, key: &str, mode: ReadMode) -> Result<Option<Bytes>> {
        let now = self.engine.begin_read(key)?;
        let found = self.port.get(key, &now, mode).await?;
        if mode == ReadMode::Touch {
            self.accessed(key, found.as_ref(), &now).await;
        }
        Ok(found)
    }

    /// Accounts for an access of `key` that found `found`, with the entry's access hook when
    /// some entry has hooks. That case is rare, and the only one that awaits: the common path
    /// adds no state to the caller's future.
    #[inline(always)]
    async fn accessed(&self, key: &str, found: Option<&Bytes>, now: &Now<'_>) {
        if !self.access_waits(found.is_some()) {
            return self.engine.read(key, found, now, None);
        }
        let on_access = if self.engine.events.registry.entries().in_use() {
            self.lock_entry(key).await.on_access(key)
        } else {
            None
        };
        if P::AWAITS && self.engine.events.wants(EventKind::Access) {
            self.room_for_events(Some(key)).await;
        }
        self.engine.read(key, found, now, on_access);
    }

    /// Whether accounting for an access (that found a value, if `found`) has to take the entry's
    /// lock for its access hook or wait for room in the event queue; otherwise
    /// [`Engine::read`] alone accounts for it.
    #[inline(always)]
    fn access_waits(&self, found: bool) -> bool {
        found
            && (self.engine.events.registry.entries().in_use()
                || (P::AWAITS && self.engine.events.wants(EventKind::Access)))
    }

    #[inline(always)]
    pub(crate) async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let key = self.allowed(Operation::Read, key)?;
        let found = self.read_full(&key, ReadMode::Touch).await?;
        self.engine.decode_opt(&key, found)
    }

    #[cfg(feature = "async")] // the sync front-end reads with `get_bytes_ready`
    #[inline(always)]
    pub(crate) async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.allowed(Operation::Read, key)?;
        let found = self.read_full(&key, ReadMode::Touch).await?;
        found
            .map(|value| self.engine.decode_raw(&key, value))
            .transpose()
    }

    #[inline(always)]
    pub(crate) async fn peek<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let key = self.allowed(Operation::Read, key)?;
        let found = self.read_full(&key, ReadMode::Peek).await?;
        self.engine.decode_opt(&key, found)
    }

    pub(crate) async fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        self.get(key).await?.ok_or_else(|| Error::KeyNotFound {
            key: key.to_owned(),
        })
    }

    pub(crate) async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<T>>> {
        let full: Vec<Cow<'_, str>> = keys
            .iter()
            .map(|k| {
                crate::key::validate(k)?;
                self.allowed(Operation::Read, k)
            })
            .collect::<Result<_>>()?;
        let keys: Vec<&str> = full.iter().map(|k| &**k).collect();
        let now = self.engine.begin_lazy()?;
        let found = self.port.get_many(&keys, &now, ReadMode::Touch).await?;
        let mut out = Vec::with_capacity(found.len());
        for (v, key) in found.into_iter().zip(&keys) {
            self.accessed(key, v.as_ref(), &now).await;
            out.push(self.engine.decode_opt(key, v)?);
        }
        Ok(out)
    }

    pub(crate) async fn contains(&self, key: &str) -> Result<bool> {
        let key = self.allowed(Operation::Inspect, key)?;
        let now = self.engine.begin_read(&key)?;
        self.port.contains(&key, &now).await
    }

    pub(crate) async fn len(&self) -> Result<usize> {
        let prefix = self.allowed_prefix(Operation::Scan)?;
        let now = self.engine.begin()?;
        if prefix.is_empty() {
            self.port.len(now).await
        } else {
            Ok(self.port.scan(prefix, now, false).await?.len())
        }
    }

    /// The full keys under the handle's prefix.
    async fn full_keys(&self, operation: Operation) -> Result<Vec<String>> {
        let prefix = self.allowed_prefix(operation)?;
        let now = self.engine.begin()?;
        let entries = self.port.scan(prefix, now, false).await?;
        Ok(entries.into_iter().map(|(k, _)| k).collect())
    }

    pub(crate) async fn keys(&self) -> Result<Vec<String>> {
        let keys = self.full_keys(Operation::Scan).await?;
        Ok(keys.into_iter().map(|k| self.relative(k)).collect())
    }

    /// A snapshot of the live entries under the handle's prefix, with full keys and stored
    /// bytes.
    pub(crate) async fn entries(&self) -> Result<Vec<(String, Bytes)>> {
        let prefix = self.allowed_prefix(Operation::Scan)?;
        let now = self.engine.begin()?;
        let entries = self.port.scan(prefix, now, true).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    /// Decodes a snapshot taken by [`entries`](Self::entries), naming keys as the handle does.
    pub(crate) fn decode_entry<T: DeserializeOwned>(
        engine: &Engine,
        scope: Option<&Scope>,
        (key, stored): (String, Bytes),
    ) -> Result<(String, T)> {
        let value = engine.decode(&key, stored)?;
        let key = match scope.and_then(|s| key.strip_prefix(s.prefix.as_str())) {
            Some(relative) => relative.to_owned(),
            None => key,
        };
        Ok((key, value))
    }

    pub(crate) async fn items<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        let entries = self.entries().await?;
        entries
            .into_iter()
            .map(|e| Self::decode_entry(self.engine, self.scope, e))
            .collect()
    }

    pub(crate) async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let key = self.allowed(Operation::Inspect, key)?;
        let now = self.engine.begin_key(&key)?;
        self.port.ttl(&key, now).await
    }

    // ---- writing ------------------------------------------------------------------------------

    /// Validates, resolves the expiry and encodes a write, at once.
    #[inline(always)]
    pub(crate) fn prepare_write<'k>(
        &self,
        key: &'k str,
        encode: impl FnOnce(&Engine, &str, bool) -> Result<Bytes>,
        options: WriteOptions,
        condition: Condition,
    ) -> Result<PreparedWrite<'k>> {
        let engine = self.engine;
        let key = self.allowed(Operation::Write, key)?;
        let now = engine.begin_key(&key)?;
        let expiry = self.expiry(&options)?;
        let value = encode(engine, &key, options.secret)?;
        Ok(PreparedWrite {
            key,
            now,
            value,
            expiry,
            secret: options.secret,
            condition,
            hooks: options.hooks,
        })
    }

    /// Over an async port, waits (parking the task, not its thread) while the event queue that
    /// `key`'s events go to (any lane, for `None`) is full under the `Block` policy; the write
    /// after it would otherwise block its runtime thread in the publish. Callers guard it with
    /// `if P::AWAITS`: over the sync port, where the publish itself waits, the operation's future
    /// then carries no trace of it (an `await` of even an empty future cost the sync set ~40
    /// instructions).
    ///
    /// Returns whether it waited: the caller then reads the clock again, so that the write's
    /// deadlines and its view of which entries have expired are those of the moment it runs.
    #[inline(always)]
    async fn room_for_events(&self, key: Option<&str>) -> bool {
        let mut waited = false;
        while let Some((listener, _waiter)) = self.engine.events.room_wait(key) {
            P::wait(listener, ROOM_POLL).await;
            waited = true;
        }
        waited
    }

    /// Applies a prepared write.
    #[inline(always)]
    pub(crate) async fn write(&self, w: PreparedWrite<'_>) -> Result<Written> {
        let engine = self.engine;
        let PreparedWrite {
            key,
            mut now,
            value,
            expiry,
            secret,
            condition,
            hooks,
        } = w;
        let key = &*key;
        if P::AWAITS && self.room_for_events(Some(key)).await {
            now = engine.begin()?;
        }
        let event_value = engine.events.copy_for_set(key, &value);
        let lock = self.entry_lock(key, &hooks).await?;
        let written = if engine.secrets_stick() && !secret {
            // Look at the value being replaced: a write over a secret stays secret.
            let mut wrote = false;
            let updated = self
                .port
                .update(key, now, &mut |current| {
                    let change =
                        engine.write_keeping_secrecy(key, current, &value, expiry, condition)?;
                    wrote = matches!(change, Change::Write { .. });
                    Ok(change)
                })
                .await?;
            Written {
                written: wrote,
                previous: updated.previous,
                expired: updated.expired,
            }
        } else {
            self.port.set(key, value, expiry, condition, now).await?
        };
        engine.wrote(
            key,
            &written,
            event_value.as_ref(),
            expiry,
            now,
            lock,
            hooks,
        );
        Ok(written)
    }

    /// Prepares `set_with`.
    #[inline(always)]
    pub(crate) fn prepare_set<'k, T: Serialize + ?Sized>(
        &self,
        key: &'k str,
        value: &T,
        options: WriteOptions,
    ) -> Result<PreparedWrite<'k>> {
        self.prepare_write(
            key,
            |e, key, secret| e.encode(key, value, secret),
            options,
            Condition::Always,
        )
    }

    /// Prepares `set_bytes_with`.
    #[inline(always)]
    pub(crate) fn prepare_set_bytes<'k>(
        &self,
        key: &'k str,
        value: &[u8],
        options: WriteOptions,
    ) -> Result<PreparedWrite<'k>> {
        self.prepare_write(
            key,
            |e, key, secret| e.encode_raw(key, value, secret),
            options,
            Condition::Always,
        )
    }

    /// Prepares `replace` (a plain write, whose previous value is returned).
    pub(crate) fn prepare_replace<'k, T: Serialize>(
        &self,
        key: &'k str,
        value: &T,
    ) -> Result<PreparedWrite<'k>> {
        self.prepare_write(
            key,
            |e, key, _| e.encode(key, value, false),
            WriteOptions::new(),
            Condition::Always,
        )
    }

    /// `set_password_with`: the password hashed (argon2id, slow on purpose) off the runtime's
    /// workers in the async front-end, then stored.
    pub(crate) async fn set_password(
        &self,
        key: &str,
        password: zeroize::Zeroizing<String>,
        options: WriteOptions,
    ) -> Result<()> {
        crate::key::validate(key)?;
        let phc = P::blocking(move || crate::crypto::password::hash(password.as_bytes())).await?;
        let prepared = self.prepare_write(
            key,
            |e, key, secret| {
                e.seal_if_needed(key, crate::codec::encode_password_hash(&phc), secret)
            },
            options,
            Condition::Always,
        );
        self.write_prepared(prepared).await
    }

    /// Prepares `set_key`: the value encoded (or, for a password key, taken) at once.
    pub(crate) fn prepare_key<'k, T: Serialize>(
        &self,
        key: &'k Key<T>,
        value: &T,
    ) -> Result<KeyWrite<'k>> {
        let options = match key.ttl {
            Some(ttl) => WriteOptions::ttl(ttl),
            None => WriteOptions::new(),
        };
        match key.kind {
            KeyKind::Plain => self
                .prepare_set(&key.name, value, options)
                .map(KeyWrite::Value),
            KeyKind::Secret => self
                .prepare_set(&key.name, value, options.secret())
                .map(KeyWrite::Value),
            KeyKind::Password => match serde_json::to_value(value) {
                Ok(serde_json::Value::String(password)) => Ok(KeyWrite::Password {
                    key: &key.name,
                    password: zeroize::Zeroizing::new(password),
                    options,
                }),
                _ => Err(Error::Encode(
                    format!("password key {:?}: the value must be a string", key.name).into(),
                )),
            },
        }
    }

    /// Applies a prepared `set_key`.
    pub(crate) async fn write_key(&self, prepared: Result<KeyWrite<'_>>) -> Result<()> {
        match prepared? {
            KeyWrite::Value(write) => self.write_prepared(Ok(write)).await,
            KeyWrite::Password {
                key,
                password,
                options,
            } => self.set_password(key, password, options).await,
        }
    }

    /// The value of the typed key `key`, or its default when missing.
    pub(crate) async fn get_key<T: DeserializeOwned + Clone>(
        &self,
        key: &Key<T>,
    ) -> Result<Option<T>> {
        Ok(self.get(&key.name).await?.or_else(|| key.default.clone()))
    }

    /// Applies a prepared write (or returns the error preparing it).
    #[inline(always)]
    pub(crate) async fn write_prepared(&self, prepared: Result<PreparedWrite<'_>>) -> Result<()> {
        self.write(prepared?).await?;
        Ok(())
    }

    /// Applies a prepared `replace` and decodes the value it replaced.
    pub(crate) async fn replace_prepared<T: DeserializeOwned>(
        &self,
        key: &str,
        prepared: Result<PreparedWrite<'_>>,
    ) -> Result<Option<T>> {
        let written = self.write(prepared?).await?;
        self.decode_previous(key, written.previous)
    }

    /// The value a write or removal of `key` replaced, decoded.
    pub(crate) fn decode_previous<T: DeserializeOwned>(
        &self,
        key: &str,
        previous: Option<Bytes>,
    ) -> Result<Option<T>> {
        self.engine.decode_opt(&self.full(key)?, previous)
    }

    /// `setdefault`: the value under `key`, or `default` stored and returned.
    pub(crate) async fn setdefault<T: Serialize + DeserializeOwned + Send>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T> {
        let written = self.write(self.prepare_setdefault(key, &default)?).await?;
        self.setdefault_result(key, written, default)
    }

    /// The write of `setdefault`: `default` stored unless the key has a value.
    pub(crate) fn prepare_setdefault<'k, T: Serialize>(
        &self,
        key: &'k str,
        default: &T,
    ) -> Result<PreparedWrite<'k>> {
        self.prepare_write(
            key,
            |e, key, _| e.encode(key, default, false),
            WriteOptions::new(),
            Condition::IfAbsent,
        )
    }

    /// What `setdefault` returns once its write is done: the value found, else `default`.
    pub(crate) fn setdefault_result<T: DeserializeOwned>(
        &self,
        key: &str,
        written: Written,
        default: T,
    ) -> Result<T> {
        match written.previous {
            Some(existing) if !written.written => self.engine.decode(&self.full(key)?, existing),
            _ => Ok(default),
        }
    }

    /// Applies a batch all-or-nothing.
    pub(crate) async fn apply(&self, batch: Batch) -> Result<()> {
        let engine = self.engine;
        if !Arc::ptr_eq(&batch.engine, engine) {
            // Its values are encoded with that store's codec, header and keys.
            return Err(Error::Format(
                "a batch is applied by the store that built it (or a handle of it)".into(),
            ));
        }
        let mut now = engine.begin()?;
        if batch.ops.is_empty() {
            return Ok(());
        }
        for op in &batch.ops {
            let operation = match op {
                crate::backend::BatchOp::Set { .. } => Operation::Write,
                crate::backend::BatchOp::Delete { .. } => Operation::Delete,
            };
            engine.allow(operation, op.key())?;
        }
        let plan = engine.plan_batch(&batch.ops);
        if P::AWAITS && self.room_for_events(None).await {
            now = engine.begin()?;
        }
        let outcomes = self.port.apply_batch(batch.ops, now).await?;
        // A batch write carries no entry hooks: the hooks of its keys are detached, key by key.
        for (removed, op) in outcomes.into_iter().zip(plan) {
            let lock = self.entry_lock(&op.key, &EntryHooks::default()).await?;
            engine.batch_op_applied(op, removed, now, lock);
        }
        Ok(())
    }

    // ---- atomic read-modify-write -------------------------------------------------------------

    /// `try_update` / `update_with`: `f` runs once on the decoded current value.
    pub(crate) async fn update_with<T, E, F>(
        &self,
        key: &str,
        expiry: WriteExpiry,
        f: F,
    ) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E> + Send,
    {
        let full = self.full(key)?;
        let key = &*full;
        let mut f = Some(f);
        let mut out = None;
        self.modify(key, &mut |engine, current| {
            let f = f.take().ok_or(Error::Reentrant)?;
            engine.decide(key, current, f, expiry, &mut out)
        })
        .await?;
        Ok(out)
    }

    #[inline(always)]
    pub(crate) async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let full = self.full(key)?;
        let key = &*full;
        let mut out = 0;
        let expiry = self.update_expiry();
        self.modify(key, &mut |engine, current| {
            engine.increment(key, current, delta, expiry, &mut out)
        })
        .await?;
        Ok(out)
    }

    pub(crate) async fn merge(&self, key: &str, patch: serde_json::Value) -> Result<()> {
        let full = self.full(key)?;
        let key = &*full;
        let expiry = self.update_expiry();
        self.modify(key, &mut |engine, current| {
            engine.merge(key, current, &patch, expiry)
        })
        .await
    }

    /// Runs a decision on the current value inside the backend's atomic update (`key`: full).
    #[inline(always)]
    async fn modify(
        &self,
        key: &str,
        decide: &mut (dyn FnMut(&Engine, Option<&Bytes>) -> Result<Change> + Send),
    ) -> Result<()> {
        if P::AWAITS {
            self.room_for_events(Some(key)).await;
        }
        let engine = self.engine;
        let now = engine.begin_key(key)?;
        engine.allow(Operation::Update, key)?;
        let mut change = None;
        let lock = self.entry_lock(key, &EntryHooks::default()).await?;
        let updated = self
            .port
            .update(key, now, &mut |current| {
                let c = decide(engine, current)?;
                change = Some(c.clone());
                Ok(c)
            })
            .await?;
        engine.updated(key, &updated, change.as_ref(), now, lock);
        Ok(())
    }

    // ---- removing -----------------------------------------------------------------------------

    /// Removes `key`, returning its stored bytes.
    pub(crate) async fn remove(&self, key: &str) -> Result<Option<Bytes>> {
        let key = self.allowed(Operation::Delete, key)?;
        self.remove_full(&key).await
    }

    async fn remove_full(&self, key: &str) -> Result<Option<Bytes>> {
        if P::AWAITS {
            self.room_for_events(Some(key)).await;
        }
        let engine = self.engine;
        let now = engine.begin_key(key)?;
        let lock = self.entry_lock(key, &EntryHooks::default()).await?;
        let removed = self.port.delete(key, now).await?;
        engine.removed(key, &removed, now, lock);
        Ok(removed.previous)
    }

    pub(crate) async fn pop<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let removed = self.remove(key).await?;
        self.decode_previous(key, removed)
    }

    pub(crate) async fn popitem<T: DeserializeOwned>(&self) -> Result<Option<(String, T)>> {
        let prefix = self.allowed_prefix(Operation::Delete)?;
        let entry = if prefix.is_empty() {
            if P::AWAITS {
                self.room_for_events(None).await;
            }
            let now = self.engine.begin()?;
            let entry = self.port.pop_any(now).await?;
            if let Some(e) = &entry {
                self.removed_entries(std::slice::from_ref(e), Cause::Explicit, now)
                    .await;
            }
            entry
        } else {
            // Under a namespace: the first key of the prefix that is still there.
            let mut found = None;
            for key in self.full_keys(Operation::Delete).await? {
                if let Some(value) = self.remove_full(&key).await? {
                    found = Some((key, value));
                    break;
                }
            }
            found
        };
        entry
            .map(|e| Self::decode_entry(self.engine, self.scope, e))
            .transpose()
    }

    /// Accounts for entries removed by `cleanup_inactive` or `popitem`.
    async fn removed_entries(&self, entries: &[(String, Bytes)], cause: Cause, now: Millis) {
        for (key, value) in entries {
            if self.engine.events.registry.entries().in_use() {
                self.lock_entry(key).await.detach(key);
            }
            self.engine.deleted_one(key, value, cause, now);
        }
    }

    pub(crate) async fn clear(&self) -> Result<usize> {
        if self.scope.is_some() {
            return self.clear_prefix().await;
        }
        self.allowed_prefix(Operation::Clear)?;
        if P::AWAITS {
            self.room_for_events(None).await;
        }
        let now = self.engine.begin()?;
        let cleared = self.port.clear(now).await?;
        self.expired(&cleared.expired, false).await;
        let table = self.engine.events.registry.entries();
        for stripe in table.stripes() {
            Self::lock_stripe(table, stripe).await.clear_all();
        }
        self.engine.cleared(&cleared, now);
        Ok(cleared.removed)
    }

    /// `clear` on a namespace handle: the keys under its prefix, removed in batches of
    /// [`CLEAR_CHUNK`] (each batch atomic), with a `Delete` event per key.
    async fn clear_prefix(&self) -> Result<usize> {
        let keys = self.full_keys(Operation::Clear).await?;
        let mut removed = 0;
        for chunk in keys.chunks(CLEAR_CHUNK) {
            let mut now = self.engine.begin()?;
            let ops: Vec<crate::backend::BatchOp> = chunk
                .iter()
                .map(|key| crate::backend::BatchOp::Delete { key: key.clone() })
                .collect();
            let plan = self.engine.plan_batch(&ops);
            if P::AWAITS && self.room_for_events(None).await {
                now = self.engine.begin()?;
            }
            let outcomes = self.port.apply_batch(ops, now).await?;
            for (outcome, op) in outcomes.into_iter().zip(plan) {
                removed += usize::from(outcome.previous.is_some());
                let lock = self.entry_lock(&op.key, &EntryHooks::default()).await?;
                self.engine.batch_op_applied(op, outcome, now, lock);
            }
        }
        Ok(removed)
    }

    // ---- time to live -------------------------------------------------------------------------

    pub(crate) async fn expire_with(&self, key: &str, options: WriteOptions) -> Result<bool> {
        let engine = self.engine;
        let key = self.allowed(Operation::Expire, key)?;
        let now = engine.begin_key(&key)?;
        let expiry = self.expiry(&options)?;
        if expiry.keep_existing {
            return self.port.contains(&key, &Now::fixed(now)).await;
        }
        let changed = self.port.set_expiry(&key, expiry.expiry, now).await?;
        if changed {
            engine.schedule(expiry, now);
        }
        Ok(changed)
    }

    pub(crate) async fn persist(&self, key: &str) -> Result<bool> {
        let key = self.allowed(Operation::Expire, key)?;
        let now = self.engine.begin_key(&key)?;
        self.port.set_expiry(&key, Expiry::Never, now).await
    }

    pub(crate) async fn cleanup_inactive(&self, idle: Duration) -> Result<usize> {
        let prefix = self.allowed_prefix(Operation::Clear)?;
        let idle = ttl::to_millis(idle)?;
        if P::AWAITS {
            self.room_for_events(None).await;
        }
        let now = self.engine.begin()?;
        let removed = self
            .port
            .remove_inactive(prefix, now.saturating_sub(idle), now)
            .await?;
        self.removed_entries(&removed, Cause::Inactive, now).await;
        Ok(removed.len())
    }

    /// Accounts for entries removed because their deadline passed. With `check_live`, a key that
    /// has a live value again (written since it expired) keeps its entry hooks.
    async fn expired(&self, entries: &[ExpiredEntry], check_live: bool) {
        let in_use = self.engine.events.registry.entries().in_use();
        for e in entries {
            let on_expire = if in_use {
                let mut lock = self.lock_entry(&e.key).await;
                let live = check_live
                    && self
                        .port
                        .contains(&e.key, &Now::fixed(self.engine.clock.now()))
                        .await
                        .unwrap_or(false);
                if live {
                    None
                } else {
                    lock.detach(&e.key).and_then(|h| h.on_expire)
                }
            } else {
                None
            };
            self.engine
                .expire_one(&e.key, &e.value, e.deadline, on_expire);
        }
    }

    /// Removes everything due at the clock's current time, in batches through `buffer` (kept from
    /// sweep to sweep, see [`Backend::sweep`](crate::Backend::sweep)), and accounts for it;
    /// returns how many entries were removed. Used by the expiry driver and `sweep_expired`.
    pub(crate) async fn sweep_due(&self, buffer: &mut Vec<ExpiredEntry>) -> Result<usize> {
        let engine = self.engine;
        let mut total = 0;
        loop {
            if P::AWAITS {
                self.room_for_events(None).await;
            }
            let now = engine.clock.now();
            buffer.clear();
            let more = self.port.sweep(now, SWEEP_BATCH, buffer).await?;
            self.expired(buffer, true).await;
            crate::expiry::record_lateness(engine, buffer);
            total += buffer.len();
            if !more || engine.expiry.stopping() {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn sweep_expired(&self) -> Result<usize> {
        self.engine.begin()?;
        self.engine.allow(Operation::Clear, "")?;
        self.sweep_due(&mut Vec::new()).await
    }

    // ---- waiting ------------------------------------------------------------------------------

    pub(crate) async fn wait_for<T: DeserializeOwned + Send>(
        &self,
        key: &str,
        timeout: Duration,
        predicate: &mut (dyn FnMut(&T) -> bool + Send),
    ) -> Result<Option<T>> {
        // A timeout too long to add to the clock means: wait as long as it takes.
        let give_up = Instant::now().checked_add(timeout);
        let poll = if self.port.is_shared() {
            SHARED_WAIT_POLL
        } else {
            Duration::MAX
        };
        let waiter = self.engine.changes.register();
        loop {
            let listener = waiter.listen();
            if let Some(v) = self.peek::<T>(key).await?
                && predicate(&v)
            {
                return Ok(Some(v));
            }
            let left = time_left(give_up);
            if left.is_zero() {
                return Ok(None);
            }
            P::wait(listener, left.min(poll)).await;
        }
    }

    // ---- locks --------------------------------------------------------------------------------

    /// Takes the lock on `key` (full key) for a new owner, waiting up to `timeout` (real time),
    /// retrying with a backoff from 50 µs to 5 ms. `None` when the timeout passes first.
    pub(crate) async fn acquire_lock(
        &self,
        key: &str,
        timeout: Duration,
        lease: Duration,
    ) -> Result<Option<HeldLock>> {
        self.acquire_lock_unless(key, timeout, lease, None).await
    }

    /// [`acquire_lock`](Self::acquire_lock) that also gives up, between attempts, once
    /// `abandoned` is set (its caller is gone).
    pub(crate) async fn acquire_lock_unless(
        &self,
        key: &str,
        timeout: Duration,
        lease: Duration,
        abandoned: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<Option<HeldLock>> {
        let name = self.allowed(Operation::Lock, key)?.into_owned();
        let lease = ttl::to_millis(lease)?;
        let owner = crate::lock::owner_token();
        let give_up = Instant::now().checked_add(timeout);
        let mut pause = LOCK_BACKOFF_MIN;
        loop {
            let now = self.engine.begin_key(&name)?;
            if let Some(fence) = self.port.try_lock(&name, &owner, lease, now).await? {
                return Ok(Some(HeldLock { name, owner, fence }));
            }
            let left = time_left(give_up);
            if left.is_zero()
                || abandoned.is_some_and(|a| a.load(std::sync::atomic::Ordering::Acquire))
            {
                return Ok(None);
            }
            P::sleep(pause.min(left)).await;
            pause = (pause * 2).min(LOCK_BACKOFF_MAX);
        }
    }

    /// `Err(Error::Reentrant)` inside one of this store's update closures.
    pub(crate) fn check_reentrancy(&self) -> Result<()> {
        self.engine.check_reentrancy()
    }

    /// Releases a lock taken by [`acquire_lock`](Self::acquire_lock); false if its lease had run
    /// out (someone else may hold it now). [`Error::Reentrant`] inside one of this store's
    /// update closures: on SQLite the release waits for the write lock the closure's transaction
    /// holds.
    pub(crate) async fn release_lock(&self, lock: &HeldLock) -> Result<bool> {
        self.engine.check_reentrancy()?;
        let now = self.engine.clock.now();
        self.port.unlock(&lock.name, &lock.owner, now).await
    }

    /// `get_or_compute`: the value under `key`, or the loader's, stored with `options`. Under
    /// concurrent misses the loader runs once per key: callers take the key's lock and look
    /// again before loading, across processes on shared backends.
    pub(crate) async fn get_or_compute<T, E, F, Fut>(
        &self,
        key: &str,
        options: WriteOptions,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        if let Some(v) = self.get(key).await? {
            return Ok(v);
        }
        self.allowed(Operation::Update, key)?;
        let lock = loop {
            // `acquire_lock` takes the key as the caller gave it (a namespace adds its prefix
            // there, once).
            if let Some(lock) = self
                .acquire_lock(key, COMPUTE_LOCK_WAIT, COMPUTE_LEASE)
                .await?
            {
                break lock;
            }
            // Still held by a slow loader: maybe it has stored the value by now.
            if let Some(v) = self.get(key).await? {
                return Ok(v);
            }
        };
        // A loader that panics must not leave the key locked for the lease's 30 s: the lock is
        // released first, then the panic goes on. (An async caller that drops the call while
        // the loader runs does leave it locked until the lease ends.)
        let outcome = catch_unwind(async {
            if let Some(v) = self.get(key).await? {
                return Ok(v);
            }
            let value = loader().await.map_err(|e| Error::Aborted(e.into()))?;
            let prepared = self.prepare_set(key, &value, options);
            self.write(prepared?).await?;
            Ok(value)
        })
        .await;
        let released = self.release_lock(&lock).await;
        let value = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        released?;
        Ok(value)
    }

    // ---- passwords and keys -------------------------------------------------------------------

    pub(crate) async fn password_hash(&self, key: &str) -> Result<Option<String>> {
        let key = self.allowed(Operation::Read, key)?;
        let Some(stored) = self.read_full(&key, ReadMode::Peek).await? else {
            return Ok(None);
        };
        let plain = self.engine.open(&key, stored)?;
        crate::codec::decode_password_hash(&plain).map(Some)
    }

    pub(crate) async fn verify_password(&self, key: &str, password: &str) -> Result<Option<bool>> {
        match self.password_hash(key).await? {
            None => Ok(None),
            Some(phc) => {
                let password = zeroize::Zeroizing::new(password.to_owned());
                P::blocking(move || crate::crypto::password::verify(password.as_bytes(), &phc))
                    .await
                    .map(Some)
            }
        }
    }

    pub(crate) async fn rekey(
        &self,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<usize> {
        self.engine.allow(Operation::Admin, "")?;
        let sealer = self.engine.sealer()?.clone();
        let now = self.engine.begin()?;
        let keys: Vec<String> = self
            .port
            .scan("", now, false)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let total = keys.len();
        let mut rewritten = 0;
        for (i, chunk) in keys.chunks(REKEY_BATCH).enumerate() {
            for key in chunk {
                let now = self.engine.begin()?;
                let mut changed = false;
                self.port
                    .update(key, now, &mut |current| {
                        let Some(stored) = current else {
                            return Ok(Change::Keep);
                        };
                        if !sealer.needs_rekey(stored)? {
                            return Ok(Change::Keep);
                        }
                        let plain = sealer.open_any(key, stored.clone())?;
                        changed = true;
                        Ok(Change::Replace {
                            value: sealer.seal(key, &plain)?,
                        })
                    })
                    .await?;
                rewritten += usize::from(changed);
            }
            progress(((i + 1) * REKEY_BATCH).min(total), total);
        }
        Ok(rewritten)
    }

    pub(crate) async fn retire_key(&self, id: u32) -> Result<()> {
        self.engine.allow(Operation::Admin, "")?;
        let sealer = self.engine.sealer()?;
        if sealer.keyring.read().current_id() == Some(id) {
            return Err(Error::Crypto(format!(
                "key {id} is the newest key; rotate to another before retiring it"
            )));
        }
        let mut users = 0;
        let now = self.engine.begin()?;
        for (_, value) in self.port.scan("", now, true).await? {
            let Some(value) = value else { continue };
            if crate::crypto::envelope::key_id(&value)? == Some(id) {
                users += 1;
            }
        }
        if users > 0 {
            return Err(Error::Crypto(format!(
                "key {id} is still used by {users} entries; run rekey first"
            )));
        }
        if !sealer.keyring.write().remove(id) {
            return Err(Error::Crypto(format!("key {id} is not in the keyring")));
        }
        Ok(())
    }

    // ---- moving whole stores ------------------------------------------------------------------

    /// The live entries under the handle's prefix, with their full keys, stored bytes and time
    /// left.
    pub(crate) async fn export_entries(&self) -> Result<Vec<Exported>> {
        let prefix = self.allowed_prefix(Operation::Scan)?;
        let now = self.engine.begin()?;
        let mut out = Vec::new();
        for (key, value) in self.port.scan(prefix, now, true).await? {
            let Some(stored) = value else { continue };
            let ttl = self.port.ttl(&key, now).await?;
            if ttl == KeyTtl::Missing {
                continue; // removed since the scan
            }
            out.push(Exported { key, stored, ttl });
        }
        Ok(out)
    }

    /// Stores imported or copied entries (full keys), all-or-nothing; returns how many. On a
    /// namespace handle every key must be under its prefix.
    pub(crate) async fn import_ops(&self, ops: Vec<crate::backend::BatchOp>) -> Result<usize> {
        if let Some(scope) = self.scope
            && let Some(op) = ops.iter().find(|op| !op.key().starts_with(&scope.prefix))
        {
            return Err(Error::Namespace(format!(
                "{:?} is not under this handle's prefix {:?}",
                op.key(),
                scope.prefix
            )));
        }
        let n = ops.len();
        let mut batch = self.batch(None);
        batch.ops = ops;
        self.apply(batch).await?;
        Ok(n)
    }
}

/// What is left until `give_up` (`None`: no end).
fn time_left(give_up: Option<Instant>) -> Duration {
    give_up.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    })
}
