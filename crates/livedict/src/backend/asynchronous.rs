//! [`AsyncBackend`]: the asynchronous twin of [`Backend`], for backends with native async I/O
//! (Redis) and for the async front-end.
//!
//! It has the same operations, with the same contract, returning boxed futures so that it stays
//! object safe (`Arc<dyn AsyncBackend>`). It needs no runtime of its own. A backend whose operations
//! never block (the memory backend) gets it from its sync implementation through
//! [`impl_async_via_sync!`](crate::impl_async_via_sync); blocking ones (SQLite) are run off the
//! runtime's workers by the async front-end instead.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::{
    BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue, ReadMode, Removed,
    ScanEntry, Updated, WriteExpiry, Written,
};
use crate::clock::{Millis, Now};
use crate::error::Result;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The decision closure of [`AsyncBackend::update`].
pub type UpdateFn<'a> = dyn FnMut(Option<&Bytes>) -> Result<Change> + Send + 'a;

/// The asynchronous twin of [`Backend`](super::Backend): the same operations and contract.
#[allow(missing_docs)] // each method is documented on `Backend`
pub trait AsyncBackend: Send + Sync + fmt::Debug + 'static {
    fn get<'a>(
        &'a self,
        key: &'a str,
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> BoxFuture<'a, Result<Option<Bytes>>>;
    fn get_many<'a>(
        &'a self,
        keys: &'a [&'a str],
        now: &'a Now<'a>,
        mode: ReadMode,
    ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>>;
    fn contains<'a>(&'a self, key: &'a str, now: &'a Now<'a>) -> BoxFuture<'a, Result<bool>>;
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        expiry: WriteExpiry,
        condition: Condition,
        now: Millis,
    ) -> BoxFuture<'a, Result<Written>>;
    fn delete<'a>(&'a self, key: &'a str, now: Millis) -> BoxFuture<'a, Result<Removed>>;
    fn update<'a>(
        &'a self,
        key: &'a str,
        now: Millis,
        f: &'a mut UpdateFn<'a>,
    ) -> BoxFuture<'a, Result<Updated>>;
    fn ttl<'a>(&'a self, key: &'a str, now: Millis) -> BoxFuture<'a, Result<KeyTtl>>;
    fn set_expiry<'a>(
        &'a self,
        key: &'a str,
        expiry: Expiry,
        now: Millis,
    ) -> BoxFuture<'a, Result<bool>>;
    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        now: Millis,
        with_values: bool,
    ) -> BoxFuture<'a, Result<Vec<ScanEntry>>>;
    fn len(&self, now: Millis) -> BoxFuture<'_, Result<usize>>;
    fn clear(&self, now: Millis) -> BoxFuture<'_, Result<Cleared>>;
    fn pop_any(&self, now: Millis) -> BoxFuture<'_, Result<Option<KeyValue>>>;
    fn apply_batch(&self, ops: Vec<BatchOp>, now: Millis) -> BoxFuture<'_, Result<Vec<Removed>>>;
    fn sweep<'a>(
        &'a self,
        now: Millis,
        limit: usize,
        out: &'a mut Vec<ExpiredEntry>,
    ) -> BoxFuture<'a, Result<bool>>;
    fn next_deadline(&self) -> BoxFuture<'_, Result<Option<Millis>>>;
    fn remove_inactive<'a>(
        &'a self,
        prefix: &'a str,
        idle_since: Millis,
        now: Millis,
    ) -> BoxFuture<'a, Result<Vec<KeyValue>>>;
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        lease: Millis,
        now: Millis,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        let _ = (name, owner, lease, now);
        Box::pin(std::future::ready(Err(crate::Error::Backend(
            "this backend has no locks".into(),
        ))))
    }
    fn unlock<'a>(
        &'a self,
        name: &'a str,
        owner: &'a str,
        now: Millis,
    ) -> BoxFuture<'a, Result<bool>> {
        let _ = (name, owner, now);
        Box::pin(std::future::ready(Err(crate::Error::Backend(
            "this backend has no locks".into(),
        ))))
    }
    fn is_shared(&self) -> bool;

    /// Whether every operation's future is ready when returned (the operation ran when called),
    /// as [`impl_async_via_sync!`](crate::impl_async_via_sync) makes them. The async front-end
    /// runs a write over any other backend as a task of its own, so that dropping the caller's
    /// future cannot separate the write from its events.
    fn completes_inline(&self) -> bool {
        false
    }
}

