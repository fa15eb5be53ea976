//! The expiry driver: removes entries when their deadline passes, without any read touching
//! them. The sync front-end runs it on a thread, the async one as a tokio task; the loop is the
//! same code, over the front-end's [`Port`].
//!
//! It asks the backend to sweep (remove and return) what is due, then sleeps until the backend's
//! next deadline. A write with a deadline earlier than the driver's planned wake-up kicks it; a
//! manual clock kicks it when advanced. Shared backends (SQLite, Redis), where other processes add
//! deadlines, are also polled.
//!
//! A writer reports its deadline only when it is earlier than the driver's planned wake-up: it
//! lowers the *reported* minimum and kicks. A kicked driver does not sweep again: it takes the
//! reported minimum, wakes earlier if that is earlier, and goes back to sleep; only a wake-up at
//! its planned time (or a manual clock moved past it) starts a round. While it works (sweep,
//! then reading the next deadline), a driver over the memory backend plans no wake-up at all, so
//! that every write with a deadline reports: none can land on a shard already read and go unseen.
//! Before, each of those reports started another round, and a round (a read lock on each of 64
//! shards, twice) is long enough for a write to land in it: under a stream of writes the driver
//! never slept (130 rounds while one thread inserted 100,000 keys with a one-hour TTL), its read
//! locks in the writers' way.
//!
//! A driver over a shared backend plans its wake-up even while it works: there its work is
//! round trips to a file or a server, writes arrive all the time meanwhile, and kicking on each
//! kept it from ever sleeping under a stream of writes (on Redis, a sweep and a next-deadline
//! script per `set`: the redis suite's `set` ran at 0.72x of raw redis-rs before, 0.76x after, in
//! interleaved runs on one day). A write landing meanwhile with a deadline between the old plan
//! and the new is seen by the next poll instead, as other processes' writes are.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_listener::Event;

use crate::backend::{Backend, ExpiredEntry};
use crate::clock::{Clock, Millis};
use crate::dict::{Dict, Port, SWEEP_BATCH, SyncPort, run_ready};
use crate::engine::Engine;

/// Longest sleep with nothing scheduled, on a backend only this process writes.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Longest sleep on a shared backend, where other processes add deadlines.
const SHARED_POLL: Duration = Duration::from_millis(100);
/// Shortest sleep before a deadline not yet come (see `run`).
const MIN_WAIT: Duration = Duration::from_micros(250);
/// Pause after a failed sweep (a backend that went away).
const ERROR_BACKOFF: Duration = Duration::from_millis(250);
/// First and longest pause when a due entry outlived a sweep (doubled each time): short, since
/// other entries falling due meanwhile wait for it too.
const STUCK_BACKOFF: Duration = Duration::from_millis(1);
const STUCK_BACKOFF_MAX: Duration = Duration::from_millis(10);

/// How writers reach the driver: the time it plans to wake, and a way to wake it earlier.
#[derive(Debug)]
pub(crate) struct DriverControl {
    /// The deadline the driver sleeps until; `u64::MAX` while it is working (memory backend) or
    /// has nothing planned.
    planned: AtomicU64,
    /// The earliest deadline writers reported (each earlier than `planned` when written) since
    /// the driver last took it; `u64::MAX` for none.
    reported: AtomicU64,
    /// Rounds of the driver's loop, for tests.
    #[cfg(test)]
    pub(crate) rounds: AtomicU64,
    kicked: AtomicBool,
    stop: AtomicBool,
    wake: Event,
}

impl Default for DriverControl {
    fn default() -> Self {
        DriverControl {
            planned: AtomicU64::new(u64::MAX),
            reported: AtomicU64::new(u64::MAX),
            kicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: Event::new(),
            #[cfg(test)]
            rounds: AtomicU64::new(0),
        }
    }
}

impl DriverControl {
    /// Called after a write with `deadline`: reports it to the driver if it planned to sleep past
    /// it (see the module).
    #[inline]
    pub(crate) fn note_deadline(&self, deadline: Millis) {
        if deadline < self.planned.load(SeqCst) {
            if deadline < self.reported.load(SeqCst) {
                self.reported.fetch_min(deadline, SeqCst);
            }
            self.kick();
        }
    }

