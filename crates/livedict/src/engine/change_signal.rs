//! Wakes `wait_for` callers when the store changes, at the cost of one atomic load per write when
//! nobody waits. Both front-ends wait on it: the sync one blocks on a listener, the async one
//! awaits it.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use event_listener::{Event, EventListener};

#[derive(Debug, Default)]
pub(crate) struct ChangeSignal {
    waiters: AtomicUsize,
    event: Event,
}

/// A registered waiter; unregisters on drop.
pub(crate) struct Waiter<'a> {
    signal: &'a ChangeSignal,
}

impl ChangeSignal {
    /// Called after every write.
    #[inline]
    pub(crate) fn notify(&self) {
        if self.waiters.load(SeqCst) > 0 {
            self.event.notify(usize::MAX);
        }
    }

    /// Registers a waiter: from now on writes notify.
    pub(crate) fn register(&self) -> Waiter<'_> {
        self.waiters.fetch_add(1, SeqCst);
        Waiter { signal: self }
    }
}

impl Waiter<'_> {
    /// A listener for the next write. Take it *before* checking the condition, then wait on it:
    /// a write that lands between the two is not missed.
    pub(crate) fn listen(&self) -> EventListener {
        self.signal.event.listen()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.signal.waiters.fetch_sub(1, SeqCst);
    }
}
