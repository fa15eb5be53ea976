//! The executor: delivers events to hooks on background threads, never on the caller's.
//!
//! Events go to one of `workers` lanes by key hash, so the events of one key are delivered in
//! order. Each lane has a queue and one worker thread; the queues share one bound. A watchdog
//! thread times every hook call: a call that overruns its timeout is counted, its worker is
//! abandoned (left to finish or stay stuck on its own, at most `max_abandoned` at once), and a fresh
//! worker takes over the lane, starting with the remaining hooks of the same event. So a stuck hook
//! costs its timeout once, and neither other hooks nor later events wait for it longer.

use std::cell::Cell;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::registry::Registry;
use super::{Event, HookFn};

/// What publishing does when the event queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueFullPolicy {
    /// The publishing call waits for room (backpressure; no event is lost). The default. Events
    /// published by hooks themselves never wait (they may exceed the bound instead), so a hook
    /// that writes to the store cannot deadlock the executor.
    #[default]
    Block,
    /// The oldest queued event of the same lane is dropped (counted).
    DropOldest,
    /// The new event is dropped (counted).
    DropNewest,
}

/// Settings of a store's event executor.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use livedict::{EventSettings, LiveDict, QueueFullPolicy};
///
/// let store = LiveDict::builder()
///     .events(
///         EventSettings::default()
///             .workers(4)
///             .queue_capacity(10_000)
///             .when_full(QueueFullPolicy::DropOldest)
///             .hook_timeout(Duration::from_millis(250)),
///     )
///     .build()?;
/// # Ok::<(), livedict::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct EventSettings {
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) when_full: QueueFullPolicy,
    pub(crate) hook_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) max_abandoned: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            workers: 2,
            queue_capacity: 65_536,
            when_full: QueueFullPolicy::Block,
            hook_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            max_abandoned: 32,
        }
    }
}

impl EventSettings {
    /// Worker lanes (default 2, at least 1). Events of one key always use the same lane.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Events queued at most, all lanes together (default 65,536, at least 1).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// What publishing does when the queue is full (default [`QueueFullPolicy::Block`]).
    pub fn when_full(mut self, policy: QueueFullPolicy) -> Self {
        self.when_full = policy;
        self
    }

    /// Default time one hook call may take (default 1 s); a hook may set its own.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
    }

    /// How long closing the store waits for queued events to be delivered (default 5 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// How many stuck hook threads may be abandoned at once before a lane waits for its stuck
    /// hook instead of replacing its worker (default 32).
    pub fn max_abandoned(mut self, n: usize) -> Self {
        self.max_abandoned = n;
        self
    }
}

/// Delivery counters.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// An event and the entry hook that goes with it, if any.
pub(crate) struct Job {
    pub(crate) event: Event,
    pub(crate) entry_hook: Option<HookFn>,
}

/// The hook calls left of the event a lane is delivering.
struct InFlight {
    event: Event,
    calls: VecDeque<(HookFn, Duration)>,
    /// When the running call must have returned; `None` between calls.
    deadline: Option<Instant>,
}

struct Lane {
    queue: Mutex<VecDeque<Job>>,
    cv: Condvar,
    /// The worker sleeps long: producers must notify it.
    deep_sleep: AtomicBool,
    /// Bumped when the worker is abandoned; a worker of an older generation exits.
    generation: AtomicU64,
    in_flight: Mutex<Option<InFlight>>,
}

struct Shared {
    lanes: Box<[Lane]>,
    hasher: foldhash::fast::RandomState,
    settings: EventSettings,
    registry: Arc<Registry>,
    counters: Arc<DeliveryCounters>,
    queued: AtomicUsize,
    space_waiters: AtomicUsize,
    space_lock: Mutex<()>,
    space_cv: Condvar,
    stopping: AtomicBool,
    /// Workers not abandoned and not exited.
    live: Mutex<usize>,
    live_cv: Condvar,
    abandoned: AtomicUsize,
    watchdog_lock: Mutex<()>,
    watchdog_cv: Condvar,
    watchdog_deep: AtomicBool,
}

thread_local! {
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is an executor worker (running hooks).
pub(crate) fn in_worker() -> bool {
    IN_WORKER.get()
}

/// The running executor of one store; shut down on drop.
pub(crate) struct Executor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("lanes", &self.shared.lanes.len())
            .field("queued", &self.shared.queued.load(SeqCst))
            .finish()
    }
}

const POLL: Duration = Duration::from_millis(1);
const IDLE_POLLS: u32 = 50;
const WATCHDOG_TICK: Duration = Duration::from_millis(10);