/// Implements [`AsyncBackend`] for a type whose [`Backend`](crate::Backend) operations never
/// block (they only take short in-memory locks), by running each one at once and returning a
/// ready future.
#[macro_export]
macro_rules! impl_async_via_sync {
    ($ty:ty) => {
        impl $crate::backend::AsyncBackend for $ty {
            fn get<'a>(
                &'a self,
                key: &'a str,
                now: &'a $crate::Now<'a>,
                mode: $crate::backend::ReadMode,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<Option<$crate::Bytes>>> {
                Box::pin(::std::future::ready($crate::Backend::get(
                    self, key, now, mode,
                )))
            }
            fn get_many<'a>(
                &'a self,
                keys: &'a [&'a str],
                now: &'a $crate::Now<'a>,
                mode: $crate::backend::ReadMode,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<Vec<Option<$crate::Bytes>>>> {
                Box::pin(::std::future::ready($crate::Backend::get_many(
                    self, keys, now, mode,
                )))
            }
            fn contains<'a>(
                &'a self,
                key: &'a str,
                now: &'a $crate::Now<'a>,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<bool>> {
                Box::pin(::std::future::ready($crate::Backend::contains(
                    self, key, now,
                )))
            }
            fn set<'a>(
                &'a self,
                key: &'a str,
                value: $crate::Bytes,
                expiry: $crate::backend::WriteExpiry,
                condition: $crate::backend::Condition,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<$crate::backend::Written>> {
                Box::pin(::std::future::ready($crate::Backend::set(
                    self, key, value, expiry, condition, now,
                )))
            }
            fn delete<'a>(
                &'a self,
                key: &'a str,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<$crate::backend::Removed>> {
                Box::pin(::std::future::ready($crate::Backend::delete(
                    self, key, now,
                )))
            }
            fn update<'a>(
                &'a self,
                key: &'a str,
                now: $crate::Millis,
                f: &'a mut $crate::backend::UpdateFn<'a>,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<$crate::backend::Updated>> {
                Box::pin(::std::future::ready($crate::Backend::update(
                    self, key, now, f,
                )))
            }
            fn ttl<'a>(
                &'a self,
                key: &'a str,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<$crate::KeyTtl>> {
                Box::pin(::std::future::ready($crate::Backend::ttl(self, key, now)))
            }
            fn set_expiry<'a>(
                &'a self,
                key: &'a str,
                expiry: $crate::backend::Expiry,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<bool>> {
                Box::pin(::std::future::ready($crate::Backend::set_expiry(
                    self, key, expiry, now,
                )))
            }
            fn scan<'a>(
                &'a self,
                prefix: &'a str,
                now: $crate::Millis,
                with_values: bool,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<Vec<$crate::backend::ScanEntry>>>
            {
                Box::pin(::std::future::ready($crate::Backend::scan(
                    self,
                    prefix,
                    now,
                    with_values,
                )))
            }
            fn len(
                &self,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'_, $crate::Result<usize>> {
                Box::pin(::std::future::ready($crate::Backend::len(self, now)))
            }
            fn clear(
                &self,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'_, $crate::Result<$crate::backend::Cleared>> {
                Box::pin(::std::future::ready($crate::Backend::clear(self, now)))
            }
            fn pop_any(
                &self,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'_, $crate::Result<Option<$crate::backend::KeyValue>>>
            {
                Box::pin(::std::future::ready($crate::Backend::pop_any(self, now)))
            }
            fn apply_batch(
                &self,
                ops: Vec<$crate::backend::BatchOp>,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'_, $crate::Result<Vec<$crate::backend::Removed>>> {
                Box::pin(::std::future::ready($crate::Backend::apply_batch(
                    self, ops, now,
                )))
            }
            fn sweep<'a>(
                &'a self,
                now: $crate::Millis,
                limit: usize,
                out: &'a mut Vec<$crate::backend::ExpiredEntry>,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<bool>> {
                Box::pin(::std::future::ready($crate::Backend::sweep(
                    self, now, limit, out,
                )))
            }
            fn next_deadline(
                &self,
            ) -> $crate::backend::BoxFuture<'_, $crate::Result<Option<$crate::Millis>>> {
                Box::pin(::std::future::ready($crate::Backend::next_deadline(self)))
            }
            fn remove_inactive<'a>(
                &'a self,
                prefix: &'a str,
                idle_since: $crate::Millis,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<Vec<$crate::backend::KeyValue>>>
            {
                Box::pin(::std::future::ready($crate::Backend::remove_inactive(
                    self, prefix, idle_since, now,
                )))
            }
            fn try_lock<'a>(
                &'a self,
                name: &'a str,
                owner: &'a str,
                lease: $crate::Millis,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<Option<u64>>> {
                Box::pin(::std::future::ready($crate::Backend::try_lock(
                    self, name, owner, lease, now,
                )))
            }
            fn unlock<'a>(
                &'a self,
                name: &'a str,
                owner: &'a str,
                now: $crate::Millis,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<bool>> {
                Box::pin(::std::future::ready($crate::Backend::unlock(
                    self, name, owner, now,
                )))
            }
            fn is_shared(&self) -> bool {
                $crate::Backend::is_shared(self)
            }
            fn completes_inline(&self) -> bool {
                true
            }
        }
    };
}

