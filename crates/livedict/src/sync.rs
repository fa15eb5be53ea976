//! The synchronous front-end, [`LiveDict`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, KeyTtl, ReadMode};
use crate::batch::Batch;
use crate::builder::Builder;
use crate::crypto::Keyring;
use crate::dict::{Binding, Dict, SyncPort, run_ready};
use crate::engine::Engine;
use crate::error::{BoxError, Error, Result};
use crate::events::{Event, EventKind, Hook, HookId, HookResult};
use crate::expiry::ExpiryDriver;
use crate::lock::{DEFAULT_LOCK_LEASE, LockGuard};
use crate::namespace::{Key, Namespace, Scope};
use crate::stats::Stats;
use crate::transfer;
use crate::ttl::WriteOptions;

/// A handle on a [`LiveDict`] that does not keep it alive; see [`LiveDict::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakLiveDict {
    inner: std::sync::Weak<Inner>,
    scope: Option<Arc<Scope>>,
}

impl WeakLiveDict {
    /// The store, if it is still alive.
    pub fn upgrade(&self) -> Option<LiveDict> {
        self.inner.upgrade().map(|inner| LiveDict {
            inner,
            scope: self.scope.clone(),
        })
    }
}

/// A living dictionary: a key-value store whose values expire, with the dictionary API of Python's
/// `dict` and the atomic operations of Redis.
///
/// Cloning is cheap and gives another handle on the same store. The store stops its background
/// work when the last handle is dropped or [`close`](Self::close) is called.
///
/// Reads that count as an *access* (renewing a sliding TTL and the last-access time) are `get` and
/// its forms (`get_bytes`, `require`, `get_or`, `get_many`) and writes; `peek`, `contains`, `len`,
/// `keys`, `values`, `items` and `ttl` leave entries as they were.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::LiveDict;
///
/// let store = LiveDict::new();
/// store.set("greeting", &"hello")?;
/// store.set_with("token", &42u32, Duration::from_secs(60))?;
/// assert_eq!(store.get::<String>("greeting")?.as_deref(), Some("hello"));
/// assert_eq!(store.incr("visits", 1)?, 1);
/// assert_eq!(store.len()?, 3);
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone)]
pub struct LiveDict {
    inner: Arc<Inner>,
    /// The namespace this handle is bound to, if any.
    scope: Option<Arc<Scope>>,
}

struct Inner {
    engine: Arc<Engine>,
    backend: Arc<dyn Backend>,
    driver: Mutex<Option<ExpiryDriver>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.engine.close();
        self.engine.events.begin_close();
        if let Some(mut d) = self.driver.lock().take() {
            d.stop();
        }
        self.engine.events.shutdown();
    }
}

