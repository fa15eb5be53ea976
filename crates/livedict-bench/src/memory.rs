//! The memory suite: livedict's in-memory store against `moka::sync::Cache` with the same TTL,
//! storing the same byte values, and against `quick_cache::sync::Cache` (no TTL) as the ceiling.
//!
//! Every side starts an operation from the same borrowed inputs an application would hold (a
//! `&str` key, a `&[u8]` value) and makes the owned copies its API needs: livedict copies key and
//! value inside `set_bytes_with`; moka and quick_cache get `key.to_owned()` and
//! `Bytes::copy_from_slice(value)`. Reads return a `Bytes` sharing the stored buffer on every side.
//! The key order of a case is generated once and replayed identically on each side. Each peer's
//! section (moka's cases, then quick_cache's) starts from stores populated afresh on both sides.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use livedict::LiveDict;

use crate::alloc_counter;
use crate::harness::{Config, Run, XorShift, compare, print_figure, timed_threads};

const SUITE: &str = "memory";
const VALUE_LEN: usize = 64;
/// The TTL of every write in the throughput cases: long enough that nothing expires during a run.
const TTL: Duration = Duration::from_secs(3600);
const THREADS: [usize; 2] = [1, 2];
/// Marks a set in a mixed order (key indices stay below 2^31).
const SET_FLAG: u32 = 1 << 31;

use livedict_bench_peers::{Item, MokaBytes, MokaItems, QuickBytes};

struct Sizes {
    /// Keys of the throughput cases.
    keys: usize,
    /// Operations per run are `keys * passes` (split between the threads).
    passes: usize,
    /// Entries of the bytes-per-entry measurement.
    bpe_entries: usize,
    /// Keys of the expiry-lateness measurement, and the span their TTLs are spread over.
    expiry_keys: usize,
    expiry_spread: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                keys: 10_000,
                passes: 2,
                bpe_entries: 100_000,
                expiry_keys: 50_000,
                expiry_spread: Duration::from_secs(2),
            }
        } else {
            Sizes {
                keys: 100_000,
                passes: 5,
                bpe_entries: 1_000_000,
                expiry_keys: 1_000_000,
                expiry_spread: Duration::from_secs(10),
            }
        }
    }

    fn ops(&self) -> usize {
        self.keys * self.passes
    }
}

/// The settings of this suite, for the header line.
pub fn settings(cfg: &Config) -> String {
    let s = Sizes::new(cfg.quick);
    format!(
        "memory: keys {}, value {VALUE_LEN} B, ttl {} s, ops/run {}, bytes_per_entry at {} entries, \
         expiry {} keys over {} s",
        s.keys,
        TTL.as_secs(),
        s.ops(),
        s.bpe_entries,
        s.expiry_keys,
        s.expiry_spread.as_secs()
    )
}

// ---- the stores, behind one small trait so that each case is written once -----------------------
// (`fetch`/`put`, named apart from the stores' own `get`/`set` so that no inherent method shadows
// them.)

trait ByteStore: Sync {
    fn fetch(&self, key: &str) -> Option<Bytes>;
    fn put(&self, key: &str, value: &[u8]);
}

impl ByteStore for LiveDict {
    #[inline]
    fn fetch(&self, key: &str) -> Option<Bytes> {
        self.get_bytes(key).expect("livedict get_bytes")
    }

    #[inline]
    fn put(&self, key: &str, value: &[u8]) {
        self.set_bytes_with(key, value, TTL)
            .expect("livedict set_bytes_with");
    }
}

impl ByteStore for MokaBytes {
    #[inline]
    fn fetch(&self, key: &str) -> Option<Bytes> {
        MokaBytes::get(self, key)
    }

    #[inline]
    fn put(&self, key: &str, value: &[u8]) {
        self.insert(key.to_owned(), Bytes::copy_from_slice(value));
    }
}

impl ByteStore for QuickBytes {
    #[inline]
    fn fetch(&self, key: &str) -> Option<Bytes> {
        QuickBytes::get(self, key)
    }

    #[inline]
    fn put(&self, key: &str, value: &[u8]) {
        self.insert(key.to_owned(), Bytes::copy_from_slice(value));
    }
}

fn new_livedict() -> LiveDict {
    LiveDict::builder().build().expect("build a livedict store")
}

