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
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    Ordering::SeqCst,
};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
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
            workers: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            queue_capacity: 65_536,
            when_full: QueueFullPolicy::Block,
            hook_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            max_abandoned: 32,
        }
    }
}

impl EventSettings {
    /// Worker lanes (default: one per two CPUs, at least 1). Events of one key always use the
    /// same lane.
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

/// The event a lane is delivering: its hook calls left, and when the running one must return.
struct Current {
    event: Event,
    calls: VecDeque<(HookFn, Duration)>,
    /// When the running call must have returned; `None` between calls.
    deadline: Option<Instant>,
}

/// What a lane's worker has taken from the queue: shared with the watchdog, which hands it to a
/// replacement worker if the worker gets stuck.
#[derive(Default)]
struct Work {
    current: Option<Current>,
    rest: VecDeque<Job>,
}

/// A lane's queue, and the delivered events on their way back to a publisher.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Delivered events, dropped by the next publisher on its own thread: their buffers were
    /// allocated by publishers, and freeing them there keeps the allocator's per-thread caches
    /// warm instead of making every publisher allocation take the slow, locked path.
    returned: Vec<Event>,
}

/// Delivered events a publisher takes back at once.
const RETURN_BATCH: usize = 64;
/// Delivered events a worker keeps for publishers at most; past it, it frees them itself.
const RETURN_MAX: usize = 16_384;

struct Lane {
    queue: CachePadded<Mutex<Queue>>,
    /// Set by a publisher that pushed onto an empty queue; the spinning worker reads it without
    /// taking the lock. On its own cache line, so the spinning does not slow the queue's lock.
    has_items: CachePadded<AtomicBool>,
    /// The worker is blocked on `ready` (set and read under the queue lock).
    sleeping: AtomicBool,
    ready: Condvar,
    /// Publishers waiting for room (`Block` policy).
    space_waiters: AtomicUsize,
    space: Condvar,
    /// Bumped when the worker is abandoned; a worker of an older generation exits.
    generation: AtomicU64,
    work: CachePadded<Mutex<Work>>,
}

struct Shared {
    lanes: Box<[Lane]>,
    lane_capacity: usize,
    hasher: foldhash::fast::RandomState,
    settings: EventSettings,
    registry: Arc<Registry>,
    counters: Arc<DeliveryCounters>,
    stopping: AtomicBool,
    /// The store is closing: publishers no longer wait for room (the bound may be exceeded), so
    /// that closing never waits on a full queue.
    closing: AtomicBool,
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
            .finish_non_exhaustive()
    }
}

/// How long an idle worker spins, watching its queue, before it blocks (and publishers must wake
/// it with a system call).
const SPIN: Duration = Duration::from_micros(50);
const WATCHDOG_TICK: Duration = Duration::from_millis(10);

