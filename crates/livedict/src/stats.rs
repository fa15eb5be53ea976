//! Operation counters, striped across cache lines so that counting does not make threads contend.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

const STRIPES: usize = 16;

/// What a store has done since it was built.
///
/// `hits` and `misses` count reads (`get` and its forms, `get_many`, `peek` does not count);
/// `expirations` counts entries removed because their deadline passed, whoever removed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing (missing or expired).
    pub misses: u64,
    /// Values written (each key of a bulk write counts once).
    pub sets: u64,
    /// Entries removed by `delete`, `pop`, `popitem`, `clear` and friends.
    pub deletes: u64,
    /// Entries removed because their deadline passed.
    pub expirations: u64,
    /// Entries removed by `cleanup_inactive`.
    pub inactive_removals: u64,
    /// How late active expiry removed entries after their deadlines, measured on the store's
    /// clock: median.
    pub expiry_lag_p50: Duration,
    /// The same, 99th percentile.
    pub expiry_lag_p99: Duration,
    /// Hook calls that returned successfully in time.
    pub hooks_delivered: u64,
    /// Hook calls that returned an error or panicked.
    pub hooks_failed: u64,
    /// Hook calls abandoned after their timeout.
    pub hooks_timed_out: u64,
    /// Events dropped: by a full queue's policy, or still queued when the store closed.
    pub events_dropped: u64,
}

#[derive(Default)]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    sets: AtomicU64,
    deletes: AtomicU64,
    expirations: AtomicU64,
    inactive: AtomicU64,
}

/// The live counters behind [`Stats`].
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Stripe>]>,
    /// Expiry lag in microseconds; written by the expiry driver only.
    lag: Mutex<hdrhistogram::Histogram<u64>>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// The counter kinds a caller can bump.
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Hit,
    Miss,
    Set,
    Delete,
    Expiration,
    Inactive,
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        i.get()
    })
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            stripes: (0..STRIPES)
                .map(|_| CachePadded::new(Stripe::default()))
                .collect(),
            // 1 µs to 1 hour with 2 significant digits: a few kilobytes.
            lag: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2)
                    .expect("valid histogram bounds"),
            ),
        }
    }

    #[inline]
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        if n == 0 {
            return;
        }
        let s = &self.stripes[stripe_index()];
        let c = match counter {
            Counter::Hit => &s.hits,
            Counter::Miss => &s.misses,
            Counter::Set => &s.sets,
            Counter::Delete => &s.deletes,
            Counter::Expiration => &s.expirations,
            Counter::Inactive => &s.inactive,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Records how late (in microseconds) an entry was actively expired.
    pub(crate) fn record_lags(&self, lags_us: impl Iterator<Item = u64>) {
        let mut h = self.lag.lock();
        for lag in lags_us {
            h.saturating_record(lag.max(1));
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut st = Stats::default();
        for s in self.stripes.iter() {
            st.hits += s.hits.load(Ordering::Relaxed);
            st.misses += s.misses.load(Ordering::Relaxed);
            st.sets += s.sets.load(Ordering::Relaxed);
            st.deletes += s.deletes.load(Ordering::Relaxed);
            st.expirations += s.expirations.load(Ordering::Relaxed);
            st.inactive_removals += s.inactive.load(Ordering::Relaxed);
        }
        let h = self.lag.lock();
        if !h.is_empty() {
            st.expiry_lag_p50 = Duration::from_micros(h.value_at_quantile(0.5));
            st.expiry_lag_p99 = Duration::from_micros(h.value_at_quantile(0.99));
        }
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads() {
        let c = Arc::new(Counters::new());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(Counter::Hit, 1);
                        c.add(Counter::Set, 2);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = c.snapshot();
        assert_eq!(s.hits, 8000);
        assert_eq!(s.sets, 16000);
        assert_eq!(s.misses, 0);
    }

    #[test]
    fn lag_quantiles() {
        let c = Counters::new();
        c.record_lags([1000u64, 1000, 1000, 50_000].into_iter());
        let s = c.snapshot();
        assert!(s.expiry_lag_p50 >= Duration::from_micros(990));
        assert!(s.expiry_lag_p50 <= Duration::from_micros(1010));
        assert!(s.expiry_lag_p99 >= Duration::from_millis(49));
    }
}
