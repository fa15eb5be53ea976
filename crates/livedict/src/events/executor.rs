//! The executor: delivers events to hooks on background threads, never on the caller's.
//!
//! Events go to one of `workers` lanes by key hash, so the events of one key are delivered in
//! order. Each lane has a queue and one worker thread; the queues share one bound. A watchdog
//! thread times every hook call: a call that overruns its timeout is counted, its worker is
//! abandoned (left to finish or stay stuck on its own, at most `max_abandoned` at once), and a fresh
//! worker takes over the lane, starting with the remaining hooks of the same event. So a stuck hook
//! costs its timeout once, and neither other hooks nor later events wait for it longer.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};
use smallvec::SmallVec;
use spin::mutex::SpinMutex;

use super::queue::{Batch, EventLog, Job, Published, SHARED_BATCH_MAX, reclaim};
use super::registry::{HookList, HookListCache, Registry};
use super::{Event, HookFn, contain};
use crate::crypto::Sealer;

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

/// The event a lane is delivering: its hook calls left, and when the running one must return.
struct Current {
    /// Shared with the worker delivering it, once an event, not once a call (the watchdog may
    /// hand the event to a new worker while an abandoned call still reads it).
    event: Arc<Event>,
    /// The positions, in the lane's hook list ([`Work::hooks`]), of the store-wide hooks the
    /// event gets, decided when it started; in reverse order: the next call is the last.
    calls: SmallVec<[u32; 8]>,
    /// The entry hook, called after the store-wide ones.
    entry_hook: Option<HookFn>,
    /// When the running call must have returned; `None` between calls (and for no timeout).
    /// Read from the processor's counter (`quanta`): the OS clock cost a worker about as much as
    /// the rest of a trivial hook's call, and a worker slower than its publishers lets their
    /// queue grow (a set with one hook went from 196-211 ns to 183-187 ns with this clock,
    /// `call_cost set-hooked 3000000`).
    deadline: Option<quanta::Instant>,
    /// The watchdog counted the running call as timed out but left its worker to it (too many
    /// stuck threads): the call is not counted again when it returns.
    overran: bool,
}

/// What a lane's worker has taken from the queue: shared with the watchdog, which hands it to a
/// replacement worker if the worker gets stuck.
#[derive(Default)]
struct Work {
    current: Option<Current>,
    rest: Batch,
    /// The store-wide hooks `current` was started with (the worker's cached list, also here so
    /// that a replacement worker makes the same calls). A worker calls them from its own copy of
    /// the list, through a reference: no reference count a call.
    hooks: Option<HookList>,
}

/// A hook call to make.
enum Call {
    /// The store-wide hook at this position of the worker's hook list.
    Listed(usize),
    Entry(HookFn),
}

/// What [`next_call`] found: the call, and the event it is for when the worker does not hold
/// that event yet.
struct NextCall {
    call: Call,
    event: Option<Arc<Event>>,
}

/// How a thread waits for a lane's queue lock held by another: the holder's critical section is a
/// copy or a swap of a few nanoseconds unless it was preempted, so give it the core.
struct YieldToHolder;

impl spin::relax::RelaxStrategy for YieldToHolder {
    fn relax() {
        std::thread::yield_now();
    }
}

struct Lane {
    /// The queue, under a spin lock released by a plain store: a publisher's push is one atomic
    /// instruction (taking the lock) on a line only publishers touch while the worker is busy.
    /// (A `parking_lot` release is a second atomic instruction, and it waits until the cache
    /// lines just written, in a buffer the worker last read, are owned by the publisher's core: a
    /// cross-core round trip on every event.)
    queue: CachePadded<SpinMutex<EventLog, YieldToHolder>>,
    /// Events queued: written by publishers under the lock, polled by the idle worker without it.
    /// On its own cache line, so the polling never touches the lock's line.
    queued: CachePadded<AtomicUsize>,
    /// The worker is asleep, or about to be, and must be woken. Set by the worker, cleared by the
    /// publisher that wakes it, both under the queue lock; read by every publisher, so on a line
    /// written only when the worker goes to sleep.
    sleeping: CachePadded<AtomicBool>,
    /// A wake-up for the sleeping worker (set by the publisher that cleared `sleeping`).
    wake: Mutex<bool>,
    ready: Condvar,
    /// Publishers waiting for room (`Block` policy), and the count of the worker's takes, which
    /// a waiting publisher checks under `space_lock` before it sleeps (no lost wake-up).
    space_waiters: AtomicUsize,
    takes: AtomicU64,
    space_lock: Mutex<()>,
    space: Condvar,
    /// The same wake-up for tasks of the async front-end, which await room before they write
    /// instead of blocking their thread (see [`Executor::room_wait`]).
    room: event_listener::Event,
    /// Bumped when the worker is abandoned; a worker of an older generation exits.
    generation: AtomicU64,
    work: CachePadded<Mutex<Work>>,
}

