//! The events suite: what registered hooks cost the caller of `set`, and how fast and how soon the
//! executor delivers events.
//!
//! - `set_with_N_hooks`: `set_bytes_with` overwrites (64-byte values, TTL) on a store with N
//!   trivial `Set` hooks, against a store built alike with no hooks (the peer), interleaved rounds.
//!   Only the set calls are timed (the caller's cost); between rounds the queue is drained (the
//!   store's `hooks_delivered` catches up) so that no round inherits another's backlog. The hook
//!   workers run while the sets are timed, as they would in an application: on a machine with few
//!   cores they take CPU from the caller, and that is part of the cost measured. The hooked store
//!   has the default worker count (one per two CPUs); `set_with_1_hooks_W_workers` has twice as
//!   many, which on a small machine puts more threads than CPUs to work.
//! - `set_with_1_filtered_hook`: one hook whose prefix never matches.
//! - `reference_set_then_channel_send`: not livedict's events: each set followed by a send of its key
//!   and value to another thread over a bounded `std::sync::mpsc` channel, against the sets
//!   alone (what the straightforward hand-off costs, for comparison with livedict's queue).
//! - `delivery`: events per second from the first set until the last hook call returned, with 2
//!   workers and with 1 (`_1_worker`). A single publisher may well be the bottleneck
//!   here (the note line says how much of the time the sets took), so `delivery_backlog` also
//!   measures the workers alone: the events are queued first, behind a closed gate, and timed
//!   from opening the gate until the last one was delivered.
//! - `delivery_latency`: from the set call to the hook call, per event, percentiles.

use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use livedict::{EventKind, EventSettings, Hook, LiveDict, QueueFullPolicy};

use crate::harness::{Config, Run, XorShift, compare, median, print_figure};

const SUITE: &str = "events";
const VALUE_LEN: usize = 64;
/// The TTL of every write: long enough that nothing expires during a run.
const TTL: Duration = Duration::from_secs(3600);
/// Keys overwritten by the set-path and delivery cases.
const KEYS: usize = 10_000;
/// Registered `Set` hooks of the set-path cases.
const HOOK_COUNTS: [usize; 3] = [1, 10, 100];
/// Large enough that no round fills it, so publishing never waits for room.
const QUEUE_CAPACITY: usize = 1 << 20;
/// How long draining the queue may take before the case gives up and warns.
const DRAIN_BOUND: Duration = Duration::from_secs(60);
/// Sentinel events of the filtered case (see [`set_path_filtered`]).
const SENTINELS: usize = 64;

struct Sizes {
    /// Sets per round of the set-path cases, by hook count (100 hooks make the drain between rounds
    /// 100 times the hook calls; fewer sets keep it short).
    set_ops: fn(usize) -> usize,
    /// Events per round of the delivery throughput case.
    delivery_events: usize,
    /// Events of the latency case, sent in bursts of `LATENCY_BURST`.
    latency_events: usize,
}

/// Events sent back to back in the latency case before a pause.
const LATENCY_BURST: usize = 100;
/// The pause between bursts.
const LATENCY_PAUSE: Duration = Duration::from_micros(200);

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                set_ops: |hooks| if hooks >= 100 { 10_000 } else { 20_000 },
                delivery_events: 50_000,
                latency_events: 2_000,
            }
        } else {
            Sizes {
                set_ops: |hooks| if hooks >= 100 { 150_000 } else { 500_000 },
                delivery_events: 500_000,
                latency_events: 20_000,
            }
        }
    }
}

/// The settings of this suite, for the header line.
pub fn settings(cfg: &Config) -> String {
    let s = Sizes::new(cfg.quick);
    format!(
        "events: keys {KEYS}, value {VALUE_LEN} B, ttl {} s, hooks {HOOK_COUNTS:?}, sets/round {} \
         ({} with 100 hooks), queue {QUEUE_CAPACITY} Block, set-path workers {} (the default) \
         and {}, delivery {} events/round with 2 workers and 1, latency {} events in bursts of \
         {LATENCY_BURST}",
        TTL.as_secs(),
        (s.set_ops)(1),
        (s.set_ops)(100),
        default_workers(),
        2 * default_workers(),
        s.delivery_events,
        s.latency_events
    )
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("key:{i}")).collect()
}

