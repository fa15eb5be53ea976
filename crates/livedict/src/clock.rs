//! Where a store's time comes from: the system clock, or a manual clock for tests.
//!
//! Every deadline in livedict is a count of milliseconds since the Unix epoch ([`Millis`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
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
            Clock::System => precise_now(),
            Clock::Manual(m) => m.now(),
        }
    }

    /// [`now`](Self::now) for an operation of a store: it also counts as a use of the cached
    /// clock, which keeps its ticker running (as reads do), so that the operations that follow
    /// get the precise time from the processor's counter. Background work (the expiry driver's
    /// rounds) reads [`now`](Self::now) instead, so that an idle store lets the ticker park.
    #[inline]
    pub(crate) fn now_of_operation(&self) -> Millis {
        match self {
            Clock::System => {
                if RECENT.running() {
                    RECENT.check(RECENT.ms.load(Ordering::Relaxed));
                }
                precise_now()
            }
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
    wall_nanos() / NANOS_PER_MILLI
}

const NANOS_PER_MILLI: u64 = 1_000_000;

/// The wall clock in nanoseconds since the Unix epoch (0 before it).
#[inline]
fn wall_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
    })
}

/// The precise wall-clock time: from the processor's counter while the ticker runs (see
/// [`CounterWall`]), else from the system clock. Does not count as a use of the ticker (see
/// [`Clock::now_of_operation`]).
#[inline]
fn precise_now() -> Millis {
    if RECENT.ticking.load(Ordering::Acquire)
        && let Some(counter) = COUNTER_WALL.get()
    {
        counter.now()
    } else {
        system_now()
    }
}

/// The wall clock read from the processor's time-stamp counter, through `quanta` (which
/// calibrates the counter against the OS's monotonic clock, and falls back to that clock where
/// the counter is not invariant), at an offset from the wall clock that the ticker measures every
/// tick (10 ms: so clock adjustments reach it within a tick, and the counter's drift, a few
/// microseconds a second here, never accumulates).
///
/// Why not `SystemTime::now` on every write: the system clock (`clock_gettime` through the vDSO)
/// reads the counter with an ordering barrier that waits for every earlier load, so a write that
/// read it lost the overlap of its cache misses with the previous write's; the memory
/// benchmark's inserts went from 2.0 M to 2.3 M a second without it (docs/design.md, "Time").
/// The counter itself is read without a barrier.
struct CounterWall {
    clock: quanta::Clock,
    /// The counter's reading when this was made; its nanoseconds are counted from there.
    start: u64,
    /// Wall-clock nanoseconds since the epoch minus counter nanoseconds since `start`, measured
    /// by the ticker.
    offset: AtomicU64,
}

/// Made by the ticker thread when it first starts; until then the precise time comes from the
/// system clock. quanta's calibration takes about a millisecond here and at most 200 ms, during
/// which the cached time is not refreshed (it stays within [`RECENT_MARGIN`], and
/// [`RecentClock::check`] repairs it beyond half of that).
static COUNTER_WALL: OnceLock<CounterWall> = OnceLock::new();

/// The longest a measurement of [`CounterWall`]'s offset may take to be used: the bound on how
/// far ahead of the wall clock the counter's time may be.
const MAX_MEASURE_NANOS: u64 = 20_000;

impl CounterWall {
    fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        let counter = CounterWall {
            clock,
            start,
            offset: AtomicU64::new(0),
        };
        // A first offset: from the first short reading of a few, else from the last.
        let mut offset = 0;
        for _ in 0..16 {
            let (measured, _, short) = counter.reading();
            offset = measured;
            if short {
                break;
            }
        }
        counter.offset.store(offset, Ordering::Relaxed);
        counter
    }

    #[inline]
    fn since_start(&self) -> u64 {
        self.clock.delta_as_nanos(self.start, self.clock.raw())
    }

    /// One reading of the offset: the counter before and after the wall clock, the offset taken
    /// from the first, so the time it gives later is never behind that wall-clock reading (nor
    /// the cached time taken from it), and ahead of the wall clock by at most the time between
    /// the two counter readings (plus the counter's drift since, nanoseconds a millisecond).
    /// Returns the offset, the wall-clock time read, and whether the readings lay at most
    /// [`MAX_MEASURE_NANOS`] apart.
    fn reading(&self) -> (u64, u64, bool) {
        let before = self.since_start();
        let wall = wall_nanos();
        let after = self.since_start();
        (
            wall.saturating_sub(before),
            wall,
            after.saturating_sub(before) <= MAX_MEASURE_NANOS,
        )
    }

    /// Measures the offset and returns the wall-clock time read. A reading whose counter
    /// readings lie too far apart (the thread was preempted between them) is not used: the
    /// offset stays as it was.
    fn measure(&self) -> u64 {
        let (offset, wall, short) = self.reading();
        if short {
            self.offset.store(offset, Ordering::Relaxed);
        }
        wall
    }

    #[inline]
    fn now(&self) -> Millis {
        (self.offset.load(Ordering::Relaxed) + self.since_start()) / NANOS_PER_MILLI
    }
}