impl Lane {
    fn new() -> Self {
        Lane {
            queue: CachePadded::new(SpinMutex::new(EventLog::default())),
            queued: CachePadded::new(AtomicUsize::new(0)),
            sleeping: CachePadded::new(AtomicBool::new(false)),
            wake: Mutex::new(false),
            ready: Condvar::new(),
            space_waiters: AtomicUsize::new(0),
            takes: AtomicU64::new(0),
            space_lock: Mutex::new(()),
            space: Condvar::new(),
            room: event_listener::Event::new(),
            generation: AtomicU64::new(0),
            work: CachePadded::new(Mutex::new(Work::default())),
        }
    }

    /// Wakes the worker if it sleeps.
    fn wake_worker(&self) {
        *self.wake.lock() = true;
        self.ready.notify_all();
    }

    /// Wakes the publishers waiting for room.
    fn wake_space_waiters(&self) {
        {
            let _g = self.space_lock.lock();
            self.space.notify_all();
        }
        self.room.notify(usize::MAX);
    }
}

/// A task's place among a full lane's waiters, given up on drop (the worker wakes waiters only
/// when there are some).
pub(crate) struct RoomWaiter<'e>(&'e AtomicUsize);

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

struct Shared {
    lanes: Box<[Lane]>,
    lane_capacity: usize,
    hasher: foldhash::fast::RandomState,
    settings: EventSettings,
    registry: Arc<Registry>,
    counters: Arc<DeliveryCounters>,
    /// Handed to events, which decrypt their values on demand.
    sealer: Option<Sealer>,
    stopping: AtomicBool,
    /// The shutdown's grace period is over: workers drop (and count) the events they hold instead
    /// of delivering them.
    gave_up: AtomicBool,
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
/// The largest emptied log buffer a worker keeps for reuse (bytes); a larger one, left by a
/// backlog, is freed.
const SPARE_MAX: usize = 1 << 22;
/// A publisher updates the queued count the worker polls every this many events.
const QUEUED_EVERY: usize = 16;
/// Events a worker takes at once without waiting for more.
const TAKE_BATCH: usize = 64;
/// How long a worker lets a queue that stopped growing rest before it takes what is there.
const SETTLE: Duration = Duration::from_micros(5);
const WATCHDOG_TICK: Duration = Duration::from_millis(10);

impl Executor {
    pub(crate) fn start(
        settings: EventSettings,
        registry: Arc<Registry>,
        counters: Arc<DeliveryCounters>,
        sealer: Option<Sealer>,
    ) -> std::io::Result<Executor> {
        let lanes = (0..settings.workers)
            .map(|_| Lane::new())
            .collect::<Box<[Lane]>>();
        let lane_capacity = (settings.queue_capacity / lanes.len()).max(1);
        let shared = Arc::new(Shared {
            lanes,
            lane_capacity,
            hasher: Default::default(),
            settings,
            registry,
            counters,
            sealer,
            stopping: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            live: Mutex::new(0),
            live_cv: Condvar::new(),
            abandoned: AtomicUsize::new(0),
            watchdog_lock: Mutex::new(()),
            watchdog_cv: Condvar::new(),
            watchdog_deep: AtomicBool::new(false),
        });
        for lane in 0..shared.lanes.len() {
            spawn_worker(&shared, lane, WorkerStart::Fresh)?;
        }
        let s = shared.clone();
        std::thread::Builder::new()
            .name("livedict-hook-watchdog".into())
            .spawn(move || watchdog(&s))?;
        Ok(Executor { shared })
    }

    /// The lane of `key`'s events.
    #[inline]
    fn lane_of(&self, key: &str) -> &Lane {
        let s = &*self.shared;
        match &*s.lanes {
            [only] => only,
            lanes => {
                // The hash's high bits mapped onto the lanes (no division).
                let hash = s.hasher.hash_one(key);
                &lanes[((u128::from(hash) * lanes.len() as u128) >> 64) as usize]
            }
        }
    }

