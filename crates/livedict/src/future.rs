//! The asynchronous front-end, [`AsyncLiveDict`] (feature `async`, tokio).
//!
//! Every method is the same operation as [`LiveDict`](crate::LiveDict)'s method of the same name,
//! run over the async port instead of the sync one (see the crate's `dict` module): there is no
//! second copy of the store's logic here.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{AsyncBackend, KeyTtl, Written};
use crate::batch::Batch;
use crate::crypto::Keyring;
use crate::dict::{AsyncPort, Binding, Dict, PreparedWrite};
use crate::engine::Engine;
use crate::error::{BoxError, Error, Result};
use crate::events::{Event, EventKind, Hook, HookId, HookResult};
use crate::expiry::ExpiryDriver;
use crate::lock::{AsyncLockGuard, DEFAULT_LOCK_LEASE};
use crate::namespace::{Key, Namespace, Scope};
use crate::stats::Stats;
use crate::transfer;
use crate::ttl::WriteOptions;

/// A handle on an [`AsyncLiveDict`] that does not keep it alive; see
/// [`AsyncLiveDict::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakAsyncLiveDict {
    inner: std::sync::Weak<Inner>,
    scope: Option<Arc<Scope>>,
}

impl WeakAsyncLiveDict {
    /// The store, if it is still alive.
    pub fn upgrade(&self) -> Option<AsyncLiveDict> {
        self.inner.upgrade().map(|inner| AsyncLiveDict {
            inner,
            scope: self.scope.clone(),
        })
    }
}

/// A living dictionary with an async API, for tokio: the same store as
/// [`LiveDict`](crate::LiveDict), with the same method names, each returning a future.
///
/// Built with [`Builder::build_async`](crate::Builder::build_async) inside a runtime; its expiry
/// driver runs as a task there. The memory backend answers without blocking or spawning; SQLite
/// runs on tokio's blocking threads; Redis uses native async I/O over one multiplexed,
/// reconnecting connection, so many tasks share it at once.
///
/// Cloning is cheap and gives another handle on the same store. Dropping the last handle, inside
/// or outside a runtime, never blocks: the expiry task is told to stop and hook workers are shut
/// down on a thread of their own. [`close`](Self::close) does it and waits.
///
/// A future dropped before it completes changes nothing if it had not reached its backend yet;
/// one dropped while its backend works may have applied its change (as with any request already
/// sent to a server). An `update` closure runs at most once either way. On SQLite and Redis the
/// writes (`set` and its forms, `replace`, `setdefault`, `apply`, `set_many`, `incr`, `delete`,
/// `pop`, `clear`, `expire`, `persist`, `cleanup_inactive`, `sweep_expired`) and `lock` run as
/// tasks of their own, on the runtime that polls the caller, which a dropped future leaves to
/// finish: once polled, such a call is done whole even if its future is dropped (a write not yet
/// sent is still made, after the caller gave up), with its events, and a lock taken after the
/// caller gave up is released (a `lock` that still waits stops at its next attempt). `update` and its forms,
/// `merge`, `popitem`, `get_or_compute` and the password calls run in the caller's task: one of
/// them dropped while its backend works may apply its change without its events.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> livedict::Result<()> {
/// use std::time::Duration;
/// use livedict::LiveDict;
///
/// let store = LiveDict::builder().build_async()?;
/// store.set_with("token", &42u32, Duration::from_secs(60)).await?;
/// assert_eq!(store.get::<u32>("token").await?, Some(42));
/// assert_eq!(store.incr("visits", 1).await?, 1);
///
/// // Many tasks at once.
/// let tasks: Vec<_> = (0..64)
///     .map(|_| {
///         let store = store.clone();
///         tokio::spawn(async move { store.incr("hits", 1).await })
///     })
///     .collect();
/// for t in tasks {
///     t.await.unwrap()?;
/// }
/// assert_eq!(store.get::<i64>("hits").await?, Some(64));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncLiveDict {
    inner: Arc<Inner>,
    /// The namespace this handle is bound to, if any.
    scope: Option<Arc<Scope>>,
}

