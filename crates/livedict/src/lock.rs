//! Lock guards: what [`LiveDict::lock`](crate::LiveDict::lock) and
//! [`AsyncLiveDict::lock`](crate::AsyncLiveDict::lock) return.
//!
//! A lock has an owner token (128 random bits) known only to its guard, a lease after which it
//! frees itself if the holder died, and a fencing token that grows with every acquisition. On
//! SQLite and Redis it holds across processes. Only the owner can release it: a guard whose lease
//! ran out releases nothing that another owner took since.

use std::fmt;
use std::time::Duration;

use crate::dict::{HeldLock, run_ready};
use crate::error::Result;
use crate::sync::LiveDict;

/// A fresh owner token for a lock, an update or a batch: 128 bits from the operating system, as
/// 32 hex digits. Not from the thread's generator, which a forked child inherits (rand does not
/// reseed it on fork): parent and child would draw the same tokens, and one could release the
/// other's lock.
pub(crate) fn owner_token() -> String {
    let mut bits = [0u8; 16];
    if getrandom::fill(&mut bits).is_err() {
        // No randomness from the OS (it has never happened on Linux): the thread's generator.
        bits = rand::random();
    }
    format!("{:032x}", u128::from_be_bytes(bits))
}

/// The lease of a lock taken by `lock` (`lock_with` sets another).
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(30);

/// A held lock of a [`LiveDict`]; released when dropped.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// # let store = livedict::LiveDict::new();
/// let guard = store.lock("job:42", Duration::from_secs(5))?.expect("free");
/// assert!(store.lock("job:42", Duration::ZERO)?.is_none()); // held
/// let fence = guard.fence();
/// drop(guard);
/// let again = store.lock("job:42", Duration::ZERO)?.expect("released");
/// assert!(again.fence() > fence);
/// # Ok::<(), livedict::Error>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    store: LiveDict,
    held: Option<HeldLock>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.held.as_ref();
        f.debug_struct("LockGuard")
            .field("key", &held.map(|h| &h.name))
            .field("fence", &held.map(|h| h.fence))
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    pub(crate) fn new(store: LiveDict, held: HeldLock) -> Self {
        LockGuard {
            store,
            held: Some(held),
        }
    }

    /// The fencing token of this acquisition: larger than that of every earlier acquisition of
    /// the lock. Pass it to the resource the lock protects, so that it can refuse a holder whose
    /// lease ran out.
    pub fn fence(&self) -> u64 {
        self.held.as_ref().map_or(0, |h| h.fence)
    }

    /// The locked key (full key, namespace prefix included).
    pub fn key(&self) -> &str {
        self.held.as_ref().map_or("", |h| h.name.as_str())
    }

    /// Releases the lock now; false if its lease had run out (another owner may hold it).
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) (the lease frees the lock anyway).
    /// [`Error::Reentrant`](crate::Error::Reentrant) inside one of the store's update closures;
    /// the guard is then released once the update is done, as when dropped there.
    pub fn release(mut self) -> Result<bool> {
        // On an error here, the guard's drop releases the lock from another thread.
        self.store.dict().check_reentrancy()?;
        match self.held.take() {
            Some(held) => run_ready(self.store.dict().release_lock(&held)),
            None => Ok(false),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        match run_ready(self.store.dict().release_lock(&held)) {
            // Dropped inside one of the store's update closures: released from another thread,
            // once the update is done (on SQLite the release waits for the update's write lock).
            Err(crate::Error::Reentrant) => {
                let store = self.store.clone();
                let name = held.name.clone();
                let spawned = std::thread::Builder::new()
                    .name("livedict-unlock".into())
                    .spawn(move || released(run_ready(store.dict().release_lock(&held)), &held));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, key = %name, "livedict: cannot release a lock; its lease will");
                }
            }
            outcome => released(outcome, &held),
        }
    }
}

/// Logs what a guard's drop could not do: release the lock (its lease will), or release it
/// before its lease ran out (another owner may have held it meanwhile).
fn released(outcome: Result<bool>, held: &HeldLock) {
    match outcome {
        Ok(true) => {}
        Ok(false) => tracing::warn!(key = %held.name,
            "livedict: a lock's lease ran out before its guard released it; another owner may have held it"),
        Err(e) => tracing::warn!(error = %e, key = %held.name,
            "livedict: cannot release a lock; its lease will"),
    }
}

/// A held lock of an [`AsyncLiveDict`](crate::AsyncLiveDict); released when dropped (by a task
/// on the store's runtime) or, awaited, with [`release`](Self::release).
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct AsyncLockGuard {
    store: crate::AsyncLiveDict,
    held: Option<HeldLock>,
}

#[cfg(feature = "async")]
impl fmt::Debug for AsyncLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.held.as_ref();
        f.debug_struct("AsyncLockGuard")
            .field("key", &held.map(|h| &h.name))
            .field("fence", &held.map(|h| h.fence))
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "async")]
impl AsyncLockGuard {
    pub(crate) fn new(store: crate::AsyncLiveDict, held: HeldLock) -> Self {
        AsyncLockGuard {
            store,
            held: Some(held),
        }
    }

    /// The fencing token of this acquisition; see [`LockGuard::fence`].
    pub fn fence(&self) -> u64 {
        self.held.as_ref().map_or(0, |h| h.fence)
    }

    /// The locked key (full key, namespace prefix included).
    pub fn key(&self) -> &str {
        self.held.as_ref().map_or("", |h| h.name.as_str())
    }

    /// Releases the lock now; false if its lease had run out.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) (the lease frees the lock anyway).
    pub async fn release(mut self) -> Result<bool> {
        // On an error here, the guard's drop releases the lock (from a task).
        self.store.dict().check_reentrancy()?;
        match self.held.take() {
            Some(held) => self.store.dict().release_lock(&held).await,
            None => Ok(false),
        }
    }
}

#[cfg(feature = "async")]
impl Drop for AsyncLockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            let store = self.store.clone();
            drop(store.runtime().clone().spawn(async move {
                released(store.dict().release_lock(&held).await, &held);
            }));
        }
    }
}