/// How often the ticker refreshes the cached time (and measures the counter's offset).
const TICK: Duration = Duration::from_millis(10);
/// Ticks between two looks at whether the cached time was used: a second's worth.
const TICKS_PER_USE_CHECK: u32 = 100;

/// How stale the cached time may be and still answer "is this deadline ahead?". The ticker
/// refreshes it every [`TICK`]; the margin covers a ticker delayed by scheduling.
pub(crate) const RECENT_MARGIN: Millis = 1000;

/// A process-wide cache of the wall clock, refreshed every [`TICK`] (10 ms) by one background thread
/// ("livedict-clock") while stores read it; the thread parks after a second without readers and
/// is woken by the next one.
struct RecentClock {
    ms: AtomicU64,
    /// Set by readers (only when clear, so reading stays a shared load), cleared by the ticker.
    used: AtomicBool,
    ticking: AtomicBool,
    ticker: OnceLock<std::thread::Thread>,
}

static RECENT: RecentClock = RecentClock {
    ms: AtomicU64::new(0),
    used: AtomicBool::new(false),
    ticking: AtomicBool::new(false),
    ticker: OnceLock::new(),
};

impl RecentClock {
    /// The cached time, if the ticker is running.
    #[inline]
    fn get(&self) -> Option<Millis> {
        if self.running() {
            Some(self.ms.load(Ordering::Relaxed))
        } else {
            None
        }
    }

    /// Whether the ticker is running (it is woken if not). Counts as a use, which keeps it
    /// running.
    #[inline]
    fn running(&self) -> bool {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        if self.ticking.load(Ordering::Acquire) {
            true
        } else {
            self.wake();
            false
        }
    }

    /// Stores the wall clock (and the counter's offset from it, once the counter is ready).
    fn refresh(&self) {
        let wall = match COUNTER_WALL.get() {
            Some(counter) => counter.measure(),
            None => wall_nanos(),
        };
        self.ms.store(wall / NANOS_PER_MILLI, Ordering::Relaxed);
    }

    #[cold]
    fn wake(&self) {
        self.ms.store(system_now(), Ordering::Relaxed);
        let ticker = self.ticker.get_or_init(|| {
            std::thread::Builder::new()
                .name("livedict-clock".into())
                .spawn(|| RECENT.tick())
                .map(|h| h.thread().clone())
                .unwrap_or_else(|_| std::thread::current())
        });
        if ticker.id() != std::thread::current().id() {
            ticker.unpark();
        }
    }

    fn tick(&self) {
        loop {
            // Fresh before readers may use it: after a long park the counter's offset is old.
            self.refresh();
            self.ticking.store(true, Ordering::Release);
            COUNTER_WALL.get_or_init(CounterWall::new);
            for _ in 0..TICKS_PER_USE_CHECK {
                self.refresh();
                std::thread::sleep(TICK);
            }
            if !self.used.swap(false, Ordering::Relaxed) {
                // Nobody read the time for a second: park until a reader wakes us.
                self.ticking.store(false, Ordering::Release);
                if !self.used.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(60));
                }
            }
        }
    }

    /// Every 4096th use on a thread compares the cache (and the counter's time) with the system
    /// clock, and repairs the cache if a stalled ticker let it fall behind by more than half the
    /// margin (the counter's offset if it is over a millisecond off).
    #[inline]
    fn check(&self, recent: Millis) {
        thread_local! {
            static COUNT: Cell<u32> = const { Cell::new(0) };
        }
        let n = COUNT.get().wrapping_add(1);
        COUNT.set(n);
        if n.is_multiple_of(4096) {
            let precise = system_now();
            if precise.saturating_sub(recent) > RECENT_MARGIN / 2 {
                self.ms.fetch_max(precise, Ordering::Relaxed);
                tracing::debug!(recent, precise, "livedict: the clock ticker fell behind");
            }
            // The counter's offset too, should the ticker have stopped measuring it (a forked
            // child has no ticker thread) while the wall clock was adjusted.
            if let Some(counter) = COUNTER_WALL.get()
                && counter.now().abs_diff(precise) > 1
            {
                counter.measure();
                tracing::debug!(precise, "livedict: the counter's offset was measured again");
            }
        }
    }
}