impl Executor {
    pub(crate) fn start(
        settings: EventSettings,
        registry: Arc<Registry>,
        counters: Arc<DeliveryCounters>,
    ) -> std::io::Result<Executor> {
        let lanes = (0..settings.workers)
            .map(|_| Lane {
                queue: Mutex::new(VecDeque::new()),
                cv: Condvar::new(),
                deep_sleep: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                in_flight: Mutex::new(None),
            })
            .collect();
        let shared = Arc::new(Shared {
            lanes,
            hasher: Default::default(),
            settings,
            registry,
            counters,
            queued: AtomicUsize::new(0),
            space_waiters: AtomicUsize::new(0),
            space_lock: Mutex::new(()),
            space_cv: Condvar::new(),
            stopping: AtomicBool::new(false),
            live: Mutex::new(0),
            live_cv: Condvar::new(),
            abandoned: AtomicUsize::new(0),
            watchdog_lock: Mutex::new(()),
            watchdog_cv: Condvar::new(),
            watchdog_deep: AtomicBool::new(false),
        });
        for lane in 0..shared.lanes.len() {
            spawn_worker(&shared, lane, 0, None)?;
        }
        let s = shared.clone();
        std::thread::Builder::new()
            .name("livedict-hook-watchdog".into())
            .spawn(move || watchdog(&s))?;
        Ok(Executor { shared })
    }

    /// Queues `job` for delivery, applying the queue-full policy.
    pub(crate) fn publish(&self, job: Job) {
        let s = &*self.shared;
        if s.stopping.load(SeqCst) {
            s.counters.dropped.fetch_add(1, SeqCst);
            return;
        }
        let lane = &s.lanes[(s.hasher.hash_one(job.event.key()) as usize) % s.lanes.len()];
        if s.queued.load(SeqCst) >= s.settings.queue_capacity && !in_worker() {
            match s.settings.when_full {
                QueueFullPolicy::DropNewest => {
                    s.counters.dropped.fetch_add(1, SeqCst);
                    return;
                }
                QueueFullPolicy::DropOldest => {
                    if lane.queue.lock().pop_front().is_some() {
                        s.queued.fetch_sub(1, SeqCst);
                        s.counters.dropped.fetch_add(1, SeqCst);
                    }
                }
                QueueFullPolicy::Block => {
                    s.space_waiters.fetch_add(1, SeqCst);
                    let mut g = s.space_lock.lock();
                    while s.queued.load(SeqCst) >= s.settings.queue_capacity
                        && !s.stopping.load(SeqCst)
                    {
                        s.space_cv.wait_for(&mut g, Duration::from_millis(50));
                    }
                    drop(g);
                    s.space_waiters.fetch_sub(1, SeqCst);
                }
            }
        }
        s.queued.fetch_add(1, SeqCst);
        let mut q = lane.queue.lock();
        q.push_back(job);
        let deep = lane.deep_sleep.load(SeqCst);
        drop(q);
        if deep {
            lane.cv.notify_one();
        }
    }

