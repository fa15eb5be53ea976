//! The one seam between the sync and async front-ends: how the dictionary operations reach the
//! backend, take the entry-hook locks, and wait.
//!
//! Every operation of the store is written once, as an `async fn` over a [`Port`]. The sync
//! front-end uses [`SyncPort`], whose futures are always ready (the blocking work happens inside
//! the call that makes them), and runs each operation with [`run_ready`]: one poll, no runtime.
//! The async front-end uses `AsyncPort`, over an [`AsyncBackend`](crate::backend::AsyncBackend),
//! and awaits.

use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_lock::{Mutex, MutexGuard};
use bytes::Bytes;
use event_listener::{EventListener, Listener};

use crate::backend::{
    Backend, BatchOp, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue, ReadMode,
    Removed, ScanEntry, UpdateFn, Updated, WriteExpiry, Written,
};
use crate::clock::{Millis, Now};
use crate::error::Result;

/// Backend operations, locks and waits, as futures. Mirrors [`Backend`]; see it for each
/// operation's contract.
#[allow(missing_docs)]
pub(crate) trait Port: Send + Sync {
    /// Whether waits park a task (async) rather than block the thread (sync).
    const AWAITS: bool;

    fn get<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> impl Future<Output = Result<Option<Bytes>>> + Send + 'a;
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>>> + Send + 'a;
    fn contains<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> impl Future<Output = Result<Written>> + Send + 'a;
    fn delete<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
    ) -> impl Future<Output = Result<Removed>> + Send + 'a;
    fn update<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
        f: &'a mut UpdateFn<'a>,
    ) -> impl Future<Output = Result<Updated>> + Send + 'a;
    fn ttl<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
    ) -> impl Future<Output = Result<KeyTtl>> + Send + 'a;
    fn set_expiry<'a>(
        &'a self,
        key: &'a str,
        expiry: Expiry,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        now: Millis,
        with_values: bool,
    ) -> impl Future<Output = Result<Vec<ScanEntry>>> + Send + 'a;
    fn len(&self, now: Millis) -> impl Future<Output = Result<usize>> + Send + '_;
    fn clear(&self, now: Millis) -> impl Future<Output = Result<Cleared>> + Send + '_;
    fn pop_any(&self, now: Millis) -> impl Future<Output = Result<Option<KeyValue>>> + Send + '_;
    fn apply_batch(
        &self,
        ops: Vec<BatchOp>,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<Removed>>> + Send + '_;
    fn sweep<'a>(
        &'a self,
        now: Millis,
        limit: usize,
        out: &'a mut Vec<ExpiredEntry>,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
    fn next_deadline(&self) -> impl Future<Output = Result<Option<Millis>>> + Send + '_;
    fn remove_inactive<'a>(
        &'a self,
        prefix: &'a str,
        idle_since: Millis,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<KeyValue>>> + Send + 'a;
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Millis,
        now: Millis,
    ) -> impl Future<Output = Result<Option<u64>>> + Send + 'a;
    fn unlock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
    fn is_shared(&self) -> bool;

    /// Sleeps for `duration` (blocking, or awaiting).
    fn sleep(duration: Duration) -> impl Future<Output = ()> + Send;

    /// Runs CPU-heavy work (argon2): at once on the caller's thread, or on tokio's blocking
    /// threads so that it holds up no runtime worker.
    fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send;

    /// Locks `mutex` (blocking, or awaiting).
    fn acquire<'m, T: Send + 'm>(
        mutex: &'m Mutex<T>,
    ) -> impl Future<Output = MutexGuard<'m, T>> + Send + 'm;

    /// Waits until `listener` is notified or `timeout` passes (blocking, or awaiting).
    fn wait(listener: EventListener, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// Runs a future that is ready at its first poll: an operation over a [`SyncPort`].
///
/// # Panics
/// If the future is pending, which a sync port never is.
#[inline(always)]
pub(crate) fn run_ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("an operation over the sync port waited"),
    }
}