    /// For a task about to publish events of `key` (every lane when `None`): under the `Block`
    /// policy, while the lane is full, a listener that is notified when a worker takes from it.
    /// The async front-end awaits it before each write, so that a full queue parks the task, not
    /// its runtime thread (a write can still find the lane full if others filled it meanwhile,
    /// and then blocks in [`publish`](Self::publish) until the next take).
    pub(crate) fn room_wait(
        &self,
        key: Option<&str>,
    ) -> Option<(event_listener::EventListener, RoomWaiter<'_>)> {
        let s = &*self.shared;
        if s.settings.when_full != QueueFullPolicy::Block || in_worker() {
            return None;
        }
        let full = |lane: &Lane| {
            lane.queue.lock().len() >= s.lane_capacity
                && !s.stopping.load(SeqCst)
                && !s.closing.load(SeqCst)
        };
        let lane = match key {
            Some(key) => self.lane_of(key),
            None => s.lanes.iter().find(|lane| full(lane))?,
        };
        if !full(lane) {
            return None;
        }
        lane.space_waiters.fetch_add(1, SeqCst);
        let waiter = RoomWaiter(&lane.space_waiters);
        let listener = lane.room.listen();
        // Listening before looking again: a take in between is not missed.
        full(lane).then_some((listener, waiter))
    }

    /// Queues a copy of `event` for delivery, applying the queue-full policy. The queue bound is
    /// shared out evenly between the lanes.
    pub(crate) fn publish(&self, event: Published<'_>) {
        let s = &*self.shared;
        let lane = self.lane_of(event.key);
        let mut q = lane.queue.lock();
        if s.stopping.load(Relaxed) {
            // Read under the lane's lock: the shutdown may have drained this lane already, and
            // nobody would deliver the event.
            s.counters.dropped.fetch_add(1, Relaxed);
            return;
        }
        if q.len() >= s.lane_capacity && !in_worker() && !s.closing.load(SeqCst) {
            match s.settings.when_full {
                QueueFullPolicy::DropNewest => {
                    s.counters.dropped.fetch_add(1, Relaxed);
                    return;
                }
                QueueFullPolicy::DropOldest => {
                    q.drop_oldest();
                    s.counters.dropped.fetch_add(1, Relaxed);
                }
                QueueFullPolicy::Block => {
                    while q.len() >= s.lane_capacity
                        && !s.stopping.load(SeqCst)
                        && !s.closing.load(SeqCst)
                    {
                        let takes = lane.takes.load(SeqCst);
                        lane.space_waiters.fetch_add(1, SeqCst);
                        drop(q);
                        {
                            let mut g = lane.space_lock.lock();
                            if lane.takes.load(SeqCst) == takes
                                && !s.stopping.load(SeqCst)
                                && !s.closing.load(SeqCst)
                            {
                                lane.space.wait_for(&mut g, Duration::from_millis(50));
                            }
                        }
                        lane.space_waiters.fetch_sub(1, SeqCst);
                        q = lane.queue.lock();
                    }
                    if s.stopping.load(SeqCst) {
                        s.counters.dropped.fetch_add(1, Relaxed);
                        return;
                    }
                }
            }
        }
        q.push(event);
        // The worker polls this count to decide when to take a batch; storing it every few events
        // (and on the first) is enough for that, and spares the line's round trip on the others.
        let queued = q.len();
        if queued == 1 || queued.is_multiple_of(QUEUED_EVERY) {
            lane.queued.store(queued, Relaxed);
        }
        let wake = lane.sleeping.load(Relaxed);
        if wake {
            lane.sleeping.store(false, Relaxed);
        }
        drop(q);
        if wake {
            lane.wake_worker();
        }
    }