/// The time of one operation, read lazily.
///
/// Reading a clock (`clock_gettime`, even the kernel's coarse clock) stops the CPU from
/// overlapping one lookup's cache misses with the next: with a miss per lookup it made reads two
/// to three times slower. Most reads only need to know that an entry's deadline is not yet
/// reached, which a cached time (refreshed every 10 ms by one thread) answers when the
/// deadline is more than a second away; the precise clock is read only near a deadline,
/// for a sliding TTL, or when asked. A manual clock is always read exactly (an atomic load).
#[derive(Debug)]
pub struct Now<'a> {
    clock: Option<&'a Clock>,
    /// The precise time once read; 0 until then.
    exact: AtomicU64,
}

impl<'a> Now<'a> {
    /// The time of `clock`, to be read when needed.
    pub fn of(clock: &'a Clock) -> Self {
        Now {
            clock: Some(clock),
            exact: AtomicU64::new(0),
        }
    }

    /// A fixed time.
    pub fn fixed(millis: Millis) -> Now<'static> {
        Now {
            clock: None,
            exact: AtomicU64::new(millis),
        }
    }

    /// The precise time (read once, then remembered).
    #[inline]
    pub fn exact(&self) -> Millis {
        match self.exact.load(Ordering::Relaxed) {
            0 => {
                let t = self.clock.map_or(0, Clock::now);
                self.exact.store(t, Ordering::Relaxed);
                t
            }
            t => t,
        }
    }

    fn known(&self) -> Option<Millis> {
        match self.exact.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// A time no later than [`exact`](Self::exact), and normally within about ten milliseconds
    /// of it: the cached time when it is available.
    #[inline]
    pub fn recent(&self) -> Millis {
        match (self.known(), self.clock) {
            (Some(t), _) => t,
            (None, Some(Clock::System)) => match RECENT.get() {
                Some(t) => t,
                None => self.exact(),
            },
            _ => self.exact(),
        }
    }

    /// Whether the time is before `deadline`, reading the precise clock only if the answer is
    /// close.
    #[inline]
    pub fn before(&self, deadline: Millis) -> bool {
        if self.known().is_none()
            && matches!(self.clock, Some(Clock::System))
            && let Some(recent) = RECENT.get()
        {
            RECENT.check(recent);
            if recent.saturating_add(RECENT_MARGIN) < deadline {
                return true;
            }
        }
        self.exact() < deadline
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
    fn recent_time_is_never_ahead_and_close_behind() {
        let _ = RECENT.get(); // starts the ticker
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..2000 {
            let recent = RECENT.get().unwrap_or_else(system_now);
            let precise = system_now();
            assert!(recent <= precise, "recent {recent} ahead of {precise}");
            assert!(
                precise - recent < RECENT_MARGIN,
                "recent {recent} far behind {precise}"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    #[test]
    fn the_counter_gives_the_wall_clock_time() {
        let _ = RECENT.get(); // starts the ticker, which makes the counter
        let started = std::time::Instant::now();
        while COUNTER_WALL.get().is_none() || !RECENT.running() {
            assert!(started.elapsed() < Duration::from_secs(5), "no counter");
            std::thread::sleep(Duration::from_millis(1));
        }
        let counter = COUNTER_WALL.get().unwrap();
        for i in 0..20_000 {
            let recent = RECENT.ms.load(Ordering::Relaxed);
            let before = system_now();
            let t = counter.now();
            let after = system_now();
            // Within the system clock's readings around it, give or take the millisecond one
            // reading may straddle, and never behind the cached time.
            assert!(before <= t + 1 && t <= after + 1, "{before} {t} {after}");
            assert!(recent <= t, "cached {recent} ahead of {t}");
            assert!(precise_now().abs_diff(t) <= 1);
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    }

    #[test]
    fn now_answers_like_the_precise_clock() {
        let clock = Clock::System;
        let now = Now::of(&clock);
        let t = system_now();
        assert!(now.before(t + 10 * RECENT_MARGIN)); // far: no precise read needed
        assert!(!now.before(t.saturating_sub(1000)));
        // The precise time comes from the processor's counter, which may be a few nanoseconds
        // behind the system clock: a millisecond's leeway.
        assert!(now.exact() + 1 >= t);
        assert!(now.recent() <= now.exact());
        let fixed = Now::fixed(42);
        assert!(fixed.before(43) && !fixed.before(42));
        let (manual, handle) = Clock::manual();
        let m = Now::of(&manual);
        assert!(!m.before(handle.now()));
        assert!(m.before(handle.now() + 1));
    }
}
