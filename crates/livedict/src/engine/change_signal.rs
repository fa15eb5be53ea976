//! Wakes `wait_for` callers when the store changes, at the cost of one atomic load per write when
//! nobody waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct ChangeSignal {
    waiters: AtomicUsize,
    version: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
}

/// A registered waiter; unregisters on drop.
pub(crate) struct Waiter<'a> {
    signal: &'a ChangeSignal,
    seen: u64,
}

impl ChangeSignal {
    /// Called after every write.
    #[inline]
    pub(crate) fn notify(&self) {
        if self.waiters.load(SeqCst) > 0 {
            let _g = self.lock.lock();
            self.version.fetch_add(1, SeqCst);
            self.cv.notify_all();
        }
    }

    /// Registers a waiter. Register *before* checking the condition, then [`Waiter::wait`]: a
    /// write that lands between the two is not missed.
    pub(crate) fn register(&self) -> Waiter<'_> {
        self.waiters.fetch_add(1, SeqCst);
        Waiter {
            signal: self,
            seen: self.version.load(SeqCst),
        }
    }
}

impl Waiter<'_> {
    /// Blocks until a write since registration (or the last wait), or `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) {
        let s = self.signal;
        let mut g = s.lock.lock();
        if s.version.load(SeqCst) == self.seen {
            s.cv.wait_for(&mut g, timeout);
        }
        self.seen = s.version.load(SeqCst);
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.signal.waiters.fetch_sub(1, SeqCst);
    }
}