    /// The store is closing: from now on publishers never wait for room.
    pub(crate) fn begin_close(&self) {
        let s = &*self.shared;
        s.closing.store(true, SeqCst);
        for lane in s.lanes.iter() {
            lane.wake_space_waiters();
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
            lane.wake_worker();
            lane.wake_space_waiters();
        }
        wake_watchdog(s);
        if !in_worker() {
            // A grace too long to add to the clock means: wait for every event.
            let give_up = Instant::now().checked_add(s.settings.shutdown_grace);
            let mut live = s.live.lock();
            while *live > 0 {
                match give_up {
                    Some(at) => {
                        if s.live_cv.wait_until(&mut live, at).timed_out() {
                            break;
                        }
                    }
                    None => s.live_cv.wait(&mut live),
                }
            }
        }
        // Whatever is still queued, or taken by a worker but not begun, will not be delivered:
        // workers check this flag before each event and drop (and count) what they hold.
        s.gave_up.store(true, SeqCst);
        for lane in s.lanes.iter() {
            let n = lane.queue.lock().take(Vec::new()).len();
            let rest = std::mem::take(&mut lane.work.lock().rest).len();
            s.counters.dropped.fetch_add((n + rest) as u64, Relaxed);
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

/// How a new worker begins.
enum WorkerStart {
    /// At once: one of the lane's first workers.
    Fresh,
    /// Replacing a stuck worker: once the watchdog, having seen this thread start, hands it the
    /// lane's new generation and the stuck worker's work (the rest of its event and batch).
    HandOver(mpsc::Receiver<(u64, Work)>),
}

fn spawn_worker(shared: &Arc<Shared>, lane: usize, start: WorkerStart) -> std::io::Result<()> {
    #[cfg(test)]
    if matches!(start, WorkerStart::HandOver(_)) && tests::take_injected_spawn_failure() {
        return Err(std::io::Error::other("a spawn failure injected by a test"));
    }
    *shared.live.lock() += 1;
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("livedict-hooks-{lane}"))
        .spawn(move || {
            IN_WORKER.set(true);
            // The counter's calibration (shared with the store's clock, usually done already)
            // happens here rather than in the first hook call's deadline.
            let _ = quanta::Instant::now();
            let generation = match start {
                WorkerStart::Fresh => 0,
                WorkerStart::HandOver(handed) => match handed.recv() {
                    Ok((generation, work)) => {
                        *s.lanes[lane].work.lock() = work;
                        generation
                    }
                    Err(_) => {
                        leave(&s);
                        return;
                    }
                },
            };
            // A panic outside a hook call (the application's log subscriber, or anything else
            // the worker runs of the application's) must not end the lane's deliveries: the
            // worker goes on with the lane's work. (Hook functions never panic when dropped:
            // `events::hook_fn`.)
            let leaving = loop {
                if let Some(leaving) = contain(|| worker(&s, lane, generation)) {
                    break leaving;
                }
                let mut work = s.lanes[lane].work.lock();
                if s.lanes[lane].generation.load(SeqCst) == generation {
                    end_call(&mut work);
                }
                drop(work);
                // Logged under `catch_unwind` too: the panic may have come from the
                // application's log subscriber.
                contain(|| {
                    tracing::error!(
                        lane,
                        "livedict: a hook worker panicked outside a hook call; it goes on"
                    );
                });
            };
            if leaving {
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

/// Spins until the lane's queue holds a batch worth taking, or [`SPIN`] passes with nothing
/// queued (the caller then blocks). A worker that found the queue empty takes the first event at
/// once (low latency when events are sparse); one that came back from a batch to a queue already
/// filling waits for [`TAKE_BATCH`] events, or for the queue to stop growing for [`SETTLE`]:
/// taking a few events at a time would take the queue's lock from the publishers' core every few
/// events.
fn wait_for_batch(s: &Shared, lane: &Lane) {
    let was_idle = lane.queued.load(Relaxed) == 0;
    let mut since = Instant::now();
    let mut seen = 0;
    let mut spins = 0u32;
    loop {
        let queued = lane.queued.load(Relaxed);
        if queued >= TAKE_BATCH || (was_idle && queued > 0) || s.stopping.load(Relaxed) {
            return;
        }
        spins += 1;
        if spins.is_multiple_of(16) {
            let now = Instant::now();
            if queued != seen {
                seen = queued;
                since = now;
            } else if now - since >= if queued > 0 { SETTLE } else { SPIN } {
                return;
            }
            if spins.is_multiple_of(64) {
                // Let a publisher sharing this core run.
                std::thread::yield_now();
            }
        }
        std::hint::spin_loop();
    }
}

/// Moves the lane's queued events into its work list, whose last batch was delivered (its
/// buffer, which its events shared, is reused if they are gone). False when the executor stops
/// and nothing is left.
fn refill(s: &Shared, lane: &Lane, generation: u64) -> bool {
    wait_for_batch(s, lane);
    // The work list is empty here: this worker finished it, and the watchdog takes work only
    // from a running hook call.
    let last = std::mem::take(&mut lane.work.lock().rest).into_buffer();
    let drained = last.len();
    let mut spare = reclaim(last);
    // A backlog's buffer is not kept once the backlog is gone: past `SPARE_MAX` it is not worth
    // keeping, and past `SHARED_BATCH_MAX` the small batches written into it would not be shared.
    if spare.capacity() > SPARE_MAX
        || (spare.capacity() > SHARED_BATCH_MAX && drained <= SHARED_BATCH_MAX)
    {
        spare = Vec::new();
    }
    loop {
        if lane.generation.load(SeqCst) != generation {
            return false;
        }
        let mut q = lane.queue.lock();
        if lane.sleeping.load(Relaxed) {
            lane.sleeping.store(false, Relaxed);
        }
        if !q.is_empty() {
            let batch = q.take(std::mem::take(&mut spare));
            lane.queued.store(0, Relaxed);
            drop(q);
            lane.takes.fetch_add(1, SeqCst);
            if lane.space_waiters.load(SeqCst) > 0 {
                lane.wake_space_waiters();
            }
            lane.work.lock().rest = batch.into_batch();
            return true;
        }
        if s.stopping.load(SeqCst) {
            return false;
        }
        lane.sleeping.store(true, Relaxed);
        drop(q);
        let mut woken = lane.wake.lock();
        while !*woken && !s.stopping.load(SeqCst) {
            if lane
                .ready
                .wait_for(&mut woken, Duration::from_secs(1))
                .timed_out()
            {
                break;
            }
        }
        *woken = false;
    }
}

/// A lane's worker. Returns true when it exits normally, false when it was abandoned (the
/// watchdog already took it off the live count).
fn worker(s: &Shared, lane_index: usize, generation: u64) -> bool {
    let lane = &s.lanes[lane_index];
    let mut hooks = HookListCache::default();
    loop {
        // Finish what the lane's work list holds (a stuck predecessor's leftovers first).
        if run_work(s, lane, generation, &mut hooks) == WorkEnd::Abandoned {
            return false;
        }
        if !refill(s, lane, generation) {
            return lane.generation.load(SeqCst) == generation;
        }
    }
}

/// Delivers the lane's work list, the event in progress (a stuck predecessor's leftovers) first,
/// until it is empty or this worker was abandoned meanwhile. The lane's work lock is taken once
/// per hook call: to count the last call, move on (events no hook accepts included), and start
/// the next.
fn run_work(s: &Shared, lane: &Lane, generation: u64, hooks: &mut HookListCache) -> WorkEnd {
    // The call that just returned, counted at the next look at the work list (where the
    // watchdog's verdict on it can be read).
    let mut returned: Option<Returned> = None;
    // The event being delivered (shared with the work list's `current`).
    let mut event: Option<Arc<Event>> = None;
    loop {
        // A call that failed is settled before the next call's deadline is set: formatting and
        // dropping its error (the hook's code) and logging it (the application's subscriber) may
        // take any time, which must not count against the next hook.
        if let Some(Returned::Failed(why)) = returned.take_if(|r| matches!(r, Returned::Failed(_)))
        {
            let mut work = lane.work.lock();
            if lane.generation.load(SeqCst) != generation {
                // The watchdog gave up on that call and counted it; this thread is abandoned.
                drop(work);
                s.abandoned.fetch_sub(1, SeqCst);
                return WorkEnd::Abandoned;
            }
            let count = !end_call(&mut work);
            drop(work);
            if count {
                s.counters.failed.fetch_add(1, Relaxed);
                tracing::warn!(key = event.as_deref().map(Event::key),
                    kind = ?event.as_deref().map(|e| e.kind), error = %why, "livedict: hook failed");
            }
        }
        let (next, count_returned) = {
            let mut work = lane.work.lock();
            if lane.generation.load(SeqCst) != generation {
                if returned.is_some() {
                    // The watchdog gave up on that call and counted it; this thread is abandoned.
                    drop(work);
                    s.abandoned.fetch_sub(1, SeqCst);
                }
                return WorkEnd::Abandoned;
            }
            let count_returned = !end_call(&mut work);
            (
                next_call(s, &mut work, hooks, event.as_ref()),
                count_returned,
            )
        };
        // Only a delivered call is left here: counting it runs no code of the application's.
        if returned.take().is_some() && count_returned {
            s.counters.delivered.fetch_add(1, Relaxed);
        }
        let Some(next) = next else {
            // The batch's buffer goes back to the publishers only once no event holds it.
            drop(event);
            return WorkEnd::Empty;
        };
        if next.event.is_some() {
            event = next.event;
        }
        let Some(current) = event.as_deref() else {
            // `next_call` gives the event with its first call to this worker.
            unreachable!("a hook call without its event");
        };
        let call = next.call;
        // SeqCst, after the work lock is released: the watchdog sets the flag (SeqCst) and then
        // looks at the lanes once more before it sleeps long, so either it sees this call's
        // deadline or this load sees the flag.
        if s.watchdog_deep.load(SeqCst) {
            wake_watchdog(s);
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| match &call {
            Call::Listed(i) => (hooks.hooks()[*i].hook.f)(current),
            Call::Entry(f) => f(current),
        }));
        // An entry hook's closure may be dropped here for the last time: after the call (not
        // while a panic of the hook unwinds), and never panicking (see `events::hook_fn`).
        drop(call);
        returned = Some(Returned::of(outcome));
    }
}

/// How [`run_work`] ended.
#[derive(PartialEq, Eq)]
enum WorkEnd {
    /// The work list is empty.
    Empty,
    /// The watchdog gave this worker up: it must exit without touching the lane.
    Abandoned,
}

/// The next hook call of the lane's work list (its deadline set), moving on from finished events
/// and starting new ones; `None` when the list is empty, or dropped (and counted) because the
/// shutdown's grace period is over. `have`: the event the worker holds. The work lock is held.
fn next_call(
    s: &Shared,
    work: &mut Work,
    hooks: &mut HookListCache,
    have: Option<&Arc<Event>>,
) -> Option<NextCall> {
    loop {
        if work.current.is_none() {
            if s.gave_up.load(Relaxed) {
                let n = std::mem::take(&mut work.rest).len();
                s.counters.dropped.fetch_add(n as u64, Relaxed);
                return None;
            }
            let Some(job) = work.rest.next_job(s.sealer.as_ref()) else {
                let lost = work.rest.take_lost();
                if lost > 0 {
                    s.counters.dropped.fetch_add(lost as u64, Relaxed);
                }
                return None;
            };
            start_event(s, work, hooks, job);
        } else if !same_list(hooks.list(), work.hooks.as_ref()) {
            // An event a stuck worker began: its calls are positions in the list it began with.
            *hooks = HookListCache::stale(work.hooks.clone());
        }
        let current = work.current.as_mut()?;
        current.deadline = None;
        let (call, timeout) = if let Some(i) = current.calls.pop() {
            let i = i as usize;
            let timeout = hooks.hooks()[i].hook.timeout;
            (Call::Listed(i), timeout.unwrap_or(s.settings.hook_timeout))
        } else if let Some(f) = current.entry_hook.take() {
            (Call::Entry(f), s.settings.hook_timeout)
        } else {
            work.current = None;
            continue;
        };
        // A timeout too long to add to the clock means: no timeout.
        current.deadline = quanta::Instant::now().checked_add(timeout);
        let event = (!have.is_some_and(|e| Arc::ptr_eq(e, &current.event)))
            .then(|| Arc::clone(&current.event));
        return Some(NextCall { call, event });
    }
}

fn same_list(a: Option<&HookList>, b: Option<&HookList>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// How a hook call ended.
enum Returned {
    Delivered,
    /// With the hook's error or panic message.
    Failed(String),
}

impl Returned {
    /// What `outcome` says, its error or panic payload formatted and dropped right after the
    /// call, under `catch_unwind` (a `Display` or a `Drop` is the application's code, and may be
    /// slow: this happens before the next call's deadline is set).
    fn of(outcome: std::thread::Result<crate::events::HookResult>) -> Returned {
        let why = match outcome {
            Ok(Ok(())) => return Returned::Delivered,
            Ok(Err(e)) => contain(move || e.to_string())
                .unwrap_or_else(|| "an error whose message panicked".into()),
            Err(panic) => contain(move || {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                format!("panicked: {msg}")
            })
            .unwrap_or_else(|| "panicked, with a payload that panicked when dropped".into()),
        };
        Returned::Failed(why)
    }
}

/// Ends the lane's call in progress: no verdict of the watchdog's can come for it any more.
/// Whether the watchdog already counted it as timed out without giving its worker up (too
/// many were stuck already): then it is not counted again.
fn end_call(work: &mut Work) -> bool {
    work.current.as_mut().is_some_and(|c| {
        c.deadline = None;
        std::mem::take(&mut c.overran)
    })
}

/// Makes `job` the lane's event in progress, with every hook call it gets, decided now (hooks
/// registered later do not see it).
fn start_event(s: &Shared, work: &mut Work, hooks: &mut HookListCache, job: Job) {
    let mut calls: SmallVec<[u32; 8]> = s
        .registry
        .current(hooks)
        .iter()
        .enumerate()
        .filter(|(_, r)| r.enabled.load(Relaxed) && r.hook.accepts(job.event.kind, job.event.key()))
        .map(|(i, _)| i as u32)
        .collect();
    if !same_list(hooks.list(), work.hooks.as_ref()) {
        work.hooks = hooks.list().cloned();
    }
    // Taken from the back.
    calls.reverse();
    work.current = Some(Current {
        event: Arc::new(job.event),
        calls,
        entry_hook: job.entry_hook,
        deadline: None,
        overran: false,
    });
}

/// Whether some lane runs a hook call with a deadline.
fn any_call_timed(s: &Shared) -> bool {
    s.lanes.iter().any(|lane| {
        lane.work
            .lock()
            .current
            .as_ref()
            .is_some_and(|c| c.deadline.is_some())
    })
}

fn watchdog(s: &Arc<Shared>) {
    let mut quiet_ticks = 0u32;
    loop {
        let now = quanta::Instant::now();
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
                current.overran = true;
                tracing::error!(
                    "livedict: {} hook threads are stuck; lane {i} waits for its hook",
                    s.settings.max_abandoned
                );
                continue;
            }
            // Hand the rest of the event, and of the batch, to a fresh worker; the stuck one exits
            // when (if) its hook returns. The new worker is started first: if no thread can be
            // had, nothing is handed over and the lane waits for its hook, losing no event.
            let (hand, handed) = mpsc::sync_channel(1);
            if let Err(e) = spawn_worker(s, i, WorkerStart::HandOver(handed)) {
                tracing::error!(error = %e,
                    "livedict: cannot start a hook worker; lane {i} waits for its hook");
                current.overran = true;
                continue;
            }
            let resume = std::mem::take(&mut *work);
            s.abandoned.fetch_add(1, SeqCst);
            let generation = lane.generation.fetch_add(1, SeqCst) + 1;
            drop(work);
            // The new worker joined the live count before the stuck one leaves it, so a shutdown
            // waiting for the count to reach zero never sees it there in between.
            // The receiver lives in the new thread until it has received (it does nothing before).
            if let Err(mpsc::SendError((_, lost))) = hand.send((generation, resume)) {
                tracing::error!("livedict: a new hook worker was gone before its hand-over");
                let events = lost.rest.len() + usize::from(lost.current.is_some());
                s.counters.dropped.fetch_add(events as u64, Relaxed);
            }
            leave(s);
        }
        if s.stopping.load(SeqCst) && *s.live.lock() == 0 {
            return;
        }
        quiet_ticks = if busy { 0 } else { quiet_ticks + 1 };
        let mut g = s.watchdog_lock.lock();
        if quiet_ticks > 100 && !s.stopping.load(SeqCst) {
            s.watchdog_deep.store(true, SeqCst);
            // A call may have begun since the lanes were looked at, before it could see the flag.
            if !any_call_timed(s) {
                s.watchdog_cv.wait_for(&mut g, Duration::from_secs(1));
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant};

    use crate::{EventKind, EventSettings, LiveDict};

    /// Replacements of stuck workers that fail to start, as if no thread could be had.
    static FAILING_SPAWNS: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn take_injected_spawn_failure() -> bool {
        FAILING_SPAWNS
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// When no thread can be had to replace a stuck worker, the lane waits for its hook: the
    /// events behind the stuck one are delivered late, none is lost, and the overrun is counted
    /// once. (Before, the batch handed to the thread that never started was dropped, uncounted,
    /// and the lane had no worker left.)
    #[test]
    fn a_worker_that_cannot_be_replaced_loses_no_event() -> crate::Result<()> {
        let store = LiveDict::builder()
            .events(
                EventSettings::default()
                    .workers(1)
                    .hook_timeout(Duration::from_millis(20)),
            )
            .build()?;
        let (release, released) = mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        store.on(EventKind::Set, move |e| {
            if e.key() == "stuck" {
                released.lock().unwrap().recv().ok();
            }
            s.lock().unwrap().push(e.key().to_owned());
            Ok(())
        })?;
        FAILING_SPAWNS.store(1, SeqCst);
        store.set("stuck", &0)?;
        for i in 0..5 {
            store.set(&format!("after:{i}"), &i)?;
        }
        let give_up = Instant::now() + Duration::from_secs(30);
        // The watchdog counts the overrun, then tries to start the replacement.
        while (store.stats().hooks_timed_out == 0 || FAILING_SPAWNS.load(SeqCst) != 0)
            && Instant::now() < give_up
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(store.stats().hooks_timed_out, 1);
        assert_eq!(
            FAILING_SPAWNS.load(SeqCst),
            0,
            "the replacement was attempted"
        );
        assert!(
            seen.lock().unwrap().is_empty(),
            "the lane waits for its hook"
        );
        release.send(()).unwrap();
        while seen.lock().unwrap().len() < 6 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(5));
        }
        let expected: Vec<String> = std::iter::once("stuck".to_owned())
            .chain((0..5).map(|i| format!("after:{i}")))
            .collect();
        assert_eq!(*seen.lock().unwrap(), expected);
        store.close();
        let st = store.stats();
        assert_eq!(
            (st.hooks_timed_out, st.hooks_delivered, st.events_dropped),
            (1, 5, 0)
        );
        Ok(())
    }

    /// An error whose `Display` panics when dropped, or is slow.
    #[derive(Debug)]
    struct AwkwardError {
        format_takes: Duration,
        panics_on_drop: bool,
    }

    impl std::fmt::Display for AwkwardError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            std::thread::sleep(self.format_takes);
            f.write_str("awkward")
        }
    }

    impl std::error::Error for AwkwardError {}

    impl Drop for AwkwardError {
        fn drop(&mut self) {
            if self.panics_on_drop {
                panic!("an error that panics when dropped");
            }
        }
    }

    /// Panics when dropped.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("a hook's capture that panics when dropped");
        }
    }

    /// Waits until `seen` holds `n` keys (or 30 s pass) and returns them.
    fn wait_for(seen: &std::sync::Mutex<Vec<String>>, n: usize) -> Vec<String> {
        let give_up = Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().len() < n && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(2));
        }
        seen.lock().unwrap().clone()
    }

