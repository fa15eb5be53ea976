//! [`Store`]: the front-end the conformance cases talk to, so that every case is written once and
//! runs through both [`LiveDict`] and, with the `async` feature, `AsyncLiveDict`.
//!
//! Each method has the signature of the [`LiveDict`] method of the same name. Over a `LiveDict`
//! it is that method; over an `AsyncLiveDict` it runs the async twin to completion on the
//! harness's multi-thread runtime (whose workers drive the expiry task, timers and I/O), from
//! whatever thread the case calls it on: the test thread, threads it starts, or hook workers.

#[cfg(feature = "async")]
use std::sync::Arc;
use std::time::Duration;

use livedict::{
    Batch, Bytes, Event, EventKind, Hook, HookId, HookResult, Key, KeyTtl, Keyring, LiveDict,
    Namespace, Result, Stats, WeakLiveDict, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What [`Store::iter`] returns: either front-end's iterator over a snapshot of the entries.
pub type Entries<T> = Box<dyn Iterator<Item = Result<(String, T)>>>;

/// A store handle of either front-end. Cloning gives another handle on the same store.
#[derive(Clone, Debug)]
pub enum Store {
    /// The sync front-end.
    Sync(LiveDict),
    /// The async front-end and the runtime it was built on.
    #[cfg(feature = "async")]
    Async {
        store: livedict::AsyncLiveDict,
        rt: tokio::runtime::Handle,
    },
}

/// A held lock of either front-end.
pub enum Guard {
    Sync(livedict::LockGuard),
    #[cfg(feature = "async")]
    Async {
        guard: livedict::AsyncLockGuard,
        rt: tokio::runtime::Handle,
    },
}

impl Guard {
    pub fn fence(&self) -> u64 {
        match self {
            Guard::Sync(g) => g.fence(),
            #[cfg(feature = "async")]
            Guard::Async { guard, .. } => guard.fence(),
        }
    }
    pub fn release(self) -> Result<bool> {
        match self {
            Guard::Sync(g) => g.release(),
            #[cfg(feature = "async")]
            Guard::Async { guard, rt } => run(&rt, guard.release()),
        }
    }
}

/// A handle that does not keep its store alive; see [`Store::downgrade`].
#[derive(Clone, Debug)]
pub enum WeakStore {
    Sync(WeakLiveDict),
    #[cfg(feature = "async")]
    Async {
        weak: livedict::WeakAsyncLiveDict,
        rt: tokio::runtime::Handle,
    },
}

impl WeakStore {
    /// The store, if it is still alive.
    pub fn upgrade(&self) -> Option<Store> {
        match self {
            WeakStore::Sync(w) => w.upgrade().map(Store::Sync),
            #[cfg(feature = "async")]
            WeakStore::Async { weak, rt } => weak.upgrade().map(|store| Store::Async {
                store,
                rt: rt.clone(),
            }),
        }
    }
}

/// Runs `f` to completion.
///
/// From outside any runtime (the test thread, threads a case starts, workers of sync hooks) this
/// is the runtime's `block_on`. From inside the runtime's context, which `block_on` refuses, the
/// caller is itself being run by this runtime: an update closure called on the caller's task,
/// a blocking thread, or an async hook (run with `Handle::block_on` on its hook worker). There the
/// thread is parked until the future wakes it; the runtime's workers (never this thread) drive
/// the timers and I/O it waits for.
#[cfg(feature = "async")]
fn run<F: std::future::Future>(rt: &tokio::runtime::Handle, f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_err() {
        return rt.block_on(f);
    }
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// `$body` with `$s` bound to the front-end of `$store`: as is over a `LiveDict`, run to
/// completion over an `AsyncLiveDict` (where `$body` is the async twin's future).
macro_rules! call {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Sync($s) => $body,
            #[cfg(feature = "async")]
            Store::Async { store: $s, rt } => run(rt, $body),
        }
    };
}

/// `$body` with `$s` bound to the front-end of `$store`, for the methods that are sync on both.
macro_rules! both {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Sync($s) => $body,
            #[cfg(feature = "async")]
            Store::Async { store: $s, .. } => $body,
        }
    };
}

impl Store {
    /// Whether this is the async front-end.
    pub fn is_async(&self) -> bool {
        !matches!(self, Store::Sync(_))
    }

