//! Where a store's time comes from: the system clock, or a manual clock for tests.
//!
//! Every deadline in livedict is a count of milliseconds since the Unix epoch ([`Millis`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The time source of a store.
///
/// [`Clock::System`] is the default. [`Clock::Manual`] only moves when told to, so tests of TTLs run
/// without sleeping; advancing it wakes the store's expiry driver so active expiry happens too.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{Clock, LiveDict, ManualClock};
///
/// let clock = ManualClock::new();
/// let store = LiveDict::builder().clock(Clock::Manual(clock.clone())).build()?;
/// store.set_with("k", &1, Duration::from_secs(10))?;
/// clock.advance(Duration::from_secs(10));
/// assert_eq!(store.get::<i32>("k")?, None);
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The operating system's wall clock.
    #[default]
    System,
    /// A clock moved by hand ([`ManualClock::advance`]).
    Manual(ManualClock),
}

impl Clock {
    /// A new manual clock, returned with the handle that moves it.
    pub fn manual() -> (Clock, ManualClock) {
        let manual = ManualClock::new();
        (Clock::Manual(manual.clone()), manual)
    }

    /// The current time in milliseconds since the Unix epoch.
    #[inline]
    pub fn now(&self) -> Millis {
        match self {
            Clock::System => system_now(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// Calls `wake` whenever this clock jumps forward (manual clocks only); dropped with `wake`.
    pub(crate) fn on_advance(&self, wake: &Arc<dyn Fn() + Send + Sync>) {
        if let Clock::Manual(m) = self {
            let mut listeners = m.inner.listeners.lock();
            listeners.retain(|w| w.strong_count() > 0);
            listeners.push(Arc::downgrade(wake));
        }
    }
}

#[inline]
fn system_now() -> Millis {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() * 1000 + u64::from(d.subsec_millis()),
        Err(_) => 0,
    }
}

/// A clock that only moves when [`advance`](ManualClock::advance) or [`set`](ManualClock::set) is
/// called. Cloning gives another handle on the same clock.
#[derive(Clone, Debug)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: AtomicU64,
    listeners: Mutex<Vec<Weak<dyn Fn() + Send + Sync>>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A manual clock starting at 2023-11-14T22:13:20Z (1,700,000,000,000 ms), far from zero so
    /// that deadline arithmetic behaves as with a real clock.
    pub fn new() -> Self {
        Self::starting_at(1_700_000_000_000)
    }

    /// A manual clock starting at `millis` since the Unix epoch.
    pub fn starting_at(millis: Millis) -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                now: AtomicU64::new(millis),
                listeners: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The clock's current time.
    pub fn now(&self) -> Millis {
        self.inner.now.load(Ordering::Acquire)
    }

    /// Moves the clock forward by `by` (millisecond resolution) and wakes the stores using it.
    pub fn advance(&self, by: Duration) {
        self.inner
            .now
            .fetch_add(by.as_millis() as Millis, Ordering::AcqRel);
        self.wake();
    }

    /// Sets the clock to `millis`; moving it backwards is allowed (deadlines already passed stay
    /// passed only if the time is still after them).
    pub fn set(&self, millis: Millis) {
        self.inner.now.store(millis, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        let listeners: Vec<_> = self
            .inner
            .listeners
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for wake in listeners {
            wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let (clock, handle) = Clock::manual();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        handle.advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), t0 + 1500);
        handle.set(5);
        assert_eq!(clock.now(), 5);
    }

    #[test]
    fn manual_clock_wakes_listeners_until_dropped() {
        let (clock, handle) = Clock::manual();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            h.fetch_add(1, Ordering::Relaxed);
        });
        clock.on_advance(&wake);
        handle.advance(Duration::from_millis(1));
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        drop(wake);
        handle.advance(Duration::from_millis(1));
        assert_eq!(hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn system_clock_is_near_now() {
        let now = Clock::System.now();
        assert!(now > 1_600_000_000_000);
    }
}