    pub(crate) fn kick(&self) {
        if !self.kicked.swap(true, SeqCst) {
            self.wake.notify(usize::MAX);
        }
    }

    /// The deadline the driver plans to wake at (`u64::MAX`: none, or working).
    #[cfg(test)]
    pub(crate) fn planned(&self) -> Millis {
        self.planned.load(SeqCst)
    }

    /// Whether the driver was told to stop.
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn stop(&self) {
        self.stop.store(true, SeqCst);
        self.kicked.store(true, SeqCst);
        self.wake.notify(usize::MAX);
    }

    /// Sleeps up to `timeout`, unless kicked or stopped first.
    async fn sleep<P: Port>(&self, timeout: Duration) {
        let listener = self.wake.listen();
        if !self.kicked.load(SeqCst) && !self.stop.load(SeqCst) {
            P::wait(listener, timeout).await;
        }
    }
}

/// Where the driver runs.
enum Runner {
    Thread(Option<JoinHandle<()>>),
    #[cfg(feature = "async")]
    /// A task; it ends by itself once told to stop (never awaited, so that dropping a store
    /// never blocks a runtime).
    Task,
}

/// The running driver; stopped on drop.
pub(crate) struct ExpiryDriver {
    control: Arc<DriverControl>,
    runner: Runner,
    _clock_listener: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for ExpiryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryDriver").finish_non_exhaustive()
    }
}

/// Kicks the driver whenever a manual clock moves.
fn listen_to_clock(engine: &Engine) -> Arc<dyn Fn() + Send + Sync> {
    let kick = engine.expiry.clone();
    let listener: Arc<dyn Fn() + Send + Sync> = Arc::new(move || kick.kick());
    engine.clock.on_advance(&listener);
    listener
}

impl ExpiryDriver {
    /// Starts the driver on a thread of its own (the sync front-end).
    pub(crate) fn start(engine: Arc<Engine>, backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let control = engine.expiry.clone();
        let listener = listen_to_clock(&engine);
        let thread = std::thread::Builder::new()
            .name("livedict-expiry".into())
            .spawn(move || {
                let dict = Dict {
                    engine: &engine,
                    port: SyncPort { backend: &*backend },
                    scope: None,
                };
                run_ready(run(&dict));
            })?;
        Ok(ExpiryDriver {
            control,
            runner: Runner::Thread(Some(thread)),
            _clock_listener: listener,
        })
    }

    /// Starts the driver as a task on `runtime` (the async front-end).
    #[cfg(feature = "async")]
    pub(crate) fn spawn(
        engine: Arc<Engine>,
        backend: Arc<dyn crate::backend::AsyncBackend>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let control = engine.expiry.clone();
        let listener = listen_to_clock(&engine);
        // Detached: `stop` tells it to end.
        drop(runtime.spawn(async move {
            let dict = Dict {
                engine: &engine,
                port: crate::dict::AsyncPort { backend: &*backend },
                scope: None,
            };
            run(&dict).await;
        }));
        ExpiryDriver {
            control,
            runner: Runner::Task,
            _clock_listener: listener,
        }
    }