/// A moka cache with the TTL of livedict's writes and twice the capacity the case needs, so that
/// it never works near its eviction threshold.
fn new_moka(keys: usize) -> MokaBytes {
    MokaBytes::new(2 * keys as u64, TTL)
}

/// quick_cache shards its capacity, so a tight capacity could evict before it is full; twice the
/// keys keeps every key resident (the hit counts check it).
fn new_quick(keys: usize) -> QuickBytes {
    QuickBytes::new(2 * keys)
}

// ---- the cases ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    GetHit,
    GetMiss,
    SetInsert,
    SetOverwrite,
    Mixed,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GetHit => "get_hit",
            Op::GetMiss => "get_miss",
            Op::SetInsert => "set_insert",
            Op::SetOverwrite => "set_overwrite",
            Op::Mixed => "mixed_90_10",
        }
    }
}

struct Data {
    /// `key:{i}`, for every measurement (the throughput cases use the first `keys`).
    keys: Vec<String>,
    /// `miss:{i}`: never inserted.
    missing: Vec<String>,
    value: Vec<u8>,
}

/// The key indices each thread works through, the same for livedict and the peer.
fn orders(op: Op, keys: usize, ops: usize, threads: usize) -> Vec<Vec<u32>> {
    (0..threads)
        .map(|t| {
            let mut rng = XorShift::new(1 + t as u64);
            match op {
                // Each thread inserts its own slice of the keys, shuffled.
                Op::SetInsert => rng.permutation(t * keys / threads, (t + 1) * keys / threads),
                Op::Mixed => (0..ops / threads)
                    .map(|_| {
                        let i = rng.below(keys as u64) as u32;
                        if rng.below(10) == 0 { i | SET_FLAG } else { i }
                    })
                    .collect(),
                Op::GetHit | Op::GetMiss | Op::SetOverwrite => rng.indices(ops / threads, keys),
            }
        })
        .collect()
}

/// One thread's share of a run; returns the number of hits (reads) or writes done.
fn work<S: ByteStore>(store: &S, op: Op, data: &Data, order: &[u32]) -> u64 {
    let (keys, value) = (&data.keys, &data.value[..]);
    let mut count = 0;
    match op {
        Op::GetHit => {
            for &i in order {
                count += u64::from(black_box(store.fetch(&keys[i as usize])).is_some());
            }
        }
        Op::GetMiss => {
            for &i in order {
                count += u64::from(black_box(store.fetch(&data.missing[i as usize])).is_some());
            }
        }
        Op::SetInsert | Op::SetOverwrite => {
            for &i in order {
                store.put(&keys[i as usize], value);
                count += 1;
            }
        }
        Op::Mixed => {
            for &i in order {
                if i & SET_FLAG != 0 {
                    store.put(&keys[(i & !SET_FLAG) as usize], value);
                } else {
                    count += u64::from(black_box(store.fetch(&keys[i as usize])).is_some());
                }
            }
        }
    }
    count
}

fn populate<S: ByteStore>(store: &S, data: &Data, keys: usize) {
    for k in &data.keys[..keys] {
        store.put(k, &data.value);
    }
}

/// Runs `op` on `populated` (or, for inserts, on a fresh store from `fresh`, built and dropped
/// outside the timed part).
fn run_op<S: ByteStore>(
    op: Op,
    populated: &S,
    fresh: &dyn Fn() -> S,
    data: &Data,
    orders: &[Vec<u32>],
) -> Run {
    let timed = |s: &S| timed_threads(orders.len(), |t| work(s, op, data, &orders[t]));
    if op == Op::SetInsert {
        let store = fresh();
        let run = timed(&store);
        drop(store);
        run
    } else {
        timed(populated)
    }
}

/// What the count of a run must be: every get a hit, no miss a hit, every write done.
fn expected(op: Op, orders: &[Vec<u32>]) -> u64 {
    let all = orders.iter().map(Vec::len).sum::<usize>() as u64;
    match op {
        Op::GetMiss => 0,
        Op::Mixed => orders
            .iter()
            .flatten()
            .filter(|&&i| i & SET_FLAG == 0)
            .count() as u64,
        _ => all,
    }
}