struct Inner {
    engine: Arc<Engine>,
    backend: Arc<dyn AsyncBackend>,
    driver: Mutex<Option<ExpiryDriver>>,
    runtime: tokio::runtime::Handle,
}

/// Sets its flag when dropped (a caller that gave up).
struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.engine.close();
        self.engine.events.begin_close();
        if let Some(mut d) = self.driver.lock().take() {
            d.stop();
        }
        // Delivering what is queued may take up to the hook grace period: never inside a
        // runtime's worker.
        if tokio::runtime::Handle::try_current().is_ok() {
            let engine = self.engine.clone();
            let spawned = std::thread::Builder::new()
                .name("livedict-close".into())
                .spawn(move || engine.events.shutdown());
            if spawned.is_err() {
                tracing::warn!("livedict: cannot start a thread to stop the hook workers");
            }
        } else {
            self.engine.events.shutdown();
        }
    }
}

impl fmt::Debug for AsyncLiveDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLiveDict")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

/// `$op`, an expression over `$dict` (this handle's `Dict`), `$store: &AsyncLiveDict` and the
/// listed `&str` arguments, run whole: here on a backend whose operations complete when called
/// (memory), else as a task of its own ([`AsyncLiveDict::detach`]), so that dropping the
/// caller's future cannot separate a write that reached the backend from its events,
/// statistics and hook bookkeeping.
macro_rules! whole {
    ($self:ident, [$($arg:ident),*], |$store:ident, $dict:ident| $op:expr) => {{
        if $self.completes_inline() {
            let ($store, $dict) = ($self, $self.dict());
            let _ = $store;
            $op.await
        } else {
            let owned = $self.clone();
            $(let $arg = $arg.to_owned();)*
            $self
                .detach(async move {
                    let ($store, $dict) = (&owned, owned.dict());
                    let _ = $store;
                    $(let $arg: &str = &$arg;)*
                    // Boxed as `dyn Future + Send`: rustc cannot prove some of these futures
                    // `Send` for every lifetime otherwise (rust-lang/rust#100013).
                    let op: crate::backend::BoxFuture<'_, _> = Box::pin($op);
                    op.await
                })
                .await
        }
    }};
}