    /// Formatting a failed call's error is the failing hook's time, not the next hook's: the
    /// next call's deadline is set only once the failure is settled. (Before, a slow `Display`
    /// got the next, quick hook counted as timed out, its worker given up, and the key's events
    /// delivered to it out of order by the replacement.)
    #[test]
    fn a_slow_error_message_is_not_the_next_hooks_time() -> crate::Result<()> {
        let store = LiveDict::builder()
            .events(EventSettings::default().workers(1))
            .build()?;
        store.on(EventKind::Set, |e| {
            if e.key() == "k" && e.value::<u32>()? == Some(1) {
                return Err(Box::new(AwkwardError {
                    format_takes: Duration::from_millis(600),
                    panics_on_drop: false,
                }));
            }
            Ok(())
        })?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        store.hook(
            crate::Hook::new(EventKind::Set, move |e| {
                s.lock().unwrap().push(format!("{:?}", e.value::<u32>()?));
                Ok(())
            })
            .timeout(Duration::from_millis(150)),
        )?;
        store.set("k", &1u32)?;
        store.set("k", &2u32)?;
        assert_eq!(wait_for(&seen, 2), ["Some(1)", "Some(2)"]);
        store.close();
        let st = store.stats();
        assert_eq!(
            (st.hooks_delivered, st.hooks_failed, st.hooks_timed_out),
            (3, 1, 0)
        );
        Ok(())
    }