/// An [`AsyncBackend`] over a blocking [`Backend`](super::Backend): each operation runs on
/// tokio's blocking threads (`spawn_blocking`), never on the runtime's workers, so that slow
/// I/O (SQLite's fsync, a busy lock) holds up no task. Operations of many tasks run in parallel,
/// as far as the backend allows (SQLite: readers in parallel, one writer).
///
/// `update` keeps its contract: the closure runs exactly once, on the calling task, while the
/// backend holds the key on a blocking thread; if the caller's future is dropped before deciding,
/// nothing changes.
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub struct OffRuntime<B: ?Sized> {
    backend: std::sync::Arc<B>,
}

#[cfg(feature = "async")]
mod off_runtime {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::oneshot;

    use super::{BoxFuture, OffRuntime, UpdateFn};
    use crate::backend::{
        Backend, BatchOp, Change, Cleared, Condition, ExpiredEntry, Expiry, KeyTtl, KeyValue,
        ReadMode, Removed, ScanEntry, Updated, WriteExpiry, Written,
    };
    use crate::clock::{Millis, Now};
    use crate::error::{Error, Result};

    impl<B: Backend + ?Sized> OffRuntime<B> {
        /// Wraps `backend`.
        pub fn new(backend: Arc<B>) -> Self {
            OffRuntime { backend }
        }