    /// A weak handle, for hooks that use their own store.
    pub fn downgrade(&self) -> WeakStore {
        match self {
            Store::Sync(s) => WeakStore::Sync(s.downgrade()),
            #[cfg(feature = "async")]
            Store::Async { store, rt } => WeakStore::Async {
                weak: store.downgrade(),
                rt: rt.clone(),
            },
        }
    }

    // ---- reading ------------------------------------------------------------------------------

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        call!(self, s => s.get(key))
    }
    pub fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        call!(self, s => s.get_bytes(key))
    }
    pub fn peek<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        call!(self, s => s.peek(key))
    }
    pub fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        call!(self, s => s.require(key))
    }
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        call!(self, s => s.get_or(key, default))
    }
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        call!(self, s => s.get_many(keys))
    }
    pub fn contains(&self, key: &str) -> Result<bool> {
        call!(self, s => s.contains(key))
    }
    pub fn len(&self) -> Result<usize> {
        call!(self, s => s.len())
    }
    pub fn is_empty(&self) -> Result<bool> {
        call!(self, s => s.is_empty())
    }
    pub fn keys(&self) -> Result<Vec<String>> {
        call!(self, s => s.keys())
    }
    pub fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        call!(self, s => s.values())
    }
    pub fn items<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        call!(self, s => s.items())
    }
    pub fn iter<T: DeserializeOwned + 'static>(&self) -> Result<Entries<T>> {
        fn boxed<T, I: Iterator<Item = Result<(String, T)>> + 'static>(
            i: Result<I>,
        ) -> Result<Entries<T>> {
            Ok(Box::new(i?))
        }
        match self {
            Store::Sync(s) => boxed(s.iter()),
            #[cfg(feature = "async")]
            Store::Async { store, rt } => boxed(run(rt, store.iter())),
        }
    }
    pub fn ttl(&self, key: &str) -> Result<KeyTtl> {
        call!(self, s => s.ttl(key))
    }

    // ---- writing ------------------------------------------------------------------------------

    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        call!(self, s => s.set(key, value))
    }
    pub fn set_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        call!(self, s => s.set_with(key, value, options))
    }
    pub fn set_bytes(&self, key: &str, value: &[u8]) -> Result<()> {
        call!(self, s => s.set_bytes(key, value))
    }
    pub fn set_bytes_with(
        &self,
        key: &str,
        value: &[u8],
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        call!(self, s => s.set_bytes_with(key, value, options))
    }
    pub fn replace<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Option<T>> {
        call!(self, s => s.replace(key, value))
    }
    pub fn setdefault<T: Serialize + DeserializeOwned + Send>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T> {
        call!(self, s => s.setdefault(key, default))
    }
    pub fn set_many<'k, T, I>(&self, pairs: I) -> Result<()>
    where
        T: Serialize,
        I: IntoIterator<Item = (&'k str, T)>,
    {
        call!(self, s => s.set_many(pairs))
    }
    pub fn batch(&self) -> Batch {
        both!(self, s => s.batch())
    }
    pub fn apply(&self, batch: Batch) -> Result<()> {
        call!(self, s => s.apply(batch))
    }

    // ---- atomic read-modify-write -------------------------------------------------------------

    pub fn update<T, F>(&self, key: &str, f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnOnce(Option<T>) -> T + Send,
    {
        call!(self, s => s.update(key, f))
    }
    pub fn try_update<T, E, F>(&self, key: &str, f: F) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<livedict::BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E> + Send,
    {
        call!(self, s => s.try_update(key, f))
    }
    pub fn update_with<T, E, F>(
        &self,
        key: &str,
        options: impl Into<WriteOptions>,
        f: F,
    ) -> Result<Option<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<livedict::BoxError>,
        F: FnOnce(Option<T>) -> Result<Option<T>, E> + Send,
    {
        call!(self, s => s.update_with(key, options, f))
    }
    pub fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        call!(self, s => s.incr(key, delta))
    }
    pub fn merge<P: Serialize + ?Sized>(&self, key: &str, patch: &P) -> Result<()> {
        call!(self, s => s.merge(key, patch))
    }

    // ---- removing -----------------------------------------------------------------------------

    pub fn delete(&self, key: &str) -> Result<bool> {
        call!(self, s => s.delete(key))
    }
    pub fn pop<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        call!(self, s => s.pop(key))
    }
    pub fn popitem<T: DeserializeOwned>(&self) -> Result<Option<(String, T)>> {
        call!(self, s => s.popitem())
    }
    pub fn clear(&self) -> Result<usize> {
        call!(self, s => s.clear())
    }

    // ---- time to live -------------------------------------------------------------------------

    pub fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        call!(self, s => s.expire(key, ttl))
    }
    pub fn expire_with(&self, key: &str, options: impl Into<WriteOptions>) -> Result<bool> {
        call!(self, s => s.expire_with(key, options))
    }
    pub fn persist(&self, key: &str) -> Result<bool> {
        call!(self, s => s.persist(key))
    }
    pub fn cleanup_inactive(&self, idle: Duration) -> Result<usize> {
        call!(self, s => s.cleanup_inactive(idle))
    }
    pub fn sweep_expired(&self) -> Result<usize> {
        call!(self, s => s.sweep_expired())
    }

    // ---- waiting ------------------------------------------------------------------------------

    pub fn wait_for<T: DeserializeOwned + Send>(
        &self,
        key: &str,
        timeout: Duration,
        predicate: impl FnMut(&T) -> bool + Send,
    ) -> Result<Option<T>> {
        call!(self, s => s.wait_for(key, timeout, predicate))
    }

    // ---- secrets, passwords and keys ----------------------------------------------------------

    pub fn set_password(&self, key: &str, password: &str) -> Result<()> {
        call!(self, s => s.set_password(key, password))
    }
    pub fn set_password_with(
        &self,
        key: &str,
        password: &str,
        options: impl Into<WriteOptions>,
    ) -> Result<()> {
        call!(self, s => s.set_password_with(key, password, options))
    }
    pub fn verify_password(&self, key: &str, password: &str) -> Result<Option<bool>> {
        call!(self, s => s.verify_password(key, password))
    }
    pub fn password_hash(&self, key: &str) -> Result<Option<String>> {
        call!(self, s => s.password_hash(key))
    }
    pub fn rotate_key(&self, keys: Keyring) -> Result<()> {
        both!(self, s => s.rotate_key(keys))
    }
    pub fn rekey(&self, progress: impl FnMut(usize, usize) + Send) -> Result<usize> {
        call!(self, s => s.rekey(progress))
    }
    pub fn retire_key(&self, id: u32) -> Result<()> {
        call!(self, s => s.retire_key(id))
    }

    // ---- moving whole stores ------------------------------------------------------------------

    pub fn export(&self, writer: impl std::io::Write + Send) -> Result<usize> {
        call!(self, s => s.export(writer))
    }
    pub fn import(&self, reader: impl std::io::BufRead) -> Result<usize> {
        call!(self, s => s.import(reader))
    }
    /// Copies into `target`, a store of the same front-end (a harness builds only one kind).
    pub fn copy_to(&self, target: &Store) -> Result<usize> {
        match (self, target) {
            (Store::Sync(s), Store::Sync(t)) => s.copy_to(t),
            #[cfg(feature = "async")]
            (Store::Async { store, rt }, Store::Async { store: t, .. }) => {
                run(rt, store.copy_to(t))
            }
            #[cfg(feature = "async")]
            _ => panic!("copy_to between stores of different front-ends"),
        }
    }

    // ---- the store ----------------------------------------------------------------------------

    /// Every live entry exported as JSON lines, as text.
    pub fn export_string(&self) -> Result<String> {
        let mut out = Vec::new();
        self.export(&mut out)?;
        Ok(String::from_utf8(out).expect("JSON lines are UTF-8"))
    }

    // ---- namespaces, typed keys, locks --------------------------------------------------------

    pub fn namespace(&self, namespace: &Namespace, params: &[(&str, &str)]) -> Result<Store> {
        match self {
            Store::Sync(s) => s.namespace(namespace, params).map(Store::Sync),
            #[cfg(feature = "async")]
            Store::Async { store, rt } => {
                store
                    .namespace(namespace, params)
                    .map(|store| Store::Async {
                        store,
                        rt: rt.clone(),
                    })
            }
        }
    }
    pub fn namespace_one(&self, namespace: &Namespace, value: &str) -> Result<Store> {
        match self {
            Store::Sync(s) => s.namespace_one(namespace, value).map(Store::Sync),
            #[cfg(feature = "async")]
            Store::Async { store, rt } => {
                store
                    .namespace_one(namespace, value)
                    .map(|store| Store::Async {
                        store,
                        rt: rt.clone(),
                    })
            }
        }
    }
    pub fn prefix(&self) -> String {
        both!(self, s => s.prefix().to_owned())
    }
    pub fn get_key<T: DeserializeOwned + Clone>(&self, key: &Key<T>) -> Result<Option<T>> {
        call!(self, s => s.get_key(key))
    }
    pub fn set_key<T: Serialize>(&self, key: &Key<T>, value: &T) -> Result<()> {
        call!(self, s => s.set_key(key, value))
    }
    pub fn lock(&self, key: &str, timeout: Duration) -> Result<Option<Guard>> {
        self.lock_with(key, timeout, livedict::DEFAULT_LOCK_LEASE)
    }
    pub fn lock_with(
        &self,
        key: &str,
        timeout: Duration,
        lease: Duration,
    ) -> Result<Option<Guard>> {
        match self {
            Store::Sync(s) => Ok(s.lock_with(key, timeout, lease)?.map(Guard::Sync)),
            #[cfg(feature = "async")]
            Store::Async { store, rt } => Ok(run(rt, store.lock_with(key, timeout, lease))?.map(
                |guard| Guard::Async {
                    guard,
                    rt: rt.clone(),
                },
            )),
        }
    }
    pub fn get_or_compute<T, E, F>(&self, key: &str, loader: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<livedict::BoxError> + Send,
        F: FnOnce() -> std::result::Result<T, E> + Send,
    {
        self.get_or_compute_with(key, WriteOptions::new(), loader)
    }
    pub fn get_or_compute_with<T, E, F>(
        &self,
        key: &str,
        options: impl Into<WriteOptions>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send,
        E: Into<livedict::BoxError> + Send,
        F: FnOnce() -> std::result::Result<T, E> + Send,
    {
        match self {
            Store::Sync(s) => s.get_or_compute_with(key, options, loader),
            #[cfg(feature = "async")]
            Store::Async { store, rt } => run(
                rt,
                store.get_or_compute_with(key, options, || async move { loader() }),
            ),
        }
    }

    pub fn stats(&self) -> Stats {
        both!(self, s => s.stats())
    }

    /// Stops the store (`close().await` on the async front-end).
    pub fn close(&self) {
        call!(self, s => s.close())
    }

    // ---- hooks --------------------------------------------------------------------------------

    /// Registers `f` as a store-wide hook: a sync hook on [`LiveDict`]; on `AsyncLiveDict` an
    /// async hook (`on_async`) whose future yields to the runtime once, then calls `f`.
    pub fn on<F>(&self, kinds: impl IntoIterator<Item = EventKind>, f: F) -> Result<HookId>
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        match self {
            Store::Sync(s) => s.on(kinds, f),
            #[cfg(feature = "async")]
            Store::Async { store, .. } => {
                let f = Arc::new(f);
                store.on_async(kinds, move |e: Event| {
                    let f = f.clone();
                    async move {
                        tokio::task::yield_now().await;
                        f(&e)
                    }
                })
            }
        }
    }

    /// A [`Hook`] calling `f`, to configure and register with [`hook`](Self::hook): `Hook::new`
    /// on [`LiveDict`]; on `AsyncLiveDict` `Hook::new_async` on the store's runtime, as
    /// [`on`](Self::on) makes it.
    pub fn new_hook<F>(&self, kinds: impl IntoIterator<Item = EventKind>, f: F) -> Hook
    where
        F: Fn(&Event) -> HookResult + Send + Sync + 'static,
    {
        match self {
            Store::Sync(_) => Hook::new(kinds, f),
            #[cfg(feature = "async")]
            Store::Async { rt, .. } => {
                let f = Arc::new(f);
                Hook::new_async(kinds, rt, move |e: Event| {
                    let f = f.clone();
                    async move {
                        tokio::task::yield_now().await;
                        f(&e)
                    }
                })
            }
        }
    }

    pub fn hook(&self, hook: Hook) -> Result<HookId> {
        both!(self, s => s.hook(hook))
    }
    pub fn enable_hook(&self, id: HookId) -> bool {
        both!(self, s => s.enable_hook(id))
    }
    pub fn disable_hook(&self, id: HookId) -> bool {
        both!(self, s => s.disable_hook(id))
    }
    pub fn unregister_hook(&self, id: HookId) -> bool {
        both!(self, s => s.unregister_hook(id))
    }
}