impl AsyncLiveDict {
    /// A weak handle on this store, which does not keep it alive: what a hook that uses its own
    /// store should capture (a strong handle inside a hook would keep the store, its hook
    /// threads and its expiry task alive for good); see
    /// [`LiveDict::downgrade`](crate::LiveDict::downgrade).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> livedict::Result<()> {
    /// use livedict::EventKind;
    ///
    /// let store = livedict::LiveDict::builder().build_async()?;
    /// let weak = store.downgrade();
    /// store.on_async(EventKind::Set, move |e| {
    ///     let weak = weak.clone();
    ///     async move {
    ///         if let Some(store) = weak.upgrade() && e.key() != "audit" {
    ///             store.incr("audit", 1).await?;
    ///         }
    ///         Ok(())
    ///     }
    /// })?;
    /// let weak = store.downgrade();
    /// drop(store);
    /// assert!(weak.upgrade().is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub fn downgrade(&self) -> WeakAsyncLiveDict {
        WeakAsyncLiveDict {
            inner: Arc::downgrade(&self.inner),
            scope: self.scope.clone(),
        }
    }

    pub(crate) fn from_parts(
        engine: Arc<Engine>,
        backend: Arc<dyn AsyncBackend>,
        driver: Option<ExpiryDriver>,
        runtime: tokio::runtime::Handle,
    ) -> AsyncLiveDict {
        AsyncLiveDict {
            inner: Arc::new(Inner {
                engine,
                backend,
                driver: Mutex::new(driver),
                runtime,
            }),
            scope: None,
        }
    }

    #[inline]
    pub(crate) fn dict(&self) -> Dict<'_, AsyncPort<'_>> {
        Dict {
            engine: &self.inner.engine,
            port: AsyncPort {
                backend: &*self.inner.backend,
            },
            scope: self.scope.as_deref(),
        }
    }

    // ---- namespaces -----------------------------------------------------------------------------

    /// A handle on the keys under `namespace` bound with `params`; see
    /// [`LiveDict::namespace`](crate::LiveDict::namespace).
    ///
    /// # Errors
    /// As [`LiveDict::namespace`](crate::LiveDict::namespace).
    pub fn namespace(
        &self,
        namespace: &Namespace,
        params: &[(&str, &str)],
    ) -> Result<AsyncLiveDict> {
        let scope = self.dict().bind(namespace, Binding::Params(params))?;
        Ok(self.with_scope(scope))
    }

    /// [`namespace`](Self::namespace) for a template of exactly one parameter.
    ///
    /// # Errors
    /// As [`LiveDict::namespace_one`](crate::LiveDict::namespace_one).
    pub fn namespace_one(&self, namespace: &Namespace, value: &str) -> Result<AsyncLiveDict> {
        let scope = self.dict().bind(namespace, Binding::One(value))?;
        Ok(self.with_scope(scope))
    }

    fn with_scope(&self, scope: Arc<Scope>) -> AsyncLiveDict {
        AsyncLiveDict {
            inner: self.inner.clone(),
            scope: Some(scope),
        }
    }

    /// The prefix of this handle's namespace, with its trailing separator (`""` for the store).
    pub fn prefix(&self) -> &str {
        self.dict().prefix()
    }

    /// The value of the typed key `key`, or its default; see
    /// [`LiveDict::get_key`](crate::LiveDict::get_key).
    ///
    /// # Errors
    /// As [`LiveDict::get_key`](crate::LiveDict::get_key).
    pub async fn get_key<T: DeserializeOwned + Clone>(&self, key: &Key<T>) -> Result<Option<T>> {
        self.dict().get_key(key).await
    }

    /// Stores `value` under the typed key `key`; see [`LiveDict::set_key`](crate::LiveDict::set_key).
    ///
    /// # Errors
    /// As [`LiveDict::set_key`](crate::LiveDict::set_key).
    pub fn set_key<'a, T: Serialize>(
        &'a self,
        key: &'a Key<T>,
        value: &T,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let dict = self.dict();
        let prepared = dict.prepare_key(key, value);
        async move { dict.write_key(prepared).await }
    }

    #[inline]
    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    // ---- reading ------------------------------------------------------------------------------

    /// The value under `key`; see [`LiveDict::get`](crate::LiveDict::get).
    ///
    /// # Errors
    /// As [`LiveDict::get`](crate::LiveDict::get).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.dict().get(key).await
    }

    /// Raw bytes; see [`LiveDict::get_bytes`](crate::LiveDict::get_bytes).
    ///
    /// # Errors
    /// As [`LiveDict::get_bytes`](crate::LiveDict::get_bytes).
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        self.dict().get_bytes(key).await
    }

    /// The value without an access; see [`LiveDict::peek`](crate::LiveDict::peek).
    ///
    /// # Errors
    /// As [`LiveDict::get`](crate::LiveDict::get).
    pub async fn peek<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.dict().peek(key).await
    }

    /// The value, which must exist; see [`LiveDict::require`](crate::LiveDict::require).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; otherwise as [`LiveDict::get`](crate::LiveDict::get).
    pub async fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        self.dict().require(key).await
    }

    /// The value or `default`; see [`LiveDict::get_or`](crate::LiveDict::get_or).
    ///
    /// # Errors
    /// As [`LiveDict::get`](crate::LiveDict::get).
    pub async fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.dict().get(key).await?.unwrap_or(default))
    }

    /// The values under `keys`; see [`LiveDict::get_many`](crate::LiveDict::get_many).
    ///
    /// # Errors
    /// As [`LiveDict::get`](crate::LiveDict::get), for any of the keys.
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        self.dict().get_many(keys).await
    }

    /// Whether a live value is stored under `key`; see
    /// [`LiveDict::contains`](crate::LiveDict::contains).
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub async fn contains(&self, key: &str) -> Result<bool> {
        self.dict().contains(key).await
    }

    /// The number of live entries.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub async fn len(&self) -> Result<usize> {
        self.dict().len().await
    }

    /// Whether there are no live entries.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.dict().len().await? == 0)
    }

    /// The keys of all live entries, in no particular order.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub async fn keys(&self) -> Result<Vec<String>> {
        self.dict().keys().await
    }

    /// The values of all live entries, in no particular order.
    ///
    /// # Errors
    /// [`Error::Decode`] if any value is not a `T`; [`Error::Backend`].
    pub async fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        Ok(self
            .dict()
            .items::<T>()
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// All live entries as pairs, in no particular order.
    ///
    /// # Errors
    /// [`Error::Decode`] if any value is not a `T`; [`Error::Backend`].
    pub async fn items<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        self.dict().items().await
    }

    /// An iterator over a snapshot of the live entries, decoding each value as it is reached;
    /// see [`LiveDict::iter`](crate::LiveDict::iter).
    ///
    /// # Errors
    /// [`Error::Backend`] while taking the snapshot.
    pub async fn iter<T: DeserializeOwned>(
        &self,
    ) -> Result<impl Iterator<Item = Result<(String, T)>> + use<T>> {
        let entries = self.dict().entries().await?;
        let engine = self.inner.engine.clone();
        let scope = self.scope.clone();
        Ok(entries
            .into_iter()
            .map(move |e| Dict::<AsyncPort<'_>>::decode_entry(&engine, scope.as_deref(), e)))
    }

    /// The remaining life of `key`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        self.dict().ttl(key).await
    }

    // ---- writing ------------------------------------------------------------------------------
    //
    // Methods taking a `&T` encode it when called; the future owns the encoded bytes.

    /// Stores `value` under `key` with the store's default TTL.
    ///
    /// # Errors
    /// As [`LiveDict::set`](crate::LiveDict::set).
    pub fn set<'a, T: Serialize + ?Sized>(
        &'a self,
        key: &'a str,
        value: &T,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.set_with(key, value, WriteOptions::new())
    }

    /// Stores `value` with a TTL or other [`WriteOptions`].
    ///
    /// # Errors
    /// As [`LiveDict::set_with`](crate::LiveDict::set_with).
    pub fn set_with<'a, T: Serialize + ?Sized>(
        &'a self,
        key: &'a str,
        value: &T,
        options: impl Into<WriteOptions>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let prepared = self.dict().prepare_set(key, value, options.into());
        async move { self.write_whole(prepared?).await.map(drop) }
    }

    /// Stores raw bytes with the default TTL.
    ///
    /// # Errors
    /// As [`LiveDict::set`](crate::LiveDict::set).
    pub fn set_bytes<'a>(
        &'a self,
        key: &'a str,
        value: &[u8],
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        self.set_bytes_with(key, value, WriteOptions::new())
    }

    /// Stores raw bytes with options.
    ///
    /// # Errors
    /// As [`LiveDict::set_with`](crate::LiveDict::set_with).
    pub fn set_bytes_with<'a>(
        &'a self,
        key: &'a str,
        value: &[u8],
        options: impl Into<WriteOptions>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let prepared = self.dict().prepare_set_bytes(key, value, options.into());
        async move { self.write_whole(prepared?).await.map(drop) }
    }

    /// Applies a prepared write whole (see [`whole!`]): inline on a backend whose operations
    /// complete when called, else in a task of its own that owns the write.
    async fn write_whole(&self, prepared: PreparedWrite<'_>) -> Result<Written> {
        if self.completes_inline() {
            return self.dict().write(prepared).await;
        }
        let prepared = prepared.into_owned();
        let store = self.clone();
        self.detach(async move { store.dict().write(prepared).await })
            .await
    }

    /// Stores `value` and returns the value it replaced, atomically.
    ///
    /// # Errors
    /// As [`LiveDict::replace`](crate::LiveDict::replace).
    pub fn replace<'a, T: Serialize + DeserializeOwned>(
        &'a self,
        key: &'a str,
        value: &T,
    ) -> impl Future<Output = Result<Option<T>>> + Send + 'a {
        let prepared = self.dict().prepare_replace(key, value);
        async move {
            let written = self.write_whole(prepared?).await?;
            self.dict().decode_previous(key, written.previous)
        }
    }

    /// The value under `key`, or `default` stored and returned, atomically.
    ///
    /// # Errors
    /// As [`LiveDict::setdefault`](crate::LiveDict::setdefault).
    pub async fn setdefault<T: Serialize + DeserializeOwned + Send>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T> {
        let prepared = self.dict().prepare_setdefault(key, &default)?;
        let written = self.write_whole(prepared).await?;
        self.dict().setdefault_result(key, written, default)
    }

    /// Stores many pairs all-or-nothing.
    ///
    /// # Errors
    /// The first invalid key or value (nothing is written); [`Error::Backend`].
    pub fn set_many<'k, T, I>(&self, pairs: I) -> impl Future<Output = Result<()>> + Send + '_
    where
        T: Serialize,
        I: IntoIterator<Item = (&'k str, T)>,
    {
        let batch = Batch::of_pairs(self.inner.engine.clone(), self.scope.clone(), pairs);
        async move { self.apply(batch?).await }
    }

    /// A new, empty [`Batch`] of writes for this store.
    pub fn batch(&self) -> Batch {
        self.dict().batch(self.scope.clone())
    }

    /// Applies a batch all-or-nothing.
    ///
    /// # Errors
    /// [`Error::Backend`] (nothing is applied).
    pub async fn apply(&self, batch: Batch) -> Result<()> {
        whole!(self, [], |_store, dict| dict.apply(batch))
    }

    // ---- atomic read-modify-write -------------------------------------------------------------

    /// Replaces the value under `key` with `f(old)`, atomically; see
    /// [`LiveDict::update`](crate::LiveDict::update).
    ///
    /// # Errors
    /// As [`LiveDict::update`](crate::LiveDict::update).
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnOnce(Option<T>) -> T + Send,
    {
        let expiry = self.dict().update_expiry();
        let new = self
            .dict()
            .update_with(key, expiry, |old| {
                Ok::<_, std::convert::Infallible>(Some(f(old)))
            })
            .await?;
        Ok(new.expect("the closure returned a value"))
    }

    /// Like [`update`](Self::update), but `f` may fail or return `None` to delete the key.
    ///
    /// # Errors
    /// As [`LiveDict::try_update`](crate::LiveDict::try_update).
    pub async fn try_update<T, E, F>(&self, key: &str, f: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E> + Send,
    {
        let expiry = self.dict().update_expiry();
        self.dict().update_with(key, expiry, f).await
    }

    /// Like [`try_update`](Self::try_update), with the new value written with `options`.
    ///
    /// # Errors
    /// As [`LiveDict::update_with`](crate::LiveDict::update_with).
    pub async fn update_with<T, E, F>(
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
        self.dict().update_with(key, expiry, f).await
    }

    /// Adds `delta` to the integer under `key`, atomically, and returns the result.
    ///
    /// # Errors
    /// As [`LiveDict::incr`](crate::LiveDict::incr).
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        whole!(self, [key], |_store, dict| dict.incr(key, delta))
    }

    /// Sets the fields of `patch` into the map under `key`, atomically.
    ///
    /// # Errors
    /// As [`LiveDict::merge`](crate::LiveDict::merge).
    pub fn merge<'a, P: Serialize + ?Sized>(
        &'a self,
        key: &'a str,
        patch: &P,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let patch = serde_json::to_value(patch).map_err(|e| Error::Encode(Box::new(e)));
        async move { self.dict().merge(key, patch?).await }
    }

    // ---- locks --------------------------------------------------------------------------------

    /// Takes the lock on `key`, waiting up to `timeout`; see [`LiveDict::lock`](crate::LiveDict::lock).
    ///
    /// # Errors
    /// As [`LiveDict::lock`](crate::LiveDict::lock).
    pub async fn lock(&self, key: &str, timeout: Duration) -> Result<Option<AsyncLockGuard>> {
        self.lock_with(key, timeout, DEFAULT_LOCK_LEASE).await
    }

    /// [`lock`](Self::lock) with a lease of `lease`.
    ///
    /// # Errors
    /// As [`LiveDict::lock_with`](crate::LiveDict::lock_with).
    pub async fn lock_with(
        &self,
        key: &str,
        timeout: Duration,
        lease: Duration,
    ) -> Result<Option<AsyncLockGuard>> {
        // The guard is made where the lock is taken: dropped with the task's result when the
        // caller gave up meanwhile, it releases the lock. A caller that gives up also ends the
        // task's waiting (at its next attempt), which holds the store.
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _gave_up = SetOnDrop(abandoned.clone());
        whole!(self, [key], |store, dict| async {
            let held = dict
                .acquire_lock_unless(key, timeout, lease, Some(&abandoned))
                .await?;
            Ok(held.map(|h| AsyncLockGuard::new(store.clone(), h)))
        })
    }

    /// The value under `key`, or else the async `loader`'s, stored and returned; the loader runs
    /// once per key under concurrent misses. See
    /// [`LiveDict::get_or_compute`](crate::LiveDict::get_or_compute).
    ///
    /// # Errors
    /// As [`LiveDict::get_or_compute`](crate::LiveDict::get_or_compute).
    pub async fn get_or_compute<T, E, F, Fut>(&self, key: &str, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        self.dict()
            .get_or_compute(key, WriteOptions::new(), loader)
            .await
    }

    /// [`get_or_compute`](Self::get_or_compute) storing the loaded value with `options`.
    ///
    /// # Errors
    /// As [`LiveDict::get_or_compute`](crate::LiveDict::get_or_compute).
    pub async fn get_or_compute_with<T, E, F, Fut>(
        &self,
        key: &str,
        options: impl Into<WriteOptions>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<BoxError>,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
    {
        self.dict()
            .get_or_compute(key, options.into(), loader)
            .await
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Whether the backend's operations complete when called (see [`whole!`]).
    fn completes_inline(&self) -> bool {
        self.inner.backend.completes_inline()
    }

    /// Runs `op` as a task of its own on the store's runtime and waits for it. Dropping the
    /// returned future leaves the task to finish: what it wrote gets its events, and a lock it
    /// took is released (the task's result, a guard, is dropped).
    async fn detach<T: Send + 'static>(
        &self,
        op: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        // Here, on the caller's thread: the task runs on another, where the check that the store
        // is not used from inside one of its own update closures would find nothing.
        self.dict().check_reentrancy()?;
        // On the runtime that polls the caller (the store's may not be driven now, or be gone).
        let runtime =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.runtime().clone());
        match runtime.spawn(op).await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Its runtime shut down while it ran.
                Err(_) => Err(Error::Backend(
                    "the runtime stopped while the call ran: it may or may not have been applied"
                        .into(),
                )),
            },
        }
    }

    // ---- removing -----------------------------------------------------------------------------

    /// Removes `key`; true if a live value was there.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(whole!(self, [key], |_store, dict| dict.remove(key))?.is_some())
    }

    /// Removes `key` and returns its value.
    ///
    /// # Errors
    /// As [`LiveDict::pop`](crate::LiveDict::pop).
    pub async fn pop<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let removed = whole!(self, [key], |_store, dict| dict.remove(key))?;
        self.dict().decode_previous(key, removed)
    }

    /// Removes and returns some entry, or `None` if the store is empty.
    ///
    /// # Errors
    /// As [`LiveDict::popitem`](crate::LiveDict::popitem).
    pub async fn popitem<T: DeserializeOwned>(&self) -> Result<Option<(String, T)>> {
        self.dict().popitem().await
    }

    /// Removes every entry; returns how many live ones there were.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub async fn clear(&self) -> Result<usize> {
        whole!(self, [], |_store, dict| dict.clear())
    }

    // ---- time to live -------------------------------------------------------------------------

    /// Gives `key` a new TTL from now; false if there is no live value.
    ///
    /// # Errors
    /// As [`LiveDict::expire`](crate::LiveDict::expire).
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.expire_with(key, WriteOptions::ttl(ttl)).await
    }

    /// Gives `key` a new expiry from [`WriteOptions`].
    ///
    /// # Errors
    /// As [`LiveDict::expire_with`](crate::LiveDict::expire_with).
    pub async fn expire_with(&self, key: &str, options: impl Into<WriteOptions>) -> Result<bool> {
        let options = options.into();
        whole!(self, [key], |_store, dict| dict.expire_with(key, options))
    }

    /// Removes the deadline of `key`; false if there is no live value.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Backend`].
    pub async fn persist(&self, key: &str) -> Result<bool> {
        whole!(self, [key], |_store, dict| dict.persist(key))
    }

    /// Removes entries not read or written for longer than `idle`; returns how many.
    ///
    /// # Errors
    /// As [`LiveDict::cleanup_inactive`](crate::LiveDict::cleanup_inactive).
    pub async fn cleanup_inactive(&self, idle: Duration) -> Result<usize> {
        whole!(self, [], |_store, dict| dict.cleanup_inactive(idle))
    }

    /// Removes every entry whose deadline has passed now and returns how many.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub async fn sweep_expired(&self) -> Result<usize> {
        whole!(self, [], |_store, dict| dict.sweep_expired())
    }

    // ---- waiting ------------------------------------------------------------------------------

    /// Waits until the value under `key` satisfies `predicate` and returns it, or `None` when
    /// `timeout` passes first (tokio time); see [`LiveDict::wait_for`](crate::LiveDict::wait_for).
    ///
    /// # Errors
    /// As [`LiveDict::peek`](crate::LiveDict::peek).
    pub async fn wait_for<T: DeserializeOwned + Send>(
        &self,
        key: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&T) -> bool + Send,
    ) -> Result<Option<T>> {
        self.dict().wait_for(key, timeout, &mut predicate).await
    }

    // ---- secrets, passwords and keys ----------------------------------------------------------

    /// Stores `password` as an argon2id hash; see
    /// [`LiveDict::set_password`](crate::LiveDict::set_password). The hashing (slow on purpose)
    /// runs on tokio's blocking threads, as does checking with `verify_password`.
    ///
    /// # Errors
    /// As [`LiveDict::set`](crate::LiveDict::set).
    pub async fn set_password(&self, key: &str, password: &str) -> Result<()> {
        self.set_password_with(key, password, WriteOptions::new())
            .await
    }

    /// [`set_password`](Self::set_password) with write options.
    ///
    /// # Errors
    /// As [`LiveDict::set_with`](crate::LiveDict::set_with).
    pub async fn set_password_with(
        &self,
        key: &str,
        password: &str,
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        let password = zeroize::Zeroizing::new(password.to_owned());
        self.dict()
            .set_password(key, password, options.into())
            .await
    }

    /// Whether `password` matches the password key `key`; see
    /// [`LiveDict::verify_password`](crate::LiveDict::verify_password).
    ///
    /// # Errors
    /// [`Error::Decode`] if `key` holds something other than a password.
    pub async fn verify_password(&self, key: &str, password: &str) -> Result<Option<bool>> {
        self.dict().verify_password(key, password).await
    }

    /// The stored argon2id hash of a password key.
    ///
    /// # Errors
    /// [`Error::Decode`] if `key` holds something other than a password.
    pub async fn password_hash(&self, key: &str) -> Result<Option<String>> {
        self.dict().password_hash(key).await
    }

    /// Adds the keys of `keys` to the store's keyring; see
    /// [`LiveDict::rotate_key`](crate::LiveDict::rotate_key).
    ///
    /// # Errors
    /// [`Error::Crypto`] if the store has no keyring or an id is already taken.
    pub fn rotate_key(&self, keys: Keyring) -> Result<()> {
        self.engine().rotate_key(keys)
    }

    /// Re-encrypts every entry with the newest key; see [`LiveDict::rekey`](crate::LiveDict::rekey).
    ///
    /// # Errors
    /// As [`LiveDict::rekey`](crate::LiveDict::rekey).
    pub async fn rekey(&self, mut progress: impl FnMut(usize, usize) + Send) -> Result<usize> {
        self.dict().rekey(&mut progress).await
    }

    /// Removes key `id` from the keyring; see [`LiveDict::retire_key`](crate::LiveDict::retire_key).
    ///
    /// # Errors
    /// As [`LiveDict::retire_key`](crate::LiveDict::retire_key).
    pub async fn retire_key(&self, id: u32) -> Result<()> {
        self.dict().retire_key(id).await
    }

    // ---- moving whole stores ------------------------------------------------------------------

    /// Writes every live entry to `writer` as JSON lines; see
    /// [`LiveDict::export`](crate::LiveDict::export).
    ///
    /// # Errors
    /// [`Error::Backend`] for read or write errors.
    pub async fn export(&self, writer: impl std::io::Write + Send) -> Result<usize> {
        let entries = self.dict().export_entries().await?;
        transfer::write_lines(&entries, writer)
    }

    /// Reads entries written by `export` (read when this is called) and stores them
    /// all-or-nothing; see [`LiveDict::import`](crate::LiveDict::import).
    ///
    /// # Errors
    /// As [`LiveDict::import`](crate::LiveDict::import).
    pub fn import(
        &self,
        reader: impl std::io::BufRead,
    ) -> impl Future<Output = Result<usize>> + Send + '_ {
        let ops = transfer::parse_lines(self.engine(), reader);
        async move { self.dict().import_ops(ops?).await }
    }

    /// Copies every live entry into `target`, all-or-nothing; see
    /// [`LiveDict::copy_to`](crate::LiveDict::copy_to).
    ///
    /// # Errors
    /// As [`LiveDict::copy_to`](crate::LiveDict::copy_to).
    pub async fn copy_to(&self, target: &AsyncLiveDict) -> Result<usize> {
        let entries = self.dict().export_entries().await?;
        let ops = transfer::copy_ops(target.engine(), entries)?;
        target.dict().import_ops(ops).await
    }

    // ---- the store ----------------------------------------------------------------------------

    /// What the store has done so far.
    pub fn stats(&self) -> Stats {
        self.engine().stats()
    }

    // ---- hooks --------------------------------------------------------------------------------

    /// Registers a store-wide sync hook; see [`LiveDict::on`](crate::LiveDict::on).
    ///
    /// # Errors
    /// [`Error::Backend`] if the hook threads cannot be started.
    pub fn on<F>(&self, kinds: impl IntoIterator<Item = EventKind>, f: F) -> Result<HookId>
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        self.hook(Hook::new(kinds, f))
    }

    /// Registers a store-wide async hook: `f(event)` returns a future, run on the store's hook
    /// workers with this store's runtime (see [`Hook::new_async`]).
    ///
    /// # Errors
    /// [`Error::Backend`] if the hook threads cannot be started.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> livedict::Result<()> {
    /// use livedict::EventKind;
    ///
    /// let store = livedict::LiveDict::builder().build_async()?;
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// store.on_async([EventKind::Delete], move |e| {
    ///     let tx = tx.clone();
    ///     async move { Ok(tx.send(e.value::<String>()?)?) }
    /// })?;
    /// store.set("k", &"v").await?;
    /// store.delete("k").await?;
    /// assert_eq!(rx.recv().await, Some(Some("v".to_string())));
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_async<F, Fut>(
        &self,
        kinds: impl IntoIterator<Item = EventKind>,
        f: F,
    ) -> Result<HookId>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HookResult> + Send + 'static,
    {
        self.hook(Hook::new_async(kinds, &self.inner.runtime, f))
    }

    /// Registers a configured [`Hook`].
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

    /// Disables a hook; false if no hook has this id.
    pub fn disable_hook(&self, id: HookId) -> bool {
        self.dict().set_hook_enabled(id, false)
    }

    /// Removes a hook for good; false if no hook has this id.
    pub fn unregister_hook(&self, id: HookId) -> bool {
        self.dict().unregister_hook(id)
    }

    /// Stops the store and waits until queued events are delivered (up to the hook grace
    /// period) and the hook workers have stopped; every later call on any handle is
    /// [`Error::Closed`].
    pub async fn close(&self) {
        self.engine().close();
        self.engine().events.begin_close();
        if let Some(mut d) = self.inner.driver.lock().take() {
            d.stop();
        }
        let engine = self.inner.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.events.shutdown()).await;
    }
}