/// The sync front-end's port: each call does its work at once and returns a ready future.
#[derive(Clone, Copy)]
pub(crate) struct SyncPort<'b> {
    pub(crate) backend: &'b dyn Backend,
}

#[allow(refining_impl_trait)] // callers only see the trait's signature
impl Port for SyncPort<'_> {
    const AWAITS: bool = false;

    #[inline]
    fn get<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> Ready<Result<Option<Bytes>>> {
        ready(self.backend.get(key, now, mode))
    }
    #[inline]
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> Ready<Result<Vec<Option<Bytes>>>> {
        ready(self.backend.get_many(keys, now, mode))
    }
    #[inline]
    fn contains<'a>(&'a self, key: &'a str, now: &'a Now<'a>) -> Ready<Result<bool>> {
        ready(self.backend.contains(key, now))
    }
    #[inline]
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> Ready<Result<Written>> {
        ready(self.backend.set(key, value, expiry, condition, now))
    }
    #[inline]
    fn delete<'a>(&'a self, key: &'a str, now: Millis) -> Ready<Result<Removed>> {
        ready(self.backend.delete(key, now))
    }
    #[inline]
    fn update<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
        f: &'a mut UpdateFn<'a>,
    ) -> Ready<Result<Updated>> {
        ready(self.backend.update(key, now, f))
    }
    #[inline]
    fn ttl<'a>(&'a self, key: &'a str, now: Millis) -> Ready<Result<KeyTtl>> {
        ready(self.backend.ttl(key, now))
    }
    #[inline]
    fn set_expiry<'a>(&'a self, key: &'a str, expiry: Expiry, now: Millis) -> Ready<Result<bool>> {
        ready(self.backend.set_expiry(key, expiry, now))
    }
    #[inline]
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        now: Millis,
        with_values: bool,
    ) -> Ready<Result<Vec<ScanEntry>>> {
        ready(self.backend.scan(prefix, now, with_values))
    }
    #[inline]
    fn len(&self, now: Millis) -> Ready<Result<usize>> {
        ready(self.backend.len(now))
    }
    #[inline]
    fn clear(&self, now: Millis) -> Ready<Result<Cleared>> {
        ready(self.backend.clear(now))
    }
    #[inline]
    fn pop_any(&self, now: Millis) -> Ready<Result<Option<KeyValue>>> {
        ready(self.backend.pop_any(now))
    }
    #[inline]
    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> Ready<Result<Vec<Removed>>> {
        ready(self.backend.apply_batch(ops, now))
    }
    #[inline]
    fn sweep<'a>(
        &'a self,
        now: Millis,
        limit: usize,
        out: &'a mut Vec<ExpiredEntry>,
    ) -> Ready<Result<bool>> {
        ready(self.backend.sweep(now, limit, out))
    }
    #[inline]
    fn next_deadline(&self) -> Ready<Result<Option<Millis>>> {
        ready(self.backend.next_deadline())
    }
    #[inline]
    fn remove_inactive<'a>(
        &'a self,
        prefix: &'a str,
        idle_since: Millis,
        now: Millis,
    ) -> Ready<Result<Vec<KeyValue>>> {
        ready(self.backend.remove_inactive(prefix, idle_since, now))
    }
    #[inline]
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Millis,
        now: Millis,
    ) -> Ready<Result<Option<u64>>> {
        ready(self.backend.try_lock(name, owner, lease, now))
    }
    #[inline]
    fn unlock<'a>(&'a self, name: &'a str, owner: &'a str, now: Millis) -> Ready<Result<bool>> {
        ready(self.backend.unlock(name, owner, now))
    }
    #[inline]
    fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }
    #[inline]
    fn sleep(duration: Duration) -> Ready<()> {
        std::thread::sleep(duration);
        ready(())
    }
    #[inline]
    fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Ready<Result<T>> {
        ready(work())
    }
    #[inline]
    fn acquire<'m, T: Send + 'm>(mutex: &'m Mutex<T>) -> Ready<MutexGuard<'m, T>> {
        ready(mutex.lock_blocking())
    }
    #[inline]
    fn wait(listener: EventListener, timeout: Duration) -> Ready<()> {
        if let Some(deadline) = Instant::now().checked_add(timeout) {
            listener.wait_deadline(deadline);
        } else {
            listener.wait();
        }
        ready(())
    }
}

