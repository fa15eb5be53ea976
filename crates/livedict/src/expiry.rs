//! The expiry driver: a background thread that removes entries when their deadline passes, without
//! any read touching them.
//!
//! It asks the backend to sweep (remove and return) what is due, then sleeps until the backend's
//! next deadline. A write with a deadline earlier than the driver's planned wake-up kicks it; a
//! manual clock kicks it when advanced. Shared backends (SQLite, Redis), where other processes add
//! deadlines, are also polled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use crate::backend::{Backend, ExpiredEntry};
use crate::clock::{Clock, Millis, Now};
use crate::engine::Engine;

/// Entries removed per sweep call; the driver loops while sweeps come back full. The batch buffer
/// is allocated once and reused (see [`Backend::sweep`]).
const SWEEP_BATCH: usize = 256;
/// Longest sleep with nothing scheduled, on a backend only this process writes.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Longest sleep on a shared backend, where other processes add deadlines.
const SHARED_POLL: Duration = Duration::from_millis(100);
/// Pause after a failed sweep (a backend that went away).
const ERROR_BACKOFF: Duration = Duration::from_millis(250);

/// How writers reach the driver: the time it plans to wake, and a way to wake it earlier.
#[derive(Debug)]
pub(crate) struct DriverControl {
    /// The deadline the driver sleeps until; `u64::MAX` while it is working or has nothing planned.
    planned: AtomicU64,
    kicked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Default for DriverControl {
    fn default() -> Self {
        DriverControl {
            planned: AtomicU64::new(u64::MAX),
            kicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }
}

impl DriverControl {
    /// Called after a write with `deadline`: wakes the driver if it planned to sleep past it.
    #[inline]
    pub(crate) fn note_deadline(&self, deadline: Millis) {
        if deadline < self.planned.load(SeqCst) {
            self.kick();
        }
    }

    pub(crate) fn kick(&self) {
        if !self.kicked.swap(true, SeqCst) {
            let _g = self.lock.lock();
            self.cv.notify_one();
        }
    }

    fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.kicked.store(true, SeqCst);
        let _g = self.lock.lock();
        self.cv.notify_one();
    }

    fn sleep(&self, timeout: Duration) {
        let mut g = self.lock.lock();
        if !self.kicked.load(SeqCst) && !self.stop.load(SeqCst) {
            self.cv.wait_for(&mut g, timeout);
        }
    }
}

/// The running driver thread; stopped and joined on drop.
pub(crate) struct ExpiryDriver {
    control: Arc<DriverControl>,
    thread: Option<JoinHandle<()>>,
    _clock_listener: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for ExpiryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryDriver").finish_non_exhaustive()
    }
}

impl ExpiryDriver {
    pub(crate) fn start(engine: Arc<Engine>, backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let control = engine.expiry.clone();
        let kick = control.clone();
        let listener: Arc<dyn Fn() + Send + Sync> = Arc::new(move || kick.kick());
        engine.clock.on_advance(&listener);
        let thread = std::thread::Builder::new()
            .name("livedict-expiry".into())
            .spawn(move || run(&engine, &*backend))?;
        Ok(ExpiryDriver {
            control,
            thread: Some(thread),
            _clock_listener: listener,
        })
    }

    /// Stops the thread and waits for it (at most the length of one sweep batch).
    pub(crate) fn stop(&mut self) {
        self.control.stop();
        if let Some(t) = self.thread.take() {
            if t.thread().id() == std::thread::current().id() {
                return; // dropped from its own thread: it exits by itself
            }
            let _ = t.join();
        }
    }
}

impl Drop for ExpiryDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Removes everything due at the clock's current time, in batches through `expired` (a buffer
/// kept from sweep to sweep), and accounts for it; returns how many entries were removed. Used by
/// the driver and by `sweep_expired`.
pub(crate) fn sweep_due(
    engine: &Engine,
    backend: &dyn Backend,
    expired: &mut Vec<ExpiredEntry>,
) -> crate::error::Result<usize> {
    let mut total = 0;
    loop {
        let now = engine.clock.now();
        expired.clear();
        backend.sweep(now, SWEEP_BATCH, expired)?;
        engine.expired(expired, &|k| {
            backend.contains(k, &Now::fixed(now)).unwrap_or(false)
        });
        if matches!(engine.clock, Clock::System) {
            let now_us = micros_since_epoch();
            engine.counters.record_lags(
                expired
                    .iter()
                    .map(|e| now_us.saturating_sub(e.deadline.saturating_mul(1000))),
            );
        }
        total += expired.len();
        if expired.len() < SWEEP_BATCH || engine.expiry.stop.load(SeqCst) {
            return Ok(total);
        }
    }
}

fn run(engine: &Engine, backend: &dyn Backend) {
    let control = &*engine.expiry;
    let cap = if backend.is_shared() {
        SHARED_POLL
    } else {
        IDLE_WAIT
    };
    let mut expired = Vec::with_capacity(SWEEP_BATCH);
    while !control.stop.load(SeqCst) {
        // While working, every write with a deadline kicks: none can slip between the sweep and
        // the sleep below.
        control.planned.store(u64::MAX, SeqCst);
        control.kicked.store(false, SeqCst);
        if let Err(e) = sweep_due(engine, backend, &mut expired) {
            tracing::warn!(error = %e, "livedict: expiry sweep failed; retrying");
            control.sleep(ERROR_BACKOFF);
            continue;
        }
        let next = match backend.next_deadline() {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "livedict: cannot read the next deadline");
                control.sleep(ERROR_BACKOFF);
                continue;
            }
        };
        let now = engine.clock.now();
        if next.is_some_and(|d| d <= now) {
            continue;
        }
        control.planned.store(next.unwrap_or(u64::MAX), SeqCst);
        let wait = match (&engine.clock, next) {
            (Clock::System, Some(d)) => {
                Duration::from_micros(d.saturating_mul(1000).saturating_sub(micros_since_epoch()))
                    .min(cap)
            }
            // A manual clock kicks the driver when it moves.
            _ => cap,
        };
        if !wait.is_zero() {
            control.sleep(wait);
        }
    }
}