impl Executor {
    pub(crate) fn start(
        settings: EventSettings,
        registry: Arc<Registry>,
        counters: Arc<DeliveryCounters>,
    ) -> std::io::Result<Executor> {
        let lanes = (0..settings.workers)
            .map(|_| Lane {
                queue: CachePadded::new(Mutex::new(Queue::default())),
                has_items: CachePadded::new(AtomicBool::new(false)),
                sleeping: AtomicBool::new(false),
                ready: Condvar::new(),
                space_waiters: AtomicUsize::new(0),
                space: Condvar::new(),
                generation: AtomicU64::new(0),
                work: CachePadded::new(Mutex::new(Work::default())),
            })
            .collect::<Box<[Lane]>>();
        let lane_capacity = (settings.queue_capacity / lanes.len()).max(1);
        let shared = Arc::new(Shared {
            lanes,
            lane_capacity,
            hasher: Default::default(),
            settings,
            registry,
            counters,
            stopping: AtomicBool::new(false),
            closing: AtomicBool::new(false),
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

    /// Queues `job` for delivery, applying the queue-full policy. The queue bound is shared out
    /// evenly between the lanes.
    pub(crate) fn publish(&self, job: Job) {
        let s = &*self.shared;
        if s.stopping.load(Relaxed) {
            s.counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        let lane = &s.lanes[(s.hasher.hash_one(job.event.key()) as usize) % s.lanes.len()];
        let mut q = lane.queue.lock();
        if q.jobs.len() >= s.lane_capacity && !in_worker() && !s.closing.load(SeqCst) {
            match s.settings.when_full {
                QueueFullPolicy::DropNewest => {
                    s.counters.dropped.fetch_add(1, Relaxed);
                    return;
                }
                QueueFullPolicy::DropOldest => {
                    q.jobs.pop_front();
                    s.counters.dropped.fetch_add(1, Relaxed);
                }
                QueueFullPolicy::Block => {
                    lane.space_waiters.fetch_add(1, SeqCst);
                    while q.jobs.len() >= s.lane_capacity
                        && !s.stopping.load(SeqCst)
                        && !s.closing.load(SeqCst)
                    {
                        lane.space.wait_for(&mut q, Duration::from_millis(50));
                    }
                    lane.space_waiters.fetch_sub(1, SeqCst);
                    if s.stopping.load(SeqCst) {
                        s.counters.dropped.fetch_add(1, Relaxed);
                        return;
                    }
                }
            }
        }
        if q.jobs.is_empty() {
            lane.has_items.store(true, Release);
        }
        q.jobs.push_back(job);
        let returned = if q.returned.len() >= RETURN_BATCH && !in_worker() {
            std::mem::take(&mut q.returned)
        } else {
            Vec::new()
        };
        let wake = lane.sleeping.load(Relaxed);
        drop(q);
        if wake {
            lane.ready.notify_one();
        }
        drop(returned);
    }

    /// The store is closing: from now on publishers never wait for room.
    pub(crate) fn begin_close(&self) {
        let s = &*self.shared;
        s.closing.store(true, SeqCst);
        for lane in s.lanes.iter() {
            let _q = lane.queue.lock();
            lane.space.notify_all();
        }
    }

    /// Stops the executor: queued events are delivered until the grace period passes, then
    /// dropped (counted). Never waits when called from a hook.
    pub(crate) fn shutdown(&self) {
        let s = &*self.shared;
        if s.stopping.swap(true, SeqCst) {
            return;
        }
        for lane in s.lanes.iter() {
            let _q = lane.queue.lock();
            lane.ready.notify_all();
            lane.space.notify_all();
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
                let n = q.jobs.len();
                q.jobs.clear();
                q.returned.clear();
                n
            };
            s.counters.dropped.fetch_add(n as u64, Relaxed);
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
    resume: Option<Work>,
) -> std::io::Result<()> {
    *shared.live.lock() += 1;
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("livedict-hooks-{lane}"))
        .spawn(move || {
            IN_WORKER.set(true);
            if let Some(work) = resume {
                *s.lanes[lane].work.lock() = work;
            }
            if worker(&s, lane, generation) {
                leave(&s);
            }
        });
    if spawned.is_err() {
        *shared.live.lock() -= 1;
    }
    spawned.map(drop)
}

/// Leaves the live count (a worker that exits normally, or one the watchdog abandons).
fn leave(s: &Shared) {
    let mut live = s.live.lock();
    *live -= 1;
    s.live_cv.notify_all();
}

/// Moves the lane's queued jobs into its work list, handing `done` (delivered events) back to
/// publishers. False when the executor stops and nothing is left.
fn refill(s: &Shared, lane: &Lane, generation: u64, done: &mut Vec<Event>) -> bool {
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        if lane.has_items.load(Acquire) || s.stopping.load(Relaxed) {
            break;
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            if started.elapsed() >= SPIN {
                break;
            }
            // Let a publisher sharing this core run.
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    let mut q = lane.queue.lock();
    if !done.is_empty() {
        if q.returned.is_empty() {
            std::mem::swap(&mut q.returned, done);
        } else if q.returned.len() + done.len() <= RETURN_MAX {
            q.returned.append(done);
        }
    }
    loop {
        if lane.generation.load(SeqCst) != generation {
            return false;
        }
        if !q.jobs.is_empty() {
            lane.has_items.store(false, Relaxed);
            std::mem::swap(&mut q.jobs, &mut lane.work.lock().rest);
            if lane.space_waiters.load(SeqCst) > 0 {
                lane.space.notify_all();
            }
            return true;
        }
        if s.stopping.load(SeqCst) {
            return false;
        }
        lane.sleeping.store(true, Relaxed);
        lane.ready.wait_for(&mut q, Duration::from_secs(1));
        lane.sleeping.store(false, Relaxed);
    }
}

/// A lane's worker. Returns true when it exits normally, false when it was abandoned (the
/// watchdog already took it off the live count).
fn worker(s: &Shared, lane_index: usize, generation: u64) -> bool {
    let lane = &s.lanes[lane_index];
    let mut done = Vec::new();
    loop {
        // Finish what the lane's work list holds (a stuck predecessor's leftovers first).
        match run_work(s, lane, generation, &mut done) {
            Some(true) => continue,
            Some(false) => {}
            None => return false,
        }
        if done.len() > RETURN_MAX {
            done.clear();
        }
        if !refill(s, lane, generation, &mut done) {
            return lane.generation.load(SeqCst) == generation;
        }
    }
}

/// Runs one event of the lane's work list: Some(true) if there was one, Some(false) if the list
/// is empty, None if this worker was abandoned meanwhile.
fn run_work(s: &Shared, lane: &Lane, generation: u64, done: &mut Vec<Event>) -> Option<bool> {
    {
        let mut work = lane.work.lock();
        if lane.generation.load(SeqCst) != generation {
            return None;
        }
        if work.current.is_none() {
            let Some(job) = work.rest.pop_front() else {
                return Some(false);
            };
            // Every hook call of this event, decided now (hooks registered later do not see it).
            let mut calls: VecDeque<(HookFn, Duration)> = s
                .registry
                .snapshot()
                .iter()
                .filter(|r| {
                    r.enabled.load(Relaxed) && r.hook.accepts(job.event.kind, job.event.key())
                })
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
            work.current = Some(Current {
                event: job.event,
                calls,
                deadline: None,
            });
        }
    }
    run_current(s, lane, generation, done).then_some(true)
}

/// Runs the calls left of the lane's current event. False if this worker was abandoned meanwhile
/// (it must then exit without touching the lane).
fn run_current(s: &Shared, lane: &Lane, generation: u64, done: &mut Vec<Event>) -> bool {
    loop {
        let (f, event) = {
            let mut work = lane.work.lock();
            if lane.generation.load(SeqCst) != generation {
                return false;
            }
            let Some(current) = work.current.as_mut() else {
                return true;
            };
            let Some((f, timeout)) = current.calls.pop_front() else {
                if let Some(finished) = work.current.take() {
                    done.push(finished.event);
                }
                return true;
            };
            current.deadline = Some(Instant::now() + timeout);
            (f, current.event.clone())
        };
        if s.watchdog_deep.load(Relaxed) {
            wake_watchdog(s);
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(&event)));
        let mut work = lane.work.lock();
        if lane.generation.load(SeqCst) != generation {
            // The watchdog gave up on this call and counted it; this thread is abandoned.
            drop(work);
            s.abandoned.fetch_sub(1, SeqCst);
            return false;
        }
        if let Some(current) = work.current.as_mut() {
            current.deadline = None;
        }
        drop(work);
        match outcome {
            Ok(Ok(())) => {
                s.counters.delivered.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) => {
                s.counters.failed.fetch_add(1, Relaxed);
                tracing::warn!(key = event.key(), kind = ?event.kind, error = %e, "livedict: hook failed");
            }
            Err(panic) => {
                s.counters.failed.fetch_add(1, Relaxed);
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
            let mut work = lane.work.lock();
            let Some(current) = work.current.as_mut() else {
                continue;
            };
            busy = true;
            let Some(deadline) = current.deadline else {
                continue;
            };
            if now < deadline {
                continue;
            }
            current.deadline = None;
            s.counters.timed_out.fetch_add(1, Relaxed);
            tracing::warn!(key = current.event.key(), kind = ?current.event.kind,
                "livedict: hook timed out; its worker is abandoned");
            if s.abandoned.load(SeqCst) >= s.settings.max_abandoned {
                tracing::error!(
                    "livedict: {} hook threads are stuck; lane {i} waits for its hook",
                    s.settings.max_abandoned
                );
                continue;
            }
            // Hand the rest of the event, and of the batch, to a fresh worker; the stuck one exits
            // when (if) its hook returns.
            let resume = std::mem::take(&mut *work);
            let generation = lane.generation.fetch_add(1, SeqCst) + 1;
            drop(work);
            s.abandoned.fetch_add(1, SeqCst);
            leave(s);
            if let Err(e) = spawn_worker(s, i, generation, Some(resume)) {
                tracing::error!(error = %e, "livedict: cannot start a hook worker");
            }
        }
        if s.stopping.load(SeqCst) && *s.live.lock() == 0 {
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
        drop(g);
        if s.stopping.load(SeqCst) && *s.live.lock() == 0 {
            return;
        }
    }
}