    /// Stops the driver. A thread is joined (it finishes at most the sweep batch it is in); a
    /// task is told to stop and left to end by itself, so that this never blocks a runtime.
    pub(crate) fn stop(&mut self) {
        self.control.stop();
        match &mut self.runner {
            Runner::Thread(thread) => {
                if let Some(t) = thread.take() {
                    if t.thread().id() == std::thread::current().id() {
                        return; // dropped from its own thread: it exits by itself
                    }
                    let _ = t.join();
                }
            }
            #[cfg(feature = "async")]
            Runner::Task => {}
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

/// Records how late each of `expired` was removed (system clock only).
pub(crate) fn record_lateness(engine: &Engine, expired: &[ExpiredEntry]) {
    if matches!(engine.clock, Clock::System) {
        let now_us = micros_since_epoch();
        engine.counters.record_lags(
            expired
                .iter()
                .map(|e| now_us.saturating_sub(e.deadline.saturating_mul(1000))),
        );
    }
}

async fn run<P: Port>(dict: &Dict<'_, P>) {
    let engine = dict.engine;
    let port = &dict.port;
    let control = &*engine.expiry;
    let cap = if port.is_shared() {
        SHARED_POLL
    } else {
        IDLE_WAIT
    };
    let mut expired = Vec::with_capacity(SWEEP_BATCH);
    let mut stuck_pause = STUCK_BACKOFF;
    'rounds: while !control.stopping() {
        #[cfg(test)]
        control.rounds.fetch_add(1, SeqCst);
        if !port.is_shared() {
            // While working, every write with a deadline reports: none can slip between the
            // sweep and the sleep below. (Not on a shared backend, which is polled: see the
            // module.)
            control.planned.store(u64::MAX, SeqCst);
        }
        control.kicked.store(false, SeqCst);
        // What was reported so far is in the backend already, where the sweep and the look at
        // the next deadline below see it.
        control.reported.store(u64::MAX, SeqCst);
        let swept_at = engine.clock.now();
        if let Err(e) = dict.sweep_due(&mut expired).await {
            tracing::warn!(error = %e, "livedict: expiry sweep failed; retrying");
            control.sleep::<P>(ERROR_BACKOFF).await;
            continue;
        }
        let next = match port.next_deadline().await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "livedict: cannot read the next deadline");
                control.sleep::<P>(ERROR_BACKOFF).await;
                continue;
            }
        };
        if next.is_some_and(|d| d <= swept_at) {
            // Due before the sweep began and still there, though the sweep took all it could:
            // on Redis, an entry held by an update's lock (perhaps of a process that died
            // holding it, for up to the lease), or a server clock behind this process's. Look
            // again after a pause that grows to 10 ms, not at once: that spun on the backend,
            // two round trips after another, as long as the lock lasted.
            control.sleep::<P>(stuck_pause).await;
            stuck_pause = (stuck_pause * 2).min(STUCK_BACKOFF_MAX);
            continue;
        }
        stuck_pause = STUCK_BACKOFF;
        let mut wake_at = next.unwrap_or(u64::MAX);
        // Sleep until `wake_at`, and at most `cap` in all. A kick lowers it to what writers
        // reported meanwhile (or tells that a manual clock moved), and the driver sleeps on
        // unless that time has come.
        let poll_at = Instant::now() + cap;
        loop {
            control.planned.store(wake_at, SeqCst);
            // In this order: a report after the `swap` kicks after this `store`, so the sleep
            // below sees it.
            control.kicked.store(false, SeqCst);
            let reported = control.reported.swap(u64::MAX, SeqCst);
            if reported < wake_at {
                wake_at = reported;
                control.planned.store(wake_at, SeqCst);
            }
            if wake_at <= engine.clock.now() {
                continue 'rounds;
            }
            let poll_in = poll_at.saturating_duration_since(Instant::now());
            let wait = match &engine.clock {
                // At least `MIN_WAIT`: the time that judged `wake_at` not come is the counter's,
                // which may lag the system clock's by up to a tick after the wall clock steps
                // forward; without a floor, rounds would follow each other until the next tick.
                Clock::System => Duration::from_micros(
                    wake_at
                        .saturating_mul(1000)
                        .saturating_sub(micros_since_epoch()),
                )
                .max(MIN_WAIT)
                .min(poll_in),
                // A manual clock kicks the driver when it moves.
                Clock::Manual(_) => poll_in,
            };
            if !wait.is_zero() {
                control.sleep::<P>(wait).await;
            }
            if control.stopping() || !control.kicked.load(SeqCst) || Instant::now() >= poll_at {
                // Stopped, or slept its time: a new round (at most `cap` after the last).
                continue 'rounds;
            }
        }
    }
}