impl fmt::Debug for LiveDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveDict")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Default for LiveDict {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveDict {
    /// A store with every default: in memory, no default TTL, JSON.
    ///
    /// # Panics
    /// If the operating system refuses to start the expiry thread; use
    /// [`builder`](Self::builder) to handle that as an error.
    pub fn new() -> Self {
        Builder::new()
            .build()
            .expect("cannot start the livedict expiry thread")
    }

    /// A [`Builder`] to configure a store.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A weak handle on this store, which does not keep it alive: what a hook that uses its own
    /// store should capture (a strong handle inside a hook would keep the store, its threads and
    /// its files alive for good).
    ///
    /// # Examples
    /// ```
    /// use livedict::{EventKind, LiveDict};
    ///
    /// let store = LiveDict::new();
    /// let weak = store.downgrade();
    /// store.on(EventKind::Set, move |e| {
    ///     if let Some(store) = weak.upgrade() && e.key() != "audit" {
    ///         store.incr("audit", 1)?;
    ///     }
    ///     Ok(())
    /// })?;
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn downgrade(&self) -> WeakLiveDict {
        WeakLiveDict {
            inner: Arc::downgrade(&self.inner),
            scope: self.scope.clone(),
        }
    }

    pub(crate) fn from_parts(
        engine: Arc<Engine>,
        backend: Arc<dyn Backend>,
        driver: Option<ExpiryDriver>,
    ) -> LiveDict {
        LiveDict {
            inner: Arc::new(Inner {
                engine,
                backend,
                driver: Mutex::new(driver),
            }),
            scope: None,
        }
    }

    #[inline]
    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The operations of this store, run with [`run_ready`].
    #[inline]
    pub(crate) fn dict(&self) -> Dict<'_, SyncPort<'_>> {
        Dict {
            engine: &self.inner.engine,
            port: SyncPort {
                backend: &*self.inner.backend,
            },
            scope: self.scope.as_deref(),
        }
    }

    // ---- namespaces -----------------------------------------------------------------------------

    /// A handle on the keys under `namespace` bound with `params`: the whole dictionary API,
    /// with keys relative to the bound prefix (`user:{id}` bound to `1`: `name` is
    /// `user:1:name`), and the namespace's TTL as default. On a namespace handle, the new
    /// prefix is appended to this one's. See [`Namespace`] for an example.
    ///
    /// # Errors
    /// [`Error::Namespace`] naming a missing, unknown, repeated or empty parameter;
    /// [`Error::PermissionDenied`] if the access policy refuses
    /// [`Operation::Namespace`](crate::Operation::Namespace) on the bound prefix.
    pub fn namespace(&self, namespace: &Namespace, params: &[(&str, &str)]) -> Result<LiveDict> {
        let scope = self.dict().bind(namespace, Binding::Params(params))?;
        Ok(self.with_scope(scope))
    }

    /// [`namespace`](Self::namespace) for a template of exactly one parameter.
    ///
    /// # Errors
    /// As [`namespace`](Self::namespace); [`Error::Namespace`] if the template does not have
    /// exactly one parameter.
    pub fn namespace_one(&self, namespace: &Namespace, value: &str) -> Result<LiveDict> {
        let scope = self.dict().bind(namespace, Binding::One(value))?;
        Ok(self.with_scope(scope))
    }

    fn with_scope(&self, scope: Arc<Scope>) -> LiveDict {
        LiveDict {
            inner: self.inner.clone(),
            scope: Some(scope),
        }
    }

    /// The prefix of this handle's namespace, with its trailing separator (`""` for the store).
    pub fn prefix(&self) -> &str {
        self.dict().prefix()
    }

    /// The value of the typed key `key` (declared with [`Namespace::key`]), or its default when
    /// missing. See [`Key`] for an example.
    ///
    /// # Errors
    /// As [`get`](Self::get); [`Error::AccessDenied`] for a password key.
    pub fn get_key<T: DeserializeOwned + Clone>(&self, key: &Key<T>) -> Result<Option<T>> {
        run_ready(self.dict().get_key(key))
    }

    /// Stores `value` under the typed key `key`, with its TTL, secrecy or password hashing.
    ///
    /// # Errors
    /// As [`set_with`](Self::set_with); [`Error::Encode`] for a password key whose value is not a
    /// string.
    pub fn set_key<T: Serialize>(&self, key: &Key<T>, value: &T) -> Result<()> {
        let dict = self.dict();
        run_ready(dict.write_key(dict.prepare_key(key, value)))
    }

    // ---- reading ------------------------------------------------------------------------------

    /// The value under `key`, or `None` if it is missing or expired. Counts as an access.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Decode`] if the value is not a `T`; [`Error::Format`] if
    /// the stored bytes are not a livedict value; [`Error::Backend`].
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// store.set("n", &5)?;
    /// assert_eq!(store.get::<i64>("n")?, Some(5));
    /// assert_eq!(store.get::<i64>("missing")?, None);
    /// assert!(store.get::<String>("n").is_err()); // wrong type
    /// # Ok::<(), livedict::Error>(())
    /// ```
    #[inline]
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.dict().get_ready(key, ReadMode::Touch)
    }

    /// Raw bytes stored with [`set_bytes`](Self::set_bytes), sharing the stored buffer.
    ///
    /// # Errors
    /// As [`get`](Self::get); [`Error::Decode`] if the value is a typed value.
    #[inline]
    pub fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        self.dict().get_bytes_ready(key)
    }

    /// The value under `key` without counting as an access: a sliding deadline is not renewed.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn peek<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.dict().get_ready(key, ReadMode::Peek)
    }

    /// The value under `key`, which must exist.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] if missing or expired; otherwise as [`get`](Self::get).
    pub fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        run_ready(self.dict().require(key))
    }

    /// The value under `key`, or `default` if missing or expired.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The values under `keys`, in order, `None` for missing ones. Counts as an access of each.
    ///
    /// # Errors
    /// As [`get`](Self::get), for any of the keys.
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        run_ready(self.dict().get_many(keys))
    }

    /// Whether a live value is stored under `key` (not an access).
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub fn contains(&self, key: &str) -> Result<bool> {
        run_ready(self.dict().contains(key))
    }

    /// The number of live entries.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn len(&self) -> Result<usize> {
        run_ready(self.dict().len())
    }

    /// Whether there are no live entries.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The keys of all live entries, in no particular order.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn keys(&self) -> Result<Vec<String>> {
        run_ready(self.dict().keys())
    }

    /// The values of all live entries, in no particular order.
    ///
    /// # Errors
    /// [`Error::Decode`] if any value is not a `T`; [`Error::Backend`].
    pub fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.iter()?.map(|r| r.map(|(_, v)| v)).collect()
    }

    /// All live entries as pairs, in no particular order.
    ///
    /// # Errors
    /// [`Error::Decode`] if any value is not a `T`; [`Error::Backend`].
    pub fn items<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        run_ready(self.dict().items())
    }

    /// An iterator over a snapshot of the live entries, decoding each value as it is reached (so
    /// one undecodable value is one `Err` item, not the end of the iteration).
    ///
    /// # Errors
    /// [`Error::Backend`] while taking the snapshot.
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// store.set("a", &1)?;
    /// store.set("b", &2)?;
    /// let mut total = 0;
    /// for item in store.iter::<i32>()? {
    ///     let (_key, value) = item?;
    ///     total += value;
    /// }
    /// assert_eq!(total, 3);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn iter<T: DeserializeOwned>(
        &self,
    ) -> Result<impl Iterator<Item = Result<(String, T)>> + use<T>> {
        let entries = run_ready(self.dict().entries())?;
        let engine = self.inner.engine.clone();
        let scope = self.scope.clone();
        Ok(entries
            .into_iter()
            .map(move |e| Dict::<SyncPort<'_>>::decode_entry(&engine, scope.as_deref(), e)))
    }

    /// The remaining life of `key`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use livedict::{KeyTtl, LiveDict};
    /// # let store = LiveDict::new();
    /// store.set_with("k", &1, Duration::from_secs(30))?;
    /// assert!(matches!(store.ttl("k")?, KeyTtl::Remaining(d) if d <= Duration::from_secs(30)));
    /// store.persist("k")?;
    /// assert_eq!(store.ttl("k")?, KeyTtl::Never);
    /// assert_eq!(store.ttl("nope")?, KeyTtl::Missing);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn ttl(&self, key: &str) -> Result<KeyTtl> {
        run_ready(self.dict().ttl(key))
    }

    // ---- writing ------------------------------------------------------------------------------

    /// Stores `value` under `key` with the store's default TTL, replacing any previous value and
    /// its TTL.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::Encode`], [`Error::ValueTooLarge`] (nothing is written);
    /// [`Error::Backend`].
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.set_with(key, value, WriteOptions::new())
    }

    /// Stores `value` with a TTL or other [`WriteOptions`] (a [`Duration`] or [`Ttl`](crate::Ttl)
    /// converts).
    ///
    /// # Errors
    /// As [`set`](Self::set), plus [`Error::InvalidTtl`].
    pub fn set_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        let dict = self.dict();
        dict.write_prepared_ready(dict.prepare_set(key, value, options.into()))
    }

    /// Stores raw bytes (no codec) with the default TTL.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    #[inline]
    pub fn set_bytes(&self, key: &str, value: &[u8]) -> Result<()> {
        self.set_bytes_with(key, value, WriteOptions::new())
    }

    /// Stores raw bytes with options.
    ///
    /// # Errors
    /// As [`set_with`](Self::set_with).
    pub fn set_bytes_with(
        &self,
        key: &str,
        value: &[u8],
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        let dict = self.dict();
        dict.write_prepared_ready(dict.prepare_set_bytes(key, value, options.into()))
    }

    /// Stores `value` and returns the value it replaced, atomically: of many concurrent callers,
    /// each sees the true previous value.
    ///
    /// # Errors
    /// As [`set`](Self::set); [`Error::Decode`] if the previous value is not a `T` (the new value
    /// is written all the same).
    pub fn replace<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Option<T>> {
        let dict = self.dict();
        run_ready(dict.replace_prepared(key, dict.prepare_replace(key, value)))
    }

    /// Returns the value under `key`; if there is none, stores `default` and returns it, atomically
    /// (Python's `dict.setdefault`).
    ///
    /// # Errors
    /// As [`set`](Self::set) and [`get`](Self::get).
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// assert_eq!(store.setdefault("k", 1)?, 1);
    /// assert_eq!(store.setdefault("k", 2)?, 1);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn setdefault<T: Serialize + DeserializeOwned + Send>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T> {
        run_ready(self.dict().setdefault(key, default))
    }

    /// Stores many pairs all-or-nothing (Python's `dict.update`).
    ///
    /// # Errors
    /// The first invalid key or value (nothing is written); [`Error::Backend`].
    pub fn set_many<'k, T, I>(&self, pairs: I) -> Result<()>
    where
        T: Serialize,
        I: IntoIterator<Item = (&'k str, T)>,
    {
        run_ready(self.dict().apply(Batch::of_pairs(
            self.inner.engine.clone(),
            self.scope.clone(),
            pairs,
        )?))
    }

    /// A new, empty [`Batch`] of writes for this store.
    pub fn batch(&self) -> Batch {
        self.dict().batch(self.scope.clone())
    }

    /// Applies a batch all-or-nothing.
    ///
    /// # Errors
    /// [`Error::Backend`] (nothing is applied).
    pub fn apply(&self, batch: Batch) -> Result<()> {
        run_ready(self.dict().apply(batch))
    }

    // ---- atomic read-modify-write ---------------------------------------------------------------

    /// Replaces the value under `key` with `f(old)`, atomically: concurrent updates of the key
    /// (from any thread, and for shared backends any process) are applied one after the other.
    /// `f` runs exactly once. The key keeps its TTL; a new key gets the default TTL. Returns the
    /// new value.
    ///
    /// Using this store from inside `f` is [`Error::Reentrant`].
    ///
    /// # Errors
    /// [`Error::Decode`] if the old value is not a `T`; as [`set`](Self::set) for the new one.
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// let list = store.update("list", |old: Option<Vec<u32>>| {
    ///     let mut v = old.unwrap_or_default();
    ///     v.push(1);
    ///     v
    /// })?;
    /// assert_eq!(list, vec![1]);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn update<T, F>(&self, key: &str, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnOnce(Option<T>) -> T + Send,
    {
        let new = self.try_update(key, |old| Ok::<_, std::convert::Infallible>(Some(f(old))))?;
        Ok(new.expect("the closure returned a value"))
    }

    /// Like [`update`](Self::update), but `f` may fail (nothing changes, [`Error::Aborted`]) or
    /// return `None` to delete the key. Returns the new value.
    ///
    /// # Errors
    /// [`Error::Aborted`] with `f`'s error; otherwise as [`update`](Self::update).
    pub fn try_update<T, E, F>(&self, key: &str, f: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E> + Send,
    {
        let expiry = self.dict().update_expiry();
        run_ready(self.dict().update_with(key, expiry, f))
    }

    /// Like [`try_update`](Self::try_update), with the new value written with `options` (a new
    /// TTL, for instance) instead of keeping the key's TTL.
    ///
    /// # Errors
    /// As [`try_update`](Self::try_update), plus [`Error::InvalidTtl`].
    pub fn update_with<T, E, F>(
        &self,
        key: &str,
        options: impl Into<WriteOptions>,
        f: F,
    ) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E> + Send,
    {
        let expiry = self.dict().expiry(&options.into())?;
        run_ready(self.dict().update_with(key, expiry, f))
    }

    /// Adds `delta` to the integer under `key` (a missing key counts as 0) and returns the result,
    /// atomically. The key keeps its TTL.
    ///
    /// # Errors
    /// [`Error::Decode`] if the value is not an integer; [`Error::Overflow`].
    pub fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        run_ready(self.dict().incr(key, delta))
    }

    /// Sets the fields of `patch` into the map stored under `key` (a missing key starts as an
    /// empty map), atomically; other fields are kept. The key keeps its TTL.
    ///
    /// # Errors
    /// [`Error::Encode`] if `patch` is not map-shaped; [`Error::Decode`] if the stored value is not
    /// a map.
    ///
    /// # Examples
    /// ```
    /// use serde_json::json;
    /// # let store = livedict::LiveDict::new();
    /// store.set("user", &json!({"name": "ann", "age": 30}))?;
    /// store.merge("user", &json!({"age": 31}))?;
    /// assert_eq!(store.get::<serde_json::Value>("user")?, Some(json!({"name": "ann", "age": 31})));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn merge<P: Serialize + ?Sized>(&self, key: &str, patch: &P) -> Result<()> {
        let patch = serde_json::to_value(patch).map_err(|e| Error::Encode(Box::new(e)))?;
        run_ready(self.dict().merge(key, patch))
    }

    // ---- locks --------------------------------------------------------------------------------

    /// Takes the lock on `key`, waiting up to `timeout` (real time); `None` if it is still held
    /// then. The guard releases it when dropped; the lock frees itself after
    /// [`DEFAULT_LOCK_LEASE`] if the holder dies first. On SQLite and Redis it holds across
    /// processes. Locks are advisory: they exclude other lockers, not writers of the key. See
    /// [`LockGuard`] for an example.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::PermissionDenied`]; [`Error::Backend`].
    pub fn lock(&self, key: &str, timeout: Duration) -> Result<Option<LockGuard>> {
        self.lock_with(key, timeout, DEFAULT_LOCK_LEASE)
    }

    /// [`lock`](Self::lock) with a lease of `lease`.
    ///
    /// # Errors
    /// As [`lock`](Self::lock); [`Error::InvalidTtl`] for a zero lease.
    pub fn lock_with(
        &self,
        key: &str,
        timeout: Duration,
        lease: Duration,
    ) -> Result<Option<LockGuard>> {
        let held = run_ready(self.dict().acquire_lock(key, timeout, lease))?;
        Ok(held.map(|h| LockGuard::new(self.clone(), h)))
    }

    /// The value under `key`, or else `loader`'s, stored with the default TTL and returned. Under
    /// concurrent misses of a key the loader runs once (across threads, and on SQLite and Redis
    /// across processes): the others wait and read what it stored.
    ///
    /// # Errors
    /// [`Error::Aborted`] with the loader's error (nothing is stored); as [`get`](Self::get) and
    /// [`set`](Self::set).
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// let v: u32 = store.get_or_compute("answer", || Ok::<_, std::io::Error>(42))?;
    /// assert_eq!(v, 42);
    /// let v: u32 = store.get_or_compute("answer", || -> Result<u32, std::io::Error> { unreachable!() })?;
    /// assert_eq!(v, 42);
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn get_or_compute<T, E, F>(&self, key: &str, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce() -> std::result::Result<T, E> + Send,
    {
        self.get_or_compute_with(key, WriteOptions::new(), loader)
    }

    /// [`get_or_compute`](Self::get_or_compute) storing the loaded value with `options`.
    ///
    /// # Errors
    /// As [`get_or_compute`](Self::get_or_compute).
    pub fn get_or_compute_with<T, E, F>(
        &self,
        key: &str,
        options: impl Into<WriteOptions>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce() -> std::result::Result<T, E> + Send,
    {
        run_ready(self.dict().get_or_compute(key, options.into(), || {
            std::future::ready(loader().map_err(Into::<BoxError>::into))
        }))
    }

    // ---- removing -----------------------------------------------------------------------------

    /// Removes `key`; true if a live value was there. Of two racing deletes of a key, exactly one
    /// returns true.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub fn delete(&self, key: &str) -> Result<bool> {
        Ok(run_ready(self.dict().remove(key))?.is_some())
    }

    /// Removes `key` and returns its value.
    ///
    /// # Errors
    /// As [`delete`](Self::delete); [`Error::Decode`] if the value is not a `T` (it is removed
    /// all the same).
    pub fn pop<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        run_ready(self.dict().pop(key))
    }

    /// Removes and returns some entry (which one is unspecified), or `None` if the store is empty.
    ///
    /// # Errors
    /// [`Error::Decode`] if the value is not a `T` (it is removed all the same); [`Error::Backend`].
    pub fn popitem<T: DeserializeOwned>(&self) -> Result<Option<(String, T)>> {
        run_ready(self.dict().popitem())
    }

    /// Removes every entry; returns how many live ones there were.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn clear(&self) -> Result<usize> {
        run_ready(self.dict().clear())
    }

    // ---- time to live -------------------------------------------------------------------------

    /// Gives `key` a new TTL from now (sliding only if the store slides by default; see
    /// [`expire_with`](Self::expire_with)); false if there is no live value.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`]; [`Error::Backend`].
    pub fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.expire_with(key, WriteOptions::ttl(ttl))
    }

    /// Gives `key` a new expiry from [`WriteOptions`] (for instance a sliding TTL);
    /// [`Ttl::Keep`](crate::Ttl::Keep) changes nothing.
    ///
    /// # Errors
    /// As [`expire`](Self::expire).
    pub fn expire_with(&self, key: &str, options: impl Into<WriteOptions>) -> Result<bool> {
        run_ready(self.dict().expire_with(key, options.into()))
    }

    /// Removes the deadline of `key`; false if there is no live value.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub fn persist(&self, key: &str) -> Result<bool> {
        run_ready(self.dict().persist(key))
    }

    /// Removes entries not read or written for longer than `idle`; returns how many.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a zero `idle`; [`Error::Backend`].
    pub fn cleanup_inactive(&self, idle: Duration) -> Result<usize> {
        run_ready(self.dict().cleanup_inactive(idle))
    }

    /// Removes every entry whose deadline has passed now, in the calling thread, and returns how
    /// many. The background driver does this by itself; this is for stores built with
    /// [`active_expiry(false)`](Builder::active_expiry).
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub fn sweep_expired(&self) -> Result<usize> {
        run_ready(self.dict().sweep_expired())
    }

    // ---- waiting ------------------------------------------------------------------------------

    /// Blocks until the value under `key` satisfies `predicate` (at once if it already does) and
    /// returns it, or returns `None` when `timeout` passes first. The timeout is real time, even
    /// with a manual clock. Reading here does not count as an access.
    ///
    /// # Errors
    /// As [`peek`](Self::peek).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// # let store = livedict::LiveDict::new();
    /// let writer = store.clone();
    /// let t = std::thread::spawn(move || writer.set("ready", &true));
    /// let ready = store.wait_for("ready", Duration::from_secs(5), |v: &bool| *v)?;
    /// assert_eq!(ready, Some(true));
    /// # t.join().unwrap()?;
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn wait_for<T: DeserializeOwned + Send>(
        &self,
        key: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&T) -> bool + Send,
    ) -> Result<Option<T>> {
        run_ready(self.dict().wait_for(key, timeout, &mut predicate))
    }

    // ---- secrets, passwords and keys ----------------------------------------------------------

    /// Stores `password` under `key` as an argon2id hash (PHC string, OWASP parameters), never
    /// the password itself; encrypted too if the store encrypts every value. `get` on the key is
    /// [`Error::AccessDenied`]; check candidates with [`verify_password`](Self::verify_password).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// store.set_password("user:1:password", "correct horse")?;
    /// assert_eq!(store.verify_password("user:1:password", "correct horse")?, Some(true));
    /// assert_eq!(store.verify_password("user:1:password", "wrong")?, Some(false));
    /// assert_eq!(store.verify_password("user:2:password", "x")?, None);
    /// assert!(matches!(store.get::<String>("user:1:password"), Err(livedict::Error::AccessDenied(_))));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn set_password(&self, key: &str, password: &str) -> Result<()> {
        self.set_password_with(key, password, WriteOptions::new())
    }

    /// [`set_password`](Self::set_password) with write options (a TTL, say).
    ///
    /// # Errors
    /// As [`set_with`](Self::set_with).
    pub fn set_password_with(
        &self,
        key: &str,
        password: &str,
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        run_ready(self.dict().set_password(
            key,
            zeroize::Zeroizing::new(password.to_owned()),
            options.into(),
        ))
    }

    /// Whether `password` matches the password key `key`: `Some(true)`, `Some(false)`, or `None`
    /// when the key is missing. Not an access.
    ///
    /// # Errors
    /// [`Error::Decode`] if `key` holds something other than a password.
    pub fn verify_password(&self, key: &str, password: &str) -> Result<Option<bool>> {
        run_ready(self.dict().verify_password(key, password))
    }

    /// The stored argon2id hash (PHC string) of a password key: the explicit way to reveal it.
    ///
    /// # Errors
    /// [`Error::Decode`] if `key` holds something other than a password.
    pub fn password_hash(&self, key: &str) -> Result<Option<String>> {
        run_ready(self.dict().password_hash(key))
    }

    /// Adds the keys of `keys` to the store's keyring; new writes use the newest (highest id).
    ///
    /// # Errors
    /// [`Error::Crypto`] if the store has no keyring or an id is already taken.
    pub fn rotate_key(&self, keys: Keyring) -> Result<()> {
        self.engine().rotate_key(keys)
    }

    /// Re-encrypts every entry that uses an older key (and, in a store that encrypts every value,
    /// encrypts plain ones) with the newest key, in batches, calling `progress(done, total)` after
    /// each batch. Each entry is rewritten atomically, keeping its value and deadline, and without
    /// events; safe to interrupt and run again. Returns how many entries were rewritten.
    ///
    /// # Errors
    /// [`Error::Crypto`] if the store has no keyring, or an entry cannot be decrypted;
    /// [`Error::Backend`].
    ///
    /// # Examples
    /// ```
    /// use livedict::{Keyring, LiveDict};
    ///
    /// let store = LiveDict::builder().keyring(Keyring::generate(1)).build()?;
    /// store.set("a", &1)?;
    /// store.rotate_key(Keyring::generate(2))?;
    /// assert_eq!(store.rekey(|done, total| println!("{done}/{total}"))?, 1);
    /// store.retire_key(1)?; // nothing needs key 1 any more
    /// assert_eq!(store.get::<i32>("a")?, Some(1));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn rekey(&self, mut progress: impl FnMut(usize, usize) + Send) -> Result<usize> {
        run_ready(self.dict().rekey(&mut progress))
    }

    /// Removes key `id` from the keyring, refusing while any entry still needs it (run
    /// [`rekey`](Self::rekey) first) or if it is the newest key.
    ///
    /// # Errors
    /// [`Error::Crypto`] naming how many entries still use the key.
    pub fn retire_key(&self, id: u32) -> Result<()> {
        run_ready(self.dict().retire_key(id))
    }

    // ---- moving whole stores ------------------------------------------------------------------

    /// Writes every live entry to `writer` as JSON lines (see the format below) and returns how
    /// many. Typed values are written as JSON, raw bytes in base64, with the time left of each.
    ///
    /// ```text
    /// {"key":"user:1","ttl_ms":59000,"value":{"name":"ann"}}
    /// {"key":"blob","ttl_ms":null,"bytes":"AAEC"}
    /// ```
    ///
    /// A sliding TTL is exported as the time left, and imported as a fixed TTL.
    ///
    /// # Errors
    /// [`Error::Backend`] for read or write errors.
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// store.set("a", &1)?;
    /// let mut out = Vec::new();
    /// assert_eq!(store.export(&mut out)?, 1);
    /// let copy = livedict::LiveDict::new();
    /// assert_eq!(copy.import(&out[..])?, 1);
    /// assert_eq!(copy.get::<i32>("a")?, Some(1));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn export(&self, writer: impl std::io::Write) -> Result<usize> {
        let entries = run_ready(self.dict().export_entries())?;
        transfer::write_lines(&entries, writer)
    }

    /// Reads entries written by [`export`](Self::export) and stores them all-or-nothing (typed
    /// values with this store's codec); returns how many.
    ///
    /// # Errors
    /// [`Error::Decode`] naming the first bad line, [`Error::InvalidKey`],
    /// [`Error::ValueTooLarge`]: nothing is stored. [`Error::Backend`].
    pub fn import(&self, reader: impl std::io::BufRead) -> Result<usize> {
        let ops = transfer::parse_lines(self.engine(), reader)?;
        run_ready(self.dict().import_ops(ops))
    }

    /// Copies every live entry into `target` (any backend), all-or-nothing, keeping the stored
    /// bytes as they are and the time left of each; returns how many.
    ///
    /// # Errors
    /// [`Error::ValueTooLarge`] if a value exceeds the target's limit (nothing is copied);
    /// [`Error::Backend`].
    ///
    /// # Examples
    /// ```
    /// # let store = livedict::LiveDict::new();
    /// store.set("a", &1)?;
    /// let other = livedict::LiveDict::new();
    /// assert_eq!(store.copy_to(&other)?, 1);
    /// assert_eq!(other.get::<i32>("a")?, Some(1));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn copy_to(&self, target: &LiveDict) -> Result<usize> {
        let entries = run_ready(self.dict().export_entries())?;
        let ops = transfer::copy_ops(target.engine(), entries)?;
        run_ready(target.dict().import_ops(ops))
    }

    // ---- the store ----------------------------------------------------------------------------

    /// What the store has done so far.
    pub fn stats(&self) -> Stats {
        self.engine().stats()
    }

    // ---- hooks --------------------------------------------------------------------------------

    /// Registers a store-wide hook for events of `kinds` (an [`EventKind`] or several) and returns
    /// its id. The hook runs on the store's hook workers, never on the caller's thread. A hook
    /// that uses this store should capture a [`downgrade`](Self::downgrade)d handle: a strong one
    /// would keep the store alive for good.
    ///
    /// # Errors
    /// [`Error::Backend`] if the hook threads cannot be started.
    ///
    /// # Examples
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use livedict::{EventKind, LiveDict};
    ///
    /// let store = LiveDict::new();
    /// let (tx, rx) = mpsc::channel();
    /// store.on(EventKind::Expire, move |e| Ok(tx.send(e.value::<String>()?)?))?;
    /// store.set_with("otp", &"1234", Duration::from_millis(10))?;
    /// assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Some("1234".to_string()));
    /// # Ok::<(), livedict::Error>(())
    /// ```
    pub fn on<F>(&self, kinds: impl IntoIterator<Item = EventKind>, f: F) -> Result<HookId>
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        self.hook(Hook::new(kinds, f))
    }

    /// Registers a configured [`Hook`] (key or prefix filter, timeout, command hooks).
    ///
    /// # Errors
    /// [`Error::Backend`] if the hook threads cannot be started.
    pub fn hook(&self, hook: Hook) -> Result<HookId> {
        self.dict().register_hook(hook)
    }

    /// Re-enables a disabled hook; false if no hook has this id.
    pub fn enable_hook(&self, id: HookId) -> bool {
        self.dict().set_hook_enabled(id, true)
    }

    /// Disables a hook: it hears of no event until enabled again (events already queued for it
    /// are skipped too); false if no hook has this id.
    pub fn disable_hook(&self, id: HookId) -> bool {
        self.dict().set_hook_enabled(id, false)
    }

    /// Removes a hook for good; false if no hook has this id.
    pub fn unregister_hook(&self, id: HookId) -> bool {
        self.dict().unregister_hook(id)
    }

    /// Stops the store: background work ends, and every later call on any handle is
    /// [`Error::Closed`]. Also done when the last handle is dropped.
    pub fn close(&self) {
        self.engine().close();
        self.engine().events.begin_close();
        if let Some(mut d) = self.inner.driver.lock().take() {
            d.stop();
        }
        self.engine().events.shutdown();
    }
}