#[allow(clippy::too_many_arguments)]
fn compare_op<P: ByteStore>(
    cfg: &Config,
    sizes: &Sizes,
    data: &Data,
    op: Op,
    threads: usize,
    case_suffix: &str,
    peer_name: &str,
    livedict: &LiveDict,
    peer: &P,
    fresh_peer: &dyn Fn() -> P,
) {
    let orders = orders(op, sizes.keys, sizes.ops(), threads);
    let ops = orders.iter().map(Vec::len).sum::<usize>() as u64;
    let want = expected(op, &orders);
    compare(
        cfg,
        SUITE,
        &format!("{}_{threads}t{case_suffix}", op.name()),
        peer_name,
        ops,
        || run_op(op, livedict, &new_livedict, data, &orders),
        || run_op(op, peer, fresh_peer, data, &orders),
        |count| (count != want).then(|| format!("count {count}, expected {want}")),
    )
}

// ---- typed values --------------------------------------------------------------------------------

/// typed_get / typed_set at one thread: livedict with its default JSON codec against moka holding
/// the struct itself. Not the same work, and meant so: livedict pays an encode on every set and a
/// decode on every get, moka only clones the struct (one `String` allocation each way); this shows
/// what a typed livedict value costs against a typed in-process cache.
fn typed(cfg: &Config, sizes: &Sizes, data: &Data) {
    if !cfg.wants(SUITE, "typed_") {
        return;
    }
    let keys = &data.keys[..sizes.keys];
    let items: Vec<Item> = (0..sizes.keys)
        .map(|i| Item {
            id: i as u64,
            name: format!("user-{i}"),
            score: i as f64 * 0.5,
        })
        .collect();
    let store = new_livedict();
    let cache = MokaItems::new(2 * sizes.keys as u64, TTL);
    for (k, item) in keys.iter().zip(&items) {
        store.set_with(k, item, TTL).expect("livedict set_with");
        cache.insert(k.clone(), item.clone());
    }
    cache.run_pending_tasks();
    let order = XorShift::new(7).indices(sizes.ops(), sizes.keys);
    let ops = order.len() as u64;
    let want = ops;
    let check = |count: u64| (count != want).then(|| format!("count {count}, expected {want}"));

    let timed = |f: &dyn Fn(usize) -> bool| {
        let start = Instant::now();
        let count = order.iter().filter(|&&i| f(i as usize)).count() as u64;
        Run {
            elapsed: start.elapsed(),
            count,
        }
    };
    compare(
        cfg,
        SUITE,
        "typed_get",
        "moka",
        ops,
        || timed(&|i| black_box(store.get::<Item>(&keys[i]).expect("livedict get")).is_some()),
        || timed(&|i| black_box(cache.get(keys[i].as_str())).is_some()),
        check,
    );
    compare(
        cfg,
        SUITE,
        "typed_set",
        "moka",
        ops,
        || {
            timed(&|i| {
                store
                    .set_with(&keys[i], &items[i], TTL)
                    .expect("livedict set_with");
                true
            })
        },
        || {
            timed(&|i| {
                cache.insert(keys[i].to_owned(), items[i].clone());
                true
            })
        },
        check,
    );
}

// ---- memory per entry ------------------------------------------------------------------------------

/// Live heap bytes per entry after inserting `n` entries (64-byte values, TTL set) into a fresh
/// store: the growth of the counting allocator's live bytes divided by `n`. Bytes requested from
/// the allocator, not its rounding. moka gets exactly `n` of capacity here (its frequency sketch
/// is sized from the capacity), the smallest it can be configured for `n` entries.
fn bytes_per_entry(n: usize, data: &Data) {
    let keys = &data.keys[..n];
    let (livedict, len) = alloc_counter::counting(|| {
        let store = new_livedict();
        let before = alloc_counter::live_bytes();
        for k in keys {
            store.put(k, &data.value);
        }
        let after = alloc_counter::live_bytes();
        let len = store.len().expect("livedict len");
        drop(store);
        (after - before, len)
    });
    let (moka, count) = alloc_counter::counting(|| {
        let cache = MokaBytes::new(n as u64, TTL);
        let before = alloc_counter::live_bytes();
        for k in keys {
            cache.put(k, &data.value);
        }
        cache.run_pending_tasks();
        let after = alloc_counter::live_bytes();
        let count = cache.entry_count();
        drop(cache);
        (after - before, count)
    });
    if len != n || count != n as u64 {
        println!("# warning: {SUITE}/bytes_per_entry: livedict holds {len}, moka {count}, of {n}");
    }
    print_figure(
        SUITE,
        "bytes_per_entry",
        "livedict",
        livedict / n as isize,
        "bytes",
    );
    print_figure(SUITE, "bytes_per_entry", "moka", moka / n as isize, "bytes");
}