    /// Stops the executor: queued events are delivered until `grace` passes, then dropped
    /// (counted). Never waits when called from a hook.
    pub(crate) fn shutdown(&self) {
        let s = &*self.shared;
        if s.stopping.swap(true, SeqCst) {
            return;
        }
        for lane in s.lanes.iter() {
            let _g = lane.queue.lock();
            lane.cv.notify_all();
        }
        {
            let _g = s.space_lock.lock();
            s.space_cv.notify_all();
        }
        wake_watchdog(s);
        if !in_worker() {
            let give_up = Instant::now() + s.settings.shutdown_grace;
            let mut live = s.live.lock();
            while *live > 0 {
                if s.live_cv.wait_until(&mut live, give_up).timed_out() {
                    break;
                }
            }
        }
        // Whatever is still queued will not be delivered.
        for lane in s.lanes.iter() {
            let n = {
                let mut q = lane.queue.lock();
                let n = q.len();
                q.clear();
                n
            };
            s.counters.dropped.fetch_add(n as u64, SeqCst);
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn wake_watchdog(s: &Shared) {
    let _g = s.watchdog_lock.lock();
    s.watchdog_cv.notify_all();
}

fn spawn_worker(
    shared: &Arc<Shared>,
    lane: usize,
    generation: u64,
    resume: Option<InFlight>,
) -> std::io::Result<()> {
    *shared.live.lock() += 1;
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("livedict-hooks-{lane}"))
        .spawn(move || {
            IN_WORKER.set(true);
            worker(&s, lane, generation, resume);
        });
    if spawned.is_err() {
        *shared.live.lock() -= 1;
    }
    spawned.map(drop)
}

/// Leaves the live count (a worker that exits normally).
fn leave(s: &Shared) {
    let mut live = s.live.lock();
    *live -= 1;
    s.live_cv.notify_all();
}

fn worker(s: &Shared, lane_index: usize, generation: u64, resume: Option<InFlight>) {
    let lane = &s.lanes[lane_index];
    if let Some(in_flight) = resume {
        *lane.in_flight.lock() = Some(in_flight);
        if !run_in_flight(s, lane, generation) {
            return; // abandoned again
        }
    }
    let mut idle = 0;
    loop {
        let job = {
            let mut q = lane.queue.lock();
            loop {
                if let Some(job) = q.pop_front() {
                    break Some(job);
                }
                if s.stopping.load(SeqCst) {
                    break None;
                }
                if idle < IDLE_POLLS {
                    idle += 1;
                    lane.cv.wait_for(&mut q, POLL);
                } else {
                    lane.deep_sleep.store(true, SeqCst);
                    lane.cv.wait_for(&mut q, Duration::from_secs(1));
                    lane.deep_sleep.store(false, SeqCst);
                }
            }
        };
        let Some(job) = job else {
            break;
        };
        idle = 0;
        s.queued.fetch_sub(1, SeqCst);
        if s.space_waiters.load(SeqCst) > 0 {
            let _g = s.space_lock.lock();
            s.space_cv.notify_all();
        }
        // Every hook call of this event, decided now (hooks registered later do not see it).
        let mut calls: VecDeque<(HookFn, Duration)> = s
            .registry
            .snapshot()
            .iter()
            .filter(|r| r.enabled.load(SeqCst) && r.hook.accepts(job.event.kind, job.event.key()))
            .map(|r| {
                (
                    r.hook.f.clone(),
                    r.hook.timeout.unwrap_or(s.settings.hook_timeout),
                )
            })
            .collect();
        if let Some(f) = job.entry_hook {
            calls.push_back((f, s.settings.hook_timeout));
        }
        if calls.is_empty() {
            continue;
        }
        *lane.in_flight.lock() = Some(InFlight {
            event: job.event,
            calls,
            deadline: None,
        });
        if !run_in_flight(s, lane, generation) {
            return; // abandoned: a new worker has the lane
        }
    }
    leave(s);
}

/// Runs the calls left in the lane's in-flight event. False if this worker was abandoned meanwhile
/// (it must then exit without touching the lane).
fn run_in_flight(s: &Shared, lane: &Lane, generation: u64) -> bool {
    loop {
        let (f, event) = {
            let mut slot = lane.in_flight.lock();
            if lane.generation.load(SeqCst) != generation {
                return false;
            }
            let Some(in_flight) = slot.as_mut() else {
                return true;
            };
            let Some((f, timeout)) = in_flight.calls.pop_front() else {
                *slot = None;
                return true;
            };
            in_flight.deadline = Some(Instant::now() + timeout);
            (f, in_flight.event.clone())
        };
        if s.watchdog_deep.load(SeqCst) {
            wake_watchdog(s);
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(&event)));
        let mut slot = lane.in_flight.lock();
        if lane.generation.load(SeqCst) != generation {
            // The watchdog gave up on this call and counted it; this thread is abandoned.
            drop(slot);
            s.abandoned.fetch_sub(1, SeqCst);
            return false;
        }
        if let Some(in_flight) = slot.as_mut() {
            in_flight.deadline = None;
        }
        drop(slot);
        match outcome {
            Ok(Ok(())) => {
                s.counters.delivered.fetch_add(1, SeqCst);
            }
            Ok(Err(e)) => {
                s.counters.failed.fetch_add(1, SeqCst);
                tracing::warn!(key = event.key(), kind = ?event.kind, error = %e, "livedict: hook failed");
            }
            Err(panic) => {
                s.counters.failed.fetch_add(1, SeqCst);
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                tracing::warn!(key = event.key(), kind = ?event.kind, panic = %msg, "livedict: hook panicked");
            }
        }
    }
}

fn watchdog(s: &Arc<Shared>) {
    let mut quiet_ticks = 0u32;
    loop {
        let now = Instant::now();
        let mut busy = false;
        for (i, lane) in s.lanes.iter().enumerate() {
            let mut slot = lane.in_flight.lock();
            let Some(in_flight) = slot.as_mut() else {
                continue;
            };
            busy = true;
            let Some(deadline) = in_flight.deadline else {
                continue;
            };
            if now < deadline {
                continue;
            }
            in_flight.deadline = None;
            s.counters.timed_out.fetch_add(1, SeqCst);
            tracing::warn!(key = in_flight.event.key(), kind = ?in_flight.event.kind,
                "livedict: hook timed out; its worker is abandoned");
            if s.abandoned.load(SeqCst) >= s.settings.max_abandoned {
                tracing::error!(
                    "livedict: {} hook threads are stuck; lane {i} waits for its hook",
                    s.settings.max_abandoned
                );
                continue;
            }
            // Hand the rest of the event to a fresh worker; the stuck one exits when (if) its
            // hook returns.
            let resume = slot.take();
            let generation = lane.generation.fetch_add(1, SeqCst) + 1;
            drop(slot);
            s.abandoned.fetch_add(1, SeqCst);
            leave(s);
            if let Err(e) = spawn_worker(s, i, generation, resume) {
                tracing::error!(error = %e, "livedict: cannot start a hook worker");
            }
        }
        let live = *s.live.lock();
        if s.stopping.load(SeqCst) && live == 0 {
            return;
        }
        quiet_ticks = if busy { 0 } else { quiet_ticks + 1 };
        let mut g = s.watchdog_lock.lock();
        if quiet_ticks > 100 && !s.stopping.load(SeqCst) {
            s.watchdog_deep.store(true, SeqCst);
            s.watchdog_cv.wait_for(&mut g, Duration::from_secs(1));
            s.watchdog_deep.store(false, SeqCst);
        } else {
            s.watchdog_cv.wait_for(&mut g, WATCHDOG_TICK);
        }
        if s.stopping.load(SeqCst) && *s.live.lock() == 0 {
            return;
        }
    }
}