        /// Runs `op` on a blocking thread.
        async fn run<T: Send + 'static>(
            &self,
            op: impl FnOnce(&B) -> Result<T> + Send + 'static,
        ) -> Result<T> {
            let backend = self.backend.clone();
            tokio::task::spawn_blocking(move || op(&backend))
                .await
                .map_err(|e| Error::Backend(Box::new(e)))?
        }
    }

    impl<B: ?Sized> std::fmt::Debug for OffRuntime<B>
    where
        B: std::fmt::Debug,
    {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_tuple("OffRuntime").field(&self.backend).finish()
        }
    }

    impl<B: Backend + ?Sized> super::AsyncBackend for OffRuntime<B> {
        fn get<'a>(
            &'a self,
            key: &'a str,
            now: &'a Now<'a>,
            mode: ReadMode,
        ) -> BoxFuture<'a, Result<Option<Bytes>>> {
            let (key, now) = (key.to_owned(), now.exact());
            Box::pin(self.run(move |b| b.get(&key, &Now::fixed(now), mode)))
        }
        fn get_many<'a>(
            &'a self,
            keys: &'a [&'a str],
            now: &'a Now<'a>,
            mode: ReadMode,
        ) -> BoxFuture<'a, Result<Vec<Option<Bytes>>>> {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            let now = now.exact();
            Box::pin(self.run(move |b| {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                b.get_many(&keys, &Now::fixed(now), mode)
            }))
        }
        fn contains<'a>(&'a self, key: &'a str, now: &'a Now<'a>) -> BoxFuture<'a, Result<bool>> {
            let (key, now) = (key.to_owned(), now.exact());
            Box::pin(self.run(move |b| b.contains(&key, &Now::fixed(now))))
        }
        fn set<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
            expiry: WriteExpiry,
            condition: Condition,
            now: Millis,
        ) -> BoxFuture<'a, Result<Written>> {
            let key = key.to_owned();
            Box::pin(self.run(move |b| b.set(&key, value, expiry, condition, now)))
        }
        fn delete<'a>(&'a self, key: &'a str, now: Millis) -> BoxFuture<'a, Result<Removed>> {
            let key = key.to_owned();
            Box::pin(self.run(move |b| b.delete(&key, now)))
        }
        fn update<'a>(
            &'a self,
            key: &'a str,
            now: Millis,
            f: &'a mut UpdateFn<'a>,
        ) -> BoxFuture<'a, Result<Updated>> {
            Box::pin(async move {
                let (current_tx, current_rx) = oneshot::channel::<Option<Bytes>>();
                let (change_tx, change_rx) = std::sync::mpsc::sync_channel::<Result<Change>>(1);
                let key = key.to_owned();
                let held = self.run(move |b| {
                    let mut current_tx = Some(current_tx);
                    b.update(&key, now, &mut |current| {
                        let tx = current_tx
                            .take()
                            .expect("Backend::update calls its closure once");
                        if tx.send(current.cloned()).is_err() {
                            return Err(Error::Closed);
                        }
                        // The caller went away without deciding: change nothing.
                        change_rx.recv().unwrap_or(Err(Error::Closed))
                    })
                });
                let decide = async move {
                    // No value arrives when the backend failed before calling the closure.
                    if let Ok(current) = current_rx.await {
                        let _ = change_tx.send(f(current.as_ref()));
                    }
                };
                let (result, ()) = tokio::join!(held, decide);
                result
            })
        }
        fn ttl<'a>(&'a self, key: &'a str, now: Millis) -> BoxFuture<'a, Result<KeyTtl>> {
            let key = key.to_owned();
            Box::pin(self.run(move |b| b.ttl(&key, now)))
        }
        fn set_expiry<'a>(
            &'a self,
            key: &'a str,
            expiry: Expiry,
            now: Millis,
        ) -> BoxFuture<'a, Result<bool>> {
            let key = key.to_owned();
            Box::pin(self.run(move |b| b.set_expiry(&key, expiry, now)))
        }
        fn scan<'a>(
            &'a self,
            prefix: &'a str,
            now: Millis,
            with_values: bool,
        ) -> BoxFuture<'a, Result<Vec<ScanEntry>>> {
            let prefix = prefix.to_owned();
            Box::pin(self.run(move |b| b.scan(&prefix, now, with_values)))
        }
        fn len(&self, now: Millis) -> BoxFuture<'_, Result<usize>> {
            Box::pin(self.run(move |b| b.len(now)))
        }
        fn clear(&self, now: Millis) -> BoxFuture<'_, Result<Cleared>> {
            Box::pin(self.run(move |b| b.clear(now)))
        }
        fn pop_any(&self, now: Millis) -> BoxFuture<'_, Result<Option<KeyValue>>> {
            Box::pin(self.run(move |b| b.pop_any(now)))
        }
        fn apply_batch(
            &self,
            ops: Vec<BatchOp>,
            now: Millis,
        ) -> BoxFuture<'_, Result<Vec<Removed>>> {
            Box::pin(self.run(move |b| b.apply_batch(ops, now)))
        }
        fn sweep<'a>(
            &'a self,
            now: Millis,
            limit: usize,
            out: &'a mut Vec<ExpiredEntry>,
        ) -> BoxFuture<'a, Result<bool>> {
            Box::pin(async move {
                // The caller's buffer travels to the blocking thread and back, so that it is
                // reused from sweep to sweep (see `Backend::sweep`).
                let mut buffer = std::mem::take(out);
                let (buffer, more) = self
                    .run(move |b| b.sweep(now, limit, &mut buffer).map(|more| (buffer, more)))
                    .await?;
                *out = buffer;
                Ok(more)
            })
        }
        fn next_deadline(&self) -> BoxFuture<'_, Result<Option<Millis>>> {
            Box::pin(self.run(|b| b.next_deadline()))
        }
        fn remove_inactive<'a>(
            &'a self,
            prefix: &'a str,
            idle_since: Millis,
            now: Millis,
        ) -> BoxFuture<'a, Result<Vec<KeyValue>>> {
            let prefix = prefix.to_owned();
            Box::pin(self.run(move |b| b.remove_inactive(&prefix, idle_since, now)))
        }
        fn try_lock<'a>(
            &'a self,
            name: &'a str,
            owner: &'a str,
            lease: Millis,
            now: Millis,
        ) -> BoxFuture<'a, Result<Option<u64>>> {
            let (name, owner) = (name.to_owned(), owner.to_owned());
            Box::pin(self.run(move |b| b.try_lock(&name, &owner, lease, now)))
        }
        fn unlock<'a>(
            &'a self,
            name: &'a str,
            owner: &'a str,
            now: Millis,
        ) -> BoxFuture<'a, Result<bool>> {
            let (name, owner) = (name.to_owned(), owner.to_owned());
            Box::pin(self.run(move |b| b.unlock(&name, &owner, now)))
        }
        fn is_shared(&self) -> bool {
            self.backend.is_shared()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::backend::memory::MemoryBackend;

    /// Polls a future that must be ready at once (no runtime needed).
    fn now_ready<T>(mut f: BoxFuture<'_, T>) -> T {
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the memory backend never waits"),
        }
    }

    #[test]
    fn memory_backend_works_through_the_async_twin() {
        let b: Arc<dyn AsyncBackend> = Arc::new(MemoryBackend::new());
        let fixed = WriteExpiry::replace(Expiry::After {
            ttl: 10,
            sliding: false,
        });
        let w =
            now_ready(b.set("k", Bytes::from_static(b"v"), fixed, Condition::Always, 0)).unwrap();
        assert!(w.written);
        assert_eq!(
            now_ready(b.get("k", &Now::fixed(5), ReadMode::Touch))
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
        let mut f = |cur: Option<&Bytes>| {
            assert!(cur.is_some());
            Ok(Change::Delete)
        };
        let u = now_ready(b.update("k", 5, &mut f)).unwrap();
        assert!(u.previous.is_some());
        assert_eq!(now_ready(b.len(5)).unwrap(), 0);
    }
}