// ---- expiry lateness ---------------------------------------------------------------------------------

/// Inserts `n` keys whose TTLs are spread uniformly over `spread`, reads none of them, waits until
/// the expiry driver has removed them all (or a generous deadline passes) and prints the lag
/// percentiles livedict records (removal time minus deadline, on the system clock).
fn expiry_lateness(n: usize, spread: Duration, data: &Data) {
    let store = new_livedict();
    let spread_ms = spread.as_millis() as u64;
    let mut rng = XorShift::new(42);
    let start = Instant::now();
    for k in &data.keys[..n] {
        let ttl = Duration::from_millis(1 + rng.below(spread_ms));
        store
            .set_bytes_with(k, &data.value, ttl)
            .expect("livedict set_bytes_with");
    }
    let inserted = start.elapsed();
    let give_up = start + spread + Duration::from_secs(10);
    while store.stats().expirations < n as u64 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = start.elapsed();
    let stats = store.stats();
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    println!(
        "# {SUITE}/expiry_lateness: {n} keys inserted in {:.2} s, waited until {:.2} s",
        inserted.as_secs_f64(),
        done.as_secs_f64()
    );
    print_figure(
        SUITE,
        "expiry_lateness",
        "p50",
        ms(stats.expiry_lag_p50),
        "ms",
    );
    print_figure(
        SUITE,
        "expiry_lateness",
        "p99",
        ms(stats.expiry_lag_p99),
        "ms",
    );
    print_figure(
        SUITE,
        "expiry_lateness",
        "removed",
        stats.expirations,
        &format!("of {n}"),
    );
}

// ---- the suite -----------------------------------------------------------------------------------

pub fn run(cfg: &Config) {
    let sizes = Sizes::new(cfg.quick);
    let all_keys = sizes.keys.max(sizes.bpe_entries).max(sizes.expiry_keys);
    let data = Data {
        keys: (0..all_keys).map(|i| format!("key:{i}")).collect(),
        missing: (0..sizes.keys).map(|i| format!("miss:{i}")).collect(),
        value: (0..VALUE_LEN as u8).collect(),
    };

    let livedict = new_livedict();
    populate(&livedict, &data, sizes.keys);
    let moka = new_moka(sizes.keys);
    populate(&moka, &data, sizes.keys);
    moka.run_pending_tasks();
    let fresh_moka = || new_moka(sizes.keys);
    for op in [
        Op::GetHit,
        Op::GetMiss,
        Op::SetInsert,
        Op::SetOverwrite,
        Op::Mixed,
    ] {
        for threads in THREADS {
            compare_op(
                cfg,
                &sizes,
                &data,
                op,
                threads,
                "",
                "moka",
                &livedict,
                &moka,
                &fresh_moka,
            );
        }
    }
    drop(moka);

    // A fresh livedict store for the quick_cache section, as quick_cache's is fresh: the one
    // above has been through the overwrite and mixed cases, whose new values sit wherever the
    // heap had room (this halved livedict's get_hit_1t against a fresh quick_cache).
    drop(livedict);
    let livedict = new_livedict();
    populate(&livedict, &data, sizes.keys);
    let quick = new_quick(sizes.keys);
    populate(&quick, &data, sizes.keys);
    let fresh_quick = || new_quick(sizes.keys);
    for op in [Op::GetHit, Op::SetOverwrite] {
        for threads in THREADS {
            compare_op(
                cfg,
                &sizes,
                &data,
                op,
                threads,
                "_vs_quick_cache",
                "quick_cache",
                &livedict,
                &quick,
                &fresh_quick,
            );
        }
    }
    drop(quick);
    drop(livedict);

    typed(cfg, &sizes, &data);
    if cfg.wants(SUITE, "bytes_per_entry") {
        bytes_per_entry(sizes.bpe_entries, &data);
    }
    if cfg.wants(SUITE, "expiry_lateness") {
        expiry_lateness(sizes.expiry_keys, sizes.expiry_spread, &data);
    }
}