    /// A hook's error that panics when dropped is a failed call like any other: counted, and the
    /// lane goes on. (Before, the panic ended the lane's worker: later events were never
    /// delivered and `close` waited out its grace period.)
    #[test]
    fn an_error_that_panics_when_dropped_is_counted_and_the_lane_goes_on() -> crate::Result<()> {
        let store = LiveDict::builder()
            .events(EventSettings::default().workers(1))
            .build()?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        store.on(EventKind::Set, move |e| {
            s.lock().unwrap().push(e.key().to_owned());
            if e.key() == "bad" {
                return Err(Box::new(AwkwardError {
                    format_takes: Duration::ZERO,
                    panics_on_drop: true,
                }));
            }
            Ok(())
        })?;
        store.set("bad", &1)?;
        store.set("after", &2)?;
        assert_eq!(wait_for(&seen, 2), ["bad", "after"]);
        store.close();
        let st = store.stats();
        assert_eq!(
            (st.hooks_delivered, st.hooks_failed, st.events_dropped),
            (1, 1, 0)
        );
        Ok(())
    }

    /// A hook whose closure panics when dropped, for the last time on the worker (which still
    /// held it in its copy of the hook list when it was unregistered), leaves delivery working.
    #[test]
    fn a_hook_that_panics_when_dropped_leaves_delivery_working() -> crate::Result<()> {
        let store = LiveDict::builder()
            .events(EventSettings::default().workers(1))
            .build()?;
        let guard = PanicsOnDrop;
        let doomed = store.on(EventKind::Set, move |_| {
            let _ = &guard;
            Ok(())
        })?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        store.on(EventKind::Set, move |e| {
            s.lock().unwrap().push(e.key().to_owned());
            Ok(())
        })?;
        store.set("a", &1)?;
        assert_eq!(wait_for(&seen, 1), ["a"]);
        assert!(store.unregister_hook(doomed));
        store.set("b", &2)?;
        assert_eq!(wait_for(&seen, 2), ["a", "b"]);
        store.close();
        let st = store.stats();
        assert_eq!(
            (st.hooks_delivered, st.hooks_failed, st.events_dropped),
            (3, 0, 0)
        );
        Ok(())
    }
}