fn value() -> Vec<u8> {
    (0..VALUE_LEN as u8).collect()
}

/// Hook workers by default on this machine (one per two CPUs, as `EventSettings::default()`
/// chooses; the stores of the default cases take the library's own default, this is for the
/// settings line and for doubling).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// A store with the given number of hook workers (`None`: the default) and a queue no round
/// fills.
fn new_store(workers: Option<usize>) -> LiveDict {
    let mut settings = EventSettings::default()
        .queue_capacity(QUEUE_CAPACITY)
        .when_full(QueueFullPolicy::Block);
    if let Some(n) = workers {
        settings = settings.workers(n);
    }
    LiveDict::builder()
        .events(settings)
        .build()
        .expect("build a livedict store")
}

fn populate(store: &LiveDict, keys: &[String], value: &[u8]) {
    for k in keys {
        store
            .set_bytes_with(k, value, TTL)
            .expect("livedict set_bytes_with");
    }
}

/// A trivial hook body: counts the call.
fn counting_hook(
    calls: &Arc<AtomicU64>,
) -> impl Fn(&livedict::Event) -> livedict::HookResult + Send + Sync + 'static {
    let calls = calls.clone();
    move |_| {
        calls.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Waits until the store has delivered `target` hook calls in all, or [`DRAIN_BOUND`] passes;
/// returns how many were still missing.
fn drain(store: &LiveDict, target: u64) -> u64 {
    let give_up = Instant::now() + DRAIN_BOUND;
    loop {
        let delivered = store.stats().hooks_delivered;
        if delivered >= target {
            return 0;
        }
        if Instant::now() >= give_up {
            return target - delivered;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The sets of one round, timed.
fn timed_sets(store: &LiveDict, keys: &[String], value: &[u8], order: &[u32]) -> Duration {
    let start = Instant::now();
    for &i in order {
        store
            .set_bytes_with(&keys[i as usize], value, TTL)
            .expect("livedict set_bytes_with");
    }
    start.elapsed()
}

/// Warns about hook calls that failed or timed out and events dropped: none should be.
fn check_stats(case: &str, store: &LiveDict) {
    let st = store.stats();
    if st.hooks_failed + st.hooks_timed_out + st.events_dropped > 0 {
        println!(
            "# warning: {SUITE}/{case}: hooks failed {}, timed out {}, events dropped {}",
            st.hooks_failed, st.hooks_timed_out, st.events_dropped
        );
    }
}

fn not_drained(missing: u64) -> Option<String> {
    (missing != 0).then(|| {
        format!(
            "{missing} hook calls still not delivered {} s after the round",
            DRAIN_BOUND.as_secs()
        )
    })
}

// ---- the set path --------------------------------------------------------------------------------

/// The name of a set-path case.
fn set_path_case(hooks: usize, workers: Option<usize>) -> String {
    match workers {
        None => format!("set_with_{hooks}_hooks"),
        Some(w) => format!("set_with_{hooks}_hooks_{w}_workers"),
    }
}

/// `set_with_N_hooks`: N trivial `Set` hooks against no hooks, with the default worker count
/// (`_W_workers`: with W workers). Every event makes N hook calls, so
/// a round is drained when `hooks_delivered` has grown by N per set.
fn set_path(
    cfg: &Config,
    sizes: &Sizes,
    keys: &[String],
    value: &[u8],
    hooks: usize,
    workers: Option<usize>,
) {
    let ops = (sizes.set_ops)(hooks);
    let order = XorShift::new(hooks as u64).indices(ops, KEYS);
    let peer = new_store(None);
    populate(&peer, keys, value);
    let store = new_store(workers);
    populate(&store, keys, value);
    let calls = Arc::new(AtomicU64::new(0));
    for _ in 0..hooks {
        store
            .on(EventKind::Set, counting_hook(&calls))
            .expect("register a hook");
    }
    let mut expected = 0u64;
    let case = set_path_case(hooks, workers);
    compare(
        cfg,
        SUITE,
        &case,
        "no_hooks",
        ops as u64,
        || {
            let elapsed = timed_sets(&store, keys, value, &order);
            expected += (ops * hooks) as u64;
            Run {
                elapsed,
                count: drain(&store, expected),
            }
        },
        || Run {
            elapsed: timed_sets(&peer, keys, value, &order),
            count: 0,
        },
        not_drained,
    );
    if calls.load(Relaxed) != expected {
        println!(
            "# warning: {SUITE}/{case}: the hooks ran {} times, expected {expected}",
            calls.load(Relaxed)
        );
    }
    check_stats(&case, &store);
}

/// `reference_set_then_channel_send`: not livedict's events. The same store with no hooks, each set
/// followed by a send of its key and value (reference-counted clones, no copy) over a bounded
/// `std::sync::mpsc` channel to a thread that receives and drops them, against the sets alone:
/// what the straightforward hand-off of each event to another thread costs the caller here (not
/// a floor: a queue that publishes in batches can cost less).
fn reference_handoff(cfg: &Config, sizes: &Sizes, keys: &[String], value: &[u8]) {
    let ops = (sizes.set_ops)(1);
    let order = XorShift::new(7).indices(ops, KEYS);
    let store = new_store(None);
    populate(&store, keys, value);
    let shared_keys: Vec<Arc<str>> = keys.iter().map(|k| Arc::from(k.as_str())).collect();
    let shared_value: Arc<[u8]> = Arc::from(value);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Arc<str>, Arc<[u8]>)>(QUEUE_CAPACITY);
    let consumer = std::thread::spawn(move || {
        let mut received = 0u64;
        while let Ok(event) = rx.recv() {
            std::hint::black_box(event);
            received += 1;
        }
        received
    });
    compare(
        cfg,
        SUITE,
        "reference_set_then_channel_send",
        "no_hand_off",
        ops as u64,
        || {
            let start = Instant::now();
            for &i in &order {
                let key = &keys[i as usize];
                store
                    .set_bytes_with(key, value, TTL)
                    .expect("livedict set_bytes_with");
                tx.send((shared_keys[i as usize].clone(), shared_value.clone()))
                    .expect("the consumer runs");
            }
            Run {
                elapsed: start.elapsed(),
                count: 0,
            }
        },
        || Run {
            elapsed: timed_sets(&store, keys, value, &order),
            count: 0,
        },
        |_| None,
    );
    drop(tx);
    let _ = consumer.join();
}

/// `set_with_1_filtered_hook`: one `Set` hook with a prefix no measured key has. The caller's
/// thread checks the key against the filters of the kind's hooks (when no hook of the kind takes
/// every key) and queues nothing for keys no hook accepts, so this measures that check.
///
/// The round is still drained with sentinels, in case events were queued: after the timed sets,
/// [`SENTINELS`] keys with the hook's prefix are set and the round waits until their hook calls are
/// delivered. Lanes are first in, first out, and with 64 keys spread by hash every lane gets one
/// (all but certainly), so every event of the round has been handled by then.
fn set_path_filtered(cfg: &Config, sizes: &Sizes, keys: &[String], value: &[u8]) {
    let ops = (sizes.set_ops)(1);
    let order = XorShift::new(1000).indices(ops, KEYS);
    let peer = new_store(None);
    populate(&peer, keys, value);
    let store = new_store(None);
    populate(&store, keys, value);
    let calls = Arc::new(AtomicU64::new(0));
    store
        .hook(Hook::new(EventKind::Set, counting_hook(&calls)).prefix("nomatch:"))
        .expect("register a hook");
    let sentinels: Vec<String> = (0..SENTINELS).map(|i| format!("nomatch:{i}")).collect();
    let mut expected = 0u64;
    let case = "set_with_1_filtered_hook";
    compare(
        cfg,
        SUITE,
        case,
        "no_hooks",
        ops as u64,
        || {
            let elapsed = timed_sets(&store, keys, value, &order);
            populate(&store, &sentinels, value);
            expected += SENTINELS as u64;
            Run {
                elapsed,
                count: drain(&store, expected),
            }
        },
        || Run {
            elapsed: timed_sets(&peer, keys, value, &order),
            count: 0,
        },
        not_drained,
    );
    if calls.load(Relaxed) != expected {
        println!(
            "# warning: {SUITE}/{case}: the hook ran {} times, expected only the {expected} sentinels",
            calls.load(Relaxed)
        );
    }
    check_stats(case, &store);
}

// ---- delivery throughput -----------------------------------------------------------------------------

/// One store of the delivery cases: one trivial hook behind a gate, open except while a backlog is
/// queued.
struct DeliveryStore {
    case: &'static str,
    store: LiveDict,
    open: Arc<AtomicBool>,
    rates: Vec<f64>,
    backlog_rates: Vec<f64>,
    set_shares: Vec<f64>,
}

impl DeliveryStore {
    fn new(case: &'static str, workers: usize, keys: &[String], value: &[u8]) -> Self {
        let store = new_store(Some(workers));
        populate(&store, keys, value);
        let open = Arc::new(AtomicBool::new(true));
        let gate = open.clone();
        store
            .hook(
                Hook::new(EventKind::Set, move |_| {
                    while !gate.load(Acquire) {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    Ok(())
                })
                // The first event of each lane waits at the gate while the backlog is queued.
                .timeout(DRAIN_BOUND),
            )
            .expect("register a hook");
        DeliveryStore {
            case,
            store,
            open,
            rates: Vec::new(),
            backlog_rates: Vec::new(),
            set_shares: Vec::new(),
        }
    }

    fn sets(&self, keys: &[String], value: &[u8], order: &[u32]) {
        for &k in order {
            self.store
                .set_bytes_with(&keys[k as usize], value, TTL)
                .expect("livedict set_bytes_with");
        }
    }

    /// `delivery`: timed from the first set until the last event's hook call returned.
    fn live(&mut self, keys: &[String], value: &[u8], order: &[u32], warnings: &mut Vec<String>) {
        let target = self.store.stats().hooks_delivered + order.len() as u64;
        let start = Instant::now();
        self.sets(keys, value, order);
        let sets_done = start.elapsed();
        let missing = drain(&self.store, target);
        let elapsed = start.elapsed();
        if let Some(w) = not_drained(missing) {
            warnings.push(format!("# warning: {SUITE}/{}: {w}", self.case));
        }
        self.rates.push(order.len() as f64 / elapsed.as_secs_f64());
        self.set_shares
            .push(sets_done.as_secs_f64() / elapsed.as_secs_f64());
    }

    /// `delivery_backlog`: the events are queued while the hook waits at the gate, and the time is
    /// from opening the gate until the last hook call returned: what the workers deliver when the
    /// queue is full, without the publisher as the bottleneck.
    fn backlog(
        &mut self,
        keys: &[String],
        value: &[u8],
        order: &[u32],
        warnings: &mut Vec<String>,
    ) {
        let target = self.store.stats().hooks_delivered + order.len() as u64;
        self.open.store(false, Release);
        self.sets(keys, value, order);
        let start = Instant::now();
        self.open.store(true, Release);
        let missing = drain(&self.store, target);
        let elapsed = start.elapsed();
        if let Some(w) = not_drained(missing) {
            warnings.push(format!("# warning: {SUITE}/{}_backlog: {w}", self.case));
        }
        self.backlog_rates
            .push(order.len() as f64 / elapsed.as_secs_f64());
    }

    fn print(&mut self) {
        check_stats(self.case, &self.store);
        println!(
            "# {SUITE}/{}: the sets themselves took {:.0} % of the time (median)",
            self.case,
            100.0 * median(&mut self.set_shares)
        );
        print_figure(
            SUITE,
            self.case,
            "throughput",
            format!("{:.0}", median(&mut self.rates)),
            "events/s",
        );
        print_figure(
            SUITE,
            &self.case.replacen("delivery", "delivery_backlog", 1),
            "throughput",
            format!("{:.0}", median(&mut self.backlog_rates)),
            "events/s",
        );
    }
}

/// `delivery` and `delivery_backlog`, with the default 2 workers and with 1 (`_1_worker`),
/// interleaved rounds, medians. One trivial hook; `delivery_events` sets per run.
fn delivery(cfg: &Config, sizes: &Sizes, keys: &[String], value: &[u8]) {
    let order = XorShift::new(2000).indices(sizes.delivery_events, KEYS);
    let mut stores = [
        DeliveryStore::new("delivery", 2, keys, value),
        DeliveryStore::new("delivery_1_worker", 1, keys, value),
    ];
    let mut warnings = Vec::new();
    for _ in 0..cfg.rounds {
        for s in &mut stores {
            s.live(keys, value, &order, &mut warnings);
            s.backlog(keys, value, &order, &mut warnings);
        }
    }
    for w in warnings {
        println!("{w}");
    }
    for s in &mut stores {
        s.print();
    }
}

// ---- delivery latency ----------------------------------------------------------------------------

/// `delivery_latency`: each set stores the time it was made (ns since `epoch`, a typed `u64`) and
/// the hook records the time it runs minus that. Sent in bursts of [`LATENCY_BURST`] with a
/// [`LATENCY_PAUSE`] between them, so the worker goes idle (polling) between bursts as it would
/// under a moderate load.
fn delivery_latency(sizes: &Sizes) {
    let n = sizes.latency_events;
    let epoch = Instant::now();
    let ns = move || epoch.elapsed().as_nanos() as u64;
    // 1 ns to 1 minute, 3 significant digits.
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
    ));
    let store = LiveDict::new();
    let h = hist.clone();
    store
        .on(EventKind::Set, move |e| {
            let now = ns();
            let sent: u64 = e.value()?.ok_or("a set event without a value")?;
            h.lock()
                .expect("latency histogram lock")
                .saturating_record(now.saturating_sub(sent).max(1));
            Ok(())
        })
        .expect("register a hook");
    // 1,000 keys, so that events go to both lanes.
    let keys: Vec<String> = (0..1_000).map(|i| format!("lat:{i}")).collect();
    for i in 0..n {
        if i > 0 && i % LATENCY_BURST == 0 {
            std::thread::sleep(LATENCY_PAUSE);
        }
        store
            .set(&keys[i % keys.len()], &ns())
            .expect("livedict set");
    }
    let missing = drain(&store, n as u64);
    if let Some(w) = not_drained(missing) {
        println!("# warning: {SUITE}/delivery_latency: {w}");
    }
    check_stats("delivery_latency", &store);
    let h = hist.lock().expect("latency histogram lock");
    if h.len() != n as u64 {
        println!(
            "# warning: {SUITE}/delivery_latency: {} latencies recorded of {n}",
            h.len()
        );
    }
    let us = |q: f64| format!("{:.1}", h.value_at_quantile(q) as f64 / 1e3);
    print_figure(SUITE, "delivery_latency", "p50", us(0.5), "us");
    print_figure(SUITE, "delivery_latency", "p99", us(0.99), "us");
}

// ---- the suite -----------------------------------------------------------------------------------

pub fn run(cfg: &Config) {
    let sizes = Sizes::new(cfg.quick);
    let keys = keys();
    let value = value();
    for hooks in HOOK_COUNTS {
        if cfg.wants(SUITE, &set_path_case(hooks, None)) {
            set_path(cfg, &sizes, &keys, &value, hooks, None);
        }
    }
    // More workers than half the CPUs: on a small machine they take CPU from the caller.
    let workers = Some(2 * default_workers());
    if cfg.wants(SUITE, &set_path_case(1, workers)) {
        set_path(cfg, &sizes, &keys, &value, 1, workers);
    }
    if cfg.wants(SUITE, "set_with_1_filtered_hook") {
        set_path_filtered(cfg, &sizes, &keys, &value);
    }
    if cfg.wants(SUITE, "reference_set_then_channel_send") {
        reference_handoff(cfg, &sizes, &keys, &value);
    }
    if [
        "delivery",
        "delivery_1_worker",
        "delivery_backlog",
        "delivery_backlog_1_worker",
    ]
    .iter()
    .any(|case| cfg.wants(SUITE, case))
    {
        delivery(cfg, &sizes, &keys, &value);
    }
    if cfg.wants(SUITE, "delivery_latency") {
        delivery_latency(&sizes);
    }
}