/// The async front-end's port, over an [`AsyncBackend`](crate::backend::AsyncBackend).
#[cfg(feature = "async")]
#[derive(Clone, Copy)]
pub(crate) struct AsyncPort<'b> {
    pub(crate) backend: &'b dyn crate::backend::AsyncBackend,
}

#[cfg(feature = "async")]
impl Port for AsyncPort<'_> {
    const AWAITS: bool = true;

    fn get<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> impl Future<Output = Result<Option<Bytes>>> + Send + 'a {
        self.backend.get(key, now, mode)
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>>> + Send + 'a {
        self.backend.get_many(keys, now, mode)
    }
    fn contains<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        self.backend.contains(key, now)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> impl Future<Output = Result<Written>> + Send + 'a {
        self.backend.set(key, value, expiry, condition, now)
    }
    fn delete<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
    ) -> impl Future<Output = Result<Removed>> + Send + 'a {
        self.backend.delete(key, now)
    }
    fn update<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
        f: &'a mut UpdateFn<'a>,
    ) -> impl Future<Output = Result<Updated>> + Send + 'a {
        self.backend.update(key, now, f)
    }
    fn ttl<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
    ) -> impl Future<Output = Result<KeyTtl>> + Send + 'a {
        self.backend.ttl(key, now)
    }
    fn set_expiry<'a>(
        &'a self,
        key: &'a str,
        expiry: Expiry,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        self.backend.set_expiry(key, expiry, now)
    }
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        now: Millis,
        with_values: bool,
    ) -> impl Future<Output = Result<Vec<ScanEntry>>> + Send + 'a {
        self.backend.scan(prefix, now, with_values)
    }
    fn len(&self, now: Millis) -> impl Future<Output = Result<usize>> + Send + '_ {
        self.backend.len(now)
    }
    fn clear(&self, now: Millis) -> impl Future<Output = Result<Cleared>> + Send + '_ {
        self.backend.clear(now)
    }
    fn pop_any(&self, now: Millis) -> impl Future<Output = Result<Option<KeyValue>>> + Send + '_ {
        self.backend.pop_any(now)
    }
    fn apply_batch(
        &self,
        ops: Vec<BatchOp>,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<Removed>>> + Send + '_ {
        self.backend.apply_batch(ops, now)
    }
    fn sweep<'a>(
        &'a self,
        now: Millis,
        limit: usize,
        out: &'a mut Vec<ExpiredEntry>,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        self.backend.sweep(now, limit, out)
    }
    fn next_deadline(&self) -> impl Future<Output = Result<Option<Millis>>> + Send + '_ {
        self.backend.next_deadline()
    }
    fn remove_inactive<'a>(
        &'a self,
        prefix: &'a str,
        idle_since: Millis,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<KeyValue>>> + Send + 'a {
        self.backend.remove_inactive(prefix, idle_since, now)
    }
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Millis,
        now: Millis,
    ) -> impl Future<Output = Result<Option<u64>>> + Send + 'a {
        self.backend.try_lock(name, owner, lease, now)
    }
    fn unlock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        now: Millis,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        self.backend.unlock(name, owner, now)
    }
    fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }
    async fn sleep(duration: Duration) {
        tokio::time::sleep(duration).await;
    }
    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| crate::Error::Backend(Box::new(e)))?
    }
    fn acquire<'m, T: Send + 'm>(
        mutex: &'m Mutex<T>,
    ) -> impl Future<Output = MutexGuard<'m, T>> + Send + 'm {
        mutex.lock()
    }
    async fn wait(listener: EventListener, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, listener).await;
    }
}