#[cfg(test)]
mod driver_tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};

    use super::LiveDict;

    /// A stream of writes with deadlines later than the one planned does not keep the memory
    /// backend's expiry driver awake: it makes a round when something falls due or once a
    /// second. (Before, a write landing during a round kicked it into another; each round read-
    /// locked every shard twice, and under a stream of writes the driver never slept: 130 rounds
    /// while one thread inserted 100,000 keys in a release build.)
    #[test]
    fn a_stream_of_later_deadlines_does_not_keep_the_memory_driver_awake() -> crate::Result<()> {
        let store = LiveDict::new();
        let rounds = || store.inner.engine.expiry.rounds.load(SeqCst);
        let ttl = Duration::from_secs(3600);
        // From the first write on: it finds nothing planned, and kicks.
        let (before, start) = (rounds(), Instant::now());
        std::thread::scope(|s| {
            for t in 0..4 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..50_000 {
                        store
                            .set_bytes_with(&format!("k{t}:{i}"), b"v", ttl)
                            .expect("set");
                    }
                });
            }
        });
        let (during, took) = (rounds() - before, start.elapsed());
        assert!(
            during <= 3 + took.as_secs(),
            "{during} rounds of the driver during {took:?} of writes"
        );
        Ok(())
    }

    /// Waits until the driver of `store` sleeps after a round that planned a wake-up, with its
    /// next poll about a second away.
    fn wait_for_a_planned_sleep(store: &LiveDict) {
        let expiry = &store.inner.engine.expiry;
        let rounds = || expiry.rounds.load(SeqCst);
        let (first, started) = (rounds(), Instant::now());
        loop {
            assert!(started.elapsed() < Duration::from_secs(10), "no plan");
            let r = rounds();
            if r != first && expiry.planned() != u64::MAX {
                // A round takes microseconds: one that began before this look is over by now.
                std::thread::sleep(Duration::from_millis(20));
                if rounds() == r && expiry.planned() != u64::MAX {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A write whose deadline is earlier than the planned one wakes the driver in time: the entry
    /// is removed, without a read, as soon as a manual clock passes its deadline, not at the
    /// driver's next poll (a second on) or its planned wake-up (an hour on).
    #[test]
    fn an_earlier_deadline_written_while_the_driver_sleeps_is_swept_on_time() -> crate::Result<()> {
        let (clock, manual) = crate::Clock::manual();
        let store = LiveDict::builder().clock(clock).build()?;
        store.set_bytes_with("late", b"v", Duration::from_secs(3600))?;
        wait_for_a_planned_sleep(&store);
        let written = Instant::now();
        store.set_bytes_with("soon", b"v", Duration::from_secs(10))?;
        manual.advance(Duration::from_secs(11));
        while store.stats().expirations == 0 {
            assert!(
                written.elapsed() < Duration::from_millis(500),
                "not swept before the driver's one-second poll"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(store.len()?, 1);
        Ok(())
    }

    /// The same on the system clock: the driver lowers its planned wake-up to the reported
    /// deadline and sleeps until then.
    #[test]
    fn an_earlier_deadline_on_the_system_clock_is_swept_on_time() -> crate::Result<()> {
        let store = LiveDict::new();
        store.set_bytes_with("late", b"v", Duration::from_secs(3600))?;
        wait_for_a_planned_sleep(&store);
        let written = Instant::now();
        store.set_bytes_with("soon", b"v", Duration::from_millis(50))?;
        while store.stats().expirations == 0 {
            assert!(
                written.elapsed() < Duration::from_millis(500),
                "not swept before the driver's one-second poll"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Deadlines are whole milliseconds of the wall clock: up to one before `written + 50`.
        assert!(
            written.elapsed() >= Duration::from_millis(48),
            "swept early"
        );
        assert_eq!(store.len()?, 1);
        Ok(())
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};

    use super::LiveDict;
    use crate::{RedisBackend, RedisOptions};

    /// A stream of writes does not keep the expiry driver of a shared backend awake: it wakes to
    /// poll (every 100 ms) and when a write's deadline is earlier than planned, not once per
    /// write. (Before, every write landing during one of its rounds, each two round trips to the
    /// server, kicked it into another: about one round per `set`, each a sweep script and a
    /// next-deadline script; the old code does 238 rounds here.) Needs the test server
    /// (`LIVEDICT_TEST_REDIS_URL`, which `scripts/test` sets).
    #[test]
    fn a_stream_of_writes_does_not_keep_a_shared_backends_driver_awake() -> crate::Result<()> {
        let url = std::env::var("LIVEDICT_TEST_REDIS_URL")
            .expect("LIVEDICT_TEST_REDIS_URL is not set: this test needs a Redis server");
        let prefix = format!("driver-rounds-{}", std::process::id());
        let store = LiveDict::builder()
            .backend(RedisBackend::open_with(
                &url,
                RedisOptions::new().prefix(&prefix),
            )?)
            .build()?;
        let rounds = || store.inner.engine.expiry.rounds.load(SeqCst);
        let ttl = Duration::from_secs(3600);
        store.set_with("first", &0, ttl)?;
        let (before, start) = (rounds(), Instant::now());
        for i in 0..500 {
            store.set_with(&format!("k{i}"), &i, ttl)?;
        }
        let (during, took) = (rounds() - before, start.elapsed());
        store.clear()?;
        let polls = took.as_millis() as u64 / 100;
        assert!(
            during <= 3 + 2 * polls,
            "{during} rounds of the driver during {took:?} of writes"
        );
        Ok(())
    }

    /// A due entry the sweep cannot take (held by an update's lock, here left by a process that
    /// "died" holding it) does not make the driver spin until the lock's lease ends: it looks
    /// again after pauses growing to 10 ms (the old code made a round every few hundred
    /// microseconds, each two scripts: 2,312 here), and sweeps the entry, with its event, once
    /// the lock is gone.
    #[test]
    fn a_due_entry_under_a_dead_processs_lock_does_not_make_the_driver_spin() -> crate::Result<()> {
        let url = std::env::var("LIVEDICT_TEST_REDIS_URL")
            .expect("LIVEDICT_TEST_REDIS_URL is not set: this test needs a Redis server");
        let prefix = format!("driver-stuck-{}", std::process::id());
        let backend = RedisBackend::open_with(&url, RedisOptions::new().prefix(&prefix))?;
        let lock = backend.redis_key("k").replacen(":k:", ":lock:", 1);
        let store = LiveDict::builder().backend(backend).build()?;
        let (tx, expired) = std::sync::mpsc::channel();
        store.on(crate::EventKind::Expire, move |e| {
            Ok(tx.send(e.value::<i32>()?)?)
        })?;
        let mut conn = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to the test server");
        store.set_with("k", &1, Duration::from_millis(50))?;
        let _: () = redis::cmd("SET")
            .arg(&lock)
            .arg("a-process-that-died")
            .arg("PX")
            .arg(1500)
            .query(&mut conn)
            .expect("take the lock");
        std::thread::sleep(Duration::from_millis(100)); // k is due, under the lock
        let rounds = || store.inner.engine.expiry.rounds.load(SeqCst);
        let before = rounds();
        std::thread::sleep(Duration::from_millis(600));
        let during = rounds() - before;
        assert!(during <= 100, "{during} rounds of the driver in 600 ms");
        assert_eq!(
            expired.recv_timeout(Duration::from_secs(10)).ok(),
            Some(Some(1)),
            "swept with its value once the lock is gone"
        );
        store.clear()?;
        Ok(())
    }
}
